"""The attention layers against plain implementations of the paper's / API's equations, in float64.

Each reference below is written straight from the formula, with per-head Python loops and einsums that share no
code with the library (RoPE is applied with complex multiplication, masks are built by hand); only the layer's
weights are taken from the module. Values *and* gradients (w.r.t. the input, the symbols and every parameter) are
compared for each implementation of relational attention (``'plain'``, ``'blocked'``, ``'fused'`` where it
applies, ``'auto'``).

Relational attention (Altabaa & Lafferty 2024, eq. 2; API §4.1), for head h with kv head g = h // (H / K):

    α_ij^h = softmax_j(⟨RoPE(W_q^{attn,h} x_i), RoPE(W_k^{attn,g} x_j)⟩ / √head_dim + M_ij)
    r_ij   = act(⟨W_q^{rel,ℓ} x_i, W_k^{rel,ℓ} x_j⟩ / √d_r)_{ℓ=1..R}
    A_i^h  = Σ_j α_ij^h (W_r^h r_ij + W_s^g s_j)          (s_j → s_{clip(j−i)} for position-relative symbols)
    out_i  = W_o concat_h A_i^h
"""

from __future__ import annotations

import math

import pytest
import torch

import dual_attention.relational_functional as rf
from dual_attention.attention import Attention
from dual_attention.attention_utils import POLICY, precompute_freqs_cis
from dual_attention.dual_attention import DualAttention
from dual_attention.relational_attention import (
    DisentangledRelationalCrossAttention,
    RelationalAttention,
    RelationalCrossAttention,
)
from dual_attention.symbol_retrieval import (
    PositionRelativeSymbolRetriever,
    RelationalSymbolicAttention,
    RelativeSymbols,
    SymbolicAttention,
)

DT = torch.float64
TOL = dict(rtol=1e-9, atol=1e-10)

ACTS = {
    "identity": lambda t: t,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "silu": lambda t: t * torch.sigmoid(t),
    "gelu": lambda t: 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3))),
    "softmax": lambda t: torch.exp(t - t.amax(-1, keepdim=True)) / torch.exp(t - t.amax(-1, keepdim=True)).sum(
        -1, keepdim=True),
}


