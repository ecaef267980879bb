"""Positional encodings: sinusoidal, learned, and position-relative embedding tables."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dual_attention._validation import check_positive_int, check_probability
from dual_attention.attention_utils import relative_offsets

#: the ``pos_enc_type`` of the language and vision models: learned absolute embeddings or rotary (RoPE)
POS_ENC_TYPES = ("pos_emb", "RoPE")


def _check_length(n: int, max_len: int, what: str) -> None:
    if n > max_len:
        raise ValueError(f"sequence length {n} exceeds {what}={max_len}")


class _AdditivePositions(nn.Module):
    """``x ↦ Dropout(c·x + P[positions])`` with ``c = √d_model`` when ``scale``: what the sinusoidal and the learned
    encodings share (arguments as published)."""

    def __init__(self, d_model: int, scale: bool, dropout: float, max_len: int) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("max_len", max_len)
        check_probability("dropout", dropout)
        self.d_model, self.max_len, self.scale = d_model, max_len, scale
        self.dropout = nn.Dropout(dropout)

    def _add(self, x: Tensor, pe: Tensor) -> Tensor:
        """``Dropout(c·x + pe)`` for ``x (B, n, d)`` and the encodings ``pe (n, d)`` of its positions."""
        c = math.sqrt(self.d_model) if self.scale else 1.0
        return self.dropout(c * x + pe)


class SinusoidalPositionalEncoding(_AdditivePositions):
    """``x ↦ Dropout(c·x + PE[:n])`` with PE[p, 2k] = sin(p / 10000^(2k/d)), PE[p, 2k+1] = cos(·).

    ``c = √d_model`` when ``scale`` (the embedding is scaled, not the encoding). Batch-first ``(B, n, d)``.
    """

    def __init__(self, d_model: int, scale: bool = True, dropout: float = 0.1, max_len: int = 2048) -> None:
        super().__init__(d_model, scale, dropout, max_len)
        position = torch.arange(max_len, dtype=torch.float32)[:, None]
        div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(position * div_term)
        pe[:, 1::2] = torch.cos(position * div_term)[:, : d_model // 2]
        self.register_buffer("pe", pe)

    def forward(self, x: Tensor, offset: int | Tensor = 0) -> Tensor:
        """Add the encoding of positions ``offset .. offset + n - 1`` (or of the positions in ``offset``)."""
        if isinstance(offset, Tensor):
            pe = self.pe[offset]
        else:
            _check_length(offset + x.shape[1], self.max_len, "max_len")
            pe = self.pe[offset: offset + x.shape[1]]
        return self._add(x, pe.to(x.dtype))


class LearnedPositionalEmbeddings(_AdditivePositions):
    """``x ↦ Dropout(c·x + E[0..n-1])`` with a learned table ``E`` (``c = √d_model`` when ``scale``)."""

    def __init__(self, d_model: int, scale: bool = True, dropout: float = 0.1, max_len: int = 2048) -> None:
        super().__init__(d_model, scale, dropout, max_len)
        self.position_embeddings = nn.Embedding(max_len, d_model)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        _check_length(n, self.max_len, "max_len")
        return self._add(x, self.position_embeddings(torch.arange(n, device=x.device)))


class RelativePositionalEncoding(nn.Module):
    """A table of ``2·max_rel_pos + 1`` embeddings of clipped relative positions (xavier-uniform init).

    ``forward(Lq, Lk)[i, j] = E[clip(j − i, −M, M) + M]`` of shape ``(Lq, Lk, dim)``.
    """

    def __init__(self, dim: int, max_rel_pos: int) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("max_rel_pos", max_rel_pos, allow_zero=True)
        self.num_units = dim
        self.max_relative_position = max_rel_pos
        self.rel_pos_embeddings = nn.Parameter(torch.empty(2 * max_rel_pos + 1, dim))
        nn.init.xavier_uniform_(self.rel_pos_embeddings)

    def relative_index(self, length_q: int, length_k: int | None = None) -> Tensor:
        length_k = length_q if length_k is None else length_k
        device = self.rel_pos_embeddings.device
        return relative_offsets(torch.arange(length_q, device=device), torch.arange(length_k, device=device),
                                self.max_relative_position)  # (Lq, Lk)

    def forward(self, length_q: int, length_k: int | None = None) -> Tensor:
        return self.rel_pos_embeddings[self.relative_index(length_q, length_k)]  # (Lq, Lk, dim)
