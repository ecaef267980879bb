"""Analysis of trained models: attention maps, relations and retrieved symbols per layer, heat maps, Gradio apps.

* :func:`analyze` (:mod:`~dual_attention.model_analysis.analysis`): one forward pass of any model returning a
  :class:`ForwardAnalysis` (per-layer SA/RA attention, relations, symbols); the output equals the plain forward.
* :mod:`~dual_attention.model_analysis.datlm_utils`: the published function names.
* :mod:`~dual_attention.model_analysis.plotting` (matplotlib): heat maps; ``dat viz`` writes them as PNGs.
* ``python -m dual_attention.model_analysis.lm_inference_app`` / ``lm_visualization_app``: Gradio apps.

Importing this package needs neither matplotlib nor gradio.
"""

from dual_attention.model_analysis.analysis import (
    ForwardAnalysis,
    LayerAnalysis,
    analyze,
    analyze_lm,
    analyze_seq2seq,
    analyze_vision,
)
from dual_attention.model_analysis.postprocess import RELATION_POSTPROCESSORS, postprocess_relations

__all__ = [
    "ForwardAnalysis",
    "LayerAnalysis",
    "analyze",
    "analyze_lm",
    "analyze_seq2seq",
    "analyze_vision",
    "RELATION_POSTPROCESSORS",
    "postprocess_relations",
]
