"""The training loop: ``train(config) -> TrainResult``.

One optimizer step ``t`` (0-based) does, on each of ``W`` processes::

    for m in range(A):                       # gradient accumulation (no_sync except at the last m)
        loss_m = W * sum_loss(micro-batch m of this process) / N_t       # N_t: loss terms in global batch
        backward(loss_m)
    clip ||g||_2 to optim.grad_clip; AdamW step with lr(t) (warmup + cosine); zero grads

so that the update equals that of one process on the whole global batch (see :mod:`.tasks`). Every
``train.eval_interval`` steps the model is evaluated on the validation split; every
``train.checkpoint_interval`` steps (default ``ceil(max_iters / 10)``, at most 1000, independently of evaluation)
and at the end a checkpoint is written atomically (see :mod:`.checkpoint`). ``metrics.jsonl`` gets one JSON line
per log/eval event (non-finite numbers as ``null``).

A run directory is only replaced (``overwrite=True``, or a directory of a run stopped before its first
checkpoint) once the configuration, data, model and optimizer were all built: an invalid value leaves it untouched.

SIGINT/SIGTERM during training finish the current step, save a checkpoint and return with
``interrupted=True`` (a second SIGINT aborts at once).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from dual_attention.errors import RunDirError
from dual_attention.training import distributed as D
from dual_attention.training.checkpoint import (
    STATE_FILE,
    CheckpointError,
    atomic_save_dir,
    capture_rng,
    find_checkpoint,
    load_trainer_state,
    restore_rng,
)
from dual_attention.training.config import Config, ConfigError, config_to_dict, load_config, save_config
from dual_attention.training.data_spec import derive_model_config
from dual_attention.training.mc_eval import make_mc_eval
from dual_attention.training.models import build_model, configure_optimizer, model_class_name
from dual_attention.training.strategy import Strategy, make_strategy
from dual_attention.training.tasks import Task, make_task
from dual_attention.training.tokenizers import load_tokenizer, save_tokenizer

__all__ = ["TrainResult", "RunDirError", "train", "lr_at", "checkpoint_every", "METRICS_FILE", "CONFIG_FILE"]

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
_RUN_MARKERS = (METRICS_FILE, CONFIG_FILE, "checkpoint", "checkpoint.old")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``metrics`` holds the last evaluation (``val_loss``, ``val_acc``/``val_ppl``, ...) and, with a test
    split, ``test_loss``/``test_acc``; ``history`` is every record also written to ``metrics.jsonl``.
    """

    model: nn.Module
    config: Config
    iters: int
    train_loss: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    interrupted: bool = False
    elapsed_s: float = 0.0
    tokenizer: Any = None


