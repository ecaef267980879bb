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
import torch.nn.functional as F
from torch import Tensor, nn

from dual_attention._validation import check_bools, check_choice, check_optional_positive_int, check_probability
from dual_attention.attention import check_head_geometry, check_sequence_input, init_head_geometry
from dual_attention.attention_utils import (
    POLICY,
    AttentionMask,
    merge_heads,
    positions,
    repeat_kv,
    resolve_mask,
    rotary_if_given,
)
from dual_attention.kv_cache import KVCache, decoding_positions
from dual_attention.model_utils import ACTIVATIONS, get_activation_function
from dual_attention.relational_functional import (
    IMPLEMENTATIONS,
    RAProblem,
    map_query_blocks,
    resolve_implementation,
    run_implementation,
)
from dual_attention.symbol_values import RelativeSymbols, SymbolValues, describe, is_token_symbols, symbol_values


def _check_symbols(symbols, x: Tensor, relative: bool) -> None:
    b, n, d = x.shape
    if relative:
        if isinstance(symbols, RelativeSymbols):
            if symbols.table.shape[-1] != d:
                raise ValueError(f"relative symbols have dim {symbols.table.shape[-1]}, expected d_model={d}")
            return
        if not isinstance(symbols, Tensor) or symbols.dim() != 3 or tuple(symbols.shape) != (n, n, d):
            raise ValueError(
                f"with use_relative_positional_symbols=True, symbols must be RelativeSymbols or of shape "
                f"[len, len, dim] = ({n}, {n}, {d}), got {describe(symbols)}"
            )
        return
    if isinstance(symbols, RelativeSymbols):
        raise ValueError(
            "position-relative symbols need RelationalAttention(use_relative_positional_symbols=True) "
            "(ra_kwargs=dict(use_relative_positional_symbols=True))"
        )
    if not is_token_symbols(symbols, x):
        raise ValueError(f"symbols must have shape (batch, length, d_model) = ({b}, {n}, {d}), got {describe(symbols)}")


class _RelationalBase(nn.Module):
    """What RA, RCA and DisRCA share: input checks, the attention queries/keys with RoPE, the symbol values and the
    keys (through the KV cache when decoding), and the output projection."""

    @staticmethod
    def _split(proj: nn.Linear, x: Tensor, heads: int, width: int) -> Tensor:
        b, n, _ = x.shape
        return proj(x).view(b, n, heads, width)  # (B, n, heads, width)

    def _check_inputs(self, x: Tensor, symbols) -> None:
        check_sequence_input("x", x, self.d_model)
        _check_symbols(symbols, x, self.use_relative_positional_symbols)

    def _attention_qk(self, x: Tensor, symbols, wq: nn.Linear, wk: nn.Linear, width: int, freqs_cos: Tensor | None,
                      freqs_sin: Tensor | None) -> tuple[Tensor, Tensor]:
        """Check ``x (B, n, d)`` and ``symbols``; the attention queries ``(B, n, H, width)`` and keys
        ``(B, n, Hkv, width)``, rotated when RoPE tables are given."""
        self._check_inputs(x, symbols)
        q, k = self._split(wq, x, self.n_heads, width), self._split(wk, x, self.n_kv_heads, width)
        return rotary_if_given(q, k, freqs_cos, freqs_sin)

    def _values_and_keys(self, symbols, b: int, keys: dict[str, Tensor], kv_cache: KVCache | None,
                         input_pos: Tensor | None) -> tuple[SymbolValues, dict[str, Tensor], Tensor | None]:
        """``(values, keys, q_pos)``: the symbol values ``W_s s`` and the ``keys`` ``(B, n, heads, ·)``; when
        decoding, both read through ``kv_cache`` (the new positions written at ``q_pos = input_pos``), else
        ``q_pos`` is None."""
        values = symbol_values(symbols, self.wv, self.n_kv_heads, self.head_dim, b,
                               pairwise=self.use_relative_positional_symbols)
        q_pos = decoding_positions(kv_cache, input_pos)
        if q_pos is not None:
            values = values.cached(kv_cache, q_pos)
            keys = {name: kv_cache.update(name, q_pos, t) for name, t in keys.items()}
        return values, keys, q_pos

    def _output(self, out: Tensor) -> Tensor:
        """``W_o`` of the heads ``(B, H, n, D)`` side by side, with dropout: ``(B, n, H*D)``."""
        return self.resid_dropout(self.wo(merge_heads(out)))


