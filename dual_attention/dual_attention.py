"""Dual attention: sensory (self-attention) heads beside relational heads, concatenated.

    DualAttn(x, s) = concat( SA(x) ∈ R^{n_heads_sa · D},  RA(x, s) ∈ R^{n_heads_ra · D} ),   D = d_model / (sa + ra)

Each half has its own output projection; there is no joint projection after the concatenation (as published).
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
from dual_attention.attention import Attention
from dual_attention.relational_attention import (
    DisentangledRelationalCrossAttention,
    RelationalAttention,
    RelationalCrossAttention,
)

RA_TYPES = {
    "relational_attention": RelationalAttention,
    "rca": RelationalCrossAttention,
    "disrca": DisentangledRelationalCrossAttention,
}


class DualAttention(nn.Module):
    """``n_heads_sa`` self-attention heads and ``n_heads_ra`` relational heads of width ``d_model // (sa + ra)``.

    Args:
        d_model, n_heads_sa, n_heads_ra, dropout: as named.
        sa_kwargs, ra_kwargs: extra arguments of :class:`Attention` / the relational module (copied, never mutated).
        share_attn_params: the SA query/key projections *are* RA's ``wq_attn``/``wk_attn`` (needs sa == ra and RA).
        ra_type: ``'relational_attention'`` (RA), ``'rca'`` or ``'disrca'`` (the paper's ablations).
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
            if n_heads_sa != n_heads_ra:
                raise ValueError("Number of heads in self-attention and relational attention must be the same if "
                                 f"sharing attention parameters (n_heads_sa={n_heads_sa}, n_heads_ra={n_heads_ra})")
            if ra_type != "relational_attention":
                raise ValueError(f"share_attn_params=True needs ra_type='relational_attention', got {ra_type!r}")
        self.d_model, self.dropout = d_model, dropout
        self.n_heads_sa, self.n_heads_ra = n_heads_sa, n_heads_ra
        self.ra_type, self.share_attn_params = ra_type, share_attn_params
        self.total_n_heads = n_heads_sa + n_heads_ra
        self.use_self_attn, self.use_rel_attn = n_heads_sa > 0, n_heads_ra > 0

        if self.use_self_attn:
            self.self_attention = build_with_kwargs("sa_kwargs", Attention, sa_kwargs, d_model=d_model,
                                                    n_heads=n_heads_sa, dropout=dropout,
                                                    total_n_heads=self.total_n_heads)
        if self.use_rel_attn:
            self.relational_attention = build_with_kwargs("ra_kwargs", RA_TYPES[ra_type], ra_kwargs, d_model=d_model,
                                                          n_heads=n_heads_ra, dropout=dropout,
                                                          total_n_heads=self.total_n_heads)
        if share_attn_params:
            sa, ra = self.self_attention, self.relational_attention
            if sa.wq.weight.shape != ra.wq_attn.weight.shape or sa.wk.weight.shape != ra.wk_attn.weight.shape \
                    or sa.wk.bias is None and ra.wk_attn.bias is not None:
                raise ValueError("share_attn_params=True needs the same key_dim, n_kv_heads and add_bias_kv in "
                                 f"sa_kwargs={sa_kwargs} and ra_kwargs={ra_kwargs}")
            sa.wq, sa.wk = ra.wq_attn, ra.wk_attn

    @property
    def supports_kv_cache(self) -> bool:
        return not self.use_rel_attn or isinstance(self.relational_attention, RelationalAttention)

    def init_kv_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> nn.ModuleDict:
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
    ) -> tuple[Tensor, Tensor | None, list[Tensor] | None]:
        """Returns ``(out (B, n, d_model), sa_weights (B, sa, n, n) or None, ra_extras or None)``.

        ``ra_extras`` (only with ``need_weights``) is the relational module's extra outputs as a list:
        ``[attn, relations]`` for RA, ``[scores]`` for RCA, ``[attn, rel]`` for DisRCA. Without ``need_weights``
        neither half builds an n×n tensor.
        """
        outs, sa_weights, ra_extras = [], None, None
        common = dict(attn_mask=attn_mask, is_causal=is_causal, key_padding_mask=key_padding_mask)
        if self.use_self_attn:
            out, sa_weights = self.self_attention(
                x, x, x, freqs_cos=freqs_cos, freqs_sin=freqs_sin, need_weights=need_weights, **common,
                kv_cache=None if kv_cache is None else kv_cache["sa"], input_pos=input_pos)
            outs.append(out)
        if self.use_rel_attn:
            extra = {} if kv_cache is None else dict(kv_cache=kv_cache["ra"], input_pos=input_pos)
            out, *rest = self.relational_attention(x, symbols, freqs_cos=freqs_cos, freqs_sin=freqs_sin,
                                                   need_weights=need_weights, **common, **extra)
            outs.append(out)
            ra_extras = list(rest) if need_weights else None
        return torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0], sa_weights, ra_extras
