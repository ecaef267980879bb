"""One forward pass of any dual_attention model that also returns what every layer computed.

For each layer ℓ the result holds

* the self-attention maps ``α^{SA,h}_ij = softmax_j(⟨q_i^h, k_j^h⟩/√D + M_ij)``, ``(B, H_sa, n, n)``;
* the relational-attention maps ``α^{RA,h}_ij``, ``(B, H_ra, n, n)`` (RCA: its activated scores);
* the relations ``r_ℓ(x_i, x_j) = act(⟨W_q^{rel,ℓ} x_i, W_k^{rel,ℓ} x_j⟩/√d_r)`` as ``(B, n, n, R)`` with
  ``[b, i, j, r] = r_r(x_i, x_j)``: row i is the receiver (query), column j the sender (key), never transposed
  (DisRCA: its per-head relations ρ^h, as ``(B, n, n, H_ra)``);
* the symbols ``s`` the layer's relational heads received, and for symbolic attention the attention over the symbol
  library ``softmax_k(⟨q_h(x_i), F_{h,k}⟩·scale)``, ``(B, H_sym, n, N)``, with ``symbol_ids = argmax_k`` (which symbol
  of the library each token took, per head); positional symbols have ``symbol_ids[b, 0, i] = i``;
* the cross-attention maps of seq2seq decoder layers, ``(B, H_cross, m, n)``, and the layer output.

The pass is the model's own ``forward_intermediates`` (the same loop as its ``forward``), so the outputs equal
the plain forward's (to float rounding: the relational heads take their explicit path to return the weights).
Modules are put in eval mode for the pass (no dropout) and their ``training`` flags are restored afterwards; no
gradients are kept unless asked.

Works for pre- and post-norm blocks, SA-only and RA-only layers, every symbol retriever and RA type, the Transformer
baselines (self-attention maps only), language models, seq2seq models and vision models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dual_attention.intermediates import LayerIntermediates, retrieve_symbols_with_weights
from dual_attention.symbol_values import RelativeSymbols

__all__ = [
    "LayerAnalysis",
    "ForwardAnalysis",
    "analyze",
    "analyze_lm",
    "analyze_seq2seq",
    "analyze_vision",
    "model_family",
    "retrieve_symbols_with_weights",
    "temporarily_eval",
]


#: what one block computed (see :class:`~dual_attention.intermediates.LayerIntermediates`)
LayerAnalysis = LayerIntermediates


@dataclass
class ForwardAnalysis:
    """The result of :func:`analyze`: the model's output and one :class:`LayerAnalysis` per block.

    ``output`` is the LM's logits ``(B, T, V)``, the seq2seq decoder's logits for every target position
    ``(B, L_y, out_dim)``, or the vision model's class logits ``(B, C)``.
    """

    family: str
    output: Tensor
    layers: list[LayerAnalysis] = field(default_factory=list)

    def stack(self, name: str) -> list[LayerAnalysis]:
        """The layers of one stack (``'blocks'``, ``'encoder'`` or ``'decoder'``), in order."""
        stacks = sorted({layer.stack for layer in self.layers})
        if name not in stacks:
            raise ValueError(f"stack={name!r} is not valid for this {self.family} model; allowed: {stacks}")
        return [layer for layer in self.layers if layer.stack == name]

    @property
    def encoder_layers(self) -> list[LayerAnalysis]:
        return [layer for layer in self.layers if layer.stack == "encoder"]

    @property
    def decoder_layers(self) -> list[LayerAnalysis]:
        return [layer for layer in self.layers if layer.stack == "decoder"]


# ------------------------------------------------------------------------------------------------------ helpers
@contextlib.contextmanager
def temporarily_eval(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Put every submodule in eval mode inside the block and restore each one's ``training`` flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    if enabled:
        model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def model_family(model: nn.Module) -> str:
    """``'lm'``, ``'seq2seq'`` or ``'vision'``, from the model's structure (works for subclasses and HFHub)."""
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleDict) and "encoder_blocks" in layers and hasattr(model, "decode"):
        return "seq2seq"
    if isinstance(layers, nn.ModuleDict) and "blocks" in layers and "token_embedder" in layers:
        return "lm"
    if hasattr(model, "encoder_blocks") and hasattr(model, "embed"):
        return "vision"
    raise TypeError(f"model of type {type(model).__name__} is not a dual_attention language, seq2seq or vision "
                    "model")


