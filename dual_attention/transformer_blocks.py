"""Transformer building blocks: feed-forward, norms, and the baseline encoder/decoder blocks.

Pre-norm (``norm_first=True``):  x ← x + Drop(Attn(LN₁ x));  x ← x + Drop(FF(LN₂ x))
Post-norm:                       x ← LN₁(x + Drop(Attn x));  x ← LN₂(x + Drop(FF x))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dual_attention._validation import (
    check_bool,
    check_choice,
    check_kwargs_dict,
    check_positive_int,
    check_probability,
)
from dual_attention.attention import Attention
from dual_attention.attention_utils import AttentionMask
from dual_attention.kv_cache import StaticCache
from dual_attention.model_utils import ACTIVATIONS, get_activation_function

NORM_TYPES = ("layernorm", "rmsnorm", "none")


class RMSNorm(nn.Module):
    """``y = x / √(mean(x²) + eps) · weight``, normalised in float32 and returned in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        check_positive_int("dim", dim)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
            raise ValueError(f"eps={eps!r} is not valid; it must be a float >= 0")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).type_as(x)


def create_norm(d_model: int, norm_type: str) -> nn.Module:
    """``'layernorm'`` → LayerNorm, ``'rmsnorm'`` → :class:`RMSNorm`, ``'none'`` → Identity."""
    check_choice("norm_type", norm_type, NORM_TYPES)
    if norm_type == "layernorm":
        return nn.LayerNorm(d_model)
    if norm_type == "rmsnorm":
        return RMSNorm(d_model)
    return nn.Identity()


class FeedForwardBlock(nn.Module):
    """``linear2(act(linear1 x))``, or with ``activation='swiglu'``: ``linear2(silu(linear1 x) ⊙ linear3 x)``.

    ``dff`` defaults to ``int(2/3 · 4 · d)`` for SwiGLU and ``4 · d`` otherwise.
    """

    def __init__(self, embed_dim: int, dff: int | None = None, activation: str = "relu", use_bias: bool = False):
        super().__init__()
        check_positive_int("embed_dim", embed_dim)
        check_choice("activation", activation, ("swiglu", *ACTIVATIONS))
        check_bool("use_bias", use_bias)
        if dff is None:
            dff = int(2 / 3 * 4 * embed_dim) if activation == "swiglu" else 4 * embed_dim
        check_positive_int("dff", dff)
        self.embed_dim, self.dff, self.activation_name, self.use_bias = embed_dim, dff, activation, use_bias
        self.linear1 = nn.Linear(embed_dim, dff, bias=use_bias)
        self.linear2 = nn.Linear(dff, embed_dim, bias=use_bias)
        if activation == "swiglu":
            self.linear3 = nn.Linear(embed_dim, dff, bias=use_bias)
        else:
            self.activation = get_activation_function(activation)

    def forward(self, x: Tensor) -> Tensor:
        if self.activation_name == "swiglu":
            return self.linear2(F.silu(self.linear1(x)) * self.linear3(x))
        return self.linear2(self.activation(self.linear1(x)))


def check_block_args(d_model: int, dropout_rate: float, norm_first: bool, causal: bool) -> None:
    check_positive_int("d_model", d_model)
    check_probability("dropout_rate", dropout_rate)
    check_bool("norm_first", norm_first)
    check_bool("causal", causal)


