"""How a model is spread over processes: one object per strategy (single process, DDP, FSDP).

A :class:`Strategy` owns everything that differs between them, so that the training loop has no branch on it:

* ``wrap(model)``: the module the loop calls (``DistributedDataParallel``, or ``fully_shard`` per block);
* ``sync(last_micro)``: a context for one micro-batch; gradients are synchronised only at the last one;
* ``eval_model()``: the module to evaluate (FSDP needs the sharded one, the others the plain one);
* ``model_state()``/``optimizer_state()``/``load_optimizer_state()``: full (gathered) states for checkpoints;
* collectives: ``barrier``, ``sum``, ``any`` and ``gather`` (no-ops or single-element lists in one process).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn

from dual_attention.training import distributed as D

__all__ = ["Strategy", "DDPStrategy", "FSDPStrategy", "make_strategy"]


class Strategy:
    """One process: no wrapping, no synchronisation, trivial collectives."""

    label = ""

    def __init__(self, info: D.DistInfo) -> None:
        self.info = info
        self.raw: nn.Module | None = None
        self.wrapped: nn.Module | None = None

    # ---- the model
    def wrap(self, model: nn.Module) -> nn.Module:
        """Remember ``model`` (already on the device) and return the module the loop trains."""
        self.raw = self.wrapped = model
        return model

    def sync(self, last_micro: bool):
        """The context of one micro-batch's backward pass (gradient all-reduce only at the last one)."""
        return nullcontext()

    def eval_model(self) -> nn.Module:
        return self.raw

    def model_state(self) -> dict[str, torch.Tensor] | None:
        """The full weights when they must be gathered (FSDP), else None: the raw model holds them."""
        return None

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        optimizer.load_state_dict(state)

    # ---- collectives
    def barrier(self) -> None:
        D.barrier(self.info)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return D.all_reduce_sum(x, self.info)

    def any(self, flag: bool) -> bool:
        """True on every process if ``flag`` is True on one (e.g. a stop asked on one rank)."""
        if not self.info.enabled:
            return flag
        return bool(D.all_reduce_max(torch.tensor(float(flag), device=self.info.device), self.info))

    def gather(self, obj: Any) -> list:
        return D.gather_objects(obj, self.info)


class DDPStrategy(Strategy):
    """DistributedDataParallel: every process holds the whole model; ``no_sync`` during accumulation."""

    label = " (DDP)"

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.raw = model
        dev = self.info.device
        self.wrapped = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
        return self.wrapped

    def sync(self, last_micro: bool):
        return nullcontext() if last_micro else self.wrapped.no_sync()


class FSDPStrategy(Strategy):
    """FSDP2 (``fully_shard`` per transformer block, then the whole model); full states gathered to save."""

    label = " (FSDP)"

    def wrap(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        for block in _blocks(model):
            fully_shard(block)
        fully_shard(model)
        self.raw = self.wrapped = model
        return model

    def sync(self, last_micro: bool):
        if hasattr(self.raw, "set_requires_gradient_sync"):
            self.raw.set_requires_gradient_sync(last_micro)
        return nullcontext()

    def eval_model(self) -> nn.Module:
        return self.wrapped

    @staticmethod
    def _options():
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def model_state(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.raw, options=self._options())

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(self.raw, optimizer, options=self._options())

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.raw, optimizer, state, options=StateDictOptions(full_state_dict=True))


def make_strategy(info: D.DistInfo, fsdp: bool) -> Strategy:
    """The strategy for this launch: one process, or ``torchrun`` with DDP (default) or FSDP (``fsdp=True``)."""
    if not info.enabled:
        return Strategy(info)
    return FSDPStrategy(info) if fsdp else DDPStrategy(info)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """Transformer blocks to shard individually under FSDP (any ModuleList child named *blocks)."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and name.split(".")[-1].endswith("blocks"):
            out.extend(mod)
    return out
