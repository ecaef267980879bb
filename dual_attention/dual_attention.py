"""Dual attention: sensory (self-attention) heads beside relational heads, concatenated.

    DualAttn(x, s) = concat( SA(x) ∈ R^{n_heads_sa · D},  RA(x, s) ∈ R^{n_heads_ra · D} ),   D = d_model / (sa + ra)

Each half has its own output projection; there is no joint projection after the concatenation (as published).
``ra_type='hadamard'`` is the exception: one :class:`~dual_attention.hadamard_attention.HadamardDualAttention`
computes both head types with shared queries/keys, one attention call and one output projection.

``symmetric_attn=True`` in ``sa_kwargs``/``ra_kwargs`` ties the attention key projection to the query projection
(W_k = W_q, the same tensor; α_ij then comes from the symmetric bilinear form ⟨W_q x_i, W_q x_j⟩ before RoPE).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dual_attention._validation import (
    build_with_kwargs,
    check_bool,
    check_choice,
    check_kwargs_dict,
    check_positive_int,
)
from dual_attention.attention import Attention, check_sequence_input
from dual_attention.attention_utils import AttentionMask, resolve_mask
from dual_attention.hadamard_attention import HadamardDualAttention
from dual_attention.kv_cache import cache_length
from dual_attention.relational_attention import (
    DisentangledRelationalCrossAttention,
    RelationalAttention,
    RelationalCrossAttention,
)

RA_TYPES = {
    "relational_attention": RelationalAttention,
    "rca": RelationalCrossAttention,
    "disrca": DisentangledRelationalCrossAttention,
    "hadamard": HadamardDualAttention,
}
#: the attention query/key projections that ``symmetric_attn`` ties, per relational module
_ATTN_PROJECTIONS = {"relational_attention": ("wq_attn", "wk_attn"), "rca": ("wq", "wk"),
                     "disrca": ("wq_attn", "wk_attn")}


def _tie_query_key(module: nn.Module, ra_type: str, kwargs: dict) -> None:
    """``symmetric_attn``: make the module's attention key projection *be* its query projection."""
    q_name, k_name = _ATTN_PROJECTIONS[ra_type]
    wq, wk = getattr(module, q_name), getattr(module, k_name)
    if wq.weight.shape != wk.weight.shape or wk.bias is not None:
        raise ValueError(f"ra_kwargs['symmetric_attn']=True ties {k_name} to {q_name}: it needs n_kv_heads == n_heads, "
                         f"the default key_dim and add_bias_kv=False; got ra_kwargs={kwargs}")
    setattr(module, k_name, wq)  # same registration slot: the state-dict keys and their order are unchanged
    module.symmetric_attn = True


def _hadamard_kwargs(sa_kwargs: dict, ra_kwargs: dict) -> dict:
    """One Hadamard layer serves both head types: ``sa_kwargs`` and ``ra_kwargs`` merge (no conflicting values)."""
    conflicts = sorted(k for k in sa_kwargs.keys() & ra_kwargs.keys() if sa_kwargs[k] != ra_kwargs[k])
    if conflicts:
        raise ValueError(f"ra_type='hadamard' builds one layer from sa_kwargs and ra_kwargs together; they give "
                         f"different values for {conflicts}: sa_kwargs={sa_kwargs}, ra_kwargs={ra_kwargs}")
    return {**sa_kwargs, **ra_kwargs}


def _check_sharing(n_heads_sa: int, n_heads_ra: int, ra_type: str, sa_kwargs: dict, ra_kwargs: dict) -> None:
    """``share_attn_params=True`` needs as many SA as RA heads, RA, and one ``symmetric_attn`` for both."""
    if n_heads_sa != n_heads_ra:
        raise ValueError("Number of heads in self-attention and relational attention must be the same if "
                         f"sharing attention parameters (n_heads_sa={n_heads_sa}, n_heads_ra={n_heads_ra})")
    if ra_type != "relational_attention":
        raise ValueError(f"share_attn_params=True needs ra_type='relational_attention', got {ra_type!r}")
    if sa_kwargs.get("symmetric_attn", False) != ra_kwargs.get("symmetric_attn", False):
        raise ValueError("share_attn_params=True needs the same symmetric_attn in sa_kwargs and ra_kwargs")