# ------------------------------------------------------------------------------------------- reference helpers
def lin(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    """x Wᵀ + b, written out."""
    out = torch.einsum("...i,oi->...o", x, layer.weight)
    return out if layer.bias is None else out + layer.bias


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair rotary embedding of ``x (B, n, heads, D)`` via complex multiplication."""
    z = torch.complex(x[..., 0::2], x[..., 1::2])  # (B, n, heads, D/2)
    z = z * torch.complex(cos.to(x.dtype), sin.to(x.dtype))[None, :, None, :]
    return torch.stack([z.real, z.imag], dim=-1).flatten(-2)


def allowed_matrix(b: int, h: int, n: int, m: int | None = None, *, attn_mask=None, is_causal=False,
                   key_padding_mask=None) -> torch.Tensor:
    """Boolean (B, H, n, m), True where query i may attend key j: the AND of the three conditions."""
    m = n if m is None else m
    allowed = torch.ones(b, h, n, m, dtype=torch.bool)
    if attn_mask is not None:
        am = attn_mask.bool()
        allowed = allowed & (am[None, None] if am.dim() == 2 else am[:, None] if am.dim() == 3 else am)
    if is_causal:
        i, j = torch.arange(n)[:, None], torch.arange(m)[None, :]
        allowed = allowed & (j <= i)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask[:, None, None, :]
    return allowed


def masked_softmax(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    if allowed is not None:
        logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1)


def relative_symbols_tensor(table: torch.Tensor, max_rel_pos: int, n: int) -> torch.Tensor:
    """s_ij = E[clip(j - i, -M, M) + M], gathered with Python loops: (n, n, d)."""
    idx = [[min(max(j - i, -max_rel_pos), max_rel_pos) + max_rel_pos for j in range(n)] for i in range(n)]
    return table[torch.tensor(idx)]


def ref_relational_attention(layer: RelationalAttention, x, symbols, *, freqs=None, allowed=None):
    """The equation of RA, per head. ``symbols`` is (B, n, d) or the relative (n, n, d)."""
    b, n, _ = x.shape
    H, K, D, Dk = layer.n_heads, layer.n_kv_heads, layer.head_dim, layer.key_dim
    R, dr = layer.n_relations, layer.rel_proj_dim
    act = ACTS[layer.rel_activation_name]
    q = lin(x, layer.wq_attn).reshape(b, n, H, Dk)
    k = lin(x, layer.wk_attn).reshape(b, n, K, Dk)
    if freqs is not None:
        q, k = rope(q, *freqs), rope(k, *freqs)
    q_rel = lin(x, layer.wq_rel).reshape(b, n, R, dr)
    k_rel = lin(x, layer.wk_rel).reshape(b, n, R, dr)
    scores = torch.einsum("birc,bjrc->brij", q_rel, k_rel) / math.sqrt(dr)  # (B, R, n, n): the published layout
    if layer.rel_activation_name == "softmax" and allowed is not None:  # normaliser over the allowed senders only
        scores = scores.masked_fill(~allowed.any(1, keepdim=True), float("-inf"))
    rel = act(scores).permute(0, 2, 3, 1)  # (B, n, n, R); softmax: Σ_j r_ij = 1
    relative = layer.use_relative_positional_symbols
    v = lin(symbols, layer.wv)
    v = v.reshape(n, n, K, D) if relative else v.reshape(b, n, K, D)
    heads, alphas = [], []
    for h in range(H):
        g = h // (H // K)
        logits = torch.einsum("bic,bjc->bij", q[:, :, h], k[:, :, g]) / math.sqrt(D)
        alpha = masked_softmax(logits, None if allowed is None else allowed[:, h])  # (B, n, n)
        msg = torch.einsum("dr,bijr->bijd", layer.wr[h], rel)  # W_r^h r_ij
        msg = msg + (v[None, :, :, g] if relative else v[:, None, :, g])  # + W_s^g s_j
        heads.append(torch.einsum("bij,bijd->bid", alpha, msg))
        alphas.append(alpha)
    return lin(torch.cat(heads, dim=-1), layer.wo), torch.stack(alphas, 1), rel


def ref_attention(layer: Attention, query, key, value, *, freqs=None, allowed=None):
    b, n, _ = query.shape
    m = key.shape[1]
    H, K, D, Dk = layer.n_heads, layer.n_kv_heads, layer.head_dim, layer.key_dim
    q = lin(query, layer.wq).reshape(b, n, H, Dk)
    k = lin(key, layer.wk).reshape(b, m, K, Dk)
    v = lin(value, layer.wv).reshape(b, m, K, D)
    if freqs is not None:
        q, k = rope(q, *freqs), rope(k, *freqs)
    heads, alphas = [], []
    for h in range(H):
        g = h // (H // K)
        alpha = masked_softmax(torch.einsum("bic,bjc->bij", q[:, :, h], k[:, :, g]) / math.sqrt(D),
                               None if allowed is None else allowed[:, h])
        heads.append(torch.einsum("bij,bjd->bid", alpha, v[:, :, g]))
        alphas.append(alpha)
    return lin(torch.cat(heads, -1), layer.wo), torch.stack(alphas, 1)


def ref_rca(layer: RelationalCrossAttention, x, symbols, *, freqs=None, allowed=None):
    """RCA (API §4.2): scores = act(q kᵀ/√D) (−∞ mask before a softmax, ×mask after other activations)."""
    b, n, _ = x.shape
    H, K, D = layer.n_heads, layer.n_kv_heads, layer.head_dim
    q, k = lin(x, layer.wq).reshape(b, n, H, D), lin(x, layer.wk).reshape(b, n, K, D)
    if freqs is not None:
        q, k = rope(q, *freqs), rope(k, *freqs)
    relative = layer.use_relative_positional_symbols
    v = lin(symbols, layer.wv)
    v = v.reshape(n, n, K, D) if relative else v.reshape(b, n, K, D)
    heads = []
    for h in range(H):
        g = h // (H // K)
        logits = torch.einsum("bic,bjc->bij", q[:, :, h], k[:, :, g]) / math.sqrt(D)
        a = None if allowed is None else allowed[:, h]
        if layer.activation_name == "softmax":
            scores = masked_softmax(logits, a)
        else:
            scores = ACTS[layer.activation_name](logits)
            if a is not None:
                scores = scores * a
        vals = v[None, :, :, g] if relative else v[:, None, :, g]
        heads.append(torch.einsum("bij,bijd->bid", scores, vals.expand(b, n, n, D)))
    return lin(torch.cat(heads, -1), layer.wo)


def ref_disrca(layer: DisentangledRelationalCrossAttention, x, symbols, *, freqs=None, allowed=None):
    """DisRCA (API §4.3): Σ_j α_ij ρ_ij W_v s_j, ρ = act(⟨q_rel, k_rel⟩/√D), one relation per head."""
    b, n, _ = x.shape
    H, K, D = layer.n_heads, layer.n_kv_heads, layer.head_dim
    q, k = lin(x, layer.wq_attn).reshape(b, n, H, D), lin(x, layer.wk_attn).reshape(b, n, K, D)
    if freqs is not None:
        q, k = rope(q, *freqs), rope(k, *freqs)
    q_rel, k_rel = lin(x, layer.wq_rel).reshape(b, n, H, D), lin(x, layer.wk_rel).reshape(b, n, K, D)
    relative = layer.use_relative_positional_symbols
    v = lin(symbols, layer.wv)
    v = v.reshape(n, n, K, D) if relative else v.reshape(b, n, K, D)
    heads = []
    for h in range(H):
        g = h // (H // K)
        alpha = masked_softmax(torch.einsum("bic,bjc->bij", q[:, :, h], k[:, :, g]) / math.sqrt(D),
                               None if allowed is None else allowed[:, h])
        rho = torch.einsum("bic,bjc->bij", q_rel[:, :, h], k_rel[:, :, g]) / math.sqrt(D)
        if layer.rel_activation_name == "softmax" and allowed is not None:  # over the allowed senders j
            rho = rho.masked_fill(~allowed[:, h], float("-inf"))
        rho = ACTS[layer.rel_activation_name](rho)
        vals = (v[None, :, :, g] if relative else v[:, None, :, g]).expand(b, n, n, D)
        heads.append(torch.einsum("bij,bijd->bid", alpha * rho, vals))
    return lin(torch.cat(heads, -1), layer.wo)


def ref_symbolic_attention(layer: SymbolicAttention, x):
    """s_i = concat_h softmax_k(⟨q_h(x_i), F_hk⟩·scale) S_hk."""
    b, n, d = x.shape
    nh, dh = layer.n_heads, d // layer.n_heads
    scale = layer.scale if layer.scale is not None else 1 / math.sqrt(dh)
    q = lin(x, layer.q_proj)
    heads = []
    for h in range(nh):
        sl = slice(h * dh, (h + 1) * dh)
        w = torch.softmax(torch.einsum("bic,kc->bik", q[..., sl], layer.template_features[:, sl]) * scale, -1)
        heads.append(torch.einsum("bik,kc->bic", w, layer.symbol_library[:, sl]))
    return torch.cat(heads, -1)


# --------------------------------------------------------------------------------------------- comparison utils
class Reference:
    """A reference output with its gradients for one random output weighting, computed once."""

    def __init__(self, out: torch.Tensor, inputs: dict[str, torch.Tensor]) -> None:
        self.out, self.inputs = out, inputs
        self.weight = torch.randn_like(out)
        self.grads = self._grads(out)
        assert any(g.abs().sum() > 0 for g in self.grads)

    def _grads(self, out: torch.Tensor) -> list[torch.Tensor]:
        tensors = list(self.inputs.values())
        grads = torch.autograd.grad((out * self.weight).sum(), tensors, allow_unused=True, retain_graph=True)
        return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors)]

    def check(self, ours: torch.Tensor, tol=TOL) -> None:
        """``ours`` equals the reference, and so do its gradients w.r.t. every input and parameter."""
        assert ours.shape == self.out.shape
        torch.testing.assert_close(ours, self.out.detach(), **tol)
        for name, a, b in zip(self.inputs, self._grads(ours), self.grads):
            torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"gradient w.r.t. {name}: {m}")


def assert_same_values_and_grads(ours: torch.Tensor, ref: torch.Tensor, inputs: dict[str, torch.Tensor],
                                 tol=TOL) -> None:
    Reference(ref, inputs).check(ours, tol)


def _inputs(layer: torch.nn.Module, **tensors) -> dict[str, torch.Tensor]:
    named = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    seen = set()
    for name, p in layer.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            named[name] = p
    return named


# ------------------------------------------------------------------------------------------------- RA configs
B, N, D_MODEL = 2, 7, 16

RA_CASES = {
    "plain": dict(),
    "attn_mask_2d": dict(mask="2d"),
    "attn_mask_3d": dict(mask="3d"),
    "attn_mask_4d": dict(mask="4d"),
    "attn_mask_float": dict(mask="float"),
    "causal": dict(is_causal=True),
    "causal_and_mask": dict(is_causal=True, mask="2d"),
    "key_padding": dict(padding=True),
    "causal_key_padding": dict(is_causal=True, padding=True),
    "rope": dict(rope=True, is_causal=True),
    "gqa": dict(kw=dict(n_kv_heads=2), n_heads=4),
    "mqa_rope": dict(kw=dict(n_kv_heads=1), n_heads=4, rope=True),
    "symmetric_rels": dict(kw=dict(symmetric_rels=True)),
    "n_relations_3": dict(kw=dict(n_relations=3, rel_proj_dim=5)),
    "n_relations_8": dict(kw=dict(n_relations=8)),
    "rel_proj_dim": dict(kw=dict(rel_proj_dim=3)),
    "key_dim": dict(kw=dict(key_dim=6)),
    "tanh": dict(kw=dict(rel_activation="tanh"), is_causal=True),
    "softmax_rel": dict(kw=dict(rel_activation="softmax", n_relations=4)),
    "softmax_rel_causal_padding": dict(kw=dict(rel_activation="softmax", n_relations=3, rel_proj_dim=4),
                                       is_causal=True, padding=True),
    "softmax_rel_mask_4d_gqa": dict(kw=dict(rel_activation="softmax", n_kv_heads=2), n_heads=4, mask="4d"),
    "softmax_rel_float_mask_relative": dict(kw=dict(rel_activation="softmax"), mask="float", relative="compact"),
    "gelu_sym": dict(kw=dict(rel_activation="gelu", symmetric_rels=True)),
    "total_n_heads": dict(kw=dict(total_n_heads=4)),
    "biases": dict(kw=dict(add_bias_kv=True, add_bias_out=True, n_kv_heads=1)),
    "relative_tensor": dict(relative="tensor"),
    "relative_compact": dict(relative="compact", is_causal=True, rope=True),
    "relative_compact_gqa_padding": dict(relative="compact", kw=dict(n_kv_heads=1), padding=True),
    "relative_tensor_sigmoid": dict(relative="tensor", kw=dict(rel_activation="sigmoid"), mask="3d"),
    "relative_compact_gqa2": dict(relative="compact", kw=dict(n_kv_heads=2), n_heads=4, is_causal=True),
    "relative_tensor_gqa2": dict(relative="tensor", kw=dict(n_kv_heads=2), n_heads=4),
    "everything": dict(kw=dict(n_kv_heads=2, n_relations=6, rel_proj_dim=4, total_n_heads=8, add_bias_kv=True),
                       n_heads=4, rope=True, is_causal=True, padding=True, mask="4d"),
}


def _make_case(case: dict, n: int = N, b: int = B):
    """Build the layer, inputs and forward kwargs of a case, plus the reference's ``allowed`` and freqs."""
    kw = dict(case.get("kw", {}))
    relative = case.get("relative")
    layer = RelationalAttention(D_MODEL, case.get("n_heads", 2), dropout=0.0, use_relative_positional_symbols=bool(
        relative), **kw).to(DT)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))  # O(1) weights, so that every term matters
    x = torch.randn(b, n, D_MODEL, dtype=DT, requires_grad=True)
    fwd, ref_kw = {}, {}
    retriever = None
    if relative:
        retriever = PositionRelativeSymbolRetriever(D_MODEL, max_rel_pos=3).to(DT)
        table = retriever.rel_pos_enc.rel_pos_embeddings
        ref_symbols = relative_symbols_tensor(table, 3, n)
        symbols = retriever(x) if relative == "tensor" else retriever.retrieve(x)
        sym_inputs = {"rel_pos_embeddings": table}
    else:
        symbols = torch.randn(b, n, D_MODEL, dtype=DT, requires_grad=True)
        ref_symbols = symbols
        sym_inputs = {"symbols": symbols}
    if case.get("rope"):
        cos, sin = precompute_freqs_cis(layer.key_dim, n)
        fwd.update(freqs_cos=cos.to(DT), freqs_sin=sin.to(DT))
        ref_kw["freqs"] = (cos.to(DT), sin.to(DT))
    eye = torch.eye(n, dtype=torch.bool)
    mask_kind = case.get("mask")
    if mask_kind == "2d":
        fwd["attn_mask"] = (torch.rand(n, n) > 0.4) | eye
    elif mask_kind == "3d":
        fwd["attn_mask"] = (torch.rand(b, n, n) > 0.4) | eye
    elif mask_kind == "4d":
        fwd["attn_mask"] = (torch.rand(b, layer.n_heads, n, n) > 0.4) | eye
    elif mask_kind == "float":
        bool_mask = (torch.rand(n, n) > 0.4) | eye
        fwd["attn_mask"] = torch.zeros(n, n, dtype=DT).masked_fill(~bool_mask, float("-inf"))
    if case.get("is_causal"):
        fwd["is_causal"] = True
    if case.get("padding"):
        kpm = torch.ones(b, n, dtype=torch.bool)
        kpm[0, n - 2:] = False  # right padding of the first row
        fwd["key_padding_mask"] = kpm
    if "attn_mask" in fwd:
        fwd["attn_mask"][..., 0] = 0.0 if mask_kind == "float" else True  # no fully masked row
    ref_mask = fwd.get("attn_mask")
    if mask_kind == "float":
        ref_mask = torch.isfinite(ref_mask)
    ref_kw["allowed"] = allowed_matrix(b, layer.n_heads, n, attn_mask=ref_mask, is_causal=fwd.get("is_causal", False),
                                       key_padding_mask=fwd.get("key_padding_mask"))
    return layer, x, symbols, ref_symbols, sym_inputs, fwd, ref_kw, retriever


