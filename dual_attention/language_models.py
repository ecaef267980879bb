"""Causal language models: the Dual Attention Transformer LM and the Transformer baseline.

    h⁰ = Embed(x) (+ PosEmb);  for ℓ = 1..L:  s^ℓ = Retrieve_ℓ(h^{ℓ-1});  h^ℓ = Block_ℓ(h^{ℓ-1}, s^ℓ)
    logits = W_out · Norm(h^L)          (W_out tied to the token embedding)

With ``update_symbols_each_layer=False`` (persistent symbols) s^ℓ = s = Retrieve(h⁰) for every layer: the symbols
are computed once from the embeddings. With ``symbol_retrieval=None`` (``ra_type='hadamard'`` only) there are none.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dual_attention._validation import (
    check_bool,
    check_choice,
    check_kwargs_dict,
    check_positive_int,
    check_probability,
)
from dual_attention.attention_utils import AttentionMask, precompute_freqs_cis
from dual_attention.dual_attn_blocks import DualAttnEncoderBlock, check_rope_fits, check_symbol_options
from dual_attention.errors import UnsupportedConfigError
from dual_attention.generation import generate as _generate
from dual_attention.intermediates import Intermediates, LayerIntermediates, retrieve, run_block
from dual_attention.kv_cache import cache_length
from dual_attention.optim import configure_optimizers
from dual_attention.positional_encoding import POS_ENC_TYPES
from dual_attention.relational_attention import RelationalAttention
from dual_attention.symbol_retrieval import (
    LM_SYMBOL_RETRIEVERS,
    SymbolicAttention,
    build_symbol_retriever,
    check_relative_symbols,
    check_retriever_fits,
)
from dual_attention.transformer_blocks import EncoderBlock, create_norm

__all__ = ["DualAttnTransformerLM", "TransformerLM", "configure_optimizers"]




class _LanguageModel(nn.Module):
    """What both LMs share: embeddings, positions, tied output, init, forward/generate plumbing."""

    layers: nn.ModuleDict
    update_symbols_each_layer = True

    def _init_common(self, vocab_size, d_model, n_layers, dff, dropout_rate, activation, norm_first, max_block_size,
                     norm_type, pos_enc_type, bias, n_heads) -> None:
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("d_model", d_model)
        check_positive_int("n_layers", n_layers)
        check_positive_int("max_block_size", max_block_size)
        check_choice("pos_enc_type", pos_enc_type, POS_ENC_TYPES)
        check_probability("dropout_rate", dropout_rate)
        check_bool("bias", bias)
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by the total number of heads ({n_heads})")
        self.vocab_size, self.d_model, self.n_layers, self.n_heads = vocab_size, d_model, n_layers, n_heads
        self.dff, self.dropout_rate, self.activation = dff, dropout_rate, activation
        self.norm_first, self.norm_type, self.pos_enc_type, self.bias = norm_first, norm_type, pos_enc_type, bias
        self.block_size = max_block_size
        if pos_enc_type == "RoPE":
            cos, sin = precompute_freqs_cis(d_model // n_heads, max_block_size)
            self.register_buffer("freqs_cos", cos, persistent=False)
            self.register_buffer("freqs_sin", sin, persistent=False)

    def _check_rope_fits(self) -> None:
        if self.pos_enc_type == "RoPE":
            check_rope_fits(self.layers.blocks, 2 * self.freqs_cos.shape[-1], "layers.blocks")

    def _init_layers(self, make_block, **retrievers: nn.ModuleList) -> None:
        """``layers``, in state-dict order: token embedding, dropout, (``symbol_retrievers``,) ``n_layers`` blocks
        from ``make_block()``, final norm and output; then RoPE checks, positions, weight tying and init."""
        self.layers = nn.ModuleDict(dict(
            token_embedder=nn.Embedding(self.vocab_size, self.d_model),
            dropout=nn.Dropout(self.dropout_rate),
            **retrievers,
            blocks=nn.ModuleList(make_block() for _ in range(self.n_layers)),
            norm=create_norm(self.d_model, self.norm_type),
            final_out=nn.Linear(self.d_model, self.vocab_size, bias=False),
        ))
        self._finish_init()

    def _finish_init(self) -> None:
        self._check_rope_fits()
        if self.pos_enc_type == "pos_emb":
            self.layers.add_module("positional_embedder", nn.Embedding(self.block_size, self.d_model))
        self.layers.token_embedder.weight = self.layers.final_out.weight  # weight tying
        self.apply(self._init_weights)
        residual_std = 0.02 / math.sqrt(2 * self.n_layers)
        for name, p in self.named_parameters():
            # the projections that write into the residual stream: attention outputs and the FF down projection
            if name.endswith("wo.weight") or name.endswith("ff_block.linear2.weight"):
                nn.init.normal_(p, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, RelationalAttention):
            nn.init.normal_(module.wr, mean=0.0, std=0.02)

    # ------------------------------------------------------------------------------------------------ forward
    def _check_idx(self, x: Tensor, input_pos: Tensor | None) -> None:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.dtype not in (torch.long, torch.int32, torch.int64):
            desc = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be an integer tensor of token ids with shape (batch, length), got {desc}")
        t = x.shape[1]
        # the end position is data-dependent: read it only in eager mode (a graph break under torch.compile)
        end = t if input_pos is None or torch.compiler.is_compiling() else int(input_pos[-1]) + 1
        if t > self.block_size or end > self.block_size:
            raise ValueError(f"Input sequence length {max(t, end)} exceeds maximum block size {self.block_size} "
                             f"(x has shape {tuple(x.shape)}; max_block_size={self.block_size})")

    def _embed(self, x: Tensor, input_pos: Tensor | None):
        h = self.layers.token_embedder(x)
        positions = torch.arange(x.shape[1], device=x.device) if input_pos is None else input_pos
        freqs = (None, None)
        if self.pos_enc_type == "pos_emb":
            h = h + self.layers.positional_embedder(positions)
        else:
            freqs = (self.freqs_cos[positions], self.freqs_sin[positions])
        return self.layers.dropout(h), freqs

    @staticmethod
    def _mask(x: Tensor, key_padding_mask: Tensor | None, kv_cache: nn.ModuleList | None,
              input_pos: Tensor | None) -> AttentionMask:
        """Causal (queries at ``input_pos`` against the cache when decoding) and the key padding."""
        b, t = x.shape
        cached = kv_cache is not None
        return AttentionMask.build(None, True, key_padding_mask, q_len=t,
                                   k_len=cache_length(kv_cache[0]) if cached else t,
                                   q_pos=input_pos if cached else None, device=x.device, batch_size=b)

    def forward(
        self,
        x: Tensor,
        targets: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        kv_cache: nn.ModuleList | None = None,
        input_pos: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``x (B, T)`` token ids → ``(logits (B, T, V), loss or None)``.

        Args:
            targets: ``(B, T)`` next-token ids; ``-1`` is ignored by the loss.
            key_padding_mask: ``(B, T)`` bool, True for real tokens (``(B, cache length)`` with a cache).
            kv_cache, input_pos: incremental decoding (:meth:`init_kv_cache`; positions ``(T,)`` of ``x``).
        """
        logits = self._logits(x, key_padding_mask, kv_cache, input_pos)
        loss = None
        if targets is not None:
            if targets.shape != x.shape:
                raise ValueError(f"targets must have the shape of x {tuple(x.shape)}, got {tuple(targets.shape)}")
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def forward_intermediates(self, x: Tensor, *, key_padding_mask: Tensor | None = None) -> Intermediates:
        """The logits ``(B, T, V)`` of ``x (B, T)`` and what every block computed (attention maps, relations,
        symbols; see :class:`~dual_attention.intermediates.LayerIntermediates`), from this model's own forward.
        The relational heads return their weights through their explicit path: the logits equal ``forward``'s to
        float rounding."""
        record: list[LayerIntermediates] = []
        return Intermediates(self._logits(x, key_padding_mask, None, None, record), record)

    def _logits(self, x: Tensor, key_padding_mask: Tensor | None, kv_cache: nn.ModuleList | None,
                input_pos: Tensor | None, record: list | None = None) -> Tensor:
        """The forward pass: embeddings, the blocks (recording them into ``record`` if given), logits."""
        self._check_idx(x, input_pos)
        if kv_cache is not None and input_pos is None:
            raise ValueError("input_pos is required when kv_cache is given")
        h, freqs = self._embed(x, input_pos)
        mask = self._mask(x, key_padding_mask, kv_cache, input_pos)  # one mask for every layer
        retrieved = None
        for i, block in enumerate(self.layers.blocks):
            if retrieved is None or self.update_symbols_each_layer:  # else: persistent, once from the embeddings
                retrieved = self._retrieve(i, h, input_pos, with_weights=record is not None)
            args = (h, *retrieved[:1], *freqs) if retrieved else (h, *freqs)
            h = run_block(block, *args, record=record, index=i, retrieved=retrieved or (None, None, None),
                          input_pos=input_pos, mask=mask, kv_cache=None if kv_cache is None else kv_cache[i],
                          **self._block_kwargs(record is not None))
        return self.layers.final_out(self.layers.norm(h))

    def _retrieve(self, i: int, h: Tensor, input_pos: Tensor | None, with_weights: bool) -> tuple | None:
        """``(symbols, symbol_attn, symbol_ids)`` of layer ``i``, or None for a model without symbols."""
        return None

    def _block_kwargs(self, recording: bool) -> dict:
        return {}

    # --------------------------------------------------------------------------------------------- generation
    @property
    def supports_kv_cache(self) -> bool:
        return True

    def init_kv_cache(self, batch_size: int, max_len: int | None = None, device=None, dtype=None) -> nn.ModuleList:
        """One cache per block, for ``batch_size`` sequences of up to ``max_len`` (default ``block_size``) tokens."""
        max_len = self.block_size if max_len is None else max_len
        if max_len > self.block_size:
            raise ValueError(f"max_len={max_len} exceeds the model's block_size={self.block_size}")
        param = self.layers.final_out.weight
        return nn.ModuleList(block.init_kv_cache(batch_size, max_len, device or param.device, dtype or param.dtype)
                             for block in self.layers.blocks)

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
        key_padding_mask: Tensor | None = None,
        compile: bool = False,
    ) -> Tensor:
        """Continue ``idx (B, T)`` by ``max_new_tokens`` tokens → ``(B, T + new)``.

        ``temperature=0`` is greedy; ``top_k``/``top_p`` restrict sampling; generation stops early once every row
        has emitted ``eos_token_id``. Uses the KV cache unless ``use_cache=False``; ``compile=True`` runs the
        cached step through ``torch.compile`` (see :mod:`dual_attention.generation`).
        """
        return _generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         eos_token_id=eos_token_id, use_cache=use_cache, generator=generator,
                         key_padding_mask=key_padding_mask, compile=compile)

    # ------------------------------------------------------------------------------------------------ counting
    def get_num_params(self, non_embedding: bool = True) -> int:
        """Unique parameters (tied/shared counted once), minus the positional table if ``non_embedding``."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.pos_enc_type == "pos_emb":
            n -= self.layers.positional_embedder.weight.numel()
        return n

    def _attention_flops_per_token(self, seq_len: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def estimate_mfu(self, fwdbwd_per_iter: int, dt: float, seq_len: int | None = None,
                     peak_flops: float = 312e12) -> float:
        """Model FLOPs utilisation: achieved FLOP/s over ``peak_flops`` (default: A100 bf16, 312 TFLOP/s).

        FLOPs per token = 6·N (matmuls with the parameters, forward + backward) + 3 × the attention FLOPs of the
        forward pass (PaLM appendix B; for DAT counting the relational heads' extra value width and the symbol
        retrieval). ``fwdbwd_per_iter`` sequences of ``seq_len`` (default ``block_size``) tokens took ``dt`` s.
        """
        seq_len = self.block_size if seq_len is None else seq_len
        flops_per_token = 6 * self.get_num_params() + 3 * self._attention_flops_per_token(seq_len)
        return flops_per_token * seq_len * fwdbwd_per_iter / dt / peak_flops


def _retriever_config(symbol_retriever_config: dict | None) -> dict:
    """``symbol_retriever_config`` with its defaults (shared retriever, untied libraries), checked."""
    config = {"shared_symbol_retriever": True, "weight_tie_symbol_library": False,
              **check_kwargs_dict("symbol_retriever_config", symbol_retriever_config)}
    unknown = set(config) - {"shared_symbol_retriever", "weight_tie_symbol_library"}
    if unknown:
        raise ValueError(f"symbol_retriever_config has unknown keys {sorted(unknown)}; allowed: "
                         "'shared_symbol_retriever', 'weight_tie_symbol_library'")
    for key, value in config.items():
        check_bool(f"symbol_retriever_config['{key}']", value)
    return config


def _check_dual_options(symbol_retrieval: str | None, symbol_retrieval_kwargs: dict | None,
                        symbol_retriever_config: dict | None, ra_type: str, n_heads_ra: int, sa_kwargs: dict | None,
                        ra_kwargs: dict | None, update_symbols_each_layer: bool) -> tuple[dict, dict, dict, dict]:
    """The DAT LM's symbol and attention options, checked: ``(sa_kwargs, ra_kwargs, retriever_kwargs, retriever
    config)`` (copies; ``ra_kwargs`` as :func:`check_symbol_options` returns it)."""
    sa_kwargs, ra_kwargs = check_kwargs_dict("sa_kwargs", sa_kwargs), check_kwargs_dict("ra_kwargs", ra_kwargs)
    retriever_kwargs = check_kwargs_dict("symbol_retrieval_kwargs", symbol_retrieval_kwargs)
    ra_kwargs = check_symbol_options(symbol_retrieval, LM_SYMBOL_RETRIEVERS, retriever_kwargs, ra_type,
                                     n_heads_ra, ra_kwargs, update_symbols_each_layer)
    config = _retriever_config(symbol_retriever_config)
    if not update_symbols_each_layer and not config["shared_symbol_retriever"]:
        raise ValueError("update_symbols_each_layer=False computes the symbols once, with one retriever: it "
                         "needs symbol_retriever_config['shared_symbol_retriever']=True")
    check_relative_symbols(symbol_retrieval, ra_kwargs, n_heads_ra)
    return sa_kwargs, ra_kwargs, retriever_kwargs, config


def _build_retrievers(symbol_retrieval: str | None, kwargs: dict | None, config: dict,
                      n_layers: int) -> list[nn.Module]:
    """One retriever per layer: the same module for all (shared), or one each, optionally with a tied library;
    none for ``symbol_retrieval=None``."""
    if symbol_retrieval is None:
        return []
    if config["shared_symbol_retriever"]:
        return [build_symbol_retriever(symbol_retrieval, kwargs, LM_SYMBOL_RETRIEVERS)] * n_layers
    retrievers = [build_symbol_retriever(symbol_retrieval, kwargs, LM_SYMBOL_RETRIEVERS) for _ in range(n_layers)]
    if config["weight_tie_symbol_library"]:
        if symbol_retrieval == "position_relative":
            raise UnsupportedConfigError("weight-tying not implemented for position-relative symbols "
                                         "(symbol_retriever_config['weight_tie_symbol_library']=True)")
        for r in retrievers[1:]:
            r.symbol_library = retrievers[0].symbol_library
    return retrievers


class DualAttnTransformerLM(_LanguageModel):
    """The Dual Attention Transformer language model (arguments, defaults and state-dict keys as published).

    ``symbol_retrieval`` is ``'symbolic_attention'`` (default), ``'positional_symbols'`` or ``'position_relative'``
    (which needs ``ra_kwargs=dict(use_relative_positional_symbols=True)``), built from
    ``symbol_retrieval_kwargs``. ``symbol_retriever_config`` = ``{'shared_symbol_retriever': True,
    'weight_tie_symbol_library': False}`` by default: one retriever shared by all layers (its keys repeat in the
    state dict), or one per layer, optionally with a shared symbol library.

    Options beyond the published package (defaults keep its behaviour): ``ra_type='hadamard'``
    (:mod:`~dual_attention.hadamard_attention`), with which ``symbol_retrieval=None`` builds no retriever at all;
    ``update_symbols_each_layer=False`` computes the symbols once from the embeddings (one shared retriever) and
    hands them to every layer, instead of re-retrieving them from each layer's input.

    Published-checkpoint compatibility: the feed-forward blocks always have biases, whatever ``bias`` says, because
    the published model never forwarded ``bias`` to its blocks and its checkpoints (e.g. the ``bias=False`` DAT-343M)
    hold those biases; ``bias`` is kept for config compatibility only.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads_sa: int,
        n_heads_ra: int,
        symbol_retrieval_kwargs: dict,
        dff: int | None,
        dropout_rate: float,
        activation: str,
        norm_first: bool,
        max_block_size: int,
        norm_type: str = "layernorm",
        sa_kwargs: dict | None = None,
        ra_kwargs: dict | None = None,
        ra_type: str = "relational_attention",
        share_attn_params: bool = False,
        symbol_retrieval: str | None = "symbolic_attention",
        symbol_retriever_config: dict | None = None,
        pos_enc_type: str = "pos_emb",
        bias: bool = True,
        update_symbols_each_layer: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("n_heads_sa", n_heads_sa, allow_zero=True)
        check_positive_int("n_heads_ra", n_heads_ra, allow_zero=True)
        if n_heads_sa + n_heads_ra == 0:
            raise ValueError("At least one of self-attention or relational attention must be used "
                             "(n_heads_sa=0 and n_heads_ra=0)")
        self._init_common(vocab_size, d_model, n_layers, dff, dropout_rate, activation, norm_first, max_block_size,
                          norm_type, pos_enc_type, bias, n_heads_sa + n_heads_ra)
        sa_kwargs, ra_kwargs, retriever_kwargs, config = _check_dual_options(
            symbol_retrieval, symbol_retrieval_kwargs, symbol_retriever_config, ra_type, n_heads_ra, sa_kwargs,
            ra_kwargs, update_symbols_each_layer)
        self.n_heads_sa, self.n_heads_ra = n_heads_sa, n_heads_ra
        self.ra_type, self.share_attn_params = ra_type, share_attn_params
        self.symbol_retriever = symbol_retrieval
        self.symbol_retriever_config = config
        self.update_symbols_each_layer = update_symbols_each_layer
        retrievers = _build_retrievers(symbol_retrieval, retriever_kwargs, config, n_layers)
        if retrievers:
            check_retriever_fits(retrievers[0], d_model, None, "symbol_retrieval_kwargs")

        self._init_layers(lambda: DualAttnEncoderBlock(
            d_model=d_model, n_heads_sa=n_heads_sa, n_heads_ra=n_heads_ra, dff=dff, activation=activation,
            dropout_rate=dropout_rate, norm_first=norm_first, norm_type=norm_type, sa_kwargs=sa_kwargs,
            ra_kwargs=ra_kwargs, ra_type=ra_type, share_attn_params=share_attn_params, causal=True),
            symbol_retrievers=nn.ModuleList(retrievers))

    @property
    def supports_kv_cache(self) -> bool:
        return all(block.dual_attn.supports_kv_cache for block in self.layers.blocks)

    def _retrieve(self, i: int, h: Tensor, input_pos: Tensor | None, with_weights: bool) -> tuple:
        if len(self.layers.symbol_retrievers) == 0:  # no symbols (ra_type='hadamard', symbol_retrieval=None)
            return None, None, None
        return retrieve(self.layers.symbol_retrievers[i], h, input_pos, with_weights=with_weights)

    def _attention_flops_per_token(self, seq_len: int) -> float:
        flops = 0.0
        for block in self.layers.blocks:
            da = block.dual_attn
            if da.is_hadamard:  # scores over D, values [v ‖ u (‖ w)] for every head
                had = da.hadamard_attention
                flops += 2 * seq_len * had.n_heads * had.head_dim * (1 + had.n_value_parts)
                continue
            if da.use_self_attn:
                sa = da.self_attention
                flops += 2 * seq_len * sa.n_heads * (sa.key_dim + sa.head_dim)
            if da.use_rel_attn:
                ra = da.relational_attention
                width = ra.head_dim + getattr(ra, "n_relations", 0) * getattr(ra, "rel_proj_dim", 0)
                flops += 2 * seq_len * ra.n_heads * (getattr(ra, "key_dim", ra.head_dim) + width)
        for retriever in {id(r): r for r in self.layers.symbol_retrievers}.values():
            if isinstance(retriever, SymbolicAttention):
                flops += 2 * 2 * retriever.n_symbols * retriever.d_model * (
                    self.n_layers if self.symbol_retriever_config["shared_symbol_retriever"] else 1)
        return flops


