"""Encoder-decoder models: the Seq2Seq Dual Attention Transformer and the Transformer baseline.

    enc: h⁰ = √d·Embed(x) + PE;  h^ℓ = EncBlock_ℓ(h^{ℓ-1}[, s = Retrieve(h^{ℓ-1})])
    dec: g⁰ = √d·Embed(y) + PE;  g^ℓ = DecBlock_ℓ(g^{ℓ-1}, h^L[, s = Retrieve(g^{ℓ-1})]);  logits = W g^L + b

Differences from the published package (bugs fixed): the DAT decoder has ``n_layers_dec`` blocks (it used
``n_layers_enc``); ``tie_weights`` really ties the target embedding to the output layer (when the output is tokens
and ``vocab_size == out_dim``). For state-dict compatibility the published alias keys
``layers.target_embedder.weights.{weight,bias}`` (of ``final_out``) are still written and accepted; a published
checkpoint whose embedding and output matrices differ (its "tied" model never tied them) loads exactly, by
untying the two in the loaded model.

Options beyond the published package (defaults keep its behaviour): ``pos_enc_type='RoPE'`` replaces the additive
sinusoidal encodings by rotary embeddings in the encoder and decoder self-attention (positions 0..L-1 of each
sequence; the cross-attention takes none; the embeddings keep their √d scale); the DAT model also takes
``update_symbols_each_layer=False`` (the encoder's symbols are retrieved once from the source embeddings and the
decoder's once from the target embeddings) and, with ``ra_type='hadamard'``, ``symbol_retrieval=None``.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dual_attention._validation import (
    build_with_kwargs,
    check_bool,
    check_choice,
    check_kwargs_dict,
    check_positive_int,
)
from dual_attention.attention_utils import AttentionMask, precompute_freqs_cis
from dual_attention.dual_attn_blocks import (
    DualAttnDecoderBlock,
    DualAttnEncoderBlock,
    check_rope_fits,
    check_symbol_options,
)
from dual_attention.generation import sample_next_token
from dual_attention.intermediates import Intermediates, LayerIntermediates, retrieve, run_block
from dual_attention.kv_cache import cache_length
from dual_attention.optim import configure_optimizers
from dual_attention.positional_encoding import SinusoidalPositionalEncoding
from dual_attention.symbol_retrieval import (
    SYMBOL_RETRIEVERS,
    RelationalSymbolicAttention,
    build_symbol_retriever,
    check_relative_symbols,
    check_retriever_fits,
)
from dual_attention.transformer_blocks import DecoderBlock, EncoderBlock

__all__ = ["Seq2SeqTransformer", "Seq2SeqDualAttnTransformer", "configure_optimizers"]

_ALIAS = "layers.target_embedder.weights."
POS_ENC_TYPES = ("sinusoidal", "RoPE")


def self_attention_head_dim(block: nn.Module) -> int:
    """The head width of a (dual-attention or baseline) block's self-attention: what its RoPE tables need."""
    dual = getattr(block, "dual_attn", None)
    return dual.d_model // dual.total_n_heads if dual is not None else block.self_attn.head_dim


def _make_embedder(spec: dict, d_model: int, name: str) -> nn.Module:
    if not isinstance(spec, dict):
        raise TypeError(f"{name} must be a dict like {{'type': 'token', 'vocab_size': V}}, got {spec!r}")
    kind = spec.get("type")
    if kind == "token":
        check_positive_int(f"{name}['vocab_size']", spec.get("vocab_size"))
        return nn.Embedding(spec["vocab_size"], d_model)
    if kind == "vector":
        check_positive_int(f"{name}['dim']", spec.get("dim"))
        return nn.Linear(spec["dim"], d_model)
    raise ValueError(f"{name}['type'] must be 'token' or 'vector', not {kind!r}")


def _check_seq(name: str, t: Tensor, spec: dict, max_len: int) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if spec["type"] == "token":
        if t.dim() != 2 or t.is_floating_point():
            raise ValueError(f"{name} must be integer token ids of shape (batch, length), got {tuple(t.shape)} "
                             f"{t.dtype}")
    elif t.dim() != 3 or t.shape[-1] != spec["dim"] or not t.is_floating_point():
        raise ValueError(f"{name} must be float vectors of shape (batch, length, {spec['dim']}), got "
                         f"{tuple(t.shape)} {t.dtype}")
    if t.shape[1] > max_len:
        raise ValueError(f"{name} has length {t.shape[1]}, which exceeds the block size {max_len}")


