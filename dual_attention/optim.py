"""Optimizer set-up shared by every model family (re-exported as ``configure_optimizers`` by each model module)."""

from __future__ import annotations

import inspect

import torch
from torch import nn


def configure_optimizers(
    model: nn.Module,
    weight_decay: float,
    learning_rate: float,
    betas: tuple[float, float],
    device_type: str,
    verbose: bool = True,
) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of dim ≥ 2 (matrices, embeddings, ``wr``, symbol libraries) only.

    Biases and norm gains get no decay. Uses the fused AdamW kernel on CUDA.
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    use_fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    if verbose:
        print(f"num decayed parameter tensors: {len(decay)}, with {sum(p.numel() for p in decay):,} parameters")
        print(f"num non-decayed parameter tensors: {len(no_decay)}, with {sum(p.numel() for p in no_decay):,} "
              "parameters")
        print(f"using fused AdamW: {use_fused}")
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **({"fused": True} if use_fused else {}))
