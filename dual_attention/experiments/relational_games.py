"""Relational Games: sample efficiency of the Vision Transformer vs the Vision Dual Attention Transformer.

The first experiment of Altabaa & Lafferty (arXiv:2405.16727): on relational image tasks, a ViT with two
self-attention (SA) heads per layer is compared with ViDAT models whose heads are split between
self-attention and relational attention (RA), trained on a growing number of images. Every model has
2 layers, ``d_model = 128``, 12 x 12 patches on 36 x 36 images (9 patches, one per object cell, plus the
class token), and the DAT variants use positional symbols and symmetric relations:

    ViT             2 SA heads per layer                    (``arch='transformer'``)
    DAT (1+1)       1 SA + 1 RA head per layer              (``arch='dat'``)
    DAT (0+2)       0 SA + 2 RA heads per layer             (``arch='dat'``)

RA head h of a layer computes, for token i, ``sum_j softmax_j(<W_q^a x_i, W_k^a x_j>/sqrt(d)) (r(x_i, x_j) W_r + s_j)
W_o`` with relations ``r_l(x_i, x_j) = <W_q^l x_i, W_k^l x_j>`` (``W_q^l = W_k^l`` with symmetric relations)
and symbols ``s_j`` = a learned vector per position (positional symbols).

Every run of the grid ``task x training-set size x seed x model`` is trained with
:func:`dual_attention.training.trainer.train` on in-memory data from
:func:`dual_attention.data.relational_games.make_dataset`, with the *same* optimizer, schedule, batch size
and number of steps for every model, and evaluated once, at the end, on a held-out test set of the same
seed (the test images of a seed are the same for every size and model). :func:`run_grid` returns a
:class:`GridResult` and writes ``results.json``, ``results.csv`` and ``learning_curves.png``.

Example::

    from dual_attention.experiments.relational_games import DemoSettings, run_grid

    res = run_grid(["xoccurs"], sizes=[250, 1000], seeds=[0, 1], settings=DemoSettings(steps=300),
                   out_dir="results/demo")
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
    elapsed_str,
    environment,
    mean_std,
    run_jobs,
    save_figure,
    write_csv,
    write_json,
)

__all__ = [
    "Variant",
    "VARIANTS",
    "PAPER_RESULTS",
    "DemoSettings",
    "DEFAULT_TASKS",
    "DEFAULT_SIZES",
    "DEFAULT_SEEDS",
    "PAPER_TASKS",
    "PAPER_SIZES",
    "PAPER_SEEDS",
    "paper_settings",
    "train_config",
    "parameter_counts",
    "run_one",
    "summarize",
    "format_table",
    "format_param_counts",
    "plot_learning_curves",
    "GridResult",
    "run_grid",
    "CSV_FIELDS",
]

IMAGE_SHAPE = (3, 36, 36)
PATCH_SIZE = (12, 12)
N_CLASSES = 2


@dataclass(frozen=True)
class Variant:
    """One compared model: the architecture and its heads per layer."""

    key: str
    label: str
    arch: str
    n_heads_sa: int
    n_heads_ra: int


#: the paper's three models, by key
VARIANTS: dict[str, Variant] = {
    "vit": Variant("vit", "ViT (2 SA)", "transformer", 2, 0),
    "dat-sa1-ra1": Variant("dat-sa1-ra1", "DAT (1 SA + 1 RA)", "dat", 1, 1),
    "dat-sa0-ra2": Variant("dat-sa0-ra2", "DAT (0 SA + 2 RA)", "dat", 0, 2),
}

#: test accuracy (%) reported in the paper (Altabaa & Lafferty, arXiv:2405.16727; mean over 5 seeds, their
#: training budget), keyed by (task, number of training images) -> model key -> accuracy
PAPER_RESULTS: dict[tuple[str, int], dict[str, float]] = {
    ("match_pattern", 25_000): {"vit": 56.5, "dat-sa1-ra1": 85.5, "dat-sa0-ra2": 92.8},
    ("xoccurs", 2_500): {"vit": 65.3, "dat-sa1-ra1": 87.3, "dat-sa0-ra2": 88.6},
}

DEFAULT_TASKS: tuple[str, ...] = ("xoccurs",)
DEFAULT_SIZES: tuple[int, ...] = (1000, 2500, 5000)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1)

#: ``--paper``: the tasks with quoted paper numbers, more sizes (including the quoted ones), 5 seeds
PAPER_TASKS: tuple[str, ...] = ("xoccurs", "match_pattern")
PAPER_SIZES: tuple[int, ...] = (500, 1000, 2500, 5000, 10_000, 25_000)
PAPER_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)


@dataclass
class DemoSettings:
    """Architecture and training budget shared by every model of the grid (the comparison is fair by construction).

    The budget of a run is ``steps`` optimizer steps of ``batch_size`` images, or, with ``epochs`` set,
    ``max(min_steps, ceil(epochs * n_train / batch_size))`` steps (then bigger training sets get more steps,
    equally for every model). AdamW (betas 0.9/0.95, weight decay on matrices only), linear warmup over ``warmup_iters``
    steps, cosine decay to ``learning_rate / 10``, gradient-norm clipping at ``grad_clip``.
    """

    d_model: int = 128
    n_layers: int = 2
    dff: int = 256
    dropout: float = 0.0
    activation: str = "gelu"
    norm_first: bool = True
    pool: str = "cls"
    symmetric_rels: bool = True
    steps: int = 1500
    epochs: float | None = None
    min_steps: int = 1
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_iters: int = 100
    grad_clip: float = 1.0
    n_test: int = 2000
    holdout_sprites: bool = False

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "dff", "steps", "min_steps", "batch_size", "n_test"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.epochs is not None and not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise ValueError(f"epochs must be a number > 0 or None, got {self.epochs!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if isinstance(self.warmup_iters, bool) or not isinstance(self.warmup_iters, int) or self.warmup_iters < 0:
            raise ValueError(f"warmup_iters must be an int >= 0, got {self.warmup_iters!r}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be one of: cls, mean; got {self.pool!r}")

    def steps_for(self, n_train: int) -> int:
        """Optimizer steps of a run on ``n_train`` images."""
        if self.epochs is not None:
            return max(self.min_steps, math.ceil(self.epochs * n_train / self.batch_size))
        return self.steps


def paper_settings() -> DemoSettings:
    """The ``--paper`` budget: 50 epochs of batch 64 and at least 2000 steps per run, 5000 test images."""
    return DemoSettings(epochs=50.0, min_steps=2000, batch_size=64, n_test=5000)


def train_config(variant: Variant, settings: DemoSettings, seed: int, n_train: int):
    """The :class:`~dual_attention.training.config.Config` of one run (no run directory, no validation)."""
    from dual_attention.training.config import load_config

    steps = settings.steps_for(n_train)
    model: dict[str, Any] = {
        "family": "vision",
        "arch": variant.arch,
        "d_model": settings.d_model,
        "n_layers": settings.n_layers,
        "dff": settings.dff,
        "dropout": settings.dropout,
        "activation": settings.activation,
        "norm_first": settings.norm_first,
        "patch_size": list(PATCH_SIZE),
        "image_shape": [IMAGE_SHAPE[0], IMAGE_SHAPE[2], IMAGE_SHAPE[1]],  # (C, W, H)
        "num_classes": N_CLASSES,
        "pool": settings.pool,
    }
    if variant.arch == "dat":
        # positional symbols of dimension d_model for the 9 patches + class token (max_length = 10, derived)
        model.update(n_heads_sa=variant.n_heads_sa, n_heads_ra=variant.n_heads_ra,
                     symbol_retrieval="positional_symbols", symmetric_rels=settings.symmetric_rels)
    else:
        model.update(n_heads=variant.n_heads_sa + variant.n_heads_ra, n_heads_sa=variant.n_heads_sa,
                     n_heads_ra=variant.n_heads_ra)
    return load_config({
        "name": f"relgames-{variant.key}-n{n_train}-s{seed}",
        "model": model,
        "optim": {
            "learning_rate": settings.learning_rate,
            "min_lr": settings.learning_rate / 10,
            "weight_decay": settings.weight_decay,
            "warmup_iters": min(settings.warmup_iters, steps),
            "grad_clip": settings.grad_clip,
            "schedule": "cosine",
        },
        "train": {
            "max_iters": steps,
            "batch_size": settings.batch_size,
            "eval_interval": 0,
            "eval_batch_size": 500,
            "log_interval": max(1, min(50, steps)),
            "seed": seed,
            "device": "cpu",
            "progress": False,
            "checkpoint_interval": 0,
        },
    })


def parameter_counts(variants: Sequence[str], settings: DemoSettings) -> dict[str, int]:
    """Trainable parameters of each model variant (shared parameters counted once)."""
    from dual_attention.training.models import build_model

    out = {}
    for key in variants:
        model = build_model(train_config(VARIANTS[key], settings, 0, 1).model)
        out[key] = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values() if p.requires_grad)
    return out


@lru_cache(maxsize=2)
def _dataset(task: str, n_train: int, n_test: int, seed: int, holdout: bool):
    from dual_attention.data.relational_games import make_dataset

    d = make_dataset(task, n_train, n_test, seed=seed, holdout_sprites=holdout)
    return d["train"].tensors, d["test"].tensors


def run_one(task: str, n_train: int, seed: int, variant_key: str, settings: DemoSettings) -> dict[str, Any]:
    """Train one model on ``n_train`` images of ``task`` (data and initialisation from ``seed``); its record.

    The record holds ``task, n_train, seed, model, label, n_params, steps, test_acc, test_loss,
    train_loss, seconds``.
    """
    from dual_attention.training.trainer import train

    t0 = time.time()
    train_xy, test_xy = _dataset(task, n_train, settings.n_test, seed, settings.holdout_sprites)
    variant = VARIANTS[variant_key]
    cfg = train_config(variant, settings, seed, n_train)
    res = train(cfg, train_data=train_xy, test_data=test_xy, verbose=False)
    if res.interrupted:
        raise KeyboardInterrupt
    n_params = sum(p.numel() for p in {id(p): p for p in res.model.parameters()}.values())
    return {
        "task": task,
        "n_train": n_train,
        "seed": seed,
        "model": variant_key,
        "label": variant.label,
        "n_params": n_params,
        "steps": res.iters,
        "test_acc": float(res.metrics["test_acc"]),
        "test_loss": float(res.metrics["test_loss"]),
        "train_loss": float(res.train_loss) if res.train_loss is not None else math.nan,
        "seconds": round(time.time() - t0, 2),
    }


CSV_FIELDS = ("task", "n_train", "seed", "model", "label", "n_params", "steps", "test_acc", "test_loss",
              "train_loss", "seconds")


def summarize(runs: Sequence[dict]) -> list[dict[str, Any]]:
    """Mean and sample std (over seeds) of the test accuracy (%) per (task, n_train, model), with paper numbers."""
    groups: dict[tuple[str, int, str], list[float]] = {}
    for r in runs:
        groups.setdefault((r["task"], r["n_train"], r["model"]), []).append(100.0 * r["test_acc"])
    rows = []
    for (task, n, model), accs in groups.items():
        m, s = mean_std(accs)
        rows.append({
            "task": task, "n_train": n, "model": model, "label": VARIANTS[model].label, "n_seeds": len(accs),
            "acc_mean": round(m, 2), "acc_std": round(s, 2),
            "paper_acc": PAPER_RESULTS.get((task, n), {}).get(model),
        })
    return rows


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:5.1f} ± {std:4.1f}" if std is not None else f"{mean:5.1f}"


def format_table(summary: Sequence[dict], variants: Sequence[str]) -> str:
    """Test accuracy (%) mean ± std over seeds, one row per (task, size); paper numbers on a row below."""
    by = {(r["task"], r["n_train"], r["model"]): r for r in summary}
    keys = sorted({(r["task"], r["n_train"]) for r in summary}, key=lambda k: (k[0], k[1]))
    width = max(16, *(len(VARIANTS[v].label) for v in variants))
    head = f"{'task':<14} {'n_train':>7}  " + "  ".join(f"{VARIANTS[v].label:>{width}}" for v in variants)
    lines = [head, "-" * len(head)]
    for task, n in keys:
        cells = []
        for v in variants:
            r = by.get((task, n, v))
            cells.append(_cell(r["acc_mean"], r["acc_std"]) if r else "-")
        n_seeds = max((by[(task, n, v)]["n_seeds"] for v in variants if (task, n, v) in by), default=0)
        lines.append(f"{task:<14} {n:>7}  " + "  ".join(f"{c:>{width}}" for c in cells) + f"   ({n_seeds} seeds)")
        paper = PAPER_RESULTS.get((task, n))
        if paper:
            pc = [f"{paper[v]:5.1f}" if v in paper else "-" for v in variants]
            lines.append(f"{'  paper':<14} {n:>7}  " + "  ".join(f"{c:>{width}}" for c in pc) + "   (5 seeds)")
    others = [(t, n) for (t, n) in PAPER_RESULTS if (t, n) not in set(keys) and t in {k[0] for k in keys}]
    for task, n in others:
        paper = PAPER_RESULTS[(task, n)]
        pc = [f"{paper[v]:5.1f}" if v in paper else "-" for v in variants]
        lines.append(f"{'  paper':<14} {n:>7}  " + "  ".join(f"{c:>{width}}" for c in pc) + f"   ({task}, 5 seeds)")
    return "\n".join(lines)


def format_param_counts(counts: dict[str, int]) -> str:
    """One line: ``ViT (2 SA) 322,402 | DAT (1 SA + 1 RA) 323,554 | ...``."""
    return " | ".join(f"{VARIANTS[k].label} {n:,}" for k, n in counts.items())


_COLOURS = {"vit": "tab:gray", "dat-sa1-ra1": "tab:blue", "dat-sa0-ra2": "tab:orange"}


def plot_learning_curves(summary: Sequence[dict], path: str | Path, title: str | None = None,
                         runs: Sequence[dict] | None = None) -> Path:
    """Accuracy vs training-set size (log x), mean ± std band over seeds, one line per model, one panel per task.

    With ``runs``, every seed's accuracy is drawn as a small dot (slightly offset per model). Paper numbers,
    where quoted, are drawn as hollow stars of the model's colour.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    tasks = sorted({r["task"] for r in summary})
    models = [k for k in VARIANTS if any(r["model"] == k for r in summary)]
    fig, axes = plt.subplots(1, len(tasks), figsize=(2.4 + 5.0 * len(tasks), 4.4), dpi=120, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        handles = []
        paper_drawn = False
        sizes = sorted({r["n_train"] for r in summary if r["task"] == task})
        for m in models:
            rows = sorted((r for r in summary if r["task"] == task and r["model"] == m), key=lambda r: r["n_train"])
            if not rows:
                continue
            xs = [r["n_train"] for r in rows]
            mu = [r["acc_mean"] for r in rows]
            sd = [r["acc_std"] for r in rows]
            c = _COLOURS.get(m)
            (h,) = ax.plot(xs, mu, "o-", color=c, lw=1.8, ms=4, label=VARIANTS[m].label)
            handles.append(h)
            ax.fill_between(xs, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)], color=c, alpha=0.15)
            if runs:
                shift = 1.0 + 0.025 * (models.index(m) - (len(models) - 1) / 2)
                pts = [(r["n_train"] * shift, 100.0 * r["test_acc"])
                       for r in runs if r["task"] == task and r["model"] == m]
                if pts:
                    ax.plot(*zip(*pts), ".", color=c, ms=5, alpha=0.7, ls="none")
            for (t, n), accs in PAPER_RESULTS.items():
                if t == task and m in accs and sizes[0] / 1.5 <= n <= sizes[-1] * 1.5:
                    ax.plot([n], [accs[m]], marker="*", ms=12, mfc="none", mec=c, mew=1.5, ls="none")
                    paper_drawn = True
        if runs:
            handles.append(Line2D([], [], marker=".", ms=6, color="k", alpha=0.7, ls="none", label="one seed"))
        if paper_drawn:
            handles.append(Line2D([], [], marker="*", ms=12, mfc="none", mec="k", mew=1.2, ls="none",
                                  label="paper (5 seeds,\ntheir budget)"))
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([f"{n:,}" for n in sizes])
        ax.minorticks_off()
        ax.set_title(task)
        ax.set_xlabel("training images")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(45, 101)
        ax.axhline(50, color="k", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle(title or "Relational games: test accuracy vs training-set size\n(mean ± std over seeds)", fontsize=10)
    return save_figure(fig, path)


@dataclass
class GridResult:
    """What :func:`run_grid` returns: every run's record, the summary rows and where the files went."""

    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    param_counts: dict[str, int]
    settings: DemoSettings
    variants: list[str]
    elapsed_s: float
    files: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        return format_table(self.summary, self.variants)


def run_grid(
    tasks: Sequence[str] = DEFAULT_TASKS,
    sizes: Sequence[int] = DEFAULT_SIZES,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    variants: Sequence[str] = tuple(VARIANTS),
    settings: DemoSettings | None = None,
    out_dir: str | Path | None = None,
    workers: int = 1,
    threads: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> GridResult:
    """Train every (task, size, seed, model) of the grid and collect the test accuracies.

    Args:
        tasks: relational-games tasks (see :data:`dual_attention.data.relational_games.TASKS`).
        sizes: training-set sizes (images); seeds: data and initialisation seeds.
        variants: model keys of :data:`VARIANTS`.
        settings: architecture and budget (default :class:`DemoSettings()`).
        out_dir: if given, ``results.json`` and ``results.csv`` are (re)written after every finished run and
            ``learning_curves.png`` at the end.
        workers: processes training runs in parallel (spawned; 1 = this process); threads: torch threads each.
        progress: show a tqdm bar over runs; log: where the parameter counts and notes go (None: silent).
    """
    from dual_attention.data.relational_games import TASKS

    tasks = check_choices("tasks", tasks, TASKS)
    sizes = sorted(check_int_list("sizes", sizes, 2))
    seeds = check_int_list("seeds", seeds, 0)
    variants = check_choices("variants", variants, tuple(VARIANTS))
    settings = settings or DemoSettings()
    for name, v in (("workers", workers), ("threads", threads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    say = log or (lambda s: None)
    t0 = time.time()
    counts = parameter_counts(variants, settings)
    say("parameters: " + format_param_counts(counts))
    budget = (f"{settings.epochs:g} epochs (>= {settings.min_steps} steps)" if settings.epochs is not None
              else f"{settings.steps} steps")
    say(f"budget per run: {budget} x batch {settings.batch_size}, AdamW lr {settings.learning_rate:g} "
        f"(warmup {settings.warmup_iters}, cosine to lr/10), weight decay {settings.weight_decay:g}; "
        f"test set {settings.n_test} images{' (held-out sprites)' if settings.holdout_sprites else ''}")

    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    # one job per run: sizes ascending (a fixed step budget costs the same at every size); with an epoch
    # budget the largest (slowest) runs go first so that parallel workers finish together
    order = sorted(sizes, reverse=settings.epochs is not None)
    jobs = [(t, n, s, v, settings) for n in order for t in tasks for s in seeds for v in variants]
    done: list[dict] = []
    files: dict[str, str] = {}
    meta = {
        "experiment": "relational_games",
        "tasks": tasks, "sizes": sizes, "seeds": seeds, "variants": variants,
        "settings": dataclasses.asdict(settings),
        "param_counts": counts,
        "paper": [{"task": t, "n_train": n, **accs} for (t, n), accs in PAPER_RESULTS.items()],
        "paper_source": "Altabaa & Lafferty, arXiv:2405.16727 (mean over 5 seeds, their training budget)",
        "environment": environment(),
        "workers": workers, "threads": threads,
    }

    def save(rec: dict | None = None) -> None:
        if rec is not None:
            done.append(rec)
        if out is None:
            return
        runs = sorted(done, key=lambda r: (r["task"], r["n_train"], r["seed"], variants.index(r["model"])))
        write_json(out / "results.json", {**meta, "complete": len(runs) == len(jobs), "n_runs": len(jobs),
                                          "elapsed_s": round(time.time() - t0, 1), "runs": runs,
                                          "summary": summarize(runs)})
        write_csv(out / "results.csv", runs, CSV_FIELDS)
        files["json"] = str(out / "results.json")
        files["csv"] = str(out / "results.csv")

    run_jobs(run_one, jobs, workers=workers, threads=threads, progress=progress, desc="relational games",
             on_result=save, postfix=lambda r: f"{r['task']} n={r['n_train']} {r['model']}: {100 * r['test_acc']:.1f}%")
    runs = sorted(done, key=lambda r: (r["task"], r["n_train"], r["seed"], variants.index(r["model"])))
    summary = summarize(runs)
    elapsed = time.time() - t0
    save()
    if out is not None:
        budget = (f"{settings.epochs:g} epochs" if settings.epochs is not None else f"{settings.steps} steps")
        title = (f"Relational games: test accuracy vs training-set size (mean ± std over {len(seeds)} seeds)\n"
                 f"same budget for every model: {budget} x batch {settings.batch_size}, AdamW lr "
                 f"{settings.learning_rate:g}{', held-out sprites' if settings.holdout_sprites else ''}")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            say("matplotlib is not installed (pip install 'dual_attention[plot]'): no learning_curves.png")
        else:
            files["png"] = str(plot_learning_curves(summary, out / "learning_curves.png", title=title, runs=runs))
    say(f"{len(runs)} runs in {elapsed_str(elapsed)}")
    return GridResult(runs=runs, summary=summary, param_counts=counts, settings=settings, variants=variants,
                      elapsed_s=elapsed, files=files)
