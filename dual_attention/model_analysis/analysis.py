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

The pass calls the same modules with the same inputs as the model's own ``forward``, so the outputs equal the plain
forward's (to float rounding: the relational heads take their explicit path to return the weights). Modules are put
in eval mode for the pass (no dropout) and their ``training`` flags are restored afterwards; no gradients are kept
unless asked.

Works for pre- and post-norm blocks, SA-only and RA-only layers, every symbol retriever and RA type, the Transformer
baselines (self-attention maps only), language models, seq2seq models and vision models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from dual_attention.symbol_retrieval import (
    PositionalSymbolRetriever,
    RelationalSymbolicAttention,
    RelativeSymbols,
    SymbolicAttention,
)

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


@dataclass
class LayerAnalysis:
    """What one block computed (all tensors detached unless ``keep_grad``; absent parts are None).

    Attributes:
        stack: ``'blocks'`` (LM, vision), ``'encoder'`` or ``'decoder'`` (seq2seq).
        index: the layer index within its stack.
        causal: whether the layer's self/relational attention is causal (receivers i see senders j ≤ i only).
        sa_attn: self-attention weights ``(B, H_sa, n, n)``, ``[b, h, i, j]``.
        ra_attn: relational-attention weights ``(B, H_ra, n, n)``, ``[b, h, i, j]``.
        relations: ``(B, n, n, R)``, ``[b, i, j, r] = r_r(x_i, x_j)`` (computed for every pair, also j > i).
        cross_attn: decoder cross-attention weights ``(B, H_cross, m, n_source)``.
        symbols: the symbols given to the block: ``(B, n, d)``, or :class:`RelativeSymbols` (position-relative).
        symbol_attn: attention over the symbol library ``(B, H_sym, n, N)`` (symbolic retrievers only).
        symbol_ids: index of the symbol each token took, per head ``(B, H_sym, n)`` (positional: the position).
        hidden: the block's output ``(B, n, d)``.
        ra_type: ``'relational_attention'``, ``'rca'``, ``'disrca'``, or None without relational heads.
    """

    stack: str
    index: int
    causal: bool
    hidden: Tensor
    sa_attn: Tensor | None = None
    ra_attn: Tensor | None = None
    relations: Tensor | None = None
    cross_attn: Tensor | None = None
    symbols: Tensor | RelativeSymbols | None = None
    symbol_attn: Tensor | None = None
    symbol_ids: Tensor | None = None
    ra_type: str | None = None

    @property
    def name(self) -> str:
        """``'layer 2'`` or ``'decoder layer 2'``."""
        return f"layer {self.index}" if self.stack == "blocks" else f"{self.stack} layer {self.index}"

    @property
    def relation_maps(self) -> Tensor | None:
        """Relations as maps ``(B, R, n, n)`` with ``[b, r, i, j] = r_r(x_i, x_j)`` (the layout of attention maps)."""
        return None if self.relations is None else self.relations.permute(0, 3, 1, 2)  # (B, R, n, n)


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


def retrieve_symbols_with_weights(retriever: nn.Module, h: Tensor, input_pos: Tensor | None = None, **rsa_kwargs):
    """``(symbols, symbol_attn or None, symbol_ids or None)`` for the block input ``h (B, n, d)``.

    ``symbols`` come from ``retriever.retrieve`` (exactly what the model uses); the library attention of a
    :class:`SymbolicAttention` (or of the inner one of a :class:`RelationalSymbolicAttention`) is computed
    beside it, ``(B, H_sym, n, N)``, and ``symbol_ids = argmax`` over the library ``(B, H_sym, n)``.
    ``rsa_kwargs`` (``key_padding_mask``, ``causal``) go to a :class:`RelationalSymbolicAttention` only.
    """
    b, n = h.shape[:2]
    if isinstance(retriever, SymbolicAttention):
        symbols = retriever.retrieve(h, input_pos)
        weights = retriever.forward_with_weights(h)[1]  # (B, H_sym, n, N)
        return symbols, weights, weights.argmax(dim=-1)
    if isinstance(retriever, RelationalSymbolicAttention):
        captured: list[Tensor] = []
        hook = retriever.symbolic_attention.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
        try:
            symbols = retriever.retrieve(h, input_pos, **rsa_kwargs)
        finally:
            hook.remove()
        weights = retriever.symbolic_attention.forward_with_weights(captured[-1])[1]  # (B, H_sym, n, N)
        return symbols, weights, weights.argmax(dim=-1)
    symbols = retriever.retrieve(h, input_pos)
    if isinstance(retriever, PositionalSymbolRetriever):
        positions = torch.arange(n, device=h.device) if input_pos is None else input_pos
        return symbols, None, positions[None, None, :].expand(b, 1, n)  # (B, 1, n)
    return symbols, None, None


