"""Per-family training logic: batches, summed losses and evaluation.

Every task returns the *summed* loss of a micro-batch and knows the number of loss terms ``N`` of the
whole global batch (tokens for LM and seq2seq, images for vision). The trainer back-propagates
``W * sum_loss / N`` on each of ``W`` processes (DDP/FSDP average the gradients over processes), so
that the gradient is that of the mean loss over the global batch,

    grad = (1/N) sum_{micro m} sum_{rank r} sum_{i in (m, r)} grad loss_i,

exactly as a single process would compute it, whatever the padding per micro-batch.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from dual_attention.training.config import Config, ConfigError
from dual_attention.training.data import (
    DataError,
    LMData,
    PairData,
    Seq2SeqData,
    TokenStream,
    VisionData,
    detect_format,
    epoch_indices,
    load_lm_data,
    load_seq2seq_data,
    load_vision_data,
    micro_slice,
    step_generator,
)
from dual_attention.training.data_spec import DataSpec, describe_data
from dual_attention.training.evaluation import (
    eval_chunk,
    evaluate_lm,
    evaluate_seq2seq,
    evaluate_vision,
    lm_eval_generator,
    seq2seq_logits,
)
from dual_attention.training.tokenizers import CharTokenizer, get_tokenizer

__all__ = ["Task", "LMTask", "Seq2SeqTask", "VisionTask", "make_task"]


class Task:
    """Interface shared by the families (see the module docstring)."""

    family = ""
    spec: DataSpec  # what the data says about the model
    unit = "sample"  # progress-bar unit (``tok/s``)
    units = "samples"  # metrics.jsonl keys (``tokens``, ``tokens_per_s``)

    def __init__(self, cfg: Config, device: torch.device, data: LMData | Seq2SeqData | VisionData):
        self.cfg = cfg
        self.device = device
        self.data = data
        self.tokenizer = getattr(data, "tokenizer", None)
        self.spec = describe_data(self.family, (data.train, data.val, data.test), self.tokenizer)
        self._cache: tuple[int, torch.Tensor] | None = None

    # ---- sizes
    @property
    def units_per_step(self) -> int:
        return self.cfg.train.batch_size

    def global_count(self, step: int) -> int:
        return self.cfg.train.batch_size

    # ---- batches and losses (implemented per family)
    def train_batch(self, step: int, micro: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss_sum(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, autocast=nullcontext) -> dict[str, float] | None:
        raise NotImplementedError

    def state_dict(self) -> dict | None:
        """Data position to checkpoint (None: sampling is a function of the step alone)."""
        return None

    def load_state_dict(self, state: dict | None) -> None:
        """Restore what :meth:`state_dict` returned."""

    def has_split(self, split: str) -> bool:
        return getattr(self.data, split, None) is not None

    def _to(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _micro_rows(self, idx: torch.Tensor, micro: int, rank: int, world: int) -> torch.Tensor:
        t = self.cfg.train
        return idx[micro_slice(t.batch_size, t.grad_accum_steps, world, micro, rank)]

    def _eval_batch_size(self) -> int:
        """Rows per evaluation batch: ``train.eval_batch_size``, default the global ``train.batch_size``."""
        return self.cfg.train.eval_batch_size or self.cfg.train.batch_size

    def _eval_chunk(self) -> int:
        """Rows per forward pass during evaluation (the training micro-batch, so memory is bounded)."""
        t = self.cfg.train
        return eval_chunk(self._eval_batch_size(), t.batch_size // t.grad_accum_steps)

    def describe(self) -> str:
        return ""


class _EpochTask(Task):
    """A task whose training batches are epochs over a finite training set (seq2seq, vision)."""

    def _idx(self, step: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != step:
            idx = epoch_indices(self.cfg.train.seed, step, self.cfg.train.batch_size, len(self.data.train))
            self._cache = (step, idx)
        return self._cache[1]

    def train_batch(self, step, micro, rank, world):
        return self._to(self.data.train.collate(self._micro_rows(self._idx(step), micro, rank, world)))


class LMTask(Task):
    """Next-token prediction on random windows of a token stream."""

    family = "lm"
    unit = "tok"
    units = "tokens"

    def __init__(self, cfg: Config, device: torch.device, data: LMData):
        super().__init__(cfg, device, data)
        m = cfg.model
        self.block = cfg.data.block_size or m.max_block_size
        if self.block > m.max_block_size:
            raise ConfigError(
                f"data.block_size={self.block} exceeds model.max_block_size={m.max_block_size}"
            )
        self.stream = None  # an HFStream (data.train=hf), made on the first batch
        for s in (data.train, data.val, data.test):
            if s is not None:
                s.check_windows(self.block)

    @property
    def units_per_step(self) -> int:
        return self.cfg.train.batch_size * self.block

    def global_count(self, step: int) -> int:
        return self.cfg.train.batch_size * self.block

    @property
    def streaming(self) -> bool:
        return self.data.train is None

    def state_dict(self) -> dict | None:
        """The data position of a streamed source (None for stateless sampling)."""
        return self.stream.state_dict() if self.stream is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        if state is not None:
            self._pending_state = state

    def _starts(self, step: int) -> torch.Tensor:
        if self._cache is None or self._cache[0] != step:
            g = step_generator(self.cfg.train.seed, step)
            self._cache = (step, self.data.train.random_starts(g, self.cfg.train.batch_size, self.block))
        return self._cache[1]

    def train_batch(self, step, micro, rank, world):
        if self.streaming:
            if self.stream is None:
                from dual_attention.training.data_hf import open_hf_stream

                self.stream = open_hf_stream(self.cfg.data, self.tokenizer, self.block, rank, world,
                                             self.cfg.data.hf_val_docs)
                if getattr(self, "_pending_state", None) is not None:
                    self.stream.load_state_dict(self._pending_state)
            t = self.cfg.train
            x, y = self.stream.windows(t.batch_size // (t.grad_accum_steps * world))
            return self._to({"x": x, "y": y})
        starts = self._micro_rows(self._starts(step), micro, rank, world)
        x, y = self.data.train.windows(starts, self.block)
        return self._to({"x": x, "y": y})

    def loss_sum(self, model, batch):
        _, loss = model(batch["x"], targets=batch["y"])
        return loss.float() * batch["y"].numel()

    def evaluate(self, model, split, autocast=nullcontext):
        stream: TokenStream | None = getattr(self.data, split)
        if stream is None:
            return None
        return evaluate_lm(model, stream, block_size=self.block, n_batches=max(self.cfg.train.eval_iters, 1),
                           batch_size=self._eval_batch_size(), chunk=self._eval_chunk(),
                           generator=lm_eval_generator(self.cfg.train.seed, split), device=self.device,
                           autocast=autocast)

    def describe(self) -> str:
        if self.streaming:
            return (f"streaming {self.cfg.data.hf_dataset} ({self.tokenizer.name} tokenizer), block {self.block}, "
                    f"{len(self.data.val):,} val tokens")
        n_train = len(self.data.train)
        n_val = len(self.data.val) if self.data.val is not None else 0
        return f"{n_train:,} train / {n_val:,} val tokens ({self.tokenizer.name} tokenizer), block {self.block}"


class Seq2SeqTask(_EpochTask):
    """Teacher-forced next-token loss of the target given the source, padded per micro-batch."""

    family = "seq2seq"
    unit = "tok"
    units = "tokens"

    @property
    def units_per_step(self) -> int:  # approximate: average target length
        mean_len = float(self.data.train.target_counts.float().mean())
        return int(self.cfg.train.batch_size * mean_len)

    def global_count(self, step: int) -> int:
        return int(self.data.train.target_counts[self._idx(step)].sum())

    def loss_sum(self, model, batch):
        logits = seq2seq_logits(model, batch)
        return F.cross_entropy(
            logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=-1, reduction="sum"
        )

    def evaluate(self, model, split, autocast=nullcontext):
        pairs: PairData | None = getattr(self.data, split)
        if pairs is None:
            return None
        return evaluate_seq2seq(model, pairs, chunk=self._eval_chunk(), device=self.device, autocast=autocast)

    def describe(self) -> str:
        n_val = len(self.data.val) if self.data.val is not None else 0
        return (f"{len(self.data.train):,} train / {n_val:,} val pairs, char vocabulary "
                f"{self.tokenizer.vocab_size}")


class VisionTask(_EpochTask):
    """Image classification with cross-entropy on the model's logits."""

    family = "vision"
    unit = "img"
    units = "images"

    def loss_sum(self, model, batch):
        logits = model(batch["images"])
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum")

    def evaluate(self, model, split, autocast=nullcontext):
        images = getattr(self.data, split)
        if images is None:
            return None
        return evaluate_vision(model, images, chunk=self._eval_chunk(), device=self.device, autocast=autocast)

    def describe(self) -> str:
        n_val = len(self.data.val) if self.data.val is not None else 0
        shape = list(self.data.train.images.shape[1:])
        return f"{len(self.data.train):,} train / {n_val:,} val images {shape}, {self.cfg.model.num_classes} classes"


