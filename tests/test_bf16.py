"""bfloat16 autocast on the CPU: forward and backward run on every path and stay close to float32."""

from __future__ import annotations

import pytest
import torch

from dual_attention.attention_utils import precompute_freqs_cis
from dual_attention.relational_attention import (
    DisentangledRelationalCrossAttention,
    RelationalAttention,
    RelationalCrossAttention,
)
from dual_attention.symbol_retrieval import PositionRelativeSymbolRetriever

D = 32


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _fwd_bwd(module, call, inputs, autocast: bool):
    """Output and input/parameter gradients of ``call(module, *inputs)`` (float32 or under bf16 autocast)."""
    module.zero_grad(set_to_none=True)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    for t in leaves:
        t.grad = None
    if autocast:
        with _autocast():
            out = call(module, *inputs)
    else:
        out = call(module, *inputs)
    out.float().square().mean().backward()
    grads = [p.grad.clone() for p in module.parameters() if p.grad is not None] + [t.grad.clone() for t in leaves]
    return out.detach(), grads


def _check_close(module, call, inputs, out_tol=0.05, grad_tol=0.1, expect_bf16=True):
    ref, ref_grads = _fwd_bwd(module, call, inputs, autocast=False)
    out, grads = _fwd_bwd(module, call, inputs, autocast=True)
    if expect_bf16:
        assert out.dtype == torch.bfloat16  # autocast really ran in bf16
    assert torch.isfinite(out.float()).all()
    assert _rel_err(out, ref) < out_tol
    assert len(grads) == len(ref_grads) and grads
    assert all(torch.isfinite(g).all() for g in grads)
    flat, flat_ref = torch.cat([g.flatten() for g in grads]), torch.cat([r.flatten() for r in ref_grads])
    assert _rel_err(flat, flat_ref) < grad_tol
    largest = max(float(r.norm()) for r in ref_grads)
    for g, r in zip(grads, ref_grads):  # each gradient that is not negligible (tiny ones are all rounding)
        if float(r.norm()) > 1e-3 * largest:
            assert _rel_err(g, r) < 1.5 * grad_tol


@pytest.mark.parametrize("impl", ["plain", "blocked", "fused", "tiled", "auto"])
@pytest.mark.parametrize("gqa", [False, True])
def test_relational_attention_paths(impl, gqa):
    layer = RelationalAttention(D, 2, total_n_heads=4, n_kv_heads=1 if gqa else None)
    layer.implementation = impl
    x, s = torch.randn(2, 40, D, requires_grad=True), torch.randn(2, 40, D, requires_grad=True)
    cos, sin = precompute_freqs_cis(D // 4, 40)
    pad = torch.ones(2, 40, dtype=torch.bool)
    pad[1, 30:] = False
    _check_close(layer, lambda m, a, b: m(a, b, cos, sin, is_causal=True, need_weights=impl == "plain")[0], (x, s))
    _check_close(layer, lambda m, a, b: m(a, b, key_padding_mask=pad, need_weights=False)[0], (x, s))


@pytest.mark.parametrize("activation", ["identity", "tanh"])
def test_relative_symbols_and_activations(activation):
    layer = RelationalAttention(D, 2, total_n_heads=4, rel_activation=activation, use_relative_positional_symbols=True)
    retriever = PositionRelativeSymbolRetriever(D, 4)
    x = torch.randn(2, 40, D, requires_grad=True)
    module = torch.nn.ModuleList([layer, retriever])
    _check_close(module, lambda m, a: m[0](a, m[1].retrieve(a), is_causal=True, need_weights=False)[0], (x,))


@pytest.mark.parametrize("relative", [False, True])
def test_rca_and_disrca(relative):
    x = torch.randn(2, 30, D, requires_grad=True)
    retriever = PositionRelativeSymbolRetriever(D, 4)
    s = retriever.retrieve(x) if relative else torch.randn(2, 30, D, requires_grad=True)
    inputs = (x,) if relative else (x, s)
    for layer in (RelationalCrossAttention(D, 2, 0.0, total_n_heads=4, use_relative_positional_symbols=relative),
                  RelationalCrossAttention(D, 2, 0.0, activation="sigmoid", use_relative_positional_symbols=relative),
                  DisentangledRelationalCrossAttention(D, 2, 0.0, n_kv_heads=1,
                                                       use_relative_positional_symbols=relative)):
        for need_weights in (False, True):
            def call(m, a, b=s, need_weights=need_weights):
                return m(a, b, is_causal=True, need_weights=need_weights)[0]

            _check_close(layer, call, inputs)


@pytest.mark.parametrize("retriever", ["symbolic_attention", "positional_symbols", "position_relative"])
def test_dat_lm(make_dat_lm, retriever):
    model = make_dat_lm(symbol_retrieval=retriever, d_model=D, max_block_size=40)
    x = torch.randint(0, model.vocab_size, (2, 36))
    _check_close(model, lambda m, a: m(a, a)[1], (x,), out_tol=0.02, expect_bf16=False)  # the loss is float32
    _check_close(model, lambda m, a: m(a)[0], (x,))


def test_transformer_lm(make_transformer_lm):
    model = make_transformer_lm(d_model=D, max_block_size=40)
    x = torch.randint(0, model.vocab_size, (2, 36))
    _check_close(model, lambda m, a: m(a)[0], (x,))


@pytest.mark.parametrize("retriever", ["symbolic_attention", "position_relative"])
def test_cached_decoding_under_autocast(make_dat_lm, retriever):
    """A float32 model decoding with its cache under bf16 autocast: the cache holds the model dtype, logits agree."""
    model = make_dat_lm(symbol_retrieval=retriever, d_model=D, max_block_size=40).eval()
    x = torch.randint(0, model.vocab_size, (2, 30))
    with torch.no_grad():
        ref = model(x)[0]
        cache = model.init_kv_cache(2, 30)
        with _autocast():
            steps = [model(x[:, :20], kv_cache=cache, input_pos=torch.arange(20))[0]]
            steps += [model(x[:, i:i + 1], kv_cache=cache, input_pos=torch.tensor([i]))[0] for i in range(20, 30)]
            tokens = model.generate(x[:, :20], 5, temperature=0.0)
    assert _rel_err(torch.cat(steps, 1), ref) < 0.05
    assert tokens.shape == (2, 25)


@pytest.mark.parametrize("family", ["dat", "transformer"])
def test_seq2seq(make_seq2seq_dat, make_seq2seq_transformer, family):
    model = make_seq2seq_dat(d_model=D) if family == "dat" else make_seq2seq_transformer(d_model=D)
    src, tgt = torch.randint(0, 23, (2, 15)), torch.randint(0, 19, (2, 12))
    _check_close(model, lambda m, a, b: m(a, b, b)[0], (src, tgt))
    with torch.no_grad(), _autocast():
        assert model.eval().generate(src, 4, bos_token_id=1).shape == (2, 5)


@pytest.mark.parametrize("family", ["dat", "transformer"])
def test_vision(make_vidat, make_vit, family):
    model = make_vidat(d_model=D) if family == "dat" else make_vit(d_model=D)
    img = torch.randn(2, 3, 8, 8, requires_grad=True)
    _check_close(model, lambda m, a: m(a), (img,))
