"""Key/value caches for incremental (one token at a time) decoding.

Every attention layer that can decode incrementally declares what it must remember of the past through
``cache_spec()``: a mapping from buffer name to the per-position shape, e.g. for relational attention
``{"k_attn": (Hkv, Dk), "v": (Hkv, D), "k_rel": (R, d_r)}``. :class:`KVCache` preallocates one buffer per name, so
shapes stay static (friendly to ``torch.compile``) and nothing is reallocated while decoding; ``update`` writes the
new positions in place and returns the whole buffer as a ``(B, max_len, *shape)`` tensor. Positions not yet written
hold zeros and are excluded by the causal mask (a query at position p sees keys j <= p only).

Storage layout: per-head buffers (per-position shape ``(heads, dim)``) are stored head-major, ``(B, heads, max_len,
dim)``, and handed out as a ``(B, max_len, heads, dim)`` view, so the attention layers' ``transpose(1, 2)`` gives
them a contiguous ``(B, heads, max_len, dim)`` operand and no step copies the cache. Buffers consumed position by
position (the relation keys ``k_rel``, read as ``(B, max_len, R·d_r)``) are stored position-major.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: buffers kept position-major (read as ``(B, max_len, -1)``), whatever their per-position shape
POSITION_MAJOR = frozenset({"k_rel"})


class KVCache(nn.Module):
    """Preallocated buffers, each seen as ``(B, max_len, *shape)``, for one attention layer.

    Args:
        spec: buffer name → per-position shape.
        batch_size, max_len: sequences and positions held.
        device, dtype: of the buffers (the model's).
        position_major: names stored ``(B, max_len, *shape)``; the other 2-D shapes are stored head-major.
    """

    def __init__(
        self,
        spec: dict[str, tuple[int, ...]],
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        position_major: frozenset[str] | set[str] = POSITION_MAJOR,
    ) -> None:
        super().__init__()
        self.batch_size, self.max_len = batch_size, max_len
        self.names = tuple(spec)
        self.head_major = tuple(name for name, shape in spec.items()
                                if len(shape) == 2 and name not in position_major)
        for name, shape in spec.items():
            if name in self.head_major:
                storage = torch.zeros(batch_size, shape[0], max_len, shape[1], device=device, dtype=dtype)
            else:
                storage = torch.zeros(batch_size, max_len, *shape, device=device, dtype=dtype)
            self.register_buffer(name, storage, persistent=False)

    def buffer(self, name: str) -> Tensor:
        """The buffer ``name`` as ``(B, max_len, *shape)`` (a view of the storage)."""
        buf: Tensor = getattr(self, name)
        return buf.transpose(1, 2) if name in self.head_major else buf  # (B, max_len, heads, dim)

    def update(self, name: str, input_pos: Tensor, value: Tensor) -> Tensor:
        """Write ``value (B, L, *shape)`` at positions ``input_pos (L,)``; return the whole buffer (:meth:`buffer`)."""
        buf = self.buffer(name)
        if value.shape[0] != buf.shape[0] or value.shape[2:] != buf.shape[2:]:
            raise ValueError(
                f"cache buffer {name!r} holds (B={buf.shape[0]}, *{tuple(buf.shape[2:])}) per position, "
                f"got a value of shape {tuple(value.shape)}"
            )
        storage: Tensor = getattr(self, name)
        value = value.to(storage.dtype)
        # write into the storage itself, not through the transposed view: under torch.compile a write through a
        # view becomes a copy of the whole buffer, a direct index_copy_ stays in place
        if name in self.head_major:
            storage.index_copy_(2, input_pos, value.transpose(1, 2))  # (B, heads, L, dim)
        else:
            storage.index_copy_(1, input_pos, value)
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


def cache_length(cache: nn.Module) -> int:
    """The positions a (possibly nested) per-layer cache holds: the ``max_len`` of its first :class:`KVCache`."""
    for module in cache.modules():
        if isinstance(module, KVCache):
            return module.max_len
    raise ValueError(f"{type(cache).__name__} holds no KVCache")


def decoding_positions(kv_cache: nn.Module | None, input_pos: Tensor | None) -> Tensor | None:
    """The query positions of a cached decoding step: ``input_pos`` when a ``kv_cache`` is given (a ``ValueError``
    without it), else None (a full forward, queries at ``0..L-1``)."""
    if kv_cache is None:
        return None
    if input_pos is None:
        raise ValueError("input_pos is required when a KVCache is given")
    return input_pos