def _implementations(layer: RelationalAttention, symbols) -> list[tuple[str, bool]]:
    impls = [("plain", True), ("blocked", False), ("auto", True), ("auto", False)]
    if layer.rel_activation_name == "identity" and not isinstance(symbols, RelativeSymbols) \
            and not layer.use_relative_positional_symbols:
        impls.append(("fused", False))
    return impls


@pytest.mark.parametrize("case_name", list(RA_CASES))
def test_relational_attention_matches_equation(case_name, monkeypatch):
    """Every implementation of RA equals the equation (values and all gradients), in float64."""
    monkeypatch.setattr(POLICY, "block_size", 3)  # N=7 queries -> 3 blocks: the blocked path blocks
    layer, x, symbols, ref_symbols, sym_inputs, fwd, ref_kw, _ = _make_case(RA_CASES[case_name])
    ref_out, ref_attn, ref_rel = ref_relational_attention(layer, x, ref_symbols, **ref_kw)
    reference = Reference(ref_out, {**_inputs(layer, x=x), **sym_inputs})
    impls = _implementations(layer, symbols)
    for impl, need_weights in impls:
        layer.implementation = impl
        out, attn, rel = layer(x, symbols, need_weights=need_weights, **fwd)
        reference.check(out)
        if impl in ("plain", "auto") and need_weights:
            torch.testing.assert_close(attn, ref_attn, **TOL)
            torch.testing.assert_close(rel, ref_rel, **TOL)
        if not need_weights:
            assert attn is None and rel is None
    if "fused" not in [i for i, _ in impls]:
        layer.implementation = "fused"
        with pytest.raises(ValueError, match="fused"):
            layer(x, symbols, need_weights=False, **fwd)


