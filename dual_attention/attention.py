"""Multi-head (self- or cross-) attention with RoPE, GQA/MQA, masks and a KV cache.

For query head h with kv head g = h // n_rep:

    Attention(x)_i = W_o · concat_h Σ_j softmax_j(⟨q_i^h, k_j^g⟩ / √head_dim + M_ij) v_j^g

computed by :func:`torch.nn.functional.scaled_dot_product_attention` (flash / memory-efficient kernels), or
explicitly when the attention weights are requested (``need_weights=True``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dual_attention._validation import (
    check_bool,
    check_divisible,
    check_optional_positive_int,
    check_positive_int,
    check_probability,
)
from dual_attention.attention_utils import (
    POLICY,
    AttentionMask,
    apply_rotary_emb,
    merge_heads,
    repeat_kv,
    resolve_mask,
)
from dual_attention.kv_cache import KVCache, StaticCache, decoding_positions


def check_head_geometry(d_model: int, n_heads: int, total_n_heads: int | None, n_kv_heads: int | None) -> None:
    """Validate the head arguments shared by the attention layers."""
    check_positive_int("d_model", d_model)
    check_positive_int("n_heads", n_heads)
    check_optional_positive_int("total_n_heads", total_n_heads)
    check_optional_positive_int("n_kv_heads", n_kv_heads)
    total = n_heads if total_n_heads is None else total_n_heads
    if total < n_heads:
        raise ValueError(f"total_n_heads={total} must be >= n_heads={n_heads}")
    check_divisible("d_model", d_model, "total_n_heads" if total_n_heads else "n_heads", total)
    if n_kv_heads is not None:
        check_divisible("n_heads", n_heads, "n_kv_heads", n_kv_heads)


def init_head_geometry(module: nn.Module, d_model: int, n_heads: int, dropout: float, total_n_heads: int | None,
                       n_kv_heads: int | None) -> None:
    """Set the head attributes the attention layers share (checked by :func:`check_head_geometry`): ``d_model``,
    ``n_heads``, ``dropout``, ``total_n_heads``, ``head_dim = d_model // total_n_heads``, ``n_kv_heads``,
    ``n_rep_kv`` (query heads per kv head) and ``attn_scale = 1/√head_dim``."""
    module.d_model, module.n_heads, module.dropout = d_model, n_heads, dropout
    module.total_n_heads = n_heads if total_n_heads is None else total_n_heads
    module.head_dim = d_model // module.total_n_heads
    module.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    module.n_rep_kv = n_heads // module.n_kv_heads
    module.attn_scale = 1 / math.sqrt(module.head_dim)


def check_sequence_input(name: str, x: Tensor, d_model: int) -> None:
    """``x`` must be a floating tensor ``(B, L, d_model)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"{name} must have shape (batch, length, {d_model}), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")


