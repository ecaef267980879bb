"""Dual Attention Transformer (Altabaa & Lafferty, arXiv:2405.16727) in PyTorch.

The public modules keep the published package's names (``dual_attention.relational_attention``,
``dual_attention.language_models``, ...); the main classes are also available from here.
"""

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it; imported on first use (PEP 562) so that ``import dual_attention``
#: and ``dat --help`` do not import torch
_EXPORTS = {
    "Attention": "attention",
    "DualAttention": "dual_attention",
    "DualAttnDecoderBlock": "dual_attn_blocks",
    "DualAttnEncoderBlock": "dual_attn_blocks",
    "DualAttnTransformerLM": "language_models",
    "TransformerLM": "language_models",
    "DisentangledRelationalCrossAttention": "relational_attention",
    "RelationalAttention": "relational_attention",
    "RelationalCrossAttention": "relational_attention",
    "Seq2SeqDualAttnTransformer": "seq2seq_models",
    "Seq2SeqTransformer": "seq2seq_models",
    "PositionalSymbolRetriever": "symbol_retrieval",
    "PositionRelativeSymbolRetriever": "symbol_retrieval",
    "RelationalSymbolicAttention": "symbol_retrieval",
    "SymbolicAttention": "symbol_retrieval",
    "DecoderBlock": "transformer_blocks",
    "EncoderBlock": "transformer_blocks",
    "VisionDualAttnTransformer": "vision_models",
    "VisionTransformer": "vision_models",
}

__all__ = [
    "__version__",
    "Attention",
    "RelationalAttention",
    "RelationalCrossAttention",
    "DisentangledRelationalCrossAttention",
    "SymbolicAttention",
    "PositionalSymbolRetriever",
    "PositionRelativeSymbolRetriever",
    "RelationalSymbolicAttention",
    "DualAttention",
    "EncoderBlock",
    "DecoderBlock",
    "DualAttnEncoderBlock",
    "DualAttnDecoderBlock",
    "DualAttnTransformerLM",
    "TransformerLM",
    "Seq2SeqTransformer",
    "Seq2SeqDualAttnTransformer",
    "VisionTransformer",
    "VisionDualAttnTransformer",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dual_attention' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"dual_attention.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
