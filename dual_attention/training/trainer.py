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
from dual_attention.training.models import build_model, configure_optimizer, model_class_name
from dual_attention.training.tasks import Task, make_task
from dual_attention.training.tokenizers import load_tokenizer, save_tokenizer

__all__ = ["TrainResult", "RunDirError", "train", "lr_at", "checkpoint_every", "METRICS_FILE", "CONFIG_FILE"]

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
_RUN_MARKERS = (METRICS_FILE, CONFIG_FILE, "checkpoint", "checkpoint.old")


class RunDirError(ValueError):
    """The run directory exists (and neither resume nor overwrite was asked) or cannot be resumed."""


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


def _unwrap(model: nn.Module) -> nn.Module:
    m = model
    if isinstance(m, torch.nn.parallel.DistributedDataParallel):
        m = m.module
    return getattr(m, "_orig_mod", m)


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
    cfg = load_config(cfg)  # a validated deep copy: derived sizes are filled into this one
    info = D.setup(cfg.train.device)
    try:
        return _train(cfg, info, train_data, val_data, test_data, resume, overwrite, callback, verbose)
    finally:
        D.teardown(info)


def _train(cfg: Config, info: D.DistInfo, train_data, val_data, test_data, resume: bool, overwrite: bool,
           callback, verbose: bool) -> TrainResult:
    t_start = time.time()
    tc = cfg.train
    main = info.is_main
    show = verbose and main
    pbar = None

    def say(msg: str) -> None:
        if show:
            if pbar is not None:
                pbar.write(msg, file=sys.stderr)
            else:
                print(msg, file=sys.stderr, flush=True)

    run_dir = Path(tc.out_dir) if tc.out_dir else None
    if resume and run_dir is None:
        raise RunDirError("resume needs train.out_dir (the run directory to continue)")
    clear, resume, note = _check_run_dir(run_dir, resume, overwrite) if run_dir is not None else (False, False, None)
    if note:
        say(note)
    amp_dtype = _resolve_dtype(tc.dtype, info.device)

    ckpt_dir = find_checkpoint(run_dir) if (resume and run_dir is not None) else None
    state = load_trainer_state(ckpt_dir) if ckpt_dir is not None else None
    saved_family = (state or {}).get("config", {}).get("model", {}).get("family", cfg.model.family)
    if saved_family != cfg.model.family:
        raise CheckpointError(
            f"the checkpoint in {str(run_dir)!r} is a {state['config']['model']['family']!r} model but the config "
            f"asks for model.family={cfg.model.family!r}"
        )

    # ---- data, derived sizes, model
    _seed_all(tc.seed)
    tokenizer = load_tokenizer(ckpt_dir) if ckpt_dir is not None else None
    task: Task = make_task(cfg, info.device, train_data, val_data, test_data, tokenizer=tokenizer)
    if state is not None:
        saved_model = state["config"]["model"]
        now_model = config_to_dict(cfg)["model"]
        diff = [k for k in now_model if now_model[k] != saved_model.get(k)]
        if diff:
            k = diff[0]
            raise RunDirError(
                f"cannot resume: model.{k}={now_model[k]!r} differs from the run's {saved_model.get(k)!r}"
            )
    per_rank = tc.batch_size // tc.grad_accum_steps
    if per_rank % info.world:
        raise ConfigError(
            f"train.batch_size / train.grad_accum_steps = {per_rank} is not divisible by the {info.world} processes"
        )

    torch.manual_seed(tc.seed)  # identical initial weights on every process
    model = build_model(cfg.model)
    family = cfg.model.family
    if ckpt_dir is not None:
        from dual_attention.hf import load_weights

        load_weights(model, ckpt_dir / "model.safetensors")  # strict, with the aliases safetensors dropped
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    model.to(info.device)
    raw_model = model

    if tc.fsdp and info.enabled:
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(raw_model):
            fully_shard(block)
        fully_shard(raw_model)
        model = raw_model
    elif info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(raw_model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if tc.compile:
        model = torch.compile(model)

    optimizer = configure_optimizer(raw_model, family, cfg.optim.weight_decay, cfg.optim.learning_rate,
                                    (cfg.optim.beta1, cfg.optim.beta2), info.device.type)
    for g in optimizer.param_groups:
        g["initial_lr"] = cfg.optim.learning_rate
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_at(step, cfg) / cfg.optim.learning_rate
    )
    scaler = torch.amp.GradScaler(info.device.type, enabled=amp_dtype == torch.float16)
    if run_dir is not None:  # everything that can fail on a bad value was built: only now replace the old run
        _create_run_dir(run_dir, clear, info)

    def autocast():
        if amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=info.device.type, dtype=amp_dtype)

    # ---- resume state
    start_iter, tokens_seen, elapsed_before = 0, 0, 0.0
    history: list[dict] = []
    if state is not None:
        start_iter = int(state["iter"])
        tokens_seen = int(state.get("tokens_seen", 0))
        elapsed_before = float(state.get("elapsed_s", 0.0))
        if tc.fsdp and info.enabled:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(raw_model, optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        data_states = state.get("data") or []
        if len(data_states) == info.world:
            task.load_state_dict(data_states[info.rank])
        if len(rng) == info.world:
            restore_rng(rng[info.rank])
        else:
            say(f"resuming with {info.world} processes instead of {len(rng)}: RNG streams are re-seeded")
            _seed_all(tc.seed + 1 + info.rank + start_iter)
        if run_dir is not None and main:
            history = _truncate_metrics(run_dir / METRICS_FILE, start_iter)
        D.barrier(info)
    else:
        _seed_all(tc.seed + 1 + info.rank)  # per-process dropout streams

    if run_dir is not None and main:
        save_config(cfg, run_dir / CONFIG_FILE)
    loggers = _Loggers(run_dir, cfg, main, history, say)

    say(
        f"{model_class_name(cfg.model).removesuffix('_HFHub')}: {n_params / 1e6:.2f}M parameters | "
        f"{task.describe()} | device {info.device.type}"
        f"{'' if amp_dtype is None else ' ' + str(amp_dtype).removeprefix('torch.')}"
        f"{f' x{info.world} processes' + (' (FSDP)' if tc.fsdp else ' (DDP)') if info.enabled else ''}"
        f"{f' | run dir {run_dir}' if run_dir else ''}"
        f"{f' | resuming at iter {start_iter}' if start_iter else ''}"
    )

    # ---- evaluation and checkpoint helpers
    last_eval: dict[str, float] = {}

    def run_eval(it: int, splits=("val",)) -> None:
        eval_model = model if (tc.fsdp and info.enabled) else raw_model
        was_training = raw_model.training
        raw_model.eval()
        for split in splits:
            res = task.evaluate(eval_model, split, autocast)
            if res is None:
                continue
            rec = {"iter": it, "split": split, **{k: float(v) for k, v in res.items()}}
            last_eval.update({f"{split}_{k}": float(v) for k, v in res.items()})
            loggers.log(rec)
            say(f"iter {it}: {split} {_fmt_metrics(res)}")
            if callback is not None and callback(it, rec):
                stop_requested[0] = True
        raw_model.train(was_training)

    def save_checkpoint(it: int) -> None:
        if run_dir is None:
            return
        if tc.fsdp and info.enabled:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            msd = get_model_state_dict(raw_model, options=opts)
            osd = get_optimizer_state_dict(raw_model, optimizer, options=opts)
        else:
            msd, osd = None, optimizer.state_dict()
        rngs = D.gather_objects(capture_rng(), info)
        data_states = D.gather_objects(task.state_dict(), info)
        if main:
            trainer_state = {
                "iter": it,
                "optimizer": osd,
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rngs,
                "data": data_states,
                "tokens_seen": tokens_seen,
                "elapsed_s": elapsed_before + time.time() - t_start,
                "world_size": info.world,
                "config": config_to_dict(cfg),
            }

            def write(d: Path) -> None:
                to_save = raw_model
                if msd is not None:  # FSDP: a plain copy holding the gathered full weights
                    to_save = build_model(cfg.model)
                    to_save.load_state_dict(msd)
                _save_model(to_save, d)
                torch.save(trainer_state, d / STATE_FILE)
                if task.tokenizer is not None:
                    save_tokenizer(task.tokenizer, d)
                save_config(cfg, d / "train_config.yaml")

            atomic_save_dir(run_dir, write)
        D.barrier(info)

    # ---- the loop
    from tqdm.auto import tqdm

    stop_requested = [False]
    it = start_iter
    last_loss: float | None = None
    t_log = time.time()
    units_since = 0
    last_log_it = start_iter
    ckpt_every = checkpoint_every(cfg)
    raw_model.train()
    if start_iter == 0 and tc.eval_interval > 0:
        run_eval(0)
    interrupted = False
    with _Interrupt(say) as intr:
        pbar = tqdm(total=tc.max_iters, initial=start_iter, disable=not (show and tc.progress), unit="it",
                    dynamic_ncols=True, file=sys.stderr, mininterval=0.5, smoothing=0.1)
        try:
            while it < tc.max_iters:
                n_global = task.global_count(it)
                loss_acc = torch.zeros((), device=info.device)
                for micro in range(tc.grad_accum_steps):
                    batch = task.train_batch(it, micro, info.rank, info.world)
                    last_micro = micro == tc.grad_accum_steps - 1
                    sync_ctx = (model.no_sync() if (info.enabled and not last_micro and hasattr(model, "no_sync"))
                                else nullcontext())
                    if tc.fsdp and info.enabled and hasattr(raw_model, "set_requires_gradient_sync"):
                        raw_model.set_requires_gradient_sync(last_micro)
                    with sync_ctx:
                        with autocast():
                            s = task.loss_sum(model, batch)
                        loss = s * (info.world / n_global)
                        scaler.scale(loss).backward()
                    loss_acc += s.detach()
                if cfg.optim.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.optim.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                it += 1
                tokens_seen += task.units_per_step
                units_since += task.units_per_step
                pbar.update(1)

                if it % tc.log_interval == 0 or it == tc.max_iters:
                    D.all_reduce_sum(loss_acc, info)
                    last_loss = float(loss_acc) / n_global
                    dt = max(time.time() - t_log, 1e-9)
                    rate = units_since / dt
                    t_log, units_since = time.time(), 0
                    lr = optimizer.param_groups[0]["lr"]
                    rec = {"iter": it, "split": "train", "loss": last_loss, "lr": lr,
                           task.units: tokens_seen, f"{task.units}_per_s": rate,
                           "elapsed_s": elapsed_before + time.time() - t_start}
                    if info.device.type == "cuda" and family == "lm" and hasattr(raw_model, "estimate_mfu"):
                        # sequences per iteration on this process, seconds per iteration
                        per_iter = dt / max(it - last_log_it, 1)
                        rec["mfu"] = float(raw_model.estimate_mfu(tc.batch_size // info.world, per_iter))
                    last_log_it = it
                    loggers.log(rec)
                    pbar.set_postfix_str(f"loss={last_loss:.4f}, lr={lr:.2e}, {_fmt_count(rate)} {task.unit}/s",
                                         refresh=False)
                    if callback is not None and callback(it, rec):
                        stop_requested[0] = True
                if not math.isfinite(float(loss_acc)):
                    raise FloatingPointError(f"the training loss is {float(loss_acc)} at iter {it}")

                done = it == tc.max_iters
                if tc.eval_interval > 0 and (it % tc.eval_interval == 0 or done):
                    run_eval(it)
                stop = stop_requested[0] or intr.flag
                if info.enabled:
                    flag = torch.tensor(float(stop), device=info.device)
                    stop = bool(D.all_reduce_max(flag, info))
                if done or stop or (ckpt_every and it % ckpt_every == 0):
                    save_checkpoint(it)
                if stop and not done:
                    interrupted = True
                    say(f"stopped at iter {it}; checkpoint saved" + (f" in {run_dir}" if run_dir else ""))
                    break
        finally:
            pbar.close()
            pbar = None
    if it == tc.max_iters and not interrupted and task.has_split("test"):
        run_eval(it, ("test",))
    loggers.close()
    elapsed = elapsed_before + time.time() - t_start
    return TrainResult(
        model=raw_model,
        config=cfg,
        iters=it,
        train_loss=last_loss,
        metrics=dict(last_eval),
        history=loggers.history,
        run_dir=run_dir,
        interrupted=interrupted,
        elapsed_s=elapsed,
        tokenizer=task.tokenizer,
    )


def _blocks(model: nn.Module) -> list[nn.Module]:
    """Transformer blocks to shard individually under FSDP (any ModuleList child named *blocks)."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.split(".")[-1].endswith("blocks"):
            out.extend(mod)
    return out


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
