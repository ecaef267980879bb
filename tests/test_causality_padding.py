"""Causality and key-padding masks, for every causal model / layer and every attention layer / model.

* Causality: changing the tokens at positions ≥ t leaves every output at positions < t unchanged.
* Key padding (bool ``(B, L)``, True = real token): changing the *content* of padded positions leaves the outputs at
  real positions unchanged, and a right-padded row of a batch equals the same sequence run alone.

Models and layers run in float64, so "unchanged" is checked to ~1e-12.
"""

from __future__ import annotations

import functools

import pytest
import torch

from dual_attention.attention import Attention
from dual_attention.attention_utils import precompute_freqs_cis
from dual_attention.dual_attention import DualAttention
from dual_attention.dual_attn_blocks import DualAttnDecoderBlock, DualAttnEncoderBlock
from dual_attention.relational_attention import (
    DisentangledRelationalCrossAttention,
    RelationalAttention,
    RelationalCrossAttention,
)
from dual_attention.symbol_retrieval import PositionRelativeSymbolRetriever, SymbolicAttention
from dual_attention.transformer_blocks import DecoderBlock, EncoderBlock

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-11)
D = 16
T = 9
CUT = 5  # positions >= CUT are "future" (causality) or padding


def _perturb_tokens(x: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """A copy of token ids ``x`` with new (different) ids where ``positions`` (bool, same shape) is True."""
    new = (x + 1 + torch.randint(0, vocab - 1, x.shape)) % vocab
    return torch.where(positions, new, x)


def _perturb_vectors(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return torch.where(positions[..., None], torch.randn_like(x) * 3, x)


# ================================================================================================ causality
LM_VARIANTS = {
    "dat_symbolic": dict(),
    "dat_positional": dict(symbol_retrieval="positional_symbols", pos_enc_type="pos_emb"),
    "dat_position_relative": dict(symbol_retrieval="position_relative"),
    "dat_unshared_postnorm": dict(symbol_retriever_config=dict(shared_symbol_retriever=False), norm_first=False,
                                  norm_type="rmsnorm"),
    "dat_rca": dict(ra_type="rca"),
    "dat_disrca": dict(ra_type="disrca", ra_kwargs=dict(n_kv_heads=1)),
    "dat_gqa_shared_params": dict(share_attn_params=True, sa_kwargs=dict(n_kv_heads=1),
                                  ra_kwargs=dict(n_kv_heads=1, n_relations=4, rel_activation="tanh")),
    "dat_softmax_rel": dict(ra_kwargs=dict(rel_activation="softmax")),
}


def _lm(name, make_dat_lm, make_transformer_lm):
    if name == "transformer":
        return make_transformer_lm()
    if name == "transformer_manual_rope":
        return make_transformer_lm(use_flash_attention=False, pos_enc_type="RoPE")
    return make_dat_lm(**LM_VARIANTS[name])


ALL_LMS = [*LM_VARIANTS, "transformer", "transformer_manual_rope"]


@pytest.mark.parametrize("name", ALL_LMS)
def test_lm_is_causal(name, make_dat_lm, make_transformer_lm):
    model = _lm(name, make_dat_lm, make_transformer_lm).to(DT).eval()
    x = torch.randint(0, model.vocab_size, (2, T))
    future = torch.arange(T)[None, :].expand(2, T) >= CUT
    x2 = _perturb_tokens(x, future, model.vocab_size)
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(x2)
    torch.testing.assert_close(a[:, :CUT], b[:, :CUT], **TOL)
    assert not torch.allclose(a[:, CUT:], b[:, CUT:])  # the change is visible where it may be


@pytest.mark.parametrize("family,retrieval", [
    ("dat", "symbolic_attention"), ("dat", "positional_symbols"), ("dat", "position_relative"),
    ("dat", "rel_sym_attn"), ("dat", "rel_sym_attn_noncausal"), ("transformer", None)])
def test_seq2seq_decoder_is_causal(family, retrieval, make_seq2seq_dat, make_seq2seq_transformer):
    if family == "transformer":
        model = make_seq2seq_transformer()
    elif retrieval == "rel_sym_attn_noncausal":  # the shared retriever looks ahead: the decoder must not
        model = make_seq2seq_dat(symbol_retrieval="rel_sym_attn", symbol_retrieval_kwargs=dict(
            d_model=D, rel_n_heads=2, symbolic_attn_n_heads=2, n_symbols=8, nbhd_delta=2, causal_nbhd=False))
    else:
        model = make_seq2seq_dat(symbol_retrieval=retrieval)
    model = model.to(DT).eval()
    src = torch.randint(0, 23, (2, 7))
    y = torch.randint(0, 19, (2, T))
    future = torch.arange(T)[None, :].expand(2, T) >= CUT
    y2 = _perturb_tokens(y, future, 19)
    with torch.no_grad():
        a, _ = model(src, y, targets=y)
        b, _ = model(src, y2, targets=y2)
        last, _ = model(src, y[:, :CUT])  # without targets: the last position's logits only
    torch.testing.assert_close(a[:, :CUT], b[:, :CUT], **TOL)
    assert not torch.allclose(a[:, CUT:], b[:, CUT:])
    torch.testing.assert_close(last[:, 0], a[:, CUT - 1], **TOL)


@functools.cache
def _causal_layers():
    """(name, layer, call(layer, x) -> output) for every layer with a causal mode (built once, seeded)."""
    torch.manual_seed(1)
    cos, sin = precompute_freqs_cis(D // 2, T)
    cos, sin = cos.to(DT), sin.to(DT)
    s = torch.randn(1, T, D, dtype=DT).expand(2, T, D)
    rel = PositionRelativeSymbolRetriever(D, 3).to(DT).retrieve(s)
    symbolic = SymbolicAttention(D, 2, 4).to(DT)
    layers = [("attention", Attention(D, 2, 0.0),
               lambda m, x: m(x, x, x, freqs_cos=cos, freqs_sin=sin, is_causal=True)[0]),
              ("attention_weights", Attention(D, 2, 0.0, n_kv_heads=1),
               lambda m, x: m(x, x, x, is_causal=True, need_weights=True)[0])]
    for impl in ("plain", "blocked", "fused", "auto"):
        ra = RelationalAttention(D, 2, n_relations=4)
        ra.implementation = impl
        layers.append((f"ra_{impl}", ra, lambda m, x: m(x, x, freqs_cos=cos, freqs_sin=sin, is_causal=True,
                                                        need_weights=False)[0]))
    for impl in ("plain", "blocked", "auto"):  # the softmax relations normalise over the senders j: causally
        ra = RelationalAttention(D, 2, n_relations=4, rel_activation="softmax")
        ra.implementation = impl
        layers.append((f"ra_softmax_rel_{impl}", ra, lambda m, x: m(x, x, is_causal=True,
                                                                    need_weights=m.implementation == "plain")[0]))
    ra_rel = RelationalAttention(D, 2, use_relative_positional_symbols=True, rel_activation="tanh")
    layers += [
        ("ra_relative", ra_rel, lambda m, x: m(x, rel, is_causal=True)[0]),
        ("ra_relative_softmax_rel", RelationalAttention(D, 2, use_relative_positional_symbols=True,
                                                        rel_activation="softmax"),
         lambda m, x: m(x, rel, is_causal=True)[0]),
        ("disrca_softmax_rel", DisentangledRelationalCrossAttention(D, 2, 0.0, rel_activation="softmax"),
         lambda m, x: m(x, s, is_causal=True)[0]),
        ("rca", RelationalCrossAttention(D, 2, 0.0), lambda m, x: m(x, s, is_causal=True, need_weights=False)[0]),
        ("rca_sigmoid", RelationalCrossAttention(D, 2, 0.0, activation="sigmoid"),
         lambda m, x: m(x, s, is_causal=True)[0]),
        ("disrca", DisentangledRelationalCrossAttention(D, 2, 0.0, n_kv_heads=1),
         lambda m, x: m(x, s, is_causal=True, need_weights=False)[0]),
        ("dual_attention", DualAttention(D, 2, 2, 0.0), lambda m, x: m(x, x, is_causal=True)[0]),
        ("encoder_block", EncoderBlock(D, 2, 32, 0.0, "relu", True, causal=True), lambda m, x: m(x)),
        ("dual_encoder_block", DualAttnEncoderBlock(D, 2, 2, 32, "swiglu", 0.0, False, causal=True),
         lambda m, x: m(x, symbolic(x))),
        ("decoder_block", DecoderBlock(D, 2, 4, 32, 0.0, "gelu", True), lambda m, x: m(x, s[:, :4])),
        ("dual_decoder_block", DualAttnDecoderBlock(D, 2, 2, 2, 32, "gelu", 0.0, True),
         lambda m, x: m(x, s[:, :4], x)),
    ]
    return layers


@pytest.mark.parametrize("index", range(len(_causal_layers())), ids=[n for n, *_ in _causal_layers()])
def test_causal_layers(index):
    name, layer, call = _causal_layers()[index]
    layer = layer.to(DT).eval()
    x = torch.randn(2, T, D, dtype=DT)
    future = torch.arange(T)[None, :].expand(2, T) >= CUT
    x2 = _perturb_vectors(x, future)
    with torch.no_grad():
        a, b = call(layer, x), call(layer, x2)
    torch.testing.assert_close(a[:, :CUT], b[:, :CUT], **TOL)
    assert not torch.allclose(a[:, CUT:], b[:, CUT:])


def test_decoder_blocks_default_to_causal():
    """The published DecoderBlock defaulted to causal=False (§18.4)."""
    assert DecoderBlock(D, 2, 2, 32, 0.0, "relu", True).causal is True
    assert DualAttnDecoderBlock(D, 2, 2, 2, 32, "relu", 0.0, True).causal is True


# ================================================================================================ key padding
def _padding_mask(lengths: list[int], n: int, left: bool = False) -> torch.Tensor:
    mask = torch.zeros(len(lengths), n, dtype=torch.bool)
    for i, length in enumerate(lengths):
        if left:
            mask[i, n - length:] = True
        else:
            mask[i, :length] = True
    return mask


@functools.cache
def _padding_layers():
    """(name, layer, call(layer, x, symbols, kpm) -> output) for every attention layer, non-causal (built once)."""
    torch.manual_seed(2)
    layers = [
        ("attention_sdpa", Attention(D, 2, 0.0, n_kv_heads=1), lambda m, x, s, k: m(x, x, x, key_padding_mask=k)[0]),
        ("attention_weights", Attention(D, 2, 0.0, key_dim=6),
         lambda m, x, s, k: m(x, x, x, key_padding_mask=k, need_weights=True)[0]),
    ]
    for impl in ("plain", "blocked", "fused"):
        ra = RelationalAttention(D, 2, n_relations=4, n_kv_heads=1)
        ra.implementation = impl
        layers.append((f"ra_{impl}", ra, lambda m, x, s, k: m(x, s, key_padding_mask=k, need_weights=False)[0]))
    ra_rel = RelationalAttention(D, 2, use_relative_positional_symbols=True, symmetric_rels=True)
    retr = PositionRelativeSymbolRetriever(D, 3).to(DT)
    layers += [
        ("ra_softmax_rel", RelationalAttention(D, 2, rel_activation="softmax"),
         lambda m, x, s, k: m(x, s, key_padding_mask=k)[0]),
        ("disrca_softmax_rel", DisentangledRelationalCrossAttention(D, 2, 0.0, rel_activation="softmax"),
         lambda m, x, s, k: m(x, s, key_padding_mask=k, need_weights=False)[0]),
        ("ra_relative", ra_rel, lambda m, x, s, k: m(x, retr.retrieve(x), key_padding_mask=k)[0]),
        ("rca", RelationalCrossAttention(D, 2, 0.0), lambda m, x, s, k: m(x, s, key_padding_mask=k,
                                                                          need_weights=False)[0]),
        ("rca_tanh", RelationalCrossAttention(D, 2, 0.0, activation="tanh"),
         lambda m, x, s, k: m(x, s, key_padding_mask=k)[0]),
        ("disrca", DisentangledRelationalCrossAttention(D, 2, 0.0),
         lambda m, x, s, k: m(x, s, key_padding_mask=k, need_weights=False)[0]),
        ("dual_attention", DualAttention(D, 2, 2, 0.0), lambda m, x, s, k: m(x, s, key_padding_mask=k)[0]),
        ("encoder_block", EncoderBlock(D, 2, 32, 0.0, "relu", False), lambda m, x, s, k: m(x, key_padding_mask=k)),
        ("dual_encoder_block", DualAttnEncoderBlock(D, 2, 2, 32, "swiglu", 0.0, True),
         lambda m, x, s, k: m(x, s, key_padding_mask=k)),
        # decoder blocks: x is the context here (its padding goes to cross-attention), the target is fixed
        ("decoder_block_context", DecoderBlock(D, 2, 4, 32, 0.0, "gelu", True, causal=False),
         lambda m, x, s, k: m(s, x, context_padding_mask=k)),
        ("dual_decoder_block_context", DualAttnDecoderBlock(D, 2, 2, 2, 32, "gelu", 0.0, True, causal=False),
         lambda m, x, s, k: m(s, x, s, context_padding_mask=k)),
        ("decoder_block_self", DecoderBlock(D, 2, 4, 32, 0.0, "gelu", True, causal=False),
         lambda m, x, s, k: m(x, s[:1].expand_as(s), key_padding_mask=k)),
        ("dual_decoder_block_self", DualAttnDecoderBlock(D, 2, 2, 2, 32, "gelu", 0.0, False, causal=False),
         lambda m, x, s, k: m(x, s[:1].expand_as(s), s, key_padding_mask=k)),
    ]
    return layers


_PADDING_IDS = [n for n, *_ in _padding_layers()]


@pytest.mark.parametrize("index", range(len(_PADDING_IDS)), ids=_PADDING_IDS)
def test_padding_in_layers(index):
    name, layer, call = _padding_layers()[index]
    layer = layer.to(DT).eval()
    lengths = [T, CUT]
    kpm = _padding_mask(lengths, T)
    x, s = torch.randn(2, T, D, dtype=DT), torch.randn(2, T, D, dtype=DT)
    with torch.no_grad():
        a = call(layer, x, s, kpm)
        b = call(layer, _perturb_vectors(x, ~kpm), _perturb_vectors(s, ~kpm) if "decoder" not in name else s, kpm)
        alone = call(layer, x[1:, :CUT], s[1:, :CUT], None) if "decoder" not in name else None
    real = kpm[..., None].expand_as(a)
    torch.testing.assert_close(a[real], b[real], **TOL)  # padded content does not reach real positions
    if alone is not None:
        torch.testing.assert_close(a[1, :CUT], alone[0], **TOL)  # a right-padded row = the sequence alone
    # without the mask the padded content does matter (the test can fail)
    with torch.no_grad():
        c = call(layer, _perturb_vectors(x, ~kpm), s, None)
    assert not torch.allclose(a[1, :CUT], c[1, :CUT])


@pytest.mark.parametrize("name", ALL_LMS)
def test_padding_in_lms(name, make_dat_lm, make_transformer_lm):
    model = _lm(name, make_dat_lm, make_transformer_lm).to(DT).eval()
    v = model.vocab_size
    x = torch.randint(0, v, (2, T))
    # left padding: the padded tokens precede the real ones, so without the mask they would be seen
    kpm = _padding_mask([T, CUT], T, left=True)
    with torch.no_grad():
        a, _ = model(x, key_padding_mask=kpm)
        b, _ = model(_perturb_tokens(x, ~kpm, v), key_padding_mask=kpm)
        c, _ = model(_perturb_tokens(x, ~kpm, v))
    torch.testing.assert_close(a[kpm], b[kpm], **TOL)
    assert not torch.allclose(a[1, T - CUT:], c[1, T - CUT:])
    # right padding: the padded row equals the sequence alone
    kpm = _padding_mask([T, CUT], T)
    with torch.no_grad():
        a, _ = model(x, key_padding_mask=kpm)
        alone, _ = model(x[1:, :CUT])
    torch.testing.assert_close(a[1, :CUT], alone[0], **TOL)


@pytest.mark.parametrize("family,retrieval", [
    ("dat", "symbolic_attention"), ("dat", "positional_symbols"), ("dat", "position_relative"),
    ("dat", "rel_sym_attn"), ("dat", "rel_sym_attn_noncausal"), ("transformer", None)])
def test_padding_in_seq2seq(family, retrieval, make_seq2seq_dat, make_seq2seq_transformer):
    if family == "transformer":
        model = make_seq2seq_transformer()
    elif retrieval == "rel_sym_attn_noncausal":
        model = make_seq2seq_dat(symbol_retrieval="rel_sym_attn", symbol_retrieval_kwargs=dict(
            d_model=D, rel_n_heads=2, symbolic_attn_n_heads=2, n_symbols=8, nbhd_delta=2, causal_nbhd=False,
            include_self=True))
    else:
        model = make_seq2seq_dat(symbol_retrieval=retrieval)
    model = model.to(DT).eval()
    n_src, n_tgt = 8, T
    src, y = torch.randint(0, 23, (2, n_src)), torch.randint(0, 19, (2, n_tgt))
    src_kpm = _padding_mask([n_src, 5], n_src)
    tgt_kpm = _padding_mask([n_tgt, CUT], n_tgt, left=True)
    with torch.no_grad():
        a, _ = model(src, y, y, src_padding_mask=src_kpm, tgt_padding_mask=tgt_kpm)
        b, _ = model(_perturb_tokens(src, ~src_kpm, 23), _perturb_tokens(y, ~tgt_kpm, 19), y,
                     src_padding_mask=src_kpm, tgt_padding_mask=tgt_kpm)
        # source padding only, right-padded source row = that source alone
        p, _ = model(src, y, y, src_padding_mask=src_kpm)
        alone, _ = model(src[1:, :5], y[1:], y[1:])
        unmasked, _ = model(_perturb_tokens(src, ~src_kpm, 23), y, y)
    torch.testing.assert_close(a[tgt_kpm], b[tgt_kpm], **TOL)
    torch.testing.assert_close(p[1], alone[0], **TOL)
    assert not torch.allclose(unmasked[1], p[1])
    # a right-padded target row equals that target alone (its real positions)
    kpm = _padding_mask([n_tgt, CUT], n_tgt)
    with torch.no_grad():
        r, _ = model(src, y, y, tgt_padding_mask=kpm)
        alone_t, _ = model(src[1:], y[1:, :CUT], y[1:, :CUT])
    torch.testing.assert_close(r[1, :CUT], alone_t[0], **TOL)


def test_fully_padded_query_rows_stay_finite():
    """A query whose keys are all masked (e.g. a left-padding row under a causal mask) gives finite outputs."""
    layer = DualAttention(D, 2, 2, 0.0).to(DT)
    x = torch.randn(1, 6, D, dtype=DT, requires_grad=True)
    kpm = _padding_mask([3], 6, left=True)
    out, _, _ = layer(x, x, is_causal=True, key_padding_mask=kpm)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
