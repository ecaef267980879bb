"""Dual-attention encoder and decoder blocks (the DAT layers).

Encoder (pre-norm):  x ← x + Drop(DualAttn(LN₁ x, s));  x ← x + Drop(FF(LN₂ x))
Decoder (pre-norm):  x ← x + Drop(DualAttn(LN₁ x, s));  x ← x + Drop(CrossAttn(LN₂ x, ctx));  x ← x + Drop(FF(LN₃ x))

Post-norm blocks apply the norm after each residual sum instead. The symbols ``s`` are computed by the caller
(the models take them from the un-normalised block input, as published).
"""

from __future__ import annotations

from torch import Tensor, nn

from dual_attention._validation import check_bool, check_choice, check_kwargs_dict
from dual_attention.attention import Attention
from dual_attention.attention_utils import AttentionMask
from dual_attention.dual_attention import DualAttention
from dual_attention.hadamard_attention import HadamardDualAttention, check_hadamard_symbols
from dual_attention.relational_attention import (
    DisentangledRelationalCrossAttention,
    RelationalAttention,
    RelationalCrossAttention,
)
from dual_attention.transformer_blocks import FeedForwardBlock, _Residual, check_block_args, create_norm

_ROPE_MODULES = (Attention, RelationalAttention, RelationalCrossAttention, DisentangledRelationalCrossAttention,
                 HadamardDualAttention)


def check_rope_fits(blocks: nn.Module, width: int, where: str) -> None:
    """With RoPE every self-attention's query/key width must be the (even) ``width`` the RoPE tables were built for
    (cross-attention takes no RoPE); raise ValueError naming the offending module otherwise."""
    for name, module in blocks.named_modules():
        if isinstance(module, _ROPE_MODULES) and "cross_attn" not in name:
            key_dim = getattr(module, "key_dim", module.head_dim)
            if key_dim != width:
                raise ValueError(
                    f"pos_enc_type='RoPE' needs every attention's key_dim to equal head_dim = d_model // n_heads "
                    f"= {width}, and head_dim to be even; {where}.{name} has key_dim={key_dim} (set by key_dim in "
                    "sa_kwargs/ra_kwargs/attn_kwargs, or an odd head_dim)")


def check_symbol_options(symbol_retrieval: str | None, allowed: dict, retriever_kwargs: dict, ra_type: str,
                         n_heads_ra: int, ra_kwargs: dict, update_symbols_each_layer: bool) -> dict:
    """Validate ``symbol_retrieval`` (None only for Hadamard or SA-only models) and ``update_symbols_each_layer``;
    return the ``ra_kwargs`` to build with (a Hadamard layer without symbols gets ``use_symbols=False``)."""
    check_bool("update_symbols_each_layer", update_symbols_each_layer)
    hadamard = n_heads_ra > 0 and ra_type == "hadamard"
    if symbol_retrieval is None:
        if n_heads_ra > 0 and not hadamard:
            raise ValueError(f"symbol_retrieval=None needs ra_type='hadamard' (or no relational heads); "
                             f"ra_type={ra_type!r} needs symbols; allowed: {', '.join(map(repr, allowed))}")
        if retriever_kwargs:
            raise ValueError(f"symbol_retrieval=None takes no symbol_retrieval_kwargs, got {retriever_kwargs}")
    else:
        check_choice("symbol_retrieval", symbol_retrieval, allowed)
    if hadamard:
        check_hadamard_symbols(symbol_retrieval)
        if ra_kwargs.get("use_symbols", symbol_retrieval is not None) != (symbol_retrieval is not None):
            raise ValueError(f"ra_kwargs['use_symbols']={ra_kwargs['use_symbols']} contradicts "
                             f"symbol_retrieval={symbol_retrieval!r} (symbols are used iff a retriever is given)")
        if symbol_retrieval is None:
            ra_kwargs = {**ra_kwargs, "use_symbols": False}
    return ra_kwargs


class _DualAttnBlock(_Residual):
    """What the dual-attention blocks share: the dual-attention sub-layer and its norms."""

    _self_attention_name = "dual_attn"

    def _init_dual_attention(self, d_model: int, n_heads_sa: int, n_heads_ra: int, dropout_rate: float,
                             norm_first: bool, norm_type: str, sa_kwargs: dict | None, ra_kwargs: dict | None,
                             ra_type: str, share_attn_params: bool, causal: bool) -> None:
        """Register ``dropout``, ``norm1``, ``dual_attn`` and ``norm2`` (in this order)."""
        self.d_model, self.norm_first, self.causal = d_model, norm_first, causal
        self.dropout = nn.Dropout(dropout_rate)
        self.norm1 = create_norm(d_model, norm_type)
        self.dual_attn = DualAttention(d_model=d_model, n_heads_sa=n_heads_sa, n_heads_ra=n_heads_ra,
                                       dropout=dropout_rate, sa_kwargs=sa_kwargs, ra_kwargs=ra_kwargs,
                                       ra_type=ra_type, share_attn_params=share_attn_params)
        self.norm2 = create_norm(d_model, norm_type)