LONG_CASES = {
    "identity_gqa_rope_causal_padding": dict(kw=dict(n_kv_heads=1), rope=True, is_causal=True, padding=True),
    "relative_tanh_causal": dict(relative="compact", kw=dict(rel_activation="tanh"), is_causal=True),
}


@pytest.mark.parametrize("case_name", list(LONG_CASES))
def test_relational_attention_long_sequences_block(case_name, monkeypatch):
    """Lengths beyond POLICY.block_size: the blocked path really splits the queries, and still equals the formula."""
    n = POLICY.block_size + 13
    layer, x, symbols, ref_symbols, sym_inputs, fwd, ref_kw, _ = _make_case(LONG_CASES[case_name], n=n, b=1)
    calls = []
    original = rf.ra_plain

    def counting_ra_plain(problem, *args, **kwargs):
        calls.append(problem.lq)
        return original(problem, *args, **kwargs)

    monkeypatch.setattr(rf, "ra_plain", counting_ra_plain)  # what ra_blocked calls per block of queries
    ref_out, _, _ = ref_relational_attention(layer, x, ref_symbols, **ref_kw)
    reference = Reference(ref_out, {**_inputs(layer, x=x), **sym_inputs})
    checked = set()
    for impl, need_weights in _implementations(layer, symbols):
        chosen = rf.resolve_implementation(impl, layer.project(x, symbols), need_weights=need_weights, decoding=False)
        if chosen == "plain" or chosen in checked:
            continue
        checked.add(chosen)
        layer.implementation = impl
        calls.clear()
        out, _, _ = layer(x, symbols, need_weights=need_weights, **fwd)
        if chosen == "blocked":
            assert len(calls) == math.ceil(n / POLICY.block_size) and sum(calls) == n, calls
            assert max(calls) <= POLICY.block_size
        reference.check(out, tol=dict(rtol=1e-8, atol=1e-9))
    assert "blocked" in checked


def test_symmetric_relations_are_symmetric():
    layer = RelationalAttention(D_MODEL, 2, symmetric_rels=True).to(DT)
    assert layer.wk_rel is layer.wq_rel
    x = torch.randn(2, 5, D_MODEL, dtype=DT)
    _, _, rel = layer(x, torch.randn(2, 5, D_MODEL, dtype=DT))
    torch.testing.assert_close(rel, rel.transpose(1, 2), **TOL)


