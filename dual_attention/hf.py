"""Hugging Face Hub integration: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for every model.

Each ``*_HFHub`` class is the model class plus huggingface_hub's :class:`PyTorchModelHubMixin`: ``config.json``
holds the constructor arguments and ``model.safetensors`` the weights (tied and shared tensors stored once).
Checkpoints written by the published package (only the arguments the user passed, same keys) load unchanged.

Loading is strict: a missing, unexpected or mis-shaped weight raises a ``ValueError`` that lists every offending
key, instead of being silently skipped (the published package loaded with ``strict=False``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

try:
    from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("dual_attention.hf needs huggingface_hub and safetensors: "
                      "pip install 'dual_attention[hf]'") from e

from dual_attention.language_models import DualAttnTransformerLM, TransformerLM
from dual_attention.seq2seq_models import Seq2SeqDualAttnTransformer, Seq2SeqTransformer
from dual_attention.vision_models import VisionDualAttnTransformer, VisionTransformer

__all__ = [
    "DualAttnTransformerLM_HFHub", "TransformerLM_HFHub", "Seq2SeqDualAttnTransformer_HFHub",
    "Seq2SeqTransformer_HFHub", "VisionDualAttnTransformer_HFHub", "VisionTransformer_HFHub",
    "load_state_dict_strict", "load_pretrained", "model_class_for_config", "CheckpointError",
]

SAFETENSORS_FILE, PICKLE_FILE, CONFIG_FILE = "model.safetensors", "pytorch_model.bin", "config.json"


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model (missing, unexpected or mis-shaped keys), or is unreadable."""


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint",
                           aliases: dict[str, str] | None = None) -> None:
    """Load ``state_dict`` into ``model`` exactly, or raise :class:`CheckpointError` listing every problem.

    Keys the file omits because they alias a stored tensor (safetensors stores tied/shared tensors once) are
    filled first from ``aliases`` (the file's own record, dropped name -> stored name), then from the other keys
    that share storage in ``model``, when those all hold the same values (otherwise the key is reported missing).
    """
    expected = model.state_dict()
    state = dict(state_dict)
    for dropped, stored in (aliases or {}).items():
        if dropped not in state and stored in state:
            state[dropped] = state[stored]
    by_storage: dict[tuple, list[str]] = {}
    for key, t in expected.items():
        by_storage.setdefault((t.device, t.untyped_storage().data_ptr(), t.storage_offset(), t.shape), []).append(key)
    for group in by_storage.values():
        present = [state[k] for k in group if k in state]
        if present and all(p.shape == present[0].shape and torch.equal(p, present[0]) for p in present[1:]):
            for k in group:
                state.setdefault(k, present[0])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mis_shaped:
        lines = [f"{source} does not fit {type(model).__name__}:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", mis_shaped)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


class _StrictHubMixin(PyTorchModelHubMixin):
    """PyTorchModelHubMixin with strict, error-listing loading."""

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision=None, cache_dir=None, force_download=False,
                         local_files_only=False, token=None, map_location: str = "cpu", strict: bool = True,
                         **model_kwargs):
        model = cls(**model_kwargs)
        if os.path.isdir(model_id):
            names = [n for n in (SAFETENSORS_FILE, PICKLE_FILE) if os.path.exists(os.path.join(model_id, n))]
            if not names:
                raise CheckpointError(f"{model_id} holds neither {SAFETENSORS_FILE} nor {PICKLE_FILE}")
            path = os.path.join(model_id, names[0])
        else:
            from huggingface_hub.errors import EntryNotFoundError

            kwargs = dict(repo_id=model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                          token=token, local_files_only=local_files_only)
            try:
                path = hf_hub_download(filename=SAFETENSORS_FILE, **kwargs)
            except EntryNotFoundError:
                path = hf_hub_download(filename=PICKLE_FILE, **kwargs)
        state, aliases = _read_weights(path, map_location)
        if strict:
            load_state_dict_strict(model, state, source=path, aliases=aliases)
        else:
            model.load_state_dict(state, strict=False)
        model.to(map_location)
        return model.eval()


