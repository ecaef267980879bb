"""Symbol retrievers: where the symbols s_j that tag relational-attention messages come from.

* :class:`SymbolicAttention`: s_i = concat_h softmax(q_h(x_i) Fᵀ_h · scale) S_h, attention over a learned library
  of symbols ``S`` keyed by template features ``F`` (content-based, "symbolic attention").
* :class:`PositionalSymbolRetriever`: s_i = E[i] (position-based).
* :class:`PositionRelativeSymbolRetriever`: s_ij = E[clip(j − i, −M, M)] (position-relative).
* :class:`RelationalSymbolicAttention`: symbolic attention queried by each token's relations to its neighbours.

Every retriever has ``retrieve(x, input_pos=None)``, used by the models: the position-based ones then return the
symbols of the given positions (incremental decoding), and the position-relative one returns a compact
:class:`RelativeSymbols` (the ``2M+1`` table) instead of the ``(n, n, d)`` tensor its ``forward`` gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dual_attention._validation import (
    build_with_kwargs,
    check_bool,
    check_choice,
    check_divisible,
    check_kwargs_dict,
    check_positive_int,
    check_probability,
)
from dual_attention.attention_utils import POLICY
from dual_attention.positional_encoding import RelativePositionalEncoding
from dual_attention.symbol_values import RelativeSymbols

__all__ = ["LM_SYMBOL_RETRIEVERS", "PositionRelativeSymbolRetriever", "PositionalSymbolRetriever",
           "RelationalSymbolicAttention", "RelativeSymbols", "SYMBOL_RETRIEVERS", "SymbolicAttention",
           "build_symbol_retriever", "check_relative_symbols", "check_retriever_fits"]


def _check_input(x: Tensor, d_model: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must have shape (batch, length, d_model), got {shape}")
    if d_model is not None and x.shape[-1] != d_model:
        raise ValueError(f"x has feature dim {x.shape[-1]}, expected d_model={d_model}")
    if d_model is not None and not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")


def check_retriever_fits(retriever: nn.Module, d_model: int, max_len: int | None, kwargs_name: str) -> None:
    """Raise ``ValueError`` if a retriever's symbols cannot feed relational attention of width ``d_model`` (symbol
    dim ≠ d_model) or, when ``max_len`` is given (fixed-length inputs such as images), cover ``max_len`` tokens.

    Language and seq2seq models pass ``max_len=None``: the published package accepted positional symbols shorter
    than the block size (usable on shorter sequences), so that is checked per forward instead."""
    if isinstance(retriever, (SymbolicAttention, RelationalSymbolicAttention)):
        dim_name, dim = "d_model", retriever.d_model
    else:
        dim_name, dim = "symbol_dim", retriever.symbol_dim
    if dim != d_model:
        raise ValueError(f"{kwargs_name}['{dim_name}']={dim} must equal the model's d_model={d_model} "
                         "(relational attention projects the symbols with a d_model x d_model matrix)")
    if max_len is not None and isinstance(retriever, PositionalSymbolRetriever) and retriever.max_length < max_len:
        raise ValueError(f"{kwargs_name}['max_length']={retriever.max_length} is smaller than the longest sequence "
                         f"the model accepts ({max_len}); it must be >= {max_len}")


class SymbolicAttention(nn.Module):
    """Symbolic attention: multi-head attention from ``x`` to a learned symbol library.

    ``s_i = concat_h softmax_k(⟨q_h(x_i), F_h,k⟩ · scale) S_h,k`` with ``q = q_proj(x)``, template features
    ``F (n_symbols, d)`` as keys and the symbol library ``S (n_symbols, d)`` as values, each split into
    ``n_heads`` heads; ``scale`` defaults to ``1/√(d/n_heads)``. Dropout on the weights in training only (the
    published package also dropped in eval mode).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_symbols: int,
        dropout: float = 0.0,
        scale: float | None = None,
        trainable_symbols: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("n_heads", n_heads)
        check_positive_int("n_symbols", n_symbols)
        check_divisible("d_model", d_model, "n_heads", n_heads)
        check_probability("dropout", dropout)
        check_bool("trainable_symbols", trainable_symbols)
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0):
            raise ValueError(f"scale={scale!r} is not valid; it must be a positive float or None")
        self.d_model, self.n_heads, self.n_symbols = d_model, n_heads, n_symbols
        self.dropout, self.scale, self.trainable_symbols = dropout, scale, trainable_symbols
        self.head_dim = d_model // n_heads
        self.template_features = nn.Parameter(torch.empty(n_symbols, d_model))
        self.symbol_library = nn.Parameter(torch.empty(n_symbols, d_model), requires_grad=trainable_symbols)
        self.q_proj = nn.Linear(d_model, d_model)
        nn.init.normal_(self.template_features)
        nn.init.normal_(self.symbol_library)

    @property
    def attn_scale(self) -> float:
        return self.scale if self.scale is not None else self.head_dim ** -0.5

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # (B, h, n, dh)
        k = self.template_features.view(self.n_symbols, self.n_heads, self.head_dim).transpose(0, 1)  # (h, N, dh)
        v = self.symbol_library.view(self.n_symbols, self.n_heads, self.head_dim).transpose(0, 1)  # (h, N, dh)
        return q, k.unsqueeze(0).expand(b, -1, -1, -1), v.unsqueeze(0).expand(b, -1, -1, -1)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, n, d) -> symbols (B, n, d)``."""
        _check_input(x, self.d_model)
        # the keys are the fixed library, so a few tokens are a decoding step: cheaper explicitly (which has no dropout)
        if POLICY.explicit(False, x.shape[1], decoding=True) and not (self.training and self.dropout > 0):
            return self.forward_with_weights(x)[0]
        q, k, v = self._heads(x)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), scale=self.attn_scale,
                                             dropout_p=self.dropout if self.training else 0.0)  # (B, h, n, dh)
        return out.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.d_model)

    def forward_with_weights(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Symbols and the attention over the library, ``(B, n, d)`` and ``(B, h, n, n_symbols)`` (no dropout)."""
        _check_input(x, self.d_model)
        q, k, v = self._heads(x)
        weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.attn_scale, dim=-1)  # (B, h, n, N)
        out = torch.matmul(weights, v).transpose(1, 2).reshape(x.shape[0], x.shape[1], self.d_model)
        return out, weights

    def retrieve(self, x: Tensor, input_pos: Tensor | None = None) -> Tensor:
        return self(x)