def _detach(analysis: ForwardAnalysis) -> ForwardAnalysis:
    def d(x):
        if isinstance(x, Tensor):
            return x.detach()
        if isinstance(x, RelativeSymbols):
            return RelativeSymbols(x.table.detach(), x.max_rel_pos)
        return x

    analysis.output = d(analysis.output)
    for layer in analysis.layers:
        for name in ("hidden", "sa_attn", "ra_attn", "relations", "cross_attn", "symbols", "symbol_attn",
                     "symbol_ids"):
            setattr(layer, name, d(getattr(layer, name)))
    return analysis


@contextlib.contextmanager
def _mode(model: nn.Module, eval_mode: bool, keep_grad: bool) -> Iterator[None]:
    with temporarily_eval(model, eval_mode), torch.set_grad_enabled(keep_grad and torch.is_grad_enabled()):
        yield


# ------------------------------------------------------------------------------------------------------ passes
def _analysis(family: str, model: nn.Module, run, eval_mode: bool, keep_grad: bool) -> ForwardAnalysis:
    """``run()`` (a ``forward_intermediates`` call) in the analysis mode, as a :class:`ForwardAnalysis`."""
    if model_family(model) != family:
        kind = {"lm": "language", "seq2seq": "seq2seq", "vision": "vision"}[family]
        raise TypeError(f"analyze_{family} needs a {kind} model, got {type(model).__name__}")
    with _mode(model, eval_mode, keep_grad):
        result = run()
    analysis = ForwardAnalysis(family, result.output, result.layers)
    return analysis if keep_grad else _detach(analysis)


def analyze_lm(model: nn.Module, idx: Tensor, *, eval_mode: bool = True, keep_grad: bool = False) -> ForwardAnalysis:
    """Analyse a language model (:class:`DualAttnTransformerLM` or :class:`TransformerLM`) on ``idx (B, T)``.

    ``output`` = the logits ``(B, T, V)`` of ``model(idx)``.
    """
    return _analysis("lm", model, lambda: model.forward_intermediates(idx), eval_mode, keep_grad)


def analyze_seq2seq(model: nn.Module, src: Tensor, tgt: Tensor, *, src_padding_mask: Tensor | None = None,
                    tgt_padding_mask: Tensor | None = None, eval_mode: bool = True,
                    keep_grad: bool = False) -> ForwardAnalysis:
    """Analyse a seq2seq model on source ``src`` and (teacher-forced) target ``tgt``.

    ``output`` = ``model.decode(tgt, model.encode(src))``, the logits of every target position ``(B, L_y, out)``.
    """
    return _analysis("seq2seq", model, lambda: model.forward_intermediates(
        src, tgt, src_padding_mask=src_padding_mask, tgt_padding_mask=tgt_padding_mask), eval_mode, keep_grad)


def analyze_vision(model: nn.Module, img: Tensor, *, eval_mode: bool = True,
                   keep_grad: bool = False) -> ForwardAnalysis:
    """Analyse a vision model on ``img (B, C, H, W)``; token 0 is the cls token, then the patches row by row.

    ``output`` = ``model(img)``, the class logits ``(B, num_classes)``.
    """
    return _analysis("vision", model, lambda: model.forward_intermediates(img), eval_mode, keep_grad)


def analyze(model: nn.Module, *inputs: Tensor, eval_mode: bool = True, keep_grad: bool = False,
            **kwargs) -> ForwardAnalysis:
    """Analyse any model: ``analyze(lm, idx)``, ``analyze(seq2seq, src, tgt)`` or ``analyze(vision, img)``.

    Args:
        eval_mode: run with dropout off (modules' training flags are restored afterwards).
        keep_grad: keep the autograd graph (e.g. for attribution); by default the pass runs without gradients.
        kwargs: ``src_padding_mask``/``tgt_padding_mask`` for seq2seq models.
    """
    family = model_family(model)
    expected = {"lm": 1, "seq2seq": 2, "vision": 1}[family]
    if len(inputs) != expected:
        names = {"lm": "idx", "seq2seq": "src, tgt", "vision": "img"}[family]
        raise TypeError(f"analyze of a {family} model takes {expected} input(s) ({names}), got {len(inputs)}")
    if family == "lm":
        return analyze_lm(model, *inputs, eval_mode=eval_mode, keep_grad=keep_grad, **kwargs)
    if family == "seq2seq":
        return analyze_seq2seq(model, *inputs, eval_mode=eval_mode, keep_grad=keep_grad, **kwargs)
    return analyze_vision(model, *inputs, eval_mode=eval_mode, keep_grad=keep_grad, **kwargs)
