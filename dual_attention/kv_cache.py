"""Key/value caches for incremental (one token at a time) decoding.

Every attention layer that can decode incrementally declares what it must remember of the past through
``cache_spec()``: a mapping from buffer name to the per-position shape, e.g. for relational attention
``{"k_attn": (Hkv, Dk), "v": (Hkv, D), "k_rel": (R, d_r)}``. :class:`KVCache` preallocates one buffer of shape
``(B, max_len, *shape)`` per name, so shapes stay static (friendly to ``torch.compile``), and ``update`` writes the
new positions in place and returns the whole buffer. Positions not yet written hold zeros and are excluded by the
causal mask (a query at position p sees keys j <= p only).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class KVCache(nn.Module):
    """Preallocated buffers ``(B, max_len, *shape)`` for one attention layer."""

    def __init__(
        self,
        spec: dict[str, tuple[int, ...]],
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.batch_size, self.max_len = batch_size, max_len
        self.names = tuple(spec)
        for name, shape in spec.items():
            self.register_buffer(name, torch.zeros(batch_size, max_len, *shape, device=device, dtype=dtype),
                                 persistent=False)

    def update(self, name: str, input_pos: Tensor, value: Tensor) -> Tensor:
        """Write ``value (B, L, *shape)`` at positions ``input_pos (L,)``; return the full buffer."""
        buf: Tensor = getattr(self, name)
        if value.shape[0] != buf.shape[0] or value.shape[2:] != buf.shape[2:]:
            raise ValueError(
                f"cache buffer {name!r} holds (B={buf.shape[0]}, *{tuple(buf.shape[2:])}) per position, "
                f"got a value of shape {tuple(value.shape)}"
            )
        buf.index_copy_(1, input_pos, value.to(buf.dtype))
        return buf

    def reset(self) -> None:
        for name in self.names:
            getattr(self, name).zero_()


class StaticCache(nn.Module):
    """A cache for values computed once and reused at every step (e.g. cross-attention keys/values)."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, Tensor] = {}

    def get(self, name: str) -> Tensor | None:
        return self.values.get(name)

    def set(self, name: str, value: Tensor) -> Tensor:
        self.values[name] = value
        return value

    def reset(self) -> None:
        self.values.clear()