def lr_at(step: int, cfg: Config) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine/linear/constant decay.

    lr(t) = lr_max (t+1)/w for t < w; p = clip((t - w)/(T_decay - w), 0, 1);
    cosine: lr_min + (lr_max - lr_min) (1 + cos(pi p))/2.
    """
    o = cfg.optim
    lr_max = o.learning_rate
    lr_min = o.min_lr if o.min_lr is not None else lr_max / 10
    w = o.warmup_iters
    if step < w:
        return lr_max * (step + 1) / w
    if o.schedule == "constant":
        return lr_max
    decay = o.lr_decay_iters or cfg.train.max_iters
    if decay <= w:
        return lr_min
    p = min(max((step - w) / (decay - w), 0.0), 1.0)
    if o.schedule == "linear":
        return lr_max - (lr_max - lr_min) * p
    return lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos(math.pi * p))


# ----------------------------------------------------------------------------------------------------------------
# run directory


def _is_run_dir(p: Path) -> bool:
    return any((p / m).exists() for m in _RUN_MARKERS)


def _check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> tuple[bool, bool, str | None]:
    """Check the run directory (read-only, on every process): ``(clear it first, resume, a note for the user)``.

    A run directory without a checkpoint (a run killed or stopped before its first one) holds nothing to lose
    or to resume: it is started over, with or without ``resume``/``overwrite``.
    """
    if run_dir.is_file():
        raise RunDirError(f"run dir {str(run_dir)!r} is a file")
    exists = run_dir.is_dir() and any(run_dir.iterdir())
    has_checkpoint = exists and find_checkpoint(run_dir) is not None
    if not exists:
        if resume:
            raise RunDirError(f"no checkpoint to resume in {str(run_dir)!r} (expected {run_dir}/checkpoint/)")
        return False, False, None
    if not _is_run_dir(run_dir):
        what = "refusing to overwrite" if overwrite else "cannot use"
        raise RunDirError(f"{what} {str(run_dir)!r}: it is not empty and does not look like a run dir")
    if not has_checkpoint:
        return True, False, f"{run_dir} holds no checkpoint yet (a run stopped before its first one): starting over"
    if resume:
        return False, True, None
    if not overwrite:
        raise RunDirError(
            f"run dir {str(run_dir)!r} already exists: pass --resume to continue it or --overwrite to replace it"
        )
    return True, False, None


def checkpoint_every(cfg: Config) -> int:
    """Steps between checkpoints: ``train.checkpoint_interval``, by default ceil(max_iters / 10) capped at 1000."""
    tc = cfg.train
    if tc.checkpoint_interval is not None:
        return tc.checkpoint_interval
    return min(1000, math.ceil(tc.max_iters / 10))


def _create_run_dir(run_dir: Path, clear: bool, info: D.DistInfo) -> None:
    """Clear (with overwrite) and create the run directory on rank 0, once everything else was validated."""
    D.barrier(info)
    if info.is_main:
        if clear:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    D.barrier(info)


def _json_line(rec: dict) -> str:
    """One strict-JSON line: NaN and infinities (which json.dumps would write as bare NaN) become null."""
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in rec.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def _truncate_metrics(path: Path, upto: int) -> list[dict]:
    """Keep the records of ``metrics.jsonl`` with iter <= ``upto`` (drops what a killed run logged later)."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if rec.get("iter", 0) <= upto:
            kept.append(rec)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(_json_line(r) for r in kept))
    os.replace(tmp, path)
    return kept


# ----------------------------------------------------------------------------------------------------------------
# loggers


class _Loggers:
    """metrics.jsonl (+ TensorBoard, W&B when asked and installed); only on rank 0."""

    def __init__(self, run_dir: Path | None, cfg: Config, active: bool, history: list[dict], say):
        self.history = history
        self.active = active
        self.file = None
        self.tb = None
        self.wandb = None
        if not active:
            return
        if run_dir is not None:
            self.file = open(run_dir / METRICS_FILE, "a", buffering=1)
        if cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tensorboard") if run_dir else None)
            except ImportError:
                say("train.tensorboard=true but tensorboard is not installed (pip install tensorboard); skipping")
        if cfg.train.wandb:
            try:
                import wandb

                self.wandb = wandb.init(project=cfg.train.wandb_project, name=cfg.name, config=config_to_dict(cfg),
                                        dir=str(run_dir) if run_dir else None, resume="allow")
            except ImportError:
                say("train.wandb=true but wandb is not installed (pip install wandb); skipping")

    def log(self, rec: dict) -> None:
        self.history.append(rec)
        if not self.active:
            return
        if self.file is not None:
            self.file.write(_json_line(rec))
        split = rec.get("split", "train")
        scalars = {f"{split}/{k}": v for k, v in rec.items() if k not in ("iter", "split") and isinstance(v, float)}
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, rec["iter"])
        if self.wandb is not None:
            self.wandb.log(scalars, step=rec["iter"])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """None = no autocast (float32)."""
    if name == "float32":
        return None
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if name == "float16" and device.type == "cpu":
        raise ConfigError("train.dtype=float16 needs a GPU; on the CPU use bfloat16 or float32")
    return torch.bfloat16 if name == "bfloat16" else torch.float16


def _fmt_count(n: float) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{suffix}"
    return f"{n:.0f}"


def _fmt_metrics(m: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.4f}" for k, v in m.items())


class _Interrupt:
    """SIGINT/SIGTERM -> a flag the loop polls; a second SIGINT raises KeyboardInterrupt."""

    def __init__(self, say):
        self.flag = False
        self.say = say
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.flag and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.flag = True
        self.say(f"{signal.Signals(signum).name}: finishing this step and saving a checkpoint "
                 "(Ctrl-C again to abort)")

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# ----------------------------------------------------------------------------------------------------------------
# the entry point