def test_relational_attention_head_geometry_defaults():
    layer = RelationalAttention(64, 4, n_relations=8, total_n_heads=8, n_kv_heads=2)
    assert (layer.head_dim, layer.rel_proj_dim, layer.key_dim) == (8, 4, 8)
    assert tuple(layer.wr.shape) == (4, 8, 8)
    assert tuple(layer.wq_rel.weight.shape) == (32, 64)  # R·d_r rows, not reduced by GQA
    assert tuple(layer.wk_attn.weight.shape) == (16, 64) and tuple(layer.wv.weight.shape) == (16, 64)
    assert list(dict(layer.named_parameters())) == [
        "wr", "wq_attn.weight", "wk_attn.weight", "wq_rel.weight", "wk_rel.weight", "wv.weight", "wo.weight"]
    assert layer.attn_scale == pytest.approx(1 / math.sqrt(8)) and layer.rel_scale == pytest.approx(0.5)


# ----------------------------------------------------------------------------------------------- RCA and DisRCA
CROSS_CASES = {
    "plain": dict(),
    "causal": dict(is_causal=True),
    "mask_3d_rope": dict(mask="3d", rope=True),
    "padding": dict(padding=True, is_causal=True),
    "gqa": dict(kw=dict(n_kv_heads=2), n_heads=4, rope=True, is_causal=True),
    "total_n_heads_bias": dict(kw=dict(total_n_heads=4, add_bias_kv=True, add_bias_out=True)),
    "relative": dict(relative="tensor", is_causal=True),
    "relative_compact_gqa": dict(relative="compact", kw=dict(n_kv_heads=1), n_heads=2, padding=True),
}


def _make_cross_case(cls, case: dict, act_kw: dict, n: int = N):
    kw = {**case.get("kw", {}), **act_kw}
    relative = case.get("relative")
    layer = cls(D_MODEL, case.get("n_heads", 2), dropout=0.0, use_relative_positional_symbols=bool(relative),
                **kw).to(DT)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(B, n, D_MODEL, dtype=DT, requires_grad=True)
    if relative:
        retriever = PositionRelativeSymbolRetriever(D_MODEL, max_rel_pos=3).to(DT)
        table = retriever.rel_pos_enc.rel_pos_embeddings
        symbols = retriever(x) if relative == "tensor" else retriever.retrieve(x)
        ref_symbols, sym_inputs = relative_symbols_tensor(table, 3, n), {"table": table}
    else:
        symbols = torch.randn(B, n, D_MODEL, dtype=DT, requires_grad=True)
        ref_symbols, sym_inputs = symbols, {"symbols": symbols}
    fwd, ref_kw = {}, {}
    if case.get("rope"):
        cos, sin = precompute_freqs_cis(layer.head_dim, n)
        fwd.update(freqs_cos=cos.to(DT), freqs_sin=sin.to(DT))
        ref_kw["freqs"] = (cos.to(DT), sin.to(DT))
    if case.get("mask") == "3d":
        fwd["attn_mask"] = (torch.rand(B, n, n) > 0.4) | torch.eye(n, dtype=torch.bool)
        fwd["attn_mask"][..., 0] = True
    if case.get("is_causal"):
        fwd["is_causal"] = True
    if case.get("padding"):
        kpm = torch.ones(B, n, dtype=torch.bool)
        kpm[1, n - 3:] = False
        fwd["key_padding_mask"] = kpm
    ref_kw["allowed"] = allowed_matrix(B, layer.n_heads, n, attn_mask=fwd.get("attn_mask"),
                                       is_causal=fwd.get("is_causal", False),
                                       key_padding_mask=fwd.get("key_padding_mask"))
    return layer, x, symbols, ref_symbols, {**_inputs(layer, x=x), **sym_inputs}, fwd, ref_kw


@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "identity"])
@pytest.mark.parametrize("case_name", list(CROSS_CASES))
def test_rca_matches_equation(case_name, activation):
    layer, x, symbols, ref_symbols, inputs, fwd, ref_kw = _make_cross_case(
        RelationalCrossAttention, CROSS_CASES[case_name], dict(activation=activation))
    reference = Reference(ref_rca(layer, x, ref_symbols, **ref_kw), inputs)
    for need_weights in (True, False):  # manual path / fused SDPA path (softmax + per-token symbols)
        out, scores = layer(x, symbols, need_weights=need_weights, **fwd)
        reference.check(out)
        assert (scores is None) != need_weights


@pytest.mark.parametrize("rel_activation", ["identity", "tanh", "softmax"])
@pytest.mark.parametrize("case_name", list(CROSS_CASES))
def test_disrca_matches_equation(case_name, rel_activation, monkeypatch):
    monkeypatch.setattr(POLICY, "block_size", 3)  # the need_weights=False path is query-blocked
    layer, x, symbols, ref_symbols, inputs, fwd, ref_kw = _make_cross_case(
        DisentangledRelationalCrossAttention, CROSS_CASES[case_name], dict(rel_activation=rel_activation))
    reference = Reference(ref_disrca(layer, x, ref_symbols, **ref_kw), inputs)
    for need_weights in (True, False):
        out, attn, rel = layer(x, symbols, need_weights=need_weights, **fwd)
        reference.check(out)
        if need_weights:
            assert attn.shape == rel.shape == (B, layer.n_heads, N, N)
            torch.testing.assert_close(attn.sum(-1), torch.ones_like(attn.sum(-1)), **TOL)


def test_disrca_with_gqa_constructs_and_runs():
    """The published DisRCA crashed with n_kv_heads < n_heads (wk_rel was never repeated)."""
    layer = DisentangledRelationalCrossAttention(32, 4, dropout=0.0, n_kv_heads=2)
    assert tuple(layer.wk_rel.weight.shape) == (16, 32)
    out, attn, rel = layer(torch.randn(2, 5, 32), torch.randn(2, 5, 32))
    assert out.shape == (2, 5, 32) and rel.shape == (2, 4, 5, 5)


