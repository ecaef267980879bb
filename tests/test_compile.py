"""torch.compile: the language models trace without graph breaks, in training and in cached decoding.

``torch._dynamo.explain`` reports the graphs and breaks of one call. The equality checks use the ``aot_eager``
backend (Dynamo + AOT autograd, no code generation: seconds); the ``slow`` tests compile with Inductor.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from dual_attention.generation import _decode_step, generate

RETRIEVERS = ["symbolic_attention", "positional_symbols", "position_relative"]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model(make_dat_lm, make_transformer_lm, family, retriever=None, pos="RoPE"):
    if family == "dat":
        return make_dat_lm(symbol_retrieval=retriever, pos_enc_type=pos, max_block_size=40)
    return make_transformer_lm(pos_enc_type=pos, max_block_size=40)


def _no_breaks(explanation) -> None:
    reasons = [str(r.reason).splitlines()[0] for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


MODELS = [("dat", r, "RoPE") for r in RETRIEVERS] + [("dat", "symbolic_attention", "pos_emb"),
                                                        ("transformer", None, "RoPE")]


@pytest.mark.parametrize("family,retriever,pos", MODELS)
def test_training_step_has_no_graph_breaks(make_dat_lm, make_transformer_lm, family, retriever, pos):
    model = _model(make_dat_lm, make_transformer_lm, family, retriever, pos)
    x = torch.randint(0, model.vocab_size, (2, 24))  # long enough for the fused kernels
    _no_breaks(torch._dynamo.explain(lambda a, b: model(a, b)[1])(x, x))


@pytest.mark.parametrize("family,retriever,pos", MODELS)
def test_cached_decoding_step_has_no_graph_breaks(make_dat_lm, make_transformer_lm, family, retriever, pos):
    model = _model(make_dat_lm, make_transformer_lm, family, retriever, pos).eval()
    x = torch.randint(0, model.vocab_size, (2, 20))
    cache = model.init_kv_cache(2, 32)
    pad = torch.ones(2, 32, dtype=torch.bool)
    pad[1, :3] = False
    with torch.no_grad():
        model(x, kv_cache=cache, input_pos=torch.arange(20))
        _no_breaks(torch._dynamo.explain(_decode_step)(model, x[:, :1], cache, torch.tensor([20]), None))
        _no_breaks(torch._dynamo.explain(_decode_step)(model, x[:, :1], cache, torch.tensor([21]), pad))


SLOW_OTHERS = [RETRIEVERS[0], *(pytest.param(r, marks=pytest.mark.slow) for r in RETRIEVERS[1:])]


@pytest.mark.parametrize("retriever", SLOW_OTHERS)
def test_compiled_training_equals_eager(make_dat_lm, retriever):
    """Dynamo + AOT autograd (aot_eager): the same loss and gradients as eager."""
    model = make_dat_lm(symbol_retrieval=retriever, max_block_size=40).to(torch.float64)
    x, y = torch.randint(0, model.vocab_size, (2, 24)), torch.randint(0, model.vocab_size, (2, 24))
    loss = model(x, y)[1]
    loss.backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss_c = compiled(x, y)[1]
    loss_c.backward()
    torch.testing.assert_close(loss_c, loss, rtol=1e-10, atol=1e-12)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-8, atol=1e-10)


def test_compiled_decoding_equals_eager(make_dat_lm):
    """The decoding step compiled (aot_eager): the same logits, and no recompilation from step to step."""
    model = make_dat_lm(max_block_size=40).to(torch.float64).eval()
    x = torch.randint(0, model.vocab_size, (2, 26))
    step = torch.compile(_decode_step, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.no_grad():
        full = model(x)[0]
        cache = model.init_kv_cache(2, 32)
        model(x[:, :20], kv_cache=cache, input_pos=torch.arange(20))
        from torch._dynamo.utils import counters

        counters.clear()
        logits = [step(model, x[:, i:i + 1], cache, torch.tensor([i]), None) for i in range(20, 26)]
        assert counters["stats"]["unique_graphs"] == 1  # positions are data, not shapes: one graph for all steps
    torch.testing.assert_close(torch.stack(logits, 1), full[:, 20:], rtol=0, atol=1e-10)


@pytest.mark.slow
def test_inductor_generation_equals_eager(make_dat_lm):
    """``generate(compile=True)``: Inductor-compiled steps give the eager greedy tokens."""
    model = make_dat_lm(max_block_size=40).eval()
    prompt = torch.randint(0, model.vocab_size, (2, 18))
    eager = generate(model, prompt, 10, temperature=0.0)
    compiled = generate(model, prompt, 10, temperature=0.0, compile=True)
    assert torch.equal(compiled, eager)
    again = model.generate(prompt[:, :15], 12, temperature=0.0, compile=True)  # same cache length
    assert torch.equal(again, generate(model, prompt[:, :15], 12, temperature=0.0))


@pytest.mark.slow
def test_inductor_training_step_equals_eager(make_dat_lm):
    model = make_dat_lm(max_block_size=40)
    x, y = torch.randint(0, model.vocab_size, (2, 24)), torch.randint(0, model.vocab_size, (2, 24))
    loss = model(x, y)[1]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    loss_c = torch.compile(model, fullgraph=True)(x, y)[1]
    loss_c.backward()
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ra_type", ["rca", "disrca"])
def test_ablations_compile_without_graph_breaks(make_dat_lm, ra_type):
    """Training step and cached decoding step of the RCA and DisRCA LMs: one graph each (Hadamard:
    ``tests/test_hadamard_attention.py``)."""
    model = make_dat_lm(ra_type=ra_type, max_block_size=40)
    x = torch.randint(0, model.vocab_size, (2, 24))
    _no_breaks(torch._dynamo.explain(lambda a, b: model(a, b)[1])(x, x))
    model.eval()
    cache = model.init_kv_cache(2, 32)
    with torch.no_grad():
        model(x[:, :20], kv_cache=cache, input_pos=torch.arange(20))
        _no_breaks(torch._dynamo.explain(_decode_step)(model, x[:, :1], cache, torch.tensor([20]), None))
