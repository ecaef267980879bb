"""From a :class:`~dual_attention.training.config.ModelConfig` to a model (and back from a checkpoint).

Models are always built from the Hugging Face mixin classes of :mod:`dual_attention.hf` with keyword
arguments only, so that ``save_pretrained`` writes a ``config.json`` that
:func:`dual_attention.hf.load_pretrained` can rebuild.

| family | arch | class |
|---|---|---|
| lm | dat / transformer | ``DualAttnTransformerLM_HFHub`` / ``TransformerLM_HFHub`` |
| seq2seq | dat / transformer | ``Seq2SeqDualAttnTransformer_HFHub`` / ``Seq2SeqTransformer_HFHub`` |
| vision | dat / transformer | ``VisionDualAttnTransformer_HFHub`` / ``VisionTransformer_HFHub`` |
"""

from __future__ import annotations

import importlib
from typing import Any

import torch.nn as nn

from dual_attention.errors import message_of
from dual_attention.training.config import ConfigError, ModelConfig

__all__ = [
    "CLASS_NAMES",
    "FAMILY_OF_CLASS",
    "model_class_name",
    "model_kwargs",
    "build_model",
    "model_family",
    "configure_optimizer",
]

#: (family, arch) -> class name in dual_attention.hf
CLASS_NAMES: dict[tuple[str, str], str] = {
    ("lm", "dat"): "DualAttnTransformerLM_HFHub",
    ("lm", "transformer"): "TransformerLM_HFHub",
    ("seq2seq", "dat"): "Seq2SeqDualAttnTransformer_HFHub",
    ("seq2seq", "transformer"): "Seq2SeqTransformer_HFHub",
    ("vision", "dat"): "VisionDualAttnTransformer_HFHub",
    ("vision", "transformer"): "VisionTransformer_HFHub",
}

#: model class name (plain or _HFHub) -> family
FAMILY_OF_CLASS: dict[str, str] = {
    "DualAttnTransformerLM": "lm",
    "TransformerLM": "lm",
    "Seq2SeqDualAttnTransformer": "seq2seq",
    "Seq2SeqTransformer": "seq2seq",
    "VisionDualAttnTransformer": "vision",
    "VisionTransformer": "vision",
}

_FAMILY_MODULE = {"lm": "language_models", "seq2seq": "seq2seq_models", "vision": "vision_models"}


def model_class_name(cfg: ModelConfig) -> str:
    """The ``dual_attention.hf`` class name for ``(cfg.family, cfg.arch)``."""
    try:
        return CLASS_NAMES[(cfg.family, cfg.arch)]
    except KeyError:
        raise ConfigError(
            f"no model for model.family={cfg.family!r}, model.arch={cfg.arch!r}; "
            "families: lm, seq2seq, vision; archs: dat, transformer"
        ) from None


def model_family(model: nn.Module) -> str:
    """The family (``lm``, ``seq2seq``, ``vision``) of a model instance, from its class hierarchy."""
    for klass in type(model).__mro__:
        fam = FAMILY_OF_CLASS.get(klass.__name__.removesuffix("_HFHub"))
        if fam:
            return fam
    raise ValueError(f"model of type {type(model).__name__} is not one of {', '.join(FAMILY_OF_CLASS)}")


def _symbol_kwargs(cfg: ModelConfig, max_len: int) -> tuple[dict, dict]:
    """(symbol_retrieval_kwargs, extra ra_kwargs) for ``cfg.symbol_retrieval``."""
    sr = cfg.symbol_retrieval
    if sr == "none":
        return None, {}
    if sr == "symbolic_attention":
        return (
            {
                "d_model": cfg.d_model,
                "n_heads": cfg.symbol_heads or max(cfg.n_heads_ra, 1),
                "n_symbols": cfg.n_symbols or max_len,
            },
            {},
        )
    if sr == "positional_symbols":
        return {"symbol_dim": cfg.d_model, "max_length": max_len}, {}
    if sr == "position_relative":
        return {"symbol_dim": cfg.d_model, "max_rel_pos": max_len}, {"use_relative_positional_symbols": True}
    if sr == "rel_sym_attn":
        return (
            {
                "d_model": cfg.d_model,
                "rel_n_heads": cfg.symbol_heads or max(cfg.n_heads_ra, 1),
                "symbolic_attn_n_heads": cfg.symbol_heads or max(cfg.n_heads_ra, 1),
                "n_symbols": cfg.n_symbols or max_len,
                "nbhd_delta": 4,
            },
            {},
        )
    raise ConfigError(  # pragma: no cover - checked by validate_config
        f"model.symbol_retrieval={sr!r} is not one of: symbolic_attention, positional_symbols, "
        "position_relative, rel_sym_attn"
    )


