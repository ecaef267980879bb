"""The published ``datlm_utils`` functions: DAT-LM forward passes that also return the internal weights.

Same names, arguments and return shapes as the published package, fixed where it failed (post-norm blocks,
SA-only and RA-only models, retrievers other than symbolic attention) and without switching the modules to eval mode
as a side effect: the passes run in eval mode (no dropout) and every module's ``training`` flag is restored. Absent
parts are ``None`` (e.g. ``sa_attn_scores[ℓ]`` of an RA-only layer). The richer :func:`analyze` of
:mod:`dual_attention.model_analysis.analysis` is the recommended interface.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dual_attention.model_analysis.analysis import analyze_lm, retrieve_symbols_with_weights, temporarily_eval

__all__ = ["symbolic_attn_forward_get_weights", "block_forward_get_weights", "datlm_forward_w_intermediate_results"]


@torch.no_grad()
def symbolic_attn_forward_get_weights(mod: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(symbols (B, n, d), attn (B, n_heads, n, n_symbols))`` of a symbol retriever for ``x (B, n, d)``.

    ``attn[b, h, i, k] = softmax_k(⟨q_h(x_i), F_{h,k}⟩ · scale)``. Retrievers without a symbol library
    (positional, position-relative) return their symbols (``mod(x)``, as the models use them) and ``None``.
    """
    with temporarily_eval(mod):
        symbols, attn, _ = retrieve_symbols_with_weights(mod, x)
        if not isinstance(symbols, Tensor):  # position-relative: the published (n, n, d) form
            symbols = mod(x)
    return symbols, attn


@torch.no_grad()
def block_forward_get_weights(mod: nn.Module, x: Tensor, symbols, freqs_cos: Tensor | None = None,
                              freqs_sin: Tensor | None = None):
    """Run a :class:`DualAttnEncoderBlock` and return ``(x, sa_scores, ra_attn_scores, ra_rels)``.

    Shapes: ``x (B, n, d)``, ``sa_scores (B, sa, n, n)``, ``ra_attn_scores (B, ra, n, n)``, ``ra_rels (B, n, n, R)``
    with ``ra_rels[b, i, j, r] = r_r(x_i, x_j)``; None for the half the block does not have.
    """
    with temporarily_eval(mod):
        out, weights = mod(x, symbols, freqs_cos, freqs_sin, return_weights=True)
    ra = weights.get("ra") or []
    ra_attn = ra[0] if ra else None
    ra_type = mod.dual_attn.ra_type if mod.dual_attn.use_rel_attn else None
    if ra_type == "disrca" and len(ra) > 1:
        ra_rels = ra[1].permute(0, 2, 3, 1)  # (B, H, n, n) -> (B, n, n, H)
    else:
        ra_rels = ra[1] if len(ra) > 1 else None
    return out, weights.get("sa"), ra_attn, ra_rels


@torch.no_grad()
def datlm_forward_w_intermediate_results(model: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, list]]:
    """The DAT-LM forward on ``x (B, T)``: ``(logits (B, T, V), dict of per-layer lists)``.

    Keys: ``symbol_attn_scores`` ``[B, n_heads_sym, T, n_symbols]``, ``sa_attn_scores`` ``[B, sa, T, T]``,
    ``ra_attn_scores`` ``[B, ra, T, T]``, ``ra_rels`` ``[B, T, T, R]``; an entry is None where the layer lacks it.
    The logits equal ``model(x)[0]`` (in eval mode).
    """
    result = analyze_lm(model, x)
    keys = {"symbol_attn_scores": "symbol_attn", "sa_attn_scores": "sa_attn", "ra_attn_scores": "ra_attn",
            "ra_rels": "relations"}
    return result.output, {key: [getattr(layer, attr) for layer in result.layers] for key, attr in keys.items()}
