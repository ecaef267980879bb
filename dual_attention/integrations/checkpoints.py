"""Language-model checkpoints for the integrations: a run dir, a checkpoint dir (``save_pretrained`` of the
``*_HFHub`` classes, e.g. a local copy of a published model) or a Hub id, checked to be a language model *before*
the weights are read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dual_attention.errors import message_of
from dual_attention.training.checkpoint import CheckpointError, find_checkpoint
from dual_attention.training.models import FAMILY_OF_CLASS
from dual_attention.training.tokenizers import ByteTokenizer, DataError, TiktokenTokenizer, load_tokenizer

__all__ = ["LMCheckpoint", "load_lm"]


@dataclass
class LMCheckpoint:
    """A loaded language model: ``model`` (eval mode), its class name and constructor arguments, its tokenizer
    (None when unknown or unavailable, with ``tokenizer_note`` saying why) and where it came from."""

    model: nn.Module
    lm_class: str
    lm_kwargs: dict
    tokenizer: Any
    source: str
    tokenizer_note: str = ""


def _resolve(text: str) -> tuple[str, Path | None]:
    """(what load_pretrained takes, the local checkpoint dir or None for a Hub id)."""
    p = Path(text)
    if p.exists():
        ckpt = find_checkpoint(p)
        if ckpt is None:
            raise CheckpointError(f"no checkpoint in {text!r}: expected a run dir with checkpoint/ or a dir with "
                                  "config.json + model.safetensors")
        return str(ckpt), ckpt
    parts = text.split("/")
    if len(parts) == 2 and all(parts) and not text.startswith((".", "~")):
        return text, None
    raise CheckpointError(f"checkpoint {text!r} does not exist (not a directory, nor a Hub id owner/name)")


def _default_tokenizer(vocab_size: int) -> tuple[Any, str]:
    if vocab_size <= 256:
        return ByteTokenizer(), ""
    if vocab_size >= 50257:
        try:
            return TiktokenTokenizer("gpt2"), ""
        except DataError as e:
            return None, str(e)
    return None, f"no tokenizer.json and no known tokenizer for a vocabulary of {vocab_size}"


def load_lm(checkpoint: str | Path, map_location: str = "cpu") -> LMCheckpoint:
    """Load a DAT / Transformer language model; CheckpointError (one line) for anything else or a bad checkpoint."""
    from dual_attention.hf import CheckpointError as HubCheckpointError
    from dual_attention.hf import load_pretrained, model_class_for_config, read_config

    text = str(checkpoint)
    source, ckpt = _resolve(text)
    try:
        config = read_config(source)
        cls = model_class_for_config(config)
    except HubCheckpointError as e:
        raise CheckpointError(f"{text!r}: {message_of(e)}") from None
    except Exception as e:  # network errors, missing repos
        raise CheckpointError(f"cannot read the config of {text!r}: {type(e).__name__}: {message_of(e)}") from None
    name = cls.__name__.removesuffix("_HFHub")
    if FAMILY_OF_CLASS.get(name, "lm") != "lm":
        raise CheckpointError(f"{text!r} is a {FAMILY_OF_CLASS[name]} model ({name}); only language models "
                              "(DualAttnTransformerLM, TransformerLM) can be used here")
    try:
        model = load_pretrained(source, map_location=map_location)
    except Exception as e:
        raise CheckpointError(f"cannot load checkpoint {text!r}: {type(e).__name__}: {message_of(e)}") from None
    tokenizer, note = (load_tokenizer(ckpt), "") if ckpt is not None else (None, "")
    if tokenizer is None:
        tokenizer, note = _default_tokenizer(int(model.vocab_size))
    return LMCheckpoint(model.eval(), name, dict(config), tokenizer, source, note)
