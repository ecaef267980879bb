"""Training library behind ``dat train``: configs, presets, data, the trainer, checkpoints (see docs/training.md).

The main names are importable from here; they load lazily so that ``dat --help`` stays fast::

    from dual_attention.training import load_config, train
    result = train(load_config("lm-tiny-dat", ["train.max_iters=100"]))
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Config": "config",
    "ModelConfig": "config",
    "DataConfig": "config",
    "OptimConfig": "config",
    "TrainConfig": "config",
    "ConfigError": "config",
    "load_config": "config",
    "apply_overrides": "config",
    "save_config": "config",
    "PRESETS": "presets",
    "get_preset": "presets",
    "list_presets": "presets",
    "DataError": "tokenizers",
    "CheckpointError": "checkpoint",
    "train": "trainer",
    "TrainResult": "trainer",
    "RunDirError": "trainer",
    "lr_at": "trainer",
    "build_model": "models",
    "model_kwargs": "models",
    "load_trained": "inference",
    "evaluate_checkpoint": "inference",
    "model_summary": "summary",
    "plot_run": "plot",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"dual_attention.training.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dual_attention.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