class _Residual(nn.Module):
    """What every block shares: pre-/post-norm residual wiring, its masks, and decoder cross-attention."""

    norm_first: bool
    causal: bool
    #: the attribute holding the block's self-attention (whose cache :meth:`init_kv_cache` makes)
    _self_attention_name = "self_attn"

    def init_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> nn.Module:
        """The self-attention's KV cache for ``batch_size`` sequences of ``max_len`` positions; a decoder block's
        is ``{'self': that, 'cross': StaticCache()}`` (the cross-attention keys/values, computed once)."""
        cache = getattr(self, self._self_attention_name).init_kv_cache(batch_size, max_len, device, dtype)
        if not hasattr(self, "cross_attn"):
            return cache
        return nn.ModuleDict({"self": cache, "cross": StaticCache()})

    def _init_self_attention(self, n_heads: int, dropout_rate: float, norm_type: str, bias: bool,
                             attn_kwargs: dict) -> None:
        """A baseline block's ``norm1``, ``self_attn`` (output bias ``bias``) and ``norm2``, in this order."""
        self.norm1 = create_norm(self.d_model, norm_type)
        self.self_attn = Attention(d_model=self.d_model, n_heads=n_heads, add_bias_out=bias, dropout=dropout_rate,
                                   **attn_kwargs)
        self.norm2 = create_norm(self.d_model, norm_type)

    def _residual(self, x: Tensor, norm: nn.Module, fn, dropout: nn.Module) -> Tensor:
        if self.norm_first:
            return x + dropout(fn(norm(x)))
        return norm(x + dropout(fn(x)))

    def _encoder_layer(self, x: Tensor, attend) -> Tensor:
        """Attention then feed-forward, each a residual sub-layer."""
        x = self._residual(x, self.norm1, attend, self.dropout)
        return self._residual(x, self.norm2, self.ff_block, self.dropout)

    def _decoder_layer(self, x: Tensor, self_attend, cross_attend) -> Tensor:
        """Self-attention, cross-attention, feed-forward, each a residual sub-layer."""
        x = self._residual(x, self.norm1, self_attend, self.dropout)
        x = self._residual(x, self.norm2, cross_attend, self.dropout)
        return self._residual(x, self.norm3, self.ff_block, self.dropout)

    @staticmethod
    def _keep(weights: dict, name: str, attention) -> Callable[[Tensor], Tensor]:
        """``h -> attention(h)[0]``, keeping the rest of its output in ``weights[name]`` (one item: the item)."""

        def sublayer(h: Tensor) -> Tensor:
            out, *rest = attention(h)
            weights[name] = rest[0] if len(rest) == 1 else rest
            return out

        return sublayer

    def _self_sublayer(self, weights: dict, name: str, attention, mask: AttentionMask | None,
                       attn_mask: Tensor | None, key_padding_mask: Tensor | None) -> Callable[[Tensor], Tensor]:
        """The self-attention sub-layer ``h -> attention(h, **masks)[0]`` (the rest kept in ``weights[name]``), with
        the masks of :meth:`_mask_kwargs`."""
        masks = self._mask_kwargs(mask, attn_mask, key_padding_mask)
        return self._keep(weights, name, lambda h: attention(h, **masks))

    def _mask_kwargs(self, mask: AttentionMask | None, attn_mask: Tensor | None,
                     key_padding_mask: Tensor | None) -> dict:
        """The self-attention's masks: ``mask`` (built once by the model), or the block's own causality with
        ``attn_mask`` and ``key_padding_mask``."""
        if mask is None:
            return dict(attn_mask=attn_mask, is_causal=self.causal, key_padding_mask=key_padding_mask)
        if attn_mask is not None or key_padding_mask is not None:
            raise ValueError("give either mask (an AttentionMask) or attn_mask/key_padding_mask, not both")
        return dict(mask=mask)

    def _cross_attention(self, weights: dict, context: Tensor, context_padding_mask: Tensor | None,
                         context_mask: AttentionMask | None, kv_cache, need_weights: bool):
        """The decoder's cross-attention to ``context`` as a sub-layer (its weights kept in ``weights['cross']``)."""
        masks = dict(mask=context_mask) if context_mask is not None else dict(key_padding_mask=context_padding_mask)
        return self._keep(weights, "cross", lambda h: self.cross_attn(
            h, context, context, need_weights=need_weights, kv_cache=None if kv_cache is None else kv_cache["cross"],
            **masks))


