"""KV-cached decoding equals the full forward; generation: greedy, sampling, EOS, padding, streaming, seq2seq."""

from __future__ import annotations

import pytest
import torch

from dual_attention.generation import generate, sample_next_token, stream_generate
from dual_attention.kv_cache import KVCache, StaticCache

RETRIEVERS = ["symbolic_attention", "positional_symbols", "position_relative"]
BLOCK = 48


def _lm(make_dat_lm, make_transformer_lm, family, retriever="symbolic_attention", pos="RoPE", gqa=False,
        dtype=torch.float64):
    if family == "dat":
        kw = dict(symbol_retrieval=retriever, pos_enc_type=pos, max_block_size=BLOCK)
        if gqa:
            kw["sa_kwargs"] = dict(n_kv_heads=1)
            kw["ra_kwargs"] = dict(n_kv_heads=1, use_relative_positional_symbols=retriever == "position_relative")
        model = make_dat_lm(**kw)
    else:
        kw = dict(pos_enc_type=pos, max_block_size=BLOCK)
        if gqa:
            kw["block_kwargs"] = dict(attn_kwargs=dict(n_kv_heads=2))
        model = make_transformer_lm(**kw)
    return model.to(dtype).eval()


def _incremental_logits(model, x, prefill, max_len=None, key_padding_mask=None):
    """Logits of ``x`` computed as one prefill of ``prefill`` tokens and then one token at a time."""
    b, t = x.shape
    cache = model.init_kv_cache(b, max_len or t)
    full_pad = None
    if key_padding_mask is not None:
        full_pad = torch.ones(b, max_len or t, dtype=torch.bool)
        full_pad[:, :t] = key_padding_mask
    outs = [model(x[:, :prefill], kv_cache=cache, input_pos=torch.arange(prefill), key_padding_mask=full_pad)[0]]
    for i in range(prefill, t):
        outs.append(model(x[:, i:i + 1], kv_cache=cache, input_pos=torch.tensor([i]), key_padding_mask=full_pad)[0])
    return torch.cat(outs, dim=1)


CONFIGS = [("dat", r, pos, False) for r in RETRIEVERS for pos in ("RoPE", "pos_emb")]
CONFIGS += [("dat", r, "RoPE", True) for r in RETRIEVERS]
CONFIGS += [("transformer", None, pos, gqa) for pos in ("RoPE", "pos_emb") for gqa in (False, True)]


@pytest.mark.parametrize("family,retriever,pos,gqa", CONFIGS)
@pytest.mark.parametrize("prefill", [3, 20])  # a decoding-sized prefill, and one long enough for the fast kernels
def test_cached_logits_equal_full_forward(make_dat_lm, make_transformer_lm, family, retriever, pos, gqa, prefill):
    model = _lm(make_dat_lm, make_transformer_lm, family, retriever, pos, gqa)
    x = torch.randint(0, model.vocab_size, (3, 30))
    with torch.no_grad():
        full, _ = model(x)
        incremental = _incremental_logits(model, x, prefill, max_len=40)  # a cache longer than used
    torch.testing.assert_close(incremental, full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family,retriever", [("dat", r) for r in RETRIEVERS] + [("transformer", None)])
def test_cached_logits_float32_within_1e5(make_dat_lm, make_transformer_lm, family, retriever):
    model = _lm(make_dat_lm, make_transformer_lm, family, retriever, dtype=torch.float32)
    x = torch.randint(0, model.vocab_size, (2, 26))
    with torch.no_grad():
        full, _ = model(x)
        incremental = _incremental_logits(model, x, 18)
    assert (incremental - full).abs().max() < 1e-5


@pytest.mark.parametrize("family,retriever,pos,gqa", CONFIGS)
def test_greedy_tokens_identical(make_dat_lm, make_transformer_lm, family, retriever, pos, gqa):
    model = _lm(make_dat_lm, make_transformer_lm, family, retriever, pos, gqa)
    prompt = torch.randint(0, model.vocab_size, (2, 19))
    cached = model.generate(prompt, 12, temperature=0.0)
    uncached = model.generate(prompt, 12, temperature=0.0, use_cache=False)
    assert cached.shape == (2, 31)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :19], prompt)


