"""What a model's forward computed at every layer: the typed result of ``model.forward_intermediates``.

For each block ℓ (as timm's ``forward_intermediates``, but with the attention of every kind):

* the self-attention maps ``α^{SA,h}_ij = softmax_j(⟨q_i^h, k_j^h⟩/√D + M_ij)``, ``(B, H_sa, n, n)``;
* the relational-attention maps ``α^{RA,h}_ij``, ``(B, H_ra, n, n)`` (RCA: its activated scores);
* the relations ``r_ℓ(x_i, x_j)`` as ``(B, n, n, R)`` with ``[b, i, j, r] = r_r(x_i, x_j)``: row i is the receiver
  (query), column j the sender (key) (DisRCA: its per-head relations ρ^h, as ``(B, n, n, H_ra)``);
* the symbols the relational heads received, and for symbolic attention the attention over the symbol library
  ``(B, H_sym, n, N)`` with ``symbol_ids = argmax`` (positional symbols: ``symbol_ids[b, 0, i] = i``);
* the cross-attention maps of seq2seq decoder layers, ``(B, H_cross, m, n)``, and the block's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dual_attention.symbol_retrieval import PositionalSymbolRetriever, RelationalSymbolicAttention, SymbolicAttention
from dual_attention.symbol_values import RelativeSymbols

__all__ = ["Intermediates", "LayerIntermediates", "retrieve_symbols_with_weights"]


@dataclass
class LayerIntermediates:
    """What one block computed (absent parts are None).

    Attributes:
        stack: ``'blocks'`` (LM, vision), ``'encoder'`` or ``'decoder'`` (seq2seq).
        index: the layer index within its stack.
        causal: whether the layer's self/relational attention is causal (receivers i see senders j ≤ i only).
        hidden: the block's output ``(B, n, d)``.
        sa_attn: self-attention weights ``(B, H_sa, n, n)``, ``[b, h, i, j]``.
        ra_attn: relational-attention weights ``(B, H_ra, n, n)``, ``[b, h, i, j]``.
        relations: ``(B, n, n, R)``, ``[b, i, j, r] = r_r(x_i, x_j)`` (every pair; with a softmax activation the
            pairs the mask excludes are 0).
        cross_attn: decoder cross-attention weights ``(B, H_cross, m, n_source)``.
        symbols: the symbols given to the block: ``(B, n, d)``, or :class:`RelativeSymbols` (position-relative).
        symbol_attn: attention over the symbol library ``(B, H_sym, n, N)`` (symbolic retrievers only).
        symbol_ids: index of the symbol each token took, per head ``(B, H_sym, n)`` (positional: the position).
        ra_type: ``'relational_attention'``, ``'rca'``, ``'disrca'``, ``'hadamard'``, or None without relational
            heads.
    """

    stack: str
    index: int
    causal: bool
    hidden: Tensor
    sa_attn: Tensor | None = None
    ra_attn: Tensor | None = None
    relations: Tensor | None = None
    cross_attn: Tensor | None = None
    symbols: Tensor | RelativeSymbols | None = None
    symbol_attn: Tensor | None = None
    symbol_ids: Tensor | None = None
    ra_type: str | None = None

    @property
    def name(self) -> str:
        """``'layer 2'`` or ``'decoder layer 2'``."""
        return f"layer {self.index}" if self.stack == "blocks" else f"{self.stack} layer {self.index}"

    @property
    def relation_maps(self) -> Tensor | None:
        """Relations as maps ``(B, R, n, n)`` with ``[b, r, i, j] = r_r(x_i, x_j)`` (the layout of attention maps)."""
        return None if self.relations is None else self.relations.permute(0, 3, 1, 2)  # (B, R, n, n)

    @classmethod
    def of_block(cls, stack: str, index: int, block: nn.Module, hidden: Tensor, weights,
                 retrieved: tuple = (None, None, None)) -> LayerIntermediates:
        """From a block's ``return_weights`` output and the ``(symbols, symbol_attn, symbol_ids)`` it was given."""
        dual_attn = getattr(block, "dual_attn", None)
        ra_type = dual_attn.ra_type if dual_attn is not None and dual_attn.use_rel_attn else None
        layer = cls(stack, index, bool(getattr(block, "causal", False)), hidden, symbols=retrieved[0],
                    symbol_attn=retrieved[1], symbol_ids=retrieved[2], ra_type=ra_type)
        if isinstance(weights, Tensor):  # baseline EncoderBlock: the SA weights themselves
            layer.sa_attn = weights
            return layer
        layer.sa_attn, layer.cross_attn = weights.get("sa"), weights.get("cross")
        ra = weights.get("ra")
        if ra and ra_type in ("rca", "hadamard"):  # [weights (B, H, n, n)] (RCA: the relations are the weights)
            layer.ra_attn = ra[0]
        elif ra and ra_type == "disrca":  # [α (B, H, n, n), ρ (B, H, n, n)]
            layer.ra_attn, layer.relations = ra[0], ra[1].permute(0, 2, 3, 1)  # (B, n, n, H)
        elif ra:  # [α (B, H, n, n), r (B, n, n, R)]
            layer.ra_attn, layer.relations = ra[0], ra[1]
        return layer


