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


def plot_run(run_dir: str | Path, out: str | Path | None = None, log_y: bool = False,
             title: str | None = None) -> Path:
    """Plot train (raw and smoothed) and validation loss against the iteration; return the PNG path.

    The default output is ``run_dir/loss.png``. Needs matplotlib (``pip install 'dual_attention[plot]'``).
    """
    recs = read_metrics(run_dir)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("dat plot needs matplotlib: pip install 'dual_attention[plot]'") from None
    train = [(r["iter"], r["loss"]) for r in recs if r.get("split") == "train" and "loss" in r]
    val = [(r["iter"], r["loss"]) for r in recs if r.get("split") == "val" and "loss" in r]
    acc = [(r["iter"], r["acc"]) for r in recs if r.get("split") == "val" and "acc" in r]
    if not train and not val:
        raise ValueError(f"{Path(run_dir) / 'metrics.jsonl'} has no loss records")
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    if train:
        xs, ys = zip(*train)
        ax.plot(xs, ys, color="tab:blue", alpha=0.3, lw=1, label="train loss")
        if len(ys) > 5:
            ax.plot(xs, _ema(list(ys), 0.8), color="tab:blue", lw=1.8, label="train loss (EMA)")
    if val:
        xs, ys = zip(*val)
        ax.plot(xs, ys, "o-", color="tab:orange", lw=1.8, ms=4, label="val loss")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss")
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if acc:
        ax2 = ax.twinx()
        xs, ys = zip(*acc)
        ax2.plot(xs, ys, "s--", color="tab:green", lw=1.2, ms=3, label="val accuracy")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(0, 1)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, loc="center right")
    else:
        ax.legend(loc="upper right")
    if title is None:
        cfg = Path(run_dir) / "config.yaml"
        title = Path(run_dir).name
        if cfg.is_file():
            import yaml

            try:
                c = yaml.safe_load(cfg.read_text())
                title = f"{c.get('name', title)} ({c['model']['family']}, {c['model']['arch']})"
            except Exception:
                pass
    ax.set_title(title)
    fig.tight_layout()
    out_path = Path(out) if out else Path(run_dir) / "loss.png"
    fig.savefig(out_path)
    plt.close(fig)
    return out_path
