"""Vision models: the Vision Dual Attention Transformer (ViDAT) and the Vision Transformer baseline.

    z⁰ = [cls; LN(W_p LN(patches))] + E_pos;  z^ℓ = Block_ℓ(z^{ℓ-1}[, s = Retrieve(z^{ℓ-1})])
    logits = W_out · pool(z^L)            (pool: the cls token, or the mean over all tokens)

Images are ``(B, C, H, W)``; ``image_shape`` is read as ``(C, W, H)`` and ``patch_size`` as ``(pw, ph)``, as in the
published package; patches are flattened in ``(p1 p2 c)`` order.

Options beyond the published package (defaults keep its behaviour): ``pos_enc_type='RoPE'`` drops the learned
``pos_embedding`` and rotates the self-attention queries/keys by the token's index in the sequence (cls = 0, then
the patches row by row: 1-D RoPE, agnostic of the 2-D grid); ViDAT also takes ``update_symbols_each_layer=False``
(symbols retrieved once from the embedded tokens) and, with ``ra_type='hadamard'``, ``symbol_retrieval=None``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dual_attention._validation import (
    check_choice,
    check_kwargs_dict,
    check_positive_int,
    check_probability,
)
from dual_attention.attention_utils import AttentionMask, precompute_freqs_cis
from dual_attention.dual_attn_blocks import DualAttnEncoderBlock, check_rope_fits, check_symbol_options
from dual_attention.intermediates import Intermediates, LayerIntermediates, retrieve, run_block
from dual_attention.optim import configure_optimizers
from dual_attention.positional_encoding import POS_ENC_TYPES
from dual_attention.symbol_retrieval import (
    SYMBOL_RETRIEVERS,
    build_symbol_retriever,
    check_relative_symbols,
    check_retriever_fits,
)
from dual_attention.transformer_blocks import EncoderBlock

__all__ = ["VisionTransformer", "VisionDualAttnTransformer", "configure_optimizers"]

POOLS = ("cls", "mean")


class PatchRearrange(nn.Module):
    """``(B, C, h·p1, w·p2) -> (B, h·w, p1·p2·C)``: non-overlapping patches, row-major, flattened (p1 p2 c)."""

    def __init__(self, p1: int, p2: int) -> None:
        super().__init__()
        self.p1, self.p2 = p1, p2

    def forward(self, img: Tensor) -> Tensor:
        b, c, height, width = img.shape
        h, w = height // self.p1, width // self.p2
        x = img.reshape(b, c, h, self.p1, w, self.p2)  # (B, C, h, p1, w, p2)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, self.p1 * self.p2 * c)  # (B, h*w, p1*p2*C)


class _VisionModel(nn.Module):
    uses_symbols = False
    update_symbols_each_layer = True

    def _init_common(self, image_shape, patch_size, num_classes, d_model, n_layers, dropout_rate, pool,
                     pos_enc_type) -> None:
        if len(image_shape) != 3 or len(patch_size) != 2:
            raise ValueError(f"image_shape must be (C, W, H) and patch_size (pw, ph); got {image_shape}, {patch_size}")
        for name, v in (("num_classes", num_classes), ("d_model", d_model), ("n_layers", n_layers)):
            check_positive_int(name, v)
        check_choice("pool", pool, POOLS)
        check_choice("pos_enc_type", pos_enc_type, POS_ENC_TYPES)
        check_probability("dropout_rate", dropout_rate)
        c, w, h = image_shape
        pw, ph = patch_size
        if w % pw or h % ph:
            raise ValueError(f"image_shape {tuple(image_shape)} must be divisible by patch_size {tuple(patch_size)}")
        self.image_shape, self.patch_size = tuple(image_shape), tuple(patch_size)
        self.num_classes, self.d_model, self.n_layers, self.pool = num_classes, d_model, n_layers, pool
        self.pos_enc_type = pos_enc_type
        self.num_patches = (w // pw) * (h // ph)
        self.patch_dim = pw * ph * c
        if pos_enc_type == "pos_emb":
            self.pos_embedding = nn.Parameter(torch.randn(1, self.num_patches + 1, d_model))
        self.cls_token = nn.Parameter(torch.randn(1, 1, d_model))
        self.dropout = nn.Dropout(dropout_rate)

    def _init_rope(self, head_dim: int) -> None:
        """RoPE tables (non-persistent) for the ``1 + num_patches`` token positions, checked against the blocks."""
        if self.pos_enc_type != "RoPE":
            return
        cos, sin = precompute_freqs_cis(head_dim, self.num_patches + 1)
        check_rope_fits(self.encoder_blocks, 2 * cos.shape[-1], "encoder_blocks")
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)

    def rope(self, n: int) -> dict:
        """``{'freqs_cos', 'freqs_sin'}`` of positions ``0..n-1`` with RoPE, else {}."""
        if self.pos_enc_type != "RoPE":
            return {}
        return dict(freqs_cos=self.freqs_cos[:n], freqs_sin=self.freqs_sin[:n])

    def _patch_embedding(self) -> nn.Sequential:
        pw, ph = self.patch_size
        return nn.Sequential(PatchRearrange(ph, pw), nn.LayerNorm(self.patch_dim),
                             nn.Linear(self.patch_dim, self.d_model), nn.LayerNorm(self.d_model))

    def _check_img(self, img: Tensor) -> None:
        c, w, h = self.image_shape
        if not isinstance(img, Tensor) or img.dim() != 4 or not img.is_floating_point():
            desc = f"{tuple(img.shape)} {img.dtype}" if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"img must be a float tensor (batch, {c}, H, W), got {desc}")
        pw, ph = self.patch_size
        if img.shape[1] != c or img.shape[2] % ph or img.shape[3] % pw \
                or (img.shape[2] // ph) * (img.shape[3] // pw) != self.num_patches:
            raise ValueError(f"img of shape {tuple(img.shape)} does not match image_shape {self.image_shape} "
                             f"with patch_size {self.patch_size} ({self.num_patches} patches)")

    def embed(self, img: Tensor) -> Tensor:
        """``img (B, C, H, W)`` → tokens ``(B, 1 + num_patches, d)`` (cls first, positions added, dropout)."""
        self._check_img(img)
        x = self.to_patch_embedding(img)  # (B, n, d)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)  # (B, 1 + n, d)
        if self.pos_enc_type == "pos_emb":
            x = x + self.pos_embedding[:, : x.shape[1]]
        return self.dropout(x)

    def forward(self, img: Tensor) -> Tensor:
        """``img (B, C, H, W)`` → ``logits (B, num_classes)``."""
        return self._logits(img)

    def forward_intermediates(self, img: Tensor) -> Intermediates:
        """The class logits ``(B, num_classes)`` and what every block computed (token 0 is the cls token, then the
        patches row by row; see :class:`~dual_attention.intermediates.LayerIntermediates`)."""
        record: list[LayerIntermediates] = []
        return Intermediates(self._logits(img, record), record)

    def _logits(self, img: Tensor, record: list | None = None) -> Tensor:
        x = self.embed(img)
        mask, rope = AttentionMask(), self.rope(x.shape[1])  # every token sees every token: one mask for all
        retrieved = None
        for i, block in enumerate(self.encoder_blocks):
            if self.uses_symbols and (retrieved is None or self.update_symbols_each_layer):  # else: persistent
                retrieved = (None, None, None) if self.symbol_retriever is None else \
                    retrieve(self.symbol_retriever, x, with_weights=record is not None)
            args = (x,) if retrieved is None else (x, retrieved[0])
            x = run_block(block, *args, mask=mask, record=record, index=i, retrieved=retrieved or (None, None, None),
                          **rope)
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)
        return self.final_out(x)

    def get_num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class VisionTransformer(_VisionModel):
    """The Vision Transformer baseline (arguments, defaults and state-dict keys as published)."""

    def __init__(self, image_shape, patch_size, num_classes: int, d_model: int, n_layers: int, n_heads: int,
                 dff: int | None, dropout_rate: float, activation: str, norm_first: bool,
                 norm_type: str = "layernorm", bias: bool = True, pool: str = "cls",
                 pos_enc_type: str = "pos_emb") -> None:
        super().__init__()
        self._init_common(image_shape, patch_size, num_classes, d_model, n_layers, dropout_rate, pool, pos_enc_type)
        self.n_heads = n_heads
        self.to_patch_embedding = self._patch_embedding()
        self.encoder_blocks = nn.ModuleList(
            EncoderBlock(d_model=d_model, n_heads=n_heads, dff=dff, dropout_rate=dropout_rate,
                         activation=activation, norm_first=norm_first, norm_type=norm_type, bias=bias, causal=False)
            for _ in range(n_layers))
        self.final_out = nn.Linear(d_model, num_classes)
        self._init_rope(self.encoder_blocks[0].self_attn.head_dim)


class VisionDualAttnTransformer(_VisionModel):
    """The Vision Dual Attention Transformer (arguments, defaults and state-dict keys as published).

    One ``symbol_retriever`` (``'symbolic_attention'``, ``'rel_sym_attn'``, ``'positional_symbols'`` or
    ``'position_relative'``, the latter with ``ra_kwargs=dict(use_relative_positional_symbols=True)``) serves
    every layer; its symbols are recomputed from each layer's input, or retrieved once from the embedded tokens with
    ``update_symbols_each_layer=False``. ``pos_enc_type``: ``'pos_emb'`` (published, learned) or ``'RoPE'``.
    """

    uses_symbols = True

    def __init__(self, image_shape, patch_size, num_classes: int, d_model: int, n_layers: int, n_heads_sa: int,
                 n_heads_ra: int, dff: int | None, dropout_rate: float, activation: str, norm_first: bool,
                 symbol_retrieval: str | None, symbol_retrieval_kwargs: dict | None,
                 ra_type: str = "relational_attention",
                 ra_kwargs: dict | None = None, sa_kwargs: dict | None = None, norm_type: str = "layernorm",
                 bias: bool = True, pool: str = "cls", update_symbols_each_layer: bool = True,
                 pos_enc_type: str = "pos_emb") -> None:
        super().__init__()
        ra_kwargs, sa_kwargs = check_kwargs_dict("ra_kwargs", ra_kwargs), check_kwargs_dict("sa_kwargs", sa_kwargs)
        retriever_kwargs = check_kwargs_dict("symbol_retrieval_kwargs", symbol_retrieval_kwargs)
        ra_kwargs = check_symbol_options(symbol_retrieval, SYMBOL_RETRIEVERS, retriever_kwargs, ra_type, n_heads_ra,
                                         ra_kwargs, update_symbols_each_layer)
        check_relative_symbols(symbol_retrieval, ra_kwargs, n_heads_ra)
        self.symbol_retrieval = symbol_retrieval
        self.n_heads_sa, self.n_heads_ra = n_heads_sa, n_heads_ra
        self.update_symbols_each_layer = update_symbols_each_layer
        self.symbol_retriever = None if symbol_retrieval is None else build_symbol_retriever(symbol_retrieval,
                                                                                            retriever_kwargs)
        self._init_common(image_shape, patch_size, num_classes, d_model, n_layers, dropout_rate, pool, pos_enc_type)
        if self.symbol_retriever is not None:
            check_retriever_fits(self.symbol_retriever, d_model, self.num_patches + 1, "symbol_retrieval_kwargs")
        self.to_patch_embedding = self._patch_embedding()
        self.encoder_blocks = nn.ModuleList(
            DualAttnEncoderBlock(d_model=d_model, n_heads_sa=n_heads_sa, n_heads_ra=n_heads_ra, dff=dff,
                                 activation=activation, dropout_rate=dropout_rate, norm_first=norm_first,
                                 norm_type=norm_type, sa_kwargs=sa_kwargs, ra_kwargs=ra_kwargs, ra_type=ra_type,
                                 bias=bias, causal=False)
            for _ in range(n_layers))
        self.final_out = nn.Linear(d_model, num_classes)
        self._init_rope(d_model // (n_heads_sa + n_heads_ra))