class PositionalSymbolRetriever(nn.Module):
    """Position-based symbols: ``s_i = E[i]`` for a learned table ``E (max_length, symbol_dim)``.

    ``sinusoidal`` is accepted for compatibility and ignored (as in the published package).
    """

    def __init__(self, symbol_dim: int, max_length: int, sinusoidal: bool = False) -> None:
        super().__init__()
        check_positive_int("symbol_dim", symbol_dim)
        check_positive_int("max_length", max_length)
        self.symbol_dim, self.max_length, self.sinusoidal = symbol_dim, max_length, sinusoidal
        self.symbol_library = nn.Embedding(max_length, symbol_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, n, ·) -> E[0..n-1]`` broadcast to ``(B, n, symbol_dim)`` (a view, not a copy)."""
        return self.retrieve(x)

    def retrieve(self, x: Tensor, input_pos: Tensor | None = None) -> Tensor:
        _check_input(x)
        b, n, _ = x.shape
        end = n if input_pos is None or torch.compiler.is_compiling() else int(input_pos.max()) + 1
        if end > self.max_length:
            raise ValueError(f"sequence length {end} exceeds the positional symbols' max_length={self.max_length}")
        if input_pos is None:
            input_pos = torch.arange(n, device=x.device)
        return self.symbol_library(input_pos).unsqueeze(0).expand(b, -1, -1)


class PositionRelativeSymbolRetriever(nn.Module):
    """Position-relative symbols: ``s_ij = E[clip(j − i, −M, M) + M]`` (pair with relative RA)."""

    def __init__(self, symbol_dim: int, max_rel_pos: int) -> None:
        super().__init__()
        self.symbol_dim, self.max_rel_pos = symbol_dim, max_rel_pos
        self.rel_pos_enc = RelativePositionalEncoding(dim=symbol_dim, max_rel_pos=max_rel_pos)

    def forward(self, x: Tensor) -> Tensor:
        """The published form: ``(n, n, symbol_dim)``, no batch dim. Prefer :meth:`relative_symbols`."""
        _check_input(x)
        return self.rel_pos_enc(x.shape[1])

    def relative_symbols(self) -> RelativeSymbols:
        return RelativeSymbols(self.rel_pos_enc.rel_pos_embeddings, self.max_rel_pos)

    def retrieve(self, x: Tensor, input_pos: Tensor | None = None) -> RelativeSymbols:
        _check_input(x)
        return self.relative_symbols()


class RelationalSymbolicAttention(nn.Module):
    """Symbolic attention queried by each token's relations to its neighbourhood.

    ``rel_i = [⟨q_h(x_i), k_h(x_j)⟩ · rel_scale]_{j ∈ N(i), h}`` (softmax over the neighbourhood when
    ``normalize_rels``), flattened in (neighbour, head) order, projected to ``d_model`` and used as the query of a
    :class:`SymbolicAttention`. Neighbourhoods: causal ``i-1..i-Δ`` (``i..i-Δ`` with self), otherwise
    ``i-Δ..i+Δ``. Neighbours outside the sequence are masked out (the published package clamped their indices,
    duplicating the edge tokens).
    """

    def __init__(
        self,
        d_model: int,
        rel_n_heads: int,
        symbolic_attn_n_heads: int,
        n_symbols: int,
        nbhd_delta: int,
        causal_nbhd: bool = True,
        include_self: bool = False,
        normalize_rels: bool = True,
        dropout: float = 0.0,
        rel_scale: float | None = None,
        symbolic_attn_scale: float | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("rel_n_heads", rel_n_heads)
        check_divisible("d_model", d_model, "rel_n_heads", rel_n_heads)
        check_positive_int("nbhd_delta", nbhd_delta)
        self.d_model, self.rel_n_heads, self.nbhd_delta = d_model, rel_n_heads, nbhd_delta
        self.causal_nbhd, self.include_self, self.normalize_rels = causal_nbhd, include_self, normalize_rels
        self.rel_scale = rel_scale if rel_scale is not None else (d_model // rel_n_heads) ** -0.5
        if causal_nbhd:
            self.nbhd_size = nbhd_delta + 1 if include_self else nbhd_delta
        else:
            self.nbhd_size = 2 * nbhd_delta + 1 if include_self else 2 * nbhd_delta
        self.nbhd_rel_dim = rel_n_heads * self.nbhd_size
        self.symbolic_attention = SymbolicAttention(d_model, symbolic_attn_n_heads, n_symbols, dropout,
                                                    symbolic_attn_scale)
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.model_dim_proj = nn.Linear(self.nbhd_rel_dim, d_model)

    @staticmethod
    def _offsets(delta: int, causal: bool, include_self: bool) -> list[int]:
        if causal:
            return list(range(0 if include_self else 1, delta + 1))  # i, i-1, ..., i-Δ  → offsets as -o
        return [o for o in range(-delta, delta + 1) if include_self or o != 0]

    @staticmethod
    def _raw_neighbors(n: int, delta: int, causal: bool, include_self: bool) -> Tensor:
        offs = RelationalSymbolicAttention._offsets(delta, causal, include_self)
        offs = torch.tensor([-o for o in offs] if causal else offs)
        return torch.arange(n)[:, None] + offs[None, :]  # (n, nbhd), may fall outside [0, n)

    @staticmethod
    def compute_neighbor_mask(n: int, delta: int, include_self: bool = True) -> Tensor:
        """Index ``(n, nbhd)`` of the non-causal neighbours ``i-Δ..i+Δ``, clamped to ``[0, n-1]``."""
        return RelationalSymbolicAttention._raw_neighbors(n, delta, False, include_self).clamp(0, n - 1)

    @staticmethod
    def compute_causal_neighbor_mask(n: int, delta: int, include_self: bool = False) -> Tensor:
        """Index ``(n, nbhd)`` of the causal neighbours ``i-1..i-Δ`` (``i..i-Δ``), clamped to ``[0, n-1]``."""
        return RelationalSymbolicAttention._raw_neighbors(n, delta, True, include_self).clamp(0, n - 1)

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None, *, causal: bool = False) -> Tensor:
        """``x (B, n, d) -> symbols (B, n, d)``.

        ``key_padding_mask`` (bool ``(B, n)``, True = real token): padded tokens are masked out of every
        neighbourhood like out-of-range neighbours, so they never influence the symbols of real tokens.
        ``causal``: also mask the neighbours after each token (for a causal decoder whose retriever was built
        with ``causal_nbhd=False``; the slots stay, so the parameters are unchanged).
        """
        _check_input(x, self.d_model)
        b, n, d = x.shape
        h, dh = self.rel_n_heads, d // self.rel_n_heads
        raw = self._raw_neighbors(n, self.nbhd_delta, self.causal_nbhd, self.include_self).to(x.device)
        idx = raw.clamp(0, n - 1)
        valid = ((raw >= 0) & (raw < n))[None]  # (1, n, nbhd)
        if causal:
            valid = valid & (raw <= torch.arange(n, device=x.device)[:, None])
        if key_padding_mask is not None:
            if not isinstance(key_padding_mask, Tensor) or key_padding_mask.dtype != torch.bool \
                    or tuple(key_padding_mask.shape) != (b, n):
                desc = (f"{tuple(key_padding_mask.shape)} {key_padding_mask.dtype}"
                        if isinstance(key_padding_mask, Tensor) else type(key_padding_mask).__name__)
                raise ValueError(f"key_padding_mask must be a bool tensor of shape ({b}, {n}), got {desc}")
            valid = valid & key_padding_mask[:, idx]  # (B, n, nbhd)
        q = self.q_proj(x).view(b, n, h, dh)  # (B, n, h, dh)
        k = self.k_proj(x).view(b, n, h, dh)[:, idx]  # (B, n, nbhd, h, dh)
        rels = torch.einsum("bihd,bijhd->bijh", q, k)  # (B, n, nbhd, h)
        if self.normalize_rels:
            rels = (rels * self.rel_scale).masked_fill(~valid[..., None], float("-inf"))
            rels = torch.softmax(rels, dim=2).nan_to_num(0.0)
        else:
            rels = rels.masked_fill(~valid[..., None], 0.0)
        rels = rels.reshape(b, n, self.nbhd_rel_dim)  # (B, n, nbhd*h), (neighbour, head) order
        return self.symbolic_attention(self.model_dim_proj(rels))

    def retrieve(self, x: Tensor, input_pos: Tensor | None = None, key_padding_mask: Tensor | None = None,
                 causal: bool = False) -> Tensor:
        return self(x, key_padding_mask=key_padding_mask, causal=causal)


#: the retrievers by the name the models take as ``symbol_retrieval`` (vision and seq2seq models: all of them)
SYMBOL_RETRIEVERS: dict[str, type[nn.Module]] = {
    "symbolic_attention": SymbolicAttention,
    "rel_sym_attn": RelationalSymbolicAttention,
    "positional_symbols": PositionalSymbolRetriever,
    "position_relative": PositionRelativeSymbolRetriever,
}
#: those of the language model (as published, not ``'rel_sym_attn'``)
LM_SYMBOL_RETRIEVERS = {name: cls for name, cls in SYMBOL_RETRIEVERS.items() if name != "rel_sym_attn"}


def build_symbol_retriever(symbol_retrieval: str, symbol_retrieval_kwargs: dict | None,
                           registry: dict[str, type[nn.Module]] = SYMBOL_RETRIEVERS) -> nn.Module:
    """The retriever named ``symbol_retrieval`` (one of ``registry``) built from ``symbol_retrieval_kwargs``."""
    check_choice("symbol_retrieval", symbol_retrieval, registry)
    kwargs = check_kwargs_dict("symbol_retrieval_kwargs", symbol_retrieval_kwargs)
    return build_with_kwargs("symbol_retrieval_kwargs", registry[symbol_retrieval], kwargs)


def check_relative_symbols(symbol_retrieval: str, ra_kwargs: dict, n_heads_ra: int,
                           kwargs_name: str = "ra_kwargs") -> None:
    """Position-relative symbols go with relative relational attention, and only them (``ValueError``)."""
    relative = symbol_retrieval == "position_relative"
    if n_heads_ra > 0 and relative != bool(ra_kwargs.get("use_relative_positional_symbols", False)):
        raise ValueError(f"symbol_retrieval={symbol_retrieval!r} needs {kwargs_name}"
                         f"['use_relative_positional_symbols']={relative} (position-relative symbols go with "
                         "relative relational attention, and only them)")
