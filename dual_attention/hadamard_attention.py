"""Hadamard dual attention: sensory and relational heads in one attention call (``ra_type='hadamard'``).

The authors' variant after the paper (their nanochat fork, 2026) replaces the inner-product relations of RA by an
element-wise product and lets the sensory (SA) and relational (RA) heads share queries, keys and one softmax call.
For query head h = 1..H (H = n_heads_sa + n_heads_ra, SA heads first) in GQA group g = g(h), head width D:

    q_h = RoPE(N(W_q^h x)),   k_g = RoPE(N(W_k^g x))                         (N: RMS norm if ``qk_norm``)
    α_ij^h = softmax_j(⟨q_h,i , k_g,j⟩ / √D + M_ij)
    [Y_sa | Y_rel | Y_sym]_h = α^h · [v_g ‖ u_g ‖ w_g],   v_g = W_v^g x,  u_g = W_krel^g x,  w_g = W_s^g s
    SA head:  y_h,i = Y_sa_h,i
    RA head:  y_h,i = (W_qrel^h x_i) ⊙ Y_rel_h,i + Y_sym_h,i
                    = Σ_j α_ij^h ( (W_qrel^h x_i) ⊙ (W_krel^g x_j) + W_s^g s_j )
    out_i = W_o · concat_h y_h,i

The values are ``[v ‖ u]`` (width 2D) or, with symbols, ``[v ‖ u ‖ w]`` (width 3D; without SA heads v is left
out); the KV cache holds them. The
symbol term is optional (``use_symbols=False``: a model with ``symbol_retrieval=None``). ``symmetric_rels`` makes
``W_qrel^h = W_krel^{g(h)}`` (``wq_rel`` *is* ``wk_rel``), so the relation (W x_i) ⊙ (W x_j) is symmetric in i, j.
``symmetric_attn`` ties ``W_k = W_q`` (``wk`` *is* ``wq``; needs ``n_kv_heads == n_heads``). A relation activation
``rel_activation = φ ≠ identity`` gives ``y_h,i = Σ_j α_ij^h φ((W_qrel^h x_i) ⊙ (W_krel^g x_j)) (+ Y_sym)``, which
does not factorise: it is computed by materialising the ``(B, H_ra, Lq, Lk, D)`` products (the "materialised path",
a block of ``RELATION_BLOCK_SIZE`` queries at a time, checkpointed under autograd).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dual_attention._validation import check_bools, check_choice, check_positive_int, check_probability
from dual_attention.attention import check_head_geometry, check_sequence_input
from dual_attention.attention_utils import (
    POLICY,
    AttentionMask,
    merge_heads,
    repeat_kv,
    resolve_mask,
    rotary_if_given,
)
from dual_attention.kv_cache import KVCache, decoding_positions
from dual_attention.model_utils import ACTIVATIONS, get_activation_function
from dual_attention.relational_functional import map_query_blocks
from dual_attention.symbol_values import describe, is_token_symbols

#: queries per block of the materialised path (non-identity ``rel_activation``): O(block · Lk · D) memory a head
RELATION_BLOCK_SIZE = 128

#: symbol retrievals a Hadamard layer takes (per-token symbols, or none)
HADAMARD_SYMBOL_RETRIEVALS = ("symbolic_attention", "positional_symbols", "rel_sym_attn", None)


def check_hadamard_symbols(symbol_retrieval: str | None) -> None:
    """``ra_type='hadamard'`` takes per-token symbols or none; raise ValueError for position-relative ones."""
    if symbol_retrieval not in HADAMARD_SYMBOL_RETRIEVALS:
        raise ValueError(f"ra_type='hadamard' needs per-token symbols or none; symbol_retrieval={symbol_retrieval!r} "
                         f"is not valid with it; allowed: {', '.join(map(repr, HADAMARD_SYMBOL_RETRIEVALS))}")


class HadamardDualAttention(nn.Module):
    """SA and RA heads through one attention call, Hadamard-product relations (see the module docstring).

    Args:
        d_model: model width; ``head_dim = d_model // (n_heads_sa + n_heads_ra)``.
        n_heads_sa, n_heads_ra: sensory and relational query heads (SA heads come first).
        dropout: dropout on the attention weights and the output.
        n_kv_heads: key/value groups shared by all heads (GQA/MQA), default ``n_heads_sa + n_heads_ra``.
        symmetric_rels: ``wq_rel`` is ``wk_rel`` (query head h uses its group's relation projection).
        rel_activation: φ applied to the element-wise relation (§1 names); not ``'identity'`` materialises it.
        qk_norm: RMS-normalise queries and keys per head (no learned scale, so it commutes with RoPE).
        use_symbols: add the symbol term ``Σ_j α_ij W_s s_j`` to the RA heads (``ws`` exists only then).
        symmetric_attn: ``wk`` is ``wq`` (tied attention projections; needs ``n_kv_heads == n_heads``).
        add_bias_kv, add_bias_out: biases of the key/value projections (``wk``, ``wv``, ``wk_rel``, ``ws``) and
            of ``wo``.

    Parameters, in state-dict order: ``wq``, ``wk``, ``wv`` (with SA heads), ``wq_rel``, ``wk_rel``, ``ws`` (with
    symbols), ``wo``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads_sa: int,
        n_heads_ra: int,
        dropout: float = 0.0,
        n_kv_heads: int | None = None,
        symmetric_rels: bool = False,
        rel_activation: str = "identity",
        qk_norm: bool = False,
        use_symbols: bool = True,
        symmetric_attn: bool = False,
        add_bias_kv: bool = False,
        add_bias_out: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("n_heads_sa", n_heads_sa, allow_zero=True)
        check_positive_int("n_heads_ra", n_heads_ra)
        n_heads = n_heads_sa + n_heads_ra
        check_head_geometry(d_model, n_heads, None, n_kv_heads)
        check_probability("dropout", dropout)
        check_choice("rel_activation", rel_activation, ACTIVATIONS)
        check_bools(symmetric_rels=symmetric_rels, qk_norm=qk_norm, use_symbols=use_symbols,
                    symmetric_attn=symmetric_attn, add_bias_kv=add_bias_kv, add_bias_out=add_bias_out)
        self.d_model, self.dropout = d_model, dropout
        self.n_heads_sa, self.n_heads_ra, self.n_heads = n_heads_sa, n_heads_ra, n_heads
        self.head_dim = self.key_dim = d_model // n_heads
        self.n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        self.n_rep_kv = n_heads // self.n_kv_heads
        if symmetric_attn and (self.n_kv_heads != n_heads or add_bias_kv):
            raise ValueError(f"symmetric_attn=True ties wk to wq: it needs n_kv_heads == n_heads ({n_heads}, got "
                             f"{self.n_kv_heads}) and add_bias_kv=False (got {add_bias_kv})")
        self.attn_scale = 1 / math.sqrt(self.head_dim)
        self.symmetric_rels, self.symmetric_attn, self.qk_norm = symmetric_rels, symmetric_attn, qk_norm
        self.use_symbols = use_symbols
        self.rel_activation_name = rel_activation
        self.rel_activation = get_activation_function(rel_activation)
        self.add_bias_kv, self.add_bias_out = add_bias_kv, add_bias_out
        hd, kv = self.head_dim, self.n_kv_heads
        # value layout [v ‖ u ‖ w] (each D wide); v only with SA heads, w only with symbols
        self.u_offset = hd if n_heads_sa > 0 else 0
        self.n_value_parts = self.u_offset // hd + 1 + int(use_symbols)

        self.wq = nn.Linear(d_model, n_heads * hd, bias=False)
        self.wk = self.wq if symmetric_attn else nn.Linear(d_model, kv * hd, bias=add_bias_kv)
        if n_heads_sa > 0:
            self.wv = nn.Linear(d_model, kv * hd, bias=add_bias_kv)
        rel_k = nn.Linear(d_model, kv * hd, bias=add_bias_kv)  # W_krel (u_g)
        # W_qrel: one per RA head, or (symmetric_rels) the group's W_krel itself
        self.wq_rel = rel_k if symmetric_rels else nn.Linear(d_model, n_heads_ra * hd, bias=False)
        self.wk_rel = rel_k
        if use_symbols:
            self.ws = nn.Linear(d_model, kv * hd, bias=add_bias_kv)  # W_s (w_g)
        self.wo = nn.Linear(n_heads * hd, n_heads * hd, bias=add_bias_out)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    # ---------------------------------------------------------------------------------------------- cache
    def cache_spec(self) -> dict[str, tuple[int, ...]]:
        """Keys ``(Hkv, D)`` and the concatenated values ``(Hkv, n_value_parts * D)`` per position."""
        return {"k": (self.n_kv_heads, self.head_dim), "v": (self.n_kv_heads, self.n_value_parts * self.head_dim)}

    def init_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> KVCache:
        return KVCache(self.cache_spec(), batch_size, max_len, device=device, dtype=dtype)

    # ---------------------------------------------------------------------------------------------- forward
    def _check_symbols(self, symbols, x: Tensor) -> None:
        if not self.use_symbols:
            if symbols is not None:
                raise ValueError("this HadamardDualAttention was built with use_symbols=False: pass symbols=None")
            return
        if not is_token_symbols(symbols, x):
            b, n, d = x.shape
            raise ValueError(f"ra_type='hadamard' takes per-token symbols of shape (batch, length, d_model) = "
                             f"({b}, {n}, {d}) or None (use_symbols=False), got {describe(symbols)}")

    def _values(self, x: Tensor, symbols: Tensor | None) -> Tensor:
        """``[(v ‖) u (‖ w)]``: ``(B, n, Hkv, n_value_parts * D)``."""
        b, n, _ = x.shape
        parts = ([self.wv(x)] if self.n_heads_sa > 0 else []) + [self.wk_rel(x)]
        if self.use_symbols:
            parts.append(self.ws(symbols).expand(b, -1, -1))
        hd, kv = self.head_dim, self.n_kv_heads
        return torch.cat([p.view(b, n, kv, hd) for p in parts], dim=-1)  # (B, n, Hkv, c*D)

    def _rel_queries(self, x: Tensor) -> Tensor:
        """``W_qrel^h x`` for the RA heads: ``(B, H_ra, n, D)``."""
        b, n, _ = x.shape
        if self.symmetric_rels:  # the group's W_krel, repeated over its query heads; keep the RA heads
            u = self.wk_rel(x).view(b, n, self.n_kv_heads, self.head_dim)
            return repeat_kv(u, self.n_rep_kv)[:, :, self.n_heads_sa:].transpose(1, 2)
        return self.wq_rel(x).view(b, n, self.n_heads_ra, self.head_dim).transpose(1, 2)

    def _project(self, x: Tensor, symbols: Tensor | None, freqs_cos: Tensor | None, freqs_sin: Tensor | None,
                 kv_cache: KVCache | None, input_pos: Tensor | None):
        """Check the inputs; ``(q (B, H, n, D), k (B, H, Lk, D), values (B, H, Lk, c*D), q_pos)``: queries and keys
        (normed, rotated), the values ``[(v ‖) u (‖ w)]``, over the cache when decoding (``q_pos = input_pos``,
        else None), kv heads repeated."""
        check_sequence_input("x", x, self.d_model)
        self._check_symbols(symbols, x)
        b, n, _ = x.shape
        hd = self.head_dim
        q = self.wq(x).view(b, n, self.n_heads, hd)  # (B, n, H, D)
        k = self.wk(x).view(b, n, self.n_kv_heads, hd)  # (B, n, Hkv, D)
        if self.qk_norm:
            q, k = F.rms_norm(q, (hd,)), F.rms_norm(k, (hd,))
        q, k = rotary_if_given(q, k, freqs_cos, freqs_sin)
        values = self._values(x, symbols)  # (B, n, Hkv, c*D)
        q_pos = decoding_positions(kv_cache, input_pos)
        if q_pos is not None:
            k, values = kv_cache.update("k", q_pos, k), kv_cache.update("v", q_pos, values)
        k = repeat_kv(k, self.n_rep_kv).transpose(1, 2)  # (B, H, Lk, D)
        values = repeat_kv(values, self.n_rep_kv).transpose(1, 2)  # (B, H, Lk, c*D)
        return q.transpose(1, 2), k, values, q_pos

    def _attend(self, q: Tensor, k: Tensor, values: Tensor, mask: AttentionMask,
                explicit: bool) -> tuple[Tensor, Tensor | None]:
        """``(Y = α · values (B, H, n, c*D), α after dropout (B, H, n, Lk) or None)``: explicitly, or fused."""
        if explicit:
            logits = torch.matmul(q, k.transpose(-2, -1)) * self.attn_scale  # (B, H, n, Lk)
            weights = self.attn_dropout(torch.softmax(mask.apply(logits), dim=-1))
            return torch.matmul(weights, values), weights  # (B, H, n, c*D)
        width, hd = values.shape[-1], self.head_dim
        if q.device.type == "cpu":  # the CPU flash kernel needs q, k and v of one width: zero-pad q and k to it
            q, k = F.pad(q, (0, width - hd)), F.pad(k, (0, width - hd))  # (B, H, n | Lk, c*D); same scores
        y = F.scaled_dot_product_attention(q, k, values, **mask.sdpa_kwargs(), scale=self.attn_scale,
                                           dropout_p=self.dropout if self.training else 0.0)  # (B, H, n, c*D)
        return y, None

    def _relational_heads(self, x: Tensor, y: Tensor, values: Tensor, weights: Tensor | None) -> Tensor:
        """The RA heads ``(B, H_ra, n, D)``: ``(W_qrel x_i) ⊙ Y_rel (+ Y_sym)``, or with φ ≠ identity the
        materialised ``Σ_j α_ij φ((W_qrel x_i) ⊙ u_j) (+ Y_sym)``."""
        hd, sa, u0 = self.head_dim, self.n_heads_sa, self.u_offset
        q_rel = self._rel_queries(x)  # (B, H_ra, n, D)
        if self.rel_activation_name == "identity":
            rel = q_rel * y[:, sa:, :, u0:u0 + hd]  # (W_qrel x_i) ⊙ Σ_j α_ij u_j
        else:  # Σ_j α_ij φ((W_qrel x_i) ⊙ u_j): the products are materialised, a block of queries at a time
            u, w = values[:, sa:, :, u0:u0 + hd], weights[:, sa:]  # (B, H_ra, Lk, D), (B, H_ra, n, Lk)

            def activated(start: int, end: int) -> Tensor:
                products = q_rel[:, :, start:end, None, :] * u[:, :, None, :, :]  # (B, H_ra, block, Lk, D)
                return torch.einsum("bhij,bhijd->bhid", w[:, :, start:end], self.rel_activation(products))

            rel = map_query_blocks(activated, q_rel.shape[2], RELATION_BLOCK_SIZE)  # (B, H_ra, n, D)
        return rel + y[:, sa:, :, u0 + hd:] if self.use_symbols else rel

    def forward(
        self,
        x: Tensor,
        symbols: Tensor | None = None,
        freqs_cos: Tensor | None = None,
        freqs_sin: Tensor | None = None,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        *,
        need_weights: bool = False,
        key_padding_mask: Tensor | None = None,
        kv_cache: KVCache | None = None,
        input_pos: Tensor | None = None,
        mask: AttentionMask | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``x (B, n, d)`` (and per-token ``symbols (B or 1, n, d)`` or None) → ``(out (B, n, d), weights)``.

        ``weights`` is the attention ``(B, H, n, Lk)`` after dropout (SA heads first) when ``need_weights``, else
        None. ``kv_cache``/``input_pos``: incremental decoding, as in :class:`~dual_attention.attention.Attention`;
        ``mask``: an :class:`~dual_attention.attention_utils.AttentionMask` built once by the model (instead of
        ``attn_mask``/``is_causal``/``key_padding_mask``).
        """
        q, k, values, q_pos = self._project(x, symbols, freqs_cos, freqs_sin, kv_cache, input_pos)
        b, n, _ = x.shape
        mask = resolve_mask(mask, attn_mask, is_causal, key_padding_mask, q_len=n, k_len=k.shape[2], q_pos=q_pos,
                            device=x.device, batch_size=b, n_heads=self.n_heads)
        explicit = self.rel_activation_name != "identity" or POLICY.explicit(need_weights, n, q_pos is not None)
        y, weights = self._attend(q, k, values, mask, explicit)  # (B, H, n, c*D), weights
        out = torch.cat([y[:, :self.n_heads_sa, :, :self.head_dim], self._relational_heads(x, y, values, weights)],
                        dim=1)  # (B, H, n, D)
        return self.resid_dropout(self.wo(merge_heads(out))), weights if need_weights else None