class Attention(nn.Module):
    """Multi-head attention: the sensory ("self-attention") half of dual attention.

    Args:
        d_model: model width.
        n_heads: number of query heads of this module.
        dropout: dropout on the attention weights and on the output.
        key_dim: per-head query/key width (default ``head_dim``). The scale stays ``1/√head_dim``.
        n_kv_heads: key/value heads for GQA/MQA (default ``n_heads``); must divide ``n_heads``.
        add_bias_kv: bias in the key and value projections.
        add_bias_out: bias in the output projection.
        total_n_heads: heads of the whole dual-attention layer (default ``n_heads``): ``head_dim =
            d_model // total_n_heads`` and the output width is ``n_heads * head_dim``.
        symmetric_attn: tie the key projection to the query projection (``wk`` *is* ``wq``, so W_k = W_q and,
            before RoPE, the logits ⟨W_q x_i, W_q x_j⟩ are symmetric in i, j); needs ``n_kv_heads == n_heads`` and
            ``add_bias_kv=False``. Not in the published package.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        key_dim: int | None = None,
        n_kv_heads: int | None = None,
        add_bias_kv: bool = False,
        add_bias_out: bool = False,
        total_n_heads: int | None = None,
        symmetric_attn: bool = False,
    ) -> None:
        super().__init__()
        check_head_geometry(d_model, n_heads, total_n_heads, n_kv_heads)
        check_probability("dropout", dropout)
        check_optional_positive_int("key_dim", key_dim)
        check_bool("add_bias_kv", add_bias_kv)
        check_bool("add_bias_out", add_bias_out)
        check_bool("symmetric_attn", symmetric_attn)
        if symmetric_attn and ((n_kv_heads or n_heads) != n_heads or add_bias_kv):
            raise ValueError(f"symmetric_attn=True ties wk to wq: it needs n_kv_heads == n_heads ({n_heads}, got "
                             f"{n_kv_heads}) and add_bias_kv=False (got {add_bias_kv})")
        init_head_geometry(self, d_model, n_heads, dropout, total_n_heads, n_kv_heads)
        self.key_dim = self.head_dim if key_dim is None else key_dim
        self.add_bias_kv, self.add_bias_out = add_bias_kv, add_bias_out
        self.symmetric_attn = symmetric_attn

        self.wq = nn.Linear(d_model, n_heads * self.key_dim, bias=False)
        self.wk = self.wq if symmetric_attn else nn.Linear(d_model, self.n_kv_heads * self.key_dim, bias=add_bias_kv)
        self.wv = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=add_bias_kv)
        self.wo = nn.Linear(n_heads * self.head_dim, n_heads * self.head_dim, bias=add_bias_out)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def cache_spec(self) -> dict[str, tuple[int, ...]]:
        return {"k": (self.n_kv_heads, self.key_dim), "v": (self.n_kv_heads, self.head_dim)}

    def init_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        return KVCache(self.cache_spec(), batch_size, max_len, device=device, dtype=dtype)

    def _keys_values(self, q: Tensor, key: Tensor, value: Tensor, freqs_cos, freqs_sin, kv_cache, input_pos):
        """``(q, k (B, Lk, K, Dk), v (B, Lk, K, D))``: projected (RoPE on q and k), written to / read from the cache."""
        if isinstance(kv_cache, StaticCache) and kv_cache.get("k") is not None:
            return q, kv_cache.get("k"), kv_cache.get("v")
        b, lk, _ = key.shape
        k = self.wk(key).view(b, lk, self.n_kv_heads, self.key_dim)  # (B, Lk, K, Dk)
        v = self.wv(value).view(b, lk, self.n_kv_heads, self.head_dim)  # (B, Lk, K, D)
        if freqs_cos is not None and freqs_sin is not None:
            if q.shape[1] != lk:
                raise ValueError("RoPE is for self-attention: query and key must have the same length")
            q, k = apply_rotary_emb(q, k, freqs_cos, freqs_sin)
        if isinstance(kv_cache, StaticCache):
            kv_cache.set("k", k)
            kv_cache.set("v", v)
        elif kv_cache is not None:
            pos = decoding_positions(kv_cache, input_pos)
            k, v = kv_cache.update("k", pos, k), kv_cache.update("v", pos, v)
        return q, k, v

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        freqs_cos: Tensor | None = None,
        freqs_sin: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        *,
        key_padding_mask: Tensor | None = None,
        kv_cache: KVCache | StaticCache | None = None,
        input_pos: Tensor | None = None,
        mask: AttentionMask | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``query (B, Lq, d)`` to ``key``/``value (B, Lk, d)``.

        Returns ``(out (B, Lq, n_heads * head_dim), weights (B, H, Lq, Lk) or None)``; weights are returned
        (after dropout, as in the published package) only when ``need_weights``. The masks are ``attn_mask``,
        ``is_causal`` and ``key_padding_mask`` (see :func:`~dual_attention.attention_utils.build_attn_mask`), or
        ``mask``, an :class:`~dual_attention.attention_utils.AttentionMask` built once by the model.

        With ``kv_cache`` (a :class:`KVCache` from :meth:`init_kv_cache`) the new keys/values are written at
        ``input_pos`` and the queries attend to the whole cache; a :class:`StaticCache` keeps cross-attention
        keys/values computed once.
        """
        check_sequence_input("query", query, self.d_model)
        check_sequence_input("key", key, self.d_model)
        check_sequence_input("value", value, self.d_model)
        if key.shape[:2] != value.shape[:2]:
            raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must have the same length")
        b, lq, _ = query.shape
        q = self.wq(query).view(b, lq, self.n_heads, self.key_dim)  # (B, Lq, H, Dk)
        q, k, v = self._keys_values(q, key, value, freqs_cos, freqs_sin, kv_cache, input_pos)
        q = q.transpose(1, 2)  # (B, H, Lq, Dk)
        k = repeat_kv(k, self.n_rep_kv).transpose(1, 2)  # (B, H, Lk, Dk)
        v = repeat_kv(v, self.n_rep_kv).transpose(1, 2)  # (B, H, Lk, D)
        q_pos = input_pos if isinstance(kv_cache, KVCache) else None
        mask = resolve_mask(mask, attn_mask, is_causal, key_padding_mask, q_len=lq, k_len=k.shape[2], q_pos=q_pos,
                            device=q.device, batch_size=b, n_heads=self.n_heads)
        weights = None
        if POLICY.explicit(need_weights, lq, decoding=q_pos is not None):
            logits = torch.matmul(q, k.transpose(-2, -1)) * self.attn_scale  # (B, H, Lq, Lk)
            weights = self.attn_dropout(torch.softmax(mask.apply(logits), dim=-1))
            out = torch.matmul(weights, v)  # (B, H, Lq, D)
        else:
            out = F.scaled_dot_product_attention(q, k, v, **mask.sdpa_kwargs(), scale=self.attn_scale,
                                                 dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.wo(merge_heads(out))), weights if need_weights else None
