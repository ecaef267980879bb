"""Relational Games as the paper ran them: sample efficiency in distribution, generalisation out of distribution.

The first experiment of Altabaa & Lafferty (arXiv:2405.16727), with the authors' protocol: every model is trained
on ``n`` pentomino images of one task and scored, as a final model, on held-out pentomino images
(``in_distribution``) and on images of two object sets never seen in training (``hexominoes``, ``stripes``).

Models (:data:`VARIANTS`), all on the same 12 x 12 patch embedding (one patch per object cell), mean pooling:

    vit            Transformer, 2 layers x 2 SA heads, d_model 144, dff 288 (parameter-matched, as in the paper)
    dat-sa1-ra1    DAT, 2 layers x (1 SA + 1 RA) heads, d_model 128, dff 256, positional symbols, symmetric rels
    dat-sa0-ra2    DAT, 2 layers x (0 SA + 2 RA) heads, otherwise as above
    predinet, corelnet, abstractor     the paper's relational baselines (:mod:`dual_attention.relational_baselines`)

Protocol (:class:`DemoSettings`, the authors'): SwiGLU, dropout 0.1, pre-norm; Adam, lr 1e-3 constant, betas
(0.9, 0.99), no weight decay, no gradient clipping; batch 512, 50 epochs, no early stopping; the final model is
tested. A seed fixes the training images, the shuffling and the initial weights; the test images depend on the
task only (the same for every seed, size and model).

Example::

    from dual_attention.experiments.relational_games import run_grid

    res = run_grid(["same"], sizes=[250, 2500], seeds=[0, 1], variants=["vit", "dat-sa0-ra2"], out_dir="results/rg")
    print(res.table())
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from dual_attention.experiments._common import (
    check_choices,
    check_int_list,
    check_pool,
    mean_std,
    save_figure,
    welch_t_test,
)
from dual_attention.experiments._sweep import Sweep, SweepResult

__all__ = [
    "Variant",
    "VARIANTS",
    "SPLITS",
    "PAPER_RESULTS",
    "DemoSettings",
    "DEFAULT_TASKS",
    "DEFAULT_SIZES",
    "DEFAULT_SEEDS",
    "DEFAULT_VARIANTS",
    "PAPER_TASKS",
    "PAPER_SIZES",
    "PAPER_SEEDS",
    "build_model",
    "parameter_counts",
    "train_model",
    "evaluate",
    "run_one",
    "summarize",
    "format_table",
    "plot_learning_curves",
    "GridResult",
    "run_grid",
    "CSV_FIELDS",
]

IMAGE_SHAPE = (3, 36, 36)
PATCH_SIZE = (12, 12)
N_CLASSES = 2
SPLITS: tuple[str, ...] = ("in_distribution", "hexominoes", "stripes")


@dataclass(frozen=True)
class Variant:
    """One compared model: its key, its label in tables and plots, and its kind."""

    key: str
    label: str
    kind: str  # 'transformer', 'dat' or a baseline name
    n_heads_sa: int = 0
    n_heads_ra: int = 0


VARIANTS: dict[str, Variant] = {
    "vit": Variant("vit", "Transformer", "transformer", 2, 0),
    "dat-sa1-ra1": Variant("dat-sa1-ra1", "DAT (1 SA + 1 RA)", "dat", 1, 1),
    "dat-sa0-ra2": Variant("dat-sa0-ra2", "DAT (0 SA + 2 RA)", "dat", 0, 2),
    "predinet": Variant("predinet", "PrediNet", "predinet"),
    "corelnet": Variant("corelnet", "CoRelNet", "corelnet"),
    "abstractor": Variant("abstractor", "Abstractor", "abstractor"),
}

#: in-distribution test accuracy in the paper (Altabaa & Lafferty 2024, mean of 5 trials, the authors' protocol),
#: ``(task, n_train) -> model key -> accuracy in [0, 1]``
PAPER_RESULTS: dict[tuple[str, int], dict[str, float]] = {
    ("same", 250): {"vit": .661, "dat-sa1-ra1": .639, "dat-sa0-ra2": .652},
    ("same", 2500): {"vit": .948, "dat-sa1-ra1": .940, "dat-sa0-ra2": .926},
    ("occurs", 250): {"vit": .535, "dat-sa1-ra1": .619, "dat-sa0-ra2": .632},
    ("occurs", 2500): {"vit": .924, "dat-sa1-ra1": .929, "dat-sa0-ra2": .931},
    ("xoccurs", 250): {"vit": .510, "dat-sa1-ra1": .522, "dat-sa0-ra2": .520},
    ("xoccurs", 2500): {"vit": .670, "dat-sa1-ra1": .873, "dat-sa0-ra2": .886},
    ("between", 250): {"vit": .588, "dat-sa1-ra1": .640, "dat-sa0-ra2": .614},
    ("between", 2500): {"vit": .921, "dat-sa1-ra1": .938, "dat-sa0-ra2": .931},
    ("match_pattern", 5000): {"vit": .515, "dat-sa1-ra1": .546, "dat-sa0-ra2": .528},
    ("match_pattern", 15000): {"vit": .537, "dat-sa1-ra1": .740, "dat-sa0-ra2": .888},
    ("match_pattern", 25000): {"vit": .618, "dat-sa1-ra1": .855, "dat-sa0-ra2": .928},
}
PAPER_SOURCE = "Altabaa & Lafferty, arXiv:2405.16727: in-distribution test accuracy, mean of 5 trials"

DEFAULT_TASKS: tuple[str, ...] = ("xoccurs",)
DEFAULT_SIZES: tuple[int, ...] = (250, 2500)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)
DEFAULT_VARIANTS: tuple[str, ...] = ("vit", "dat-sa1-ra1", "dat-sa0-ra2")

#: ``--paper``: the paper's grid (match_pattern on its own sizes)
PAPER_TASKS: tuple[str, ...] = ("same", "occurs", "xoccurs", "between", "match_pattern")
PAPER_SIZES: tuple[int, ...] = tuple(range(250, 2501, 250))
PAPER_MATCH_PATTERN_SIZES: tuple[int, ...] = tuple(range(5000, 25001, 2500))
PAPER_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


@dataclass
class DemoSettings:
    """Architecture and training protocol shared by every run (defaults: the authors' protocol)."""

    epochs: int = 50
    batch_size: int = 512
    learning_rate: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    dropout: float = 0.1
    n_test: int = 5000
    test_seed: int = 0
    xoccurs_multi: float = 0.5

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "n_test"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def steps_for(self, n_train: int) -> int:
        """Optimizer steps of a run: ``epochs * ceil(n_train / batch_size)`` (the last batch of an epoch is short)."""
        return self.epochs * math.ceil(n_train / self.batch_size)


def build_model(key: str, settings: DemoSettings):
    """The model ``key`` of :data:`VARIANTS`, freshly initialised from torch's global RNG."""
    from dual_attention.relational_baselines import CoRelNet, PrediNet, VisionAbstractor
    from dual_attention.vision_models import VisionDualAttnTransformer, VisionTransformer

    v = VARIANTS[key]
    common = dict(image_shape=IMAGE_SHAPE, patch_size=PATCH_SIZE, num_classes=N_CLASSES)
    if v.kind == "transformer":
        return VisionTransformer(**common, d_model=144, n_layers=2, n_heads=2, dff=288, dropout_rate=settings.dropout,
                                 activation="swiglu", norm_first=True, pool="mean")
    if v.kind == "dat":
        return VisionDualAttnTransformer(
            **common, d_model=128, n_layers=2, n_heads_sa=v.n_heads_sa, n_heads_ra=v.n_heads_ra, dff=256,
            dropout_rate=settings.dropout, activation="swiglu", norm_first=True,
            symbol_retrieval="positional_symbols", symbol_retrieval_kwargs=dict(symbol_dim=128, max_length=10),
            ra_kwargs=dict(symmetric_rels=True), pool="mean")
    if v.kind == "predinet":
        return PrediNet(**common, d_model=128)
    if v.kind == "corelnet":
        return CoRelNet(**common, d_model=128)
    return VisionAbstractor(**common, d_model=128, n_layers=2, n_heads=2, dff=256, dropout_rate=settings.dropout)


def parameter_counts(variants: Sequence[str], settings: DemoSettings) -> dict[str, int]:
    """Trainable parameters of each model."""
    return {k: sum(p.numel() for p in build_model(k, settings).parameters() if p.requires_grad) for k in variants}


@lru_cache(maxsize=4)
def _data(task: str, n_train: int, seed: int, n_test: int, test_seed: int, xoccurs_multi: float):
    from dual_attention.data.relational_games import make_splits

    return make_splits(task, n_train, n_test, seed=seed, test_seed=test_seed, xoccurs_multi=xoccurs_multi)


def train_model(model, x, y, settings: DemoSettings, seed: int) -> float:
    """Train ``model`` on ``(x, y)`` with the protocol of ``settings``; returns the mean loss of the last epoch.

    Adam (betas ``settings.betas``, constant lr, no weight decay, no clipping), ``settings.epochs`` epochs of
    ``batch_size`` images, reshuffled every epoch by ``torch.Generator().manual_seed(seed)``. The loss stays on
    the device: the only host sync is the final ``.item()``.
    """
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, betas=settings.betas)
    gen = torch.Generator().manual_seed(seed)
    n, bs = len(y), settings.batch_size
    model.train()
    last = torch.zeros(())
    for _ in range(settings.epochs):
        perm = torch.randperm(n, generator=gen)
        last = torch.zeros(())
        for start in range(0, n, bs):
            idx = perm[start : start + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = last + loss.detach() * len(idx)
    return float(last) / n


def evaluate(model, x, y, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` (eval mode, no grad) on ``(x, y)``."""
    import torch

    model.eval()
    correct = torch.zeros((), dtype=torch.long)
    with torch.no_grad():
        for start in range(0, len(y), batch_size):
            correct += (model(x[start : start + batch_size]).argmax(-1) == y[start : start + batch_size]).sum()
    return int(correct) / len(y)


def run_one(task: str, n_train: int, seed: int, key: str, settings: DemoSettings) -> dict[str, Any]:
    """Train model ``key`` on ``n_train`` images of ``task`` (seed ``seed``), test it on the three splits.

    The record: ``task, n_train, seed, model, steps, train_loss, seconds`` and one accuracy per split.
    """
    import torch

    t0 = time.perf_counter()
    data = _data(task, n_train, seed, settings.n_test, settings.test_seed, settings.xoccurs_multi)
    torch.manual_seed(seed)
    model = build_model(key, settings)
    train_loss = train_model(model, *data["train"], settings, seed)
    rec: dict[str, Any] = {"task": task, "n_train": n_train, "seed": seed, "model": key,
                           "steps": settings.steps_for(n_train), "train_loss": round(train_loss, 5)}
    rec.update({split: evaluate(model, *data[split]) for split in SPLITS})
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


CSV_FIELDS = ("task", "n_train", "seed", "model", "split", "accuracy")


def csv_rows(runs: Sequence[dict]) -> list[dict[str, Any]]:
    """One row per (task, n_train, seed, model, split): the long format of ``results.csv``."""
    return [{"task": r["task"], "n_train": r["n_train"], "seed": r["seed"], "model": r["model"], "split": s,
             "accuracy": r[s]} for r in runs for s in SPLITS]


def summarize(runs: Sequence[dict], reference: str = "vit") -> list[dict[str, Any]]:
    """Per (task, n_train, model, split): accuracies of the seeds, mean, sample std, and Welch's t-test against
    ``reference`` on the same cell (``t``, two-sided ``p``; None with fewer than 2 seeds on either side)."""
    groups: dict[tuple[str, int, str, str], list[float]] = {}
    for r in runs:
        for s in SPLITS:
            groups.setdefault((r["task"], r["n_train"], r["model"], s), []).append(r[s])
    rows = []
    for (task, n, model, split), accs in groups.items():
        m, sd = mean_std(accs)
        ref = groups.get((task, n, reference, split))
        t = p = None
        if model != reference and ref is not None and len(ref) >= 2 and len(accs) >= 2:
            t, p = welch_t_test(accs, ref)
        rows.append({"task": task, "n_train": n, "model": model, "split": split, "n_seeds": len(accs),
                     "accs": accs, "mean": m, "std": sd, "t_vs_ref": t, "p_vs_ref": p,
                     "paper": PAPER_RESULTS.get((task, n), {}).get(model) if split == "in_distribution" else None})
    return rows


def _cell(row: dict | None) -> str:
    if row is None:
        return "-"
    text = f"{100 * row['mean']:5.1f} ± {100 * row['std']:4.1f}"
    p = row["p_vs_ref"]
    if p is not None:
        mark = ("+" if row["t_vs_ref"] > 0 else "-") if p < 0.05 else " "
        text += f" {mark}p={p:.2f}" if p >= 0.01 else f" {mark}p<.01"
    return text


def format_table(summary: Sequence[dict], variants: Sequence[str]) -> str:
    """Accuracy (%) mean ± std over seeds per (task, n_train, split), one column per model.

    After a non-Transformer cell: Welch's two-sided p against the Transformer on the same cell, with ``+``/``-``
    when p < 0.05 (significantly higher / lower). Paper rows give the paper's in-distribution means.
    """
    by = {(r["task"], r["n_train"], r["model"], r["split"]): r for r in summary}
    keys = sorted({(r["task"], r["n_train"]) for r in summary})
    width = max(24, *(len(VARIANTS[v].label) for v in variants))
    head = f"{'task':<13} {'n_train':>7} {'split':<15} " + " ".join(f"{VARIANTS[v].label:>{width}}" for v in variants)
    lines = [head, "-" * len(head)]
    for task, n in keys:
        for split in SPLITS:
            cells = [_cell(by.get((task, n, v, split))) for v in variants]
            n_seeds = max((by[(task, n, v, split)]["n_seeds"] for v in variants if (task, n, v, split) in by),
                          default=0)
            lines.append(f"{task:<13} {n:>7} {split:<15} " + " ".join(f"{c:>{width}}" for c in cells)
                         + f"  ({n_seeds} seeds)")
        paper = PAPER_RESULTS.get((task, n))
        if paper and any(v in paper for v in variants):
            pc = [f"{100 * paper[v]:5.1f}" if v in paper else "-" for v in variants]
            lines.append(f"{'':<13} {'':>7} {'paper (in-d.)':<15} " + " ".join(f"{c:>{width}}" for c in pc)
                         + "  (5 seeds)")
    return "\n".join(lines)


_COLOURS = {"vit": "tab:gray", "dat-sa1-ra1": "tab:blue", "dat-sa0-ra2": "tab:orange", "predinet": "tab:green",
            "corelnet": "tab:purple", "abstractor": "tab:brown"}


def plot_learning_curves(summary: Sequence[dict], path: str | Path, title: str | None = None) -> Path:
    """Accuracy vs training-set size, one column per task and one row per split (in distribution, hexominoes,
    stripes); mean ± std band over seeds per model; the paper's in-distribution means as hollow stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in summary}, key=lambda t: PAPER_TASKS.index(t) if t in PAPER_TASKS else 99)
    models = [k for k in VARIANTS if any(r["model"] == k for r in summary)]
    fig, axes = plt.subplots(len(SPLITS), len(tasks), figsize=(max(7.5, 1.5 + 3.6 * len(tasks)), 8.8), dpi=110,
                             squeeze=False, sharey=True)
    for j, task in enumerate(tasks):
        sizes = sorted({r["n_train"] for r in summary if r["task"] == task})
        for i, split in enumerate(SPLITS):
            ax = axes[i, j]
            for m in models:
                rows = sorted((r for r in summary if r["task"] == task and r["model"] == m and r["split"] == split),
                              key=lambda r: r["n_train"])
                if not rows:
                    continue
                xs = [r["n_train"] for r in rows]
                mu = [r["mean"] for r in rows]
                sd = [r["std"] for r in rows]
                c = _COLOURS.get(m)
                ax.plot(xs, mu, "o-", color=c, lw=1.6, ms=3.5, label=VARIANTS[m].label)
                ax.fill_between(xs, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)], color=c,
                                alpha=0.15)
                shift = 1.0 + 0.03 * (models.index(m) - (len(models) - 1) / 2)  # seeds side by side per model
                ax.plot([r["n_train"] * shift for r in rows for _ in r["accs"]], [a for r in rows for a in r["accs"]],
                        ".", color=c, ms=4, alpha=0.7, ls="none")
                if split == "in_distribution":
                    pts = [(n, PAPER_RESULTS[(task, n)][m]) for n in sizes if m in PAPER_RESULTS.get((task, n), {})]
                    if pts:
                        ax.plot(*zip(*pts), "*", ms=11, mfc="none", mec=c, mew=1.3, ls="none")
            ax.set_xscale("log")
            ax.set_xticks(sizes)
            ax.set_xticklabels([f"{n:,}" for n in sizes], fontsize=7)
            ax.minorticks_off()
            ax.axhline(0.5, color="k", lw=0.6, ls=":")
            ax.set_ylim(0.4, 1.02)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(task)
            if i == len(SPLITS) - 1:
                ax.set_xlabel("training images (pentominoes)")
            if j == 0:
                ax.set_ylabel(f"accuracy: {split.replace('_', ' ')}")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    from matplotlib.lines import Line2D

    handles += [Line2D([], [], marker=".", ms=6, color="k", alpha=0.7, ls="none"),
                Line2D([], [], marker="*", ms=11, mfc="none", mec="k", ls="none")]
    labels += ["one seed", "paper (in distribution, 5 trials)"]
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    fig.suptitle(title or "Relational games: accuracy vs training-set size (mean ± std over seeds)", fontsize=10)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    return save_figure(fig, path)


@dataclass
class GridResult(SweepResult):
    """What :func:`run_grid` returns: every run's record, the summary rows and where the files went."""

    settings: DemoSettings
    variants: list[str]
    elapsed_s: float
    complete: bool = True
    files: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        return format_table(self.summary, self.variants)


def grid_jobs(tasks: Sequence[str], sizes: Sequence[int], seeds: Sequence[int],
              variants: Sequence[str]) -> list[tuple[str, int, int, str]]:
    """The runs of a grid, seed-major (an interrupted grid has whole seeds), larger sizes first (parallel workers
    then finish together). ``match_pattern`` runs at the sizes >= 5000 and the other tasks at the sizes < 5000,
    when the grid has both kinds (as ``--paper`` does); otherwise every task runs at every size."""
    big = [n for n in sizes if n >= 5000]
    small = [n for n in sizes if n < 5000]

    def task_sizes(t: str) -> list[int]:
        if t == "match_pattern":
            return big or small
        return small or big

    return [(t, n, s, v) for s in seeds for t in tasks for n in sorted(task_sizes(t), reverse=True) for v in variants]


def _curves_title(settings: DemoSettings, n_seeds: int) -> str:
    return (f"Relational games: accuracy vs training images (mean ± std over {n_seeds} "
            f"seed{'s' if n_seeds > 1 else ''})\nauthors' protocol: {settings.epochs} epochs, batch "
            f"{settings.batch_size}, Adam {settings.learning_rate:g}; trained on pentominoes")


def run_grid(
    tasks: Sequence[str] = DEFAULT_TASKS,
    sizes: Sequence[int] = DEFAULT_SIZES,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    settings: DemoSettings | None = None,
    out_dir: str | Path | None = None,
    workers: int = 1,
    threads: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> GridResult:
    """Train and test every (task, size, seed, model) of the grid (see :func:`grid_jobs`).

    ``workers`` processes (spawned; 1 = this process) with ``threads`` torch threads each run the jobs; a tqdm
    bar counts finished runs. ``results.json`` (settings, every run, summary, paper numbers) and ``results.csv``
    (one row per run and split) are rewritten after every run, so an interrupted grid keeps its finished runs;
    ``learning_curves.png`` is drawn at the end.
    """
    from dual_attention.data.relational_games import TASKS

    tasks = check_choices("tasks", tasks, TASKS)
    sizes = sorted(check_int_list("sizes", sizes, 2))
    seeds = check_int_list("seeds", seeds, 0)
    variants = check_choices("variants", variants, tuple(VARIANTS))
    settings = settings or DemoSettings()
    check_pool(workers, threads)
    say = log or (lambda s: None)
    t0 = time.time()
    counts = parameter_counts(variants, settings)
    say("parameters: " + " | ".join(f"{VARIANTS[k].label} {n:,}" for k, n in counts.items()))
    say(f"protocol: Adam lr {settings.learning_rate:g} constant, betas {settings.betas}, batch {settings.batch_size}, "
        f"{settings.epochs} epochs, dropout {settings.dropout:g}; {settings.n_test} test images per split")
    jobs = grid_jobs(tasks, sizes, seeds, variants)
    meta = {"experiment": "relational_games", "tasks": tasks, "sizes": sizes, "seeds": seeds, "variants": variants,
            "settings": dataclasses.asdict(settings), "param_counts": counts, "splits": list(SPLITS),
            "paper": [{"task": t, "n_train": n, **a} for (t, n), a in PAPER_RESULTS.items()],
            "paper_source": PAPER_SOURCE}
    order = {job: i for i, job in enumerate(jobs)}
    sweep = Sweep(out_dir, meta, len(jobs), summarize=summarize, csv_fields=CSV_FIELDS, csv_rows=csv_rows,
                  workers=workers, threads=threads, say=say, t0=t0,
                  order=lambda r: order[(r["task"], r["n_train"], r["seed"], r["model"])])
    runs = sweep.run(run_one, [(*job, settings) for job in jobs], progress=progress, desc="relational games",
                     postfix=lambda r: f"{r['task']} n={r['n_train']} seed {r['seed']} {r['model']}: "
                                       f"{100 * r['in_distribution']:.1f}%")
    summary = summarize(runs)
    sweep.finish("learning_curves.png", lambda path: plot_learning_curves(
        summary, path, title=_curves_title(settings, len(seeds))))
    return GridResult(runs=runs, summary=summary, param_counts=counts, settings=settings, variants=variants,
                      elapsed_s=sweep.elapsed_s, files=sweep.files)
