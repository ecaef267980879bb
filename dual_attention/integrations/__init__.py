"""Integrations with the tools language-model researchers already use.

* :mod:`.hf_transformers` (extra ``transformers``): DAT / Transformer LMs as ``transformers`` causal-LM models
  (``AutoModelForCausalLM``, ``generate``, ``pipeline``, PEFT) and ``dat export hf``;
* :mod:`.lm_eval_backend` (extra ``eval``): an lm-evaluation-harness model type for our checkpoints, behind
  ``dat eval CHECKPOINT --tasks ...``.

Each sub-module imports its third-party library on import; :func:`require` turns a missing one into a one-line
error that names the extra to install.
"""

from __future__ import annotations

import importlib

from dual_attention.errors import MissingExtraError

__all__ = ["MissingExtraError", "require", "BYTE_EOS_ID"]

#: the token id that stands in for end-of-text / padding with the byte tokenizer, which has none of its own: NUL,
#: absent from text (the exported transformers tokenizer's eos/pad and the lm-eval backend's prefix token)
BYTE_EOS_ID = 0

#: module name -> (pip distribution, dual_attention extra)
_EXTRAS = {
    "transformers": ("transformers>=5.24", "transformers"),
    "tokenizers": ("tokenizers", "transformers"),
    "lm_eval": ("lm-eval>=0.4", "eval"),
}


def require(module: str, feature: str):
    """Import ``module`` or raise :class:`MissingExtraError` saying which extra ``feature`` needs."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        dist, extra = _EXTRAS.get(module, (module, None))
        hint = f"pip install 'dual_attention[{extra}]'" if extra else f"pip install {dist}"
        raise MissingExtraError(f"{feature} needs the {dist!r} package ({e.msg}): {hint}") from None
