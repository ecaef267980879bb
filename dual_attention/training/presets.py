"""Named training presets: the paper's language-model sizes and tiny CPU configurations.

Each preset is a nested dict of overrides on the :class:`~dual_attention.training.config.Config`
defaults, and this module is their only definition. A preset as a file to edit is one command away:
``dat train <name> --print-config > my.yaml`` writes the full resolved config, and a YAML file with
``base: <name>`` and only the keys to change starts from the preset.

The paper's language models (Altabaa & Lafferty, arXiv:2405.16727, FineWeb-Edu, GPT-2 tokenizer, context
1024) come in three widths of 24 layers each. DAT splits the heads evenly between self-attention and
relational attention and uses grouped-query attention; the Transformer baselines use plain multi-head
attention. The head/symbol/relation counts follow the names of the published checkpoints
(``DAT-sa8-ra8-ns1024-sh8-nkvh4-343M``, ``DAT-sa16-ra16-nr128-ns2048-sh16-nkvh8-1.27B``, ``T-sa24-757M``).
The 734M DAT values (sa12, ra12, nr64, ns1536, sh12, nkvh6) and the optimisation settings (GPT-3-style
lr 6e-4/3e-4/2e-4, 0.5M-token batches, 10B tokens) are our assumption where no name states them.
"""

from __future__ import annotations

import copy

from dual_attention.training.config import Config, ConfigError, config_from_dict

__all__ = ["PRESETS", "get_preset", "list_presets"]

_PAPER_DATA = {"train": "hf", "format": "hf", "tokenizer": "gpt2"}


def _paper_lm(arch: str, d_model: int, heads: int, lr: float, **model: object) -> dict:
    """A paper-scale LM preset: 24 layers, SwiGLU, RoPE, context 1024, GPT-2 vocabulary (padded to 50304).

    ``heads`` is the total head count; DAT splits it evenly into self- and relational-attention heads.
    """
    m: dict = {
        "family": "lm",
        "arch": arch,
        "d_model": d_model,
        "n_layers": 24,
        "activation": "swiglu",
        "norm_first": True,
        "norm_type": "layernorm",
        "pos_enc_type": "RoPE",
        "bias": False,
        "dropout": 0.0,
        "vocab_size": 50304,
        "max_block_size": 1024,
    }
    if arch == "dat":
        m.update(n_heads_sa=heads // 2, n_heads_ra=heads // 2)
    else:
        m.update(n_heads=heads, n_heads_sa=heads // 2, n_heads_ra=heads // 2)
    m.update(model)
    return {
        "model": m,
        "data": dict(_PAPER_DATA),
        "optim": {
            "learning_rate": lr,
            "min_lr": round(lr / 10, 10),
            "weight_decay": 0.1,
            "beta1": 0.9,
            "beta2": 0.95,
            "grad_clip": 1.0,
            "warmup_iters": 715,
        },
        "train": {
            "max_iters": 19073,  # 10B tokens at 524,288 tokens per step
            "batch_size": 512,
            "grad_accum_steps": 16,
            "eval_interval": 250,
            "eval_iters": 20,
            "log_interval": 10,
        },
    }


def _tiny(family: str, arch: str) -> dict:
    """A tiny CPU preset on the family's synthetic task (trains in seconds to minutes on 2 cores).

    ``arch='hadamard'`` is DAT with Hadamard dual attention (``ra_type='hadamard'``), QK-norm and no symbols,
    otherwise the same sizes as the DAT and Transformer presets of the family, for a comparison on the same data.
    """
    model: dict = {"family": family, "arch": "dat" if arch == "hadamard" else arch, "d_model": 64, "n_layers": 2,
                   "dff": 128}
    if arch == "hadamard":
        model.update(n_heads_sa=2, n_heads_ra=2, ra_type="hadamard", qk_norm=True, symbol_retrieval="none")
    elif arch == "dat":
        model.update(n_heads_sa=2, n_heads_ra=2, n_symbols=32, symbol_heads=2)
    else:
        model.update(n_heads=4)
    train = {"batch_size": 32, "eval_interval": 50, "eval_iters": 10, "log_interval": 10}
    optim = {"learning_rate": 3e-3, "warmup_iters": 20, "weight_decay": 0.01}
    if family == "lm":
        model.update(max_block_size=64, pos_enc_type="RoPE")
        train.update(max_iters=300)
    elif family == "seq2seq":
        train.update(max_iters=300)
    else:
        model.update(patch_size=[4, 4], pool="mean")
        train.update(max_iters=200)
    return {
        "model": model,
        "data": {"train": "synthetic"},
        "optim": optim,
        "train": train,
    }


#: preset name -> nested dict of overrides on the Config defaults
PRESETS: dict[str, dict] = {
    "lm-tiny-dat": _tiny("lm", "dat"),
    "lm-tiny-transformer": _tiny("lm", "transformer"),
    "lm-tiny-hadamard": _tiny("lm", "hadamard"),
    "seq2seq-tiny-dat": _tiny("seq2seq", "dat"),
    "seq2seq-tiny-transformer": _tiny("seq2seq", "transformer"),
    "seq2seq-tiny-hadamard": _tiny("seq2seq", "hadamard"),
    "vision-tiny-dat": _tiny("vision", "dat"),
    "vision-tiny-transformer": _tiny("vision", "transformer"),
    "vision-tiny-hadamard": _tiny("vision", "hadamard"),
    "lm-dat-343m": _paper_lm("dat", 1024, 16, 6e-4, n_kv_heads=4, n_symbols=1024, symbol_heads=8),
    "lm-dat-734m": _paper_lm(
        "dat", 1536, 24, 3e-4, n_kv_heads=6, n_relations=64, n_symbols=1536, symbol_heads=12
    ),
    "lm-dat-1.27b": _paper_lm(
        "dat", 2048, 32, 2e-4, n_kv_heads=8, n_relations=128, n_symbols=2048, symbol_heads=16
    ),
    "lm-transformer-353m": _paper_lm("transformer", 1024, 16, 6e-4),
    "lm-transformer-757m": _paper_lm("transformer", 1536, 24, 3e-4),
    "lm-transformer-1.3b": _paper_lm("transformer", 2048, 32, 2e-4),
}


def list_presets() -> list[str]:
    """The preset names, in registry order."""
    return list(PRESETS)


def get_preset(name: str) -> Config:
    """The Config of preset ``name``; ConfigError listing the presets if unknown."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    data = copy.deepcopy(PRESETS[name])
    data["name"] = name
    return config_from_dict(data, source=f"preset {name!r}")
