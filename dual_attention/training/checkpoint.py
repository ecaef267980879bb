"""Atomic checkpoints in a run directory.

Layout of ``RUN_DIR/checkpoint/``:

* ``config.json`` + ``model.safetensors``: the model, written by ``save_pretrained`` (loadable with
  :func:`dual_attention.hf.load_pretrained` or ``<Class>_HFHub.from_pretrained``);
* ``trainer_state.pt``: optimizer, scheduler and grad-scaler states, the RNG states of torch (per
  process), numpy and python, the iteration (which is also the data position: sampling is a function
  of the iteration), tokens seen, elapsed time;
* ``tokenizer.json`` and ``train_config.yaml``: what ``dat generate``/``dat eval`` need.

A checkpoint is written to ``checkpoint.tmp/`` first; then ``checkpoint/`` (if any) is renamed to
``checkpoint.old/``, ``checkpoint.tmp/`` to ``checkpoint/`` and ``checkpoint.old/`` removed. Each rename is
atomic, so a crash or ``kill -9`` at any instant leaves either ``checkpoint/`` or ``checkpoint.old/``
complete; :func:`find_checkpoint` picks whichever holds the last good state. A write that fails (a full disk,
a quota) removes ``checkpoint.tmp/`` and raises :class:`CheckpointError`; the previous checkpoint is untouched.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dual_attention.errors import CheckpointError

__all__ = [
    "CHECKPOINT_DIR",
    "STATE_FILE",
    "REQUIRED_FILES",
    "CheckpointError",
    "atomic_save_dir",
    "find_checkpoint",
    "capture_rng",
    "restore_rng",
    "load_trainer_state",
]

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "trainer_state.pt"
REQUIRED_FILES = ("config.json", "model.safetensors")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_save_dir(run_dir: str | Path, write_fn, name: str = CHECKPOINT_DIR) -> Path:
    """Call ``write_fn(tmp_dir)`` to fill a fresh temp dir, then swap it in as ``run_dir/name`` atomically."""
    run_dir = Path(run_dir)
    final = run_dir / name
    tmp = run_dir / f"{name}.tmp"
    old = run_dir / f"{name}.old"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        write_fn(tmp)
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():
            if f.is_file():
                os.chmod(f, 0o666 & ~umask)  # some writers (safetensors) create 0600 files
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
    except OSError as e:  # ENOSPC, EDQUOT, EACCES, ...: keep the previous checkpoint, free the partial one
        shutil.rmtree(tmp, ignore_errors=True)
        kept = find_checkpoint(run_dir)
        still = f"; the previous checkpoint {str(kept)!r} is intact" if kept is not None else ""
        raise CheckpointError(f"cannot write the checkpoint in {str(run_dir)!r}: {e.strerror or e}{still}") from None
    if final.exists():
        if old.exists():
            shutil.rmtree(old)  # stale: ``final`` is good
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(run_dir)
    if old.exists():
        shutil.rmtree(old)
    return final


def _complete(d: Path) -> bool:
    return d.is_dir() and all((d / f).is_file() for f in REQUIRED_FILES)


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint directory for ``path`` (a run dir or a checkpoint dir), or None.

    In a run dir: ``checkpoint/`` if complete, else ``checkpoint.old/`` (left by a crash mid-swap).
    """
    p = Path(path)
    if _complete(p):
        return p
    for name in (CHECKPOINT_DIR, f"{CHECKPOINT_DIR}.old"):
        if _complete(p / name):
            return p / name
    return None


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy, torch (CPU) and CUDA, as plain tensors/lists (weights_only-loadable)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_trainer_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """Read ``trainer_state.pt``; CheckpointError if missing or corrupted."""
    p = Path(ckpt_dir) / STATE_FILE
    if not p.is_file():
        raise CheckpointError(f"{p} is missing: the checkpoint cannot be resumed")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{p} is corrupted ({type(e).__name__}); delete the run or start with --overwrite"
        ) from None
