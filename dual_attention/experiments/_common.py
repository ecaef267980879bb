"""Helpers shared by the experiment modules: statistics, result files, a process pool with a progress bar."""

from __future__ import annotations

import concurrent.futures as cf
import csv
import json
import math
import multiprocessing as mp
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "mean_std",
    "check_int_list",
    "check_choices",
    "write_json",
    "write_csv",
    "environment",
    "torch_threads",
    "run_jobs",
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


@contextmanager
def torch_threads(n: int | None):
    """Temporarily set ``torch.set_num_threads(n)`` (no change for ``None``)."""
    import torch

    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(old)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_jobs(
    fn: Callable[..., dict],
    jobs: Sequence[tuple],
    *,
    workers: int,
    threads: int,
    progress: bool,
    desc: str,
    on_result: Callable[[dict], None] | None = None,
    postfix: Callable[[dict], str] | None = None,
) -> list[dict]:
    """Run ``fn(*job)`` for every job, in this process (``workers == 1``) or in a spawned process pool.

    Each job runs with ``threads`` torch threads: small models train fastest with one thread per process
    and one process per core (intra-op threads only add synchronisation at these sizes). ``on_result``
    is called in this process after every finished job (e.g. to save partial results); results come back
    in the order of ``jobs``. A tqdm bar counts finished jobs.
    """
    from tqdm.auto import tqdm

    results: list[dict | None] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, unit="run", disable=not progress, file=sys.stderr, dynamic_ncols=True,
               smoothing=0.0)

    def done(i: int, rec: dict) -> None:
        results[i] = rec
        if on_result is not None:
            on_result(rec)
        if postfix is not None:
            bar.set_postfix_str(postfix(rec), refresh=False)
        bar.update(1)

    try:
        if workers <= 1:
            with torch_threads(threads):
                for i, job in enumerate(jobs):
                    done(i, fn(*job))
        else:
            ctx = mp.get_context("spawn")  # fork after torch's thread pools started can deadlock
            ex = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(threads,))
            try:
                futs = {ex.submit(fn, *job): i for i, job in enumerate(jobs)}
                for fut in cf.as_completed(futs):
                    done(futs[fut], fut.result())
            except BaseException:
                ex.shutdown(wait=False, cancel_futures=True)
                raise
            ex.shutdown(wait=True)
    finally:
        bar.close()
    return [r for r in results if r is not None]


def elapsed_str(seconds: float) -> str:
    """``125.3`` -> ``'2 min 05 s'``."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


def now() -> float:
    return time.time()
