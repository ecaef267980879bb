"""The relational baselines of the paper's Relational Games experiment, on the ViT / ViDAT patch embedding.

Every model cuts a ``(B, C, H, W)`` image into patches and embeds them exactly as the vision models do,

    e_i = LN(W_p LN(patch_i))            (B, n, d),  one 12 x 12 patch = one object cell of the 3 x 3 grid,

then applies its relational module and a linear (or MLP) read-out to ``num_classes`` logits:

* :class:`CoRelNet` (Kerg et al. 2022): the similarity matrix of the objects is the only input of the read-out.
* :class:`PrediNet` (Shanahan et al. 2020): heads attend to two objects each and compare them along learned
  directions.
* :class:`VisionAbstractor` (Altabaa et al. 2024): relational cross-attention, whose values are input-independent
  symbols, so the representation carries relations but not the objects' features.

The equations are in each class's docstring; ``tests/test_relational_baselines.py`` recomputes each in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dual_attention._validation import check_positive_int, check_probability
from dual_attention.relational_attention import RelationalCrossAttention
from dual_attention.transformer_blocks import FeedForwardBlock
from dual_attention.vision_models import PatchRearrange

__all__ = ["PatchEmbedding", "CoRelNet", "PrediNet", "VisionAbstractor"]


class PatchEmbedding(nn.Module):
    """``e_i = LN(W_p LN(patch_i))``: ``(B, C, H, W) -> (B, n, d)``, the ViT / ViDAT patch embedding.

    ``image_shape`` is ``(C, W, H)`` and ``patch_size`` ``(pw, ph)``, as in the vision models.
    """

    def __init__(self, image_shape, patch_size, d_model: int) -> None:
        super().__init__()
        c, w, h = image_shape
        pw, ph = patch_size
        if w % pw or h % ph:
            raise ValueError(f"image_shape {tuple(image_shape)} must be divisible by patch_size {tuple(patch_size)}")
        check_positive_int("d_model", d_model)
        self.num_patches, patch_dim = (w // pw) * (h // ph), pw * ph * c
        self.net = nn.Sequential(PatchRearrange(ph, pw), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, d_model),
                                 nn.LayerNorm(d_model))

    def forward(self, img: Tensor) -> Tensor:
        if not isinstance(img, Tensor) or img.dim() != 4 or not img.is_floating_point():
            desc = f"{tuple(img.shape)} {img.dtype}" if isinstance(img, Tensor) else type(img).__name__
            raise ValueError(f"img must be a float tensor (batch, C, H, W), got {desc}")
        return self.net(img)  # (B, n, d)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class CoRelNet(nn.Module):
    """CoRelNet (Kerg et al. 2022), softmax variant, on the patch embedding ``e_i``:

        R = softmax_row(E Eᵀ)  (B, n, n),      logits = W_2 ReLU(W_1 vec(R) + b_1) + b_2

    The read-out sees only the objects' similarities (no positional embedding is added to ``e_i``; the
    position of each similarity is its place in ``vec(R)``).
    """

    def __init__(self, image_shape, patch_size, num_classes: int, d_model: int = 128, hidden: int = 128) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_positive_int("hidden", hidden)
        self.embed = PatchEmbedding(image_shape, patch_size, d_model)
        n = self.embed.num_patches
        self.readout = _mlp(n * n, hidden, num_classes)

    def relations(self, img: Tensor) -> Tensor:
        """``R = softmax_row(E Eᵀ)``, ``(B, n, n)``."""
        e = self.embed(img)  # (B, n, d)
        return torch.softmax(e @ e.transpose(1, 2), dim=-1)

    def forward(self, img: Tensor) -> Tensor:
        return self.readout(self.relations(img).flatten(1))  # (B, n*n) -> (B, classes)


class PrediNet(nn.Module):
    """PrediNet (Shanahan et al. 2020) on the patch embedding with learned positions, ``E = [e_i + p_i]_i``:

        K = E W_K                                     (B, n, d_k), shared by the heads
        Q1_h = vec(E) W_Q1^h,  Q2_h = vec(E) W_Q2^h   (B, d_k),    h = 1..H
        E1_h = softmax(Q1_h Kᵀ) E,  E2_h = softmax(Q2_h Kᵀ) E      (B, d)
        D_h = E1_h W_S − E2_h W_S                     (B, j),      W_S shared by the heads
        logits = W_2 ReLU(W_1 [D_1; ...; D_H] + b_1) + b_2

    Positions enter through ``p_i`` (the original appends coordinates to each object instead).
    """

    def __init__(self, image_shape, patch_size, num_classes: int, d_model: int = 128, n_heads: int = 8,
                 key_dim: int = 16, n_relations: int = 16, hidden: int = 128) -> None:
        super().__init__()
        for name, v in (("num_classes", num_classes), ("n_heads", n_heads), ("key_dim", key_dim),
                        ("n_relations", n_relations), ("hidden", hidden)):
            check_positive_int(name, v)
        self.embed = PatchEmbedding(image_shape, patch_size, d_model)
        n = self.embed.num_patches
        self.n_heads, self.key_dim = n_heads, key_dim
        self.pos_embedding = nn.Parameter(torch.randn(1, n, d_model) * 0.02)
        self.w_k = nn.Linear(d_model, key_dim, bias=False)
        self.w_q1 = nn.Linear(n * d_model, n_heads * key_dim, bias=False)
        self.w_q2 = nn.Linear(n * d_model, n_heads * key_dim, bias=False)
        self.w_s = nn.Linear(d_model, n_relations, bias=False)
        self.readout = _mlp(n_heads * n_relations, hidden, num_classes)

    def forward(self, img: Tensor) -> Tensor:
        e = self.embed(img) + self.pos_embedding  # (B, n, d)
        b = e.shape[0]
        k = self.w_k(e)  # (B, n, dk)
        q1 = self.w_q1(e.flatten(1)).view(b, self.n_heads, self.key_dim)  # (B, H, dk)
        q2 = self.w_q2(e.flatten(1)).view(b, self.n_heads, self.key_dim)
        e1 = torch.softmax(q1 @ k.transpose(1, 2), dim=-1) @ e  # (B, H, n) @ (B, n, d) -> (B, H, d)
        e2 = torch.softmax(q2 @ k.transpose(1, 2), dim=-1) @ e
        d = self.w_s(e1) - self.w_s(e2)  # (B, H, j)
        return self.readout(d.flatten(1))


class VisionAbstractor(nn.Module):
    """An Abstractor (Altabaa et al. 2024) on the patch embedding ``E``: ``L`` layers of relational cross-attention
    (:class:`~dual_attention.relational_attention.RelationalCrossAttention`, softmax relations) whose values are
    the abstract states ``A``, starting from learned positional symbols ``S``:

        A⁰ = S                                   (n, d), one symbol per position
        Ã^ℓ = A^{ℓ-1} + RCA(LN(E), LN(A^{ℓ-1}))
        RCA(x, a)_i = W_o concat_h Σ_j softmax_j(⟨W_q^h x_i, W_k^h x_j⟩ / √d_h) W_v^h a_j
        A^ℓ = Ã^ℓ + FFN(LN(Ã^ℓ))                 (SwiGLU)
        logits = W_out mean_i(A^L_i)

    The objects' features reach ``A`` only through the attention weights (the relations), never as values.
    """

    def __init__(self, image_shape, patch_size, num_classes: int, d_model: int = 128, n_layers: int = 2,
                 n_heads: int = 2, dff: int = 256, dropout_rate: float = 0.1) -> None:
        super().__init__()
        for name, v in (("num_classes", num_classes), ("n_layers", n_layers), ("n_heads", n_heads), ("dff", dff)):
            check_positive_int(name, v)
        check_probability("dropout_rate", dropout_rate)
        self.embed = PatchEmbedding(image_shape, patch_size, d_model)
        n = self.embed.num_patches
        self.symbols = nn.Parameter(torch.randn(1, n, d_model))
        self.layers = nn.ModuleList(nn.ModuleDict({
            "norm_x": nn.LayerNorm(d_model), "norm_a": nn.LayerNorm(d_model),
            "rca": RelationalCrossAttention(d_model, n_heads, dropout_rate, activation="softmax"),
            "norm_ff": nn.LayerNorm(d_model), "ff": FeedForwardBlock(d_model, dff, "swiglu"),
        }) for _ in range(n_layers))
        self.dropout = nn.Dropout(dropout_rate)
        self.final_out = nn.Linear(d_model, num_classes)

    def forward(self, img: Tensor) -> Tensor:
        e = self.embed(img)  # (B, n, d)
        a = self.symbols.expand(e.shape[0], -1, -1)  # (B, n, d)
        for layer in self.layers:
            rca, _ = layer["rca"](layer["norm_x"](e), layer["norm_a"](a), need_weights=False)
            a = a + rca
            a = a + self.dropout(layer["ff"](layer["norm_ff"](a)))
        return self.final_out(a.mean(dim=1))

