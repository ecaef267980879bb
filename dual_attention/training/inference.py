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
from dual_attention.training.config import Config, ConfigError, load_config
from dual_attention.training.data import DataError
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
_FAMILY_WORD = {"lm": "language model", "seq2seq": "seq2seq model", "vision": "vision model"}


def evaluate_checkpoint(path_or_id: str, data: str, *, batch_size: int = 32, max_batches: int = 50,
                        device: str = "cpu", seed: int = 0) -> tuple[LoadedModel, dict[str, float]]:
    """Loss (and perplexity/accuracy) of a trained model on a data file.

    LM: ``max_batches`` batches of random windows of the model's block size; seq2seq/vision: the whole file.
    """
    loaded = load_trained(path_or_id, map_location=device)
    fam = loaded.family
    guessed = guess_data_family(data)
    if guessed is not None and guessed != fam:
        raise DataError(
            f"checkpoint {path_or_id!r} is a {_FAMILY_WORD[fam]} ({type(loaded.model).__name__.removesuffix('_HFHub')})"
            f" but {data!r} looks like {_DATA_WORD[guessed]}"
        )
    cfg = load_config(loaded.train_config) if loaded.train_config is not None else Config()
    cfg.model.family = fam
    cfg.data.train, cfg.data.val, cfg.data.test = data, None, None
    cfg.data.format = "synthetic" if data == "synthetic" else "auto"
    cfg.data.val_fraction = 0.0
    cfg.train.eval_batch_size = batch_size
    cfg.train.eval_iters = max_batches
    cfg.train.seed = seed
    model = loaded.model
    if fam == "lm":
        cfg.model.max_block_size = int(model.block_size)
        cfg.model.vocab_size = int(model.vocab_size)
        cfg.data.block_size = min(cfg.data.block_size or model.block_size, model.block_size)
        if loaded.tokenizer is None:
            raise CheckpointError(f"checkpoint {path_or_id!r} has no tokenizer.json and an unknown vocabulary")
    elif fam == "seq2seq":
        if loaded.tokenizer is None:
            raise CheckpointError(f"checkpoint {path_or_id!r} has no tokenizer.json (the character vocabulary)")
        config = loaded.model_config or {}
        cfg.model.in_block_size = config.get("in_block_size")
        cfg.model.out_block_size = config.get("out_block_size")
    else:
        config = loaded.model_config or {}
        cfg.model.image_shape = config.get("image_shape")
        cfg.model.patch_size = list(config.get("patch_size", cfg.model.patch_size))
        cfg.model.num_classes = None
    from dual_attention.training.data_spec import derive_model_config
    from dual_attention.training.tasks import make_task

    task = make_task(cfg, torch.device(device), tokenizer=loaded.tokenizer)
    fits = derive_model_config(cfg.model, task.spec)  # raises when the model cannot hold the data
    if fam == "vision":
        n_out = _num_outputs(model)
        if n_out is not None and fits.num_classes > n_out:
            raise DataError(f"{data!r} has labels up to {fits.num_classes - 1} but the model has {n_out} classes")
    metrics = task.evaluate(model, "train") or {}
    bad = {k: v for k, v in metrics.items() if not math.isfinite(float(v))}
    if bad:
        k, v = next(iter(bad.items()))
        raise CheckpointError(f"the {k} of {path_or_id!r} on {data!r} is {float(v)}: the model produces non-finite "
                              "values (corrupted weights?)")
    return loaded, metrics


def _num_outputs(model: nn.Module) -> int | None:
    head = getattr(model, "final_out", None)
    return getattr(head, "out_features", None)


def family_of_config_json(config: dict) -> str | None:
    """The family of a ``config.json`` (via dual_attention.hf.model_class_for_config)."""
    from dual_attention.hf import model_class_for_config

    cls = model_class_for_config(config)
    for klass in cls.__mro__:
        fam = FAMILY_OF_CLASS.get(klass.__name__.removesuffix("_HFHub"))
        if fam:
            return fam
    return None
