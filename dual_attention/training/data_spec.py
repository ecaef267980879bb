"""What the data says about the model: a frozen :class:`DataSpec`, and the model config derived from it purely.

Loading data (:func:`dual_attention.training.tasks.make_task`) never writes into the caller's config. Each task
describes its data in a :class:`DataSpec` (vocabulary, sequence lengths, image shape, classes), and
:func:`derive_model_config` returns a *new* :class:`ModelConfig` with the fields left ``None`` filled from it,
after checking that the fields set by the user can hold the data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dual_attention.training.config import ConfigError, ModelConfig
from dual_attention.training.tokenizers import DataError

__all__ = ["DataSpec", "describe_data", "derive_model_config"]


@dataclass(frozen=True)
class DataSpec:
    """Sizes read from the data of one family (``None`` where they do not apply).

    ``vocab_size``/``tokenizer_name``: the tokenizer's vocabulary (lm, seq2seq); ``max_src_len``/``max_tgt_len``:
    the longest source and target (with <bos>/<eos>) over all splits (seq2seq); ``image_shape`` as the models read
    it, (C, W, H), and ``num_classes`` = largest label + 1 (vision).
    """

    family: str
    vocab_size: int | None = None
    tokenizer_name: str | None = None
    max_src_len: int | None = None
    max_tgt_len: int | None = None
    image_shape: tuple[int, int, int] | None = None
    num_classes: int | None = None


def describe_data(family: str, splits, tokenizer=None) -> DataSpec:
    """The :class:`DataSpec` of the datasets ``splits`` of ``family`` (``None`` entries skipped; vision reads the
    image shape from the first), tokenized by ``tokenizer`` (lm, seq2seq)."""
    splits = [s for s in splits if s is not None]
    if family == "lm":
        return DataSpec("lm", vocab_size=tokenizer.vocab_size, tokenizer_name=tokenizer.name)
    if family == "seq2seq":
        return DataSpec("seq2seq", vocab_size=tokenizer.vocab_size, tokenizer_name=tokenizer.name,
                        max_src_len=max(s.max_src_len for s in splits), max_tgt_len=max(s.max_tgt_len for s in splits))
    _, c, h, w = splits[0].images.shape
    n_cls = max(int(s.labels.max()) for s in splits) + 1
    return DataSpec("vision", image_shape=(c, w, h), num_classes=n_cls)  # models read (C, W, H)


def derive_model_config(model: ModelConfig, spec: DataSpec) -> ModelConfig:
    """``model`` with its data-derived fields filled from ``spec`` (a new object); ConfigError/DataError when a
    field the user set cannot hold the data."""
    return _DERIVE[spec.family](model, spec)


def _vocab(model: ModelConfig, spec: DataSpec, what: str) -> int:
    if model.vocab_size is None:
        return spec.vocab_size
    if model.vocab_size < spec.vocab_size:
        raise ConfigError(f"model.vocab_size={model.vocab_size} is smaller than the {what} ({spec.vocab_size})")
    return model.vocab_size


def _lm(model: ModelConfig, spec: DataSpec) -> ModelConfig:
    return dataclasses.replace(model, vocab_size=_vocab(model, spec, f"vocabulary of tokenizer "
                                                                    f"{spec.tokenizer_name!r}"))


def _seq2seq(model: ModelConfig, spec: DataSpec) -> ModelConfig:
    vocab = _vocab(model, spec, "character vocabulary")
    in_block = model.in_block_size or spec.max_src_len
    out_block = model.out_block_size or spec.max_tgt_len
    if spec.max_src_len > in_block or spec.max_tgt_len > out_block:
        raise DataError(
            f"the data has sources of up to {spec.max_src_len} and targets (with <bos>/<eos>) of up to "
            f"{spec.max_tgt_len} tokens, more than model.in_block_size={in_block} / model.out_block_size={out_block}"
        )
    return dataclasses.replace(model, vocab_size=vocab, in_block_size=in_block, out_block_size=out_block)


def _vision(model: ModelConfig, spec: DataSpec) -> ModelConfig:
    shape = list(spec.image_shape)
    if model.image_shape is not None and list(model.image_shape) != shape:
        raise ConfigError(f"model.image_shape={model.image_shape} does not match the data's (C, W, H) = {shape}")
    if model.num_classes is not None and model.num_classes < spec.num_classes:
        raise ConfigError(f"model.num_classes={model.num_classes} but the data has labels up to "
                          f"{spec.num_classes - 1}")
    _, w, h = shape
    pw, ph = model.patch_size
    if w % pw or h % ph:
        raise ConfigError(f"model.patch_size={model.patch_size} does not divide the image size (W, H) = ({w}, {h})")
    return dataclasses.replace(model, image_shape=shape,
                               num_classes=model.num_classes if model.num_classes is not None else spec.num_classes)


_DERIVE = {"lm": _lm, "seq2seq": _seq2seq, "vision": _vision}