class DualAttnEncoderBlock(_DualAttnBlock):
    """Dual attention (SA + RA heads) and a feed-forward block; ``causal`` fixes the attention's causality.

    ``bias`` sets the feed-forward biases; attention biases come from ``sa_kwargs``/``ra_kwargs``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads_sa: int,
        n_heads_ra: int,
        dff: int | None,
        activation: str,
        dropout_rate: float,
        norm_first: bool,
        norm_type: str = "layernorm",
        sa_kwargs: dict | None = None,
        ra_kwargs: dict | None = None,
        ra_type: str = "relational_attention",
        share_attn_params: bool = False,
        bias: bool = True,
        causal: bool = False,
    ) -> None:
        super().__init__()
        check_block_args(d_model, dropout_rate, norm_first, causal)
        self._init_dual_attention(d_model, n_heads_sa, n_heads_ra, dropout_rate, norm_first, norm_type, sa_kwargs,
                                  ra_kwargs, ra_type, share_attn_params, causal)
        self.ff_block = FeedForwardBlock(d_model, dff, activation, use_bias=bias)

    def forward(
        self,
        x: Tensor,
        symbols,
        freqs_cos: Tensor | None = None,
        freqs_sin: Tensor | None = None,
        *,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        kv_cache: nn.ModuleDict | None = None,
        input_pos: Tensor | None = None,
        return_weights: bool = False,
        mask: AttentionMask | None = None,
    ):
        """``x (B, n, d)`` → ``(B, n, d)``; with ``return_weights`` also ``{'sa': …, 'ra': [...]}``.

        Masks: ``mask`` (an :class:`~dual_attention.attention_utils.AttentionMask` built once by the model), or
        ``attn_mask`` and ``key_padding_mask`` with the block's ``causal``."""
        weights = {}
        attend = self._self_sublayer(weights, "attn", lambda h, **masks: self.dual_attn(
            h, symbols, freqs_cos=freqs_cos, freqs_sin=freqs_sin, need_weights=return_weights, kv_cache=kv_cache,
            input_pos=input_pos, **masks), mask, attn_mask, key_padding_mask)
        x = self._encoder_layer(x, attend)
        return (x, _dual_weights(weights)) if return_weights else x


class DualAttnDecoderBlock(_DualAttnBlock):
    """Causal dual attention, cross-attention to the encoder output, and a feed-forward block.

    The feed-forward output gets dropout like the other sub-layers (the published block had none there).
    """

    def __init__(
        self,
        d_model: int,
        n_heads_sa: int,
        n_heads_ra: int,
        n_heads_cross: int,
        dff: int | None,
        activation: str,
        dropout_rate: float,
        norm_first: bool,
        norm_type: str = "layernorm",
        sa_kwargs: dict | None = None,
        ra_kwargs: dict | None = None,
        cross_kwargs: dict | None = None,
        ra_type: str = "relational_attention",
        share_attn_params: bool = False,
        bias: bool = True,
        causal: bool = True,
    ) -> None:
        super().__init__()
        check_block_args(d_model, dropout_rate, norm_first, causal)
        cross_kwargs = check_kwargs_dict("cross_kwargs", cross_kwargs)
        self._init_dual_attention(d_model, n_heads_sa, n_heads_ra, dropout_rate, norm_first, norm_type, sa_kwargs,
                                  ra_kwargs, ra_type, share_attn_params, causal)
        self.cross_attn = Attention(d_model=d_model, n_heads=n_heads_cross, dropout=dropout_rate, **cross_kwargs)
        self.norm3 = create_norm(d_model, norm_type)
        self.ff_block = FeedForwardBlock(d_model, dff, activation, use_bias=bias)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
        symbols,
        *,
        freqs_cos: Tensor | None = None,
        freqs_sin: Tensor | None = None,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        kv_cache: nn.ModuleDict | None = None,
        input_pos: Tensor | None = None,
        return_weights: bool = False,
        mask: AttentionMask | None = None,
        context_mask: AttentionMask | None = None,
    ):
        """``x (B, m, d)``, ``context (B, n, d)`` → ``(B, m, d)`` (and ``{'sa', 'ra', 'cross'}`` if asked).

        ``mask``/``context_mask`` (built once by the model) replace ``attn_mask``, ``key_padding_mask`` and the
        block's ``causal`` / ``context_padding_mask``."""
        weights = {}
        self_attend = self._self_sublayer(weights, "attn", lambda h, **masks: self.dual_attn(
            h, symbols, freqs_cos=freqs_cos, freqs_sin=freqs_sin, need_weights=return_weights,
            kv_cache=None if kv_cache is None else kv_cache["self"], input_pos=input_pos, **masks),
            mask, attn_mask, key_padding_mask)
        cross_attend = self._cross_attention(weights, context, context_padding_mask, context_mask, kv_cache,
                                             return_weights)
        x = self._decoder_layer(x, self_attend, cross_attend)
        return (x, _dual_weights(weights)) if return_weights else x


def _dual_weights(weights: dict) -> dict:
    """``{'sa': SA weights, 'ra': RA extras[, 'cross': …]}`` from the kept ``weights['attn'] = [sa, ra]``."""
    sa, ra = weights.pop("attn")
    return {"sa": sa, "ra": ra, **weights}
