"""Mathematics problems: sequence-to-sequence DAT vs Transformer, character level, at a CPU-sized scale.

The second experiment of Altabaa & Lafferty (arXiv:2405.16727) trains encoder-decoder models on task
families of DeepMind's mathematics dataset (Saxton et al., 2019). Here the question/answer pairs come
from the local generators of :mod:`dual_attention.data.math_tasks`, and both models are small enough to
train in minutes on a CPU:

    Transformer   encoder + decoder, ``n_heads`` = 4 self-attention heads per layer (+ 4 cross-attention heads)
    DAT           encoder + decoder, 2 SA + 2 RA heads per layer (+ 4 cross-attention heads), symbolic attention

Both are trained with :func:`dual_attention.training.trainer.train` on the same pairs, with the same
optimizer, schedule, batch size and number of steps. Two accuracies are measured on held-out questions
(no test question occurs in the training pairs):

* teacher-forced per-character accuracy: the fraction of answer characters (and the end token) whose
  next-token argmax is right when the decoder reads the true answer prefix,
  ``acc = sum_i sum_t [argmax p(y_t | x_i, y_<t) = y_t] / sum_i (|y_i| + 1)``;
* greedy exact match: the fraction of questions whose greedily decoded answer (cached decoding until the
  end token) equals the true answer string.

:func:`run_math` writes ``results.json``, ``results.csv`` and ``math_accuracy.png``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dual_attention.experiments._common import check_choices, check_int_list, check_pool, mean_std, save_figure
from dual_attention.experiments._sweep import Sweep, SweepResult

__all__ = [
    "MODELS",
    "MODEL_LABELS",
    "DEFAULT_FAMILIES",
    "FOUR_FAMILIES",
    "MathSettings",
    "make_pairs",
    "train_config",
    "parameter_counts",
    "greedy_answers",
    "run_one",
    "summarize",
    "format_table",
    "plot_math",
    "MathResult",
    "run_math",
    "CSV_FIELDS",
]

#: model keys -> labels
MODEL_LABELS: dict[str, str] = {
    "transformer": "Transformer (4 SA)",
    "dat": "DAT (2 SA + 2 RA)",
}
MODELS: tuple[str, ...] = tuple(MODEL_LABELS)

DEFAULT_FAMILIES: tuple[str, ...] = ("algebra__linear_1d", "calculus__differentiate")

#: the four families of the longer run (``--families all4``)
FOUR_FAMILIES: tuple[str, ...] = (
    "algebra__linear_1d",
    "polynomials__add",
    "polynomials__expand",
    "calculus__differentiate",
)


@dataclass
class MathSettings:
    """Data sizes, architecture and training budget shared by both models.

    AdamW (betas 0.9/0.95, weight decay on matrices), linear warmup, cosine decay to ``learning_rate / 10``,
    gradient clipping at 1. The Transformer gets ``n_heads_sa + n_heads_ra`` self-attention heads.
    """

    n_train: int = 10_000
    n_test: int = 500
    difficulty: str = "easy"
    d_model: int = 64
    n_layers: int = 2
    n_heads_sa: int = 2
    n_heads_ra: int = 2
    dff: int = 256
    dropout: float = 0.0
    symbol_retrieval: str = "symbolic_attention"
    steps: int = 500
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_iters: int = 50

    def __post_init__(self) -> None:
        for name in ("n_train", "n_test", "d_model", "n_layers", "dff", "steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        from dual_attention.data.math_tasks import DIFFICULTIES

        if self.difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of: {', '.join(DIFFICULTIES)}; got {self.difficulty!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.n_heads_sa < 0 or self.n_heads_ra < 0 or self.n_heads_sa + self.n_heads_ra < 1:
            raise ValueError(
                f"n_heads_sa={self.n_heads_sa}, n_heads_ra={self.n_heads_ra}: need >= 0 each and >= 1 in total"
            )


def make_pairs(family: str, settings: MathSettings, seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(train, test)`` pairs of ``family``: test questions are unique and never occur among the training ones.

    Training pairs come from seed ``2 * seed``, test pairs from seed ``2 * seed + 1`` (drawn with a margin,
    then filtered), so the two streams are independent.
    """
    from dual_attention.data.math_tasks import generate

    train = generate(family, settings.n_train, seed=2 * seed, difficulty=settings.difficulty)
    seen = {q for q, _ in train}
    extra = max(settings.n_test // 2, 50)
    for _ in range(4):
        cand = generate(family, settings.n_test + extra, seed=2 * seed + 1, difficulty=settings.difficulty,
                        unique=True)
        test = [p for p in cand if p[0] not in seen][: settings.n_test]
        if len(test) == settings.n_test:
            return train, test
        extra *= 4
    raise ValueError(
        f"family {family!r} ({settings.difficulty}) has too few distinct questions for n_test={settings.n_test} "
        f"held-out questions beside n_train={settings.n_train}; ask for fewer"
    )


def train_config(arch: str, settings: MathSettings, seed: int, family: str = "math"):
    """The :class:`~dual_attention.training.config.Config` of one run (no run directory, no validation)."""
    from dual_attention.data.math_tasks import MAX_ANSWER_LEN, MAX_QUESTION_LEN
    from dual_attention.training.config import load_config

    n_heads = settings.n_heads_sa + settings.n_heads_ra
    model: dict[str, Any] = {
        "family": "seq2seq",
        "arch": arch,
        "d_model": settings.d_model,
        "n_layers": settings.n_layers,
        "dff": settings.dff,
        "dropout": settings.dropout,
        "n_heads_cross": n_heads,
        # fixed sizes: every generated question/answer fits (answer + <eos>, <bos> + answer)
        "in_block_size": MAX_QUESTION_LEN,
        "out_block_size": MAX_ANSWER_LEN + 1,
    }
    if arch == "dat":
        model.update(n_heads_sa=settings.n_heads_sa, n_heads_ra=settings.n_heads_ra,
                     symbol_retrieval=settings.symbol_retrieval)
    else:
        model.update(n_heads=n_heads, n_heads_sa=settings.n_heads_sa, n_heads_ra=settings.n_heads_ra)
    return load_config({
        "name": f"math-{family}-{arch}-s{seed}",
        "model": model,
        "optim": {
            "learning_rate": settings.learning_rate,
            "min_lr": settings.learning_rate / 10,
            "weight_decay": settings.weight_decay,
            "warmup_iters": min(settings.warmup_iters, settings.steps),
            "schedule": "cosine",
        },
        "train": {
            "max_iters": settings.steps,
            "batch_size": settings.batch_size,
            "eval_interval": 0,
            "eval_batch_size": 250,
            "log_interval": max(1, min(50, settings.steps)),
            "seed": seed,
            "device": "cpu",
            "progress": False,
            "checkpoint_interval": 0,
        },
    })


def parameter_counts(settings: MathSettings, vocab_size: int = 40) -> dict[str, int]:
    """Parameters of both models for a character vocabulary of ``vocab_size`` (the real one is data-dependent)."""
    from dual_attention.training.models import build_model

    out = {}
    for arch in MODELS:
        cfg = train_config(arch, settings, 0).model
        cfg.vocab_size = vocab_size
        model = build_model(cfg)
        out[arch] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return out


def greedy_answers(model, tokenizer, questions: Sequence[str], batch_size: int = 250) -> list[str]:
    """Greedy (argmax) decoding of every question with the model's cached ``generate``; the decoded strings."""
    import torch

    out: list[str] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            chunk = questions[start : start + batch_size]
            ids = [tokenizer.encode(q) for q in chunk]
            length = max(len(i) for i in ids)
            src = torch.full((len(ids), length), tokenizer.pad_token_id, dtype=torch.long)  # (B, Ls)
            mask = torch.zeros((len(ids), length), dtype=torch.bool)  # (B, Ls) True at real characters
            for row, seq in enumerate(ids):
                src[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = True
            gen = model.generate(src, max_new_tokens=model.out_block_size - 1, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, src_padding_mask=mask)  # (B, 1 + new)
            out.extend(tokenizer.decode(row[1:].tolist()) for row in gen)
    return out


def run_one(family: str, seed: int, arch: str, settings: MathSettings, n_examples: int = 5) -> dict[str, Any]:
    """Train one model on one family; its record (accuracies, parameters, time, a few example answers)."""
    from dual_attention.training.trainer import train

    t0 = time.time()
    train_pairs, test_pairs = make_pairs(family, settings, seed)
    t_data = time.time() - t0
    cfg = train_config(arch, settings, seed, family)
    res = train(cfg, train_data=train_pairs, test_data=test_pairs, verbose=False)
    if res.interrupted:
        raise KeyboardInterrupt
    preds = greedy_answers(res.model, res.tokenizer, [q for q, _ in test_pairs])
    exact = sum(p == a for p, (_, a) in zip(preds, test_pairs)) / len(test_pairs)
    n_params = sum(p.numel() for p in {id(p): p for p in res.model.parameters()}.values())
    return {
        "family": family,
        "seed": seed,
        "model": arch,
        "label": MODEL_LABELS[arch],
        "n_params": n_params,
        "steps": res.iters,
        "char_acc": float(res.metrics["test_acc"]),
        "tf_seq_acc": float(res.metrics["test_seq_acc"]),
        "exact_match": exact,
        "test_loss": float(res.metrics["test_loss"]),
        "train_loss": float(res.train_loss) if res.train_loss is not None else math.nan,
        "data_seconds": round(t_data, 2),
        "seconds": round(time.time() - t0, 2),
        "examples": [{"question": q, "answer": a, "greedy": p}
                     for (q, a), p in list(zip(test_pairs, preds))[:n_examples]],
    }


CSV_FIELDS = ("family", "seed", "model", "label", "n_params", "steps", "char_acc", "tf_seq_acc", "exact_match",
              "test_loss", "train_loss", "seconds")


def summarize(runs: Sequence[dict]) -> list[dict[str, Any]]:
    """Per (family, model): mean and sample std over seeds of the accuracies (%)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        groups.setdefault((r["family"], r["model"]), []).append(r)
    rows = []
    for (fam, model), rs in groups.items():
        row: dict[str, Any] = {"family": fam, "model": model, "label": MODEL_LABELS[model], "n_seeds": len(rs)}
        for key in ("char_acc", "exact_match", "tf_seq_acc"):
            m, s = mean_std([100.0 * r[key] for r in rs])
            row[f"{key}_mean"], row[f"{key}_std"] = round(m, 2), round(s, 2)
        rows.append(row)
    return rows


def format_table(summary: Sequence[dict], models: Sequence[str] = MODELS) -> str:
    """Per family and model: per-character accuracy and greedy exact match (%), mean ± std over seeds."""
    by = {(r["family"], r["model"]): r for r in summary}
    fams = sorted({r["family"] for r in summary})
    head = f"{'family':<25} {'model':<20} {'char acc (%)':>14} {'exact match (%)':>16} {'seeds':>6}"
    lines = [head, "-" * len(head)]

    def cell(r: dict, key: str) -> str:
        m, s = r[f"{key}_mean"], r[f"{key}_std"]
        return f"{m:.1f} ± {s:.1f}" if r["n_seeds"] > 1 else f"{m:.1f}"

    for fam in fams:
        first = True
        for m in models:
            r = by.get((fam, m))
            if r is None:
                continue
            lines.append(f"{fam if first else '':<25} {MODEL_LABELS[m]:<20} {cell(r, 'char_acc'):>14} "
                         f"{cell(r, 'exact_match'):>16} {r['n_seeds']:>6}")
            first = False
    return "\n".join(lines)


def plot_math(summary: Sequence[dict], path: str | Path, models: Sequence[str] = MODELS) -> Path:
    """Two panels (per-character accuracy, greedy exact match): bars per family and model, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = sorted({r["family"] for r in summary})
    by = {(r["family"], r["model"]): r for r in summary}
    colours = {"transformer": "tab:gray", "dat": "tab:blue"}
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.6 * len(fams) + 2), 4.0), dpi=120)
    width = 0.8 / len(models)
    for ax, key, title in zip(axes, ("char_acc", "exact_match"),
                              ("teacher-forced per-character accuracy", "greedy exact-match accuracy")):
        for k, m in enumerate(models):
            xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(fams))]
            mu = [by[(f, m)][f"{key}_mean"] if (f, m) in by else 0.0 for f in fams]
            sd = [by[(f, m)][f"{key}_std"] if (f, m) in by else 0.0 for f in fams]
            bars = ax.bar(xs, mu, width, yerr=sd, color=colours.get(m), label=MODEL_LABELS[m], capsize=3)
            ax.bar_label(bars, labels=[f"{v:.1f}" for v in mu], fontsize=7, padding=2)
        ax.set_xticks(range(len(fams)))
        ax.set_xticklabels([f.replace("__", "\n") for f in fams], fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Mathematics (local generators, held-out questions): seq2seq DAT vs Transformer", fontsize=10)
    return save_figure(fig, path)


@dataclass
class MathResult(SweepResult):
    """What :func:`run_math` returns."""

    settings: MathSettings
    elapsed_s: float
    files: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        return format_table(self.summary)


def _describe(settings: MathSettings, counts: dict[str, int], models: Sequence[str], say) -> None:
    say("parameters (character vocabulary of 40): "
        + " | ".join(f"{MODEL_LABELS[m]} {counts[m]:,}" for m in models))
    say(f"per run: {settings.n_train} training pairs ({settings.difficulty}), {settings.n_test} held-out "
        f"questions; {settings.steps} steps x batch {settings.batch_size}, AdamW lr {settings.learning_rate:g} "
        f"(warmup {settings.warmup_iters}, cosine to lr/10), weight decay {settings.weight_decay:g}")


def run_math(
    families: Sequence[str] = DEFAULT_FAMILIES,
    seeds: Sequence[int] = (0,),
    models: Sequence[str] = MODELS,
    settings: MathSettings | None = None,
    out_dir: str | Path | None = None,
    workers: int = 1,
    threads: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> MathResult:
    """Train every (family, seed, model) and measure per-character and exact-match accuracy on held-out questions.

    ``workers`` processes (spawned) train runs in parallel with ``threads`` torch threads each; with
    ``out_dir``, ``results.json``/``results.csv`` are rewritten after every run and ``math_accuracy.png``
    at the end.
    """
    from dual_attention.data.math_tasks import FAMILIES

    families = check_choices("families", families, FAMILIES)
    seeds = check_int_list("seeds", seeds, 0)
    models = check_choices("models", models, MODELS)
    settings = settings or MathSettings()
    check_pool(workers, threads)
    say = log or (lambda s: None)
    t0 = time.time()
    counts = parameter_counts(settings)
    _describe(settings, counts, models, say)
    jobs = [(f, s, m, settings) for f in families for s in seeds for m in models]
    meta = {"experiment": "math", "families": families, "seeds": seeds, "models": models,
            "settings": dataclasses.asdict(settings), "param_counts_vocab40": counts}
    sweep = Sweep(out_dir, meta, len(jobs), summarize=summarize, csv_fields=CSV_FIELDS, workers=workers,
                  threads=threads, say=say, t0=t0,
                  order=lambda r: (families.index(r["family"]), r["seed"], models.index(r["model"])))
    runs = sweep.run(run_one, jobs, progress=progress, desc="math",
                     postfix=lambda r: f"{r['family']} {r['model']}: exact {100 * r['exact_match']:.1f}%")
    summary = summarize(runs)
    sweep.finish("math_accuracy.png", lambda path: plot_math(summary, path, models))
    return MathResult(runs=runs, summary=summary, param_counts=counts, settings=settings, elapsed_s=sweep.elapsed_s,
                      files=sweep.files)