def _lm_in_memory(obj, name: str) -> TokenStream | None:
    if obj is None:
        return None
    import numpy as np

    if isinstance(obj, str):
        return TokenStream(np.frombuffer(obj.encode("utf-8"), dtype=np.uint8).copy(), name)
    t = torch.as_tensor(obj)
    if t.dim() != 1 or t.is_floating_point():
        raise DataError(f"{name}: expected a 1-D integer token tensor or a str, got shape {list(t.shape)}")
    return TokenStream(t.long(), name)


def make_task(cfg: Config, device: torch.device, train_data=None, val_data=None, test_data=None,
              tokenizer=None) -> Task:
    """Load the data of ``cfg`` (or wrap in-memory data) and return the family's Task.

    In-memory data: LM a 1-D token tensor (or a str, byte-tokenized); seq2seq a list of
    ``(source, target)`` string pairs; vision ``(images, labels)`` tensors or an :class:`ImageData`.
    ``cfg`` is only read: the task's :class:`DataSpec` (``task.spec``) describes the data, and
    :func:`~dual_attention.training.data_spec.derive_model_config` derives the model sizes from it.
    """
    fam = cfg.model.family
    seed = cfg.train.seed
    if fam == "lm":
        if train_data is not None:
            tok = tokenizer or get_tokenizer(cfg.data.tokenizer)
            data = LMData(_lm_in_memory(train_data, "train_data"), _lm_in_memory(val_data, "val_data"),
                          _lm_in_memory(test_data, "test_data"), tok)
        else:
            tok = tokenizer or get_tokenizer(cfg.data.tokenizer)
            fmt = cfg.data.format if cfg.data.format != "auto" else detect_format(cfg.data.train or "", "lm")
            if fmt == "hf":
                from dual_attention.training.data_hf import load_hf_validation

                data = LMData(None, load_hf_validation(cfg.data, tok, cfg.data.hf_val_docs), None, tok)
            else:
                data = load_lm_data(cfg.data, tok, seed=seed)
        return LMTask(cfg, device, data)
    if fam == "seq2seq":
        if train_data is not None:
            tok = tokenizer or CharTokenizer.build(s + t for s, t in train_data)

            def mk(p, n):
                if p is None:
                    return None
                return PairData([tok.encode(s) for s, _ in p], [tok.encode(t) for _, t in p], tok, n)

            data = Seq2SeqData(mk(train_data, "train_data"), mk(val_data, "val_data"), mk(test_data, "test_data"), tok)
        else:
            data = load_seq2seq_data(cfg.data, tokenizer=tokenizer, seed=seed)
        return Seq2SeqTask(cfg, device, data)
    data = load_vision_data(cfg.data, seed=seed, train=train_data, val=val_data, test=test_data)
    return VisionTask(cfg, device, data)