class RelationalAttention(_RelationalBase):
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
        check_bools(add_bias_kv=add_bias_kv, add_bias_out=add_bias_out, symmetric_rels=symmetric_rels,
                    use_relative_positional_symbols=use_relative_positional_symbols)
        init_head_geometry(self, d_model, n_heads, dropout, total_n_heads, n_kv_heads)
        self.key_dim = self.head_dim if key_dim is None else key_dim
        self.n_relations = n_heads if n_relations is None else n_relations
        self.rel_proj_dim = self._default_rel_proj_dim() if rel_proj_dim is None else rel_proj_dim
        self.rel_activation_name = rel_activation
        self.rel_activation = get_activation_function(rel_activation)
        self.rel_scale = 1 / math.sqrt(self.rel_proj_dim)
        self.symmetric_rels = symmetric_rels
        self.use_relative_positional_symbols = use_relative_positional_symbols
        self.add_bias_kv, self.add_bias_out = add_bias_kv, add_bias_out
        self._init_parameters()
        self.implementation = "auto"

    def _default_rel_proj_dim(self) -> int:
        """d_r = head_dim · n_heads / R (R must divide it)."""
        width = self.head_dim * self.n_heads
        if width % self.n_relations != 0:
            raise ValueError(f"n_relations={self.n_relations} must divide head_dim * n_heads = {width} "
                             "when rel_proj_dim is not given")
        return width // self.n_relations

    def _init_parameters(self) -> None:
        """W_r, the attention and relation projections, W_s (``wv``) and W_o, in state-dict order."""
        d, h, hd, kv = self.d_model, self.n_heads, self.head_dim, self.n_kv_heads
        rel_width = self.n_relations * self.rel_proj_dim
        # W_r^h: relations (R) -> head_dim, one matrix per head; registered first (state-dict order)
        self.wr = nn.Parameter(torch.empty(h, hd, self.n_relations))
        nn.init.kaiming_uniform_(self.wr, a=math.sqrt(5))
        self.wq_attn = nn.Linear(d, h * self.key_dim, bias=False)
        self.wk_attn = nn.Linear(d, kv * self.key_dim, bias=self.add_bias_kv)
        self.wq_rel = nn.Linear(d, rel_width, bias=False)
        self.wk_rel = self.wq_rel if self.symmetric_rels else nn.Linear(d, rel_width, bias=False)
        self.wv = nn.Linear(d, kv * hd, bias=self.add_bias_kv)  # W_s
        self.wo = nn.Linear(h * hd, h * hd, bias=self.add_bias_out)
        self.attn_dropout = nn.Dropout(self.dropout)
        self.resid_dropout = nn.Dropout(self.dropout)

    @property
    def implementation(self) -> str:
        """How the layer computes: ``'auto'`` (default), ``'fused'``, ``'tiled'``, ``'blocked'`` or ``'plain'``; see
        :func:`~dual_attention.relational_functional.resolve_implementation`. Checked when set."""
        return self._implementation

    @implementation.setter
    def implementation(self, name: str) -> None:
        check_choice("implementation", name, IMPLEMENTATIONS)
        self._implementation = name

    # ---------------------------------------------------------------------------------------------- cache
    def cache_spec(self) -> dict[str, tuple[int, ...]]:
        spec = {"k_attn": (self.n_kv_heads, self.key_dim), "k_rel": (self.n_relations, self.rel_proj_dim)}
        if not self.use_relative_positional_symbols:
            spec["v"] = (self.n_kv_heads, self.head_dim)
        return spec

    def init_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        return KVCache(self.cache_spec(), batch_size, max_len, device=device, dtype=dtype)

    # ---------------------------------------------------------------------------------------------- forward
    def _input_projections(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``W_q^attn x (B, n, H, Dk)``, ``W_k^attn x (B, n, K, Dk)``, ``W_q^rel x`` and ``W_k^rel x`` (each
        ``(B, n, R, d_r)``) by one matrix product with the four weights stacked (a tied ``wk_rel`` once): one
        larger product instead of four, in both passes."""
        b, n, _ = x.shape
        projections = [self.wq_attn, self.wk_attn, self.wq_rel] + ([] if self.symmetric_rels else [self.wk_rel])
        bias = None
        if any(p.bias is not None for p in projections):
            bias = torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.out_features)
                              for p in projections])
        weight = torch.cat([p.weight for p in projections])  # (P, d)
        parts = F.linear(x, weight, bias).split([p.out_features for p in projections], dim=-1)
        rel_shape = (b, n, self.n_relations, self.rel_proj_dim)
        return (parts[0].view(b, n, self.n_heads, self.key_dim), parts[1].view(b, n, self.n_kv_heads, self.key_dim),
                parts[2].view(rel_shape), parts[-1].view(rel_shape))

    def project(self, x: Tensor, symbols: Tensor | RelativeSymbols, freqs_cos: Tensor | None = None,
                freqs_sin: Tensor | None = None, kv_cache: KVCache | None = None,
                input_pos: Tensor | None = None) -> RAProblem:
        """The problem of ``x (B, n, d)`` and ``symbols`` after projection (without a mask): attention and relation
        queries/keys and the symbol values; with ``kv_cache``, the keys and values of every cached position."""
        self._check_inputs(x, symbols)
        q, k, q_rel, k_rel = self._input_projections(x)
        q, k = rotary_if_given(q, k, freqs_cos, freqs_sin)
        values, keys, q_pos = self._values_and_keys(symbols, x.shape[0], {"k_attn": k, "k_rel": k_rel}, kv_cache,
                                                    input_pos)
        return RAProblem(q.transpose(1, 2), keys["k_attn"].transpose(1, 2), q_rel, keys["k_rel"], values, self.wr,
                         q_pos=q_pos, attn_scale=self.attn_scale, rel_scale=self.rel_scale,
                         rel_activation=self.rel_activation, dropout_p=self.dropout if self.training else 0.0)

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
        mask: AttentionMask | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Relational attention of ``x (B, n, d)`` with ``symbols``.

        Args:
            symbols: ``(B, n, d)``; with ``use_relative_positional_symbols``, :class:`RelativeSymbols` (from
                ``PositionRelativeSymbolRetriever.relative_symbols``) or the published ``[n, n, d]`` tensor.
            freqs_cos, freqs_sin: RoPE tables for these positions (applied to the attention q/k only).
            attn_mask, is_causal, key_padding_mask: see :func:`~dual_attention.attention_utils.build_attn_mask`;
                or ``mask``, an :class:`~dual_attention.attention_utils.AttentionMask` built once by the model.
            need_weights: return the attention weights and relations (as the published package always does).
                ``False`` never builds an n×n tensor (see :attr:`implementation`).
            kv_cache, input_pos: incremental decoding (see :mod:`dual_attention.kv_cache`).

        Returns:
            ``(out (B, n, n_heads*head_dim), attn (B, H, n, n) or None, relations (B, n, n, R) or None)``.
        """
        b, n, _ = x.shape
        problem = self.project(x, symbols, freqs_cos, freqs_sin, kv_cache, input_pos)
        problem.mask = resolve_mask(mask, attn_mask, is_causal, key_padding_mask, q_len=n, k_len=problem.lk,
                                    q_pos=problem.q_pos, device=x.device, batch_size=b, n_heads=self.n_heads)
        implementation = resolve_implementation(self.implementation, problem, need_weights=need_weights,
                                                decoding=kv_cache is not None)
        out, attn, relations = run_implementation(implementation, problem)  # (B, H, n, D), weights
        out = self._output(out)
        return (out, attn, relations) if need_weights else (out, None, None)


class _CrossAttentionBase(_RelationalBase):
    """Shared construction of RCA and DisRCA (heads, GQA, activation, projections, dropout) and their query-blocked
    attention of the symbol values."""

    def _init_common(self, d_model, n_heads, dropout, n_kv_heads, add_bias_kv, add_bias_out, total_n_heads,
                     use_relative_positional_symbols, activation: tuple[str, str],
                     projections: tuple[str, ...]) -> None:
        """Check the arguments; set the head geometry and the activation (``activation = (argument, value)``: the
        attributes ``<argument>_name`` and ``<argument>``); register the query/key ``projections`` (``wq*``: query
        heads, no bias; the others: kv heads, ``add_bias_kv``), then ``wv`` (W_s), ``wo`` and the dropouts, in this
        order (state dict)."""
        check_head_geometry(d_model, n_heads, total_n_heads, n_kv_heads)
        check_probability("dropout", dropout)
        check_bools(add_bias_kv=add_bias_kv, add_bias_out=add_bias_out,
                    use_relative_positional_symbols=use_relative_positional_symbols)
        activation_arg, activation_name = activation
        check_choice(activation_arg, activation_name, ACTIVATIONS)
        init_head_geometry(self, d_model, n_heads, dropout, total_n_heads, n_kv_heads)
        self.use_relative_positional_symbols = use_relative_positional_symbols
        self.add_bias_kv, self.add_bias_out = add_bias_kv, add_bias_out
        setattr(self, f"{activation_arg}_name", activation_name)
        setattr(self, activation_arg, get_activation_function(activation_name))
        hd, kv = self.head_dim, self.n_kv_heads
        for name in projections:
            query = name.startswith("wq")
            setattr(self, name, nn.Linear(d_model, (n_heads if query else kv) * hd, bias=add_bias_kv and not query))
        self.wv = nn.Linear(d_model, kv * hd, bias=add_bias_kv)
        self.wo = nn.Linear(n_heads * hd, n_heads * hd, bias=add_bias_out)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def _keys_values_mask(self, x: Tensor, symbols, keys: dict[str, Tensor], kv_cache: KVCache | None,
                          input_pos: Tensor | None, mask, attn_mask, is_causal, key_padding_mask):
        """``(keys, values, mask, q_pos)``: the ``keys (B, n, Hkv, D)`` as ``(B, H, Lk, D)`` (over the cache when
        decoding, kv heads repeated), the symbol values (cached likewise), the mask, the query positions."""
        b, n, _ = x.shape
        values, keys, q_pos = self._values_and_keys(symbols, b, keys, kv_cache, input_pos)
        keys = {name: repeat_kv(t, self.n_rep_kv).transpose(1, 2) for name, t in keys.items()}  # (B, H, Lk, D)
        lk = next(iter(keys.values())).shape[2]
        mask = resolve_mask(mask, attn_mask, is_causal, key_padding_mask, q_len=n, k_len=lk, q_pos=q_pos,
                            device=x.device, batch_size=b, n_heads=self.n_heads)
        return keys, values, mask, q_pos

    @staticmethod
    def _attend_blocks(weights_fn, values: SymbolValues, mask: AttentionMask, n: int, lk: int,
                       q_pos: Tensor | None, device, need_weights: bool):
        """``(Σ_j w_ij v_j (B, H, n, D), weights or None)`` for the weights ``weights_fn(start, end, mask of those
        queries) -> (B, H, bq, Lk)``: all at once when they are returned, else in query blocks (never n×Lk per
        head)."""
        q_positions = positions(n, q_pos, device)

        def attend(start: int, end: int) -> tuple[Tensor, Tensor]:
            weights = weights_fn(start, end, mask.query_block(start, end, lk, device))
            return values.query_block(start, end).attend(weights, q_positions[start:end]), weights

        if need_weights:
            return attend(0, n)
        return map_query_blocks(lambda start, end: attend(start, end)[0], n, POLICY.block_size), None

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
                          use_relative_positional_symbols, ("activation", activation), ("wq", "wk"))

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
        mask: AttentionMask | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Returns ``(out (B, n, H*D), scores (B, H, n, Lk) after dropout, or None unless need_weights)``.

        ``kv_cache``/``input_pos``: incremental decoding (keys and symbol values of the past are cached)."""
        q, k = self._attention_qk(x, symbols, self.wq, self.wk, self.head_dim, freqs_cos, freqs_sin)
        n = x.shape[1]
        keys, values, mask, q_pos = self._keys_values_mask(x, symbols, {"k": k}, kv_cache, input_pos, mask,
                                                           attn_mask, is_causal, key_padding_mask)
        q, k = q.transpose(1, 2), keys["k"]  # (B, H, n, D), (B, H, Lk, D)
        lk = k.shape[2]
        softmax = self.activation_name == "softmax"
        if softmax and values.form == "token" and not POLICY.explicit(need_weights, n, q_pos is not None):
            v = repeat_kv(values.tensor.transpose(1, 2), self.n_rep_kv).transpose(1, 2)  # (B, H, Lk, D)
            out = F.scaled_dot_product_attention(q, k, v, **mask.sdpa_kwargs(), scale=self.attn_scale,
                                                 dropout_p=self.dropout if self.training else 0.0)
            return self._output(out), None

        def scores(start: int, end: int, m: AttentionMask) -> Tensor:
            logits = torch.matmul(q[:, :, start:end], k.transpose(-2, -1)) * self.attn_scale  # (B, H, bq, Lk)
            if softmax:
                return self.attn_dropout(torch.softmax(m.apply(logits), dim=-1))
            weights, allowed = self.activation(logits), m.allowed(end - start, lk, x.device)
            return self.attn_dropout(weights if allowed is None else weights * allowed.to(weights.dtype))

        out, weights = self._attend_blocks(scores, values, mask, n, lk, q_pos, x.device, need_weights)
        return self._output(out), weights


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
                          use_relative_positional_symbols, ("rel_activation", rel_activation),
                          ("wq_attn", "wk_attn", "wq_rel", "wk_rel"))

    def _weights(self, q, k, q_rel, k_rel, mask: AttentionMask) -> tuple[Tensor, Tensor, Tensor]:
        """``(α, ρ, Dropout(α ⊙ ρ))``, each ``(B, H, Lq, Lk)``."""
        attn = torch.softmax(mask.apply(torch.matmul(q, k.transpose(-2, -1)) * self.attn_scale), dim=-1)
        rel = torch.matmul(q_rel, k_rel.transpose(-2, -1)) * self.attn_scale  # (B, H, Lq, Lk)
        if isinstance(self.rel_activation, nn.Softmax):  # normalised over the senders j: the masked ones excluded
            allowed = mask.allowed(rel.shape[-2], rel.shape[-1], rel.device)
            rel = rel if allowed is None else rel.masked_fill(~allowed, float("-inf"))
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
        mask: AttentionMask | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Returns ``(out, attn (B, H, n, Lk) before dropout, rel (B, H, n, Lk))``; weights only if need_weights.

        ``kv_cache``/``input_pos``: incremental decoding (attention keys, relation keys and symbol values cached)."""
        q, k = self._attention_qk(x, symbols, self.wq_attn, self.wk_attn, self.head_dim, freqs_cos, freqs_sin)
        n = x.shape[1]
        k_rel = self._split(self.wk_rel, x, self.n_kv_heads, self.head_dim)  # (B, n, Hkv, D)
        keys, values, mask, q_pos = self._keys_values_mask(x, symbols, {"k_attn": k, "k_rel": k_rel}, kv_cache,
                                                           input_pos, mask, attn_mask, is_causal, key_padding_mask)
        q_rel = self._split(self.wq_rel, x, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, n, D)
        q, k, k_rel = q.transpose(1, 2), keys["k_attn"], keys["k_rel"]  # (B, H, n, D), (B, H, Lk, D)
        extras = []

        def weights(start: int, end: int, m: AttentionMask) -> Tensor:
            attn, rel, product = self._weights(q[:, :, start:end], k, q_rel[:, :, start:end], k_rel, m)
            if need_weights:
                extras[:] = [attn, rel]
            return product

        out, _ = self._attend_blocks(weights, values, mask, n, k.shape[2], q_pos, x.device, need_weights)
        return (self._output(out), *extras) if need_weights else (self._output(out), None, None)
