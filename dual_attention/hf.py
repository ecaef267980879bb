"""Hugging Face Hub integration: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` for every model.

Each ``*_HFHub`` class is the model class plus huggingface_hub's :class:`PyTorchModelHubMixin`: ``config.json``
holds the constructor arguments and ``model.safetensors`` the weights (tied and shared tensors stored once).
Checkpoints written by the published package (only the arguments the user passed, same keys) load unchanged.

Loading is strict: a missing, unexpected or mis-shaped weight raises a ``ValueError`` that lists every offending
key, instead of being silently skipped (the published package loaded with ``strict=False``); weights that are not
finite (NaN/inf, a corrupted file) are refused as well.

:func:`load_pretrained` takes a checkpoint directory, a ``dat train`` run directory (its ``checkpoint/``) or a Hub
id. A path that does not exist locally is tried on the Hub only when it looks like ``owner/name``; when the Hub
is offline (``HF_HUB_OFFLINE=1``) or unreachable and the model is not in the local Hub cache, it fails at once,
saying what was looked for locally and on the Hub.
"""

from __future__ import annotations

import difflib
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

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
    "load_state_dict_strict", "load_weights", "load_pretrained", "resolve_checkpoint", "model_class_for_config",
    "CheckpointError",
]

SAFETENSORS_FILE, PICKLE_FILE, CONFIG_FILE = "model.safetensors", "pytorch_model.bin", "config.json"


from dual_attention.errors import message_of  # noqa: E402
from dual_attention.training.checkpoint import CheckpointError, find_checkpoint  # noqa: E402

_MAX_KEYS = 8  # keys listed per kind of problem in a one-line error


def _key_list(keys: list[str]) -> str:
    more = f", ... and {len(keys) - _MAX_KEYS} more" if len(keys) > _MAX_KEYS else ""
    return ", ".join(keys[:_MAX_KEYS]) + more


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint",
                           aliases: dict[str, str] | None = None) -> None:
    """Load ``state_dict`` into ``model`` exactly, or raise :class:`CheckpointError` (one line) listing the problems.

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
        problems = [f"{title} ({len(keys)}): {_key_list(keys)}" for title, keys in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", mis_shaped)) if keys]
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    bad = sorted(k for k in params if state[k].is_floating_point() and not torch.isfinite(state[k]).all())
    if bad:
        raise CheckpointError(f"{source} holds weights that are not finite (NaN or inf) in {_key_list(bad)}: "
                              "the checkpoint is corrupted")
    model.load_state_dict(state, strict=True)


def load_weights(model: nn.Module, path: str | os.PathLike, map_location: str = "cpu") -> None:
    """Load a ``model.safetensors`` (or ``pytorch_model.bin``) file into ``model`` strictly, aliases included."""
    state, aliases = _read_weights(str(path), map_location)
    load_state_dict_strict(model, state, source=str(path), aliases=aliases)


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
        if strict:
            load_weights(model, path, map_location)
        else:
            model.load_state_dict(_read_weights(path, map_location)[0], strict=False)
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
        raise CheckpointError(f"cannot read weights from {path}: {message_of(e)}") from e


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


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def hub_offline() -> bool:
    """Whether the Hub must not be contacted (``HF_HUB_OFFLINE`` set to a true value)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    return env or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within ``timeout`` seconds (no request is sent)."""
    from huggingface_hub import constants

    url = urlparse(getattr(constants, "ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str, **hub_kwargs) -> bool:
    kwargs = {k: v for k, v in hub_kwargs.items() if k in ("revision", "cache_dir")}
    try:
        hf_hub_download(repo_id, CONFIG_FILE, local_files_only=True, **kwargs)
        return True
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError and friends)
        return False


def _local_hint(path: Path) -> str:
    """' (directory X exists; similar: ...)' when the parent of a missing path exists: likely a typo."""
    parent = path.parent
    if str(parent) in ("", ".") or not parent.is_dir():
        return ""
    names = [c.name for c in parent.iterdir() if c.is_dir()]
    close = difflib.get_close_matches(path.name, names, n=3)
    similar = f"; similar: {', '.join(str(parent / c) for c in close)}" if close else ""
    return f" (the directory {str(parent)!r} exists{similar})"


def resolve_checkpoint(path_or_repo_id: str | os.PathLike, **hub_kwargs) -> str:
    """The checkpoint directory of a local path (a run dir -> its ``checkpoint/``) or the Hub id to download.

    Raises :class:`CheckpointError` (one line, at once) for a local path without a checkpoint, a missing path
    that is not a Hub id, and a Hub id while the Hub is offline or unreachable and the model is not cached.
    """
    text = str(path_or_repo_id)
    path = Path(text).expanduser()
    if path.exists():
        ckpt = find_checkpoint(path) if path.is_dir() else None
        if ckpt is not None:
            return str(ckpt)
        if path.is_dir() and (path / CONFIG_FILE).is_file():
            return str(path)  # config.json without weights: _from_pretrained names what is missing
        raise CheckpointError(f"no checkpoint in {text!r}: expected a run dir with checkpoint/ or a directory "
                              f"with {CONFIG_FILE} + {SAFETENSORS_FILE}")
    looked = f"the local path {str(path.absolute())!r} does not exist{_local_hint(path)}"
    if not _looks_like_hub_id(text):
        raise CheckpointError(f"checkpoint {text!r} not found: {looked}, and it is not a Hub id (owner/name)")
    if _in_hub_cache(text, **hub_kwargs):
        return text
    if hub_offline():
        raise CheckpointError(f"checkpoint {text!r} not found: {looked}, and the Hub repository {text!r} is not in "
                              "the local Hub cache while the Hub is offline (HF_HUB_OFFLINE)")
    if not hub_reachable():
        raise CheckpointError(f"checkpoint {text!r} not found: {looked}, and the Hub is unreachable (no network?) "
                              f"to download {text!r}")
    return text


def load_pretrained(path_or_repo_id: str | os.PathLike, map_location: str = "cpu", **hub_kwargs) -> nn.Module:
    """Load any dual_attention model saved with ``save_pretrained``, picking its class from ``config.json``.

    ``path_or_repo_id`` is a checkpoint directory, a ``dat train`` run directory or a Hub id (see
    :func:`resolve_checkpoint`); every failure is a :class:`CheckpointError` with one line.
    """
    source = resolve_checkpoint(path_or_repo_id, **hub_kwargs)
    try:
        cls = model_class_for_config(read_config(source, **hub_kwargs))
        return cls.from_pretrained(source, map_location=map_location, **hub_kwargs)
    except CheckpointError:
        raise
    except TypeError as e:  # config.json with arguments the class does not take
        raise CheckpointError(f"config.json of {path_or_repo_id} does not fit {cls.__name__}: {e}") from e
    except Exception as e:  # noqa: BLE001 - Hub errors (repository not found, HTTP errors), OS errors
        raise CheckpointError(f"cannot load {str(path_or_repo_id)!r} from the Hub or disk: "
                              f"{type(e).__name__}: {message_of(e)}") from e