class TransformerLM(_LanguageModel):
    """The Transformer baseline language model (arguments, defaults and state-dict keys as published).

    ``bias`` sets the attention output and feed-forward biases; ``block_kwargs`` go to every
    :class:`~dual_attention.transformer_blocks.EncoderBlock` (e.g. ``dict(attn_kwargs=dict(n_kv_heads=2))``);
    ``use_flash_attention=False`` computes attention explicitly (slower, same result).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        dff: int | None,
        dropout_rate: float,
        activation: str,
        norm_first: bool,
        max_block_size: int,
        norm_type: str = "layernorm",
        bias: bool = True,
        pos_enc_type: str = "pos_emb",
        use_flash_attention: bool = True,
        block_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("n_heads", n_heads)
        self._init_common(vocab_size, d_model, n_layers, dff, dropout_rate, activation, norm_first, max_block_size,
                          norm_type, pos_enc_type, bias, n_heads)
        check_bool("use_flash_attention", use_flash_attention)
        block_kwargs = check_kwargs_dict("block_kwargs", block_kwargs)
        self.use_flash_attention = use_flash_attention
        self._init_layers(lambda: EncoderBlock(
            d_model=d_model, n_heads=n_heads, dff=dff, dropout_rate=dropout_rate, activation=activation,
            norm_first=norm_first, norm_type=norm_type, bias=bias, causal=True, **block_kwargs))

    def _block_kwargs(self, recording: bool) -> dict:
        return {} if recording else {"need_weights": not self.use_flash_attention}

    def _attention_flops_per_token(self, seq_len: int) -> float:
        return sum(2 * seq_len * b.self_attn.n_heads * (b.self_attn.key_dim + b.self_attn.head_dim)
                   for b in self.layers.blocks)
