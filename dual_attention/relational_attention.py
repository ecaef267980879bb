"""Relational attention (RA) and the two ablations of the paper (RCA, DisRCA).

Relational attention (Altabaa & Lafferty, §2.2): each head h routes, from sender j to receiver i, the relation
vector r(x_i, x_j) tagged with the sender's symbol s_j,

    RA(x, s)_i = W_o · concat_h A_i^h,
    A_i^h = Σ_j α_ij^h ( W_r^h r(x_i, x_j) + W_s^h s_j ),
    α^h = softmax(⟨W_q^{attn,h} x_i, W_k^{attn,h} x_j⟩ / √head_dim),
    r(x_i, x_j) = act( ⟨W_q^{rel,ℓ} x_i, W_k^{rel,ℓ} x_j⟩ / √d_r )_{ℓ=1..R}.

See :mod:`dual_attention.relational_functional` for the four ways it is computed (plain, query-blocked, tiled
and fused through ``scaled_dot_product_attention``) and why they agree.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dual_attention._validation import check_bool, check_choice, check_optional_positive_int, check_probability
from dual_attention.attention import check_head_geometry, check_sequence_input
from dual_attention.attention_utils import (
    apply_rotary_emb,
    build_attn_mask,
    compute_causal_mask,
    mask_to_additive,
    repeat_kv,
)
from dual_attention.kv_cache import KVCache
from dual_attention.model_utils import ACTIVATIONS, get_activation_function
from dual_attention.relational_functional import (
    DECODE_MAX_QUERIES,
    RelativeSymbolValues,
    attend_values,
    map_query_blocks,
    prefer_tiled,
    ra_blocked,
    ra_fused,
    ra_plain,
    ra_tiled,
)
from dual_attention.symbol_retrieval import RelativeSymbols

#: queries per block of the memory-bounded plain path
PLAIN_BLOCK_SIZE = 256


def _check_symbols(symbols, x: Tensor, relative: bool) -> None:
    b, n, d = x.shape
    if relative:
        if isinstance(symbols, RelativeSymbols):
            if symbols.table.shape[-1] != d:
                raise ValueError(f"relative symbols have dim {symbols.table.shape[-1]}, expected d_model={d}")
            return
        if not isinstance(symbols, Tensor) or symbols.dim() != 3 or tuple(symbols.shape) != (n, n, d):
            shape = tuple(symbols.shape) if isinstance(symbols, Tensor) else type(symbols).__name__
            raise ValueError(
                f"with use_relative_positional_symbols=True, symbols must be RelativeSymbols or of shape "
                f"[len, len, dim] = ({n}, {n}, {d}), got {shape}"
            )
        return
    if isinstance(symbols, RelativeSymbols):
        raise ValueError(
            "position-relative symbols need RelationalAttention(use_relative_positional_symbols=True) "
            "(ra_kwargs=dict(use_relative_positional_symbols=True))"
        )
    if not isinstance(symbols, Tensor) or symbols.dim() != 3 or symbols.shape[1:] != (n, d) \
            or symbols.shape[0] not in (1, b):
        shape = tuple(symbols.shape) if isinstance(symbols, Tensor) else type(symbols).__name__
        raise ValueError(f"symbols must have shape (batch, length, d_model) = ({b}, {n}, {d}), got {shape}")


class RelationalAttention(nn.Module):
    """Relational attention (the paper's RA). Arguments, defaults and parameter names as in the published package.

    Args:
        d_model: model width.
        n_heads: RA heads.
        n_relations: R, relations computed per pair (default ``n_heads``).
        dropout: dropout on the attention weights and the output.
        key_dim: attention query/key width per head (default ``head_dim``).
        n_kv_heads: heads of the attention keys and symbol values (GQA/MQA), default ``n_heads``.
        rel_activation: activation of the relations (§1 names); ``'identity'`` enables the fused path.
            ``'softmax'`` normalises each relation over the senders j (Σ_j r_ij,ℓ = 1, as published), with the
            senders the attention mask excludes (causal, padding) removed first: identical to the published
            output where nothing is masked, and causal where it must be (the published package leaked the
            future through the normaliser).
        rel_proj_dim: d_r, width of each relation's projections (default ``head_dim * n_heads // R``).
        add_bias_kv / add_bias_out: biases of ``wk_attn``/``wv`` and ``wo``.
        total_n_heads: heads of the enclosing dual-attention layer (sets ``head_dim``).
        symmetric_rels: ``wk_rel`` is ``wq_rel`` (r_ij = r_ji for the identity activation).
        use_relative_positional_symbols: symbols are position-relative, s_{clip(j-i)}.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_relations: int | None = None,
        dropout: float = 0.0,
        key_dim: int | None = None,
        n_kv_heads: int | None = None,
        rel_activation: str = "identity",
        rel_proj_dim: int | None = None,
        add_bias_kv: bool = False,
        add_bias_out: bool = False,
        total_n_heads: int | None = None,
        symmetric_rels: bool = False,
        use_relative_positional_symbols: bool = False,
    ) -> None:
        super().__init__()
        check_head_geometry(d_model, n_heads, total_n_heads, n_kv_heads)
        check_optional_positive_int("n_relations", n_relations)
        check_optional_positive_int("key_dim", key_dim)
        check_optional_positive_int("rel_proj_dim", rel_proj_dim)
        check_probability("dropout", dropout)
        check_choice("rel_activation", rel_activation, ACTIVATIONS)
        for name, flag in (("add_bias_kv", add_bias_kv), ("add_bias_out", add_bias_out),
                           ("symmetric_rels", symmetric_rels),
                           ("use_relative_positional_symbols", use_relative_positional_symbols)):
            check_bool(name, flag)
        self.d_model, self.n_heads, self.dropout = d_model, n_heads, dropout
        self.total_n_heads = n_heads if total_n_heads is None else total_n_heads
        self.head_dim = d_model // self.total_n_heads
        self.key_dim = self.head_dim if key_dim is None else key_dim
        self.n_relations = n_heads if n_relations is None else n_relations
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.n_rep_kv = n_heads // self.n_kv_heads
        if rel_proj_dim is None:
            if (self.head_dim * n_heads) % self.n_relations != 0:
                raise ValueError(
                    f"n_relations={self.n_relations} must divide head_dim * n_heads = {self.head_dim * n_heads} "
                    "when rel_proj_dim is not given"
                )
            rel_proj_dim = self.head_dim * n_heads // self.n_relations
        self.rel_proj_dim = rel_proj_dim
        self.rel_activation_name = rel_activation
        self.rel_activation = get_activation_function(rel_activation)
        self.attn_scale = 1 / math.sqrt(self.head_dim)
        self.rel_scale = 1 / math.sqrt(self.rel_proj_dim)
        self.symmetric_rels = symmetric_rels
        self.use_relative_positional_symbols = use_relative_positional_symbols
        self.add_bias_kv, self.add_bias_out = add_bias_kv, add_bias_out

        # W_r^h: relations (R) -> head_dim, one matrix per head; registered first (state-dict order)
        self.wr = nn.Parameter(torch.empty(n_heads, self.head_dim, self.n_relations))
        nn.init.kaiming_uniform_(self.wr, a=math.sqrt(5))
        self.wq_attn = nn.Linear(d_model, n_heads * self.key_dim, bias=False)
        self.wk_attn = nn.Linear(d_model, self.n_kv_heads * self.key_dim, bias=add_bias_kv)
        self.wq_rel = nn.Linear(d_model, self.n_relations * self.rel_proj_dim, bias=False)
        self.wk_rel = self.wq_rel if symmetric_rels else nn.Linear(
            d_model, self.n_relations * self.rel_proj_dim, bias=False)
        self.wv = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=add_bias_kv)  # W_s
        self.wo = nn.Linear(n_heads * self.head_dim, n_heads * self.head_dim, bias=add_bias_out)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)
        #: "auto" (tiled or fused when exact), "fused", "tiled", "blocked" or "plain"; see :meth:`choose_implementation`
        self.implementation = "auto"

    # ---------------------------------------------------------------------------------------------- cache
    def cache_spec(self) -> dict[str, tuple[int, ...]]:
        spec = {"k_attn": (self.n_kv_heads, self.key_dim), "k_rel": (self.n_relations, self.rel_proj_dim)}
        if not self.use_relative_positional_symbols:
            spec["v"] = (self.n_kv_heads, self.head_dim)
        return spec

    def init_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        return KVCache(self.cache_spec(), batch_size, max_len, device=device, dtype=dtype)

    # ---------------------------------------------------------------------------------------------- forward
    def _symbol_values(self, symbols, b: int, n: int):
        if isinstance(symbols, RelativeSymbols):
            table = self.wv(symbols.table).view(-1, self.n_kv_heads, self.head_dim)  # (2M+1, K, D)
            return RelativeSymbolValues(table, symbols.max_rel_pos)
        if symbols.dim() == 3 and self.use_relative_positional_symbols:  # published [n, n, d] form
            v = self.wv(symbols).view(n, n, self.n_kv_heads, self.head_dim)  # (Lq, Lk, K, D)
            return v.permute(2, 0, 1, 3)[None].expand(b, -1, -1, -1, -1)  # (B, K, Lq, Lk, D)
        v = self.wv(symbols).view(symbols.shape[0], n, self.n_kv_heads, self.head_dim)  # (B, Lk, K, D)
        return v.expand(b, -1, -1, -1)

    def choose_implementation(self, need_weights: bool, symbols, q_len: int | None = None) -> str:
        """The implementation ``forward`` uses: ``implementation`` unless it is ``'auto'``, which picks ``'plain'``
        for the weights or a few queries (cached decoding steps), ``'tiled'`` or ``'fused'`` where they are exact
        (see :func:`~dual_attention.relational_functional.prefer_tiled`; ``'tiled'`` also takes compact
        position-relative symbols), else ``'blocked'``."""
        if self.implementation != "auto":
            return self.implementation
        if need_weights or (q_len is not None and q_len <= DECODE_MAX_QUERIES):
            return "plain"
        if self.rel_activation_name == "identity":
            weight = self.wq_attn.weight
            tiled = prefer_tiled(weight.device, weight.dtype, self.training and self.dropout > 0)
            if not self.use_relative_positional_symbols:
                return "tiled" if tiled else "fused"
            if tiled and not isinstance(symbols, Tensor):  # compact relative symbols (not a published [n, n, d])
                return "tiled"
        return "blocked"

    def forward(
        self,
        x: Tensor,
        symbols: Tensor | RelativeSymbols,
        freqs_cos: Tensor | None = None,
        freqs_sin: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        *,
        need_weights: bool = True,
        key_padding_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        input_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Relational attention of ``x (B, n, d)`` with ``symbols``.

        Args:
            symbols: ``(B, n, d)``; with ``use_relative_positional_symbols``, :class:`RelativeSymbols` (from
                ``PositionRelativeSymbolRetriever.relative_symbols``) or the published ``[n, n, d]`` tensor.
            freqs_cos, freqs_sin: RoPE tables for these positions (applied to the attention q/k only).
            attn_mask, is_causal, key_padding_mask: see :func:`~dual_attention.attention_utils.build_attn_mask`.
            need_weights: return the attention weights and relations (as the published package always does).
                ``False`` never builds an n×n tensor: fused kernel for the identity activation, query blocks
                otherwise.
            kv_cache, input_pos: incremental decoding (see :mod:`dual_attention.kv_cache`).

        Returns:
            ``(out (B, n, n_heads*head_dim), attn (B, H, n, n) or None, relations (B, n, n, R) or None)``.
        """
        check_sequence_input("x", x, self.d_model)
        _check_symbols(symbols, x, self.use_relative_positional_symbols)
        b, n, _ = x.shape
        q = self.wq_attn(x).view(b, n, self.n_heads, self.key_dim)  # (B, n, H, Dk)
        k = self.wk_attn(x).view(b, n, self.n_kv_heads, self.key_dim)  # (B, n, K, Dk)
        if freqs_cos is not None and freqs_sin is not None:
            q, k = apply_rotary_emb(q, k, freqs_cos, freqs_sin)
        q_rel = self.wq_rel(x).view(b, n, self.n_relations, self.rel_proj_dim)  # (B, n, R, d_r)
        k_rel = self.wk_rel(x).view(b, n, self.n_relations, self.rel_proj_dim)  # (B, n, R, d_r)
        values = self._symbol_values(symbols, b, n)

        q_pos = None
        if kv_cache is not None:
            if input_pos is None:
                raise ValueError("input_pos is required when a KVCache is given")
            if isinstance(values, Tensor) and values.dim() == 5:
                raise ValueError("incremental decoding needs RelativeSymbols, not a materialised [n, n, d] tensor")
            q_pos = input_pos
            k = kv_cache.update("k_attn", input_pos, k)
            k_rel = kv_cache.update("k_rel", input_pos, k_rel)
            if isinstance(values, Tensor):
                values = kv_cache.update("v", input_pos, values)
        lk = k.shape[1]
        q = q.transpose(1, 2)  # (B, H, n, Dk)
        k = k.transpose(1, 2)  # (B, K, Lk, Dk)
        if isinstance(values, Tensor) and values.dim() == 4:
            values = values.transpose(1, 2)  # (B, K, Lk, D)
        mask, causal = build_attn_mask(attn_mask, is_causal, key_padding_mask, n, lk, q_pos=q_pos, device=x.device,
                                       batch_size=b, n_heads=self.n_heads)

        impl = self.choose_implementation(need_weights, symbols, n if kv_cache is not None else None)
        attn = relations = None
        if impl in ("fused", "tiled"):
            per_token = isinstance(values, Tensor) and values.dim() == 4
            relative = impl == "tiled" and isinstance(values, RelativeSymbolValues)
            if self.rel_activation_name != "identity" or not (per_token or relative):
                allowed = "per-token or compact position-relative" if impl == "tiled" else "per-token"
                raise ValueError(f"the {impl} implementation needs rel_activation='identity' and {allowed} symbols")
            if relative and q_pos is not None:  # the tiles put the queries at 0..n-1: a cached prefill is blocked
                impl = "blocked"
        if impl in ("fused", "tiled"):
            dropout_p = self.dropout if self.training else 0.0
            if impl == "tiled":
                if dropout_p > 0:
                    raise ValueError("the tiled implementation has no attention dropout; use 'fused' or 'blocked' "
                                     f"when training with dropout={self.dropout}")
                out = ra_tiled(q, k, q_rel, k_rel, values, self.wr, attn_scale=self.attn_scale,
                               rel_scale=self.rel_scale, mask=mask, is_causal=causal)
            else:
                out = ra_fused(q, k, q_rel, k_rel, values, self.wr, attn_scale=self.attn_scale,
                               rel_scale=self.rel_scale, dropout_p=dropout_p, mask=mask, is_causal=causal)
        else:
            kwargs = dict(attn_scale=self.attn_scale, rel_scale=self.rel_scale, rel_activation=self.rel_activation,
                          attn_dropout=self.attn_dropout, mask=mask, is_causal=causal, q_pos=q_pos)
            if impl == "plain":
                out, attn, relations = ra_plain(q, k, q_rel, k_rel, values, self.wr, return_relations=need_weights,
                                                **kwargs)
            elif impl == "blocked":
                out = ra_blocked(q, k, q_rel, k_rel, values, self.wr, block_size=PLAIN_BLOCK_SIZE, **kwargs)
            else:
                raise ValueError(f"implementation={impl!r} is not valid; allowed: 'auto', 'fused', 'tiled', 'blocked', "
                                 "'plain'")
        out = out.transpose(1, 2).reshape(b, n, self.n_heads * self.head_dim)  # (B, n, H*D)
        out = self.resid_dropout(self.wo(out))
        if not need_weights:
            return out, None, None
        return out, attn, relations


def _cross_attention_symbol_values(module: nn.Module, symbols, b: int, n: int):
    """Symbol values ``W_v s`` in the forms :func:`~dual_attention.relational_functional.attend_values` takes."""
    if isinstance(symbols, RelativeSymbols):
        table = module.wv(symbols.table).view(-1, module.n_kv_heads, module.head_dim)  # (2M+1, K, D)
        return RelativeSymbolValues(table, symbols.max_rel_pos)
    if module.use_relative_positional_symbols:  # published [n, n, d]
        v = module.wv(symbols).view(n, n, module.n_kv_heads, module.head_dim)  # (Lq, Lk, K, D)
        return v.permute(2, 0, 1, 3)[None].expand(b, -1, -1, -1, -1)  # (B, K, Lq, Lk, D)
    v = module.wv(symbols).view(symbols.shape[0], n, module.n_kv_heads, module.head_dim)  # (B, n, K, D)
    return v.expand(b, -1, -1, -1).transpose(1, 2)  # (B, K, n, D)


class _CrossAttentionBase(nn.Module):
    """Shared construction of RCA and DisRCA: heads, GQA, dropout, symbol values, output projection."""

    def _init_common(self, d_model, n_heads, dropout, n_kv_heads, add_bias_kv, add_bias_out, total_n_heads,
                     use_relative_positional_symbols) -> None:
        check_head_geometry(d_model, n_heads, total_n_heads, n_kv_heads)
        check_probability("dropout", dropout)
        for name, flag in (("add_bias_kv", add_bias_kv), ("add_bias_out", add_bias_out),
                           ("use_relative_positional_symbols", use_relative_positional_symbols)):
            check_bool(name, flag)
        self.d_model, self.n_heads, self.dropout = d_model, n_heads, dropout
        self.total_n_heads = n_heads if total_n_heads is None else total_n_heads
        self.head_dim = d_model // self.total_n_heads
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.n_rep_kv = n_heads // self.n_kv_heads
        self.attn_scale = 1 / math.sqrt(self.head_dim)
        self.use_relative_positional_symbols = use_relative_positional_symbols
        self.add_bias_kv, self.add_bias_out = add_bias_kv, add_bias_out

    def _split(self, proj: nn.Linear, x: Tensor, heads: int) -> Tensor:
        b, n, _ = x.shape
        return proj(x).view(b, n, heads, self.head_dim)  # (B, n, heads, D)

    # ---------------------------------------------------------------------------------------------- cache
    #: the per-head keys a cache keeps (besides the symbol values)
    _CACHED_KEYS: tuple[str, ...] = ()

    def cache_spec(self) -> dict[str, tuple[int, ...]]:
        """Per position: the keys of :attr:`_CACHED_KEYS` and the symbol values ``v`` (not for relative symbols,
        whose values depend on the offset only), each ``(Hkv, D)``."""
        names = self._CACHED_KEYS + (() if self.use_relative_positional_symbols else ("v",))
        return {name: (self.n_kv_heads, self.head_dim) for name in names}

    def init_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        return KVCache(self.cache_spec(), batch_size, max_len, device=device, dtype=dtype, position_major=frozenset())

    def _cache(self, kv_cache: KVCache | None, input_pos: Tensor | None, keys: dict[str, Tensor], values):
        """Write this step's keys ``(B, n, Hkv, D)`` and per-token values ``(B, Hkv, n, D)`` into ``kv_cache`` and
        return ``(keys over the cache, values over the cache, query positions or None)``; no-op without a cache."""
        if kv_cache is None:
            return keys, values, None
        if input_pos is None:
            raise ValueError("input_pos is required when a KVCache is given")
        if isinstance(values, Tensor) and values.dim() == 5:
            raise ValueError("incremental decoding needs RelativeSymbols, not a materialised [n, n, d] tensor")
        keys = {name: kv_cache.update(name, input_pos, t) for name, t in keys.items()}
        if isinstance(values, Tensor):
            values = kv_cache.update("v", input_pos, values.transpose(1, 2)).transpose(1, 2)  # (B, Hkv, Lk, D)
        return keys, values, input_pos

    def _finish(self, out: Tensor, b: int, n: int) -> Tensor:
        out = out.transpose(1, 2).reshape(b, n, self.n_heads * self.head_dim)  # (B, n, H*D)
        return self.resid_dropout(self.wo(out))


class RelationalCrossAttention(_CrossAttentionBase):
    """Relational cross-attention (RCA, the Abstractor's mechanism; an ablation in the paper).

    ``RCA(x, s)_i = W_o · concat_h Σ_j act(⟨q_i^h, k_j^h⟩ / √head_dim)_ij W_v^h s_j``: the relations themselves
    are the attention weights, and the messages are the senders' symbols. With ``activation='softmax'`` masked
    pairs get −∞ before the softmax (and the fused attention kernel is used); for other activations masked
    weights are zeroed after it.
    """

    _CACHED_KEYS = ("k",)

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        n_kv_heads: int | None = None,
        activation: str = "softmax",
        add_bias_kv: bool = False,
        add_bias_out: bool = False,
        total_n_heads: int | None = None,
        use_relative_positional_symbols: bool = False,
    ) -> None:
        super().__init__()
        self._init_common(d_model, n_heads, dropout, n_kv_heads, add_bias_kv, add_bias_out, total_n_heads,
                          use_relative_positional_symbols)
        check_choice("activation", activation, ACTIVATIONS)
        self.activation_name = activation
        self.activation = get_activation_function(activation)
        self.wq = nn.Linear(d_model, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=add_bias_kv)
        self.wv = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=add_bias_kv)
        self.wo = nn.Linear(n_heads * self.head_dim, n_heads * self.head_dim, bias=add_bias_out)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        symbols: Tensor | RelativeSymbols,
        freqs_cos: Tensor | None = None,
        freqs_sin: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        *,
        need_weights: bool = True,
        key_padding_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        input_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Returns ``(out (B, n, H*D), scores (B, H, n, Lk) after dropout, or None unless need_weights)``.

        ``kv_cache``/``input_pos``: incremental decoding (keys and symbol values of the past are cached)."""
        check_sequence_input("x", x, self.d_model)
        _check_symbols(symbols, x, self.use_relative_positional_symbols)
        b, n, _ = x.shape
        q, k = self._split(self.wq, x, self.n_heads), self._split(self.wk, x, self.n_kv_heads)
        if freqs_cos is not None and freqs_sin is not None:
            q, k = apply_rotary_emb(q, k, freqs_cos, freqs_sin)
        values = _cross_attention_symbol_values(self, symbols, b, n)
        keys, values, q_pos = self._cache(kv_cache, input_pos, {"k": k}, values)
        k = keys["k"]
        lk = k.shape[1]
        q, k = q.transpose(1, 2), repeat_kv(k, self.n_rep_kv).transpose(1, 2)  # (B, H, n, D), (B, H, Lk, D)
        mask, causal = build_attn_mask(attn_mask, is_causal, key_padding_mask, n, lk, q_pos=q_pos, device=x.device,
                                       batch_size=b, n_heads=self.n_heads)
        softmax = self.activation_name == "softmax"
        if softmax and not need_weights and isinstance(values, Tensor) and values.dim() == 4:
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, repeat_kv(values.transpose(1, 2), self.n_rep_kv).transpose(1, 2), attn_mask=mask,
                is_causal=causal, scale=self.attn_scale, dropout_p=self.dropout if self.training else 0.0)
            return self._finish(out, b, n), None
        positions = torch.arange(n, device=x.device) if q_pos is None else q_pos  # of the queries

        def attend(start: int, end: int, q_b: Tensor) -> tuple[Tensor, Tensor]:
            """Output and weights of the queries ``start:end`` (all of them when the weights are asked for)."""
            m = None if mask is None else (mask if mask.shape[-2] == 1 else mask[..., start:end, :])
            if causal:
                m = (positions[None, :] <= positions[start:end, None])[None, None]  # (1, 1, bq, n)
            logits = torch.matmul(q_b, k.transpose(-2, -1)) * self.attn_scale  # (B, H, bq, n)
            if softmax:
                scores = torch.softmax(logits + mask_to_additive(m, logits.dtype) if m is not None else logits, -1)
            else:
                scores = self.activation(logits)
                if m is not None:
                    scores = scores * (m if m.dtype == torch.bool else torch.isfinite(m)).to(scores.dtype)
            scores = self.attn_dropout(scores)
            vals = values[:, :, start:end] if isinstance(values, Tensor) and values.dim() == 5 else values
            return attend_values(scores, vals, positions[start:end]), scores  # (B, H, bq, D)

        if need_weights:
            out, scores = attend(0, n, q)
            return self._finish(out, b, n), scores
        out = map_query_blocks(lambda start, end, q_b: attend(start, end, q_b)[0], n, PLAIN_BLOCK_SIZE, q)
        return self._finish(out, b, n), None


class DisentangledRelationalCrossAttention(_CrossAttentionBase):
    """Disentangled relational cross-attention (DisRCA, an ablation in the paper).

    ``DisRCA(x, s)_i = W_o · concat_h Σ_j Dropout(α^h ⊙ ρ^h)_ij W_v^h s_j`` with attention
    ``α^h = softmax(⟨q_attn,i^h, k_attn,j^h⟩ / √D + M)`` and one relation per head
    ``ρ^h_ij = act(⟨q_rel,i^h, k_rel,j^h⟩ / √D)``; ``rel_activation='softmax'`` normalises ρ^h over the senders j,
    after removing the senders the mask excludes (the published package masked nothing there). Relation keys are
    repeated like the attention keys under GQA (the published package crashed there). The product α⊙ρ is not a
    softmax, so there is no fused kernel; the computation is query-blocked when the weights are not requested.
    """

    _CACHED_KEYS = ("k_attn", "k_rel")

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        n_kv_heads: int | None = None,
        rel_activation: str = "identity",
        add_bias_kv: bool = False,
        add_bias_out: bool = False,
        total_n_heads: int | None = None,
        use_relative_positional_symbols: bool = False,
    ) -> None:
        super().__init__()
        self._init_common(d_model, n_heads, dropout, n_kv_heads, add_bias_kv, add_bias_out, total_n_heads,
                          use_relative_positional_symbols)
        check_choice("rel_activation", rel_activation, ACTIVATIONS)
        self.rel_activation_name = rel_activation
        self.rel_activation = get_activation_function(rel_activation)
        hd, kv = self.head_dim, self.n_kv_heads
        self.wq_attn = nn.Linear(d_model, n_heads * hd, bias=False)
        self.wk_attn = nn.Linear(d_model, kv * hd, bias=add_bias_kv)
        self.wq_rel = nn.Linear(d_model, n_heads * hd, bias=False)
        self.wk_rel = nn.Linear(d_model, kv * hd, bias=add_bias_kv)
        self.wv = nn.Linear(d_model, kv * hd, bias=add_bias_kv)
        self.wo = nn.Linear(n_heads * hd, n_heads * hd, bias=add_bias_out)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def _weights(self, q, k, q_rel, k_rel, mask) -> tuple[Tensor, Tensor, Tensor]:
        """``(α, ρ, Dropout(α ⊙ ρ))``, each ``(B, H, Lq, Lk)``."""
        logits = torch.matmul(q, k.transpose(-2, -1)) * self.attn_scale  # (B, H, Lq, Lk)
        if mask is not None:
            logits = logits + mask_to_additive(mask, logits.dtype)
        attn = torch.softmax(logits, dim=-1)
        rel = torch.matmul(q_rel, k_rel.transpose(-2, -1)) * self.attn_scale  # (B, H, Lq, Lk)
        if mask is not None and isinstance(self.rel_activation, nn.Softmax):  # over the senders j: mask first
            rel = rel.masked_fill(~(mask if mask.dtype == torch.bool else torch.isfinite(mask)), float("-inf"))
        rel = self.rel_activation(rel)
        return attn, rel, self.attn_dropout(attn * rel)

    def forward(
        self,
        x: Tensor,
        symbols: Tensor | RelativeSymbols,
        freqs_cos: Tensor | None = None,
        freqs_sin: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        *,
        need_weights: bool = True,
        key_padding_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        input_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Returns ``(out, attn (B, H, n, Lk) before dropout, rel (B, H, n, Lk))``; weights only if need_weights.

        ``kv_cache``/``input_pos``: incremental decoding (attention keys, relation keys and symbol values cached)."""
        check_sequence_input("x", x, self.d_model)
        _check_symbols(symbols, x, self.use_relative_positional_symbols)
        b, n, _ = x.shape
        q, k = self._split(self.wq_attn, x, self.n_heads), self._split(self.wk_attn, x, self.n_kv_heads)
        if freqs_cos is not None and freqs_sin is not None:
            q, k = apply_rotary_emb(q, k, freqs_cos, freqs_sin)
        values = _cross_attention_symbol_values(self, symbols, b, n)
        k_rel = self._split(self.wk_rel, x, self.n_kv_heads)  # (B, n, Hkv, D)
        keys, values, q_pos = self._cache(kv_cache, input_pos, {"k_attn": k, "k_rel": k_rel}, values)
        lk = keys["k_attn"].shape[1]
        q, k = q.transpose(1, 2), repeat_kv(keys["k_attn"], self.n_rep_kv).transpose(1, 2)  # (B, H, n | Lk, D)
        q_rel = self._split(self.wq_rel, x, self.n_heads).transpose(1, 2)  # (B, H, n, D)
        k_rel = repeat_kv(keys["k_rel"], self.n_rep_kv).transpose(1, 2)  # (B, H, Lk, D)
        mask, causal = build_attn_mask(attn_mask, is_causal, key_padding_mask, n, lk, q_pos=q_pos, device=x.device,
                                       batch_size=b, n_heads=self.n_heads)
        if causal:
            mask = compute_causal_mask(n, device=x.device)[None, None]
        positions = torch.arange(n, device=x.device) if q_pos is None else q_pos  # of the queries
        if need_weights:
            attn, rel, weights = self._weights(q, k, q_rel, k_rel, mask)
            out = attend_values(weights, values, positions)
            return self._finish(out, b, n), attn, rel
        blocks = []
        for start in range(0, n, PLAIN_BLOCK_SIZE):
            end = min(start + PLAIN_BLOCK_SIZE, n)

            def run(q_b: Tensor, q_rel_b: Tensor, start=start, end=end) -> Tensor:
                m = None if mask is None else (mask if mask.shape[-2] == 1 else mask[..., start:end, :])
                vals = values[:, :, start:end] if isinstance(values, Tensor) and values.dim() == 5 else values
                return attend_values(self._weights(q_b, k, q_rel_b, k_rel, m)[2], vals, positions[start:end])

            args = (q[:, :, start:end], q_rel[:, :, start:end])
            blocks.append(checkpoint(run, *args, use_reentrant=False) if torch.is_grad_enabled() and n > end - start
                          else run(*args))
        return self._finish(torch.cat(blocks, dim=2), b, n), None, None

