"""Gradients: every parameter of every model family gets a usable gradient, and ``torch.autograd.gradcheck`` (finite
differences vs autograd, float64) passes for the attention layers w.r.t. their inputs *and* parameters."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from dual_attention.attention import Attention
from dual_attention.attention_utils import POLICY, precompute_freqs_cis
from dual_attention.relational_attention import (
    DisentangledRelationalCrossAttention,
    RelationalAttention,
    RelationalCrossAttention,
)
from dual_attention.symbol_retrieval import (
    PositionRelativeSymbolRetriever,
    RelationalSymbolicAttention,
    SymbolicAttention,
)

DT = torch.float64


def _assert_all_grads(model: torch.nn.Module, allow_zero: tuple[str, ...] = ()) -> None:
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        if not any(name.endswith(s) for s in allow_zero):
            assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


# ------------------------------------------------------------------------------------------------ model families
LM_VARIANTS = {
    "symbolic": dict(),
    "symbolic_unshared_tied_library": dict(symbol_retriever_config=dict(shared_symbol_retriever=False,
                                                                        weight_tie_symbol_library=True)),
    "positional": dict(symbol_retrieval="positional_symbols", pos_enc_type="pos_emb", norm_type="rmsnorm"),
    "position_relative_symmetric": dict(symbol_retrieval="position_relative",
                                        ra_kwargs=dict(use_relative_positional_symbols=True, symmetric_rels=True,
                                                       rel_activation="tanh")),
    "rca": dict(ra_type="rca", norm_first=False),
    "disrca_gqa": dict(ra_type="disrca", ra_kwargs=dict(n_kv_heads=1, add_bias_kv=True)),
    "share_attn_params": dict(share_attn_params=True, activation="relu"),
}


@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_dat_lm_every_parameter_gets_a_gradient(variant, make_dat_lm):
    model = make_dat_lm(**LM_VARIANTS[variant], dropout_rate=0.1)
    x = torch.randint(0, model.vocab_size, (2, 12))
    _, loss = model(x, torch.randint(0, model.vocab_size, (2, 12)))
    loss.backward()
    _assert_all_grads(model)


@pytest.mark.parametrize("kwargs", [dict(), dict(pos_enc_type="RoPE", use_flash_attention=False,
                                                   block_kwargs=dict(attn_kwargs=dict(n_kv_heads=2)))])
def test_transformer_lm_every_parameter_gets_a_gradient(kwargs, make_transformer_lm):
    model = make_transformer_lm(**kwargs)
    x = torch.randint(0, model.vocab_size, (2, 12))
    _, loss = model(x, x)
    loss.backward()
    _assert_all_grads(model)


@pytest.mark.parametrize("retrieval", ["symbolic_attention", "rel_sym_attn", "positional_symbols",
                                       "position_relative"])
def test_seq2seq_dat_every_parameter_gets_a_gradient(retrieval, make_seq2seq_dat):
    model = make_seq2seq_dat(symbol_retrieval=retrieval)
    src, y = torch.randint(0, 23, (2, 8)), torch.randint(0, 19, (2, 9))
    _, loss = model(src, y, y)
    loss.backward()
    _assert_all_grads(model)


def test_seq2seq_transformer_every_parameter_gets_a_gradient(make_seq2seq_transformer):
    model = make_seq2seq_transformer(input_spec=dict(type="vector", dim=5))
    _, loss = model(torch.randn(2, 8, 5), torch.randint(0, 19, (2, 9)), torch.randint(0, 19, (2, 9)))
    loss.backward()
    _assert_all_grads(model)


@pytest.mark.parametrize("retrieval", ["position_relative", "symbolic_attention", "rel_sym_attn",
                                       "positional_symbols"])
def test_vidat_every_parameter_gets_a_gradient(retrieval, make_vidat):
    kwargs = {
        "position_relative": dict(),
        "symbolic_attention": dict(symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=4), ra_kwargs={}),
        "rel_sym_attn": dict(symbol_retrieval_kwargs=dict(d_model=16, rel_n_heads=2, symbolic_attn_n_heads=2,
                                                          n_symbols=4, nbhd_delta=1, causal_nbhd=False),
                             ra_kwargs={}),
        "positional_symbols": dict(symbol_retrieval_kwargs=dict(symbol_dim=16, max_length=5), ra_kwargs={},
                                   pool="mean"),
    }[retrieval]
    model = make_vidat(symbol_retrieval=retrieval, **kwargs)
    model(torch.randn(2, 3, 8, 8)).logsumexp(-1).sum().backward()
    _assert_all_grads(model)


def test_vit_every_parameter_gets_a_gradient(make_vit):
    model = make_vit(pool="cls")
    model(torch.randn(2, 3, 8, 8)).logsumexp(-1).sum().backward()
    _assert_all_grads(model)


# ------------------------------------------------------------------------------------------------------ gradcheck
def _gradcheck_layer(layer: torch.nn.Module, call, *inputs: torch.Tensor) -> None:
    """gradcheck of ``call(layer, *inputs)`` w.r.t. the inputs and every (unique) parameter."""
    names, params = [], []
    for name, p in layer.named_parameters():  # named_parameters de-duplicates shared parameters
        names.append(name)
        params.append(p.detach().clone().requires_grad_(True))
    n_in = len(inputs)

    def fn(*args):
        return call(lambda *a, **k: functional_call(layer, dict(zip(names, args[n_in:])), a, k), *args[:n_in])

    assert torch.autograd.gradcheck(fn, (*inputs, *params), eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def _x(b=1, n=5, d=8):
    return torch.randn(b, n, d, dtype=DT, requires_grad=True)


@pytest.mark.parametrize("impl", ["plain", "blocked", "fused", "auto"])
def test_gradcheck_relational_attention(impl, monkeypatch):
    monkeypatch.setattr(POLICY, "block_size", 2)
    layer = RelationalAttention(8, 2, n_relations=4, rel_proj_dim=3, n_kv_heads=1, add_bias_kv=True).to(DT)
    layer.implementation = impl
    cos, sin = precompute_freqs_cis(4, 5)
    kpm = torch.tensor([[True, True, True, True, False]])
    _gradcheck_layer(layer, lambda f, x, s: f(x, s, cos.to(DT), sin.to(DT), is_causal=True, key_padding_mask=kpm,
                                               need_weights=False)[0], _x(), _x())


@pytest.mark.parametrize("impl", ["plain", "blocked"])
def test_gradcheck_relational_attention_relative_nonlinear(impl, monkeypatch):
    monkeypatch.setattr(POLICY, "block_size", 2)
    layer = RelationalAttention(8, 2, rel_activation="tanh", use_relative_positional_symbols=True,
                                symmetric_rels=True).to(DT)
    layer.implementation = impl
    retriever = PositionRelativeSymbolRetriever(8, 2).to(DT)
    table = retriever.rel_pos_enc.rel_pos_embeddings.detach().clone().requires_grad_(True)
    from dual_attention.symbol_retrieval import RelativeSymbols

    _gradcheck_layer(layer, lambda f, x, t: f(x, RelativeSymbols(t, 2), is_causal=True, need_weights=False)[0],
                     _x(), table)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_gradcheck_rca(activation):
    layer = RelationalCrossAttention(8, 2, 0.0, activation=activation, n_kv_heads=1).to(DT)
    cos, sin = precompute_freqs_cis(4, 5)
    _gradcheck_layer(layer, lambda f, x, s: f(x, s, cos.to(DT), sin.to(DT), is_causal=True)[0], _x(), _x())


def test_gradcheck_disrca():
    layer = DisentangledRelationalCrossAttention(8, 2, 0.0, rel_activation="tanh", n_kv_heads=1).to(DT)
    kpm = torch.tensor([[True, True, True, False, False]])
    _gradcheck_layer(layer, lambda f, x, s: f(x, s, key_padding_mask=kpm, need_weights=False)[0], _x(), _x())


@pytest.mark.parametrize("need_weights", [False, True])
def test_gradcheck_attention(need_weights):
    layer = Attention(8, 2, 0.0, n_kv_heads=1, add_bias_kv=True, add_bias_out=True).to(DT)
    cos, sin = precompute_freqs_cis(4, 5)
    _gradcheck_layer(layer, lambda f, x: f(x, x, x, cos.to(DT), sin.to(DT), is_causal=True,
                                           need_weights=need_weights)[0], _x())


def test_gradcheck_symbolic_attention():
    layer = SymbolicAttention(8, 2, n_symbols=3).to(DT)
    _gradcheck_layer(layer, lambda f, x: f(x), _x())


def test_gradcheck_relational_symbolic_attention():
    layer = RelationalSymbolicAttention(8, 2, 2, n_symbols=3, nbhd_delta=2).to(DT)
    _gradcheck_layer(layer, lambda f, x: f(x), _x(n=4))
