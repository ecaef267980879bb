"""Cached decoding at the cost of a Transformer: one lean step per generated token, its weights fused per call.

A cached decoding step of a language model computes, per layer, for the one new token at position p (block input h,
attention input a = Norm₁(h) pre-norm, or h post-norm; RA = relational attention, SA = self-attention):

    s = Retrieve(h);  [q_sa | q_ra | k_sa | k_ra | v_sa | q_rel | k_rel] = W_in a      (one matrix product)
    α = softmax over the cache of ⟨Rot_p q, Rot_j k_j⟩ · scale                     (SA and RA heads in one product)
    out = W_out [ Σ_j α_j v_j  |  ( rel_scale ⟨q_rel,ℓ , Σ_j α_j k_rel_j,ℓ⟩ )_{h,ℓ} ]  (one matrix product)

:class:`FastDecoder` prepares, once per ``generate`` call and from the model's own parameters (nothing is added to
its state dict), the fused matrices that make this a handful of operators per layer instead of hundreds:

* ``W_in``: every projection of the attention input stacked, the attention scale folded into the queries and
  ``rel_scale`` into the relation queries; RoPE is one product with the position's rotation matrix for all heads.
* Symbols: symbolic attention ``v = W_s concat_h softmax(q_h F_hᵀ·c) S_h`` becomes ``softmax_h(q_h F_hᵀ·c) (S W_s)``
  with the library already projected (``S W_s``, one product for all heads). (Folding ``W_q`` into ``F`` too would
  save one product but read 4× the weights per step, which is what a batch-1 step is bound by.) Positional symbols are a
  table ``E W_sᵀ`` read at p; position-relative symbols the table ``T W_sᵀ`` read at ``clip(j − p, −M, M)``.
* ``W_out``: SA's and RA's output projections side by side, with RA's ``W_o · W_r`` folded in, so the relation
  readout needs no per-head product.

The caches are preallocated head-major buffers holding SA and RA keys (and values) together, so one product scores
every head; the key mask is a preallocated additive row updated in place; the position is a device tensor
incremented in place. Nothing in a step builds or validates a mask, reads a value back to the host, or allocates
a cache: the step is a fixed graph, which ``torch.compile`` turns into a few fused kernels (:func:`compiled_step`).

:func:`supported` says which models it serves (the causal LMs with the identity relation activation, per-token or
relative symbols, no active dropout, SA and RA sharing one key width); others decode with the model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dual_attention.attention import Attention
from dual_attention.kv_cache import KVCache
from dual_attention.relational_attention import RelationalAttention
from dual_attention.symbol_retrieval import (
    PositionalSymbolRetriever,
    PositionRelativeSymbolRetriever,
    SymbolicAttention,
)


def _attentions(block: nn.Module) -> tuple[Attention | None, RelationalAttention | None]:
    """The SA and RA modules of a DAT block (either may be absent) or of a Transformer block (SA only)."""
    dual = getattr(block, "dual_attn", None)
    if dual is None:
        return block.self_attn, None
    return getattr(dual, "self_attention", None), getattr(dual, "relational_attention", None)


def _retrievers(model: nn.Module) -> list:
    """Each block's symbol retriever (None for a Transformer or a symbol-less model, whose list is empty)."""
    return list(getattr(model.layers, "symbol_retrievers", None) or [None] * len(model.layers.blocks))


def supported(model: nn.Module) -> bool:
    """Whether :class:`FastDecoder` can decode ``model`` (else generation uses the model's own cached forward)."""
    blocks = getattr(getattr(model, "layers", None), "blocks", None)
    if blocks is None or not getattr(model, "supports_kv_cache", False):
        return False
    if not getattr(model, "update_symbols_each_layer", True):  # persistent symbols: retrieved once, not per layer
        return False
    if any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for m in model.modules()):
        return False
    for block, retriever in zip(blocks, _retrievers(model), strict=True):
        sa, ra = _attentions(block)
        if sa is None and ra is None:  # a layer of another kind (e.g. Hadamard dual attention)
            return False
        if ra is not None:
            if type(ra) is not RelationalAttention or ra.rel_activation_name != "identity":
                return False
            if not isinstance(retriever, (SymbolicAttention, PositionalSymbolRetriever,
                                          PositionRelativeSymbolRetriever)):
                return False
            if isinstance(retriever, SymbolicAttention) and retriever.training and retriever.dropout > 0:
                return False
        if sa is not None and ra is not None and (sa.key_dim != ra.key_dim or sa.head_dim != ra.head_dim):
            return False
    return True


