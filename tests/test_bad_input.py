"""Bad input: every invalid configuration of API §16–17 (including those the published package left unvalidated)
raises ``ValueError``/``TypeError`` at construction, and malformed inputs are rejected the same way at forward.
Each message must name the offending argument (and, where it is a scalar, its value). Nothing relies on ``assert``:
the package holds no ``assert`` statement and the checks still fire under ``python -O``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import dual_attention
from dual_attention.attention import Attention
from dual_attention.dual_attention import DualAttention
from dual_attention.dual_attn_blocks import DualAttnDecoderBlock, DualAttnEncoderBlock
from dual_attention.language_models import DualAttnTransformerLM, TransformerLM
from dual_attention.model_utils import get_activation_function
from dual_attention.positional_encoding import SinusoidalPositionalEncoding
from dual_attention.relational_attention import (
    DisentangledRelationalCrossAttention,
    RelationalAttention,
    RelationalCrossAttention,
)
from dual_attention.seq2seq_models import Seq2SeqDualAttnTransformer, Seq2SeqTransformer
from dual_attention.symbol_retrieval import (
    PositionalSymbolRetriever,
    PositionRelativeSymbolRetriever,
    RelationalSymbolicAttention,
    SymbolicAttention,
)
from dual_attention.transformer_blocks import DecoderBlock, EncoderBlock, FeedForwardBlock, RMSNorm, create_norm
from dual_attention.vision_models import VisionDualAttnTransformer, VisionTransformer

ERRORS = (ValueError, TypeError)

LM = dict(vocab_size=37, d_model=16, n_layers=2, n_heads_sa=2, n_heads_ra=2, dff=32, dropout_rate=0.0,
          activation="swiglu", norm_first=True, max_block_size=24,
          symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=8))
TLM = dict(vocab_size=37, d_model=16, n_layers=2, n_heads=4, dff=32, dropout_rate=0.0, activation="gelu",
           norm_first=True, max_block_size=24)
VIT = dict(image_shape=(3, 8, 8), patch_size=(4, 4), num_classes=5, d_model=16, n_layers=1, n_heads=4, dff=32,
           dropout_rate=0.0, activation="gelu", norm_first=True)
VIDAT = dict(image_shape=(3, 8, 8), patch_size=(4, 4), num_classes=5, d_model=16, n_layers=1, n_heads_sa=2,
             n_heads_ra=2, dff=32, dropout_rate=0.0, activation="gelu", norm_first=True,
             symbol_retrieval="symbolic_attention", symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=4))
ENC = dict(n_heads=2, dff=16, dropout_rate=0.0, activation="relu", norm_first=True)
DEC = dict(n_heads=2, n_heads_cross=2, dff=16, dropout_rate=0.0, activation="relu", norm_first=True)
S2S = dict(input_spec=dict(type="token", vocab_size=11), output_spec=dict(type="token", vocab_size=13), d_model=16,
           out_dim=13, n_layers_enc=1, n_layers_dec=1, encoder_kwargs=ENC, decoder_kwargs=DEC, in_block_size=8,
           out_block_size=9)
DENC = dict(n_heads_sa=1, n_heads_ra=1, dff=16, dropout_rate=0.0, activation="relu", norm_first=True)
DDEC = dict(n_heads_sa=1, n_heads_ra=1, n_heads_cross=2, dff=16, dropout_rate=0.0, activation="relu",
            norm_first=True)
DS2S = dict(S2S, symbol_retrieval="symbolic_attention", symbol_retrieval_kwargs=dict(d_model=16, n_heads=2,
                                                                                     n_symbols=4),
            encoder_kwargs=DENC, decoder_kwargs=DDEC)
REL = dict(use_relative_positional_symbols=True)


def _with(base: dict, **changes) -> dict:
    return {**base, **changes}


# (id, factory, substrings the message must contain: the argument name first, then e.g. its value)
CONSTRUCTION_CASES = [
    # ---- unknown string values (§16)
    ("activation_fn", lambda: get_activation_function("swish"), ["swish", "relu"]),
    ("ff_activation", lambda: FeedForwardBlock(16, 32, activation="swish"), ["activation", "swish", "swiglu"]),
    ("lm_activation", lambda: DualAttnTransformerLM(**_with(LM, activation="Relu")), ["activation", "Relu"]),
    ("ra_rel_activation", lambda: RelationalAttention(16, 2, rel_activation="softplus"), ["rel_activation"]),
    ("rca_activation", lambda: RelationalCrossAttention(16, 2, 0.0, activation="softplus"), ["activation"]),
    ("disrca_rel_activation", lambda: DisentangledRelationalCrossAttention(16, 2, 0.0, rel_activation="x"),
     ["rel_activation"]),
    ("norm_type", lambda: create_norm(16, "batchnorm"), ["norm_type", "batchnorm", "rmsnorm"]),
    ("lm_norm_type", lambda: DualAttnTransformerLM(**_with(LM, norm_type="LayerNorm")), ["norm_type", "LayerNorm"]),
    ("tlm_norm_type", lambda: TransformerLM(**_with(TLM, norm_type="ln")), ["norm_type", "ln"]),
    ("ra_type", lambda: DualAttention(16, 2, 2, 0.0, ra_type="relational"), ["ra_type", "relational", "rca"]),
    ("lm_ra_type", lambda: DualAttnTransformerLM(**_with(LM, ra_type="ra")), ["ra_type", "'ra'"]),
    ("lm_symbol_retrieval", lambda: DualAttnTransformerLM(**_with(LM, symbol_retrieval="rel_sym_attn")),
     ["symbol_retrieval", "rel_sym_attn", "position_relative"]),
    ("vision_symbol_retrieval", lambda: VisionDualAttnTransformer(**_with(VIDAT, symbol_retrieval="pos_relative")),
     ["symbol_retrieval", "pos_relative"]),
    ("seq2seq_symbol_retrieval", lambda: Seq2SeqDualAttnTransformer(**_with(DS2S, symbol_retrieval="none")),
     ["symbol_retrieval", "none"]),
    ("pos_enc_type", lambda: DualAttnTransformerLM(**_with(LM, pos_enc_type="rope")), ["pos_enc_type", "rope"]),
    ("tlm_pos_enc_type", lambda: TransformerLM(**_with(TLM, pos_enc_type="sinusoidal")), ["pos_enc_type"]),
    ("vision_pool", lambda: VisionTransformer(**_with(VIT, pool="max")), ["pool", "max", "cls"]),
    ("vidat_pool", lambda: VisionDualAttnTransformer(**_with(VIDAT, pool="token")), ["pool", "token"]),
    ("seq2seq_input_spec", lambda: Seq2SeqTransformer(**_with(S2S, input_spec=dict(type="image"))),
     ["input_spec", "image", "token"]),
    ("seq2seq_output_spec", lambda: Seq2SeqTransformer(**_with(S2S, output_spec=dict(type="tokens", vocab_size=3))),
     ["output_spec", "tokens"]),
    ("seq2seq_spec_vocab", lambda: Seq2SeqTransformer(**_with(S2S, output_spec=dict(type="token"))),
     ["output_spec['vocab_size']"]),
    ("seq2seq_spec_dim", lambda: Seq2SeqTransformer(**_with(S2S, input_spec=dict(type="vector", dim=0))),
     ["input_spec['dim']", "0"]),
    ("symbol_retriever_config_key", lambda: DualAttnTransformerLM(**_with(LM, symbol_retriever_config=dict(
        shared=False))), ["symbol_retriever_config", "shared"]),
    # ---- heads (§17, asserts in the published package)
    ("zero_heads", lambda: DualAttention(16, 0, 0, 0.0), ["n_heads_sa", "n_heads_ra"]),
    ("lm_zero_heads", lambda: DualAttnTransformerLM(**_with(LM, n_heads_sa=0, n_heads_ra=0)), ["n_heads_sa"]),
    ("negative_heads", lambda: DualAttention(16, -1, 2, 0.0), ["n_heads_sa", "-1"]),
    ("share_attn_params_heads", lambda: DualAttention(16, 1, 3, 0.0, share_attn_params=True),
     ["n_heads_sa", "n_heads_ra"]),
    ("share_attn_params_rca", lambda: DualAttention(16, 2, 2, 0.0, share_attn_params=True, ra_type="rca"),
     ["share_attn_params", "rca"]),
    ("attention_d_model_heads", lambda: Attention(16, 3, 0.0), ["d_model", "16", "n_heads", "3"]),
    ("attention_kv_heads", lambda: Attention(16, 4, 0.0, n_kv_heads=3), ["n_kv_heads", "3"]),
    ("ra_d_model_heads", lambda: RelationalAttention(16, 5), ["d_model", "n_heads"]),
    ("ra_kv_heads", lambda: RelationalAttention(16, 4, n_kv_heads=3), ["n_kv_heads"]),
    ("ra_total_heads", lambda: RelationalAttention(18, 2, total_n_heads=4), ["total_n_heads", "4"]),
    ("ra_total_lt_heads", lambda: RelationalAttention(16, 4, total_n_heads=2), ["total_n_heads"]),
    ("ra_n_relations", lambda: RelationalAttention(64, 4, n_relations=3), ["n_relations", "3"]),
    ("ra_zero_relations", lambda: RelationalAttention(16, 2, n_relations=0), ["n_relations"]),
    ("rca_kv_heads", lambda: RelationalCrossAttention(16, 4, 0.0, n_kv_heads=3), ["n_kv_heads"]),
    ("disrca_heads", lambda: DisentangledRelationalCrossAttention(16, 3, 0.0), ["n_heads"]),
    ("dual_attention_heads", lambda: DualAttention(16, 2, 1, 0.0), ["d_model", "total_n_heads"]),
    ("lm_heads", lambda: DualAttnTransformerLM(**_with(LM, n_heads_sa=3)), ["d_model", "16"]),
    ("lm_kv_heads", lambda: DualAttnTransformerLM(**_with(LM, sa_kwargs=dict(n_kv_heads=3))), ["n_kv_heads"]),
    ("tlm_heads", lambda: TransformerLM(**_with(TLM, n_heads=3)), ["d_model", "3"]),
    ("decoder_cross_heads", lambda: DecoderBlock(16, 2, 3, 32, 0.0, "relu", True), ["n_heads", "3"]),
    ("vit_heads", lambda: VisionTransformer(**_with(VIT, n_heads=5)), ["n_heads", "5"]),
    # ---- previously unvalidated (§17): they failed late with RuntimeError/IndexError
    ("symbolic_attention_heads", lambda: SymbolicAttention(16, 3, 4), ["n_heads", "3"]),
    ("rel_sym_attn_heads", lambda: RelationalSymbolicAttention(16, 3, 2, 4, 2), ["rel_n_heads", "3"]),
    ("rel_sym_attn_sym_heads", lambda: RelationalSymbolicAttention(16, 2, 3, 4, 2), ["n_heads", "3"]),
    ("lm_symbol_dim", lambda: DualAttnTransformerLM(**_with(LM, symbol_retrieval_kwargs=dict(
        d_model=32, n_heads=2, n_symbols=8))), ["symbol_retrieval_kwargs", "d_model", "32"]),
    ("lm_positional_symbol_dim", lambda: DualAttnTransformerLM(**_with(
        LM, symbol_retrieval="positional_symbols", symbol_retrieval_kwargs=dict(symbol_dim=8, max_length=24))),
     ["symbol_dim", "8"]),
    ("lm_relative_symbol_dim", lambda: DualAttnTransformerLM(**_with(
        LM, symbol_retrieval="position_relative", symbol_retrieval_kwargs=dict(symbol_dim=12, max_rel_pos=4),
        ra_kwargs=REL)), ["symbol_dim", "12"]),
    ("vision_symbol_dim", lambda: VisionDualAttnTransformer(**_with(
        VIDAT, symbol_retrieval_kwargs=dict(d_model=8, n_heads=2, n_symbols=4))), ["d_model", "8"]),
    ("vision_positional_overflow", lambda: VisionDualAttnTransformer(**_with(
        VIDAT, symbol_retrieval="positional_symbols", symbol_retrieval_kwargs=dict(symbol_dim=16, max_length=4))),
     ["max_length", "4", "5"]),
    ("seq2seq_symbol_dim", lambda: Seq2SeqDualAttnTransformer(**_with(
        DS2S, symbol_retrieval="position_relative", symbol_retrieval_kwargs=dict(symbol_dim=8, max_rel_pos=3),
        encoder_kwargs=dict(DENC, ra_kwargs=REL), decoder_kwargs=dict(DDEC, ra_kwargs=REL))), ["symbol_dim", "8"]),
    ("lm_relative_without_flag", lambda: DualAttnTransformerLM(**_with(
        LM, symbol_retrieval="position_relative", symbol_retrieval_kwargs=dict(symbol_dim=16, max_rel_pos=4))),
     ["use_relative_positional_symbols"]),
    ("lm_flag_without_relative", lambda: DualAttnTransformerLM(**_with(LM, ra_kwargs=REL)),
     ["use_relative_positional_symbols"]),
    ("vision_relative_without_flag", lambda: VisionDualAttnTransformer(**_with(
        VIDAT, symbol_retrieval="position_relative", symbol_retrieval_kwargs=dict(symbol_dim=16, max_rel_pos=4))),
     ["use_relative_positional_symbols"]),
    ("seq2seq_relative_without_flag", lambda: Seq2SeqDualAttnTransformer(**_with(
        DS2S, symbol_retrieval="position_relative", symbol_retrieval_kwargs=dict(symbol_dim=16, max_rel_pos=3))),
     ["use_relative_positional_symbols"]),
    ("lm_rope_key_dim", lambda: DualAttnTransformerLM(**_with(LM, pos_enc_type="RoPE", sa_kwargs=dict(key_dim=6))),
     ["key_dim", "6", "RoPE"]),
    ("lm_rope_ra_key_dim", lambda: DualAttnTransformerLM(**_with(LM, pos_enc_type="RoPE",
                                                                  ra_kwargs=dict(key_dim=2))), ["key_dim", "2"]),
    ("lm_rope_odd_head_dim", lambda: DualAttnTransformerLM(**_with(
        LM, d_model=12, pos_enc_type="RoPE", symbol_retrieval_kwargs=dict(d_model=12, n_heads=2, n_symbols=4))),
     ["key_dim", "head_dim"]),
    ("tlm_rope_key_dim", lambda: TransformerLM(**_with(TLM, pos_enc_type="RoPE", block_kwargs=dict(
        attn_kwargs=dict(key_dim=2)))), ["key_dim", "2"]),
    # ---- NotImplementedError in the published package (ours is also a ValueError)
    ("tie_relative_library", lambda: DualAttnTransformerLM(**_with(
        LM, symbol_retrieval="position_relative", symbol_retrieval_kwargs=dict(symbol_dim=16, max_rel_pos=4),
        ra_kwargs=REL, symbol_retriever_config=dict(shared_symbol_retriever=False, weight_tie_symbol_library=True))),
     ["weight_tie_symbol_library"]),
    # ---- numbers, types, kwargs dicts
    ("lm_dropout", lambda: DualAttnTransformerLM(**_with(LM, dropout_rate=1.5)), ["dropout_rate", "1.5"]),
    ("lm_dropout_negative", lambda: DualAttnTransformerLM(**_with(LM, dropout_rate=-0.1)), ["dropout_rate"]),
    ("tlm_dropout", lambda: TransformerLM(**_with(TLM, dropout_rate=2)), ["dropout_rate", "2"]),
    ("vit_dropout", lambda: VisionTransformer(**_with(VIT, dropout_rate=1.0)), ["dropout_rate", "1.0"]),
    ("attention_dropout", lambda: Attention(16, 2, dropout=-0.5), ["dropout", "-0.5"]),
    ("symbolic_dropout", lambda: SymbolicAttention(16, 2, 4, dropout=3.0), ["dropout", "3.0"]),
    ("lm_vocab", lambda: DualAttnTransformerLM(**_with(LM, vocab_size=0)), ["vocab_size", "0"]),
    ("lm_n_layers_type", lambda: DualAttnTransformerLM(**_with(LM, n_layers="2")), ["n_layers", "'2'"]),
    ("lm_block_size", lambda: DualAttnTransformerLM(**_with(LM, max_block_size=-4)), ["max_block_size", "-4"]),
    ("lm_dff", lambda: DualAttnTransformerLM(**_with(LM, dff=0)), ["dff", "0"]),
    ("lm_norm_first_type", lambda: DualAttnTransformerLM(**_with(LM, norm_first="yes")), ["norm_first", "yes"]),
    ("lm_bias_type", lambda: DualAttnTransformerLM(**_with(LM, bias=1)), ["bias"]),
    ("lm_share_type", lambda: DualAttnTransformerLM(**_with(LM, share_attn_params="no")), ["share_attn_params"]),
    ("lm_retriever_config_value", lambda: DualAttnTransformerLM(**_with(LM, symbol_retriever_config=dict(
        shared_symbol_retriever="no"))), ["shared_symbol_retriever"]),
    ("lm_sa_kwargs_type", lambda: DualAttnTransformerLM(**_with(LM, sa_kwargs=[("n_kv_heads", 1)])), ["sa_kwargs"]),
    ("lm_sa_kwargs_typo", lambda: DualAttnTransformerLM(**_with(LM, sa_kwargs=dict(n_kv_head=1))),
     ["sa_kwargs", "n_kv_head"]),
    ("lm_ra_kwargs_typo", lambda: DualAttnTransformerLM(**_with(LM, ra_kwargs=dict(n_relation=2))),
     ["ra_kwargs", "n_relation"]),
    ("lm_retrieval_kwargs_missing", lambda: DualAttnTransformerLM(**_with(LM, symbol_retrieval_kwargs=None)),
     ["symbol_retrieval_kwargs"]),
    ("lm_retrieval_kwargs_typo", lambda: DualAttnTransformerLM(**_with(LM, symbol_retrieval_kwargs=dict(
        d_model=16, n_heads=2, num_symbols=8))), ["symbol_retrieval_kwargs", "num_symbols"]),
    ("seq2seq_encoder_kwargs", lambda: Seq2SeqTransformer(**_with(S2S, encoder_kwargs=dict(n_heads=2))),
     ["encoder_kwargs"]),
    ("seq2seq_decoder_kwargs", lambda: Seq2SeqDualAttnTransformer(**_with(DS2S, decoder_kwargs=dict(DDEC, x=1))),
     ["decoder_kwargs"]),
    ("seq2seq_layers", lambda: Seq2SeqTransformer(**_with(S2S, n_layers_dec=0)), ["n_layers_dec", "0"]),
    ("seq2seq_tie_type", lambda: Seq2SeqTransformer(**_with(S2S, tie_weights="yes")), ["tie_weights"]),
    ("vision_image_shape", lambda: VisionTransformer(**_with(VIT, image_shape=(8, 8))), ["image_shape"]),
    ("vision_patch_divides", lambda: VisionTransformer(**_with(VIT, patch_size=(3, 3))), ["patch_size"]),
    ("ff_dff", lambda: FeedForwardBlock(16, -3), ["dff", "-3"]),
    ("ff_bias_type", lambda: FeedForwardBlock(16, 8, use_bias="no"), ["use_bias"]),
    ("rmsnorm_dim", lambda: RMSNorm(0), ["dim", "0"]),
    ("encoder_block_causal_type", lambda: EncoderBlock(16, 2, 8, 0.0, "relu", True, causal=1), ["causal"]),
    ("dual_encoder_block_kwargs", lambda: DualAttnEncoderBlock(16, 2, 2, 8, "relu", 0.0, True,
                                                               ra_kwargs=dict(dropout=0.1)), ["ra_kwargs", "dropout"]),
    ("dual_decoder_cross_kwargs", lambda: DualAttnDecoderBlock(16, 2, 2, 2, 8, "relu", 0.0, True,
                                                               cross_kwargs="n_kv_heads=1"), ["cross_kwargs"]),
    ("attention_key_dim", lambda: Attention(16, 2, 0.0, key_dim=0), ["key_dim", "0"]),
    ("attention_bias_type", lambda: Attention(16, 2, 0.0, add_bias_kv="yes"), ["add_bias_kv"]),
    ("ra_rel_proj_dim", lambda: RelationalAttention(16, 2, rel_proj_dim=-2), ["rel_proj_dim", "-2"]),
    ("ra_symmetric_type", lambda: RelationalAttention(16, 2, symmetric_rels=None), ["symmetric_rels"]),
    ("symbolic_n_symbols", lambda: SymbolicAttention(16, 2, 0), ["n_symbols", "0"]),
    ("symbolic_scale", lambda: SymbolicAttention(16, 2, 4, scale=-1.0), ["scale", "-1.0"]),
    ("positional_max_length", lambda: PositionalSymbolRetriever(16, 0), ["max_length", "0"]),
    ("relative_max_rel_pos", lambda: PositionRelativeSymbolRetriever(16, -1), ["max_rel_pos", "-1"]),
    ("rel_sym_attn_delta", lambda: RelationalSymbolicAttention(16, 2, 2, 4, nbhd_delta=0), ["nbhd_delta", "0"]),
    ("sinusoidal_max_len", lambda: SinusoidalPositionalEncoding(16, max_len=0), ["max_len", "0"]),
]


@pytest.mark.parametrize("factory,needles", [(f, n) for _, f, n in CONSTRUCTION_CASES],
                         ids=[i for i, _, _ in CONSTRUCTION_CASES])
def test_invalid_configuration_raises_at_construction(factory, needles):
    with pytest.raises(ERRORS) as info:
        factory()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


def test_weight_tying_relative_is_also_not_implemented_error():
    """Published type kept: the error is a NotImplementedError too (and a ValueError)."""
    with pytest.raises(NotImplementedError):
        CONSTRUCTION_CASES[[c[0] for c in CONSTRUCTION_CASES].index("tie_relative_library")][1]()


# ------------------------------------------------------------------------------------------------ forward time
_lm = DualAttnTransformerLM(**LM)
_tlm = TransformerLM(**TLM)
_att = Attention(16, 2, 0.0)
_ra = RelationalAttention(16, 2)
_ra_rel = RelationalAttention(16, 2, use_relative_positional_symbols=True)
_rca = RelationalCrossAttention(16, 2, 0.0)
_sym = SymbolicAttention(16, 2, 4)
_vit = VisionTransformer(**VIT)
_s2s = Seq2SeqTransformer(**_with(S2S, input_spec=dict(type="vector", dim=5)))
_X = torch.randn(2, 5, 16)
_IDS = torch.zeros(2, 5, dtype=torch.long)
_ROPE = (torch.ones(4, 4), torch.zeros(4, 4))


def _set_impl(layer, impl):
    layer.implementation = impl
    return layer


FORWARD_CASES = [
    ("lm_float_ids", lambda: _lm(torch.randn(2, 5)), ["x", "integer"]),
    ("lm_rank", lambda: _lm(torch.zeros(2, 5, 1, dtype=torch.long)), ["x", "(2, 5, 1)"]),
    ("lm_too_long", lambda: _lm(torch.zeros(1, 25, dtype=torch.long)), ["max_block_size", "25", "24"]),
    ("tlm_too_long", lambda: _tlm(torch.zeros(1, 30, dtype=torch.long)), ["max_block_size", "30"]),
    ("lm_targets_shape", lambda: _lm(_IDS, torch.zeros(2, 4, dtype=torch.long)), ["targets", "(2, 4)"]),
    ("lm_padding_dtype", lambda: _lm(_IDS, key_padding_mask=torch.ones(2, 5)), ["key_padding_mask"]),
    ("lm_padding_shape", lambda: _lm(_IDS, key_padding_mask=torch.ones(2, 4, dtype=torch.bool)),
     ["key_padding_mask", "(2, 4)"]),
    ("lm_padding_batch", lambda: _lm(_IDS, key_padding_mask=torch.ones(3, 5, dtype=torch.bool)),
     ["key_padding_mask", "(3, 5)"]),
    ("attention_rank", lambda: _att(_X[0], _X[0], _X[0]), ["query", "(5, 16)"]),
    ("attention_dtype", lambda: _att(_X.long(), _X.long(), _X.long()), ["query", "int64"]),
    ("attention_width", lambda: _att(torch.randn(2, 5, 8), _X, _X), ["query", "16"]),
    ("attention_kv_length", lambda: _att(_X, _X, _X[:, :3]), ["key", "value"]),
    ("attention_mask_shape", lambda: _att(_X, _X, _X, attn_mask=torch.ones(4, 4, dtype=torch.bool)),
     ["attn_mask", "(4, 4)"]),
    ("attention_mask_rank", lambda: _att(_X, _X, _X, attn_mask=torch.ones(1, 1, 1, 5, 5, dtype=torch.bool)),
     ["attn_mask"]),
    ("attention_mask_batch", lambda: _att(_X, _X, _X, attn_mask=torch.ones(3, 5, 5, dtype=torch.bool)),
     ["attn_mask", "(3, 5, 5)"]),
    ("attention_mask_heads", lambda: _att(_X, _X, _X, attn_mask=torch.ones(2, 3, 5, 5, dtype=torch.bool)),
     ["attn_mask", "(2, 3, 5, 5)"]),
    ("attention_mask_dtype", lambda: _att(_X, _X, _X, attn_mask=torch.ones(5, 5, dtype=torch.long)),
     ["attn_mask", "int64"]),
    ("attention_is_causal_type", lambda: _att(_X, _X, _X, is_causal="yes"), ["is_causal", "yes"]),
    ("attention_rope_shape", lambda: _att(_X, _X, _X, *_ROPE), ["RoPE", "(4, 4)"]),
    ("attention_rope_key_dim", lambda: Attention(16, 2, 0.0, key_dim=6)(_X, _X, _X, torch.ones(5, 4),
                                                                         torch.ones(5, 4)), ["key_dim"]),
    ("ra_symbols_length", lambda: _ra(_X, torch.randn(2, 4, 16)), ["symbols", "(2, 4, 16)"]),
    ("ra_symbols_dim", lambda: _ra(_X, torch.randn(2, 5, 8)), ["symbols", "(2, 5, 8)"]),
    ("ra_symbols_none", lambda: _ra(_X, None), ["symbols", "NoneType"]),
    ("ra_relative_symbols_shape", lambda: _ra_rel(_X, torch.randn(5, 4, 16)),
     ["symbols", "[len, len, dim]", "(5, 4, 16)"]),
    ("ra_relative_symbols_batch", lambda: _ra_rel(_X, _X), ["symbols", "(2, 5, 16)"]),
    ("ra_relative_needs_flag", lambda: _ra(_X, PositionRelativeSymbolRetriever(16, 2).retrieve(_X)),
     ["use_relative_positional_symbols"]),
    ("ra_padding_dtype", lambda: _ra(_X, _X, key_padding_mask=torch.ones(2, 5)), ["key_padding_mask", "float32"]),
    ("ra_x_dtype", lambda: _ra(_X.long(), _X), ["x", "int64"]),
    ("ra_implementation", lambda: _set_impl(RelationalAttention(16, 2), "flash")(_X, _X), ["implementation",
                                                                                          "flash"]),
    ("ra_fused_nonlinear", lambda: _set_impl(RelationalAttention(16, 2, rel_activation="tanh"), "fused")(
        _X, _X, need_weights=False), ["fused", "rel_activation"]),
    ("rca_symbols", lambda: _rca(_X, torch.randn(2, 3, 16)), ["symbols"]),
    ("symbolic_rank", lambda: _sym(_X[0]), ["x", "(5, 16)"]),
    ("symbolic_width", lambda: _sym(torch.randn(2, 5, 8)), ["d_model", "16"]),
    ("symbolic_dtype", lambda: _sym(_X.long()), ["x", "int64"]),
    ("positional_overflow", lambda: PositionalSymbolRetriever(16, 4)(_X), ["max_length", "4", "5"]),
    ("relative_retriever_rank", lambda: PositionRelativeSymbolRetriever(16, 2)(_X[0]), ["x", "(5, 16)"]),
    ("rel_sym_attn_padding", lambda: RelationalSymbolicAttention(16, 2, 2, 4, 1)(_X, torch.ones(2, 5)),
     ["key_padding_mask"]),
    ("encoder_block_rank", lambda: EncoderBlock(16, 2, 8, 0.0, "relu", True)(_X[0]), ["(5, 16)"]),
    ("vit_image_size", lambda: _vit(torch.randn(2, 3, 16, 16)), ["img", "(2, 3, 16, 16)", "image_shape"]),
    ("vit_rank", lambda: _vit(torch.randn(3, 8, 8)), ["img", "(3, 8, 8)"]),
    ("vit_dtype", lambda: _vit(torch.zeros(2, 3, 8, 8, dtype=torch.long)), ["img", "int64"]),
    ("vit_channels", lambda: _vit(torch.randn(2, 1, 8, 8)), ["img", "(2, 1, 8, 8)"]),
    ("seq2seq_too_long", lambda: _s2s(torch.randn(2, 9, 5), torch.zeros(2, 3, dtype=torch.long)),
     ["x", "9", "8"]),
    ("seq2seq_target_too_long", lambda: _s2s(torch.randn(2, 4, 5), torch.zeros(2, 10, dtype=torch.long)),
     ["y", "10", "9"]),
    ("seq2seq_vector_dim", lambda: _s2s(torch.randn(2, 4, 6), torch.zeros(2, 3, dtype=torch.long)), ["x", "5"]),
    ("seq2seq_y_dtype", lambda: _s2s(torch.randn(2, 4, 5), torch.zeros(2, 3)), ["y", "float32"]),
    ("seq2seq_batch", lambda: _s2s(torch.randn(2, 4, 5), torch.zeros(3, 5, dtype=torch.long)), ["x", "y", "batch"]),
    ("seq2seq_src_padding", lambda: _s2s(torch.randn(2, 4, 5), torch.zeros(2, 5, dtype=torch.long),
                                         src_padding_mask=torch.ones(2, 3, dtype=torch.bool)),
     ["src_padding_mask", "(2, 3)"]),
    ("seq2seq_tgt_padding", lambda: _s2s(torch.randn(2, 4, 5), torch.zeros(2, 5, dtype=torch.long),
                                         tgt_padding_mask=torch.ones(2, 5)), ["tgt_padding_mask", "float32"]),
    ("seq2seq_targets", lambda: _s2s(torch.randn(2, 4, 5), torch.zeros(2, 5, dtype=torch.long),
                                     torch.zeros(2, 4, dtype=torch.long)), ["targets", "(2, 4)"]),
    ("generate_temperature", lambda: _lm.generate(_IDS[:1, :2], 2, temperature=-1.0), ["temperature", "-1.0"]),
    ("generate_top_k", lambda: _lm.generate(_IDS[:1, :2], 2, top_k=0), ["top_k", "0"]),
    ("generate_prompt", lambda: _lm.generate(torch.randn(1, 2), 2), ["idx"]),
]


@pytest.mark.parametrize("call,needles", [(f, n) for _, f, n in FORWARD_CASES], ids=[i for i, _, _ in FORWARD_CASES])
def test_invalid_input_raises_at_forward(call, needles):
    with pytest.raises(ERRORS) as info:
        call()
    message = str(info.value)
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


# ------------------------------------------------------------------------------------------------- python -O
def test_package_has_no_assert_statements():
    """Validation never relies on ``assert`` (stripped by ``python -O``)."""
    root = Path(dual_attention.__file__).parent
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Assert):
                offenders.append(f"{path.relative_to(root)}:{node.lineno}")
    assert not offenders, f"assert statements in the package: {offenders}"


_PYTHON_O_SCRIPT = """
import torch
from dual_attention.relational_attention import RelationalAttention
from dual_attention.language_models import DualAttnTransformerLM