def _ra_kwargs(cfg: ModelConfig, extra: dict) -> dict:
    ra: dict[str, Any] = {}
    if cfg.n_kv_heads:
        ra["n_kv_heads"] = cfg.n_kv_heads
    if cfg.n_relations:
        ra["n_relations"] = cfg.n_relations
    if cfg.rel_activation != "identity":
        ra["rel_activation"] = cfg.rel_activation
    if cfg.symmetric_rels:
        ra["symmetric_rels"] = True
    if cfg.symmetric_attn:
        ra["symmetric_attn"] = True
    if cfg.qk_norm:
        if cfg.ra_type != "hadamard":
            raise ConfigError(f"model.qk_norm=true needs model.ra_type=hadamard, got {cfg.ra_type}")
        ra["qk_norm"] = True
    ra.update(extra)
    return ra


def _sa_kwargs(cfg: ModelConfig) -> dict:
    sa: dict[str, Any] = {"n_kv_heads": cfg.n_kv_heads} if cfg.n_kv_heads else {}
    if cfg.symmetric_attn:
        sa["symmetric_attn"] = True
    return sa


def _symbol_retrieval(cfg: ModelConfig) -> str | None:
    return None if cfg.symbol_retrieval == "none" else cfg.symbol_retrieval


def _dat_options(cfg: ModelConfig) -> dict[str, Any]:
    """``update_symbols_each_layer`` where it differs from the published behaviour (else nothing)."""
    return {} if cfg.update_symbols_each_layer else {"update_symbols_each_layer": False}


def _pos_enc(cfg: ModelConfig) -> dict[str, Any]:
    """``pos_enc_type`` for the seq2seq/vision constructors (only RoPE is passed: the default is published)."""
    return {"pos_enc_type": "RoPE"} if cfg.pos_enc_type == "RoPE" else {}


def _n_heads(cfg: ModelConfig) -> int:
    n = cfg.n_heads or (cfg.n_heads_sa + cfg.n_heads_ra)
    if n <= 0:
        raise ConfigError("model.n_heads must be > 0 for the transformer (or set n_heads_sa + n_heads_ra > 0)")
    return n


