"""Post-processors for relation maps, as offered by the published visualiser (with its orientation bugs fixed).

Relation maps are ``(..., n, m)`` tensors with ``[..., i, j] = r(x_i, x_j)``: row i is the receiver (query), column
j the sender (key), the layout of attention maps. With a scale factor c applied first (``z = c · r``):

* ``'None'``:              z
* ``'Clip'``:              clip(z, 0, 1)
* ``'Sign'``:              1[z > 0]
* ``'Sigmoid-Normalize'``: σ(z) = 1 / (1 + e^{−z})
* ``'Softmax-Normalize'``: softmax over the senders of each receiver, ``e^{z_ij} / Σ_{j'} e^{z_ij'}``, where a causal
  layer only sums over j' ≤ i and gives 0 to j > i (the upper triangle; the published app masked the lower one).

"Scaled by attention" multiplies matching entries: ``out[r, i, j] = post(c · r_r(x_i, x_j)) · α^h_ij``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["RELATION_POSTPROCESSORS", "future_mask", "postprocess_relations", "scale_by_attention"]

RELATION_POSTPROCESSORS = ("None", "Clip", "Sign", "Sigmoid-Normalize", "Softmax-Normalize")


def future_mask(n: int, m: int | None = None, device=None) -> Tensor:
    """Bool ``(n, m)``, True where sender j > receiver i (the entries a causal layer never uses)."""
    m = n if m is None else m
    return torch.ones(n, m, dtype=torch.bool, device=device).triu(diagonal=1)


def postprocess_relations(maps: Tensor, method: str = "None", scale: float = 1.0, causal: bool = False) -> Tensor:
    """Apply ``method`` (one of :data:`RELATION_POSTPROCESSORS`) to ``scale · maps``; maps ``(..., n, m)``."""
    if method not in RELATION_POSTPROCESSORS:
        raise ValueError(f"method={method!r} is not valid; allowed: {', '.join(RELATION_POSTPROCESSORS)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale={scale!r} is not valid; it must be a positive number")
    if not isinstance(maps, Tensor) or maps.dim() < 2:
        raise ValueError(f"maps must be a tensor (..., n, m), got {type(maps).__name__}")
    z = maps.float() * scale
    if method == "Clip":
        return z.clamp(0.0, 1.0)
    if method == "Sign":
        return (z > 0).to(z.dtype)
    if method == "Sigmoid-Normalize":
        return torch.sigmoid(z)
    if method == "Softmax-Normalize":
        if causal:
            z = z.masked_fill(future_mask(z.shape[-2], z.shape[-1], z.device), float("-inf"))
        return torch.softmax(z, dim=-1)
    return z


def scale_by_attention(relation_maps: Tensor, attn: Tensor) -> Tensor:
    """``relation_maps (..., R, n, m) · attn (..., n, m)``: entry [r, i, j] times α_ij (broadcast over r)."""
    if relation_maps.shape[-2:] != attn.shape[-2:]:
        raise ValueError(f"relation maps {tuple(relation_maps.shape)} and attention {tuple(attn.shape)} must end "
                         "in the same (n, m)")
    return relation_maps * attn.unsqueeze(-3).to(relation_maps.dtype)
