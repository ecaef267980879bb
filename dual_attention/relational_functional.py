"""The computation of relational attention: the problem, its kernels, and the one function that picks a kernel.

For query (receiver) i, key (sender) j, attention head h (kv head g) and relation ℓ = 1..R:

    α_ij^h   = softmax_j( ⟨q_i^h, k_j^g⟩ · attn_scale + M_ij )                    (then attention dropout)
    r_ij,ℓ   = act( ⟨q_rel_i,ℓ , k_rel_j,ℓ⟩ · rel_scale )      (softmax: over the senders j, masked ones excluded)
    A_i^h    = Σ_j α_ij^h ( W_r^h r_ij + v_j^g )                                    (W_r^h ∈ R^{D×R})

where v_j^g = W_s^g s_j is the value of the sender's symbol, or, with position-relative symbols,
v_ij^g = W_s^g s_{clip(j − p_i, −M, M)} (p_i the absolute position of query i); see
:mod:`dual_attention.symbol_values` for the three forms of the values.

:class:`RAProblem` holds one such problem after projection; every kernel takes it:

* :func:`ra_plain`: the equation as written, α ``(B, H, Lq, Lk)`` and r ``(B, Lq, Lk, R)`` materialised (the
  reference, and the only kernel that returns them);
* :func:`ra_fused`: for the identity activation the relation term factorises,

      Σ_j α_ij^h r_ij,ℓ = rel_scale · ⟨ q_rel_i,ℓ , Σ_j α_ij^h k_rel_j,ℓ ⟩                      (★)

  so the relation keys are attended like values (:func:`relation_readout` reads the result), and one call of
  :func:`torch.nn.functional.scaled_dot_product_attention` with values ``[v_j | k_rel_j]`` computes A without
  any n×n tensor;

and, below them, the performance variants: :func:`ra_blocked` (:func:`ra_plain` over blocks of queries, O(block·Lk)
memory, exact for every option) and :func:`ra_tiled` (a flash-style pass over query tiles by (★), the CPU's fast
path). :func:`resolve_implementation` is the only place that chooses a kernel, or refuses one and says why.
``docs/performance.md`` compares the kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dual_attention.attention_utils import (
    POLICY,
    TORCH_2_5,
    AttentionMask,
    causal_mask,
    expand_heads,
    grouped_matmul,
    mask_to_additive,
    positions,
    relative_offsets,
)
from dual_attention.symbol_values import RelativeSymbols, RelativeSymbolValues, SymbolValues, TokenValues

__all__ = ["IMPLEMENTATIONS", "RAProblem", "RelativeSymbolValues", "map_query_blocks", "ra_blocked", "ra_fused",
           "ra_plain", "ra_tiled", "relation_readout", "relation_scores", "resolve_implementation",
           "run_implementation"]

#: the values of ``RelationalAttention.implementation``
IMPLEMENTATIONS = ("auto", "fused", "tiled", "triton", "blocked", "plain")


@dataclass
class RAProblem:
    """One relational-attention problem after projection: all a kernel needs.

    Attributes:
        q: ``(B, H, Lq, Dk)`` attention queries; k: ``(B, K, Lk, Dk)`` attention keys (RoPE applied; with a KV
            cache, the keys of every cached position).
        q_rel: ``(B, Lq, R, d_r)`` relation queries; k_rel: ``(B, Lk, R, d_r)`` relation keys.
        values: the symbol values (:class:`~dual_attention.symbol_values.TokenValues`, ``PairValues`` or
            ``RelativeSymbols``).
        wr: ``(H, D, R)``, W_r of every head.
        mask: which keys each query may attend to.
        q_pos: absolute positions ``(Lq,)`` of the queries (cached decoding), None for ``0..Lq-1``.
        attn_scale, rel_scale: the scales of the attention and relation scores.
        rel_activation: act, applied to the relation scores.
        dropout_p: attention-dropout probability (0 outside training).
    """

    q: Tensor
    k: Tensor
    q_rel: Tensor
    k_rel: Tensor
    values: SymbolValues
    wr: Tensor
    mask: AttentionMask = field(default_factory=AttentionMask)
    q_pos: Tensor | None = None
    attn_scale: float = 1.0
    rel_scale: float = 1.0
    rel_activation: nn.Module = field(default_factory=nn.Identity)
    dropout_p: float = 0.0

    @property
    def lq(self) -> int:
        return self.q.shape[2]

    @property
    def lk(self) -> int:
        return self.k.shape[2]

    @property
    def identity(self) -> bool:
        """Whether the relation activation is the identity (what (★) needs)."""
        return isinstance(self.rel_activation, nn.Identity)

    def query_block(self, start: int, end: int) -> RAProblem:
        """The problem of the queries ``start:end`` (against all keys)."""
        return replace(self, q=self.q[:, :, start:end], q_rel=self.q_rel[:, start:end],
                       values=self.values.query_block(start, end),
                       q_pos=positions(self.lq, self.q_pos, self.q.device)[start:end],
                       mask=self.mask.query_block(start, end, self.lk, self.q.device))


# ---------------------------------------------------------------------------------------- the equation, literally
def relation_scores(q_rel: Tensor, k_rel: Tensor, rel_scale: float, rel_activation: nn.Module,
                    mask: AttentionMask | None = None) -> Tensor:
    """``r_ij,ℓ = act(⟨q_rel_i,ℓ , k_rel_j,ℓ⟩ · rel_scale)`` as ``(B, Lq, Lk, R)``.

    The activation sees the scores laid out ``(B, R, Lq, Lk)``, as in the published package, so
    ``rel_activation='softmax'`` normalises each relation ℓ over the senders j of every receiver i
    (Σ_j r_ij,ℓ = 1); elementwise activations do not depend on the layout. Before a softmax the senders that
    ``mask`` excludes (causal, padding) are removed from the normaliser and get r_ij = 0: a sender stays if any
    head may attend to it (the relations are shared by the heads), and additive float masks exclude where they
    are −∞ but add nothing to the relation scores. The published package masked nothing there, so in a causal
    model future tokens changed the relations of the past; without a mask the two agree.
    """
    scores = torch.einsum("bird,bjrd->brij", q_rel, k_rel) * rel_scale  # (B, R, Lq, Lk)
    if isinstance(rel_activation, nn.Softmax) and mask is not None:
        allowed = mask.allowed(scores.shape[-2], scores.shape[-1], scores.device)
        if allowed is not None:
            scores = scores.masked_fill(~allowed.any(dim=1, keepdim=True), float("-inf"))  # (B|1, 1, Lq, Lk)
    return rel_activation(scores).permute(0, 2, 3, 1)  # (B, Lq, Lk, R)


def ra_plain(p: RAProblem) -> tuple[Tensor, Tensor, Tensor]:
    """``A_i^h = Σ_j α_ij^h (W_r^h r_ij + v_j^g)``, with α and r materialised; W_r^h is applied after the sum over
    j (it is linear), as the published package did.

    Returns:
        ``(A (B, H, Lq, D), α (B, H, Lq, Lk) after dropout, r (B, Lq, Lk, R))``.
    """
    logits = grouped_matmul(p.q, p.k.transpose(-2, -1)) * p.attn_scale  # (B, H, Lq, Lk)
    attn = torch.softmax(p.mask.apply(logits), dim=-1)
    if p.dropout_p > 0:
        attn = F.dropout(attn, p.dropout_p)
    relations = relation_scores(p.q_rel, p.k_rel, p.rel_scale, p.rel_activation, p.mask)  # (B, Lq, Lk, R)
    attended_rels = torch.einsum("bhij,bijr->bhir", attn, relations.to(attn.dtype))  # Σ_j α_ij r_ij (B, H, Lq, R)
    out = torch.einsum("bhir,hdr->bhid", attended_rels, p.wr.to(attn.dtype))  # W_r^h · (B, H, Lq, D)
    return out + p.values.attend(attn, p.q_pos), attn, relations


# --------------------------------------------------------------------------- the factorisation (★), and its kernel
def relation_readout(q_rel: Tensor, k_rel_bar: Tensor, wr: Tensor, rel_scale: float) -> Tensor:
    """The relation term of (★): ``W_r^h · (rel_scale ⟨q_rel_i,ℓ, k̄_i,ℓ^h⟩)_ℓ`` with ``k̄ = Σ_j α_ij^h k_rel_j``.

    Args:
        q_rel: ``(B, Lq, R, d_r)``; k_rel_bar: ``(B, H, Lq, R·d_r)``; wr: ``(H, D, R)``.

    Returns:
        ``(B, H, Lq, D)``.
    """
    b, n_heads, lq, _ = k_rel_bar.shape
    n_rel, d_rel = q_rel.shape[-2:]
    k_rel_bar = k_rel_bar.reshape(b, n_heads, lq, n_rel, d_rel)  # (B, H, Lq, R, d_r)
    attended_rels = (q_rel[:, None].to(k_rel_bar.dtype) * k_rel_bar).sum(-1) * rel_scale  # (B, H, Lq, R)
    per_head = attended_rels.transpose(0, 1).reshape(n_heads, b * lq, n_rel)  # (H, B*Lq, R)
    out = torch.bmm(per_head, wr.to(per_head.dtype).transpose(1, 2))  # (H, B*Lq, D)
    return out.view(n_heads, b, lq, -1).transpose(0, 1)  # (B, H, Lq, D)


def ra_fused(p: RAProblem) -> Tensor:
    """Relational attention (identity activation, per-token values) through one fused attention call, by (★).

    Returns ``A (B, H, Lq, D)``. The values ``[v_j^g | k_rel_j]`` stay at the kv heads (GQA without copies where
    SDPA's ``enable_gqa`` applies). On the CPU, q and k are zero-padded to the value width so that the flash
    kernel (which needs equal widths) is used: padding adds zeros to every score and changes nothing.
    """
    q, k, k_rel = p.q, p.k, p.k_rel
    b, n_heads, lq, dk = q.shape
    n_kv, lk, dtype = k.shape[1], k.shape[2], q.dtype
    values = p.values.tensor.to(dtype)  # (B, K, Lk, D)
    d, rel_width = values.shape[-1], k_rel.shape[-2] * k_rel.shape[-1]
    k = k.to(dtype)
    k_rel_v = k_rel.reshape(b, 1, lk, rel_width).to(dtype).expand(b, n_kv, lk, rel_width)
    v = torch.cat([values, k_rel_v], dim=-1)  # (B, K, Lk, D + R*d_r)
    width = v.shape[-1]
    rebuilds = [(v, lambda: torch.cat([values, k_rel_v], dim=-1))]
    if q.device.type == "cpu" and dk < width:
        q_in, k_in = q, k
        q, k = F.pad(q, (0, width - dk)), F.pad(k, (0, width - dk))
        rebuilds += [(q, lambda: F.pad(q_in, (0, width - dk))), (k, lambda: F.pad(k_in, (0, width - dk)))]
    gqa = {}
    if n_heads > n_kv:
        if TORCH_2_5 and q.shape[-1] == v.shape[-1]:  # enable_gqa: flash and math kernels (equal widths) only
            gqa["enable_gqa"] = True
        else:  # e.g. CUDA's memory-efficient kernel, which takes the wider values but not enable_gqa
            k, v = expand_heads(k, n_heads // n_kv), expand_heads(v, n_heads // n_kv)
            rebuilds = []
    kernel_kw = dict(**p.mask.sdpa_kwargs(), scale=p.attn_scale, dropout_p=p.dropout_p, **gqa)
    if rebuilds and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        with _SaveCompactly(rebuilds):
            out = F.scaled_dot_product_attention(q, k, v, **kernel_kw)  # (B, H, Lq, D + R*d_r)
    else:  # nothing saved (no gradients), or torch.compile (its partitioner decides what to save)
        out = F.scaled_dot_product_attention(q, k, v, **kernel_kw)
    sym, k_rel_bar = out.split([d, rel_width], dim=-1)
    return sym + relation_readout(p.q_rel, k_rel_bar, p.wr, p.rel_scale)


class _SaveCompactly(torch.autograd.graph.saved_tensors_hooks):
    """Save the padded q/k and the concatenated values of :func:`ra_fused` for backward as what rebuilds them.

    The attention kernel keeps its inputs for backward. Zero-padded q/k are ``(D + R·d_r) / Dk`` times larger than
    q/k, and the values repeat the shared relation keys at every kv head; both are rebuilt (one pad, one cat)
    when backward needs them instead, which about halves the layer's saved activations. ``rebuilds`` holds
    ``(tensor, rebuild)`` pairs; other saved tensors pass through. Not used without gradients or under
    ``torch.compile`` (whose partitioner decides what to save).
    """

    def __init__(self, rebuilds: list) -> None:
        self.rebuilds = rebuilds

        def pack(t: Tensor):
            for u, rebuild in self.rebuilds:
                if t.data_ptr() == u.data_ptr() and t.shape == u.shape and t.stride() == u.stride():
                    return _Rebuild(rebuild)
            return t

        def unpack(saved):
            return saved.rebuild() if isinstance(saved, _Rebuild) else saved

        super().__init__(pack, unpack)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.rebuilds = []  # the hooks hold no reference to the big tensors after the kernel call


class _Rebuild:
    """A saved tensor replaced by the function that recomputes it."""

    def __init__(self, rebuild) -> None:
        self.rebuild = rebuild


# ---------------------------------------------------------------------------------------- performance variants
def map_query_blocks(fn: Callable[[int, int], Tensor], n: int, block_size: int) -> Tensor:
    """``cat_s fn(s, e)`` over blocks ``s:e`` of ``block_size`` queries, concatenated on dim 2 (the query axis).

    The one query-block loop of RA, RCA and DisRCA. With gradients each block is checkpointed (recomputed in
    backward with the same dropout mask), so a block's weights ``(B, H, block, Lk)`` are the largest thing alive
    in either pass.
    """
    if n <= block_size:
        return fn(0, n)
    blocks = []
    for start in range(0, n, block_size):
        end = min(start + block_size, n)
        blocks.append(checkpoint(fn, start, end, use_reentrant=False) if torch.is_grad_enabled() else fn(start, end))
    return torch.cat(blocks, dim=2)


def ra_blocked(p: RAProblem, block_size: int | None = None) -> Tensor:
    """:func:`ra_plain` over blocks of ``block_size`` (default ``POLICY.block_size``) queries; returns
    ``A (B, H, Lq, D)``. Neither pass holds more than ``block × Lk`` weights per head and ``block × Lk × R``
    relations."""
    return map_query_blocks(lambda start, end: ra_plain(p.query_block(start, end))[0], p.lq,
                            block_size or POLICY.block_size)

# ------------------------------------------------------------------------------------------------- tiled kernel

def _tile_mask(mask: Tensor | None, b: int, n_kv: int, n_rep: int, start: int, end: int, k_end: int):
    """The additive mask of one tile, shaped to broadcast against scores ``(B, K, bq, n_rep, ke)``."""
    if mask is None:
        return None
    m = mask[..., start:end, :k_end] if mask.shape[-2] > 1 else mask[..., :k_end]  # (B|1, H|1, bq|1, ke)
    if m.shape[1] == 1:
        return m[:, :, :, None]  # (B|1, 1, bq|1, 1, ke)
    return m.view(m.shape[0], n_kv, n_rep, m.shape[2], k_end).transpose(2, 3)  # (B|1, K, bq|1, n_rep, ke)


def _future_bias(tile: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``(tile, 1, tile)`` additive causal mask of a tile's own keys: −∞ where key > query."""
    allowed = causal_mask(torch.arange(tile, device=device), tile)  # (tile, tile)
    return torch.zeros(tile, tile, dtype=dtype, device=device).masked_fill_(~allowed, float("-inf"))[:, None, :]


def _relative_band(p: Tensor, start: int, end: int, n_rep: int, max_rel: int) -> Tensor:
    """Weights summed by clipped offset: ``band[., row, M + δ] = Σ_{j: clip(j − i, −M, M) = δ} p[., row, j]``.

    ``p`` holds the weights ``(B*K, (end − start)·n_rep, ke)`` of the queries ``i = start..end−1`` (rows ordered
    query, head). Keys left of ``start − M`` all fall on δ = −M and keys right of ``end − 1 + M`` on δ = +M: two
    row sums; only the window between is scattered by offset, so a tile costs O(rows · (tile + 2M)) beyond the sums.
    """
    bk, rows, ke = p.shape
    left, right = _window(start, end, ke, max_rel)
    band = p.new_zeros(bk, rows, 2 * max_rel + 1)
    if left > 0:
        band[..., 0] += p[..., :left].sum(-1)
    if right < ke:
        band[..., 2 * max_rel] += p[..., right:].sum(-1)
    if right > left:
        band.scatter_add_(-1, _window_offsets(start, end, n_rep, left, right, max_rel, p.device).expand(bk, -1, -1),
                          p[..., left:right])
    return band


def _window(start: int, end: int, ke: int, max_rel: int) -> tuple[int, int]:
    """Keys ``[0, left)`` are at offset ≤ −M from every query ``start..end−1``, keys ``[right, ke)`` at ≥ +M."""
    left = min(ke, max(0, start - max_rel + 1))
    return left, max(left, min(ke, end - 1 + max_rel))


def _window_offsets(start: int, end: int, n_rep: int, left: int, right: int, max_rel: int, device) -> Tensor:
    """``(1, rows, right − left)``: clip(j − i, −M, M) + M for the rows (query i, head) and keys j of the window."""
    rows = torch.arange(start, end, device=device).repeat_interleave(n_rep)  # query i of each row
    return relative_offsets(rows, torch.arange(left, right, device=device), max_rel)[None]


class _TiledAttention(torch.autograd.Function):
    """``softmax(q kᵀ·scale + M) @ [v | k_rel]`` one tile of queries at a time, without ever padding q/k.

    Shapes: q ``(B, K, Lq, n_rep, Dk)`` (query head h = g·n_rep + r at ``[:, g, :, r]``), k ``(B, K, Lk, Dk)``,
    k_rel ``(B, Lk, W)`` (shared by all heads), mask ``None`` or additive, broadcastable to ``(B, H, Lq, Lk)``.
    Symbol values: per token, ``values (B, K, Lk, D)`` with ``max_rel=None``; or position-relative, the table
    ``values (K, 2M+1, D)`` with ``max_rel=M``, for queries at positions 0..Lq−1: the weights are summed by clipped
    offset per tile (:func:`_relative_band`) and the band multiplies the table. Returns
    ``(A_v (B, K, Lq, n_rep, D), A_rel (B, K, Lq, n_rep, W))``.

    Forward keeps only q, k, the values, k_rel, the outputs and the row log-sum-exp (O(L) memory); backward
    recomputes each tile's weights from the log-sum-exp, as flash attention does. Causal tiles stop at their last
    query's key.
    """

    @staticmethod
    def forward(ctx, q, k, values, k_rel, mask, is_causal: bool, scale: float, tile: int, max_rel: int | None):
        b, n_kv, lq, n_rep, dk = q.shape
        lk, d, w = k.shape[2], values.shape[-1], k_rel.shape[-1]
        qs = (q * scale).reshape(b * n_kv, lq * n_rep, dk)  # rows ordered (query, head in group)
        k3 = k.reshape(b * n_kv, lk, dk)
        v3 = values.reshape(b * n_kv, lk, d) if max_rel is None else \
            values[None].expand(b, -1, -1, -1).reshape(b * n_kv, -1, d)  # per token, or the table per (B, K)
        out_v = q.new_empty(b * n_kv, lq * n_rep, d)
        out_rel = q.new_empty(b, n_kv * lq * n_rep, w).view(b, n_kv, lq * n_rep, w)
        lse = q.new_empty(b * n_kv, lq * n_rep, 1)
        future = _future_bias(tile, q.dtype, q.device) if is_causal else None
        for start in range(0, lq, tile):
            end = min(start + tile, lq)
            ke = end if is_causal else lk
            rows = slice(start * n_rep, end * n_rep)
            scores = torch.bmm(qs[:, rows], k3[:, :ke].transpose(1, 2))  # (B*K, bq*n_rep, ke)
            _TiledAttention._mask_scores(scores, mask, future, b, n_kv, n_rep, start, end, ke)
            row_max = scores.amax(dim=-1, keepdim=True)
            p = scores.sub_(row_max).exp_()  # unnormalised weights (B*K, bq*n_rep, ke)
            row_sum = p.sum(dim=-1, keepdim=True)
            lse[:, rows] = row_max + row_sum.log()
            inv = row_sum.reciprocal_()  # normalise the (narrow) outputs, not the (wide) weights
            if max_rel is None:
                torch.mul(torch.bmm(p, v3[:, :ke]), inv, out=out_v[:, rows])
            else:
                torch.mul(torch.bmm(_relative_band(p, start, end, n_rep, max_rel), v3), inv, out=out_v[:, rows])
            rel = torch.bmm(p.view(b, -1, ke), k_rel[:, :ke]).view(b * n_kv, -1, w)  # (B*K, bq*n_rep, W)
            out_rel[:, :, rows] = rel.mul_(inv).view(b, n_kv, -1, w)
        ctx.save_for_backward(qs, k3, values, k_rel, out_v, out_rel, lse, mask)
        ctx.geometry = (b, n_kv, lq, n_rep, dk, lk, d, w, is_causal, scale, tile, max_rel)
        ctx.dtype = q.dtype
        return out_v.view(b, n_kv, lq, n_rep, d), out_rel.view(b, n_kv, lq, n_rep, w)

    @staticmethod
    def _mask_scores(scores, mask, future, b, n_kv, n_rep, start, end, ke) -> None:
        view = scores.view(b, n_kv, end - start, n_rep, ke)
        m = _tile_mask(mask, b, n_kv, n_rep, start, end, ke)
        if m is not None:
            view.add_(m)
        if future is not None and end - start > 1:  # causal: only the tile's own keys can lie in the future
            view[..., start:end].add_(future[: end - start, :, : end - start])

    @staticmethod
    def backward(ctx, grad_v, grad_rel):
        with torch.autocast(grad_v.device.type, enabled=False):
            return _TiledAttention._backward(ctx, grad_v.to(ctx.dtype), grad_rel.to(ctx.dtype))

    @staticmethod
    def _backward(ctx, grad_v, grad_rel):
        qs, k3, values, k_rel, out_v, out_rel, lse, mask = ctx.saved_tensors
        b, n_kv, lq, n_rep, dk, lk, d, w, is_causal, scale, tile, max_rel = ctx.geometry
        relative = max_rel is not None
        v3 = values[None].expand(b, -1, -1, -1).reshape(b * n_kv, -1, d) if relative else \
            values.reshape(b * n_kv, lk, d)
        grad_v = grad_v.reshape(b * n_kv, lq * n_rep, d)
        grad_rel = grad_rel.reshape(b, n_kv, lq * n_rep, w)
        # D_i = Σ_c dO_ic O_ic: the softmax backward's row term, over both value blocks
        row_dot = (grad_v * out_v).sum(-1, keepdim=True) + (grad_rel * out_rel).sum(-1).view(b * n_kv, -1, 1)
        dq, dk_, dv = torch.empty_like(qs), torch.zeros_like(k3), torch.zeros_like(v3)
        dk_rel = torch.zeros_like(k_rel)
        future = _future_bias(tile, qs.dtype, qs.device) if is_causal else None
        for start in range(0, lq, tile):
            end = min(start + tile, lq)
            ke = end if is_causal else lk
            rows = slice(start * n_rep, end * n_rep)
            scores = torch.bmm(qs[:, rows], k3[:, :ke].transpose(1, 2))
            _TiledAttention._mask_scores(scores, mask, future, b, n_kv, n_rep, start, end, ke)
            p = scores.sub_(lse[:, rows]).exp_()  # (B*K, bq*n_rep, ke)
            g_v, g_rel = grad_v[:, rows], grad_rel[:, :, rows].reshape(b, -1, w)
            if relative:  # dT = bandᵀ dO;  dP_ij = dO_i · T[clip(j − i)]
                dv.baddbmm_(_relative_band(p, start, end, n_rep, max_rel).transpose(1, 2), g_v)
                dp = _TiledAttention._relative_grad_weights(torch.bmm(g_v, v3.transpose(1, 2)), start, end, ke,
                                                            n_rep, max_rel)
            else:
                dv[:, :ke].baddbmm_(p.transpose(1, 2), g_v)
                dp = torch.bmm(g_v, v3[:, :ke].transpose(1, 2))  # (B*K, bq*n_rep, ke)
            dk_rel[:, :ke].baddbmm_(p.view(b, -1, ke).transpose(1, 2), g_rel)
            dp.view(b, -1, ke).baddbmm_(g_rel, k_rel[:, :ke].transpose(1, 2))
            ds = dp.sub_(row_dot[:, rows]).mul_(p)  # dS = P ⊙ (dP − D)
            torch.bmm(ds, k3[:, :ke], out=dq[:, rows])
            dk_[:, :ke].baddbmm_(ds.transpose(1, 2), qs[:, rows])
        dq = dq.mul_(scale).view(b, n_kv, lq, n_rep, dk)
        dvalues = dv.view(b, n_kv, -1, d).sum(0) if relative else dv.view(b, n_kv, lk, d)
        return dq, dk_.view(b, n_kv, lk, dk), dvalues, dk_rel, None, None, None, None, None

    @staticmethod
    def _relative_grad_weights(per_offset: Tensor, start: int, end: int, ke: int, n_rep: int, max_rel: int):
        """``dP (B*K, rows, ke)`` from ``per_offset[., row, M + δ] = dO_row · T[δ]``, spread back over the keys."""
        bk, rows, _ = per_offset.shape
        left, right = _window(start, end, ke, max_rel)
        dp = per_offset.new_empty(bk, rows, ke)
        if left > 0:
            dp[..., :left] = per_offset[..., :1]
        if right < ke:
            dp[..., right:] = per_offset[..., 2 * max_rel:]
        if right > left:
            index = _window_offsets(start, end, n_rep, left, right, max_rel, dp.device).expand(bk, -1, -1)
            dp[..., left:right] = per_offset.gather(-1, index)
        return dp


def ra_tiled(p: RAProblem, tile_rows: int | None = None) -> Tensor:
    """Relational attention (identity activation, no attention dropout) by (★), in tiles of queries.

    The same arithmetic as :func:`ra_fused`, but the scores use q/k at their own width Dk while the values
    ``[v | k_rel]`` are D + R·d_r wide, which the CPU flash kernel cannot do (it needs equal widths, so
    :func:`ra_fused` zero-pads q/k and multiplies those zeros in four of its seven matrix products). Each tile of
    ``tile_rows`` (default ``POLICY.tile_rows``) query rows is computed with batched matrix products; the relation
    keys are attended for all heads in one product; memory is O(L · tile) (see :class:`_TiledAttention`). The
    values are per token, or :class:`~dual_attention.symbol_values.RelativeSymbols` (queries at positions
    0..Lq−1), whose weights are summed by offset inside each tile, so position-relative symbols cost
    O(L · (tile + M)) memory too. Returns ``A (B, H, Lq, D)``.
    """
    q, k, k_rel = p.q, p.k, p.k_rel
    b, n_heads, lq, dk = q.shape
    n_kv = k.shape[1]
    n_rep = n_heads // n_kv
    out_dtype = q.dtype
    dtype = torch.promote_types(q.dtype, torch.float32)  # half-precision inputs: the tiles run in float32
    tile = max(1, (tile_rows or POLICY.tile_rows) // n_rep)
    max_rel, values = None, p.values
    if isinstance(values, RelativeSymbols):
        max_rel, values = values.max_rel_pos, values.table.permute(1, 0, 2)  # (K, 2M+1, D)
    else:
        values = values.tensor  # (B, K, Lk, D)
    d = values.shape[-1]
    q5 = q.to(dtype).reshape(b, n_kv, n_rep, lq, dk).transpose(2, 3)  # (B, K, Lq, n_rep, Dk)
    additive = mask_to_additive(p.mask.tensor, dtype)
    with torch.autocast(q.device.type, enabled=False):  # the tiles run in float32 or float64
        out_v, out_rel = _TiledAttention.apply(q5, k.to(dtype), values.to(dtype),
                                               k_rel.reshape(b, k_rel.shape[1], -1).to(dtype), additive,
                                               p.mask.is_causal, p.attn_scale, tile, max_rel)
    sym = out_v.transpose(2, 3).reshape(b, n_heads, lq, d).to(out_dtype)  # (B, H, Lq, D)
    k_rel_bar = out_rel.transpose(2, 3).reshape(b, n_heads, lq, -1).to(out_dtype)  # (B, H, Lq, R*d_r)
    return sym + relation_readout(p.q_rel, k_rel_bar, p.wr, p.rel_scale)


# ------------------------------------------------------------------------------------------------- the dispatcher
def _refusal(implementation: str, p: RAProblem) -> str | None:
    """Why ``implementation`` cannot compute ``p`` exactly, or None if it can."""
    if implementation not in ("fused", "tiled", "triton"):
        return None
    if not p.identity:
        return (f"rel_activation must be 'identity' (the factorisation (★) needs it), this layer's is "
                f"{type(p.rel_activation).__name__}; use 'blocked' or 'plain'")
    if implementation == "fused" and not isinstance(p.values, TokenValues):
        return f"it needs per-token symbols, got {p.values.form} symbol values; use 'blocked' (or 'tiled')"
    if implementation in ("tiled", "triton") and p.values.form == "pair":
        return ("it needs per-token or compact position-relative symbols (RelativeSymbols), not the materialised "
                "[n, n, d] tensor; use 'blocked'")
    if implementation in ("tiled", "triton") and p.dropout_p > 0:
        return (f"it has no attention dropout (dropout={p.dropout_p} in training); use 'fused' or 'blocked' when "
                "training with dropout")
    return None


def resolve_implementation(implementation: str, p: RAProblem, *, need_weights: bool, decoding: bool) -> str:
    """The kernel that computes ``p``: the only place that chooses one or refuses one (``ValueError`` with why).

    ``'auto'`` takes ``'plain'`` for the weights (``need_weights``) or a short decoding step (see
    :meth:`~dual_attention.attention_utils.KernelPolicy.explicit`); else, for the identity activation, ``'tiled'``
    where :meth:`~dual_attention.attention_utils.KernelPolicy.prefer_tiled` says it is faster (it also takes
    compact position-relative symbols) or ``'fused'`` for per-token symbols; else ``'blocked'``. A named
    implementation runs as named, except that ``'tiled'`` with position-relative symbols at cached positions
    runs ``'blocked'`` (the tiles place the queries at ``0..Lq-1``).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is not valid; allowed values: "
                         f"{', '.join(map(repr, IMPLEMENTATIONS))}")
    if implementation == "auto":
        if POLICY.explicit(need_weights, p.lq, decoding):
            return "plain"
        tiled = POLICY.prefer_tiled(p.q.device, p.q.dtype, p.dropout_p > 0)
        if not p.identity or p.values.form == "pair" or (p.values.form == "relative" and not tiled):
            return "blocked"
        implementation = "tiled" if tiled else "fused"
        if p.q.device.type == "cuda" and p.dropout_p == 0 and _triton_usable():
            implementation = "triton"  # dual_attention.triton_ra: the fused Triton kernel
    reason = _refusal(implementation, p)
    if reason is not None:
        raise ValueError(f"implementation={implementation!r} cannot compute this layer: {reason}")
    if implementation in ("tiled", "triton") and p.values.form == "relative" and p.q_pos is not None:
        return "blocked"
    return implementation


def _triton_usable() -> bool:
    """The Triton kernel is installed and runs on CUDA here (not under ``torch.compile``)."""
    if torch.compiler.is_compiling():
        return False
    from dual_attention.triton_ra import triton_available

    return triton_available("cuda")


def run_implementation(implementation: str, p: RAProblem) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(A (B, H, Lq, D), α or None, r or None)`` by a resolved implementation (only ``'plain'`` has α and r)."""
    if implementation == "plain":
        return ra_plain(p)
    if implementation == "triton":
        from dual_attention.triton_ra import ra_triton  # Triton is optional: imported only when used

        return ra_triton(p), None, None
    kernel = {"fused": ra_fused, "tiled": ra_tiled, "blocked": ra_blocked}[implementation]
    return kernel(p), None, None