def _dat_heads(cfg: ModelConfig, max_len: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """DAT options: (the per-block head arguments, the model-level symbol retrieval arguments)."""
    sym_kw, ra_extra = _symbol_kwargs(cfg, max_len)
    heads = {"n_heads_sa": cfg.n_heads_sa, "n_heads_ra": cfg.n_heads_ra, "sa_kwargs": _sa_kwargs(cfg),
             "ra_kwargs": _ra_kwargs(cfg, ra_extra), "ra_type": cfg.ra_type}
    symbols = {"symbol_retrieval": _symbol_retrieval(cfg), "symbol_retrieval_kwargs": sym_kw}
    return heads, symbols


def _block_common(cfg: ModelConfig) -> dict[str, Any]:
    return {"dff": cfg.dff, "dropout_rate": cfg.dropout, "activation": cfg.activation, "norm_first": cfg.norm_first}


def _lm_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    if not cfg.vocab_size:
        raise ConfigError("model.vocab_size is not set (it comes from the tokenizer when data is given)")
    kw = {"vocab_size": cfg.vocab_size, "d_model": cfg.d_model, "n_layers": cfg.n_layers, **_block_common(cfg),
          "max_block_size": cfg.max_block_size, "norm_type": cfg.norm_type, "pos_enc_type": cfg.pos_enc_type,
          "bias": cfg.bias}
    if cfg.arch == "transformer":
        kw["n_heads"] = _n_heads(cfg)
        if cfg.n_kv_heads:
            kw["block_kwargs"] = {"attn_kwargs": {"n_kv_heads": cfg.n_kv_heads}}
        return kw
    heads, symbols = _dat_heads(cfg, cfg.max_block_size)
    return {**kw, "n_heads_sa": heads["n_heads_sa"], "n_heads_ra": heads["n_heads_ra"], **symbols,
            "sa_kwargs": heads["sa_kwargs"], "ra_kwargs": heads["ra_kwargs"], "ra_type": cfg.ra_type,
            "share_attn_params": cfg.share_attn_params, **_dat_options(cfg)}


def _seq2seq_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    if not cfg.vocab_size or not cfg.in_block_size or not cfg.out_block_size:
        raise ConfigError(
            "model.vocab_size, model.in_block_size and model.out_block_size must be set "
            "(they come from the data when data is given)"
        )
    spec = {"type": "token", "vocab_size": cfg.vocab_size}
    n_cross = cfg.n_heads_cross or (_n_heads(cfg) if cfg.arch == "transformer" else cfg.n_heads_sa + cfg.n_heads_ra)
    block = {**_block_common(cfg), "norm_type": cfg.norm_type, "bias": cfg.bias}
    kw = {"input_spec": spec, "output_spec": dict(spec), "d_model": cfg.d_model, "out_dim": cfg.vocab_size,
          "n_layers_enc": cfg.n_layers, "n_layers_dec": cfg.n_layers_dec or cfg.n_layers,
          "in_block_size": cfg.in_block_size, "out_block_size": cfg.out_block_size}
    if cfg.arch == "transformer":
        h = _n_heads(cfg)
        kw.update(encoder_kwargs={**block, "n_heads": h, "causal": False},
                  decoder_kwargs={**block, "n_heads": h, "n_heads_cross": n_cross, "causal": True})
    else:
        heads, symbols = _dat_heads(cfg, max(cfg.in_block_size, cfg.out_block_size))
        dual = {**block, **heads, "share_attn_params": cfg.share_attn_params}
        kw.update(**symbols, encoder_kwargs={**dual, "causal": False},
                  decoder_kwargs={**dual, "n_heads_cross": n_cross, "causal": True}, **_dat_options(cfg))
    return {**kw, **_pos_enc(cfg)}


def _vision_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    if not cfg.image_shape or not cfg.num_classes:
        raise ConfigError(
            "model.image_shape and model.num_classes must be set (they come from the data when data is given)"
        )
    kw = {"image_shape": list(cfg.image_shape), "patch_size": list(cfg.patch_size), "num_classes": cfg.num_classes,
          "d_model": cfg.d_model, "n_layers": cfg.n_layers, **_block_common(cfg), "norm_type": cfg.norm_type,
          "bias": cfg.bias, "pool": cfg.pool}
    if cfg.arch == "transformer":
        kw["n_heads"] = _n_heads(cfg)
    else:
        _, w, h = cfg.image_shape
        pw, ph = cfg.patch_size
        heads, symbols = _dat_heads(cfg, (w // pw) * (h // ph) + 1)  # patches + the cls token
        kw.update(n_heads_sa=heads["n_heads_sa"], n_heads_ra=heads["n_heads_ra"], **symbols, ra_type=cfg.ra_type,
                  ra_kwargs=heads["ra_kwargs"], sa_kwargs=heads["sa_kwargs"], **_dat_options(cfg))
    return {**kw, **_pos_enc(cfg)}


#: family -> the builder of its constructor's keyword arguments
_KWARGS_BUILDERS = {"lm": _lm_kwargs, "seq2seq": _seq2seq_kwargs, "vision": _vision_kwargs}


def model_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """The keyword arguments of the model constructor for ``cfg`` (all sizes must be resolved)."""
    model_class_name(cfg)  # ConfigError for an unknown family/arch
    return {**_KWARGS_BUILDERS[cfg.family](cfg), **cfg.extra_kwargs}


def _hf_class(name: str) -> type:
    return getattr(importlib.import_module("dual_attention.hf"), name)


def build_model(cfg: ModelConfig) -> nn.Module:
    """Construct the model of ``cfg`` (keyword arguments only); ConfigError on an invalid combination."""
    cls = _hf_class(model_class_name(cfg))
    kw = model_kwargs(cfg)
    try:
        return cls(**kw)
    except (ValueError, TypeError, AssertionError, NotImplementedError) as e:
        raise ConfigError(f"cannot build {cls.__name__} from the model config: {message_of(e)}") from None


def configure_optimizer(model: nn.Module, family: str, weight_decay: float, learning_rate: float,
                        betas: tuple[float, float], device_type: str):
    """AdamW through ``dual_attention.<family module>.configure_optimizers`` (decay on params with dim >= 2)."""
    mod = importlib.import_module(f"dual_attention.{_FAMILY_MODULE[family]}")
    try:
        return mod.configure_optimizers(model, weight_decay, learning_rate, betas, device_type, verbose=False)
    except TypeError:  # an implementation without the verbose keyword
        return mod.configure_optimizers(model, weight_decay, learning_rate, betas, device_type)
