"""Loading trained models back: run dirs, checkpoint dirs and Hub ids; evaluation of a checkpoint on a file."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dual_attention.training.checkpoint import CheckpointError
from dual_attention.training.config import Config, ConfigError, ModelConfig, load_config
from dual_attention.training.data import DataError, load_dataset, step_generator
from dual_attention.training.data_spec import derive_model_config, describe_data
from dual_attention.training.evaluation import (
    FILE_EVAL_STREAM,
    eval_chunk,
    evaluate_lm,
    evaluate_seq2seq,
    evaluate_vision,
)
from dual_attention.training.models import FAMILY_OF_CLASS, model_family
from dual_attention.training.tokenizers import ByteTokenizer, TiktokenTokenizer, load_tokenizer

__all__ = ["LoadedModel", "load_trained", "guess_data_family", "evaluate_checkpoint"]


@dataclass
class LoadedModel:
    """A model loaded for inference, with what is known about how it was trained."""

    model: nn.Module
    family: str
    source: str
    checkpoint_dir: Path | None
    tokenizer: Any
    train_config: Config | None
    model_config: dict | None = None


def load_trained(path_or_id: str | Path, map_location: str | torch.device = "cpu") -> LoadedModel:
    """Load a model from a run dir, a checkpoint dir or a Hugging Face Hub id (strict loading).

    Raises CheckpointError (a ValueError) with one line for a missing, incomplete or corrupted checkpoint, and
    at once for a path that exists neither locally nor (offline or unreachable Hub) on the Hub.
    """
    from dual_attention.hf import load_pretrained, resolve_checkpoint

    text = str(path_or_id)
    source = resolve_checkpoint(text)
    ckpt: Path | None = Path(source) if Path(source).is_dir() else None
    config: dict | None = None
    if ckpt is not None:
        try:
            config = json.loads((ckpt / "config.json").read_text())
        except ValueError:
            raise CheckpointError(f"{ckpt / 'config.json'} is not valid JSON (corrupted checkpoint)") from None
        if not isinstance(config, dict):
            raise CheckpointError(f"{ckpt / 'config.json'} does not hold the model's keyword arguments")
    model = load_pretrained(source, map_location=map_location)
    model.eval()
    family = model_family(model)
    tokenizer = None
    train_cfg = None
    if ckpt is not None:
        try:
            tokenizer = load_tokenizer(ckpt)
        except DataError as e:
            raise CheckpointError(str(e)) from None
        if (ckpt / "train_config.yaml").is_file():
            try:
                train_cfg = load_config(str(ckpt / "train_config.yaml"))
            except ConfigError:
                train_cfg = None
    if tokenizer is None and family == "lm":
        vocab = int(model.vocab_size)
        tokenizer = ByteTokenizer() if vocab <= 256 else None
        if tokenizer is None and vocab >= 50257:
            tokenizer = TiktokenTokenizer("gpt2")
    return LoadedModel(model, family, source, ckpt, tokenizer, train_cfg, config)


def guess_data_family(path: str) -> str | None:
    """The family a data path is meant for, from its suffix (None when unsure)."""
    if path == "synthetic":
        return None
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".pt", ".pth") or p.is_dir():
        return "vision"
    if suffix == ".tsv" or ("," in path and not p.exists()):
        return "seq2seq"
    if suffix in (".txt", ".bin", ".text", ".md"):
        return "lm"
    return None


_DATA_WORD = {"lm": "text (language-model) data", "seq2seq": "seq2seq pair data", "vision": "image (vision) data"}
_NO_TOKENIZER = {"lm": "and an unknown vocabulary", "seq2seq": "(the character vocabulary)"}
_FAMILY_WORD = {"lm": "language model", "seq2seq": "seq2seq model", "vision": "vision model"}


def evaluate_checkpoint(path_or_id: str, data: str, *, batch_size: int = 32, max_batches: int = 50,
                        device: str = "cpu", seed: int = 0) -> tuple[LoadedModel, dict[str, float]]:
    """Loss (and perplexity/accuracy) of a trained model on a data file.

    LM: ``max_batches`` batches of random windows of the model's block size; seq2seq/vision: the whole file.
    Forward passes take at most the training micro-batch of the checkpoint's run (as its evaluations did), and
    ``synthetic`` data is as large as its run's ``data.synthetic_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    loaded = load_trained(path_or_id, map_location=device)
    fam = loaded.family
    guessed = guess_data_family(data)
    if guessed is not None and guessed != fam:
        raise DataError(
            f"checkpoint {path_or_id!r} is a {_FAMILY_WORD[fam]} ({type(loaded.model).__name__.removesuffix('_HFHub')})"
            f" but {data!r} looks like {_DATA_WORD[guessed]}"
        )
    if fam in _NO_TOKENIZER and loaded.tokenizer is None:
        raise CheckpointError(f"checkpoint {path_or_id!r} has no tokenizer.json {_NO_TOKENIZER[fam]}")
    run = loaded.train_config or Config()
    dataset = load_dataset(data, fam, loaded.tokenizer, seed=seed, synthetic_size=run.data.synthetic_size)
    model = loaded.model
    if fam == "lm":
        block = min(run.data.block_size or model.block_size, model.block_size)
        dataset.check_windows(block)
    _check_fits(loaded, run, dataset, data)
    chunk = eval_chunk(batch_size, run.train.batch_size // run.train.grad_accum_steps)
    if fam == "lm":
        generator = step_generator(seed, 0, stream=FILE_EVAL_STREAM)
        metrics = evaluate_lm(model, dataset, block_size=block, n_batches=max(max_batches, 1), batch_size=batch_size,
                              chunk=chunk, generator=generator, device=device)
    elif fam == "seq2seq":
        metrics = evaluate_seq2seq(model, dataset, chunk=chunk, device=device)
    else:
        metrics = evaluate_vision(model, dataset, chunk=chunk, device=device)
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        k, v = next(iter(bad.items()))
        raise CheckpointError(f"the {k} of {path_or_id!r} on {data!r} is {float(v)}: the model produces non-finite "
                              "values (corrupted weights?)")
    return loaded, metrics


def _check_fits(loaded: LoadedModel, run: Config, dataset, data: str) -> None:
    """DataError/ConfigError when the model cannot take ``dataset`` (vocabulary, lengths, image shape, classes)."""
    model, config = loaded.model, loaded.model_config or {}
    if loaded.family == "lm":
        sizes = ModelConfig(vocab_size=int(model.vocab_size))
    elif loaded.family == "seq2seq":
        sizes = ModelConfig(vocab_size=run.model.vocab_size, in_block_size=config.get("in_block_size"),
                            out_block_size=config.get("out_block_size"))
    else:
        sizes = ModelConfig(image_shape=config.get("image_shape"),
                            patch_size=list(config.get("patch_size", run.model.patch_size)))
    fits = derive_model_config(sizes, describe_data(loaded.family, [dataset], loaded.tokenizer))
    n_out = getattr(getattr(model, "final_out", None), "out_features", None)
    if loaded.family == "vision" and n_out is not None and fits.num_classes > n_out:
        raise DataError(f"{data!r} has labels up to {fits.num_classes - 1} but the model has {n_out} classes")


def family_of_config_json(config: dict) -> str | None:
    """The family of a ``config.json`` (via dual_attention.hf.model_class_for_config)."""
    from dual_attention.hf import model_class_for_config

    cls = model_class_for_config(config)
    for klass in cls.__mro__:
        fam = FAMILY_OF_CLASS.get(klass.__name__.removesuffix("_HFHub"))
        if fam:
            return fam
    return None