# ------------------------------------------------------------------------------------------ Attention (SA / CA)
ATTN_CASES = {
    "plain": dict(),
    "causal": dict(is_causal=True),
    "mask_4d": dict(mask="4d"),
    "padding_causal": dict(padding=True, is_causal=True),
    "rope_gqa": dict(kw=dict(n_kv_heads=2), n_heads=4, rope=True, is_causal=True),
    "key_dim": dict(kw=dict(key_dim=5)),
    "total_n_heads_bias": dict(kw=dict(total_n_heads=4, add_bias_kv=True, add_bias_out=True)),
    "cross": dict(cross=True, padding=True),
}


@pytest.mark.parametrize("case_name", list(ATTN_CASES))
def test_attention_sdpa_and_manual_paths_match_equation(case_name):
    case = ATTN_CASES[case_name]
    layer = Attention(D_MODEL, case.get("n_heads", 2), dropout=0.0, **case.get("kw", {})).to(DT)
    m = N + 3 if case.get("cross") else N
    q_in = torch.randn(B, N, D_MODEL, dtype=DT, requires_grad=True)
    kv_in = torch.randn(B, m, D_MODEL, dtype=DT, requires_grad=True) if case.get("cross") else q_in
    fwd, ref_kw = {}, {}
    if case.get("rope"):
        cos, sin = precompute_freqs_cis(layer.key_dim, N)
        fwd.update(freqs_cos=cos.to(DT), freqs_sin=sin.to(DT))
        ref_kw["freqs"] = (cos.to(DT), sin.to(DT))
    if case.get("mask") == "4d":
        fwd["attn_mask"] = (torch.rand(B, layer.n_heads, N, m) > 0.4) | torch.eye(N, m, dtype=torch.bool)
        fwd["attn_mask"][..., 0] = True
    if case.get("is_causal"):
        fwd["is_causal"] = True
    if case.get("padding"):
        kpm = torch.ones(B, m, dtype=torch.bool)
        kpm[0, m - 2:] = False
        fwd["key_padding_mask"] = kpm
    ref_kw["allowed"] = allowed_matrix(B, layer.n_heads, N, m, attn_mask=fwd.get("attn_mask"),
                                       is_causal=fwd.get("is_causal", False),
                                       key_padding_mask=fwd.get("key_padding_mask"))
    ref_out, ref_w = ref_attention(layer, q_in, kv_in, kv_in, **ref_kw)
    inputs = _inputs(layer, q=q_in, kv=kv_in)
    out_sdpa, w_none = layer(q_in, kv_in, kv_in, need_weights=False, **fwd)
    out_manual, w = layer(q_in, kv_in, kv_in, need_weights=True, **fwd)
    assert w_none is None
    reference = Reference(ref_out, inputs)
    reference.check(out_sdpa)
    reference.check(out_manual)
    torch.testing.assert_close(w, ref_w, **TOL)


# ---------------------------------------------------------------------------------------------- symbol retrieval
@pytest.mark.parametrize("kwargs", [dict(n_heads=2, n_symbols=5), dict(n_heads=4, n_symbols=3, scale=0.7)])
def test_symbolic_attention_matches_equation(kwargs):
    layer = SymbolicAttention(D_MODEL, **kwargs).to(DT)
    x = torch.randn(B, N, D_MODEL, dtype=DT, requires_grad=True)
    ref = ref_symbolic_attention(layer, x)
    assert_same_values_and_grads(layer(x), ref, _inputs(layer, x=x))
    symbols, weights = layer.forward_with_weights(x)
    torch.testing.assert_close(symbols, ref, **TOL)
    assert weights.shape == (B, kwargs["n_heads"], N, kwargs["n_symbols"])


def ref_relational_symbolic_attention(layer: RelationalSymbolicAttention, x):
    """Neighbour relations with out-of-range neighbours MASKED (excluded), then symbolic attention."""
    b, n, d = x.shape
    h, dh, delta = layer.rel_n_heads, d // layer.rel_n_heads, layer.nbhd_delta
    if layer.causal_nbhd:
        offsets = [-o for o in range(0 if layer.include_self else 1, delta + 1)]
    else:
        offsets = [o for o in range(-delta, delta + 1) if layer.include_self or o != 0]
    q, k = lin(x, layer.q_proj), lin(x, layer.k_proj)
    rows = []
    for i in range(n):
        feats = torch.zeros(b, len(offsets), h, dtype=x.dtype)
        valid = [0 <= i + o < n for o in offsets]
        scores = []
        for a, o in enumerate(offsets):
            per_head = []
            for hh in range(h):
                sl = slice(hh * dh, (hh + 1) * dh)
                if valid[a]:
                    per_head.append((q[:, i, sl] * k[:, i + o, sl]).sum(-1))
                else:
                    per_head.append(torch.zeros(b, dtype=x.dtype))
            scores.append(torch.stack(per_head, -1))  # (B, h)
        scores = torch.stack(scores, 1)  # (B, nbhd, h)
        if layer.normalize_rels:
            if any(valid):
                logits = (scores * layer.rel_scale)[:, [a for a, v in enumerate(valid) if v]]
                probs = torch.softmax(logits, dim=1)
                idx = [a for a, v in enumerate(valid) if v]
                feats = feats.index_put((torch.arange(b)[:, None], torch.tensor(idx)[None, :]), probs)
        else:
            feats = scores
        rows.append(feats.reshape(b, -1))  # (neighbour, head) order
    rels = torch.stack(rows, 1)
    return ref_symbolic_attention(layer.symbolic_attention, lin(rels, layer.model_dim_proj))