def _check_padding_mask(name: str, mask: Tensor | None, t: Tensor) -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(t.shape[:2]):
        desc = f"{tuple(mask.shape)} {mask.dtype}" if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a bool tensor of shape {tuple(t.shape[:2])} (True = real token), got {desc}")


class _Seq2Seq(nn.Module):
    layers: nn.ModuleDict
    uses_symbols = False  # the blocks take symbols (DAT); the retriever may still be absent (Hadamard, None)
    update_symbols_each_layer = True

    def _init_common(self, input_spec, output_spec, d_model, out_dim, n_layers_enc, n_layers_dec, in_block_size,
                     out_block_size, tie_weights, loss_ignore_idx, pos_enc_type) -> dict:
        for name, v in (("d_model", d_model), ("out_dim", out_dim), ("n_layers_enc", n_layers_enc),
                        ("n_layers_dec", n_layers_dec), ("in_block_size", in_block_size),
                        ("out_block_size", out_block_size)):
            check_positive_int(name, v)
        check_bool("tie_weights", tie_weights)
        check_choice("pos_enc_type", pos_enc_type, POS_ENC_TYPES)
        self.pos_enc_type = pos_enc_type
        self.input_spec, self.output_spec = dict(input_spec), dict(output_spec)
        self.d_model, self.out_dim = d_model, out_dim
        self.n_layers_enc, self.n_layers_dec = n_layers_enc, n_layers_dec
        self.in_block_size, self.out_block_size = in_block_size, out_block_size
        self.tie_weights, self.loss_ignore_idx = tie_weights, loss_ignore_idx
        layers = dict(
            source_embedder=_make_embedder(input_spec, d_model, "input_spec"),
            target_embedder=_make_embedder(output_spec, d_model, "output_spec"),
        )
        if pos_enc_type == "sinusoidal":
            layers.update(
                source_pos_embedder=SinusoidalPositionalEncoding(d_model, dropout=0.0, max_len=in_block_size),
                target_pos_embedder=SinusoidalPositionalEncoding(d_model, dropout=0.0, max_len=out_block_size))
        return layers

    def _init_rope(self) -> None:
        """RoPE tables (non-persistent buffers) for the encoder and the decoder self-attention."""
        for which, stack, length in (("enc", "encoder_blocks", self.in_block_size),
                                     ("dec", "decoder_blocks", self.out_block_size)):
            blocks = self.layers[stack]
            cos, sin = precompute_freqs_cis(self_attention_head_dim(blocks[0]), length)
            check_rope_fits(blocks, 2 * cos.shape[-1], f"layers.{stack}")
            self.register_buffer(f"freqs_cos_{which}", cos, persistent=False)
            self.register_buffer(f"freqs_sin_{which}", sin, persistent=False)

    def rope(self, which: str, n: int, input_pos: Tensor | None = None) -> dict:
        """``{'freqs_cos', 'freqs_sin'}`` of the ``'enc'``/``'dec'`` positions (``0..n-1`` or ``input_pos``), or {}."""
        if self.pos_enc_type != "RoPE":
            return {}
        cos, sin = getattr(self, f"freqs_cos_{which}"), getattr(self, f"freqs_sin_{which}")
        if input_pos is None:
            return dict(freqs_cos=cos[:n], freqs_sin=sin[:n])
        return dict(freqs_cos=cos[input_pos], freqs_sin=sin[input_pos])

    def _finish_init(self, layers: dict, encoder: tuple, decoder: tuple) -> None:
        """Add the ``(block class, kwargs)`` stacks of the encoder and decoder and the output layer to ``layers``;
        set up RoPE if used; tie the target embedding to the output layer where asked and possible."""
        stacks = (("encoder", encoder, self.n_layers_enc), ("decoder", decoder, self.n_layers_dec))
        for stack, (cls, kwargs), n in stacks:
            layers[f"{stack}_blocks"] = nn.ModuleList(build_with_kwargs(f"{stack}_kwargs", cls, kwargs, self.d_model)
                                                      for _ in range(n))
        layers["final_out"] = nn.Linear(self.d_model, self.out_dim)
        self.layers = nn.ModuleDict(layers)
        if self.pos_enc_type == "RoPE":
            self._init_rope()
        emb, out = self.layers.target_embedder, self.layers.final_out
        self.weights_tied = (self.tie_weights and isinstance(emb, nn.Embedding)
                             and emb.weight.shape == out.weight.shape)
        if self.weights_tied:
            emb.weight = out.weight
        if self.tie_weights:
            self._register_state_dict_hook(_add_alias_keys)
            self._register_load_state_dict_pre_hook(self._accept_alias_keys, with_module=False)

    def _accept_alias_keys(self, state_dict, prefix, *args) -> None:
        """Drop the published alias keys (checking they equal ``final_out``), untie a never-tied checkpoint."""
        for suffix in ("weight", "bias"):
            alias = prefix + _ALIAS + suffix
            if alias in state_dict:
                value, target = state_dict.pop(alias), state_dict.get(f"{prefix}layers.final_out.{suffix}")
                if target is not None and not torch.equal(value, target):
                    raise ValueError(f"{alias} must equal layers.final_out.{suffix} (it is an alias of it)")
        emb_key, out_key = prefix + "layers.target_embedder.weight", prefix + "layers.final_out.weight"
        if self.weights_tied and emb_key in state_dict and out_key in state_dict \
                and not torch.equal(state_dict[emb_key], state_dict[out_key]):
            warnings.warn("this checkpoint's target embedding and output layer differ (saved by a model whose "
                          "tie_weights tied nothing, like the published 0.0.7): loading them untied", stacklevel=2)
            self.layers.target_embedder.weight = nn.Parameter(state_dict[emb_key].clone())
            self.weights_tied = False

    # ------------------------------------------------------------------------------------------------- forward
    def _embed(self, t: Tensor, which: str, offset=0) -> Tensor:
        h = self.layers[f"{which}_embedder"](t)
        if self.pos_enc_type == "RoPE":
            return h * math.sqrt(self.d_model)
        return self.layers[f"{which}_pos_embedder"](h, offset)

    def _symbols(self, h: Tensor, input_pos: Tensor | None = None, key_padding_mask: Tensor | None = None,
                 causal: bool = False, with_weights: bool = False) -> tuple:
        """``(symbols, symbol_attn, symbol_ids)`` of the shared retriever for ``h`` (``()`` for blocks without
        symbols, Nones for a model without a retriever)."""
        if not self.uses_symbols:
            return ()
        if "symbol_retriever" not in self.layers:
            return None, None, None
        retriever = self.layers.symbol_retriever
        kwargs = {}
        if isinstance(retriever, RelationalSymbolicAttention):  # its symbols mix neighbouring tokens
            kwargs = dict(key_padding_mask=key_padding_mask, causal=causal)
        return retrieve(retriever, h, input_pos, with_weights=with_weights, **kwargs)

    def encode(self, x: Tensor, src_padding_mask: Tensor | None = None) -> Tensor:
        """Source ``x`` → encoder output ``(B, Ls, d)``."""
        return self._encode(x, src_padding_mask)

    def decode(self, y: Tensor, context: Tensor, src_padding_mask: Tensor | None = None,
               tgt_padding_mask: Tensor | None = None, kv_cache: nn.ModuleList | None = None,
               input_pos: Tensor | None = None) -> Tensor:
        """Target ``y`` attending to ``context`` → logits ``(B, Ly, out_dim)``."""
        return self._decode(y, context, src_padding_mask, tgt_padding_mask, kv_cache, input_pos)

    def _encode(self, x: Tensor, src_padding_mask: Tensor | None, record: list | None = None) -> Tensor:
        """The encoder stack, recording its blocks into ``record`` if given."""
        _check_seq("x", x, self.input_spec, self.in_block_size)
        h = self._embed(x, "source")
        blocks = self.layers.encoder_blocks
        mask = AttentionMask.build(None, blocks[0].causal, src_padding_mask, q_len=x.shape[1], k_len=x.shape[1],
                                   device=h.device, batch_size=x.shape[0])  # one mask for every layer
        rope, retrieved = self.rope("enc", h.shape[1]), None
        for i, block in enumerate(blocks):
            if retrieved is None or self.update_symbols_each_layer:  # else: persistent, once from the embeddings
                retrieved = self._symbols(h, key_padding_mask=src_padding_mask, with_weights=record is not None)
            h = run_block(block, h, *retrieved[:1], mask=mask, record=record, stack="encoder", index=i,
                          retrieved=retrieved or (None, None, None), **rope)
        return h

    def _decode(self, y: Tensor, context: Tensor, src_padding_mask: Tensor | None, tgt_padding_mask: Tensor | None,
                kv_cache: nn.ModuleList | None = None, input_pos: Tensor | None = None,
                record: list | None = None) -> Tensor:
        """The decoder stack and output layer, recording its blocks into ``record`` if given."""
        _check_seq("y", y, self.output_spec, self.out_block_size)
        g = self._embed(y, "target", 0 if input_pos is None else input_pos)
        rope = self.rope("dec", g.shape[1], input_pos)
        blocks = self.layers.decoder_blocks
        masks = self._decoder_masks(blocks[0].causal, y, context, src_padding_mask, tgt_padding_mask, kv_cache,
                                    input_pos)
        retrieved = None
        for i, block in enumerate(blocks):
            if retrieved is None or self.update_symbols_each_layer:  # else: persistent, once from the embeddings
                retrieved = self._symbols(g, input_pos, tgt_padding_mask, block.causal, with_weights=record is not None)
            g = run_block(block, g, context, *retrieved[:1], **masks, kv_cache=None if kv_cache is None else
                          kv_cache[i], input_pos=input_pos, record=record, stack="decoder", index=i,
                          retrieved=retrieved or (None, None, None), **rope)
        return self.layers.final_out(g)

    def forward_intermediates(self, x: Tensor, y: Tensor, *, src_padding_mask: Tensor | None = None,
                              tgt_padding_mask: Tensor | None = None) -> Intermediates:
        """The decoder's logits for every target position ``(B, Ly, out_dim)`` (teacher forcing) and what every
        encoder and decoder block computed (see :class:`~dual_attention.intermediates.LayerIntermediates`)."""
        record: list[LayerIntermediates] = []
        context = self._encode(x, src_padding_mask, record)
        return Intermediates(self._decode(y, context, src_padding_mask, tgt_padding_mask, record=record), record)

    @staticmethod
    def _decoder_masks(causal: bool, y: Tensor, context: Tensor, src_padding_mask, tgt_padding_mask, kv_cache,
                       input_pos) -> dict:
        """The decoder's two masks, built once for every layer: self-attention (causal, target padding, cache
        positions) and cross-attention (source padding)."""
        (b, m), n, cached = y.shape[:2], context.shape[1], kv_cache is not None
        mask = AttentionMask.build(None, causal, tgt_padding_mask, q_len=m, k_len=cache_length(kv_cache[0]) if cached
                                   else m, q_pos=input_pos if cached else None, device=y.device, batch_size=b)
        context_mask = AttentionMask.build(None, False, src_padding_mask, q_len=m, k_len=n, device=y.device,
                                           batch_size=b)
        return dict(mask=mask, context_mask=context_mask)

    def forward(self, x: Tensor, y: Tensor, targets: Tensor | None = None, *,
                src_padding_mask: Tensor | None = None, tgt_padding_mask: Tensor | None = None):
        """``(logits, loss)``: logits ``(B, Ly, out_dim)`` with ``targets``, else for the last position only
        ``(B, 1, out_dim)`` (as published). Padding masks are bool ``(B, L)``, True for real tokens."""
        _check_seq("x", x, self.input_spec, self.in_block_size)
        _check_seq("y", y, self.output_spec, self.out_block_size)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x and y must have the same batch size, got x {tuple(x.shape)} and y {tuple(y.shape)}")
        _check_padding_mask("src_padding_mask", src_padding_mask, x)
        _check_padding_mask("tgt_padding_mask", tgt_padding_mask, y)
        if targets is not None and tuple(targets.shape) != tuple(y.shape[:2]):
            raise ValueError(f"targets must have shape {tuple(y.shape[:2])} (that of y), got {tuple(targets.shape)}")
        logits = self.decode(y, self.encode(x, src_padding_mask), src_padding_mask, tgt_padding_mask)
        if targets is None:
            return logits[:, -1:], None
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=self.loss_ignore_idx)
        return logits, loss

    # ---------------------------------------------------------------------------------------------- generation
    @property
    def supports_kv_cache(self) -> bool:
        if isinstance(self.layers["symbol_retriever"] if "symbol_retriever" in self.layers else None,
                      RelationalSymbolicAttention):
            return False  # its symbols depend on each token's neighbours' states, which the cache does not keep
        return all(getattr(getattr(b, "dual_attn", None), "supports_kv_cache", True)
                   for b in self.layers.decoder_blocks)

    @torch.no_grad()
    def generate(self, src: Tensor, max_new_tokens: int, bos_token_id: int, eos_token_id: int | None = None,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 src_padding_mask: Tensor | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> Tensor:
        """Decode from ``src``: encoder once, then a cached decoder step per token → ``(B, 1 + new)`` ids
        starting with ``bos_token_id`` (greedy by default; stops once every row emitted ``eos_token_id``)."""
        if self.output_spec["type"] != "token":
            raise ValueError("generate needs a token output_spec")
        max_new_tokens = min(max_new_tokens, self.out_block_size - 1)
        context = self.encode(src, src_padding_mask)
        b = context.shape[0]
        y = torch.full((b, 1), bos_token_id, dtype=torch.long, device=context.device)
        done = torch.zeros(b, dtype=torch.bool, device=context.device)
        cache = None
        if use_cache and self.supports_kv_cache:
            cache = nn.ModuleList(blk.init_kv_cache(b, max_new_tokens + 1, context.device, context.dtype)
                                  for blk in self.layers.decoder_blocks)
        for step in range(max_new_tokens):
            if cache is not None:
                logits = self.decode(y[:, -1:], context, src_padding_mask, kv_cache=cache,
                                     input_pos=torch.tensor([step], device=y.device))
            else:
                logits = self.decode(y, context, src_padding_mask)
            token = sample_next_token(logits[:, -1], temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                token = torch.where(done, torch.full_like(token, eos_token_id), token)
                done = done | (token == eos_token_id)
            y = torch.cat([y, token[:, None]], dim=1)
            if eos_token_id is not None and bool(done.all()):
                break
        return y

    def get_num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def estimate_mfu(self, fwdbwd_per_iter: int, dt: float, peak_flops: float = 312e12) -> float:
        """MFU from the 6·N FLOPs per (source + target) token approximation (attention FLOPs not counted)."""
        tokens = (self.in_block_size + self.out_block_size) * fwdbwd_per_iter
        return 6 * self.get_num_params() * tokens / dt / peak_flops


def _add_alias_keys(module, state_dict, prefix, local_metadata) -> None:
    """Write ``layers.target_embedder.weights.*`` (aliases of ``final_out``) where the published package did."""
    items = list(state_dict.items())
    final_out = {k: v for k, v in items if k.startswith(prefix + "layers.final_out.")}
    state_dict.clear()
    anchor = prefix + "layers.target_embedder."
    inserted = False
    for i, (k, v) in enumerate(items):
        state_dict[k] = v
        nxt = items[i + 1][0] if i + 1 < len(items) else ""
        if not inserted and k.startswith(anchor) and not nxt.startswith(anchor):
            for suffix in ("weight", "bias"):
                if prefix + "layers.final_out." + suffix in final_out:
                    state_dict[prefix + _ALIAS + suffix] = final_out[prefix + "layers.final_out." + suffix]
            inserted = True


class Seq2SeqTransformer(_Seq2Seq):
    """The encoder-decoder Transformer baseline (arguments, defaults and state-dict keys as published).

    ``encoder_kwargs`` go to :class:`EncoderBlock` (n_heads, dff, dropout_rate, activation, norm_first, ...),
    ``decoder_kwargs`` to :class:`DecoderBlock` (also n_heads_cross; ``causal`` defaults to True).
    ``pos_enc_type``: ``'sinusoidal'`` (published) or ``'RoPE'``.
    """

    def __init__(self, input_spec: dict, output_spec: dict, d_model: int, out_dim: int, n_layers_enc: int,
                 n_layers_dec: int, encoder_kwargs: dict, decoder_kwargs: dict, in_block_size: int,
                 out_block_size: int, tie_weights: bool = True, loss_ignore_idx: int = -1,
                 pos_enc_type: str = "sinusoidal") -> None:
        super().__init__()
        layers = self._init_common(input_spec, output_spec, d_model, out_dim, n_layers_enc, n_layers_dec,
                                   in_block_size, out_block_size, tie_weights, loss_ignore_idx, pos_enc_type)
        enc, dec = check_kwargs_dict("encoder_kwargs", encoder_kwargs), check_kwargs_dict("decoder_kwargs",
                                                                                          decoder_kwargs)
        self._finish_init(layers, (EncoderBlock, enc), (DecoderBlock, dec))


class Seq2SeqDualAttnTransformer(_Seq2Seq):
    """The encoder-decoder Dual Attention Transformer (arguments, defaults and state-dict keys as published).

    One ``symbol_retriever`` (``'symbolic_attention'``, ``'rel_sym_attn'``, ``'positional_symbols'`` or
    ``'position_relative'``) serves every encoder and decoder layer; ``encoder_kwargs``/``decoder_kwargs`` go to
    :class:`DualAttnEncoderBlock`/:class:`DualAttnDecoderBlock`. ``pos_enc_type``: ``'sinusoidal'`` (published)
    or ``'RoPE'``; ``update_symbols_each_layer=False``: persistent symbols (see the module docstring).
    """

    uses_symbols = True

    def __init__(self, input_spec: dict, output_spec: dict, symbol_retrieval: str | None,
                 symbol_retrieval_kwargs: dict | None, d_model: int, out_dim: int, n_layers_enc: int,
                 n_layers_dec: int, encoder_kwargs: dict, decoder_kwargs: dict, in_block_size: int,
                 out_block_size: int, tie_weights: bool = True, loss_ignore_idx: int = -1,
                 update_symbols_each_layer: bool = True, pos_enc_type: str = "sinusoidal") -> None:
        super().__init__()
        layers = self._init_common(input_spec, output_spec, d_model, out_dim, n_layers_enc, n_layers_dec,
                                   in_block_size, out_block_size, tie_weights, loss_ignore_idx, pos_enc_type)
        enc, dec = check_kwargs_dict("encoder_kwargs", encoder_kwargs), check_kwargs_dict("decoder_kwargs",
                                                                                          decoder_kwargs)
        retriever_kwargs = check_kwargs_dict("symbol_retrieval_kwargs", symbol_retrieval_kwargs)
        for name, kw in (("encoder_kwargs", enc), ("decoder_kwargs", dec)):
            ra_kwargs = check_kwargs_dict(f"{name}['ra_kwargs']", kw.get("ra_kwargs"))
            check_relative_symbols(symbol_retrieval, ra_kwargs, kw.get("n_heads_ra", 1),
                                   kwargs_name=f"{name}['ra_kwargs']")
            kw["ra_kwargs"] = check_symbol_options(symbol_retrieval, SYMBOL_RETRIEVERS, retriever_kwargs,
                                                   kw.get("ra_type", "relational_attention"), kw.get("n_heads_ra", 1),
                                                   ra_kwargs, update_symbols_each_layer)
        self.symbol_retrieval = symbol_retrieval
        self.update_symbols_each_layer = update_symbols_each_layer
        if symbol_retrieval is not None:
            layers["symbol_retriever"] = build_symbol_retriever(symbol_retrieval, retriever_kwargs)
            check_retriever_fits(layers["symbol_retriever"], d_model, None, "symbol_retrieval_kwargs")
        self._finish_init(layers, (DualAttnEncoderBlock, enc), (DualAttnDecoderBlock, dec))
