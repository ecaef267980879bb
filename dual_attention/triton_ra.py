"""Relational attention on GPUs: a fused Triton kernel for the factorised form (★), forward and backward.

For query head h (kv head g = h // n_rep), key j and the identity relation activation,

    A_i^h = Σ_j α_ij^h v_j^g  +  W_r^h ( rel_scale · ⟨q_rel_i,ℓ , Σ_j α_ij^h k_rel_j,ℓ⟩ )_ℓ                   (★)
    α_ij^h = softmax_j( ⟨q_i^h, k_j^g⟩ · scale + M_ij )

so the kernel is attention with scores at the key width Dk and *wide* values ``[v_j^g | k_rel_j]`` (D + R·d_r):
each program holds one tile of queries of one head, streams tiles of keys through on-chip memory with an online
softmax (flash attention), and never materialises the n×n weights or the relations. Position-relative symbols
(``v_ij = T[clip(j − i, −M, M) + M]``, queries at positions 0..Lq−1) are read from the ``2M + 1`` table: a key tile
wholly left (right) of the band adds its row sums times ``T[0]`` (``T[2M]``); a tile on the band gathers the
table rows it needs. Backward recomputes the weights from the row log-sum-exp: one kernel for dQ (one program per
query tile), one for dK, dV and dk_rel (one program per key tile and kv head, looping over its query heads); the
relative table's gradient is accumulated with atomic adds.

Triton is optional (``pip install dual_attention[triton]``); without it this module imports and
:func:`triton_available` is False. With ``TRITON_INTERPRET=1`` (set before Triton is imported) the kernels run on
CPU tensors through Triton's interpreter, which is how ``tests/test_triton_ra.py`` checks them against the plain
path without a GPU.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is optional
    triton = tl = None

#: (query tile, key tile) rows of the kernels, per-token and position-relative symbols
BLOCKS = {"per_token": (64, 64), "relative": (16, 16)}

#: the kernels below were built for Triton's interpreter (``TRITON_INTERPRET=1`` when this module was imported):
#: they run on CPU tensors
INTERPRETED = triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


def triton_available(device: torch.device | str = "cuda") -> bool:
    """Whether the Triton kernel can run on ``device``: Triton importable, and CUDA, or the interpreter on the CPU."""
    if triton is None:
        return False
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available()
    return INTERPRETED


if triton is not None:

    @triton.jit
    def _scores(q, k_t, rows, cols, b, h, Lq, Lk, scale, MASK, sm_b, sm_h, sm_i, sm_j, IS_CAUSAL: tl.constexpr,
                HAS_MASK: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
        """Masked scores ``(BLOCK_M, BLOCK_N)`` of the query tile against the key tile ``k_t``; −∞ where masked."""
        s = tl.dot(q, k_t, out_dtype=ACC, input_precision=PREC) * scale
        valid = (cols < Lk)[None, :]
        if IS_CAUSAL:
            valid = valid & (cols[None, :] <= rows[:, None])
        if HAS_MASK:
            m = tl.load(MASK + b * sm_b + h * sm_h + rows[:, None] * sm_i + cols[None, :] * sm_j,
                        mask=(rows[:, None] < Lq) & (cols < Lk)[None, :], other=0.0)
            s = s + m.to(ACC)
        return tl.where(valid, s, float("-inf"))

    @triton.jit
    def _load_t(PTR, base, cols, n, C: tl.constexpr, BLOCK_C: tl.constexpr):
        """Rows ``cols`` of a row-major ``(n, C)`` matrix at ``PTR + base``, transposed: ``(BLOCK_C, BLOCK_N)``."""
        cc = tl.arange(0, BLOCK_C)
        return tl.load(PTR + (base + cols[None, :]) * C + cc[:, None], mask=(cols < n)[None, :] & (cc[:, None] < C),
                       other=0.0)

    @triton.jit
    def _load(PTR, base, rows, n, C: tl.constexpr, BLOCK_C: tl.constexpr):
        """Rows ``rows`` of a row-major ``(n, C)`` matrix at ``PTR + base``: ``(BLOCK_ROWS, BLOCK_C)``, zero-padded."""
        cc = tl.arange(0, BLOCK_C)
        return tl.load(PTR + (base + rows[:, None]) * C + cc[None, :], mask=(rows < n)[:, None] & (cc[None, :] < C),
                       other=0.0)

    @triton.jit
    def _offsets(rows, cols, MAX_REL: tl.constexpr):
        """``clip(j − i, −M, M) + M`` for the tile's queries i and keys j: rows of the relative table."""
        return tl.minimum(tl.maximum(cols[None, :] - rows[:, None], -MAX_REL), MAX_REL) + MAX_REL

    @triton.jit
    def _query_tile(H, Lk, N_REP: tl.constexpr, IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
        """The program's query tile: ``(tile index, batch·H + head, batch, head, batch·K + kv head, its query rows,
        the end of the keys it attends)``."""
        pid_m = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        b, h = bh // H, bh % H
        bg = b * (H // N_REP) + h // N_REP  # (batch, kv head)
        hi = Lk
        if IS_CAUSAL:
            hi = tl.minimum(Lk, (pid_m + 1) * BLOCK_M)
        return pid_m, bh, b, h, bg, pid_m * BLOCK_M + tl.arange(0, BLOCK_M), hi

    @triton.jit
    def _ra_fwd(Q, K, V, KR, MASK, OV, OR, LSE, sm_b, sm_h, sm_i, sm_j, H, Lq, Lk, scale,
                N_REP: tl.constexpr, DK: tl.constexpr, D: tl.constexpr, W: tl.constexpr,
                RELATIVE: tl.constexpr, MAX_REL: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_D: tl.constexpr,
                BLOCK_W: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
        """One query tile of one head: ``O_v = Σ_j α_ij v_j``, ``O_rel = Σ_j α_ij k_rel_j`` and the row log-sum-exp."""
        pid_m, bh, b, h, bg, rows, hi = _query_tile(H, Lk, N_REP, IS_CAUSAL, BLOCK_M)
        q = _load(Q, bh * Lq, rows, Lq, DK, BLOCK_DK)  # (BLOCK_M, BLOCK_DK)
        m_i = tl.full([BLOCK_M], float("-inf"), ACC)
        l_i = tl.zeros([BLOCK_M], ACC)
        acc_v = tl.zeros([BLOCK_M, BLOCK_D], ACC)
        acc_r = tl.zeros([BLOCK_M, BLOCK_W], ACC)
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + tl.arange(0, BLOCK_N)
            s = _scores(q, _load_t(K, bg * Lk, cols, Lk, DK, BLOCK_DK), rows, cols, b, h, Lq, Lk, scale, MASK,
                        sm_b, sm_h, sm_i, sm_j, IS_CAUSAL, HAS_MASK, ACC, PREC)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet: no NaN from −∞ − (−∞)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])  # (BLOCK_M, BLOCK_N), unnormalised
            l_i = l_i * alpha + tl.sum(p, 1)
            acc_v = acc_v * alpha[:, None]
            acc_r = acc_r * alpha[:, None]
            m_i = m_new
            if RELATIVE:
                acc_v += _relative_values(p, V, rows, cols, bg % (H // N_REP), pid_m * BLOCK_M, start_n, D, MAX_REL,
                                          BLOCK_M, BLOCK_N, BLOCK_D)
            else:
                v = _load(V, bg * Lk, cols, Lk, D, BLOCK_D)  # (BLOCK_N, BLOCK_D)
                acc_v += tl.dot(p.to(v.dtype), v, out_dtype=ACC, input_precision=PREC)
            kr = _load(KR, b * Lk, cols, Lk, W, BLOCK_W)  # (BLOCK_N, BLOCK_W)
            acc_r += tl.dot(p.to(kr.dtype), kr, out_dtype=ACC, input_precision=PREC)
        l_safe = tl.where(l_i == 0.0, 1.0, l_i)
        row_ok = rows < Lq
        cd, cw = tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_W)
        tl.store(OV + (bh * Lq + rows[:, None]) * D + cd[None, :], (acc_v / l_safe[:, None]).to(OV.dtype.element_ty),
                 mask=row_ok[:, None] & (cd[None, :] < D))
        tl.store(OR + (bh * Lq + rows[:, None]) * W + cw[None, :], (acc_r / l_safe[:, None]).to(OR.dtype.element_ty),
                 mask=row_ok[:, None] & (cw[None, :] < W))
        lse = tl.where(l_i == 0.0, float("inf"), m_i + tl.log(l_safe))  # +∞: a row with no key gets p = 0 back
        tl.store(LSE + bh * Lq + rows, lse, mask=row_ok)

    @triton.jit
    def _relative_values(p, V, rows, cols, g, row0, start_n, D: tl.constexpr, MAX_REL: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """``Σ_j p_ij T[clip(j − i) + M]`` for one tile: row sums times an end row off the band, a gather on it."""
        cd = tl.arange(0, BLOCK_D)
        table = V + g * (2 * MAX_REL + 1) * D
        if start_n + BLOCK_N - 1 - row0 <= -MAX_REL:  # every key at offset <= −M: table row 0
            t = tl.load(table + cd, mask=cd < D, other=0.0)
            out = tl.sum(p, 1)[:, None] * t[None, :].to(p.dtype)
        elif start_n - (row0 + BLOCK_M - 1) >= MAX_REL:  # every key at offset >= +M: table row 2M
            t = tl.load(table + 2 * MAX_REL * D + cd, mask=cd < D, other=0.0)
            out = tl.sum(p, 1)[:, None] * t[None, :].to(p.dtype)
        else:
            off = _offsets(rows, cols, MAX_REL)
            t3 = tl.load(table + off[:, :, None] * D + cd[None, None, :], mask=(cd < D)[None, None, :], other=0.0)
            out = tl.sum(p[:, :, None] * t3.to(p.dtype), 1)
        return out

    @triton.jit
    def _relative_grad_weights(dov, V, rows, cols, g, row0, start_n, D: tl.constexpr, MAX_REL: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """``dP_ij = dO_i · T[clip(j − i) + M]`` for one tile (the symbol-value part of dP)."""
        cd = tl.arange(0, BLOCK_D)
        table = V + g * (2 * MAX_REL + 1) * D
        if start_n + BLOCK_N - 1 - row0 <= -MAX_REL:
            t = tl.load(table + cd, mask=cd < D, other=0.0).to(dov.dtype)
            dp = tl.broadcast_to(tl.sum(dov * t[None, :], 1)[:, None], (BLOCK_M, BLOCK_N))
        elif start_n - (row0 + BLOCK_M - 1) >= MAX_REL:
            t = tl.load(table + 2 * MAX_REL * D + cd, mask=cd < D, other=0.0).to(dov.dtype)
            dp = tl.broadcast_to(tl.sum(dov * t[None, :], 1)[:, None], (BLOCK_M, BLOCK_N))
        else:
            off = _offsets(rows, cols, MAX_REL)
            t3 = tl.load(table + off[:, :, None] * D + cd[None, None, :], mask=(cd < D)[None, None, :], other=0.0)
            dp = tl.sum(dov[:, None, :] * t3.to(dov.dtype), 2)
        return dp

    @triton.jit
    def _relative_grad_table(p, dov, DT, rows, cols, g, row0, start_n, D: tl.constexpr, MAX_REL: tl.constexpr,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
        """``dT[o] += Σ_{i,j: clip(j − i) + M = o} p_ij dO_i`` (atomic adds into the table's gradient)."""
        cd = tl.arange(0, BLOCK_D)
        table = DT + g * (2 * MAX_REL + 1) * D
        if start_n + BLOCK_N - 1 - row0 <= -MAX_REL:
            tl.atomic_add(table + cd, tl.sum(tl.sum(p, 1)[:, None] * dov, 0), mask=cd < D)
        elif start_n - (row0 + BLOCK_M - 1) >= MAX_REL:
            tl.atomic_add(table + 2 * MAX_REL * D + cd, tl.sum(tl.sum(p, 1)[:, None] * dov, 0), mask=cd < D)
        else:
            off = _offsets(rows, cols, MAX_REL)
            tl.atomic_add(table + off[:, :, None] * D + cd[None, None, :], p[:, :, None] * dov[:, None, :],
                          mask=(cd < D)[None, None, :])

    @triton.jit
    def _backward_rows(Q, DOV, DOR, LSE, DELTA, bh, rows, Lq, DK: tl.constexpr, D: tl.constexpr, W: tl.constexpr,
                       BLOCK_DK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr):
        """What backward reads of a query tile of head ``bh``: ``(rows < Lq, q, dO_v, dO_rel, lse, Δ)``."""
        row_ok = rows < Lq
        q = _load(Q, bh * Lq, rows, Lq, DK, BLOCK_DK)
        dov = _load(DOV, bh * Lq, rows, Lq, D, BLOCK_D)
        dor = _load(DOR, bh * Lq, rows, Lq, W, BLOCK_W)
        lse = tl.load(LSE + bh * Lq + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + bh * Lq + rows, mask=row_ok, other=0.0)
        return row_ok, q, dov, dor, lse, delta

    @triton.jit
    def _ra_bwd_dq(Q, K, V, KR, MASK, DOV, DOR, LSE, DELTA, DQ, sm_b, sm_h, sm_i, sm_j, H, Lq, Lk, scale,
                   N_REP: tl.constexpr, DK: tl.constexpr, D: tl.constexpr, W: tl.constexpr,
                   RELATIVE: tl.constexpr, MAX_REL: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_D: tl.constexpr,
                   BLOCK_W: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
        """dQ of one query tile of one head: ``scale · Σ_j P_ij (dP_ij − Δ_i) k_j``."""
        pid_m, bh, b, h, bg, rows, hi = _query_tile(H, Lk, N_REP, IS_CAUSAL, BLOCK_M)
        row_ok, q, dov, dor, lse, delta = _backward_rows(Q, DOV, DOR, LSE, DELTA, bh, rows, Lq, DK, D, W,
                                                         BLOCK_DK, BLOCK_D, BLOCK_W)
        dq = tl.zeros([BLOCK_M, BLOCK_DK], ACC)
        for start_n in range(0, hi, BLOCK_N):
            cols = start_n + tl.arange(0, BLOCK_N)
            k_t = _load_t(K, bg * Lk, cols, Lk, DK, BLOCK_DK)  # (BLOCK_DK, BLOCK_N)
            s = _scores(q, k_t, rows, cols, b, h, Lq, Lk, scale, MASK, sm_b, sm_h, sm_i, sm_j, IS_CAUSAL, HAS_MASK,
                        ACC, PREC)
            p = tl.exp(s - lse[:, None])
            dp = tl.dot(dor, _load_t(KR, b * Lk, cols, Lk, W, BLOCK_W), out_dtype=ACC, input_precision=PREC)
            if RELATIVE:
                dp += _relative_grad_weights(dov.to(ACC), V, rows, cols, bg % (H // N_REP), pid_m * BLOCK_M, start_n,
                                             D, MAX_REL, BLOCK_M, BLOCK_N, BLOCK_D)
            else:
                dp += tl.dot(dov, _load_t(V, bg * Lk, cols, Lk, D, BLOCK_D), out_dtype=ACC, input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k_t.dtype), tl.trans(k_t), out_dtype=ACC, input_precision=PREC)
        ck = tl.arange(0, BLOCK_DK)
        tl.store(DQ + (bh * Lq + rows[:, None]) * DK + ck[None, :], (dq * scale).to(DQ.dtype.element_ty),
                 mask=row_ok[:, None] & (ck[None, :] < DK))

    @triton.jit
    def _ra_bwd_dkv(Q, K, V, KR, MASK, DOV, DOR, LSE, DELTA, DK_, DV, DKR, DT, sm_b, sm_h, sm_i, sm_j, H, Lq, Lk,
                    scale, N_REP: tl.constexpr, DK: tl.constexpr, D: tl.constexpr, W: tl.constexpr,
                    RELATIVE: tl.constexpr, MAX_REL: tl.constexpr, IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_W: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
        """dK, dV and this kv head's share of dk_rel for one key tile, summed over the kv head's query heads."""
        pid_n = tl.program_id(0)
        bg = tl.program_id(1).to(tl.int64)
        b, g = bg // (H // N_REP), bg % (H // N_REP)
        start_n = pid_n * BLOCK_N
        cols = start_n + tl.arange(0, BLOCK_N)
        k_t = _load_t(K, bg * Lk, cols, Lk, DK, BLOCK_DK)  # (BLOCK_DK, BLOCK_N)
        kr_t = _load_t(KR, b * Lk, cols, Lk, W, BLOCK_W)  # (BLOCK_W, BLOCK_N)
        dk = tl.zeros([BLOCK_N, BLOCK_DK], ACC)
        dv = tl.zeros([BLOCK_N, BLOCK_D], ACC)
        dkr = tl.zeros([BLOCK_N, BLOCK_W], ACC)
        if not RELATIVE:
            v_t = _load_t(V, bg * Lk, cols, Lk, D, BLOCK_D)  # (BLOCK_D, BLOCK_N)
        lo = 0
        if IS_CAUSAL:
            lo = (start_n // BLOCK_M) * BLOCK_M  # earlier queries see none of these keys
        for r in range(N_REP):
            h = g * N_REP + r
            bh = b * H + h
            for start_m in range(lo, Lq, BLOCK_M):
                rows = start_m + tl.arange(0, BLOCK_M)
                _, q, dov, dor, lse, delta = _backward_rows(Q, DOV, DOR, LSE, DELTA, bh, rows, Lq, DK, D, W,
                                                           BLOCK_DK, BLOCK_D, BLOCK_W)
                s = _scores(q, k_t, rows, cols, b, h, Lq, Lk, scale, MASK, sm_b, sm_h, sm_i, sm_j, IS_CAUSAL,
                            HAS_MASK, ACC, PREC)
                p = tl.exp(s - lse[:, None])  # (BLOCK_M, BLOCK_N)
                dkr += tl.dot(tl.trans(p).to(dor.dtype), dor, out_dtype=ACC, input_precision=PREC)
                dp = tl.dot(dor, kr_t, out_dtype=ACC, input_precision=PREC)
                if RELATIVE:
                    _relative_grad_table(p, dov.to(ACC), DT, rows, cols, g, start_m, start_n, D, MAX_REL, BLOCK_M,
                                         BLOCK_N, BLOCK_D)
                    dp += _relative_grad_weights(dov.to(ACC), V, rows, cols, g, start_m, start_n, D, MAX_REL,
                                                 BLOCK_M, BLOCK_N, BLOCK_D)
                else:
                    dv += tl.dot(tl.trans(p).to(dov.dtype), dov, out_dtype=ACC, input_precision=PREC)
                    dp += tl.dot(dov, v_t, out_dtype=ACC, input_precision=PREC)
                ds = p * (dp - delta[:, None])
                dk += tl.dot(tl.trans(ds).to(q.dtype), q, out_dtype=ACC, input_precision=PREC)
        ck, cd, cw = tl.arange(0, BLOCK_DK), tl.arange(0, BLOCK_D), tl.arange(0, BLOCK_W)
        col_ok = (cols < Lk)[:, None]
        tl.store(DK_ + (bg * Lk + cols[:, None]) * DK + ck[None, :], (dk * scale).to(DK_.dtype.element_ty),
                 mask=col_ok & (ck[None, :] < DK))
        tl.store(DKR + (bg * Lk + cols[:, None]) * W + cw[None, :], dkr.to(DKR.dtype.element_ty),
                 mask=col_ok & (cw[None, :] < W))
        if not RELATIVE:
            tl.store(DV + (bg * Lk + cols[:, None]) * D + cd[None, :], dv.to(DV.dtype.element_ty),
                     mask=col_ok & (cd[None, :] < D))


def _pow2(n: int) -> int:
    """Tile width of a feature dim: a power of two, at least 16 (``tl.dot``'s minimum)."""
    return max(16, triton.next_power_of_2(n))


def _mask_strides(mask: Tensor | None, shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Element strides of a mask broadcastable to ``(B, H, Lq, Lk)``; 0 along broadcast dims."""
    if mask is None:
        return 0, 0, 0, 0
    return tuple(0 if size == 1 and full != 1 else stride
                 for size, stride, full in zip(mask.shape, mask.stride(), shape))


class _TritonRelationalAttention(torch.autograd.Function):
    """``(Σ_j α_ij v_j, Σ_j α_ij k_rel_j)`` per query head by the Triton kernels; see :func:`triton_attend`."""

    @staticmethod
    def forward(ctx, q, k, values, k_rel, mask, is_causal, scale, max_rel, blocks):
        b, n_heads, lq, dk = q.shape
        n_kv, lk = k.shape[1], k.shape[2]
        d, w = values.shape[-1], k_rel.shape[-1]
        acc = tl.float64 if q.dtype == torch.float64 else tl.float32
        out_v = q.new_empty(b, n_heads, lq, d)
        out_r = q.new_empty(b, n_heads, lq, w)
        lse = torch.empty(b, n_heads, lq, device=q.device, dtype=torch.float64 if acc == tl.float64 else torch.float32)
        meta = _meta(q, k, values, k_rel, mask, is_causal, max_rel, blocks, acc)
        grid = (triton.cdiv(lq, meta["BLOCK_M"]), b * n_heads)
        _ra_fwd[grid](q, k, values, k_rel, mask if mask is not None else q, out_v, out_r, lse,
                      *_mask_strides(mask, (b, n_heads, lq, lk)), n_heads, lq, lk, scale, **meta)
        ctx.save_for_backward(q, k, values, k_rel, mask, out_v, out_r, lse)
        ctx.setup = (is_causal, scale, max_rel, blocks, acc, n_kv)
        return out_v, out_r

    @staticmethod
    def backward(ctx, grad_v, grad_r):
        q, k, values, k_rel, mask, out_v, out_r, lse = ctx.saved_tensors
        is_causal, scale, max_rel, blocks, acc, n_kv = ctx.setup
        b, n_heads, lq, _ = q.shape
        lk = k.shape[2]
        grad_v, grad_r = grad_v.contiguous(), grad_r.contiguous()
        delta = ((grad_v.to(lse.dtype) * out_v.to(lse.dtype)).sum(-1)
                 + (grad_r.to(lse.dtype) * out_r.to(lse.dtype)).sum(-1))  # Δ_i = Σ_c dO_ic O_ic (B, H, Lq)
        meta = _meta(q, k, values, k_rel, mask, is_causal, max_rel, blocks, acc)
        mask_arg, strides = (mask if mask is not None else q), _mask_strides(mask, (b, n_heads, lq, lk))
        dq = torch.empty_like(q)
        _ra_bwd_dq[(triton.cdiv(lq, meta["BLOCK_M"]), b * n_heads)](
            q, k, values, k_rel, mask_arg, grad_v, grad_r, lse, delta, dq, *strides, n_heads, lq, lk, scale, **meta)
        dk = torch.empty_like(k)
        dk_rel = k_rel.new_empty(b, n_kv, lk, k_rel.shape[-1])  # per kv head, summed below
        relative = max_rel is not None
        dv = torch.zeros(values.shape, device=q.device, dtype=lse.dtype) if relative else torch.empty_like(values)
        _ra_bwd_dkv[(triton.cdiv(lk, meta["BLOCK_N"]), b * n_kv)](
            q, k, values, k_rel, mask_arg, grad_v, grad_r, lse, delta, dk, dv, dk_rel, dv, *strides, n_heads, lq, lk,
            scale, **meta)
        return dq, dk, dv.to(values.dtype), dk_rel.sum(1), None, None, None, None, None


def _meta(q, k, values, k_rel, mask, is_causal, max_rel, blocks, acc) -> dict:
    """The kernels' compile-time arguments."""
    relative = max_rel is not None
    block_m, block_n = blocks or BLOCKS["relative" if relative else "per_token"]
    fp32_exact = q.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    return dict(N_REP=q.shape[1] // k.shape[1], DK=q.shape[-1], D=values.shape[-1], W=k_rel.shape[-1],
                RELATIVE=relative, MAX_REL=max_rel or 0, IS_CAUSAL=is_causal, HAS_MASK=mask is not None,
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DK=_pow2(q.shape[-1]), BLOCK_D=_pow2(values.shape[-1]),
                BLOCK_W=_pow2(k_rel.shape[-1]), ACC=acc,
                PREC="ieee" if fp32_exact or q.device.type == "cpu" else "tf32")


def triton_attend(
    q: Tensor,
    k: Tensor,
    values: Tensor,
    k_rel: Tensor,
    *,
    scale: float,
    mask: Tensor | None = None,
    is_causal: bool = False,
    max_rel: int | None = None,
    blocks: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Attend the wide values ``[v | k_rel]`` with scores at the key width, by the Triton kernels (differentiable).

    Args:
        q: ``(B, H, Lq, Dk)``; k: ``(B, K, Lk, Dk)`` (K divides H: kv head g serves query heads g·H/K ..).
        values: per-token symbol values ``(B, K, Lk, D)``; or, with ``max_rel = M``, the position-relative table
            ``(K, 2M + 1, D)`` (``v_ij = table[:, clip(j − i, −M, M) + M]``, queries at positions 0..Lq−1).
        k_rel: relation keys ``(B, Lk, W)``, shared by all heads (W = R·d_r).
        scale: score scale; mask: ``None``, bool (True = may attend) or additive, broadcastable to
            ``(B, H, Lq, Lk)``; is_causal: key j visible to query i iff j <= i.
        blocks: ``(query tile, key tile)`` rows (default :data:`BLOCKS`).

    Returns:
        ``(Σ_j α_ij v_ij (B, H, Lq, D), Σ_j α_ij k_rel_j (B, H, Lq, W))`` in q's dtype.
    """
    if triton is None:
        raise RuntimeError("the Triton kernel needs triton: pip install 'dual_attention[triton]'")
    dtype = q.dtype
    q, k, values, k_rel = (t.to(dtype).contiguous() for t in (q, k, values, k_rel))
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
    return _TritonRelationalAttention.apply(q, k, values, k_rel, mask, bool(is_causal), float(scale), max_rel, blocks)


def ra_triton(p) -> Tensor:
    """Relational attention (identity activation, no attention dropout) of a
    :class:`~dual_attention.relational_functional.RAProblem` by (★) through :func:`triton_attend`.

    Per-token symbol values, or compact position-relative ones (queries at 0..Lq−1); returns ``A (B, H, Lq, D)``.
    """
    from dual_attention.relational_functional import relation_readout
    from dual_attention.symbol_values import RelativeSymbols

    max_rel, values = None, p.values
    if isinstance(values, RelativeSymbols):
        max_rel, values = values.max_rel_pos, values.table.permute(1, 0, 2)  # (K, 2M+1, D)
    else:
        values = values.tensor  # (B, K, Lk, D)
    b, lk = p.k_rel.shape[:2]
    sym, k_rel_bar = triton_attend(p.q, p.k, values, p.k_rel.reshape(b, lk, -1), scale=p.attn_scale,
                                   mask=p.mask.tensor, is_causal=p.mask.is_causal, max_rel=max_rel)
    return sym + relation_readout(p.q_rel, k_rel_bar, p.wr, p.rel_scale)