@pytest.mark.parametrize("prefill", [3, 20])
def test_cached_logits_with_softmax_relations(make_dat_lm, prefill):
    """``rel_activation='softmax'`` normalises over the senders: the unwritten cache slots must stay out of it."""
    model = make_dat_lm(max_block_size=BLOCK, ra_kwargs=dict(rel_activation="softmax")).to(torch.float64).eval()
    x = torch.randint(0, model.vocab_size, (2, 30))
    with torch.no_grad():
        full, _ = model(x)
        incremental = _incremental_logits(model, x, prefill, max_len=40)
    torch.testing.assert_close(incremental, full, rtol=0, atol=1e-10)


def test_generation_past_block_size_falls_back_to_a_window(make_dat_lm, make_transformer_lm):
    """More tokens than block_size: the cache fills up, then the last block_size tokens are re-run."""
    model = _lm(make_dat_lm, make_transformer_lm, "dat")
    prompt = torch.randint(0, model.vocab_size, (2, 40))
    cached = generate(model, prompt, 15, temperature=0.0)
    assert torch.equal(cached, generate(model, prompt, 15, temperature=0.0, use_cache=False))
    assert cached.shape == (2, 55)


@pytest.mark.parametrize("retriever", ["symbolic_attention", "position_relative"])
def test_left_padded_batch(make_dat_lm, make_transformer_lm, retriever):
    """Prompts of different lengths, left-padded with key_padding_mask: cached == uncached, and with RoPE and
    position-free symbols each row continues exactly like its prompt alone (padding changes nothing)."""
    model = _lm(make_dat_lm, make_transformer_lm, "dat", retriever)
    long, short = torch.randint(1, model.vocab_size, (1, 20)), torch.randint(1, model.vocab_size, (1, 13))
    batch = torch.cat([long, torch.cat([torch.zeros(1, 7, dtype=torch.long), short], dim=1)])
    kpm = torch.ones(2, 20, dtype=torch.bool)
    kpm[1, :7] = False
    cached = generate(model, batch, 10, temperature=0.0, key_padding_mask=kpm)
    uncached = generate(model, batch, 10, temperature=0.0, key_padding_mask=kpm, use_cache=False)
    assert torch.equal(cached, uncached)
    if retriever == "symbolic_attention":  # relative positions only: a shift by the padding is invisible
        alone = generate(model, short, 10, temperature=0.0)
        assert torch.equal(cached[1, 7:], alone[0])
        assert torch.equal(cached[0], generate(model, long, 10, temperature=0.0)[0])
        with torch.no_grad():  # the logits of the padded row's real tokens equal those of the prompt alone
            padded_logits, _ = model(batch, key_padding_mask=kpm)
            torch.testing.assert_close(padded_logits[1, 7:], model(short)[0][0], rtol=0, atol=1e-10)


def _first_new_token(tokens: list[int]) -> int:
    """The first step p >= 1 whose token did not occur before (so that EOS := tokens[p] first appears at p)."""
    return next(i for i in range(1, len(tokens)) if tokens[i] not in tokens[:i])


def test_eos_stops_generation(make_dat_lm, make_transformer_lm):
    model = _lm(make_dat_lm, make_transformer_lm, "dat")
    prompt = torch.randint(0, model.vocab_size, (2, 19))
    g = lambda: torch.Generator().manual_seed(11)  # noqa: E731  (sampling: an untrained model's greedy path repeats)
    free = generate(model, prompt, 8, generator=g())[0, 19:].tolist()
    p = _first_new_token(free)
    eos = free[p]
    out = generate(model, prompt, 8, eos_token_id=eos, generator=g())
    row0 = out[0, 19:]
    assert row0[:p].tolist() == free[:p] and row0[p] == eos and (row0[p + 1:] == eos).all()
    first_eos = [(r == eos).nonzero()[0, 0].item() if (r == eos).any() else None for r in out[:, 19:]]
    if all(i is not None for i in first_eos):  # every row stopped: generation ended at the last row's EOS
        assert out.shape[1] == 19 + max(first_eos) + 1
    else:
        assert out.shape[1] == 19 + 8
    single_free = generate(model, prompt[:1], 8, generator=g())[0, 19:].tolist()
    q = _first_new_token(single_free)
    single = generate(model, prompt[:1], 8, eos_token_id=single_free[q], generator=g())
    assert single.shape == (1, 19 + q + 1)  # a single row stops right after its EOS
    assert single[0, 19:].tolist() == single_free[:q + 1]