@dataclass
class _Layer:
    """One block's fused weights and cache buffers (see the module docstring for the equations)."""

    norm1: nn.Module
    norm2: nn.Module
    norm_first: bool
    w_in: Tensor  # (d, P), P = [queries | keys | SA values | relation queries | relation keys]
    b_in: Tensor  # (P,)
    split: list[int]  # P's parts: query+key heads × Dk, SA values, q_rel, k_rel
    n_query: int  # query heads (SA then RA), after replication
    n_keys: int  # key heads in the cache (SA then RA)
    n_sa_keys: int  # of which SA's
    n_ra_heads: int  # RA query heads
    rep: int  # query heads per cached key head
    symbols: str | None  # None (no RA), "symbolic", "positional", "relative"
    sym_w: object  # symbolic: (W_qᵀ, b_q, F_hᵀ·c (h, dh, N)); positional: table (L_E, K·D); relative: (K, 2M+1, D)
    sym_b: Tensor | None  # unused (None)
    sym_v: Tensor | None  # symbolic: S W_s (n_sym_heads·N, K·D)
    sym_vb: Tensor | None  # symbolic: W_s's bias (K·D,)
    n_sym_heads: int
    w_out: Tensor  # ([SA heads·D | RA heads·D | RA heads·R], d)
    b_out: Tensor  # (d,)
    ff: nn.Module
    keys: Tensor  # (B, n_keys, L, Dk)
    values: Tensor  # (B, n_keys or n_sa_keys, L, D)
    rel_keys: Tensor | None  # (B, L, R·d_r)
    n_rel: int
    d_rel: int


def _replicate(w: Tensor, groups: int, width: int, rep: int) -> Tensor:
    """Rows ``(groups·width, …)`` → ``(groups·rep·width, …)``: each group of ``width`` rows repeated ``rep`` times."""
    if rep == 1:
        return w
    return w.view(groups, 1, width, *w.shape[1:]).expand(groups, rep, width, *w.shape[1:]).reshape(
        groups * rep * width, *w.shape[1:])


def _bias(linear: nn.Linear) -> Tensor:
    return linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)


def _input_projection(sa: Attention | None, ra: RelationalAttention | None, rep_kv: dict) -> tuple:
    """``W_in (d, P)``, its bias and the split of P (see :class:`_Layer`); scales folded into the queries."""
    queries, keys, rows, biases = [], [], [], []
    for att, wq, wk in ((sa, "wq", "wk"), (ra, "wq_attn", "wk_attn")):
        if att is None:
            continue
        queries.append(getattr(att, wq).weight * att.attn_scale)
        r = rep_kv[id(att)]
        keys.append((_replicate(getattr(att, wk).weight, att.n_kv_heads, att.key_dim, r),
                     _replicate(_bias(getattr(att, wk)), att.n_kv_heads, att.key_dim, r)))
    rows = queries + [k for k, _ in keys]
    biases = [torch.zeros(q.shape[0], dtype=q.dtype, device=q.device) for q in queries] + [b for _, b in keys]
    split = [sum(r.shape[0] for r in rows)]
    if sa is not None:
        r = rep_kv[id(sa)]
        rows.append(_replicate(sa.wv.weight, sa.n_kv_heads, sa.head_dim, r))
        biases.append(_replicate(_bias(sa.wv), sa.n_kv_heads, sa.head_dim, r))
        split.append(rows[-1].shape[0])
    if ra is not None:
        rows += [ra.wq_rel.weight * ra.rel_scale, ra.wk_rel.weight]
        biases += [torch.zeros_like(_bias(ra.wq_rel)), torch.zeros_like(_bias(ra.wk_rel))]
        split += [ra.wq_rel.out_features, ra.wk_rel.out_features]
    return torch.cat(rows).t().contiguous(), torch.cat(biases), split


def _output_projection(sa: Attention | None, ra: RelationalAttention | None, d_model: int) -> tuple[Tensor, Tensor]:
    """``W_out ([SA heads·D | RA heads·D | RA heads·R], d)``: both output projections, ``W_o W_r`` folded in."""
    parts, biases = [], []
    col = 0
    ref = (sa or ra).wo.weight
    if sa is not None:
        w = ref.new_zeros(sa.wo.in_features, d_model)
        w[:, col:col + sa.wo.out_features] = sa.wo.weight.t()
        parts.append(w)
        biases.append(_bias(sa.wo))
        col += sa.wo.out_features
    if ra is not None:
        w = ref.new_zeros(ra.wo.in_features, d_model)
        w[:, col:] = ra.wo.weight.t()
        wo = ra.wo.weight.view(-1, ra.n_heads, ra.head_dim)  # (d_out, H, D)
        w_or = torch.einsum("ohc,hcl->ohl", wo, ra.wr).reshape(wo.shape[0], -1)  # (d_out, H·R): W_o W_r^h
        w_rel = ref.new_zeros(w_or.shape[1], d_model)
        w_rel[:, col:] = w_or.t()
        parts += [w, w_rel]
        biases.append(_bias(ra.wo))
    return torch.cat(parts).contiguous(), torch.cat(biases)