def train(
    config: Config | str | dict,
    *,
    train_data=None,
    val_data=None,
    test_data=None,
    resume: bool = False,
    overwrite: bool = False,
    callback: Callable[[int, dict], bool | None] | None = None,
    verbose: bool = True,
) -> TrainResult:
    """Train the model described by ``config`` and return a :class:`TrainResult`.

    Args:
        config: a Config, a preset name, a YAML path or a nested dict.
        train_data, val_data, test_data: optional in-memory data instead of ``config.data`` (vision:
            ``(images [N,C,H,W], labels [N])``; LM: 1-D token tensor or str; seq2seq: list of string pairs).
        resume: continue the run in ``config.train.out_dir`` from its checkpoint (same losses as an
            uninterrupted run).
        overwrite: replace an existing run directory.
        callback: called as ``callback(iter, record)`` after every logged step and evaluation; returning
            True stops training (a checkpoint is saved, as for Ctrl-C).
        verbose: print the start banner and evaluation lines (rank 0).

    Raises:
        ConfigError, DataError, RunDirError, CheckpointError (all ValueError) for user errors.
    """
    cfg = config if isinstance(config, Config) else load_config(config)
    cfg = load_config(cfg)  # a validated copy: the result's config (with the data-derived sizes) is a new one
    info = D.setup(cfg.train.device)
    try:
        return _train(cfg, info, train_data, val_data, test_data, resume, overwrite, callback, verbose)
    finally:
        D.teardown(info)


class _Console:
    """Messages on stderr from rank 0 (through the progress bar while there is one)."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.pbar = None

    def say(self, msg: str) -> None:
        if not self.show:
            return
        if self.pbar is not None:
            self.pbar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)


@dataclass
class _Run:
    """What one training run holds once built; the step, evaluation and checkpoint functions take it."""

    cfg: Config
    strategy: Strategy
    task: Task
    model: nn.Module  # what the loop calls (wrapped, compiled)
    raw_model: nn.Module  # the plain module (its parameters are the ones optimized)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    run_dir: Path | None
    console: _Console
    callback: Callable[[int, dict], bool | None] | None
    t_start: float
    start_iter: int = 0
    tokens_seen: int = 0
    elapsed_before: float = 0.0
    loggers: Any = None
    last_eval: dict[str, float] = field(default_factory=dict)
    stop_requested: bool = False
    mc_eval: Callable | None = None  # train.mc_eval_file's scorer (see .mc_eval)

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.strategy.info.device.type, dtype=self.amp_dtype)

    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t_start

    def notify(self, it: int, rec: dict) -> None:
        """Log ``rec`` and pass it to the user's callback (which may ask to stop)."""
        self.loggers.log(rec)
        if self.callback is not None and self.callback(it, rec):
            self.stop_requested = True


def _train(cfg: Config, info: D.DistInfo, train_data, val_data, test_data, resume: bool, overwrite: bool,
           callback, verbose: bool) -> TrainResult:
    console = _Console(verbose and info.is_main)
    run = _build_run(cfg, info, (train_data, val_data, test_data), resume, overwrite, callback, console)
    it, interrupted, last_loss = _loop(run)
    if it == run.cfg.train.max_iters and not interrupted and run.task.has_split("test"):
        _evaluate(run, it, ("test",))
    run.loggers.close()
    return TrainResult(model=run.raw_model, config=run.cfg, iters=it, train_loss=last_loss, metrics=dict(run.last_eval),
                       history=run.loggers.history, run_dir=run.run_dir, interrupted=interrupted,
                       elapsed_s=run.elapsed(), tokenizer=run.task.tokenizer)


# ----------------------------------------------------------------------------------------------------------------
# building a run


def _open_resume_state(cfg: Config, run_dir: Path | None, resume: bool) -> tuple[Path | None, dict | None]:
    """The checkpoint dir and trainer state to resume from (None, None for a fresh run)."""
    if not resume or run_dir is None:
        return None, None
    ckpt_dir = find_checkpoint(run_dir)
    state = load_trainer_state(ckpt_dir)
    saved_family = state.get("config", {}).get("model", {}).get("family", cfg.model.family)
    if saved_family != cfg.model.family:
        raise CheckpointError(
            f"the checkpoint in {str(run_dir)!r} is a {saved_family!r} model but the config "
            f"asks for model.family={cfg.model.family!r}"
        )
    return ckpt_dir, state


