"""Loss curves of a run directory, from its ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["read_metrics", "plot_run"]


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of ``run_dir/metrics.jsonl`` (ValueError if missing or empty)."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        raise ValueError(f"{p} does not exist: is {str(run_dir)!r} a run directory?")
    recs = []
    for line in p.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:
            continue
    if not recs:
        raise ValueError(f"{p} holds no records yet")
    return recs


def _ema(values: list[float], alpha: float) -> list[float]:
    """Bias-corrected exponential moving average: m_t = a m_{t-1} + (1-a) v_t, reported as m_t/(1-a^t)."""
    out, m = [], 0.0
    for t, v in enumerate(values, 1):
        m = alpha * m + (1 - alpha) * v
        out.append(m / (1 - alpha**t))
    return out


def _smoothing(n: int) -> float | None:
    """EMA factor for ``n`` train points: none below 50 points (it would lag), then 1 - 20/n up to 0.95."""
    if n < 50:
        return None
    return min(0.95, 1.0 - 20.0 / n)


def _run_title(run_dir: Path) -> str:
    cfg = run_dir / "config.yaml"
    title = run_dir.name
    if cfg.is_file():
        import yaml

        try:
            c = yaml.safe_load(cfg.read_text())
            title = f"{c.get('name', title)} ({c['model']['family']}, {c['model']['arch']})"
        except Exception:
            pass
    return title


_COLOURS = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:olive"]


def plot_run(run_dir: str | Path | list, out: str | Path | None = None, log_y: bool = False,
             title: str | None = None) -> Path:
    """Plot train (raw, and smoothed when long) and validation loss against the iteration; return the PNG path.

    A single run's validation accuracy and multiple-choice accuracy (``train.mc_eval_file``) go on a second axis.

    ``run_dir`` may be a list of run directories: their curves are overlaid (e.g. DAT against its Transformer
    baseline). The default output is ``<first run dir>/loss.png``. Needs matplotlib
    (``pip install 'dual_attention[plot]'``).
    """
    dirs = [Path(d) for d in (run_dir if isinstance(run_dir, (list, tuple)) else [run_dir])]
    all_recs = [read_metrics(d) for d in dirs]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    single = len(dirs) == 1
    for k, (d, recs) in enumerate(zip(dirs, all_recs)):
        _plot_losses(ax, d, recs, k, single)
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    acc, mc = _accuracies(all_recs[0]) if single else ([], [])  # accuracies only for a single run
    if acc or mc:
        _plot_accuracies(ax, acc, mc)
    else:
        ax.legend(loc="upper right", fontsize=8 if not single else None)
    ax.set_title(title or (_run_title(dirs[0]) if single else "loss curves"))
    fig.tight_layout()
    out_path = Path(out) if out else dirs[0] / "loss.png"
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("dat plot needs matplotlib: pip install 'dual_attention[plot]'") from None
    return plt


def _plot_losses(ax, run_dir: Path, recs: list[dict], k: int, single: bool) -> None:
    """Run ``k``'s train loss (raw, and its EMA when long) and validation loss (one colour per run when several)."""
    train = [(r["iter"], r["loss"]) for r in recs if r.get("split") == "train" and "loss" in r]
    val = [(r["iter"], r["loss"]) for r in recs if r.get("split") == "val" and "loss" in r]
    if not train and not val:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} has no loss records")
    name = "" if single else f"{_run_title(run_dir)}: "
    c_train = "tab:blue" if single else _COLOURS[k % len(_COLOURS)]
    c_val = "tab:orange" if single else c_train
    if train:
        xs, ys = zip(*train)
        alpha = _smoothing(len(ys))
        ax.plot(xs, ys, color=c_train, alpha=0.35 if alpha else 0.9, lw=1 if alpha else 1.4,
                label=f"{name}train loss")
        if alpha:
            ax.plot(xs, _ema(list(ys), alpha), color=c_train, lw=1.8, label=f"{name}train loss (EMA)")
    if val:
        xs, ys = zip(*val)
        ax.plot(xs, ys, "o-" if single else "o--", color=c_val, lw=1.8, ms=4, label=f"{name}val loss")


def _accuracies(recs: list[dict]) -> tuple[list, list]:
    """``(iter, validation accuracy)`` and ``(iter, multiple-choice acc_norm)`` points of a run."""
    acc = [(r["iter"], r["acc"]) for r in recs if r.get("split") == "val" and "acc" in r]
    mc = [(r["iter"], r["acc_norm"]) for r in recs if r.get("split") == "mc" and "acc_norm" in r]
    return acc, mc


def _plot_accuracies(ax, acc: list, mc: list) -> None:
    """Validation and multiple-choice accuracy on a second axis; one legend for both axes."""
    ax2 = ax.twinx()
    for points, style, colour, label in ((acc, "s--", "tab:green", "val accuracy"),
                                         (mc, "d:", "tab:purple", "multiple-choice acc_norm")):
        if points:
            xs, ys = zip(*points)
            ax2.plot(xs, ys, style, color=colour, lw=1.2, ms=3, label=label)
    ax2.set_ylabel("accuracy")
    ax2.set_ylim(0, 1)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="center right")