lm = DualAttnTransformerLM(vocab_size=10, d_model=16, n_layers=1, n_heads_sa=2, n_heads_ra=2, dff=8,
                           symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=4), dropout_rate=0.0,
                           activation='relu', norm_first=True, max_block_size=4)
errors = []
for bad in (lambda: RelationalAttention(64, 4, n_relations=3), lambda: RelationalAttention(16, 3),
            lambda: lm(torch.zeros(1, 5, dtype=torch.long))):
    try:
        bad()
    except ValueError as e:
        errors.append(type(e).__name__)
print(__debug__, errors)
"""


def test_validation_survives_python_O():
    # optimised bytecode is cached in a private prefix: without it every run recompiles torch under -O (~6 s more)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "dual_attention-pycache-O")
    out = subprocess.run([sys.executable, "-O", "-c", _PYTHON_O_SCRIPT], capture_output=True, text=True, timeout=180,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False ['ValueError', 'ValueError', 'ValueError']"


def test_positional_symbols_shorter_than_block_are_accepted_but_checked_at_forward():
    """As published, max_length < max_block_size constructs (usable on short inputs); too long inputs raise."""
    model = DualAttnTransformerLM(**_with(LM, symbol_retrieval="positional_symbols",
                                          symbol_retrieval_kwargs=dict(symbol_dim=16, max_length=8)))
    logits, _ = model(torch.randint(0, 37, (1, 8)))
    assert logits.shape == (1, 8, 37)
    with pytest.raises(ValueError, match="max_length=8"):
        model(torch.randint(0, 37, (1, 9)))
    with pytest.raises(ValueError, match="max_length=8"):
        model.generate(torch.randint(0, 37, (1, 6)), 4)