def _check_same_model(cfg: Config, state: dict | None) -> None:
    """Resuming needs the model config the run was started with (after sizes were derived from the data)."""
    if state is None:
        return
    saved_model = state["config"]["model"]
    now_model = config_to_dict(cfg)["model"]
    diff = [k for k in now_model if now_model[k] != saved_model.get(k)]
    if diff:
        k = diff[0]
        raise RunDirError(f"cannot resume: model.{k}={now_model[k]!r} differs from the run's {saved_model.get(k)!r}")


def _build_optimization(cfg: Config, raw_model: nn.Module, device: torch.device, amp_dtype):
    """AdamW (via the family's ``configure_optimizers``), the warmup/decay schedule and the float16 grad scaler."""
    optimizer = configure_optimizer(raw_model, cfg.model.family, cfg.optim.weight_decay, cfg.optim.learning_rate,
                                    (cfg.optim.beta1, cfg.optim.beta2), device.type)
    for g in optimizer.param_groups:
        g["initial_lr"] = cfg.optim.learning_rate
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, cfg) / cfg.optim.learning_rate)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return optimizer, scheduler, scaler


def _build_run(cfg: Config, info: D.DistInfo, data: tuple, resume: bool, overwrite: bool, callback,
               console: _Console) -> _Run:
    """Everything that can fail on a bad value is built first; only then is an old run directory replaced."""
    tc = cfg.train
    t_start = time.time()
    run_dir = Path(tc.out_dir) if tc.out_dir else None
    if resume and run_dir is None:
        raise RunDirError("resume needs train.out_dir (the run directory to continue)")
    clear, resume, note = _check_run_dir(run_dir, resume, overwrite) if run_dir is not None else (False, False, None)
    if note:
        console.say(note)
    amp_dtype = _resolve_dtype(tc.dtype, info.device)
    ckpt_dir, state = _open_resume_state(cfg, run_dir, resume)

    _seed_all(tc.seed)
    tokenizer = load_tokenizer(ckpt_dir) if ckpt_dir is not None else None
    task: Task = make_task(cfg, info.device, *data, tokenizer=tokenizer)
    mc_eval = make_mc_eval(cfg, task.tokenizer, info.device)  # None unless train.mc_eval_file
    cfg = dataclasses.replace(cfg, model=derive_model_config(cfg.model, task.spec))  # the sizes the data implies
    _check_same_model(cfg, state)
    per_rank = tc.batch_size // tc.grad_accum_steps
    if per_rank % info.world:
        raise ConfigError(
            f"train.batch_size / train.grad_accum_steps = {per_rank} is not divisible by the {info.world} processes"
        )

    torch.manual_seed(tc.seed)  # identical initial weights on every process
    raw_model = build_model(cfg.model)
    if ckpt_dir is not None:
        from dual_attention.hf import load_weights

        load_weights(raw_model, ckpt_dir / "model.safetensors")  # strict, with the aliases safetensors dropped
    raw_model.to(info.device)
    strategy = make_strategy(info, tc.fsdp)
    model = strategy.wrap(raw_model)
    if tc.compile:
        model = torch.compile(model)
    optimizer, scheduler, scaler = _build_optimization(cfg, raw_model, info.device, amp_dtype)
    if run_dir is not None:  # everything that can fail on a bad value was built: only now replace the old run
        _create_run_dir(run_dir, clear, info)

    run = _Run(cfg, strategy, task, model, raw_model, optimizer, scheduler, scaler, amp_dtype, run_dir, console,
               callback, t_start, mc_eval=mc_eval)
    history = _restore(run, state) if state is not None else []
    if state is None:
        _seed_all(tc.seed + 1 + info.rank)  # per-process dropout streams
    if run_dir is not None and info.is_main:
        save_config(cfg, run_dir / CONFIG_FILE)
    run.loggers = _Loggers(run_dir, cfg, info.is_main, history, console.say)
    console.say(_banner(run))
    return run