def _symbol_weights(retriever: nn.Module, ra: RelationalAttention, rep: int) -> tuple:
    """``(kind, sym_w, sym_b, sym_v, sym_vb, n_sym_heads)``: the retriever and RA's ``W_s`` folded together."""
    wv, bv = _replicate(ra.wv.weight, ra.n_kv_heads, ra.head_dim, rep), _replicate(_bias(ra.wv), ra.n_kv_heads,
                                                                                      ra.head_dim, rep)
    if isinstance(retriever, SymbolicAttention):
        nh, dh, n = retriever.n_heads, retriever.head_dim, retriever.n_symbols
        feats = retriever.template_features.view(n, nh, dh).permute(1, 2, 0) * retriever.attn_scale  # (h, dh, N)
        lib = retriever.symbol_library.view(n, nh, dh)  # (N, h, dh)
        sym_v = torch.einsum("nhc,khc->hnk", lib, wv.view(-1, nh, dh)).reshape(nh * n, -1)  # (h·N, K·D): S_h W_s,h
        q = retriever.q_proj
        return "symbolic", (q.weight.t().contiguous(), q.bias, feats.contiguous()), None, sym_v.contiguous(), bv, nh
    if isinstance(retriever, PositionalSymbolRetriever):
        return "positional", F.linear(retriever.symbol_library.weight, wv, bv), None, None, None, 0  # (L_E, K·D)
    table = F.linear(retriever.rel_pos_enc.rel_pos_embeddings, wv, bv)  # (2M+1, K·D)
    return "relative", table.view(table.shape[0], -1, ra.head_dim).transpose(0, 1).contiguous(), None, None, None, 0


