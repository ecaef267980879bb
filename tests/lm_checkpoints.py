"""Tiny language-model checkpoints for the integration tests (trained or built here, offline), and the
multiple-choice / text files they are scored on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

# the integration tests never touch the network
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SENTENCES = ["the cat sat on the mat.", "a dog ran in the park.", "the sun is hot.", "my cat likes fish."]
TEXT = " ".join(SENTENCES * 60)

TINY_LM = ["model.d_model=32", "model.n_layers=2", "model.dff=64", "model.max_block_size=48", "model.n_symbols=8",
           "model.n_heads_sa=2", "model.n_heads_ra=2", "train.batch_size=16", "train.eval_iters=2",
           "train.progress=false", "optim.warmup_iters=5", "train.log_interval=5", "optim.learning_rate=0.01"]

MC_EXAMPLES = [
    {"ctx": "the cat sat on the", "endings": ["mat.", "sun.", "dog.", "park."], "label": 0},
    {"ctx": "a dog ran in the", "endings": ["fish.", "park.", "mat.", "cat."], "label": 1},
    {"ctx": "the sun is", "endings": ["fish.", "park.", "hot.", "sat."], "label": 2},
    {"ctx": "my cat likes", "endings": ["hot.", "the mat.", "in the park.", "fish."], "label": 3},
    {"ctx": "the cat", "endings": ["sat on the mat.", "is hot.", "likes dogs.", "ran."], "label": 0},
    {"ctx": "a dog", "endings": ["sat.", "ran in the park.", "is fish.", "hot."], "label": 1},
]


def train_lm(root: Path, arch: str = "dat", iters: int = 40, extra: list[str] | None = None) -> Path:
    """A run dir of a tiny byte-level LM trained on :data:`TEXT`."""
    from dual_attention.training.config import load_config
    from dual_attention.training.trainer import train

    root.mkdir(parents=True, exist_ok=True)
    (root / "text.txt").write_text(TEXT)
    run = root / f"run-{arch}"
    cfg = load_config("lm-tiny-dat", [*TINY_LM, f"model.arch={arch}", f"data.train={root / 'text.txt'}",
                                      f"train.max_iters={iters}", f"train.eval_interval={iters}",
                                      f"train.out_dir={run}", *(extra or [])])
    train(cfg, verbose=False)
    return run


def save_mixin(directory: Path, cls_name: str, **kwargs) -> Path:
    """``save_pretrained`` of a freshly built ``*_HFHub`` model (a local copy of a published-style checkpoint)."""
    import dual_attention.hf as hf

    torch.manual_seed(0)
    getattr(hf, cls_name)(**kwargs).save_pretrained(str(directory))
    return directory


def rope_dat_kwargs(**over) -> dict:
    kw = dict(vocab_size=256, d_model=32, n_layers=2, n_heads_sa=2, n_heads_ra=2, dff=64, dropout_rate=0.0,
              activation="gelu", norm_first=True, max_block_size=32, pos_enc_type="RoPE", bias=False,
              symbol_retrieval="symbolic_attention", symbol_retrieval_kwargs=dict(d_model=32, n_symbols=8, n_heads=2),
              symbol_retriever_config=dict(shared_symbol_retriever=False, weight_tie_symbol_library=True),
              sa_kwargs=dict(n_kv_heads=1))
    kw.update(over)
    return kw


def write_mc_jsonl(path: Path, examples: list[dict] = MC_EXAMPLES) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path