def _read_weights(path: str, map_location: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a weights file and, for safetensors, its alias record (dropped name -> stored name)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
            aliases = {k: v for k, v in metadata.items() if k != "format" and isinstance(v, str)}
            return load_file(path, device=str(map_location)), aliases
        return torch.load(path, map_location=map_location, weights_only=True), {}
    except Exception as e:  # corrupted or truncated files
        raise CheckpointError(f"cannot read weights from {path}: {e}") from e


_HUB_KWARGS = dict(library_name="dual_attention", repo_url="https://github.com/Awni00/dual-attention",
                   tags=["dual-attention-transformer", "relational-attention"])


class DualAttnTransformerLM_HFHub(_StrictHubMixin, DualAttnTransformerLM, **_HUB_KWARGS):
    """:class:`~dual_attention.language_models.DualAttnTransformerLM` with Hub save/load."""


class TransformerLM_HFHub(_StrictHubMixin, TransformerLM, **_HUB_KWARGS):
    """:class:`~dual_attention.language_models.TransformerLM` with Hub save/load."""


class Seq2SeqDualAttnTransformer_HFHub(_StrictHubMixin, Seq2SeqDualAttnTransformer, **_HUB_KWARGS):
    """:class:`~dual_attention.seq2seq_models.Seq2SeqDualAttnTransformer` with Hub save/load."""


class Seq2SeqTransformer_HFHub(_StrictHubMixin, Seq2SeqTransformer, **_HUB_KWARGS):
    """:class:`~dual_attention.seq2seq_models.Seq2SeqTransformer` with Hub save/load."""


class VisionDualAttnTransformer_HFHub(_StrictHubMixin, VisionDualAttnTransformer, **_HUB_KWARGS):
    """:class:`~dual_attention.vision_models.VisionDualAttnTransformer` with Hub save/load."""


class VisionTransformer_HFHub(_StrictHubMixin, VisionTransformer, **_HUB_KWARGS):
    """:class:`~dual_attention.vision_models.VisionTransformer` with Hub save/load."""


def model_class_for_config(config: dict) -> type:
    """The ``*_HFHub`` class a ``config.json`` (constructor arguments) belongs to, by its distinctive keys."""
    if not isinstance(config, dict):
        raise CheckpointError(f"config must be a JSON object, got {type(config).__name__}")
    if "image_shape" in config:
        return VisionDualAttnTransformer_HFHub if "n_heads_ra" in config else VisionTransformer_HFHub
    if "input_spec" in config:
        return Seq2SeqDualAttnTransformer_HFHub if "symbol_retrieval" in config else Seq2SeqTransformer_HFHub
    if "vocab_size" in config:
        return DualAttnTransformerLM_HFHub if "n_heads_ra" in config or "n_heads_sa" in config \
            else TransformerLM_HFHub
    raise CheckpointError(f"config.json with keys {sorted(config)} is not a dual_attention model config")


def read_config(path_or_repo_id: str | os.PathLike, **hub_kwargs) -> dict:
    """Read ``config.json`` from a local directory or a Hub repository."""
    path = Path(path_or_repo_id)
    file = path / CONFIG_FILE if path.is_dir() else Path(hf_hub_download(str(path_or_repo_id), CONFIG_FILE,
                                                                         **hub_kwargs))
    if not file.exists():
        raise CheckpointError(f"{path_or_repo_id} has no {CONFIG_FILE}")
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from e


def load_pretrained(path_or_repo_id: str | os.PathLike, map_location: str = "cpu", **hub_kwargs) -> nn.Module:
    """Load any dual_attention model saved with ``save_pretrained``, picking its class from ``config.json``."""
    cls = model_class_for_config(read_config(path_or_repo_id, **hub_kwargs))
    try:
        return cls.from_pretrained(str(path_or_repo_id), map_location=map_location, **hub_kwargs)
    except TypeError as e:  # config.json with arguments the class does not take
        raise CheckpointError(f"config.json of {path_or_repo_id} does not fit {cls.__name__}: {e}") from e
