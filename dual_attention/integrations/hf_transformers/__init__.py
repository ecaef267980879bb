"""dual_attention language models in ``transformers`` (extra ``transformers``).

    from dual_attention.integrations.hf_transformers import DualAttentionForCausalLM, to_transformers
    hf_model = to_transformers(lm)                    # a DualAttnTransformerLM / TransformerLM, weights shared
    AutoModelForCausalLM.from_pretrained(DIR)         # a directory written by `dat export hf` (also with
                                                      # trust_remote_code=True where dual_attention is installed)

Importing this package registers the configuration and model with ``AutoConfig`` / ``AutoModelForCausalLM``.
"""

from __future__ import annotations

from dual_attention.integrations import require

require("transformers", "the transformers integration")

from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from dual_attention.language_models import DualAttnTransformerLM, TransformerLM  # noqa: E402

from .configuration_dat import DualAttentionLMConfig  # noqa: E402
from .modeling_dat import DATCache, DualAttentionForCausalLM  # noqa: E402
from .tokenization import byte_tokenizer  # noqa: E402

__all__ = ["DualAttentionLMConfig", "DualAttentionForCausalLM", "DATCache", "byte_tokenizer", "to_transformers",
           "lm_class_name"]

AutoConfig.register(DualAttentionLMConfig.model_type, DualAttentionLMConfig, exist_ok=True)
AutoModelForCausalLM.register(DualAttentionLMConfig, DualAttentionForCausalLM, exist_ok=True)


def lm_class_name(lm) -> str:
    """``'DualAttnTransformerLM'`` or ``'TransformerLM'`` for an LM instance (also their ``*_HFHub`` variants)."""
    for cls in (DualAttnTransformerLM, TransformerLM):
        if isinstance(lm, cls):
            return cls.__name__
    raise TypeError(f"expected a DualAttnTransformerLM or TransformerLM, got {type(lm).__name__}")


def to_transformers(lm, lm_kwargs: dict, **config_kwargs) -> DualAttentionForCausalLM:
    """A :class:`DualAttentionForCausalLM` holding a copy of ``lm``'s weights; ``lm_kwargs`` built ``lm``."""
    config = DualAttentionLMConfig.from_lm_kwargs(lm_class_name(lm), lm_kwargs, **config_kwargs)
    model = DualAttentionForCausalLM(config)
    model.model.load_state_dict(lm.state_dict(), strict=True)
    return model.eval()