@pytest.mark.parametrize("kwargs", [
    dict(causal_nbhd=True, include_self=False), dict(causal_nbhd=True, include_self=True),
    dict(causal_nbhd=False, include_self=False), dict(causal_nbhd=False, include_self=True, normalize_rels=False),
])
def test_relational_symbolic_attention_masks_out_of_range_neighbours(kwargs):
    layer = RelationalSymbolicAttention(D_MODEL, rel_n_heads=2, symbolic_attn_n_heads=2, n_symbols=4, nbhd_delta=2,
                                        **kwargs).to(DT)
    x = torch.randn(B, 6, D_MODEL, dtype=DT, requires_grad=True)
    ref = ref_relational_symbolic_attention(layer, x)
    assert_same_values_and_grads(layer(x), ref, _inputs(layer, x=x))


def test_relational_symbolic_attention_does_not_clamp():
    """Near the edge, masking differs from the published clamping (which duplicated the edge token)."""
    layer = RelationalSymbolicAttention(D_MODEL, 2, 2, 4, nbhd_delta=2, causal_nbhd=True).to(DT)
    x = torch.randn(1, 5, D_MODEL, dtype=DT)
    out = layer(x)
    # position 0 has no causal neighbour: all its relations are masked -> zero features
    zero_feats = torch.zeros(1, 1, layer.nbhd_rel_dim, dtype=DT)
    expected0 = layer.symbolic_attention(layer.model_dim_proj(zero_feats))
    torch.testing.assert_close(out[:, :1], expected0, **TOL)
    # the published clamping would have used index 0 for both neighbours of position 1: different result
    clamped = RelationalSymbolicAttention.compute_causal_neighbor_mask(5, 2)
    assert clamped[:3].tolist() == [[0, 0], [0, 0], [1, 0]]
    q = layer.q_proj(x).view(1, 5, 2, 8)
    k = layer.k_proj(x).view(1, 5, 2, 8)[:, clamped]
    rels = torch.softmax(torch.einsum("bihd,bijhd->bijh", q, k) * layer.rel_scale, dim=2).reshape(1, 5, -1)
    clamped_out = layer.symbolic_attention(layer.model_dim_proj(rels))
    assert not torch.allclose(clamped_out[:, :2], out[:, :2])
    torch.testing.assert_close(clamped_out[:, 2:], out[:, 2:], **TOL)  # interior positions agree