class EncoderBlock(_Residual):
    """Self-attention + feed-forward (the Transformer baseline's block; causal for language models)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dff: int | None,
        dropout_rate: float,
        activation: str,
        norm_first: bool,
        norm_type: str = "layernorm",
        bias: bool = True,
        causal: bool = False,
        attn_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        check_block_args(d_model, dropout_rate, norm_first, causal)
        attn_kwargs = {"n_kv_heads": None, "add_bias_kv": False, **check_kwargs_dict("attn_kwargs", attn_kwargs)}
        self.d_model, self.n_heads, self.norm_first, self.causal = d_model, n_heads, norm_first, causal
        self._init_self_attention(n_heads, dropout_rate, norm_type, bias, attn_kwargs)
        self.ff_block = FeedForwardBlock(d_model, dff, activation, use_bias=bias)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(
        self,
        x: Tensor,
        freqs_cos: Tensor | None = None,
        freqs_sin: Tensor | None = None,
        need_weights: bool = False,
        *,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        kv_cache=None,
        input_pos: Tensor | None = None,
        return_weights: bool = False,
        mask: AttentionMask | None = None,
    ):
        """``x (B, n, d) -> (B, n, d)``; with ``return_weights`` also the attention weights (B, H, n, n).

        Masks: ``mask`` (an :class:`~dual_attention.attention_utils.AttentionMask` built once by the model), or
        ``attn_mask`` and ``key_padding_mask`` with the block's ``causal``."""
        weights = {}
        attend = self._self_sublayer(weights, "sa", lambda h, **masks: self.self_attn(
            h, h, h, freqs_cos=freqs_cos, freqs_sin=freqs_sin, need_weights=need_weights or return_weights,
            kv_cache=kv_cache, input_pos=input_pos, **masks), mask, attn_mask, key_padding_mask)
        x = self._encoder_layer(x, attend)
        return (x, weights["sa"]) if return_weights else x


class DecoderBlock(_Residual):
    """Causal self-attention + cross-attention to the encoder output + feed-forward (baseline decoder).

    Fixed with respect to the published package: ``n_heads_cross`` is honoured (same parameter shapes), ``causal``
    defaults to True, and the feed-forward output gets dropout like the other sub-layers.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_heads_cross: int,
        dff: int | None,
        dropout_rate: float,
        activation: str,
        norm_first: bool,
        norm_type: str = "layernorm",
        bias: bool = True,
        causal: bool = True,
    ) -> None:
        super().__init__()
        check_block_args(d_model, dropout_rate, norm_first, causal)
        self.d_model, self.n_heads, self.n_heads_cross = d_model, n_heads, n_heads_cross
        self.norm_first, self.causal = norm_first, causal
        self._init_self_attention(n_heads, dropout_rate, norm_type, bias, {})
        self.cross_attn = Attention(d_model=d_model, n_heads=n_heads_cross, add_bias_out=bias, dropout=dropout_rate)
        self.norm3 = create_norm(d_model, norm_type)
        self.ff_block = FeedForwardBlock(d_model, dff, activation, use_bias=bias)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(
        self,
        x: Tensor,
        context: Tensor,
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
        """``x (B, m, d)``, ``context (B, n, d)`` → ``(B, m, d)`` (and ``{'sa', 'cross'}`` weights if asked).

        ``freqs_cos``/``freqs_sin``: RoPE tables of the positions of ``x`` (self-attention only);
        ``mask``/``context_mask`` (built once by the model) replace ``attn_mask``, ``key_padding_mask`` and the
        block's ``causal`` / ``context_padding_mask``."""
        weights = {}
        self_attend = self._self_sublayer(weights, "sa", lambda h, **masks: self.self_attn(
            h, h, h, freqs_cos=freqs_cos, freqs_sin=freqs_sin, need_weights=return_weights,
            kv_cache=None if kv_cache is None else kv_cache["self"], input_pos=input_pos, **masks),
            mask, attn_mask, key_padding_mask)
        cross_attend = self._cross_attention(weights, context, context_padding_mask, context_mask, kv_cache,
                                             return_weights)
        x = self._decoder_layer(x, self_attend, cross_attend)
        return (x, weights) if return_weights else x