def _layer_symbols(retriever: nn.Module | None, h: Tensor, **kwargs) -> tuple:
    """``(symbols, symbol_attn, symbol_ids)`` a block gets from ``retriever`` (all None for a model without one).

    ``kwargs`` (key_padding_mask, causal) go to a :class:`RelationalSymbolicAttention`, as the models pass them."""
    if retriever is None:
        return None, None, None
    return retrieve_symbols_with_weights(retriever, h, **kwargs)


def _persistent(model: nn.Module, retriever: nn.Module | None, h: Tensor, **kwargs) -> tuple | None:
    """The symbols of every layer when the model retrieves them once (``update_symbols_each_layer=False``)."""
    if getattr(model, "update_symbols_each_layer", True) or retriever is None:
        return None
    return _layer_symbols(retriever, h, **kwargs)


def _ra_type(block: nn.Module) -> str | None:
    dual_attn = getattr(block, "dual_attn", None)
    if dual_attn is None or not dual_attn.use_rel_attn:
        return None
    return dual_attn.ra_type


def _record(stack: str, index: int, block: nn.Module, hidden: Tensor, weights, symbols=None, symbol_attn=None,
            symbol_ids=None) -> LayerAnalysis:
    """Unpack a block's ``return_weights`` output into a :class:`LayerAnalysis`."""
    ra_type = _ra_type(block)
    layer = LayerAnalysis(stack=stack, index=index, causal=bool(getattr(block, "causal", False)), hidden=hidden,
                          symbols=symbols, symbol_attn=symbol_attn, symbol_ids=symbol_ids, ra_type=ra_type)
    if isinstance(weights, Tensor):  # baseline EncoderBlock: the SA weights themselves
        layer.sa_attn = weights
        return layer
    layer.sa_attn = weights.get("sa")
    layer.cross_attn = weights.get("cross")
    ra = weights.get("ra")
    if ra:
        if ra_type in ("rca", "hadamard"):  # [weights (B, H, n, n)] (RCA: the relations are the weights)
            layer.ra_attn = ra[0]
        elif ra_type == "disrca":  # [α (B, H, n, n), ρ (B, H, n, n)]
            layer.ra_attn, layer.relations = ra[0], ra[1].permute(0, 2, 3, 1)  # (B, n, n, H)
        else:  # [α (B, H, n, n), r (B, n, n, R)]
            layer.ra_attn, layer.relations = ra[0], ra[1]
    return layer


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
def analyze_lm(model: nn.Module, idx: Tensor, *, eval_mode: bool = True, keep_grad: bool = False) -> ForwardAnalysis:
    """Analyse a language model (:class:`DualAttnTransformerLM` or :class:`TransformerLM`) on ``idx (B, T)``.

    ``output`` = the logits ``(B, T, V)`` of ``model(idx)``.
    """
    if model_family(model) != "lm":
        raise TypeError(f"analyze_lm needs a language model, got {type(model).__name__}")
    model._check_idx(idx, None)
    with _mode(model, eval_mode, keep_grad):
        h, freqs = model._embed(idx, None)  # h (B, T, d); RoPE tables or (None, None)
        dat = "symbol_retrievers" in model.layers
        retrievers = model.layers["symbol_retrievers"] if dat else []
        persistent = _persistent(model, retrievers[0] if len(retrievers) else None, h)
        layers = []
        for i, block in enumerate(model.layers.blocks):
            if dat:
                sym = persistent or _layer_symbols(retrievers[i] if len(retrievers) else None, h)
                h, weights = block(h, sym[0], *freqs, return_weights=True)
                layers.append(_record("blocks", i, block, h, weights, *sym))
            else:
                h, weights = block(h, *freqs, return_weights=True)
                layers.append(_record("blocks", i, block, h, weights))
        logits = model.layers.final_out(model.layers.norm(h))  # (B, T, V)
    result = ForwardAnalysis("lm", logits, layers)
    return result if keep_grad else _detach(result)


