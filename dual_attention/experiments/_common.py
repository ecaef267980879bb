"""Helpers shared by the experiment modules: statistics, argument checks, result files, the environment.

The sweep skeleton (process pool, progress bar, result files rewritten after every run) is in :mod:`._sweep`."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "mean_std",
    "welch_t_test",
    "check_int_list",
    "check_choices",
    "check_pool",
    "write_json",
    "write_csv",
    "save_figure",
    "environment",
]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1) of ``values``; the std of a single value is 0.

    mean = (1/n) sum_i v_i,  std = sqrt( sum_i (v_i - mean)^2 / (n - 1) ).
    """
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    m = sum(values) / n
    if n == 1:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Welch's unequal-variance t-test of mean(a) vs mean(b): ``(t, two-sided p)``; needs >= 2 values each.

    t = (m_a - m_b) / sqrt(v_a/n_a + v_b/n_b) with sample variances v; Welch-Satterthwaite degrees of freedom
    nu = (v_a/n_a + v_b/n_b)^2 / ((v_a/n_a)^2/(n_a-1) + (v_b/n_b)^2/(n_b-1)); p = 2 * P(T_nu > |t|) from the
    regularised incomplete beta function, P(T_nu > |t|) = I_{nu/(nu+t^2)}(nu/2, 1/2) / 2 (scipy's ``betainc``
    when scipy is installed, else a continued fraction). Both samples constant: t = 0, p = 1 if the means are
    equal, else t = ±inf, p = 0.
    """
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        raise ValueError(f"welch_t_test needs >= 2 values per sample, got {na} and {nb}")
    ma, va = mean_std(a)
    mb, vb = mean_std(b)
    sa, sb = va**2 / na, vb**2 / nb
    if sa + sb == 0.0:
        return (0.0, 1.0) if ma == mb else (math.copysign(math.inf, ma - mb), 0.0)
    t = (ma - mb) / math.sqrt(sa + sb)
    nu = (sa + sb) ** 2 / (sa**2 / (na - 1) + sb**2 / (nb - 1))
    return t, min(1.0, _betainc(nu / 2, 0.5, nu / (nu + t * t)))


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) (scipy if available, else Lentz's continued fraction)."""
    try:
        from scipy.special import betainc
    except ImportError:
        pass
    else:
        return float(betainc(a, b, x))
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):  # symmetry keeps the continued fraction convergent
        return 1.0 - _betainc_cf(b, a, 1.0 - x)
    return _betainc_cf(a, b, x)


def _betainc_cf(a: float, b: float, x: float) -> float:
    front = math.exp(a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))) / a
    tiny = 1e-300
    f, c, d = 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return front * (f - 1.0)


def check_int_list(name: str, values: Iterable[Any], minimum: int, unique: bool = True) -> list[int]:
    """Validate a non-empty list of ints ``>= minimum`` (ValueError/TypeError naming ``name``)."""
    out: list[int] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must hold ints, got {v!r}")
        if v < minimum:
            raise ValueError(f"{name} must hold ints >= {minimum}, got {v!r}")
        if unique and v in out:
            raise ValueError(f"{name} holds {v!r} twice")
        out.append(v)
    if not out:
        raise ValueError(f"{name} must not be empty")
    return out


def check_choices(name: str, values: Iterable[Any], allowed: Sequence[str]) -> list[str]:
    """Validate a non-empty list of distinct strings from ``allowed``."""
    out: list[str] = []
    for v in values:
        if v not in allowed:
            raise ValueError(f"{name} holds {v!r}, which is not one of: {', '.join(allowed)}")
        if v in out:
            raise ValueError(f"{name} holds {v!r} twice")
        out.append(v)
    if not out:
        raise ValueError(f"{name} must not be empty; allowed values: {', '.join(allowed)}")
    return out


def check_pool(workers: Any, threads: Any) -> None:
    """``workers`` (processes) and ``threads`` (torch threads each) must be ints >= 1 (ValueError naming them)."""
    for name, v in (("workers", workers), ("threads", threads)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (a temporary file, then ``os.replace``)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_csv(path: Path, rows: list[dict[str, Any]], fields: Sequence[str]) -> None:
    """Write ``rows`` (dicts) as CSV with the header ``fields``, atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    os.replace(tmp, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write and close a matplotlib figure; return its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def environment() -> dict[str, Any]:
    """Versions and machine facts stored beside the results."""
    import torch

    from dual_attention import __version__

    return {
        "dual_attention": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
