"""``transformers`` causal-LM wrapper of the dual_attention language models, with their KV cache as a ``Cache``.

:class:`DualAttentionForCausalLM` holds a :class:`~dual_attention.language_models.DualAttnTransformerLM` or
:class:`~dual_attention.language_models.TransformerLM` as ``self.model`` (state-dict keys ``model.<our keys>``) and
runs it through its public ``forward(x, kv_cache=..., input_pos=..., key_padding_mask=...)``, so logits are ours
exactly. :class:`DATCache` is a ``transformers`` ``Cache`` whose layers are the model's own preallocated caches
(``init_kv_cache``); it is created by the first cached forward (``generate`` does this) and passed back as
``cache`` (``past_key_values`` is accepted as an alias).

Positions: token ``t`` of a sequence sits at position/cache slot ``t`` (padding included), as in
:func:`dual_attention.generation.generate`; ``position_ids`` are ignored. A left-padded batch is masked with
``attention_mask`` (the model's ``key_padding_mask``).

This file is also copied next to exported weights (``dat export hf``), for ``trust_remote_code=True`` loading; it
needs the ``dual_attention`` package installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from dual_attention.attention_utils import precompute_freqs_cis
from dual_attention.language_models import DualAttnTransformerLM, TransformerLM

from .configuration_dat import DualAttentionLMConfig

_LM_CLASSES = {"DualAttnTransformerLM": DualAttnTransformerLM, "TransformerLM": TransformerLM}


# ----------------------------------------------------------------------------------------------------- the cache
def _map_batch(cache: nn.Module, fn) -> None:
    """Replace every buffer of a layer cache (batch-first tensors) by ``fn(buffer)``."""
    for module in cache.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            setattr(module, name, fn(buf))
            if hasattr(module, "batch_size"):
                module.batch_size = getattr(module, name).shape[0]


class DATCacheLayer(CacheLayerMixin):
    """One block's cache (the model's own ``init_kv_cache`` module), seen as a ``transformers`` cache layer.

    The block writes it during its forward (``kv_cache=``, ``input_pos=``); :class:`DATCache` counts the positions.
    """

    supports_early_init = False

    def __init__(self, module: nn.Module, owner: DATCache):
        super().__init__()
        self.module, self.owner, self.is_initialized = module, owner, True

    @property
    def batch_size(self) -> int:
        return next(self.module.buffers()).shape[0]

    def lazy_initialization(self, key_states, value_states) -> None:  # pragma: no cover - never lazy
        raise NotImplementedError("DATCacheLayer is allocated by the model (init_kv_cache)")

    def update(self, key_states, value_states, *args, **kwargs):
        raise NotImplementedError("DAT blocks write their cache themselves, through the model's forward")

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.max_len, 0

    def get_seq_length(self) -> int:
        return self.owner.seen

    def get_max_length(self) -> int:
        return self.owner.max_len

    def reset(self) -> None:
        for buf in self.module.buffers():
            buf.zero_()

    def reorder_cache(self, beam_idx: Tensor) -> None:
        _map_batch(self.module, lambda b: b.index_select(0, beam_idx.to(b.device)))

    def batch_select_indices(self, indices: Tensor) -> None:
        _map_batch(self.module, lambda b: b[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        _map_batch(self.module, lambda b: b.repeat_interleave(repeats, dim=0))


class DATCache(Cache):
    """The dual_attention KV cache of a whole model: ``kv`` (what ``model.forward(kv_cache=...)`` takes) plus the
    number of positions written so far (``get_seq_length``), for up to ``max_len`` positions."""

    def __init__(self, lm: nn.Module, batch_size: int, max_len: int | None = None, device=None, dtype=None):
        self.kv = lm.init_kv_cache(batch_size, max_len, device=device, dtype=dtype)
        self.max_len = lm.block_size if max_len is None else max_len
        self.seen = 0
        super().__init__(layers=[DATCacheLayer(layer, self) for layer in self.kv])

    def reset(self) -> None:
        super().reset()
        self.seen = 0


# ----------------------------------------------------------------------------------------------------- the model
class DualAttentionPreTrainedModel(PreTrainedModel):
    config_class = DualAttentionLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        """Weights come from our own init (``__init__``) or the checkpoint; only the RoPE tables, buffers that are not
        saved, are recomputed here (``from_pretrained`` builds the model on the meta device)."""
        if isinstance(module, (DualAttnTransformerLM, TransformerLM)) and module.pos_enc_type == "RoPE":
            cos, sin = precompute_freqs_cis(module.freqs_cos.shape[-1] * 2, module.freqs_cos.shape[0])
            with torch.no_grad():
                module.freqs_cos.copy_(cos.to(module.freqs_cos))
                module.freqs_sin.copy_(sin.to(module.freqs_sin))


class DualAttentionForCausalLM(DualAttentionPreTrainedModel, GenerationMixin):
    """A dual_attention LM (``config.lm_class(**config.lm_kwargs)``) as a ``transformers`` causal LM."""

    def __init__(self, config: DualAttentionLMConfig):
        super().__init__(config)
        if config.lm_class not in _LM_CLASSES:
            raise ValueError(f"config.lm_class={config.lm_class!r} is not one of {sorted(_LM_CLASSES)}")
        self.model = _LM_CLASSES[config.lm_class](**(config.lm_kwargs or {}))
        self._tied_weights_keys = self._shared_parameters()
        self.post_init()

    def _shared_parameters(self) -> dict[str, str]:
        """``{alias: first name}`` for every parameter the LM shares (tied embedding, shared symbol retriever)."""
        first: dict[int, str] = {}
        tied = {}
        for name, p in self.named_parameters(remove_duplicate=False):
            if id(p) in first:
                tied[name] = first[id(p)]
            else:
                first[id(p)] = name
        return tied

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # generate() must not make a DynamicCache: the first cached forward makes a DATCache

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.layers.token_embedder

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.layers.token_embedder = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.model.layers.final_out

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        cache: DATCache | None = None,
        inputs_embeds: Tensor | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        past_key_values: DATCache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast | tuple:
        """``input_ids (B, T)`` → logits ``(B, T, V)``; with ``labels`` the shifted next-token loss (-100 ignored).

        With ``use_cache=True`` (``generate``) or a ``cache``, runs the model incrementally: the new tokens sit at
        positions ``cache.get_seq_length() ...``; ``attention_mask (B, past + T)`` marks real tokens (1) and
        padding (0).
        """
        if inputs_embeds is not None:
            raise ValueError("inputs_embeds is not supported by dual_attention models; pass input_ids")
        if input_ids is None:
            raise ValueError("input_ids is required")
        cache = cache if cache is not None else past_key_values
        if use_cache is None:
            use_cache = cache is not None
        if cache is not None and not isinstance(cache, DATCache):
            if cache.get_seq_length() > 0:
                raise TypeError(f"cache must be a DATCache (made by this model), got a {type(cache).__name__}")
            cache = None  # an empty standard cache: replaced by ours
        if use_cache and cache is None:
            cache = DATCache(self.model, input_ids.shape[0], device=input_ids.device,
                             dtype=self.model.layers.final_out.weight.dtype)
        logits = self._run(input_ids, attention_mask, cache if use_cache else None)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        out = CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache if use_cache else None)
        return out if return_dict is not False else out.to_tuple()

    def _run(self, input_ids: Tensor, attention_mask: Tensor | None, cache: DATCache | None) -> Tensor:
        """Logits of ``input_ids`` at positions ``past ... past + T - 1`` (writing them into ``cache``)."""
        b, t = input_ids.shape
        past = 0 if cache is None else cache.seen
        block = self.model.block_size
        if past + t > block:
            raise ValueError(f"sequence length {past + t} exceeds the model's max_block_size {block} "
                             f"({past} cached + {t} new tokens)")
        pad = None
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            if attention_mask.shape != (b, past + t):
                raise ValueError(f"attention_mask must have shape (batch, past + new) = {(b, past + t)}, "
                                 f"got {tuple(attention_mask.shape)}")
            pad = attention_mask.bool()
            if cache is not None:  # the model takes the mask over the whole cache; later slots are not yet seen
                pad = torch.ones(b, cache.max_len, dtype=torch.bool, device=input_ids.device)
                pad[:, :past + t] = attention_mask.bool()
        if cache is None:
            logits, _ = self.model(input_ids, key_padding_mask=pad)
            return logits
        input_pos = torch.arange(past, past + t, device=input_ids.device)
        logits, _ = self.model(input_ids, kv_cache=cache.kv, input_pos=input_pos, key_padding_mask=pad)
        cache.seen = past + t
        return logits