# ------------------------------------------------------------------------------------------------ DualAttention
def test_dual_attention_concatenates_sa_then_ra():
    layer = DualAttention(D_MODEL, n_heads_sa=2, n_heads_ra=2, dropout=0.0,
                          sa_kwargs=dict(n_kv_heads=1), ra_kwargs=dict(n_relations=3, rel_proj_dim=4)).to(DT)
    x = torch.randn(B, N, D_MODEL, dtype=DT, requires_grad=True)
    s = torch.randn(B, N, D_MODEL, dtype=DT, requires_grad=True)
    cos, sin = precompute_freqs_cis(D_MODEL // 4, N)
    freqs = (cos.to(DT), sin.to(DT))
    allowed = allowed_matrix(B, 2, N, is_causal=True)
    out, sa_w, ra_extra = layer(x, s, is_causal=True, freqs_cos=freqs[0], freqs_sin=freqs[1], need_weights=True)
    sa_ref, sa_w_ref = ref_attention(layer.self_attention, x, x, x, freqs=freqs, allowed=allowed)
    ra_ref, ra_attn_ref, ra_rel_ref = ref_relational_attention(layer.relational_attention, x, s, freqs=freqs,
                                                               allowed=allowed)
    assert out.shape == (B, N, D_MODEL)
    assert_same_values_and_grads(out, torch.cat([sa_ref, ra_ref], -1), _inputs(layer, x=x, s=s))
    torch.testing.assert_close(sa_w, sa_w_ref, **TOL)
    torch.testing.assert_close(ra_extra[0], ra_attn_ref, **TOL)
    torch.testing.assert_close(ra_extra[1], ra_rel_ref, **TOL)
    out2, sa_none, ra_none = layer(x, s, is_causal=True, freqs_cos=freqs[0], freqs_sin=freqs[1])
    assert sa_none is None and ra_none is None
    torch.testing.assert_close(out2, out, **TOL)


@pytest.mark.parametrize("sa,ra", [(3, 0), (0, 3)])
def test_dual_attention_single_kind(sa, ra):
    layer = DualAttention(24, n_heads_sa=sa, n_heads_ra=ra, dropout=0.0).to(DT)
    x, s = torch.randn(1, 4, 24, dtype=DT), torch.randn(1, 4, 24, dtype=DT)
    out, _, _ = layer(x, s)
    sub = layer.self_attention(x, x, x)[0] if sa else layer.relational_attention(x, s)[0]
    torch.testing.assert_close(out, sub, **TOL)
    assert hasattr(layer, "self_attention") == bool(sa) and hasattr(layer, "relational_attention") == bool(ra)


def test_dual_attention_share_attn_params_aliases():
    layer = DualAttention(D_MODEL, 2, 2, dropout=0.0, share_attn_params=True)
    sa, ra = layer.self_attention, layer.relational_attention
    assert sa.wq is ra.wq_attn and sa.wk is ra.wk_attn
    sd = layer.state_dict()
    assert sd["self_attention.wq.weight"].data_ptr() == sd["relational_attention.wq_attn.weight"].data_ptr()
    assert sd["self_attention.wk.weight"].data_ptr() == sd["relational_attention.wk_attn.weight"].data_ptr()
    assert sd["self_attention.wv.weight"].data_ptr() != sd["relational_attention.wv.weight"].data_ptr()
    n_unique = sum(p.numel() for p in layer.parameters())
    assert n_unique == sum(t.numel() for t in sd.values()) - 2 * D_MODEL * D_MODEL // 2
    # with shared q/k the SA and RA attention weights are identical
    x, s = torch.randn(1, 5, D_MODEL), torch.randn(1, 5, D_MODEL)
    _, sa_w, (ra_w, _) = layer(x, s, need_weights=True)
    torch.testing.assert_close(sa_w, ra_w)


@pytest.mark.parametrize("ra_type,cls", [("rca", RelationalCrossAttention),
                                          ("disrca", DisentangledRelationalCrossAttention)])
def test_dual_attention_with_ablation_ra_types(ra_type, cls):
    layer = DualAttention(D_MODEL, 2, 2, dropout=0.0, ra_type=ra_type, ra_kwargs=dict(n_kv_heads=1)).to(DT)
    assert isinstance(layer.relational_attention, cls)
    x = torch.randn(B, N, D_MODEL, dtype=DT, requires_grad=True)
    s = torch.randn(B, N, D_MODEL, dtype=DT)
    out, _, extra = layer(x, s, is_causal=True, need_weights=True)
    allowed = allowed_matrix(B, 2, N, is_causal=True)
    ref_fn = ref_rca if ra_type == "rca" else ref_disrca
    ref = torch.cat([ref_attention(layer.self_attention, x, x, x, allowed=allowed)[0],
                     ref_fn(layer.relational_attention, x, s, allowed=allowed)], -1)
    assert_same_values_and_grads(out, ref, _inputs(layer, x=x))
    assert isinstance(extra, list) and len(extra) == (1 if ra_type == "rca" else 2)


# ------------------------------------------------------------------------------ rel_activation='softmax' (issue 15)
def test_softmax_relations_normalise_over_senders_by_hand():
    """An unmasked RA layer with ``rel_activation='softmax'`` against scalar Python arithmetic (as published: the
    scores laid out ``[b, R, n, n]``, softmax over the last dim, i.e. over the senders j of each receiver i)."""
    torch.manual_seed(3)
    layer = RelationalAttention(4, 1, n_relations=2, rel_activation="softmax").to(DT)  # head_dim 4, d_r 2
    x = torch.randn(1, 3, 4, dtype=DT)
    s = torch.randn(1, 3, 4, dtype=DT)
    W = {name: p.detach().tolist() for name, p in layer.named_parameters()}

    def matvec(w, v):
        return [sum(w_rc * v_c for w_rc, v_c in zip(row, v)) for row in w]

    xs, ss = x[0].tolist(), s[0].tolist()
    q_rel = [matvec(W["wq_rel.weight"], xi) for xi in xs]  # R*d_r = 4 features: relation ℓ is [2ℓ, 2ℓ+2)
    k_rel = [matvec(W["wk_rel.weight"], xi) for xi in xs]
    q, k = [matvec(W["wq_attn.weight"], xi) for xi in xs], [matvec(W["wk_attn.weight"], xi) for xi in xs]
    v = [matvec(W["wv.weight"], si) for si in ss]
    n, R = 3, 2
    rel = [[[0.0] * R for _ in range(n)] for _ in range(n)]
    for i in range(n):
        for ell in range(R):
            e = [math.exp(sum(q_rel[i][2 * ell + c] * k_rel[j][2 * ell + c] for c in range(2)) / math.sqrt(2))
                 for j in range(n)]
            for j in range(n):
                rel[i][j][ell] = e[j] / sum(e)
    out = []
    for i in range(n):
        e = [math.exp(sum(a * b for a, b in zip(q[i], k[j])) / 2.0) for j in range(n)]  # 1/√head_dim = 1/2
        alpha = [e_j / sum(e) for e_j in e]
        wr = W["wr"][0]  # (head_dim, R)
        a_i = [sum(alpha[j] * (sum(wr[c][ell] * rel[i][j][ell] for ell in range(R)) + v[j][c]) for j in range(n))
               for c in range(4)]
        out.append(matvec(W["wo.weight"], a_i))

    got, _, got_rel = layer(x, s)
    torch.testing.assert_close(got_rel[0], torch.tensor(rel, dtype=DT), **TOL)
    torch.testing.assert_close(got[0], torch.tensor(out, dtype=DT), **TOL)
    torch.testing.assert_close(got_rel.sum(2), torch.ones(1, n, R, dtype=DT), **TOL)  # Σ_j r_ij,ℓ = 1
    assert not torch.allclose(got_rel.sum(3), torch.ones(1, n, n, dtype=DT))  # not normalised over ℓ
    for impl in ("blocked", "auto"):  # the other implementations that take this activation agree
        layer.implementation = impl
        torch.testing.assert_close(layer(x, s, need_weights=False)[0], got, **TOL)


def test_softmax_relations_exclude_masked_senders():
    """With a mask, the normaliser runs over the senders some head may attend to; masked senders get r = 0."""
    layer = RelationalAttention(D_MODEL, 2, rel_activation="softmax").to(DT)
    x, s = torch.randn(2, 5, D_MODEL, dtype=DT), torch.randn(2, 5, D_MODEL, dtype=DT)
    kpm = torch.tensor([[True] * 5, [True, True, True, False, False]])
    _, _, rel = layer(x, s, is_causal=True, key_padding_mask=kpm)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()[None] & kpm[:, None, :]  # (B, i, j)
    assert (rel[~allowed] == 0).all()
    torch.testing.assert_close(rel.sum(2), torch.ones(2, 5, layer.n_relations, dtype=DT), **TOL)
    _, _, unmasked = layer(x, s)
    torch.testing.assert_close(rel[:, -1, :, :][0], unmasked[0, -1], **TOL)  # the last row sees every sender