def _replication(sa: Attention | None, ra: RelationalAttention | None) -> tuple[dict, int]:
    """How many times each module's kv heads are stored (``{id: times}``) and the query heads per stored key head.

    SA and RA keys share one cache buffer, scored by one grouped product: when their GQA ratios differ, both are
    stored per query head instead (the projection rows are replicated, so no step copies anything)."""
    present = [m for m in (sa, ra) if m is not None]
    reps = {id(m): m.n_heads // m.n_kv_heads for m in present}
    if len(set(reps.values())) == 1:
        return {k: 1 for k in reps}, next(iter(reps.values()))
    return reps, 1


class FastDecoder:
    """The lean cached decoding step of a language model (see the module docstring).

    Built after the prompt was run through the model with its own KV cache (the prefill): the fused weights are
    made from the model's parameters and the caches' contents are copied into this decoder's combined buffers.

    Args:
        model: a :class:`~dual_attention.language_models.DualAttnTransformerLM` or ``TransformerLM`` for which
            :func:`supported` holds.
        cache: the model's KV cache after the prefill (``model.init_kv_cache``).
        prompt_len: positions ``0 .. prompt_len − 1`` of the cache are filled; the first step is at ``prompt_len``.
        key_padding_mask: ``None`` or bool ``(B, cache length)``, False for padding (left-padded prompts).
    """

    @torch.no_grad()
    def __init__(self, model: nn.Module, cache: nn.ModuleList, prompt_len: int,
                 key_padding_mask: Tensor | None = None) -> None:
        first = next(m for m in cache.modules() if isinstance(m, KVCache))
        b, max_len = first.batch_size, first.max_len
        param = model.layers.final_out.weight
        self.embed, self.w_vocab, self.final_norm = model.layers.token_embedder.weight, param, model.layers.norm
        self.pos_table = model.layers.positional_embedder.weight if model.pos_enc_type == "pos_emb" else None
        self.rotations = None
        if model.pos_enc_type == "RoPE":
            self.rotations = _rotation_matrices(model.freqs_cos[:max_len], model.freqs_sin[:max_len])
        mask = torch.full((b, max_len), float("-inf"), dtype=param.dtype, device=param.device)
        mask[:, :prompt_len] = 0.0
        if key_padding_mask is not None:
            mask.masked_fill_(~key_padding_mask[:, :max_len], float("-inf"))
        self.mask = mask  # (B, L): additive, 0 where a key may be attended; a step opens its own position
        self.pos = torch.full((1,), prompt_len, dtype=torch.long, device=param.device)
        self.key_positions = torch.arange(max_len, device=param.device)
        self.layers = [_prepare_layer(block, retriever, layer_cache, model.d_model)
                       for block, retriever, layer_cache in zip(model.layers.blocks, _retrievers(model), cache)]
        relative = [layer.sym_w for layer in self.layers if layer.symbols == "relative"]
        self.max_rel = (relative[0].shape[1] - 1) // 2 if relative else 0
        for layer in self.layers:
            if layer.symbols == "positional" and layer.sym_w.shape[0] < max_len:
                raise ValueError(f"sequence length {max_len} exceeds the positional symbols' "
                                 f"max_length={layer.sym_w.shape[0]}")

    def step(self, token: Tensor) -> Tensor:
        """Logits ``(B, V)`` of the next token after ``token (B,)`` at the current position; advances the position."""
        pos = self.pos
        h = F.embedding(token, self.embed)  # (B, d)
        if self.pos_table is not None:
            h = h + self.pos_table[pos]
        rotation = None if self.rotations is None else self.rotations[pos]  # (1, Dk, Dk)
        self.mask.index_fill_(1, pos, 0.0)
        offsets = None
        if self.max_rel:  # row of the relative value table of each key: clip(j − p, −M, M) + M
            offsets = (self.key_positions - pos).clamp_(-self.max_rel, self.max_rel) + self.max_rel
        for layer in self.layers:
            h = _layer_step(layer, h, pos, rotation, self.mask, offsets)
        self.pos.add_(1)
        return F.linear(self.final_norm(h), self.w_vocab)


def _rotation_matrices(cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE as matrices ``(L, Dk, Dk)``: ``x @ R[p]`` rotates each interleaved pair ``(x_2k, x_2k+1)`` by θ_pk."""
    n, half = cos.shape
    r = cos.new_zeros(n, half, 2, half, 2)
    k = torch.arange(half)
    r[:, k, 0, k, 0] = cos
    r[:, k, 1, k, 1] = cos
    r[:, k, 0, k, 1] = sin  # out_2k+1 gets x_2k sin
    r[:, k, 1, k, 0] = -sin  # out_2k gets −x_2k+1 sin
    return r.view(n, 2 * half, 2 * half)


def _prepare_layer(block: nn.Module, retriever: nn.Module | None, cache: nn.Module, d_model: int) -> _Layer:
    """Fuse one block's weights and copy its prefilled cache into the combined buffers."""
    sa, ra = _attentions(block)
    rep_kv, rep = _replication(sa, ra)
    w_in, b_in, split = _input_projection(sa, ra, rep_kv)
    w_out, b_out = _output_projection(sa, ra, d_model)
    sa_cache = cache["sa"] if isinstance(cache, nn.ModuleDict) and sa is not None else cache
    ra_cache = cache["ra"] if ra is not None else None
    keys, values = [], []
    if sa is not None:
        keys.append(sa_cache.k.repeat_interleave(rep_kv[id(sa)], dim=1))  # (B, Ks, L, Dk)
        values.append(sa_cache.v.repeat_interleave(rep_kv[id(sa)], dim=1))
    symbols = (None,) * 5 + (0,)
    if ra is not None:
        keys.append(ra_cache.k_attn.repeat_interleave(rep_kv[id(ra)], dim=1))
        symbols = _symbol_weights(retriever, ra, rep_kv[id(ra)])
        if symbols[0] != "relative":
            values.append(ra_cache.v.repeat_interleave(rep_kv[id(ra)], dim=1))
    n_query = sum(m.n_heads for m in (sa, ra) if m is not None)
    n_keys = sum(k.shape[1] for k in keys)
    return _Layer(
        norm1=block.norm1, norm2=block.norm2, norm_first=block.norm_first, w_in=w_in, b_in=b_in,
        split=split, n_query=n_query, n_keys=n_keys, n_sa_keys=keys[0].shape[1] if sa is not None else 0,
        n_ra_heads=ra.n_heads if ra is not None else 0, rep=rep, symbols=symbols[0], sym_w=symbols[1],
        sym_b=symbols[2], sym_v=symbols[3], sym_vb=symbols[4], n_sym_heads=symbols[5], w_out=w_out, b_out=b_out,
        ff=block.ff_block, keys=torch.cat(keys, dim=1), values=torch.cat(values, dim=1) if values else None,
        rel_keys=None if ra is None else ra_cache.k_rel.flatten(2).clone(),
        n_rel=0 if ra is None else ra.n_relations, d_rel=0 if ra is None else ra.rel_proj_dim)


def _symbol_values(layer: _Layer, h: Tensor, pos: Tensor) -> Tensor:
    """RA's per-token symbol values ``W_s s`` of the new token, ``(B, K·D)``."""
    if layer.symbols == "symbolic":  # q = W_q h (B, d) → per head against the scaled features (h, dh, N)
        w_q, b_q, feats = layer.sym_w
        q = torch.addmm(b_q, h, w_q).view(h.shape[0], layer.n_sym_heads, -1).transpose(0, 1)  # (h, B, dh)
        weights = torch.softmax(torch.bmm(q, feats), dim=-1)  # (h, B, N)
        return torch.addmm(layer.sym_vb, weights.transpose(0, 1).reshape(h.shape[0], -1), layer.sym_v)
    return layer.sym_w[pos].expand(h.shape[0], -1)  # positional: the table's row p


def _layer_step(layer: _Layer, h: Tensor, pos: Tensor, rotation: Tensor | None, mask: Tensor,
                offsets: Tensor | None) -> Tensor:
    """One block for the new token: ``h (B, d)`` → ``(B, d)``."""
    b = h.shape[0]
    x = layer.norm1(h) if layer.norm_first else h
    parts = torch.addmm(layer.b_in, x, layer.w_in).split(layer.split, dim=-1)
    qk = parts[0].view(b, layer.n_query + layer.n_keys, -1)  # (B, heads, Dk)
    if rotation is not None:
        qk = torch.matmul(qk, rotation)
    q, k = qk.split([layer.n_query, layer.n_keys], dim=1)
    layer.keys.index_copy_(2, pos, k.unsqueeze(2))  # (B, keys, 1, Dk)
    new_values = [parts[1]] if layer.n_sa_keys else []
    if layer.symbols in ("symbolic", "positional"):
        new_values.append(_symbol_values(layer, h, pos))
    if new_values:
        v = torch.cat(new_values, dim=-1) if len(new_values) > 1 else new_values[0]
        layer.values.index_copy_(2, pos, v.view(b, layer.values.shape[1], 1, -1))
    scores = torch.matmul(q.view(b, layer.n_keys, layer.rep, -1), layer.keys.transpose(2, 3))  # (B, keys, rep, L)
    alpha = torch.softmax(scores + mask[:, None, None], dim=-1)
    if layer.symbols == "relative":  # SA values from the cache; RA values from the table, by offset
        heads = [torch.matmul(alpha[:, :layer.n_sa_keys], layer.values)] if layer.n_sa_keys else []
        heads.append(torch.matmul(alpha[:, layer.n_sa_keys:], layer.sym_w.index_select(1, offsets)))
        out = [t.reshape(b, -1) for t in heads]
    else:
        out = [torch.matmul(alpha, layer.values).view(b, -1)]  # (B, query heads·D)
    if layer.n_ra_heads:
        layer.rel_keys.index_copy_(1, pos, parts[-1].unsqueeze(1))
        ra_alpha = alpha[:, layer.n_sa_keys:].reshape(b, layer.n_ra_heads, -1)  # (B, H_ra, L)
        k_rel_bar = torch.bmm(ra_alpha, layer.rel_keys).view(b, layer.n_ra_heads, layer.n_rel, layer.d_rel)
        q_rel = parts[-2].view(b, 1, layer.n_rel, layer.d_rel)
        out.append((k_rel_bar * q_rel).sum(-1).view(b, -1))  # (B, H_ra·R): rel_scale is in q_rel
    attended = torch.addmm(layer.b_out, torch.cat(out, dim=-1) if len(out) > 1 else out[0], layer.w_out)
    if layer.norm_first:
        h = h + attended
        return h + layer.ff(layer.norm2(h))
    h = layer.norm1(h + attended)
    return layer.norm2(h + layer.ff(h))


_compiled = None


def compiled_step():
    """``decoder.step`` through ``torch.compile`` (one graph, static shapes), built once and shared by every
    decoder of the same shapes (weights and buffers are inputs, not constants, so a new ``generate`` call reuses it)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(FastDecoder.step, dynamic=False, fullgraph=True)
    return _compiled