@dataclass
class Intermediates:
    """A model's output and one :class:`LayerIntermediates` per block, in the order the blocks ran."""

    output: Tensor
    layers: list[LayerIntermediates] = field(default_factory=list)


def retrieve_symbols_with_weights(retriever: nn.Module, h: Tensor, input_pos: Tensor | None = None,
                                  **rsa_kwargs) -> tuple:
    """``(symbols, symbol_attn or None, symbol_ids or None)`` for the block input ``h (B, n, d)``.

    ``symbols`` come from ``retriever.retrieve`` (exactly what the model uses); the library attention of a
    :class:`SymbolicAttention` (or of the inner one of a :class:`RelationalSymbolicAttention`) is computed
    beside it, ``(B, H_sym, n, N)``, and ``symbol_ids = argmax`` over the library ``(B, H_sym, n)``.
    ``rsa_kwargs`` (``key_padding_mask``, ``causal``) go to a :class:`RelationalSymbolicAttention` only.
    """
    b, n = h.shape[:2]
    if isinstance(retriever, SymbolicAttention):
        symbols = retriever.retrieve(h, input_pos)
        weights = retriever.forward_with_weights(h)[1]  # (B, H_sym, n, N)
        return symbols, weights, weights.argmax(dim=-1)
    if isinstance(retriever, RelationalSymbolicAttention):
        captured: list[Tensor] = []
        hook = retriever.symbolic_attention.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
        try:
            symbols = retriever.retrieve(h, input_pos, **rsa_kwargs)
        finally:
            hook.remove()
        weights = retriever.symbolic_attention.forward_with_weights(captured[-1])[1]  # (B, H_sym, n, N)
        return symbols, weights, weights.argmax(dim=-1)
    symbols = retriever.retrieve(h, input_pos)
    if isinstance(retriever, PositionalSymbolRetriever):
        positions = torch.arange(n, device=h.device) if input_pos is None else input_pos
        return symbols, None, positions[None, None, :].expand(b, 1, n)  # (B, 1, n)
    return symbols, None, None


def retrieve(retriever: nn.Module, h: Tensor, input_pos: Tensor | None = None, *, with_weights: bool = False,
             **retrieve_kwargs) -> tuple:
    """``(symbols, symbol_attn, symbol_ids)`` for ``h``; the last two only ``with_weights`` (else None)."""
    if with_weights:
        return retrieve_symbols_with_weights(retriever, h, input_pos, **retrieve_kwargs)
    return retriever.retrieve(h, input_pos, **retrieve_kwargs), None, None


def run_block(block: nn.Module, *args, record: list | None = None, stack: str = "blocks", index: int = 0,
              retrieved: tuple = (None, None, None), **kwargs) -> Tensor:
    """``block(*args, **kwargs)``; with a ``record`` list, also what the block computed, appended to it as a
    :class:`LayerIntermediates` (the block then returns its weights: explicit paths, the same output)."""
    if record is None:
        return block(*args, **kwargs)
    h, weights = block(*args, return_weights=True, **kwargs)
    record.append(LayerIntermediates.of_block(stack, index, block, h, weights, retrieved))
    return h