def _restore(run: _Run, state: dict) -> list[dict]:
    """Load the optimizer, schedule, scaler, RNG and data positions of a checkpoint; the metrics kept so far."""
    info = run.strategy.info
    run.start_iter = int(state["iter"])
    run.tokens_seen = int(state.get("tokens_seen", 0))
    run.elapsed_before = float(state.get("elapsed_s", 0.0))
    run.strategy.load_optimizer_state(run.optimizer, state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    data_states = state.get("data") or []
    if len(data_states) == info.world:
        run.task.load_state_dict(data_states[info.rank])
    if len(rng) == info.world:
        restore_rng(rng[info.rank])
    else:
        run.console.say(f"resuming with {info.world} processes instead of {len(rng)}: RNG streams are re-seeded")
        _seed_all(run.cfg.train.seed + 1 + info.rank + run.start_iter)
    history = []
    if run.run_dir is not None and info.is_main:
        history = _truncate_metrics(run.run_dir / METRICS_FILE, run.start_iter)
    run.strategy.barrier()
    return history


def _banner(run: _Run) -> str:
    cfg, info = run.cfg, run.strategy.info
    n_params = sum(p.numel() for p in {id(p): p for p in run.raw_model.parameters()}.values())
    dtype = "" if run.amp_dtype is None else " " + str(run.amp_dtype).removeprefix("torch.")
    procs = f" x{info.world} processes{run.strategy.label}" if info.enabled else ""
    return (f"{model_class_name(cfg.model).removesuffix('_HFHub')}: {n_params / 1e6:.2f}M parameters | "
            f"{run.task.describe()} | device {info.device.type}{dtype}{procs}"
            f"{f' | run dir {run.run_dir}' if run.run_dir else ''}"
            f"{f' | resuming at iter {run.start_iter}' if run.start_iter else ''}")


# ----------------------------------------------------------------------------------------------------------------
# one step, evaluation, checkpoints, the loop


def _train_step(run: _Run, it: int) -> tuple[torch.Tensor, int]:
    """One optimizer step on the global batch of iteration ``it``: (sum of the losses on this process, N_t)."""
    tc, info = run.cfg.train, run.strategy.info
    n_global = run.task.global_count(it)
    loss_acc = torch.zeros((), device=info.device)
    for micro in range(tc.grad_accum_steps):
        batch = run.task.train_batch(it, micro, info.rank, info.world)
        with run.strategy.sync(last_micro=micro == tc.grad_accum_steps - 1):
            with run.autocast():
                s = run.task.loss_sum(run.model, batch)
            run.scaler.scale(s * (info.world / n_global)).backward()
        loss_acc += s.detach()
    if run.cfg.optim.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), run.cfg.optim.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    run.tokens_seen += run.task.units_per_step
    return loss_acc, n_global


def _evaluate(run: _Run, it: int, splits=("val",)) -> None:
    """Evaluate on each split, log the records and print one line each."""
    was_training = run.raw_model.training
    run.raw_model.eval()
    for split in splits:
        res = run.task.evaluate(run.strategy.eval_model(), split, run.autocast)
        if res is None:
            continue
        run.last_eval.update({f"{split}_{k}": float(v) for k, v in res.items()})
        run.console.say(f"iter {it}: {split} {_fmt_metrics(res)}")
        run.notify(it, {"iter": it, "split": split, **{k: float(v) for k, v in res.items()}})
    if run.mc_eval is not None and "val" in splits:
        res = run.mc_eval(run.strategy.eval_model(), run.autocast)
        run.last_eval.update({f"mc_{k}": v for k, v in res.items()})
        run.console.say(f"iter {it}: mc {_fmt_metrics(res)}")
        run.notify(it, {"iter": it, "split": "mc", **res})
    run.raw_model.train(was_training)


def _save_checkpoint(run: _Run, it: int) -> None:
    """Gather the full state on rank 0 and write it atomically to ``run_dir/checkpoint``."""
    if run.run_dir is None:
        return
    strategy, cfg = run.strategy, run.cfg
    msd, osd = strategy.model_state(), strategy.optimizer_state(run.optimizer)
    rngs = strategy.gather(capture_rng())
    data_states = strategy.gather(run.task.state_dict())
    if strategy.info.is_main:
        trainer_state = {
            "iter": it, "optimizer": osd, "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "rng": rngs, "data": data_states, "tokens_seen": run.tokens_seen, "elapsed_s": run.elapsed(),
            "world_size": strategy.info.world, "config": config_to_dict(cfg),
        }

        def write(d: Path) -> None:
            to_save = run.raw_model
            if msd is not None:  # FSDP: a plain copy holding the gathered full weights
                to_save = build_model(cfg.model)
                to_save.load_state_dict(msd)
            _save_model(to_save, d)
            torch.save(trainer_state, d / STATE_FILE)
            if run.task.tokenizer is not None:
                save_tokenizer(run.task.tokenizer, d)
            save_config(cfg, d / "train_config.yaml")

        atomic_save_dir(run.run_dir, write)
    strategy.barrier()


