"""The computation of relational attention, in interchangeable forms.

For query (receiver) i, key (sender) j, attention head h (kv head g) and relation ℓ = 1..R:

    α_ij^h   = softmax_j( ⟨q_i^h, k_j^g⟩ · attn_scale + M_ij )                    (then attention dropout)
    r_ij,ℓ   = act( ⟨q_rel_i,ℓ , k_rel_j,ℓ⟩ · rel_scale )
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

#: ``scaled_dot_product_attention(enable_gqa=...)`` exists from torch 2.5 on
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)

#: query-block lengths up to which ``implementation='auto'`` materialises α in one go (``ra_plain`` without
#: relations): cheaper than a fused kernel call for the few queries of a cached decoding step
DECODE_MAX_QUERIES = 16


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
    return torch.einsum("bhir,hdr->bhid", attended_rels, wr.to(attended_rels.dtype))


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
        logits = logits + mask_to_additive(mask, logits.dtype)
    attn = attn_dropout(torch.softmax(logits, dim=-1))  # (B, H, Lq, Lk)

    relations = None
    if return_relations or not isinstance(rel_activation, nn.Identity):
        relations = rel_activation(torch.einsum("bird,bjrd->bijr", q_rel, k_rel) * rel_scale)  # (B, Lq, Lk, R)
        attended_rels = torch.einsum("bhij,bijr->bhir", attn, relations.to(attn.dtype))  # (B, H, Lq, R)
        out = torch.einsum("bhir,hdr->bhid", attended_rels, wr.to(attn.dtype))  # (B, H, Lq, D)
    else:  # (★): the relation keys, shared by all heads, attended in one batched matmul
        k_rel_bar = torch.matmul(attn.reshape(b, n_heads * lq, lk),
                                 k_rel.reshape(b, lk, -1).to(attn.dtype))  # (B, H*Lq, R*d_r)
        out = relation_readout(q_rel, k_rel_bar.view(b, n_heads, lq, -1), wr, rel_scale)

    out = out + attend_values(attn, values, q_pos)
    return out, attn, relations if return_relations else None


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
    ``[v_j^g | k_rel_j]`` stay at the kv heads (GQA without copies where SDPA supports ``enable_gqa``). On the CPU,
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
        if _SDPA_HAS_GQA:
            gqa["enable_gqa"] = True
        else:
            k, v = _expand_heads(k, n_rep), _expand_heads(v, n_rep)
            rebuilds = []
    with _SaveCompactly(rebuilds):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=attn_scale,
                                             dropout_p=dropout_p, **gqa)  # (B, H, Lq, D + R*d_r)
    sym, k_rel_bar = out.split([d, rel_width], dim=-1)
    return sym + relation_readout(q_rel, k_rel_bar, wr, rel_scale)


class _SaveCompactly(torch.autograd.graph.saved_tensors_hooks):
    """Save the padded q/k and the concatenated values of :func:`ra_fused` for backward as what rebuilds them.

    The attention kernel keeps its inputs for backward. Zero-padded q/k are ``(D + R·d_r) / Dk`` times larger than
    q/k, and the values repeat the shared relation keys at every kv head; both are rebuilt (one pad, one cat)
    when backward needs them instead, which about halves the layer's saved activations. ``rebuilds`` holds
    ``(tensor, rebuild)`` pairs; other saved tensors pass through. Inactive without gradients and under
    ``torch.compile`` (whose partitioner decides what to save).
    """

    def __init__(self, rebuilds: list) -> None:
        self.active = bool(rebuilds) and torch.is_grad_enabled() and not torch.compiler.is_compiling()
        self.rebuilds = rebuilds if self.active else []

        def pack(t: Tensor):
            for u, rebuild in self.rebuilds:
                if t.data_ptr() == u.data_ptr() and t.shape == u.shape and t.stride() == u.stride():
                    return _Rebuild(rebuild)
            return t

        def unpack(saved):
            return saved.rebuild() if isinstance(saved, _Rebuild) else saved

        super().__init__(pack, unpack)

    def __enter__(self):
        if self.active:
            super().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            super().__exit__(*exc)
        self.rebuilds = []  # the hooks hold no reference to the big tensors after the kernel call


class _Rebuild:
    """A saved tensor replaced by the function that recomputes it."""

    def __init__(self, rebuild) -> None:
        self.rebuild = rebuild
