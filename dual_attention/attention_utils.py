"""Helpers shared by the attention layers: GQA heads, rotary embeddings (RoPE), positions, masks, and the policy
that decides when a layer runs a fused kernel.

Mask convention (as in :func:`torch.nn.functional.scaled_dot_product_attention`): a boolean mask is ``True``
where a query *may attend* to a key; a float mask is added to the attention logits. A model builds one
:class:`AttentionMask` per forward (causality, padding, cache positions) and hands it to every layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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


def rotary_if_given(xq: Tensor, xk: Tensor, freqs_cos: Tensor | None,
                    freqs_sin: Tensor | None) -> tuple[Tensor, Tensor]:
    """:func:`apply_rotary_emb` when both RoPE tables are given, else ``(xq, xk)`` unchanged."""
    if freqs_cos is None or freqs_sin is None:
        return xq, xk
    return apply_rotary_emb(xq, xk, freqs_cos, freqs_sin)


def merge_heads(x: Tensor) -> Tensor:
    """``(B, H, L, D) -> (B, L, H*D)``: the heads side by side, as the output projection takes them."""
    b, n_heads, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, n_heads * d)  # (B, L, H*D)


def expand_heads(x: Tensor, n_rep: int) -> Tensor:
    """``(B, K, L, D) -> (B, K*n_rep, L, D)``, kv head g serving query heads g*n_rep .. g*n_rep+n_rep-1."""
    if n_rep == 1:
        return x
    b, k, length, d = x.shape
    return x[:, :, None].expand(b, k, n_rep, length, d).reshape(b, k * n_rep, length, d)


def grouped_matmul(weights: Tensor, values: Tensor) -> Tensor:
    """``Σ_j w_ij^h v_j^g`` for weights ``(B, H, Lq, Lk)`` and values ``(B, K, Lk, D)`` (h // (H/K) = g).

    The query heads of one kv head are stacked along the query axis, so GQA never copies the values.
    """
    b, n_heads, lq, lk = weights.shape
    n_kv = values.shape[1]
    if n_kv == n_heads:
        return torch.matmul(weights, values.to(weights.dtype))
    grouped = weights.reshape(b, n_kv, (n_heads // n_kv) * lq, lk)  # (B, K, n_rep*Lq, Lk)
    return torch.matmul(grouped, values.to(weights.dtype)).view(b, n_heads, lq, values.shape[-1])


def positions(length: int, q_pos: Tensor | None = None, device: torch.device | str | None = None) -> Tensor:
    """The absolute positions of ``length`` queries: ``q_pos`` (cached decoding) or ``0..length-1``."""
    return torch.arange(length, device=device) if q_pos is None else q_pos


def causal_mask(q_pos: Tensor, k_len: int) -> Tensor:
    """Boolean ``(Lq, Lk)``: True where key j <= query position p_i (the query may attend)."""
    return torch.arange(k_len, device=q_pos.device)[None, :] <= q_pos[:, None]


def relative_offsets(q_pos: Tensor, k_pos: Tensor, max_rel_pos: int) -> Tensor:
    """Index ``(Lq, Lk)`` into a table of ``2M + 1`` relative positions: ``clip(j − i, −M, M) + M``."""
    return (k_pos[None, :] - q_pos[:, None]).clamp(-max_rel_pos, max_rel_pos) + max_rel_pos


def compute_causal_mask(size: int, device: torch.device | str | None = None) -> Tensor:
    """Boolean ``(size, size)`` mask, True where key j <= query i (lower triangle: may attend)."""
    return causal_mask(torch.arange(size, device=device), size)


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
    mask = None if attn_mask is None else _user_mask(attn_mask, q_len, k_len, batch_size, n_heads)
    device = device if mask is None else mask.device
    bool_mask: Tensor | None = None
    if is_causal:
        bool_mask = causal_mask(positions(q_len, q_pos, device).to(device), k_len)[None, None]  # (1, 1, Lq, Lk)
    if key_padding_mask is not None:
        pad = _padding_mask(key_padding_mask, k_len, batch_size)  # (B, 1, 1, Lk)
        bool_mask = pad if bool_mask is None else bool_mask & pad
    if mask is None:
        mask = bool_mask
    elif bool_mask is not None:
        mask = mask & bool_mask if mask.dtype == torch.bool else mask.masked_fill(~bool_mask, float("-inf"))
    if mask.dtype == torch.bool:
        return mask | ~mask.any(dim=-1, keepdim=True), False
    return torch.where(torch.isinf(mask).all(dim=-1, keepdim=True), torch.zeros_like(mask), mask), False


def _user_mask(attn_mask: Tensor, q_len: int, k_len: int, batch_size: int | None, n_heads: int | None) -> Tensor:
    """``attn_mask`` checked and brought to 4-D ``(B|1, H|1, Lq, Lk)``."""
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
    return mask


def _padding_mask(key_padding_mask: Tensor, k_len: int, batch_size: int | None) -> Tensor:
    """``key_padding_mask (B, Lk)`` (True = real token) checked, as ``(B, 1, 1, Lk)``."""
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be a bool tensor (True = real token), got {key_padding_mask.dtype}")
    if key_padding_mask.dim() != 2 or key_padding_mask.shape[1] != k_len \
            or (batch_size is not None and key_padding_mask.shape[0] != batch_size):
        expected = f"({'B' if batch_size is None else batch_size}, {k_len})"
        raise ValueError(f"key_padding_mask of shape {tuple(key_padding_mask.shape)} is not valid; expected {expected}")
    return key_padding_mask[:, None, None, :]


def mask_to_additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Turn a bool mask (True = may attend) into an additive float mask; float masks pass through."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


class AttentionMask(NamedTuple):
    """Which keys each query may attend to: built once per model forward and handed to every attention layer.

    Attributes:
        tensor: ``None``, or ``(B|1, H|1, Lq, Lk)``, bool (True = may attend) or additive float.
        is_causal: causal masking left to the kernels (queries ``0..Lq-1``, keys ``0..Lk-1``; ``tensor`` is None).

    :meth:`build` combines a user mask, causality, key padding and the queries' cache positions (see
    :func:`build_attn_mask`); the layers read it through :meth:`apply` (explicit paths), :meth:`sdpa_kwargs`
    (fused kernels), :meth:`allowed` and :meth:`query_block` (blocks of queries).
    """

    tensor: Tensor | None = None
    is_causal: bool = False

    @classmethod
    def build(cls, attn_mask: Tensor | None = None, is_causal: bool = False, key_padding_mask: Tensor | None = None,
              *, q_len: int, k_len: int, q_pos: Tensor | None = None, device=None, batch_size: int | None = None,
              n_heads: int | None = None) -> AttentionMask:
        """The mask of :func:`build_attn_mask` (same arguments, same validation and errors)."""
        tensor, causal = build_attn_mask(attn_mask, is_causal, key_padding_mask, q_len, k_len, q_pos=q_pos,
                                         device=device, batch_size=batch_size, n_heads=n_heads)
        return cls(tensor, causal)

    def check_heads(self, n_heads: int) -> None:
        """A per-head mask must have 1 or ``n_heads`` heads (raise ``ValueError`` otherwise)."""
        if self.tensor is not None and self.tensor.shape[1] not in (1, n_heads):
            raise ValueError(f"attn_mask of shape {tuple(self.tensor.shape)} has {self.tensor.shape[1]} heads; "
                             f"expected 1 or n_heads={n_heads}")

    def sdpa_kwargs(self) -> dict:
        """``attn_mask`` / ``is_causal`` of :func:`torch.nn.functional.scaled_dot_product_attention`."""
        return {"attn_mask": self.tensor, "is_causal": self.is_causal}

    def allowed(self, q_len: int, k_len: int, device=None) -> Tensor | None:
        """Boolean ``(B|1, H|1, Lq, Lk)``, True where the query may attend (float masks: where finite); None if
        nothing is masked."""
        if self.is_causal:
            return causal_mask(torch.arange(q_len, device=device), k_len)[None, None]  # (1, 1, Lq, Lk)
        if self.tensor is None:
            return None
        return self.tensor if self.tensor.dtype == torch.bool else torch.isfinite(self.tensor)

    def apply(self, logits: Tensor) -> Tensor:
        """``logits (B, H, Lq, Lk)`` with −∞ where masked (float masks are added)."""
        if self.tensor is not None and self.tensor.dtype != torch.bool:
            return logits + self.tensor.to(logits.dtype)
        allowed = self.allowed(logits.shape[-2], logits.shape[-1], logits.device)
        return logits if allowed is None else logits.masked_fill(~allowed, float("-inf"))

    def query_block(self, start: int, end: int, k_len: int, device=None) -> AttentionMask:
        """The mask of the queries ``start:end`` (a causal mask becomes the rows of its explicit tensor)."""
        if self.is_causal:
            return AttentionMask(causal_mask(torch.arange(start, end, device=device), k_len)[None, None])
        if self.tensor is None or self.tensor.shape[-2] == 1:
            return self
        return AttentionMask(self.tensor[..., start:end, :])


def resolve_mask(mask: AttentionMask | None, attn_mask: Tensor | None, is_causal: bool,
                 key_padding_mask: Tensor | None, **build_kwargs) -> AttentionMask:
    """The mask a layer uses: ``mask`` (built by the model, once per forward), or one built from the published
    arguments ``attn_mask``/``is_causal`` and ``key_padding_mask`` (``build_kwargs`` as in
    :meth:`AttentionMask.build`). Giving both is a ``ValueError``. With ``n_heads`` the mask must have 1 or
    ``n_heads`` heads (:meth:`AttentionMask.check_heads`)."""
    if mask is None:
        mask = AttentionMask.build(attn_mask, is_causal, key_padding_mask, **build_kwargs)
    elif not isinstance(mask, AttentionMask):
        raise TypeError(f"mask must be an AttentionMask or None, got {type(mask).__name__}")
    elif attn_mask is not None or is_causal or key_padding_mask is not None:
        raise ValueError("give either mask (an AttentionMask) or attn_mask/is_causal/key_padding_mask, not both")
    if build_kwargs.get("n_heads") is not None:
        mask.check_heads(build_kwargs["n_heads"])
    return mask


# ------------------------------------------------------------------------------------------------------ policy
@dataclass
class KernelPolicy:
    """When the attention layers (SA, RA, RCA, symbolic attention) run a fused kernel and when they compute their
    weights explicitly; the one place to tune it (:data:`POLICY`).

    Attributes:
        decode_max_queries: a decoding step (queries against a KV cache, or against a symbol library) of at most
            this many queries runs explicitly: cheaper than a fused kernel call for a few rows.
        block_size: queries per block of the memory-bounded explicit path (RA ``'blocked'``, RCA, DisRCA).
        tile_rows: query rows (times the query heads of one kv head) per tile of RA's ``'tiled'`` kernel.
    """

    decode_max_queries: int = 16
    block_size: int = 256
    tile_rows: int = 64

    def explicit(self, need_weights: bool, n_queries: int, decoding: bool) -> bool:
        """Whether to materialise the attention weights: asked for, or a short decoding step."""
        return need_weights or (decoding and n_queries <= self.decode_max_queries)

    @staticmethod
    def prefer_tiled(device: torch.device, dtype: torch.dtype, dropout_active: bool) -> bool:
        """Whether RA's ``'tiled'`` kernel beats ``'fused'`` here: on the CPU in float32/float64, without attention
        dropout (which the tiles do not implement), autocast or ``torch.compile`` (both keep the fused kernel).

        On the CPU the fused kernel must zero-pad q/k to the value width; measured on torch 2.13 the tiles then
        take 25-40 % less time (``docs/performance.md``). CUDA's kernels take unequal widths.
        """
        if device.type != "cpu" or dtype not in (torch.float32, torch.float64) or dropout_active:
            return False
        return not torch.compiler.is_compiling() and not _cpu_autocast_enabled()


#: torch >= 2.5: ``scaled_dot_product_attention(enable_gqa=...)`` and ``torch.is_autocast_enabled(device)``
TORCH_2_5 = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def _cpu_autocast_enabled() -> bool:
    if TORCH_2_5:  # the device-generic form
        return torch.is_autocast_enabled("cpu")
    return torch.is_autocast_cpu_enabled()


#: the policy every attention layer reads at each forward (e.g. ``POLICY.block_size = 128``)
POLICY = KernelPolicy()
