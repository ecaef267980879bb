"""The fast forms of relational attention agree with the plain reference, and never build an n×n tensor.

Everything in float64 with small dims; tile and block sizes are shrunk so that every path really splits its work.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dual_attention.relational_functional as rf
from dual_attention.attention_utils import POLICY, AttentionMask, precompute_freqs_cis
from dual_attention.relational_attention import (
    DisentangledRelationalCrossAttention,
    RelationalAttention,
    RelationalCrossAttention,
)
from dual_attention.symbol_retrieval import PositionRelativeSymbolRetriever
from dual_attention.symbol_values import TokenValues

DT = torch.float64
TOL = dict(rtol=1e-9, atol=1e-10)
D_MODEL, N_HEADS, TOTAL = 24, 2, 4  # head_dim 6


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    """Blocks and tiles of a few queries, so that sequences of ~20 tokens span several of them."""
    monkeypatch.setattr(POLICY, "block_size", 5)
    monkeypatch.setattr(POLICY, "tile_rows", 4)


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor any aten op returns while active (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


def _inputs(n=19, b=2, requires_grad=True, relative=False):
    x = torch.randn(b, n, D_MODEL, dtype=DT, requires_grad=requires_grad)
    if relative:
        symbols = PositionRelativeSymbolRetriever(D_MODEL, 3).to(DT).retrieve(x)
    else:
        symbols = torch.randn(b, n, D_MODEL, dtype=DT, requires_grad=requires_grad)
    return x, symbols


def _run(layer, impl, x, symbols, **fwd):
    layer.implementation = impl
    for p in layer.parameters():
        p.grad = None
    tensors = [t for t in (x, symbols) if isinstance(t, torch.Tensor) and t.requires_grad and t.is_leaf]
    for t in tensors:
        t.grad = None
    out, *_ = layer(x, symbols, need_weights=impl == "plain", **fwd)
    weight = torch.linspace(-1, 1, out.numel(), dtype=DT).view_as(out)
    (out * weight).sum().backward()
    grads = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
    grads.update({f"input{i}": t.grad.clone() for i, t in enumerate(tensors)})
    return out.detach(), grads


def _assert_same(reference, other, what):
    out_ref, grads_ref = reference
    out, grads = other
    torch.testing.assert_close(out, out_ref, **TOL, msg=lambda m: f"{what}: output {m}")
    assert grads.keys() == grads_ref.keys(), what
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], **TOL, msg=lambda m, n=name: f"{what}: {n} {m}")


def _padding(b, n):
    lengths = torch.tensor([n, n - 6])[:b]
    return torch.arange(n)[None, :] < lengths[:, None]  # (B, n), True = real token


CASES = {
    "default_causal": dict(kw={}, fwd=dict(is_causal=True)),
    "bidirectional": dict(kw={}, fwd={}),
    "gqa_rope_causal": dict(kw=dict(n_kv_heads=1), fwd=dict(is_causal=True), rope=True),
    "gqa4_relations3": dict(kw=dict(n_relations=3, rel_proj_dim=5), heads=4, total=4, fwd=dict(is_causal=True)),
    "key_padding": dict(kw={}, fwd=dict(padding=True)),
    "padding_causal_gqa": dict(kw=dict(n_kv_heads=1), fwd=dict(padding=True, is_causal=True)),
    "bool_mask": dict(kw={}, fwd=dict(bool_mask=True)),
    "float_mask": dict(kw={}, fwd=dict(float_mask=True)),
    "symmetric_bias": dict(kw=dict(symmetric_rels=True, add_bias_kv=True, add_bias_out=True), fwd=dict(is_causal=True)),
    "key_dim": dict(kw=dict(key_dim=4), fwd=dict(is_causal=True)),
}


def _build(case, n=19, b=2):
    heads, total = case.get("heads", N_HEADS), case.get("total", TOTAL)
    layer = RelationalAttention(D_MODEL, heads, total_n_heads=total, **case["kw"]).to(DT)
    x, symbols = _inputs(n, b)
    fwd = dict(case["fwd"])
    if fwd.pop("padding", False):
        fwd["key_padding_mask"] = _padding(b, n)
    if fwd.pop("bool_mask", False):
        fwd["attn_mask"] = torch.rand(n, n) > 0.4
    if fwd.pop("float_mask", False):
        fwd["attn_mask"] = torch.randn(b, 1, n, n, dtype=DT)
    if case.get("rope"):
        cos, sin = precompute_freqs_cis(layer.head_dim, n)
        fwd.update(freqs_cos=cos.to(DT), freqs_sin=sin.to(DT))
    return layer, x, symbols, fwd


@pytest.mark.parametrize("name", list(CASES))
def test_identity_paths_agree(name):
    """plain, blocked, fused, tiled and auto: the same outputs and the same gradients of everything."""
    layer, x, symbols, fwd = _build(CASES[name])
    reference = _run(layer, "plain", x, symbols, **fwd)
    for impl in ("blocked", "fused", "tiled", "auto"):
        _assert_same(reference, _run(layer, impl, x, symbols, **fwd), f"{name}/{impl}")


@pytest.mark.parametrize("activation", ["tanh", "softmax"])
@pytest.mark.parametrize("relative", [False, True])
def test_other_paths_agree(activation, relative):
    """Non-identity activations and position-relative symbols: plain, blocked and auto agree; fused/tiled refuse."""
    layer = RelationalAttention(D_MODEL, N_HEADS, total_n_heads=TOTAL, rel_activation=activation,
                                use_relative_positional_symbols=relative).to(DT)
    x, symbols = _inputs(relative=relative)
    fwd = dict(is_causal=True, key_padding_mask=_padding(2, 19))
    reference = _run(layer, "plain", x, symbols, **fwd)
    for impl in ("blocked", "auto"):
        _assert_same(reference, _run(layer, impl, x, symbols, **fwd), f"{activation}/{relative}/{impl}")
    for impl in ("fused", "tiled"):
        layer.implementation = impl
        with pytest.raises(ValueError, match=impl):
            layer(x, symbols, need_weights=False)


def test_relative_identity_paths_agree():
    layer = RelationalAttention(D_MODEL, N_HEADS, total_n_heads=TOTAL, use_relative_positional_symbols=True,
                                symmetric_rels=True).to(DT)
    x, symbols = _inputs(relative=True)
    for fwd in ({}, dict(is_causal=True), dict(key_padding_mask=_padding(2, 19))):
        reference = _run(layer, "plain", x, symbols, **fwd)
        for impl in ("blocked", "tiled", "auto"):
            _assert_same(reference, _run(layer, impl, x, symbols, **fwd), f"relative/{impl}/{list(fwd)}")
    # the published [n, n, d] tensor gives the same result as the compact table (but only the blocks take it)
    reference = _run(layer, "plain", x, symbols)
    materialised = symbols.materialize(x.shape[1])
    _assert_same(reference, _run(layer, "blocked", x, materialised), "relative/materialised")
    layer.implementation = "tiled"
    with pytest.raises(ValueError, match="tiled"):
        layer(x, materialised, need_weights=False)


@pytest.mark.parametrize("max_rel_pos", [0, 1, 3, 30])
def test_tiled_relative_offsets(max_rel_pos):
    """The tiles sum the weights by clipped offset exactly, for any M against the tile (4) and length (19)."""
    layer = RelationalAttention(D_MODEL, N_HEADS, total_n_heads=TOTAL, n_kv_heads=1,
                                use_relative_positional_symbols=True).to(DT)
    x = torch.randn(2, 19, D_MODEL, dtype=DT, requires_grad=True)
    retriever = PositionRelativeSymbolRetriever(D_MODEL, max_rel_pos).to(DT)
    for fwd in ({}, dict(is_causal=True)):
        outs = []
        for impl in ("plain", "tiled"):
            layer.implementation = impl
            retriever.zero_grad(set_to_none=True)
            out = layer(x, retriever.retrieve(x), need_weights=False, **fwd)[0]
            (out * torch.linspace(-1, 1, out.numel(), dtype=DT).view_as(out)).sum().backward()
            outs.append((out.detach(), retriever.rel_pos_enc.rel_pos_embeddings.grad.clone()))
        torch.testing.assert_close(outs[1][0], outs[0][0], **TOL)
        torch.testing.assert_close(outs[1][1], outs[0][1], **TOL)  # the gradient of the symbol table


def test_plain_without_weights_returns_none():
    """``'plain'`` with ``need_weights=False`` returns no weights, and the same output as with them."""
    layer = RelationalAttention(D_MODEL, N_HEADS, total_n_heads=TOTAL).to(DT)
    x, symbols = _inputs(requires_grad=False)
    with_rel, attn, rel = layer(x, symbols, is_causal=True)
    assert rel.shape == (2, 19, 19, layer.n_relations)
    layer.implementation = "plain"
    without, attn2, rel2 = layer(x, symbols, is_causal=True, need_weights=False)
    assert attn2 is None and rel2 is None
    torch.testing.assert_close(without, with_rel, **TOL)


@pytest.mark.parametrize("kwargs", [{}, dict(symmetric_rels=True), dict(add_bias_kv=True, n_kv_heads=1),
                                    dict(key_dim=4, n_relations=3, rel_proj_dim=5)])
def test_input_projections_equal_the_four_linears(kwargs):
    """RA's stacked input projection (one product) equals wq_attn, wk_attn, wq_rel, wk_rel applied one by one:
    values and the gradients of x and of every weight and bias."""
    torch.manual_seed(3)
    layer = RelationalAttention(D_MODEL, N_HEADS, total_n_heads=TOTAL, **kwargs).to(DT)
    for p in layer.parameters():  # biases are zero-initialised: make them matter
        torch.nn.init.normal_(p)
    x = torch.randn(2, 7, D_MODEL, dtype=DT, requires_grad=True)
    weights = torch.randn(4, dtype=DT)
    fused = layer._input_projections(x)
    b, n, _ = x.shape
    rel = (b, n, layer.n_relations, layer.rel_proj_dim)
    separate = (layer.wq_attn(x).view(b, n, layer.n_heads, layer.key_dim),
                layer.wk_attn(x).view(b, n, layer.n_kv_heads, layer.key_dim),
                layer.wq_rel(x).view(rel), layer.wk_rel(x).view(rel))
    params = list({id(p): p for m in (layer.wq_attn, layer.wk_attn, layer.wq_rel, layer.wk_rel)
                   for p in m.parameters()}.values())
    grads = []
    for outs in (fused, separate):
        loss = sum(w * o.square().sum() for w, o in zip(weights, outs, strict=True))
        grads.append(torch.autograd.grad(loss, [x, *params]))
    for a, e in zip(fused, separate, strict=True):
        torch.testing.assert_close(a, e, **TOL)
    for a, e in zip(*grads, strict=True):
        torch.testing.assert_close(a, e, **TOL)


def _problem(q, k, q_rel, k_rel, v, wr, mask=None, is_causal=False, **kw):
    """An RAProblem of raw tensors (per-token values ``v``)."""
    return rf.RAProblem(q, k, q_rel, k_rel, TokenValues(v), wr, mask=AttentionMask(mask, is_causal), **kw)


def test_functional_forms_agree_directly():
    """The kernels on one problem: ra_tiled / ra_fused / ra_blocked vs ra_plain, GQA with n_rep=3, causal, masks."""
    torch.manual_seed(1)
    b, h, k, dk, d, r, dr, n = 2, 6, 2, 5, 7, 3, 4, 17
    t = lambda *shape: torch.randn(*shape, dtype=DT)  # noqa: E731
    q, kk, v, wr = t(b, h, n, dk), t(b, k, n, dk), t(b, k, n, d), t(h, d, r)
    q_rel, k_rel = t(b, n, r, dr), t(b, n, r, dr)
    kw = dict(attn_scale=0.4, rel_scale=0.3)
    mask = torch.rand(b, 1, n, n) > 0.3
    mask = mask | ~mask.any(-1, keepdim=True)
    for masks in (dict(is_causal=True), dict(mask=mask), dict(mask=t(1, h, n, n)), {}):
        p = _problem(q, kk, q_rel, k_rel, v, wr, **kw, **masks)
        ref = rf.ra_plain(p)[0]
        torch.testing.assert_close(rf.ra_fused(p), ref, **TOL)
        torch.testing.assert_close(rf.ra_tiled(p, tile_rows=6), ref, **TOL)
        torch.testing.assert_close(rf.ra_blocked(p, block_size=4), ref, **TOL)


def test_tiled_gradcheck():
    torch.manual_seed(2)
    b, h, k, dk, d, r, dr, n = 1, 4, 2, 3, 3, 2, 2, 9
    t = lambda *shape: torch.randn(*shape, dtype=DT, requires_grad=True)  # noqa: E731
    args = (t(b, h, n, dk), t(b, k, n, dk), t(b, n, r, dr), t(b, n, r, dr), t(b, k, n, d), t(h, d, r))
    kw = dict(attn_scale=0.5, rel_scale=0.7)
    assert torch.autograd.gradcheck(lambda *a: rf.ra_tiled(_problem(*a, is_causal=True, **kw), tile_rows=4), args)
    pad = (torch.arange(n) < 6)[None, None, None, :]
    assert torch.autograd.gradcheck(lambda *a: rf.ra_tiled(_problem(*a, mask=pad, **kw)), args)


# ------------------------------------------------------------------------------------------ memory (sizes)
def _largest_tensor(layer, impl, n, relative=False, **fwd):
    layer.implementation = impl
    x, symbols = _inputs(n=n, b=1, relative=relative)
    with MaxNumel() as mode:
        out, *_ = layer(x, symbols, need_weights=impl == "plain", **fwd)
        out.square().sum().backward()
    return mode.max_numel


@pytest.mark.parametrize("impl", ["blocked", "tiled", "fused", "auto"])
def test_fast_paths_never_build_an_n_by_n_tensor(impl):
    """No op output (forward or backward) has n·n entries per head; the plain path does (the check can fail)."""
    n = 64
    layer = RelationalAttention(D_MODEL, N_HEADS, total_n_heads=TOTAL).to(DT)
    per_head_square = layer.n_heads * n * n
    assert _largest_tensor(layer, "plain", n, is_causal=True) >= per_head_square
    largest = _largest_tensor(layer, impl, n, is_causal=True)
    bound = layer.n_heads * n * max(POLICY.block_size, POLICY.tile_rows) * layer.n_relations
    stacked_projection = n * (layer.wq_attn.out_features + layer.wk_attn.out_features + 2 * layer.wq_rel.out_features)
    assert largest <= max(bound, n * (layer.head_dim + layer.n_relations * layer.rel_proj_dim) * layer.n_heads,
                          stacked_projection)
    assert largest < per_head_square // 2


def test_relative_symbols_never_materialised():
    """Position-relative symbols: neither the (n, n, d) symbols nor n·n weights per head are built."""
    n = 64
    layer = RelationalAttention(D_MODEL, N_HEADS, total_n_heads=TOTAL, use_relative_positional_symbols=True).to(DT)
    largest = _largest_tensor(layer, "auto", n, relative=True, is_causal=True)
    assert largest < layer.n_heads * n * n // 2 and largest < n * n * D_MODEL


def test_disrca_blocked_path_is_bounded():
    n = 64
    layer = DisentangledRelationalCrossAttention(D_MODEL, N_HEADS, 0.0, total_n_heads=TOTAL).to(DT)
    x, s = _inputs(n=n, b=1)
    with MaxNumel() as mode:
        out, *_ = layer(x, s, is_causal=True, need_weights=False)
        out.square().sum().backward()
    assert mode.max_numel <= n * n  # the (n, n) causal mask, never weights per head: those are B·H·n·n


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("relative", [False, True])
def test_rca_without_weights_is_bounded(activation, relative):
    """RCA without weights: SDPA (softmax, per-token symbols) or query blocks, never n·n weights per head."""
    n = 64
    layer = RelationalCrossAttention(D_MODEL, N_HEADS, 0.0, activation=activation, total_n_heads=TOTAL,
                                     use_relative_positional_symbols=relative).to(DT)
    x, s = _inputs(n=n, b=1, relative=relative)
    with MaxNumel() as mode:
        out, _ = layer(x, s, is_causal=True, need_weights=False)
        out.square().sum().backward()
    assert mode.max_numel < layer.n_heads * n * n // 2
    with MaxNumel() as mode:
        layer(x, s, is_causal=True, need_weights=True)
    assert mode.max_numel >= layer.n_heads * n * n  # the weights path does build them (the check can fail)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("relative", [False, True])
def test_rca_and_disrca_fast_equal_weights_path(activation, relative):
    x, s = _inputs(relative=relative)
    rca = RelationalCrossAttention(D_MODEL, N_HEADS, 0.0, activation=activation, total_n_heads=TOTAL,
                                   use_relative_positional_symbols=relative).to(DT)
    dis = DisentangledRelationalCrossAttention(D_MODEL, N_HEADS, 0.0, n_kv_heads=1, total_n_heads=TOTAL,
                                               use_relative_positional_symbols=relative).to(DT)
    for layer in (rca, dis):
        for fwd in (dict(is_causal=True), dict(key_padding_mask=_padding(2, 19))):
            slow = layer(x, s, need_weights=True, **fwd)[0]
            fast, *rest = layer(x, s, need_weights=False, **fwd)
            assert all(r is None for r in rest)
            torch.testing.assert_close(fast, slow, **TOL)


# ------------------------------------------------------------------------------------------ choice of path
def _choice(layer, need_weights, symbols, n=3, decoding=False):
    """What ``forward`` would run for ``n`` tokens."""
    x = torch.zeros(1, n, D_MODEL, dtype=layer.wr.dtype)
    if isinstance(symbols, torch.Tensor) and symbols.dim() == 3 and not layer.use_relative_positional_symbols:
        symbols = symbols[:, :n]
    return rf.resolve_implementation(layer.implementation, layer.project(x, symbols), need_weights=need_weights,
                                     decoding=decoding)


def test_auto_choice():
    layer = RelationalAttention(D_MODEL, N_HEADS, total_n_heads=TOTAL)
    symbols = torch.zeros(1, 32, D_MODEL)
    assert _choice(layer, True, symbols) == "plain"
    assert _choice(layer, False, symbols) == "tiled"  # CPU, float32, no dropout
    assert _choice(layer, False, symbols, n=1, decoding=True) == "plain"  # a cached decoding step
    assert _choice(layer, False, symbols, n=POLICY.decode_max_queries + 1, decoding=True) == "tiled"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _choice(layer, False, symbols) == "fused"
    dropout = RelationalAttention(D_MODEL, N_HEADS, dropout=0.1, total_n_heads=TOTAL)
    assert _choice(dropout, False, symbols) == "fused"  # the tiles have no attention dropout
    dropout.eval()
    assert _choice(dropout, False, symbols) == "tiled"
    assert _choice(RelationalAttention(D_MODEL, N_HEADS, rel_activation="relu"), False, symbols) == "blocked"
    relative = RelationalAttention(D_MODEL, N_HEADS, use_relative_positional_symbols=True)
    compact = PositionRelativeSymbolRetriever(D_MODEL, 3).retrieve(symbols)
    assert _choice(relative, False, compact) == "tiled"
    assert _choice(relative, False, compact.materialize(3)) == "blocked"  # published [n, n, d]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _choice(relative, False, compact) == "blocked"
    layer.implementation = "fused"
    assert _choice(layer, True, symbols) == "fused"


def test_tiled_refuses_dropout_and_bad_names():
    layer = RelationalAttention(D_MODEL, N_HEADS, dropout=0.2, total_n_heads=TOTAL).to(DT).train()
    x, s = _inputs(requires_grad=False)
    layer.implementation = "tiled"
    with pytest.raises(ValueError, match="dropout"):
        layer(x, s, need_weights=False)
    layer.implementation = "fused"  # dropout through the attention kernel: runs, stochastic
    out1 = layer(x, s, need_weights=False)[0]
    out2 = layer(x, s, need_weights=False)[0]
    assert not torch.allclose(out1, out2)
    with pytest.raises(ValueError, match="'tiled'"):  # checked when set
        layer.implementation = "flash"
    assert layer.implementation == "fused"


def test_fused_saves_compact_tensors_for_backward(monkeypatch):
    """ra_fused keeps q/k unpadded and the values unrepeated for backward, rebuilt once there: gradients equal."""
    torch.manual_seed(3)
    b, h, dk, d, r, dr, n = 1, 2, 4, 4, 2, 4, 11
    t = lambda *shape: torch.randn(*shape, dtype=DT, requires_grad=True)  # noqa: E731
    args = (t(b, h, n, dk), t(b, h, n, dk), t(b, n, r, dr), t(b, n, r, dr), t(b, h, n, d), t(h, d, r))
    kw = dict(attn_scale=0.5, rel_scale=0.5, is_causal=True)
    events = []

    class CountingRebuild(rf._Rebuild):
        def __init__(self, rebuild):
            events.append("saved")
            super().__init__(lambda: events.append("rebuilt") or rebuild())

    monkeypatch.setattr(rf, "_Rebuild", CountingRebuild)
    out = rf.ra_fused(_problem(*args, **kw))
    assert events == ["saved"] * 3  # padded q, padded k, [v | k_rel]
    out.square().sum().backward()
    assert events.count("rebuilt") == 3
    with torch.no_grad():  # nothing is saved without gradients
        rf.ra_fused(_problem(*args, **kw))
    assert len(events) == 6
    assert torch.autograd.gradcheck(lambda *a: rf.ra_fused(_problem(*a, **kw)), args)


def test_tile_rows_cover_gqa_groups():
    """With n_rep query heads per kv head, a tile holds tile_rows // n_rep queries (at least one)."""
    assert math.ceil(POLICY.tile_rows / 6) >= 1
    layer = RelationalAttention(D_MODEL, 6, n_kv_heads=1, total_n_heads=6, n_relations=2).to(DT)
    x, s = _inputs(requires_grad=False)
    layer.implementation = "plain"
    ref = layer(x, s, is_causal=True, need_weights=False)[0]
    layer.implementation = "tiled"
    torch.testing.assert_close(layer(x, s, is_causal=True, need_weights=False)[0], ref, **TOL)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fused_matches_plain():
    """On CUDA 'auto' is the fused SDPA call (unpadded, wider values); it equals the plain path, GQA included."""
    for kv in (None, 1):
        layer = RelationalAttention(D_MODEL, N_HEADS, total_n_heads=TOTAL, n_kv_heads=kv).cuda()
        x, s = torch.randn(2, 33, D_MODEL, device="cuda"), torch.randn(2, 33, D_MODEL, device="cuda")
        chosen = rf.resolve_implementation("auto", layer.project(x, s), need_weights=False, decoding=False)
        assert chosen in ("fused", "triton")  # 'triton' where Triton is installed
        fast = layer(x, s, is_causal=True, need_weights=False)[0]
        layer.implementation = "plain"
        torch.testing.assert_close(fast, layer(x, s, is_causal=True)[0], rtol=1e-4, atol=1e-5)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            layer.implementation = "auto"
            assert torch.isfinite(layer(x, s, is_causal=True, need_weights=False)[0]).all()
