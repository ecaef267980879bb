"""The computation of relational attention, in interchangeable forms.

For query (receiver) i, key (sender) j, attention head h (kv head g) and relation ℓ = 1..R:

    α_ij^h   = softmax_j( ⟨q_i^h, k_j^g⟩ · attn_scale + M_ij )                    (then attention dropout)
    r_ij,ℓ   = act( ⟨q_rel_i,ℓ , k_rel_j,ℓ⟩ · rel_scale )      (softmax: over the senders j, masked ones excluded)
    A_i^h    = Σ_j α_ij^h v_j^g  +  W_r^h ( Σ_j α_ij^h r_ij )                       (W_r^h ∈ R^{D×R})

where v_j^g = W_s^g s_j is the value of the sender's symbol, or, with position-relative symbols,
v_ij^g = W_s^g s_{clip(j − p_i, −M, M)} (p_i the absolute position of query i).

For the identity activation (the default) the relation term factorises:

    Σ_j α_ij^h r_ij,ℓ = rel_scale · ⟨ q_rel_i,ℓ , Σ_j α_ij^h k_rel_j,ℓ ⟩                      (★)

so the relations ``(B, Lq, Lk, R)`` never need to exist: the relation keys are attended like values, and they are
the same for every head.

* :func:`ra_plain` materialises α ``(B, H, Lq, Lk)``, and the relations ``(B, Lq, Lk, R)`` when asked for (the
  reference, and the only form that returns them). With ``return_relations=False`` and the identity activation
  it uses (★) instead: α times ``[v | k_rel]``, one batched matmul for the relation keys shared by all heads. This
  is the fastest form for short query blocks (one-token decoding steps). Relative symbols are summed by offset
  (a band ``(B, H, Lq, 2M+1)``), never gathered into an ``(Lq, Lk, d)`` tensor.
* :func:`ra_blocked` runs :func:`ra_plain` on blocks of queries with activation checkpointing, so memory is
  O(block · Lk) instead of O(Lq · Lk) in forward and backward. Exact for every option.
* :func:`ra_fused` uses (★) in one call of :func:`torch.nn.functional.scaled_dot_product_attention` with values
  ``[v_j | k_rel_j]`` (width D + R·d_r): flash / memory-efficient kernels, O(L) memory, no L×L tensor. On the CPU
  q and k are zero-padded to the value width (the CPU flash kernel needs equal widths; the zeros change no
  score). ``docs/performance.md`` compares this with chunked value calls and a hand-written query-blocked pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dual_attention.attention_utils import mask_to_additive

#: ``scaled_dot_product_attention(enable_gqa=...)`` and ``torch.is_autocast_enabled(device)`` exist from torch 2.5 on
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)

#: query-block lengths up to which ``implementation='auto'`` materialises α in one go (``ra_plain`` without
#: relations): cheaper than a fused kernel call for the few queries of a cached decoding step
DECODE_MAX_QUERIES = 16


def prefer_tiled(device: torch.device, dtype: torch.dtype, dropout_active: bool) -> bool:
    """Whether :func:`ra_tiled` beats :func:`ra_fused` here: on the CPU in float32/float64, without attention
    dropout (which the tiles do not implement), autocast or ``torch.compile`` (both keep the fused kernel).

    On the CPU the fused kernel must zero-pad q/k to the value width (see :func:`ra_fused`); measured on torch
    2.13 the tiles then take 25-40 % less time (``docs/performance.md``). CUDA's kernels take unequal widths.
    """
    if device.type != "cpu" or dtype not in (torch.float32, torch.float64) or dropout_active:
        return False
    return not torch.compiler.is_compiling() and not _cpu_autocast_enabled()


def _cpu_autocast_enabled() -> bool:
    if _SDPA_HAS_GQA:  # torch >= 2.5: the device-generic form
        return torch.is_autocast_enabled("cpu")
    return torch.is_autocast_cpu_enabled()


@dataclass
class RelativeSymbolValues:
    """Projected position-relative symbol values: ``table[M + δ]`` is ``W_s s_δ`` for δ = −M..M.

    Attributes:
        table: ``(2M + 1, Hkv, D)``.
        max_rel_pos: M; offsets beyond ±M are clipped.
    """

    table: Tensor
    max_rel_pos: int

    def offsets(self, q_pos: Tensor, k_len: int) -> Tensor:
        """Index ``(Lq, Lk)`` into ``table``: clip(j − p_i, −M, M) + M."""
        j = torch.arange(k_len, device=q_pos.device)
        return (j[None, :] - q_pos[:, None]).clamp(-self.max_rel_pos, self.max_rel_pos) + self.max_rel_pos


def _expand_heads(x: Tensor, n_rep: int) -> Tensor:
    """``(B, K, L, D) -> (B, K*n_rep, L, D)``, kv head g serving query heads g*n_rep .. g*n_rep+n_rep-1."""
    if n_rep == 1:
        return x
    b, k, length, d = x.shape
    return x[:, :, None].expand(b, k, n_rep, length, d).reshape(b, k * n_rep, length, d)


def _causal_mask(q_pos: Tensor, k_len: int) -> Tensor:
    return (torch.arange(k_len, device=q_pos.device)[None, :] <= q_pos[:, None])[None, None]  # (1, 1, Lq, Lk)


def _grouped_matmul(weights: Tensor, values: Tensor) -> Tensor:
    """``Σ_j w_ij^h v_j^g`` for weights ``(B, H, Lq, Lk)`` and values ``(B, K, Lk, D)`` (h // (H/K) = g).

    The query heads of one kv head are stacked along the query axis, so GQA never copies the values.
    """
    b, n_heads, lq, lk = weights.shape
    n_kv = values.shape[1]
    if n_kv == n_heads:
        return torch.matmul(weights, values.to(weights.dtype))
    grouped = weights.reshape(b, n_kv, (n_heads // n_kv) * lq, lk)  # (B, K, n_rep*Lq, Lk)
    return torch.matmul(grouped, values.to(weights.dtype)).view(b, n_heads, lq, values.shape[-1])


def attend_values(weights: Tensor, values: Tensor | RelativeSymbolValues, q_pos: Tensor) -> Tensor:
    """Σ_j w_ij v_j for weights ``(B, H, Lq, Lk)`` and symbol values in any of the three forms of :func:`ra_plain`.

    Relative values are summed by offset: ``band[i, δ] = Σ_{j: clip(j − p_i) = δ} w_ij``, then ``band @ table``,
    which costs O(Lq·Lk + Lq·M·D) instead of the O(Lq·Lk·D) of gathering a value per pair.
    """
    b, n_heads, lq, lk = weights.shape
    if isinstance(values, RelativeSymbolValues):
        table = values.table  # (2M+1, Hkv, D)
        n_rep = n_heads // table.shape[1]
        idx = values.offsets(q_pos, lk).expand(b, n_heads, lq, lk)  # (B, H, Lq, Lk)
        band = weights.new_zeros(b, n_heads, lq, table.shape[0]).scatter_add_(-1, idx, weights)  # (B,H,Lq,2M+1)
        return torch.matmul(band, _expand_heads(table.permute(1, 0, 2)[None], n_rep)[0].to(band.dtype))
    n_rep = n_heads // values.shape[1]
    if values.dim() == 5:  # per-pair values (B, Hkv, Lq, Lk, D)
        v = values.repeat_interleave(n_rep, dim=1) if n_rep > 1 else values
        return torch.einsum("bhij,bhijd->bhid", weights, v.to(weights.dtype))
    return _grouped_matmul(weights, values)


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


def sender_mask(mask: Tensor | None) -> Tensor | None:
    """The senders a receiver may use, shared by all heads: ``(B|1, 1, Lq, Lk)`` bool, from an attention mask
    ``(B|1, H|1, Lq, Lk)`` (bool, or additive float where −∞ excludes). A sender is kept if any head may attend to
    it (the relations are shared by the heads); additive biases are not relation scores and are not added."""
    if mask is None:
        return None
    allowed = mask if mask.dtype == torch.bool else torch.isfinite(mask)
    return allowed.any(dim=1, keepdim=True)


def relation_scores(q_rel: Tensor, k_rel: Tensor, rel_scale: float, rel_activation: nn.Module,
                    mask: Tensor | None = None) -> Tensor:
    """``r_ij,ℓ = act(⟨q_rel_i,ℓ , k_rel_j,ℓ⟩ · rel_scale)`` as ``(B, Lq, Lk, R)``.

    The activation sees the scores laid out ``(B, R, Lq, Lk)``, as in the published package, so
    ``rel_activation='softmax'`` normalises each relation ℓ over the senders j of every receiver i
    (Σ_j r_ij,ℓ = 1); elementwise activations do not depend on the layout. Before a softmax the senders that
    ``mask`` excludes (causal, padding; see :func:`sender_mask`) are removed from the normaliser and get
    r_ij = 0. The published package masked nothing there, so in a causal model future tokens changed the
    relations of the past; without a mask the two agree.
    """
    scores = torch.einsum("bird,bjrd->brij", q_rel, k_rel) * rel_scale  # (B, R, Lq, Lk)
    if isinstance(rel_activation, nn.Softmax):
        allowed = sender_mask(mask)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
    return rel_activation(scores).permute(0, 2, 3, 1)  # (B, Lq, Lk, R)


def ra_plain(
    q: Tensor,
    k: Tensor,
    q_rel: Tensor,
    k_rel: Tensor,
    values: Tensor | RelativeSymbolValues,
    wr: Tensor,
    *,
    attn_scale: float,
    rel_scale: float,
    rel_activation: nn.Module,
    attn_dropout: nn.Module,
    mask: Tensor | None = None,
    is_causal: bool = False,
    q_pos: Tensor | None = None,
    return_relations: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Relational attention with the attention weights materialised.

    Args:
        q: ``(B, H, Lq, Dk)``; k: ``(B, Hkv, Lk, Dk)`` (RoPE already applied).
        q_rel: ``(B, Lq, R, d_r)``; k_rel: ``(B, Lk, R, d_r)``.
        values: symbol values ``(B, Hkv, Lk, D)``, per-pair values ``(B, Hkv, Lq, Lk, D)`` (published-style
            ``[n, n, d]`` relative symbols), or :class:`RelativeSymbolValues`.
        wr: ``(H, D, R)``.
        mask: ``None`` or a 4-D bool/float mask broadcastable to ``(B, H, Lq, Lk)``.
        is_causal: causal masking by position (``q_pos``, default ``0..Lq-1``; keys at ``0..Lk-1``).
        q_pos: absolute positions ``(Lq,)`` of the queries.
        return_relations: materialise and return the relations. ``False`` with the identity activation uses the
            factorised form (★) and never builds them (returns ``None`` in their place).

    Returns:
        ``(A (B, H, Lq, D), α (B, H, Lq, Lk) after dropout, r (B, Lq, Lk, R) or None)``.
    """
    b, n_heads, lq, _ = q.shape
    lk = k.shape[2]
    if q_pos is None:
        q_pos = torch.arange(lq, device=q.device)

    logits = _grouped_matmul(q, k.transpose(-2, -1)) * attn_scale  # (B, H, Lq, Lk)
    if is_causal:
        mask = _causal_mask(q_pos, lk) if mask is None else mask & _causal_mask(q_pos, lk)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask
    attn = attn_dropout(torch.softmax(logits, dim=-1))  # (B, H, Lq, Lk)

    relations = None
    if return_relations or not isinstance(rel_activation, nn.Identity):
        relations = relation_scores(q_rel, k_rel, rel_scale, rel_activation, mask)  # (B, Lq, Lk, R)
        attended_rels = torch.einsum("bhij,bijr->bhir", attn, relations.to(attn.dtype))  # (B, H, Lq, R)
        out = torch.einsum("bhir,hdr->bhid", attended_rels, wr.to(attn.dtype))  # (B, H, Lq, D)
    else:  # (★): the relation keys, shared by all heads, attended in one batched matmul
        k_rel_bar = torch.matmul(attn.reshape(b, n_heads * lq, lk),
                                 k_rel.reshape(b, lk, -1).to(attn.dtype))  # (B, H*Lq, R*d_r)
        out = relation_readout(q_rel, k_rel_bar.view(b, n_heads, lq, -1), wr, rel_scale)

    out = out + attend_values(attn, values, q_pos)
    return out, attn, relations if return_relations else None


def map_query_blocks(fn, n: int, block_size: int, *tensors: Tensor) -> Tensor:
    """``cat_s fn(s, e, *[t[:, :, s:e]])`` over blocks ``s:e`` of ``block_size`` queries (dim 2), concatenated on dim 2.

    With gradients each block is checkpointed (recomputed in backward with the same dropout mask), so a block's
    weights ``(B, H, block, Lk)`` are the largest thing alive in either pass.
    """
    if n <= block_size:
        return fn(0, n, *tensors)
    blocks = []
    for start in range(0, n, block_size):
        end = min(start + block_size, n)
        sliced = [t[:, :, start:end] for t in tensors]

        def run(*ts: Tensor, start: int = start, end: int = end) -> Tensor:
            return fn(start, end, *ts)

        blocks.append(checkpoint(run, *sliced, use_reentrant=False) if torch.is_grad_enabled() else run(*sliced))
    return torch.cat(blocks, dim=2)


def ra_blocked(
    q: Tensor,
    k: Tensor,
    q_rel: Tensor,
    k_rel: Tensor,
    values: Tensor | RelativeSymbolValues,
    wr: Tensor,
    *,
    block_size: int = 256,
    mask: Tensor | None = None,
    is_causal: bool = False,
    q_pos: Tensor | None = None,
    **kwargs,
) -> Tensor:
    """:func:`ra_plain` (without relations) over blocks of ``block_size`` queries; returns ``A (B, H, Lq, D)``.

    With gradients enabled each block is checkpointed (recomputed in backward, with the same dropout mask),
    so neither pass ever holds more than ``block_size × Lk`` attention weights per head (and, for a non-identity
    activation, ``block_size × Lk × R`` relations).
    """
    lq = q.shape[2]
    if q_pos is None:
        q_pos = torch.arange(lq, device=q.device)
    kwargs["return_relations"] = False
    if lq <= block_size:
        return ra_plain(q, k, q_rel, k_rel, values, wr, mask=mask, is_causal=is_causal, q_pos=q_pos, **kwargs)[0]

    def block(start: int, end: int) -> Tensor:
        def run(q_b: Tensor, q_rel_b: Tensor) -> Tensor:
            m = None if mask is None else (mask if mask.shape[-2] == 1 else mask[..., start:end, :])
            vals = values
            if isinstance(values, Tensor) and values.dim() == 5:
                vals = values[:, :, start:end]
            return ra_plain(q_b, k, q_rel_b, k_rel, vals, wr, mask=m, is_causal=is_causal,
                            q_pos=q_pos[start:end], **kwargs)[0]

        args = (q[:, :, start:end], q_rel[:, start:end])
        if torch.is_grad_enabled():
            return checkpoint(run, *args, use_reentrant=False)
        return run(*args)

    return torch.cat([block(s, min(s + block_size, lq)) for s in range(0, lq, block_size)], dim=2)


def ra_fused(
    q: Tensor,
    k: Tensor,
    q_rel: Tensor,
    k_rel: Tensor,
    values: Tensor,
    wr: Tensor,
    *,
    attn_scale: float,
    rel_scale: float,
    dropout_p: float = 0.0,
    mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """Relational attention (identity relation activation) through one fused attention call, by (★).

    Shapes as in :func:`ra_plain` (``values (B, Hkv, Lk, D)``); returns ``A (B, H, Lq, D)``. The values
    ``[v_j^g | k_rel_j]`` stay at the kv heads (GQA without copies where SDPA's ``enable_gqa`` applies). On the CPU,
    q and k are zero-padded to the value width so that the flash kernel (which needs equal widths) is used:
    padding adds zeros to every score and changes nothing.
    """
    b, n_heads, lq, dk = q.shape
    n_kv, lk, d = k.shape[1], k.shape[2], values.shape[-1]
    n_rep = n_heads // n_kv
    rel_width = k_rel.shape[-2] * k_rel.shape[-1]
    dtype = q.dtype
    k, values = k.to(dtype), values.to(dtype)
    k_rel_v = k_rel.reshape(b, 1, lk, rel_width).to(dtype).expand(b, n_kv, lk, rel_width)
    v = torch.cat([values, k_rel_v], dim=-1)  # (B, K, Lk, D + R*d_r)
    width = v.shape[-1]
    rebuilds = [(v, lambda: torch.cat([values, k_rel_v], dim=-1))]
    if q.device.type == "cpu" and dk < width:
        q_in, k_in = q, k
        q, k = F.pad(q, (0, width - dk)), F.pad(k, (0, width - dk))
        rebuilds += [(q, lambda: F.pad(q_in, (0, width - dk))), (k, lambda: F.pad(k_in, (0, width - dk)))]
    gqa = {}
    if n_rep > 1:
        if _SDPA_HAS_GQA and q.shape[-1] == v.shape[-1]:  # enable_gqa: flash and math kernels (equal widths) only
            gqa["enable_gqa"] = True
        else:  # e.g. CUDA's memory-efficient kernel, which takes the wider values but not enable_gqa
            k, v = _expand_heads(k, n_rep), _expand_heads(v, n_rep)
            rebuilds = []
    kernel_kw = dict(attn_mask=mask, is_causal=is_causal, scale=attn_scale, dropout_p=dropout_p, **gqa)
    if rebuilds and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        with _SaveCompactly(rebuilds):
            out = F.scaled_dot_product_attention(q, k, v, **kernel_kw)  # (B, H, Lq, D + R*d_r)
    else:  # nothing saved (no gradients), or torch.compile (its partitioner decides what to save)
        out = F.scaled_dot_product_attention(q, k, v, **kernel_kw)
    sym, k_rel_bar = out.split([d, rel_width], dim=-1)
    return sym + relation_readout(q_rel, k_rel_bar, wr, rel_scale)


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


# ------------------------------------------------------------------------------------------------- tiled kernel
#: queries (times the query heads of one kv head) per tile of :func:`ra_tiled`
TILE_ROWS = 64


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
    bias = torch.full((tile, tile), float("-inf"), dtype=dtype, device=device).triu_(1)
    return bias[:, None, :]


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
    i = torch.arange(start, end, device=device).repeat_interleave(n_rep)[:, None]
    j = torch.arange(left, right, device=device)[None, :]
    return ((j - i).clamp(-max_rel, max_rel) + max_rel)[None]


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


def ra_tiled(
    q: Tensor,
    k: Tensor,
    q_rel: Tensor,
    k_rel: Tensor,
    values: Tensor | RelativeSymbolValues,
    wr: Tensor,
    *,
    attn_scale: float,
    rel_scale: float,
    mask: Tensor | None = None,
    is_causal: bool = False,
    tile_rows: int | None = None,
) -> Tensor:
    """Relational attention (identity activation, no attention dropout) by (★), in tiles of queries.

    The same arithmetic as :func:`ra_fused`, but the scores use q/k at their own width Dk while the values
    ``[v | k_rel]`` are D + R·d_r wide, which the CPU flash kernel cannot do (it needs equal widths, so
    :func:`ra_fused` zero-pads q/k and multiplies those zeros in four of its seven matrix products). Each tile of
    ``tile_rows`` query rows is computed with batched matrix products; the relation keys are attended for all
    heads in one product; memory is O(L · tile) (see :class:`_TiledAttention`). Shapes as in :func:`ra_fused`;
    ``values`` may also be :class:`RelativeSymbolValues` (queries at positions 0..Lq−1), whose weights are summed
    by offset inside each tile, so position-relative symbols cost O(L · (tile + M)) memory too.
    """
    b, n_heads, lq, dk = q.shape
    n_kv = k.shape[1]
    n_rep = n_heads // n_kv
    out_dtype = q.dtype
    dtype = torch.promote_types(q.dtype, torch.float32)  # half-precision inputs: the tiles run in float32
    tile = max(1, (tile_rows or TILE_ROWS) // n_rep)
    max_rel = None
    if isinstance(values, RelativeSymbolValues):
        max_rel, values = values.max_rel_pos, values.table.permute(1, 0, 2)  # (K, 2M+1, D)
    d = values.shape[-1]
    q5 = q.to(dtype).reshape(b, n_kv, n_rep, lq, dk).transpose(2, 3)  # (B, K, Lq, n_rep, Dk)
    additive = None if mask is None else mask_to_additive(mask, dtype)
    with torch.autocast(q.device.type, enabled=False):  # the tiles run in float32 or float64
        out_v, out_rel = _TiledAttention.apply(q5, k.to(dtype), values.to(dtype),
                                               k_rel.reshape(b, k_rel.shape[1], -1).to(dtype), additive,
                                               is_causal, attn_scale, tile, max_rel)
    sym = out_v.transpose(2, 3).reshape(b, n_heads, lq, d).to(out_dtype)  # (B, H, Lq, D)
    k_rel_bar = out_rel.transpose(2, 3).reshape(b, n_heads, lq, -1).to(out_dtype)  # (B, H, Lq, R*d_r)
    return sym + relation_readout(q_rel, k_rel_bar, wr, rel_scale)
