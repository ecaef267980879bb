"""The symbol values of relational attention in their three forms, each knowing how it is attended.

Relational attention (and RCA, DisRCA) sends, from sender j to receiver i, a value computed from the sender's
symbol: ``v_j^g = W_s^g s_j``. The symbols come in three forms, and so do their values:

* :class:`TokenValues`: one value per sender, ``(B, K, Lk, D)`` (symbolic attention, positional symbols);
* :class:`PairValues`: one value per (receiver, sender) pair, ``(B, K, Lq, Lk, D)`` (the published ``[n, n, d]``
  position-relative symbols, projected pair by pair);
* :class:`RelativeSymbols`: position-relative symbols in compact form, a table of ``2M + 1`` rows indexed by the
  clipped offset, ``s_ij = table[clip(j − i, −M, M) + M]``; the same class holds the symbols ``(2M+1, d)`` and,
  once projected by W_s, their values ``(2M+1, K, D)``.

Each form attends weights ``(B, H, Lq, Lk)`` (:meth:`attend`), gives the values of a block of queries
(:meth:`query_block`), and keeps what incremental decoding needs in a KV cache (:meth:`cached`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dual_attention.attention_utils import expand_heads, grouped_matmul, positions, relative_offsets


@dataclass
class TokenValues:
    """One value per sender: ``tensor (B, K, Lk, D)``."""

    tensor: Tensor
    form = "token"

    def attend(self, weights: Tensor, q_pos: Tensor | None = None) -> Tensor:
        """``Σ_j w_ij^h v_j^g`` → ``(B, H, Lq, D)``."""
        return grouped_matmul(weights, self.tensor)

    def query_block(self, start: int, end: int) -> TokenValues:
        return self

    def cached(self, kv_cache, input_pos: Tensor) -> TokenValues:
        """Write the new values into the cache buffer ``'v'``; the values of every cached position."""
        return TokenValues(kv_cache.update("v", input_pos, self.tensor.transpose(1, 2)).transpose(1, 2))


@dataclass
class PairValues:
    """One value per (receiver, sender) pair: ``tensor (B, K, Lq, Lk, D)``."""

    tensor: Tensor
    form = "pair"

    def attend(self, weights: Tensor, q_pos: Tensor | None = None) -> Tensor:
        n_rep = weights.shape[1] // self.tensor.shape[1]
        v = self.tensor.repeat_interleave(n_rep, dim=1) if n_rep > 1 else self.tensor  # (B, H, Lq, Lk, D)
        return torch.einsum("bhij,bhijd->bhid", weights, v.to(weights.dtype))

    def query_block(self, start: int, end: int) -> PairValues:
        return PairValues(self.tensor[:, :, start:end])

    def cached(self, kv_cache, input_pos: Tensor) -> PairValues:
        raise ValueError("incremental decoding needs RelativeSymbols, not a materialised [n, n, d] tensor")


@dataclass
class RelativeSymbols:
    """Position-relative symbols (or their values) in compact form: ``s_ij = table[clip(j − i, −M, M) + M]``.

    Attributes:
        table: ``(2M + 1, d)`` symbols, or ``(2M + 1, K, D)`` values (:meth:`project`).
        max_rel_pos: M; offsets beyond ±M are clipped.

    :meth:`materialize` gives the published ``(Lq, Lk, d)`` tensor.
    """

    table: Tensor
    max_rel_pos: int
    form = "relative"

    def offsets(self, q_pos: Tensor, k_len: int) -> Tensor:
        """Index ``(Lq, Lk)`` into ``table``: clip(j − p_i, −M, M) + M."""
        return relative_offsets(q_pos, torch.arange(k_len, device=q_pos.device), self.max_rel_pos)

    def materialize(self, length_q: int, length_k: int | None = None) -> Tensor:
        """``(Lq, Lk, *table.shape[1:])``: the symbol of every pair (queries at ``0..Lq-1``)."""
        length_k = length_q if length_k is None else length_k
        return self.table[self.offsets(torch.arange(length_q, device=self.table.device), length_k)]

    def project(self, proj: nn.Module, n_kv_heads: int, head_dim: int) -> RelativeSymbols:
        """The values ``W_s s_δ`` of every offset δ: a table ``(2M + 1, K, D)``."""
        return RelativeSymbols(proj(self.table).view(-1, n_kv_heads, head_dim), self.max_rel_pos)

    def attend(self, weights: Tensor, q_pos: Tensor | None = None) -> Tensor:
        """``Σ_j w_ij T[clip(j − p_i)]``, summed by offset: ``band[i, δ] = Σ_{j: clip(j − p_i) = δ} w_ij``, then
        ``band @ table``, O(Lq·Lk + Lq·M·D) instead of the O(Lq·Lk·D) of gathering a value per pair."""
        b, n_heads, lq, lk = weights.shape
        n_rep = n_heads // self.table.shape[1]
        idx = self.offsets(positions(lq, q_pos, weights.device), lk).expand(b, n_heads, lq, lk)  # (B, H, Lq, Lk)
        band = weights.new_zeros(b, n_heads, lq, self.table.shape[0]).scatter_add_(-1, idx, weights)
        table = expand_heads(self.table.permute(1, 0, 2)[None], n_rep)[0]  # (H, 2M+1, D)
        return torch.matmul(band, table.to(band.dtype))  # (B, H, Lq, D)

    def query_block(self, start: int, end: int) -> RelativeSymbols:
        return self

    def cached(self, kv_cache, input_pos: Tensor) -> RelativeSymbols:
        return self  # the table serves every position: nothing to cache


#: the former name of the projected form (the two held the same data)
RelativeSymbolValues = RelativeSymbols

SymbolValues = TokenValues | PairValues | RelativeSymbols


def symbol_values(symbols, proj: nn.Module, n_kv_heads: int, head_dim: int, batch_size: int,
                  pairwise: bool) -> SymbolValues:
    """The values ``W_s s`` of ``symbols`` in their form: :class:`RelativeSymbols` stay compact; a tensor is per
    pair when ``pairwise`` (the published ``[n, n, d]`` relative symbols), else per token ``(B or 1, n, d)``."""
    if isinstance(symbols, RelativeSymbols):
        return symbols.project(proj, n_kv_heads, head_dim)
    if pairwise:
        lq, lk = symbols.shape[:2]
        v = proj(symbols).view(lq, lk, n_kv_heads, head_dim)  # (Lq, Lk, K, D)
        return PairValues(v.permute(2, 0, 1, 3)[None].expand(batch_size, -1, -1, -1, -1))  # (B, K, Lq, Lk, D)
    v = proj(symbols).view(symbols.shape[0], symbols.shape[1], n_kv_heads, head_dim)  # (B|1, Lk, K, D)
    return TokenValues(v.expand(batch_size, -1, -1, -1).transpose(1, 2))  # (B, K, Lk, D)


def is_token_symbols(symbols, x: Tensor) -> bool:
    """Whether ``symbols`` are per-token symbols for ``x (B, n, d)``: a tensor ``(B or 1, n, d)``."""
    b, n, d = x.shape
    return isinstance(symbols, Tensor) and symbols.dim() == 3 and symbols.shape[1:] == (n, d) \
        and symbols.shape[0] in (1, b)


def describe(symbols) -> tuple[int, ...] | str:
    """What ``symbols`` are, for an error message: a tensor's shape, else the type's name."""
    return tuple(symbols.shape) if isinstance(symbols, Tensor) else type(symbols).__name__
