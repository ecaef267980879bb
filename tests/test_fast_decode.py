"""The fused decoding step (dual_attention.fast_decode) equals the full forward, eager and compiled, for every
symbol retriever and layer variant; it builds no mask, reads nothing back to the host and leaves the model as it was.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from dual_attention import fast_decode
from dual_attention.generation import generate

RETRIEVERS = ["symbolic_attention", "positional_symbols", "position_relative"]
BLOCK = 48


def _ra_kwargs(retriever: str, **extra) -> dict:
    return dict(use_relative_positional_symbols=retriever == "position_relative", **extra)


VARIANTS = {  # name -> DualAttnTransformerLM overrides (given the retriever)
    "rope": lambda r: {},
    "pos_emb": lambda r: dict(pos_enc_type="pos_emb"),
    "post_norm_rmsnorm": lambda r: dict(norm_first=False, norm_type="rmsnorm"),
    "gqa": lambda r: dict(sa_kwargs=dict(n_kv_heads=1), ra_kwargs=_ra_kwargs(r, n_kv_heads=1)),
    "gqa_ratios_differ": lambda r: dict(sa_kwargs=dict(n_kv_heads=1), ra_kwargs=_ra_kwargs(r)),
    "biases_symmetric": lambda r: dict(sa_kwargs=dict(add_bias_kv=True, add_bias_out=True),
                                       ra_kwargs=_ra_kwargs(r, add_bias_kv=True, add_bias_out=True,
                                                            symmetric_rels=True)),
    "ra_only": lambda r: dict(n_heads_sa=0, n_heads_ra=4, ra_kwargs=_ra_kwargs(r)),
    "sa_only": lambda r: dict(n_heads_sa=4, n_heads_ra=0),
    "per_layer_retrievers": lambda r: dict(symbol_retriever_config=dict(shared_symbol_retriever=False)),
}


def _dat(make_dat_lm, retriever, variant="rope", dtype=torch.float64):
    model = make_dat_lm(symbol_retrieval=retriever, max_block_size=BLOCK, **VARIANTS[variant](retriever))
    return model.to(dtype).eval()


def _fast_logits(model, x, prefill, key_padding_mask=None, step=fast_decode.FastDecoder.step):
    """Logits of ``x[:, prefill:]`` by a prefill through the model and then the fused step, token by token."""
    b, t = x.shape
    cache = model.init_kv_cache(b, t + 6)  # a cache longer than used
    pad = None
    if key_padding_mask is not None:
        pad = torch.ones(b, t + 6, dtype=torch.bool)
        pad[:, :t] = key_padding_mask
    model(x[:, :prefill], kv_cache=cache, input_pos=torch.arange(prefill), key_padding_mask=pad)
    decoder = fast_decode.FastDecoder(model, cache, prefill, pad)
    return torch.stack([step(decoder, x[:, i]) for i in range(prefill, t)], dim=1)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_fused_step_equals_full_forward(make_dat_lm, retriever, variant):
    model = _dat(make_dat_lm, retriever, variant)
    assert fast_decode.supported(model)
    x = torch.randint(0, model.vocab_size, (3, 30))
    with torch.no_grad():
        torch.testing.assert_close(_fast_logits(model, x, 12), model(x)[0][:, 12:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("pos", ["RoPE", "pos_emb"])
def test_fused_step_transformer_lm(make_transformer_lm, pos):
    model = make_transformer_lm(pos_enc_type=pos, max_block_size=BLOCK,
                                block_kwargs=dict(attn_kwargs=dict(n_kv_heads=2))).double().eval()
    x = torch.randint(0, model.vocab_size, (2, 25))
    with torch.no_grad():
        torch.testing.assert_close(_fast_logits(model, x, 9), model(x)[0][:, 9:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_float32_logits_within_1e5_and_left_padding(make_dat_lm, retriever):
    model = _dat(make_dat_lm, retriever, dtype=torch.float32)
    x = torch.randint(1, model.vocab_size, (3, 28))
    kpm = torch.ones(3, 28, dtype=torch.bool)
    kpm[1, :5] = False
    with torch.no_grad():
        full = model(x, key_padding_mask=kpm)[0][:, 10:]
        fast = _fast_logits(model, x, 10, key_padding_mask=kpm)
    assert (fast - full).abs().max() < 1e-5


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_compiled_step_equals_full_forward_without_graph_breaks(make_dat_lm, retriever):
    """Dynamo + AOT autograd (no code generation: seconds): one graph, reused at every position, same logits."""
    torch._dynamo.reset()
    model = _dat(make_dat_lm, retriever, "gqa")
    x = torch.randint(0, model.vocab_size, (2, 26))
    step = torch.compile(fast_decode.FastDecoder.step, backend="aot_eager", fullgraph=True, dynamic=False)
    from torch._dynamo.utils import counters

    counters.clear()
    with torch.no_grad():
        fast = _fast_logits(model, x, 16, step=step)
        full = model(x)[0][:, 16:]
    assert counters["stats"]["unique_graphs"] == 1  # the position is data, not a shape
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-12)
    torch._dynamo.reset()


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_greedy_tokens_identical_to_uncached(make_dat_lm, retriever):
    model = _dat(make_dat_lm, retriever, dtype=torch.float32)
    prompt = torch.randint(0, model.vocab_size, (2, 17))
    cached = generate(model, prompt, 20, temperature=0.0)
    assert torch.equal(cached, generate(model, prompt, 20, temperature=0.0, use_cache=False))


@pytest.mark.slow
@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_generate_compile_true_gives_the_eager_tokens(make_dat_lm, retriever):
    """``generate(compile=True)`` (Inductor): the uncached greedy tokens, and a second call reuses the compiled step."""
    torch._dynamo.reset()
    model = _dat(make_dat_lm, retriever, dtype=torch.float32)
    prompt = torch.randint(0, model.vocab_size, (2, 17))
    uncached = generate(model, prompt, 12, temperature=0.0, use_cache=False)
    assert torch.equal(model.generate(prompt, 12, temperature=0.0, compile=True), uncached)
    from torch._dynamo.utils import counters

    counters.clear()
    assert torch.equal(model.generate(prompt[:, :15], 14, temperature=0.0, compile=True),
                       generate(model, prompt[:, :15], 14, temperature=0.0, use_cache=False))
    assert counters["stats"]["unique_graphs"] == 0  # same shapes: the compiled step was reused
    torch._dynamo.reset()


def test_step_is_lean_and_never_synchronises(make_dat_lm):
    """One step: no host read-back (item/nonzero/any), no mask construction, and a few dozen operators per layer."""
    model = _dat(make_dat_lm, "symbolic_attention", dtype=torch.float32)
    x = torch.randint(0, model.vocab_size, (1, 10))
    cache = model.init_kv_cache(1, 16)
    with torch.no_grad():
        model(x, kv_cache=cache, input_pos=torch.arange(10))
        decoder = fast_decode.FastDecoder(model, cache, 10)
        decoder.step(x[:, -1])  # warm-up
        with torch.profiler.profile() as prof:
            decoder.step(x[:, -1])
    names = [e.name for e in prof.events()]
    for forbidden in ("aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::any", "aten::tril",
                      "aten::arange", "aten::ones", "aten::zeros", "aten::full"):
        assert forbidden not in names, forbidden
    top_level = [e for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::")]
    assert len(top_level) <= 50 * model.n_layers + 10  # views and splits included; the model forward: ~400


def test_unsupported_models_decode_through_their_forward(make_dat_lm):
    """A non-identity relation activation is not fused: generation still equals the uncached tokens."""
    model = make_dat_lm(max_block_size=BLOCK, ra_kwargs=dict(rel_activation="relu")).eval()
    assert not fast_decode.supported(model)
    prompt = torch.randint(0, model.vocab_size, (2, 17))
    assert torch.equal(generate(model, prompt, 10, temperature=0.0),
                       generate(model, prompt, 10, temperature=0.0, use_cache=False))
    model.train()
    model_with_dropout = make_dat_lm(max_block_size=BLOCK, dropout_rate=0.1).train()
    assert not fast_decode.supported(model_with_dropout)


@pytest.mark.parametrize("overrides", [
    dict(ra_type="hadamard"),  # a layer the fused step does not know
    dict(ra_type="hadamard", symbol_retrieval=None, symbol_retrieval_kwargs=None),  # and no retriever list at all
    dict(update_symbols_each_layer=False),  # symbols retrieved once from the embeddings, not from each layer
])
def test_other_layer_kinds_and_persistent_symbols_are_not_fused(make_dat_lm, overrides):
    model = make_dat_lm(max_block_size=BLOCK, **overrides).eval()
    assert not fast_decode.supported(model)
    prompt = torch.randint(0, model.vocab_size, (2, 7))
    assert torch.equal(generate(model, prompt, 10, temperature=0.0),
                       generate(model, prompt, 10, temperature=0.0, use_cache=False))


def test_generation_leaves_the_model_unchanged(make_dat_lm):
    model = _dat(make_dat_lm, "symbolic_attention", dtype=torch.float32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generate(model, torch.randint(0, model.vocab_size, (1, 9)), 5, temperature=0.0)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