def analyze_seq2seq(model: nn.Module, src: Tensor, tgt: Tensor, *, src_padding_mask: Tensor | None = None,
                    tgt_padding_mask: Tensor | None = None, eval_mode: bool = True,
                    keep_grad: bool = False) -> ForwardAnalysis:
    """Analyse a seq2seq model on source ``src`` and (teacher-forced) target ``tgt``.

    ``output`` = ``model.decode(tgt, model.encode(src))``, the logits of every target position ``(B, L_y, out)``.
    """
    from dual_attention.seq2seq_models import _check_seq

    if model_family(model) != "seq2seq":
        raise TypeError(f"analyze_seq2seq needs a seq2seq model, got {type(model).__name__}")
    _check_seq("x", src, model.input_spec, model.in_block_size)
    _check_seq("y", tgt, model.output_spec, model.out_block_size)
    dat = bool(getattr(model, "uses_symbols", False))
    retriever = model.layers["symbol_retriever"] if "symbol_retriever" in model.layers else None
    layers = []
    with _mode(model, eval_mode, keep_grad):
        h = model._embed(src, "source")  # (B, Ls, d)
        rope = model.rope("enc", h.shape[1])
        persistent = _persistent(model, retriever, h, key_padding_mask=src_padding_mask)
        for i, block in enumerate(model.layers.encoder_blocks):
            if dat:
                sym = persistent or _layer_symbols(retriever, h, key_padding_mask=src_padding_mask)
                h, weights = block(h, sym[0], key_padding_mask=src_padding_mask, return_weights=True, **rope)
                layers.append(_record("encoder", i, block, h, weights, *sym))
            else:
                h, weights = block(h, key_padding_mask=src_padding_mask, return_weights=True, **rope)
                layers.append(_record("encoder", i, block, h, weights))
        g = model._embed(tgt, "target", 0)  # (B, Ly, d)
        rope = model.rope("dec", g.shape[1])
        blocks = model.layers.decoder_blocks
        persistent = _persistent(model, retriever, g, key_padding_mask=tgt_padding_mask, causal=blocks[0].causal)
        for i, block in enumerate(blocks):
            common = dict(key_padding_mask=tgt_padding_mask, context_padding_mask=src_padding_mask,
                          return_weights=True, **rope)
            if dat:
                sym = persistent or _layer_symbols(retriever, g, key_padding_mask=tgt_padding_mask,
                                                   causal=block.causal)
                g, weights = block(g, h, sym[0], **common)
                layers.append(_record("decoder", i, block, g, weights, *sym))
            else:
                g, weights = block(g, h, **common)
                layers.append(_record("decoder", i, block, g, weights))
        logits = model.layers.final_out(g)  # (B, Ly, out_dim)
    result = ForwardAnalysis("seq2seq", logits, layers)
    return result if keep_grad else _detach(result)


def analyze_vision(model: nn.Module, img: Tensor, *, eval_mode: bool = True,
                   keep_grad: bool = False) -> ForwardAnalysis:
    """Analyse a vision model on ``img (B, C, H, W)``; token 0 is the cls token, then the patches row by row.

    ``output`` = ``model(img)``, the class logits ``(B, num_classes)``.
    """
    if model_family(model) != "vision":
        raise TypeError(f"analyze_vision needs a vision model, got {type(model).__name__}")
    dat = bool(getattr(model, "uses_symbols", False))
    retriever = getattr(model, "symbol_retriever", None)
    layers = []
    with _mode(model, eval_mode, keep_grad):
        x = model.embed(img)  # (B, 1 + patches, d)
        rope = model.rope(x.shape[1])
        persistent = _persistent(model, retriever, x)
        for i, block in enumerate(model.encoder_blocks):
            if dat:
                sym = persistent or _layer_symbols(retriever, x)
                x, weights = block(x, sym[0], return_weights=True, **rope)
                layers.append(_record("blocks", i, block, x, weights, *sym))
            else:
                x, weights = block(x, return_weights=True, **rope)
                layers.append(_record("blocks", i, block, x, weights))
        pooled = x[:, 0] if model.pool == "cls" else x.mean(dim=1)  # (B, d)
        logits = model.final_out(pooled)  # (B, num_classes)
    result = ForwardAnalysis("vision", logits, layers)
    return result if keep_grad else _detach(result)


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
