"""``transformers`` configuration of a dual_attention language model (DAT LM or Transformer LM).

``lm_class`` names the model (``DualAttnTransformerLM`` or ``TransformerLM``) and ``lm_kwargs`` holds its
constructor arguments, exactly as in the ``config.json`` of a ``dual_attention`` checkpoint; the standard
``transformers`` sizes (``vocab_size``, ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
``max_position_embeddings``) are derived from them by :meth:`DualAttentionLMConfig.from_lm_kwargs`, so that tools
reading them (generation, lm-evaluation-harness' context length) see the right values.

This file is also copied next to exported weights (``dat export hf``), for ``trust_remote_code=True`` loading.
"""

from __future__ import annotations

from transformers import PreTrainedConfig

LM_CLASSES = ("DualAttnTransformerLM", "TransformerLM")


class DualAttentionLMConfig(PreTrainedConfig):
    """Configuration of :class:`DualAttentionForCausalLM` (``model_type = "dual_attention_lm"``)."""

    model_type = "dual_attention_lm"

    lm_class: str = "DualAttnTransformerLM"
    lm_kwargs: dict | None = None
    vocab_size: int = 256
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    max_position_embeddings: int = 128
    use_cache: bool = True
    tie_word_embeddings: bool = True

    @classmethod
    def from_lm_kwargs(cls, lm_class: str, lm_kwargs: dict, **kwargs) -> DualAttentionLMConfig:
        """The configuration of ``lm_class(**lm_kwargs)``, with the standard sizes filled in."""
        if lm_class not in LM_CLASSES:
            raise ValueError(f"lm_class={lm_class!r} is not a dual_attention language model; allowed: {LM_CLASSES}")
        heads = lm_kwargs["n_heads"] if lm_class == "TransformerLM" else lm_kwargs["n_heads_sa"] + lm_kwargs[
            "n_heads_ra"]
        return cls(lm_class=lm_class, lm_kwargs=dict(lm_kwargs), vocab_size=lm_kwargs["vocab_size"],
                   hidden_size=lm_kwargs["d_model"], num_hidden_layers=lm_kwargs["n_layers"],
                   num_attention_heads=heads, max_position_embeddings=lm_kwargs["max_block_size"], **kwargs)
