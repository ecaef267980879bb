"""The skeleton both experiment sweeps run: jobs in a process pool with a progress bar (:func:`run_jobs`), finished
records kept in job order and written after every run (:class:`Sweep`), what a sweep returns (:class:`SweepResult`)."""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dual_attention.experiments._common import environment, write_csv, write_json

__all__ = ["torch_threads", "run_jobs", "elapsed_str", "SweepResult", "Sweep"]


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
    import signal

    import torch

    torch.set_num_threads(threads)
    # Ctrl-C reaches the whole process group: the parent alone handles it (and terminates the workers), so the
    # workers neither print tracebacks nor hold up the exit
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_pool(workers: int, threads: int):
    """A spawned pool whose workers ignore SIGINT from their start: the parent ignores it while it spawns them and
    the new interpreters inherit that, so a Ctrl-C while they import torch cannot print their tracebacks."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(threads,))
    finally:
        signal.signal(signal.SIGINT, previous)


def _call(task: tuple) -> tuple[int, dict]:
    fn, i, job = task
    return i, fn(*job)


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
    in the order of ``jobs``. A tqdm bar counts finished jobs. On Ctrl-C (``KeyboardInterrupt``) the pool's
    workers, which ignore SIGINT, are terminated at once and the interrupt is re-raised; a second Ctrl-C during
    that clean-up is ignored.
    """
    import signal

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
            pool = _start_pool(workers, threads)
            try:
                for i, rec in pool.imap_unordered(_call, [(fn, i, job) for i, job in enumerate(jobs)]):
                    done(i, rec)
                pool.close()
                pool.join()
            except BaseException:
                previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut clean-up
                try:
                    pool.terminate()
                    pool.join()
                finally:
                    signal.signal(signal.SIGINT, previous)
                raise
    finally:
        bar.close()
    return [r for r in results if r is not None]


def elapsed_str(seconds: float) -> str:
    """``125.3`` -> ``'2 min 05 s'``."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


@dataclass
class SweepResult:
    """What a sweep returns (the experiments add their settings, elapsed time and files): every run's record and
    the summary rows, with the models' parameter counts."""

    runs: list[dict[str, Any]]
    summary: list[dict[str, Any]]
    param_counts: dict[str, int]


@dataclass
class Sweep:
    """The skeleton of an experiment sweep: run the jobs in ``workers`` processes of ``threads`` torch threads each,
    keep the finished records in job order (``order``), and after every run rewrite ``results.json`` (``meta`` and
    the environment, completeness, elapsed time, the runs and ``summarize(runs)``) and ``results.csv``
    (``csv_rows(runs)``, default the runs themselves, with the header ``csv_fields``), so an interrupted sweep keeps
    its finished runs; the figure at the end (:meth:`finish`). Nothing is written without ``out_dir``; ``t0`` is
    when the sweep started (elapsed times count from it); ``say`` prints progress lines."""

    out_dir: str | Path | None
    meta: dict[str, Any]
    n_runs: int
    order: Callable[[dict], Any]
    summarize: Callable[[list[dict]], list[dict]]
    csv_fields: Sequence[str]
    csv_rows: Callable[[list[dict]], list[dict]] | None = None
    workers: int = 1
    threads: int = 1
    say: Callable[[str], None] = print
    t0: float = field(default_factory=time.time)
    runs: list[dict] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def __post_init__(self) -> None:
        self.meta = {**self.meta, "environment": environment(), "workers": self.workers, "threads": self.threads}
        self.out = Path(self.out_dir) if self.out_dir is not None else None
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)

    def add(self, rec: dict) -> None:
        """Keep a finished run's record and rewrite the result files."""
        self.runs.append(rec)
        self.runs.sort(key=self.order)
        self.save()

    def save(self) -> None:
        """Rewrite ``results.json`` and ``results.csv`` (nothing without ``out_dir``)."""
        if self.out is None:
            return
        runs = self.runs
        write_json(self.out / "results.json", {**self.meta, "complete": len(runs) == self.n_runs, "n_runs": self.n_runs,
                                               "elapsed_s": round(time.time() - self.t0, 1), "runs": runs,
                                               "summary": self.summarize(runs)})
        write_csv(self.out / "results.csv", runs if self.csv_rows is None else self.csv_rows(runs), self.csv_fields)
        self.files.update(json=str(self.out / "results.json"), csv=str(self.out / "results.csv"))

    def run(self, fn: Callable[..., dict], jobs: Sequence[tuple], *, progress: bool, desc: str,
            postfix: Callable[[dict], str]) -> list[dict]:
        """:func:`run_jobs`, saving after every run and once more at the end; the records in job order.
        ``elapsed_s`` is then the time since ``t0``."""
        run_jobs(fn, jobs, workers=self.workers, threads=self.threads, progress=progress, desc=desc,
                 on_result=self.add, postfix=postfix)
        self.elapsed_s = time.time() - self.t0
        self.save()
        return self.runs

    def finish(self, name: str, draw: Callable[[Path], Path]) -> None:
        """``draw(out_dir / name)`` when there is an ``out_dir`` and matplotlib is installed (else say why not);
        then say how many runs took how long."""
        if self.out is not None:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                self.say(f"matplotlib is not installed (pip install 'dual_attention[plot]'): no {name}")
            else:
                self.files["png"] = str(draw(self.out / name))
        self.say(f"{len(self.runs)} runs in {elapsed_str(self.elapsed_s)}")
