"""Helpers shared by the attention layers: GQA head repetition, rotary embeddings (RoPE) and masks.

Mask convention (as in :func:`torch.nn.functional.scaled_dot_product_attention`): a boolean mask is ``True``
where a query *may attend* to a key; a float mask is added to the attention logits.
"""

from __future__ import annotations

import torch
from torch import Tensor


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Repeat each key/value head ``n_rep`` times consecutively: ``(B, L, K, D) -> (B, L, K*n_rep, D)``.

    Query head ``h`` then uses kv head ``h // n_rep`` (repeat-interleave order, as in GQA/MQA).
    """
    if n_rep == 1:
        return x
    b, length, n_kv, d = x.shape
    return x[:, :, :, None, :].expand(b, length, n_kv, n_rep, d).reshape(b, length, n_kv * n_rep, d)


def precompute_freqs_cis(dim: int, end: int, theta: float = 10000.0) -> tuple[Tensor, Tensor]:
    """RoPE tables ``(cos, sin)``, each float32 ``(end, dim // 2)``: angle(p, k) = p * theta^(-2k/dim)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    angles = torch.outer(torch.arange(end, dtype=torch.float32), inv_freq)  # (end, dim/2)
    return torch.cos(angles), torch.sin(angles)


def reshape_for_broadcast(freqs: Tensor, x: Tensor) -> Tensor:
    """Reshape ``freqs (L, D/2)`` to broadcast against ``x (B, L, heads, D/2)``: ``(1, L, 1, D/2)``."""
    if freqs.shape != (x.shape[1], x.shape[-1]):
        raise ValueError(
            f"RoPE table of shape {tuple(freqs.shape)} does not fit input of shape {tuple(x.shape)}: "
            f"expected ({x.shape[1]}, {x.shape[-1]})"
        )
    shape = [d if i in (1, x.ndim - 1) else 1 for i, d in enumerate(x.shape)]
    return freqs.view(shape)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    # interleaved pairs (x_2k, x_2k+1) rotated as (real, imag), computed in at least float32 (float64 stays float64)
    dtype = torch.promote_types(x.dtype, torch.float32)
    x_ = x.to(dtype).reshape(*x.shape[:-1], -1, 2)  # (B, L, H, D/2, 2)
    x_r, x_i = x_.unbind(-1)
    cos, sin = reshape_for_broadcast(cos.to(dtype), x_r), reshape_for_broadcast(sin.to(dtype), x_r)
    out = torch.stack((x_r * cos - x_i * sin, x_r * sin + x_i * cos), dim=-1)
    return out.flatten(-2).type_as(x)


def apply_rotary_emb(xq: Tensor, xk: Tensor, freqs_cos: Tensor, freqs_sin: Tensor) -> tuple[Tensor, Tensor]:
    """Rotary position embedding of queries and keys ``(B, L, heads, D)`` (heads may differ between them).

    Computed in float32 for half-precision inputs (float64 inputs stay float64), returned in the input dtype.

    Each feature pair ``(x_2k, x_2k+1)`` at position p becomes
    ``(x_2k cos θ_pk − x_2k+1 sin θ_pk, x_2k sin θ_pk + x_2k+1 cos θ_pk)`` (interleaved, not rotate-half).
    """
    for name, x in (("xq", xq), ("xk", xk)):
        if x.shape[-1] != 2 * freqs_cos.shape[-1]:
            raise ValueError(
                f"RoPE needs the per-head dim of {name} ({x.shape[-1]}) to equal 2 * freqs.shape[-1] "
                f"({2 * freqs_cos.shape[-1]}); key_dim must equal head_dim when RoPE is used"
            )
    return _rotate(xq, freqs_cos, freqs_sin), _rotate(xk, freqs_cos, freqs_sin)


def compute_causal_mask(size: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``(size, size)`` mask, True where key j <= query i (lower triangle: may attend)."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril()


def compute_diag_mask(size: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``(size, size)`` mask, False on the diagonal and True elsewhere."""
    return ~torch.eye(size, dtype=torch.bool, device=device)


def build_attn_mask(
    attn_mask: Tensor | None,
    is_causal: bool,
    key_padding_mask: Tensor | None,
    q_len: int,
    k_len: int,
    q_pos: Tensor | None = None,
    device: torch.device | None = None,
    batch_size: int | None = None,
    n_heads: int | None = None,
) -> tuple[Tensor | None, bool]:
    """Combine a user mask, causality and key padding into one mask for the attention kernels.

    Args:
        attn_mask: ``None``, or a bool (True = may attend) / float (additive) mask of shape ``(Lq, Lk)``,
            ``(B, Lq, Lk)`` or ``(B or 1, H or 1, Lq, Lk)``.
        is_causal: the query at absolute position ``p_i`` sees keys ``j <= p_i``.
        key_padding_mask: ``None`` or bool ``(B, Lk)``, True for real tokens (which may be attended).
        q_pos: ``None`` (queries at positions ``0..Lq-1``) or the absolute positions ``(Lq,)`` of the queries
            (decoding with a KV cache, where keys are the cache buffer ``0..Lk-1``).
        batch_size, n_heads: when given, the batch / head dims of the masks are checked against them.

    Returns:
        ``(mask, is_causal)``: either ``(None, flag)`` when the kernels can use their own causal masking, or a
        4-D mask ``(B or 1, H or 1, Lq, Lk)`` (bool, or float if ``attn_mask`` was float) and ``False``.
        Query rows with no attendable key (e.g. padding queries) are opened fully so the softmax stays
        finite; their outputs are meaningless but never reach real tokens, whose keys stay masked.
    """
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__} ({is_causal!r})")
    if attn_mask is None and key_padding_mask is None:
        if not is_causal:
            return None, False
        if q_pos is None and q_len == k_len:
            return None, True
    mask: Tensor | None = None
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"attn_mask must be a Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
            raise TypeError(f"attn_mask must be a bool (True = may attend) or float (additive) tensor, "
                            f"got {attn_mask.dtype}")
        lead = tuple(attn_mask.shape[:-2])
        if attn_mask.dim() not in (2, 3, 4) or tuple(attn_mask.shape[-2:]) != (q_len, k_len) \
                or (batch_size is not None and len(lead) >= 1 and lead[0] not in (1, batch_size)) \
                or (n_heads is not None and len(lead) == 2 and lead[1] not in (1, n_heads)):
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} is not valid; expected (Lq, Lk), (B, Lq, Lk) or "
                f"(B, H, Lq, Lk) with Lq={q_len}, Lk={k_len}"
                + (f", B in (1, {batch_size})" if batch_size is not None else "")
                + (f", H in (1, {n_heads})" if n_heads is not None else "")
            )
        mask = attn_mask
        while mask.dim() < 4:
            mask = mask.unsqueeze(0) if mask.dim() == 2 else mask.unsqueeze(1)
        device = mask.device
    bool_mask: Tensor | None = None
    if is_causal:
        i = (torch.arange(q_len, device=device) if q_pos is None else q_pos.to(device))[:, None]
        j = torch.arange(k_len, device=device)[None, :]
        bool_mask = (j <= i)[None, None]  # (1, 1, Lq, Lk)
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask must be a bool tensor (True = real token), got {key_padding_mask.dtype}")
        if key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != k_len \
                or (batch_size is not None and key_padding_mask.shape[0] != batch_size):
            expected = f"({'B' if batch_size is None else batch_size}, {k_len})"
            raise ValueError(
                f"key_padding_mask of shape {tuple(key_padding_mask.shape)} is not valid; expected {expected}"
            )
        pad = key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk)
        bool_mask = pad if bool_mask is None else bool_mask & pad
    if mask is None:
        mask = bool_mask
    elif bool_mask is not None:
        if mask.dtype == torch.bool:
            mask = mask & bool_mask
        else:
            mask = mask.masked_fill(~bool_mask, float("-inf"))
    if mask is None:  # unreachable: some mask was requested above
        return None, is_causal
    if mask.dtype == torch.bool:
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    else:
        mask = torch.where(torch.isinf(mask).all(dim=-1, keepdim=True), torch.zeros_like(mask), mask)
    return mask, False


def mask_to_additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Turn a bool mask (True = may attend) into an additive float mask; float masks pass through."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
