"""Evaluation loops of the three families: plain functions of a model, one dataset and the batch settings.

The trainer (:meth:`~dual_attention.training.tasks.Task.evaluate`, on its validation and test splits) and
:func:`~dual_attention.training.inference.evaluate_checkpoint` (on one data file) both call them. Each returns the
mean loss per loss term (token or image) and the accuracy; LM and seq2seq add the perplexity ``exp(loss)``,
seq2seq the fraction of targets predicted entirely right (``seq_acc``).

``chunk`` is the number of rows per forward pass (the training micro-batch at most, so that memory stays bounded).
"""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from dual_attention.training.data import ImageData, PairData, TokenStream, step_generator

__all__ = ["eval_chunk", "lm_eval_generator", "seq2seq_logits", "evaluate_lm", "evaluate_seq2seq",
           "evaluate_vision", "FILE_EVAL_STREAM"]

#: generator stream of the LM evaluation windows of each split of a training run
_SPLIT_STREAM = {"train": 10, "val": 11, "test": 12}

#: the stream ``dat eval`` draws a data file's windows from (that of the train split, so numbers are comparable
#: with every earlier version)
FILE_EVAL_STREAM = _SPLIT_STREAM["train"]


def eval_chunk(batch_size: int, micro_batch: int) -> int:
    """Rows per forward pass: the evaluation batch, at most the training micro-batch, at least 1."""
    return max(min(batch_size, micro_batch), 1)


def lm_eval_generator(seed: int, split: str) -> torch.Generator:
    """The generator of the LM evaluation windows of ``split`` (the same at every evaluation of a run)."""
    return step_generator(seed, 0, stream=_SPLIT_STREAM[split])


def _ppl(loss: float) -> float:
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def evaluate_lm(model: nn.Module, stream: TokenStream, *, block_size: int, n_batches: int, batch_size: int,
                chunk: int, generator: torch.Generator, device: torch.device | str = "cpu",
                autocast=nullcontext) -> dict[str, float]:
    """Next-token loss, perplexity and accuracy on ``n_batches`` batches of ``batch_size`` random windows of
    ``block_size + 1`` tokens of ``stream`` (their starts drawn from ``generator``)."""
    total, correct, count = 0.0, 0, 0
    for _ in range(n_batches):
        all_starts = stream.random_starts(generator, batch_size, block_size)
        for starts in all_starts.split(chunk):
            x, y = stream.windows(starts, block_size)  # (b, T) each
            x, y = x.to(device), y.to(device)
            with autocast():
                logits, _ = model(x, targets=y)
            logits = logits.float()
            total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
            count += y.numel()
    loss = total / count
    return {"loss": loss, "ppl": _ppl(loss), "acc": correct / count}


def seq2seq_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The teacher-forced logits ``[B, Lt+1, V]`` of a collated :class:`PairData` batch."""
    logits, _ = model(batch["x"], batch["y"], targets=batch["targets"], src_padding_mask=batch["src_mask"],
                      tgt_padding_mask=batch["tgt_mask"])
    return logits


def _batches(data: PairData | ImageData, chunk: int, device):
    for start in range(0, len(data), chunk):
        batch = data.collate(torch.arange(start, min(start + chunk, len(data))))
        yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def evaluate_seq2seq(model: nn.Module, pairs: PairData, *, chunk: int, device: torch.device | str = "cpu",
                     autocast=nullcontext) -> dict[str, float]:
    """Teacher-forced loss, perplexity, token accuracy and whole-target accuracy over all of ``pairs``."""
    total, correct, count, seq_ok = 0.0, 0, 0, 0
    for batch in _batches(pairs, chunk, device):
        with autocast():
            logits = seq2seq_logits(model, batch)
        logits = logits.float()
        t = batch["targets"]
        total += F.cross_entropy(logits.flatten(0, 1), t.flatten(), ignore_index=-1, reduction="sum").item()
        valid = t != -1
        hit = (logits.argmax(-1) == t) & valid
        correct += int(hit.sum())
        count += int(valid.sum())
        seq_ok += int((hit | ~valid).all(dim=1).sum())
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": _ppl(loss), "acc": correct / max(count, 1), "seq_acc": seq_ok / len(pairs)}


@torch.no_grad()
def evaluate_vision(model: nn.Module, images: ImageData, *, chunk: int, device: torch.device | str = "cpu",
                    autocast=nullcontext) -> dict[str, float]:
    """Cross-entropy and accuracy of the class logits over all of ``images``."""
    total, correct = 0.0, 0
    for batch in _batches(images, chunk, device):
        with autocast():
            logits = model(batch["images"])
        logits = logits.float()
        total += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
        correct += int((logits.argmax(-1) == batch["labels"]).sum())
    return {"loss": total / len(images), "acc": correct / len(images)}