def _share_query_key(sa: Attention, ra: RelationalAttention, sa_kwargs: dict, ra_kwargs: dict) -> None:
    """``share_attn_params``: the SA query/key projections *are* RA's ``wq_attn``/``wk_attn``."""
    if sa.wq.weight.shape != ra.wq_attn.weight.shape or sa.wk.weight.shape != ra.wk_attn.weight.shape \
            or sa.wk.bias is None and ra.wk_attn.bias is not None:
        raise ValueError("share_attn_params=True needs the same key_dim, n_kv_heads and add_bias_kv in "
                         f"sa_kwargs={sa_kwargs} and ra_kwargs={ra_kwargs}")
    sa.wq, sa.wk = ra.wq_attn, ra.wk_attn


class DualAttention(nn.Module):
    """``n_heads_sa`` self-attention heads and ``n_heads_ra`` relational heads of width ``d_model // (sa + ra)``.

    Args:
        d_model, n_heads_sa, n_heads_ra, dropout: as named.
        sa_kwargs, ra_kwargs: extra arguments of :class:`Attention` / the relational module (copied, never mutated).
        share_attn_params: the SA query/key projections *are* RA's ``wq_attn``/``wk_attn`` (needs sa == ra and RA).
        ra_type: ``'relational_attention'`` (RA), ``'rca'`` or ``'disrca'`` (the paper's ablations), or
            ``'hadamard'`` (:class:`~dual_attention.hadamard_attention.HadamardDualAttention` built from the merged
            ``sa_kwargs`` and ``ra_kwargs``; registered as ``hadamard_attention``).

    ``symmetric_attn=True`` in ``sa_kwargs`` or ``ra_kwargs`` ties that half's key projection to its query
    projection (the same tensor; needs ``n_kv_heads == n_heads``).
    """

    def __init__(
        self,
        d_model: int,
        n_heads_sa: int,
        n_heads_ra: int,
        dropout: float,
        sa_kwargs: dict | None = None,
        ra_kwargs: dict | None = None,
        share_attn_params: bool = False,
        ra_type: str = "relational_attention",
    ) -> None:
        super().__init__()
        check_positive_int("n_heads_sa", n_heads_sa, allow_zero=True)
        check_positive_int("n_heads_ra", n_heads_ra, allow_zero=True)
        check_bool("share_attn_params", share_attn_params)
        sa_kwargs, ra_kwargs = check_kwargs_dict("sa_kwargs", sa_kwargs), check_kwargs_dict("ra_kwargs", ra_kwargs)
        if n_heads_sa == 0 and n_heads_ra == 0:
            raise ValueError("At least one of self-attention or relational attention must be used "
                             "(n_heads_sa=0 and n_heads_ra=0)")
        if n_heads_ra > 0:
            check_choice("ra_type", ra_type, RA_TYPES)
        if share_attn_params:
            _check_sharing(n_heads_sa, n_heads_ra, ra_type, sa_kwargs, ra_kwargs)
        self.d_model, self.dropout = d_model, dropout
        self.n_heads_sa, self.n_heads_ra = n_heads_sa, n_heads_ra
        self.ra_type, self.share_attn_params = ra_type, share_attn_params
        self.total_n_heads = n_heads_sa + n_heads_ra
        self.use_self_attn, self.use_rel_attn = n_heads_sa > 0, n_heads_ra > 0
        self.is_hadamard = self.use_rel_attn and ra_type == "hadamard"

        if self.is_hadamard:
            self.hadamard_attention = build_with_kwargs(
                "sa_kwargs/ra_kwargs", HadamardDualAttention, _hadamard_kwargs(sa_kwargs, ra_kwargs),
                d_model=d_model, n_heads_sa=n_heads_sa, n_heads_ra=n_heads_ra, dropout=dropout)
            return
        symmetric_attn = ra_kwargs.pop("symmetric_attn", False) if self.use_rel_attn else False
        check_bool("ra_kwargs['symmetric_attn']", symmetric_attn)
        if self.use_self_attn:
            self.self_attention = build_with_kwargs("sa_kwargs", Attention, sa_kwargs, d_model=d_model,
                                                    n_heads=n_heads_sa, dropout=dropout,
                                                    total_n_heads=self.total_n_heads)
        if self.use_rel_attn:
            self.relational_attention = build_with_kwargs("ra_kwargs", RA_TYPES[ra_type], ra_kwargs, d_model=d_model,
                                                          n_heads=n_heads_ra, dropout=dropout,
                                                          total_n_heads=self.total_n_heads)
            if symmetric_attn:
                _tie_query_key(self.relational_attention, ra_type, ra_kwargs)
        if share_attn_params:
            _share_query_key(self.self_attention, self.relational_attention, sa_kwargs, ra_kwargs)

    @property
    def supports_kv_cache(self) -> bool:
        return True  # every relational module (RA, RCA, DisRCA, Hadamard) keeps a KV cache

    def init_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> nn.ModuleDict:
        if self.is_hadamard:
            return nn.ModuleDict({"hadamard": self.hadamard_attention.init_kv_cache(batch_size, max_len, device,
                                                                                     dtype)})
        caches = {}
        if self.use_self_attn:
            caches["sa"] = self.self_attention.init_kv_cache(batch_size, max_len, device, dtype)
        if self.use_rel_attn:
            caches["ra"] = self.relational_attention.init_kv_cache(batch_size, max_len, device, dtype)
        return nn.ModuleDict(caches)

    def forward(
        self,
        x: Tensor,
        symbols,
        attn_mask: Tensor | None = None,
        is_causal: bool = False,
        freqs_cos: Tensor | None = None,
        freqs_sin: Tensor | None = None,
        need_weights: bool = False,
        *,
        key_padding_mask: Tensor | None = None,
        kv_cache: nn.ModuleDict | None = None,
        input_pos: Tensor | None = None,
        mask: AttentionMask | None = None,
    ) -> tuple[Tensor, Tensor | None, list[Tensor] | None]:
        """Returns ``(out (B, n, d_model), sa_weights (B, sa, n, n) or None, ra_extras or None)``.

        ``ra_extras`` (only with ``need_weights``) is the relational module's extra outputs as a list:
        ``[attn, relations]`` for RA, ``[scores]`` for RCA, ``[attn, rel]`` for DisRCA, ``[attn of the RA heads]``
        for Hadamard. Without ``need_weights`` neither half builds an n×n tensor. Both halves share one mask:
        ``mask`` (built by the model), or the one built here from ``attn_mask``, ``is_causal`` and
        ``key_padding_mask``.
        """
        check_sequence_input("x", x, self.d_model)
        b, n = x.shape[:2]
        cached = kv_cache is not None
        mask = resolve_mask(mask, attn_mask, is_causal, key_padding_mask, q_len=n,
                            k_len=cache_length(kv_cache) if cached else n, q_pos=input_pos if cached else None,
                            device=x.device, batch_size=b)
        if self.is_hadamard:
            out, weights = self.hadamard_attention(
                x, symbols, freqs_cos, freqs_sin, need_weights=need_weights, mask=mask,
                kv_cache=kv_cache["hadamard"] if cached else None, input_pos=input_pos)
            if not need_weights:
                return out, None, None
            sa = self.n_heads_sa
            return out, weights[:, :sa] if sa else None, [weights[:, sa:]]
        outs, sa_weights, ra_extras = [], None, None
        if self.use_self_attn:
            out, sa_weights = self.self_attention(
                x, x, x, freqs_cos=freqs_cos, freqs_sin=freqs_sin, need_weights=need_weights, mask=mask,
                kv_cache=kv_cache["sa"] if cached else None, input_pos=input_pos)
            outs.append(out)
        if self.use_rel_attn:
            extra = dict(kv_cache=kv_cache["ra"], input_pos=input_pos) if cached else {}
            out, *rest = self.relational_attention(x, symbols, freqs_cos=freqs_cos, freqs_sin=freqs_sin,
                                                   need_weights=need_weights, mask=mask, **extra)
            outs.append(out)
            ra_extras = list(rest) if need_weights else None
        return torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0], sa_weights, ra_extras
