"""Process-group setup for ``torchrun`` launches, and small collective helpers.

Under ``torchrun`` the environment holds ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup`
then initialises the default process group (``nccl`` on CUDA, ``gloo`` on CPU) and picks the device
``cuda:LOCAL_RANK``. Without those variables (or with ``WORLD_SIZE=1``) it is a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "resolve_device", "setup", "teardown", "barrier", "all_reduce_sum", "all_reduce_max",
           "gather_objects"]


@dataclass
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes, its ``device``, whether it owns the group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def resolve_device(requested: str, what: str = "train.device", local_rank: int = 0) -> torch.device:
    """The device for ``requested`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``); ConfigError naming ``what``
    when it is unknown or not available on this machine."""
    from dual_attention.training.config import ConfigError

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("cpu")
    try:
        dev = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{what}={requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what}={requested!r} but CUDA is not available on this machine; use cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        elif dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{what}={requested!r} but this machine has {torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{what}={requested!r} but MPS is not available on this machine; use cpu or auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{what}={requested!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    return dev


def setup(device: str = "auto") -> DistInfo:
    """Initialise distributed training if launched by torchrun (or with RANK/WORLD_SIZE set)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device, "train.device", local_rank)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, False)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        owns = True
    return DistInfo(rank, world, local_rank, dev, owns)


def teardown(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_max(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def gather_objects(obj, info: DistInfo) -> list:
    """All processes' ``obj`` (a list of one element without distribution)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world
    dist.all_gather_object(out, obj)
    return out