class _Meter:
    """The train record of a log step: the loss summed over processes, the throughput since the last one."""

    def __init__(self, it: int) -> None:
        self.t, self.units, self.it = time.time(), 0, it

    def record(self, run: _Run, it: int, loss_sum: torch.Tensor, n_global: int) -> dict:
        run.strategy.sum(loss_sum)
        dt = max(time.time() - self.t, 1e-9)
        rec = {"iter": it, "split": "train", "loss": float(loss_sum) / n_global,
               "lr": run.optimizer.param_groups[0]["lr"], run.task.units: run.tokens_seen,
               f"{run.task.units}_per_s": self.units / dt, "elapsed_s": run.elapsed()}
        info = run.strategy.info
        if info.device.type == "cuda" and run.cfg.model.family == "lm" and hasattr(run.raw_model, "estimate_mfu"):
            per_iter = dt / max(it - self.it, 1)  # seconds per iteration; sequences per iteration on this process
            rec["mfu"] = float(run.raw_model.estimate_mfu(run.cfg.train.batch_size // info.world, per_iter))
        self.t, self.units, self.it = time.time(), 0, it
        return rec


def _loop(run: _Run) -> tuple[int, bool, float | None]:
    """Train from ``run.start_iter`` to ``max_iters``: ``(last iteration, interrupted, last train loss)``."""
    from tqdm.auto import tqdm

    tc, console = run.cfg.train, run.console
    it, last_loss, interrupted = run.start_iter, None, False
    meter, ckpt_every = _Meter(it), checkpoint_every(run.cfg)
    run.raw_model.train()
    if it == 0 and tc.eval_interval > 0:
        _evaluate(run, 0)
    with _Interrupt(console.say) as intr:
        pbar = console.pbar = tqdm(total=tc.max_iters, initial=it, disable=not (console.show and tc.progress),
                                   unit="it", dynamic_ncols=True, file=sys.stderr, mininterval=0.5, smoothing=0.1)
        try:
            while it < tc.max_iters:
                loss_sum, n_global = _train_step(run, it)
                it += 1
                meter.units += run.task.units_per_step
                pbar.update(1)
                done = it == tc.max_iters
                if it % tc.log_interval == 0 or done:
                    rec = meter.record(run, it, loss_sum, n_global)
                    last_loss = rec["loss"]
                    pbar.set_postfix_str(f"loss={last_loss:.4f}, lr={rec['lr']:.2e}, "
                                         f"{_fmt_count(rec[f'{run.task.units}_per_s'])} {run.task.unit}/s",
                                         refresh=False)
                    run.notify(it, rec)
                if not math.isfinite(float(loss_sum)):
                    raise FloatingPointError(f"the training loss is {float(loss_sum)} at iter {it}")
                if tc.eval_interval > 0 and (it % tc.eval_interval == 0 or done):
                    _evaluate(run, it)
                stop = run.strategy.any(run.stop_requested or intr.flag)
                if done or stop or (ckpt_every and it % ckpt_every == 0):
                    _save_checkpoint(run, it)
                if stop and not done:
                    interrupted = True
                    where = f" in {run.run_dir}" if run.run_dir else ""
                    console.say(f"stopped at iter {it}; checkpoint saved{where}")
                    break
        finally:
            pbar.close()
            console.pbar = None
    return it, interrupted, last_loss


def _save_model(model: nn.Module, directory: Path) -> None:
    """save_pretrained (config.json + model.safetensors); a plain safetensors file for other modules."""
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(str(directory))
        readme = directory / "README.md"
        if readme.exists():
            readme.unlink()
    else:
        from safetensors.torch import save_model

        save_model(model, str(directory / "model.safetensors"))
        (directory / "config.json").write_text("{}")