def test_sampling_reproducible_and_cache_independent(make_dat_lm, make_transformer_lm):
    model = _lm(make_dat_lm, make_transformer_lm, "dat")
    prompt = torch.randint(0, model.vocab_size, (2, 18))
    kwargs = dict(temperature=1.3, top_k=10, top_p=0.9)
    a = generate(model, prompt, 12, generator=torch.Generator().manual_seed(5), **kwargs)
    b = generate(model, prompt, 12, generator=torch.Generator().manual_seed(5), **kwargs)
    c = generate(model, prompt, 12, generator=torch.Generator().manual_seed(5), use_cache=False, **kwargs)
    d = generate(model, prompt, 12, generator=torch.Generator().manual_seed(6), **kwargs)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, d)
    greedy = generate(model, prompt, 12, temperature=0.0)
    assert torch.equal(generate(model, prompt, 12, top_k=1, generator=torch.Generator().manual_seed(1)), greedy)
    assert torch.equal(generate(model, prompt, 12, top_p=1e-9, generator=torch.Generator().manual_seed(1)), greedy)


def test_sample_next_token_restrictions():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]] * 2000)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(sample_next_token(logits, 0.0), torch.zeros(2000, dtype=torch.long))
    top2 = sample_next_token(logits, 1.0, top_k=2, generator=g)
    assert set(top2.tolist()) == {0, 1}
    # top_p=0.8: the smallest prefix of the sorted probabilities reaching 0.8 is tokens {0, 1} (0.61 + 0.22)
    probs = torch.softmax(logits[0], -1)
    assert probs[0] < 0.8 <= probs[0] + probs[1]
    nucleus = sample_next_token(logits, 1.0, top_p=0.8, generator=g)
    assert set(nucleus.tolist()) == {0, 1}
    freq0 = (nucleus == 0).float().mean()
    assert abs(freq0 - probs[0] / (probs[0] + probs[1])) < 0.05
    cold = sample_next_token(logits, 0.05, generator=g)  # a low temperature is nearly greedy
    assert (cold == 0).all()
    for bad in (dict(temperature=-1.0), dict(top_k=0), dict(top_k=2.5), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            sample_next_token(logits, **{"temperature": 1.0, **bad})


def test_stream_yields_the_generated_tokens(make_dat_lm, make_transformer_lm):
    model = _lm(make_dat_lm, make_transformer_lm, "dat", "positional_symbols")
    prompt = torch.randint(0, model.vocab_size, (2, 19))
    streamed = list(stream_generate(model, prompt, 9, temperature=0.0))
    assert len(streamed) == 9 and all(t.shape == (2,) for t in streamed)
    assert torch.equal(torch.stack(streamed, 1), generate(model, prompt, 9, temperature=0.0)[:, 19:])
    assert list(stream_generate(model, prompt, 0)) == []
    assert torch.equal(generate(model, prompt, 0), prompt)


def test_generate_input_errors(make_dat_lm, make_transformer_lm):
    model = _lm(make_dat_lm, make_transformer_lm, "dat")
    with pytest.raises(ValueError, match="idx"):
        generate(model, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="idx"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, torch.zeros(1, 2, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="max_len"):
        model.init_kv_cache(1, BLOCK + 1)
    with pytest.raises(ValueError, match="input_pos"):
        model(torch.zeros(1, 2, dtype=torch.long), kv_cache=model.init_kv_cache(1, 4))


def test_decoding_steps_never_reallocate_the_cache(make_dat_lm, make_transformer_lm):
    model = _lm(make_dat_lm, make_transformer_lm, "dat")
    cache = model.init_kv_cache(2, 24)
    pointers = [buf.data_ptr() for buf in cache.buffers()]
    x = torch.randint(0, model.vocab_size, (2, 20))
    with torch.no_grad():
        model(x[:, :17], kv_cache=cache, input_pos=torch.arange(17))
        for i in range(17, 20):
            model(x[:, i:i + 1], kv_cache=cache, input_pos=torch.tensor([i]))
    assert [buf.data_ptr() for buf in cache.buffers()] == pointers
    ra_cache = cache[0]["ra"]
    assert set(ra_cache.names) == {"k_attn", "k_rel", "v"}
    assert ra_cache.buffer("k_attn")[:, 20:].abs().sum() == 0  # positions never written stay empty
    assert ra_cache.buffer("k_attn")[:, :20].abs().sum() > 0


def test_kv_cache_layout_and_errors():
    cache = KVCache({"k": (2, 3), "k_rel": (4, 5), "scalar": (6,)}, batch_size=2, max_len=7)
    assert cache.k.shape == (2, 2, 7, 3)  # head-major storage
    assert cache.k_rel.shape == (2, 7, 4, 5) and cache.scalar.shape == (2, 7, 6)
    for name, shape in (("k", (2, 3)), ("k_rel", (4, 5)), ("scalar", (6,))):
        value = torch.randn(2, 2, *shape)
        full = cache.update(name, torch.tensor([3, 5]), value)
        assert full.shape == (2, 7, *shape)
        torch.testing.assert_close(full[:, [3, 5]], value)
        torch.testing.assert_close(cache.buffer(name)[:, [3, 5]], value)
        assert full[:, [0, 1, 2, 4, 6]].abs().sum() == 0
    with pytest.raises(ValueError, match="'k'"):
        cache.update("k", torch.tensor([0]), torch.randn(2, 1, 3, 3))
    cache.reset()
    assert all(buf.abs().sum() == 0 for buf in cache.buffers())
    static = StaticCache()
    assert static.get("k") is None
    static.set("k", torch.ones(1))
    assert static.get("k") is not None
    static.reset()
    assert static.get("k") is None


# ------------------------------------------------------------------------------------------------- seq2seq
SEQ2SEQ = [("dat", r) for r in ("symbolic_attention", "positional_symbols", "position_relative", "rel_sym_attn")]
SEQ2SEQ += [("transformer", None)]


@pytest.mark.parametrize("family,retriever", SEQ2SEQ)
def test_seq2seq_generate_cached_equals_uncached(make_seq2seq_dat, make_seq2seq_transformer, family, retriever,
                                                 monkeypatch):
    model = (make_seq2seq_dat(symbol_retrieval=retriever) if family == "dat" else make_seq2seq_transformer())
    model = model.to(torch.float64).eval()
    src = torch.randint(0, 23, (3, 11))
    src_pad = torch.ones(3, 11, dtype=torch.bool)
    src_pad[2, 8:] = False
    encodes = []
    original_encode = model.encode
    monkeypatch.setattr(model, "encode", lambda *a, **k: encodes.append(1) or original_encode(*a, **k))
    cached = model.generate(src, 12, bos_token_id=1, src_padding_mask=src_pad)
    assert len(encodes) == 1  # the encoder runs once
    uncached = model.generate(src, 12, bos_token_id=1, src_padding_mask=src_pad, use_cache=False)
    assert cached.shape == (3, 13) and torch.equal(cached[:, 0], torch.ones(3, dtype=torch.long))
    assert torch.equal(cached, uncached)
    if retriever == "rel_sym_attn":  # its symbols mix neighbouring states: no cache, the decoder is re-run
        assert not model.supports_kv_cache
    else:
        assert model.supports_kv_cache


@pytest.mark.parametrize("family,retriever", [("dat", "symbolic_attention"), ("dat", "position_relative"),
                                              ("transformer", None)])
def test_seq2seq_cached_decoder_logits(make_seq2seq_dat, make_seq2seq_transformer, family, retriever):
    """The cached decoder (cross-attention keys/values computed once) gives the full decoder's logits."""
    model = (make_seq2seq_dat(symbol_retrieval=retriever) if family == "dat" else make_seq2seq_transformer())
    model = model.to(torch.float64).eval()
    src, tgt = torch.randint(0, 23, (2, 9)), torch.randint(0, 19, (2, 14))
    with torch.no_grad():
        context = model.encode(src)
        full = model.decode(tgt, context)
        cache = torch.nn.ModuleList(blk.init_kv_cache(2, 14, dtype=torch.float64)
                                    for blk in model.layers.decoder_blocks)
        steps = [model.decode(tgt[:, i:i + 1], context, kv_cache=cache, input_pos=torch.tensor([i]))
                 for i in range(14)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-10)


def test_seq2seq_rel_sym_attn_never_builds_a_cache(make_seq2seq_dat, monkeypatch):
    model = make_seq2seq_dat(symbol_retrieval="rel_sym_attn").eval()
    for block in model.layers.decoder_blocks:
        monkeypatch.setattr(block, "init_kv_cache", lambda *a, **k: pytest.fail("a cache was built"))
    out = model.generate(torch.randint(0, 23, (2, 7)), 5, bos_token_id=0, eos_token_id=None)
    assert out.shape == (2, 6)


def test_seq2seq_sampling_and_eos(make_seq2seq_dat):
    model = make_seq2seq_dat().to(torch.float64).eval()
    src = torch.randint(0, 23, (2, 9))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    free = model.generate(src[:1], 10, bos_token_id=1, temperature=1.0, generator=g())[0, 1:].tolist()
    p = _first_new_token(free)
    out = model.generate(src[:1], 10, bos_token_id=1, eos_token_id=free[p], temperature=1.0, generator=g())
    assert out.shape == (1, p + 2) and out[0, 1:].tolist() == free[:p + 1]
    a = model.generate(src, 10, bos_token_id=1, temperature=1.0, top_k=5, generator=g())
    b = model.generate(src, 10, bos_token_id=1, temperature=1.0, top_k=5, generator=g(), use_cache=False)
    assert torch.equal(a, b)


ABLATIONS = [(ra_type, retriever, gqa) for ra_type in ("rca", "disrca") for retriever in RETRIEVERS
             for gqa in (False, True)] + [("rca", "symbolic_attention", False, "sigmoid")]


@pytest.mark.parametrize("case", ABLATIONS, ids=str)
@pytest.mark.parametrize("prefill", [3, 20])
def test_ablation_lms_cached_logits_equal_full_forward(make_dat_lm, case, prefill):
    """RCA and DisRCA keep a KV cache too (keys, relation keys, symbol values): every DAT variant decodes
    incrementally, with the logits of the full forward."""
    ra_type, retriever, gqa, *act = case
    ra_kwargs = dict(use_relative_positional_symbols=retriever == "position_relative")
    if gqa:
        ra_kwargs["n_kv_heads"] = 1
    if act:
        ra_kwargs["activation"] = act[0]
    model = make_dat_lm(ra_type=ra_type, symbol_retrieval=retriever, ra_kwargs=ra_kwargs,
                        max_block_size=BLOCK).double().eval()
    assert model.supports_kv_cache
    x = torch.randint(0, model.vocab_size, (3, 30))
    with torch.no_grad():
        full, _ = model(x)
        incremental = _incremental_logits(model, x, prefill, max_len=40)
    torch.testing.assert_close(incremental, full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("ra_type", ["rca", "disrca"])
def test_ablation_lms_generate_with_the_cache(make_dat_lm, ra_type):
    model = make_dat_lm(ra_type=ra_type).eval()
    prompt = torch.randint(0, model.vocab_size, (2, 9))
    out = model.generate(prompt, 6, temperature=0.0)
    assert out.shape == (2, 15) and torch.equal(out, model.generate(prompt, 6, temperature=0.0, use_cache=False))
    cache = model.layers.blocks[0].init_kv_cache(2, 8)
    expected = {"rca": {"k", "v"}, "disrca": {"k_attn", "k_rel", "v"}}[ra_type]
    assert set(cache["ra"].names) == expected
