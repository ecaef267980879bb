"""Dual Attention Transformer (Altabaa & Lafferty, arXiv:2405.16727) in PyTorch.

The public modules keep the published package's names (``dual_attention.relational_attention``,
``dual_attention.language_models``, ...); the main classes are also available from here.
"""

__version__ = "0.1.0"

from dual_attention.attention import Attention
from dual_attention.dual_attention import DualAttention
from dual_attention.dual_attn_blocks import DualAttnDecoderBlock, DualAttnEncoderBlock
from dual_attention.language_models import DualAttnTransformerLM, TransformerLM
from dual_attention.relational_attention import (
    DisentangledRelationalCrossAttention,
    RelationalAttention,
    RelationalCrossAttention,
)
from dual_attention.seq2seq_models import Seq2SeqDualAttnTransformer, Seq2SeqTransformer
from dual_attention.symbol_retrieval import (
    PositionalSymbolRetriever,
    PositionRelativeSymbolRetriever,
    RelationalSymbolicAttention,
    SymbolicAttention,
)
from dual_attention.transformer_blocks import DecoderBlock, EncoderBlock
from dual_attention.vision_models import VisionDualAttnTransformer, VisionTransformer

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
