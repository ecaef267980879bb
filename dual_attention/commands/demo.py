"""``dat demo``: Relational Games with the authors' protocol, in and out of distribution (Transformer vs DAT)."""

from __future__ import annotations

import argparse
import math
import signal
import sys

HELP = "relational games as the paper ran them: Transformer vs DAT (and baselines), in and out of distribution"

DESCRIPTION = """\
Trains the paper's vision models on Relational Games images with the authors' protocol (Adam lr 1e-3 constant,
betas (0.9, 0.99), batch 512, 50 epochs, final model; SwiGLU, dropout 0.1, pre-norm, mean pooling, 12x12
patches): the parameter-matched Transformer (d_model 144, dff 288, 2 heads), DAT with 1 SA + 1 RA and with
0 SA + 2 RA heads (d_model 128, dff 256, positional symbols, symmetric relations), and on request the
baselines PrediNet, CoRelNet and the Abstractor. Training images hold pentominoes; every run is tested on
new pentomino images (in distribution) and on hexominoes and stripes (objects never seen in training).
Prints a table (mean ± std over seeds, Welch's t-test of each model against the Transformer) beside the
paper's numbers; writes results.json, results.csv (task,n_train,seed,model,split,accuracy) and
learning_curves.png into --out. Ctrl-C stops at once and keeps the finished runs.

Default grid: task xoccurs, 250 and 2500 training images, seeds 0-2, models vit, dat-sa1-ra1, dat-sa0-ra2
(18 runs, 14 CPU-minutes: about 8 minutes on 2 idle CPU cores with 2 workers).
--paper: the paper's grid: same, occurs, xoccurs, between at 250..2500 images (steps of 250),
match_pattern at 5000..25000 (steps of 2500), 5 seeds, all six models, 10,000 test images per split
(days on a CPU)."""

MODEL_HELP = "comma-separated models, or 'all': vit, dat-sa1-ra1, dat-sa0-ra2, predinet, corelnet, abstractor " \
             "(default: the first three)"


def register(subparsers) -> None:
    p = experiment_parser(subparsers, "demo", HELP, DESCRIPTION)
    p.add_argument("--tasks", metavar="T1,T2", help="comma-separated tasks: same, occurs, xoccurs, between, "
                   "match_pattern (default xoccurs)")
    p.add_argument("--sizes", metavar="N1,N2", help="comma-separated training-set sizes (default 250,2500)")
    p.add_argument("--seeds", metavar="S1,S2", help="comma-separated seeds or a range like 0-4 (default 0-2)")
    p.add_argument("--models", metavar="M1,M2", help=MODEL_HELP)
    add_settings_flags(p, SETTINGS_FLAGS)
    p.add_argument("--paper", action="store_true", help="the paper's full grid (see above)")
    add_run_flags(p, "results/demo, results/demo-paper")
    p.set_defaults(func=run)


def experiment_parser(subparsers, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    """The subcommand parser of an experiment (its description printed as written)."""
    return subparsers.add_parser(name, help=help_text, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_settings_flags(p, flags) -> None:
    """Register the settings flags of a table of ``(flag, metavar, help, attribute, parse)`` rows (values are
    parsed later by :func:`set_from_flags`, so that a bad value is one error line naming the flag)."""
    for flag, metavar, help_text, _, _ in flags:
        p.add_argument(flag, metavar=metavar, help=help_text)


def add_run_flags(p, default_out: str) -> None:
    """The flags every experiment command takes: --out, --workers, --threads, --no-progress."""
    p.add_argument("--out", metavar="DIR", help=f"results directory (default {default_out})")
    p.add_argument("--workers", metavar="N", help="parallel training processes (default: 2, at most the CPU count)")
    p.add_argument("--threads", metavar="N", help="torch threads per process (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_list(flag: str, text: str, kind: type = str) -> list:
    """``'a,b'`` -> ``['a', 'b']`` (``kind=int``: ints, ``1_000`` and ``2.5k`` allowed); CLIError naming the flag."""
    from dual_attention.errors import CLIError

    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise CLIError(f"{flag} needs at least one value, got {text!r}")
    if kind is str:
        return items
    out = []
    for t in items:
        try:
            out.append(parse_int(flag, t))
        except CLIError:
            raise CLIError(f"{flag} must be comma-separated integers, got {text!r}") from None
    return out


def parse_int(flag: str, text: str, minimum: int = 0) -> int:
    """An integer flag value (``1000``, ``1_000``, ``2.5k``), ``>= minimum``; CLIError otherwise."""
    from dual_attention.errors import CLIError

    t = str(text).strip().lower().replace("_", "")
    try:
        value = float(t[:-1]) * 1000 if t.endswith("k") else float(t)
    except ValueError:
        raise CLIError(f"{flag} must be an integer, got {text!r}") from None
    if not math.isfinite(value) or value != int(value):
        raise CLIError(f"{flag} must be an integer, got {text!r}")
    if value < minimum:
        raise CLIError(f"{flag} must be >= {minimum}, got {text!r}")
    return int(value)


def parse_positive(flag: str, text: str) -> int:
    """An integer flag value >= 1 (:func:`parse_int`)."""
    return parse_int(flag, text, minimum=1)


def _at_least_2(flag: str, text: str) -> int:
    return parse_int(flag, text, minimum=2)


def parse_float(flag: str, text: str) -> float:
    from dual_attention.errors import CLIError

    try:
        value = float(text)
    except ValueError:
        raise CLIError(f"{flag} must be a number, got {text!r}") from None
    if not value > 0:
        raise CLIError(f"{flag} must be > 0, got {text!r}")
    return value


def parse_seeds(text: str) -> list[int]:
    """``'0,4'`` -> ``[0, 4]``; a range ``'0-4'`` -> ``[0, 1, 2, 3, 4]``; CLIError otherwise."""
    from dual_attention.errors import CLIError

    t = text.strip()
    if "-" in t and "," not in t:
        lo, _, hi = t.partition("-")
        a, b = parse_int("--seeds", lo), parse_int("--seeds", hi)
        if b < a:
            raise CLIError(f"--seeds range must be increasing, got {text!r}")
        return list(range(a, b + 1))
    return parse_list("--seeds", text, int)


#: flags of :class:`DemoSettings` fields: (flag, metavar, help, attribute, parse)
SETTINGS_FLAGS = (
    ("--epochs", "E", "epochs per run (default 50)", "epochs", parse_positive),
    ("--batch-size", "B", "images per step (default 512)", "batch_size", parse_positive),
    ("--lr", "LR", "Adam learning rate, constant (default 1e-3)", "learning_rate", parse_float),
    ("--n-test", "N", "test images per split (default 5000; --paper 10000)", "n_test", _at_least_2),
)


def default_workers() -> int:
    import os

    return max(1, min(2, os.cpu_count() or 1))


def pool_flags(args: argparse.Namespace) -> tuple[int, int]:
    """``(workers, threads)`` from --workers (default :func:`default_workers`) and --threads (default 1)."""
    workers = parse_int("--workers", args.workers, minimum=1) if args.workers else default_workers()
    threads = parse_int("--threads", args.threads, minimum=1) if args.threads else 1
    return workers, threads


def set_from_flags(settings, args: argparse.Namespace, flags) -> None:
    """For each row ``(flag, metavar, help, attribute, parse)`` of ``flags`` whose flag was given, in order:
    ``settings.attribute = parse(flag, value)`` (a parse error is a CLIError naming the flag)."""
    for flag, _, _, attr, parse in flags:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            setattr(settings, attr, parse(flag, value))


def print_files(files: dict[str, str]) -> None:
    """``wrote PATH`` for the results JSON, CSV and figure that were written."""
    for kind in ("json", "csv", "png"):
        if kind in files:
            print(f"wrote {files[kind]}")


def _grid(args: argparse.Namespace, rg) -> tuple[list[str], list[int], list[int], list[str]]:
    """Tasks, sizes, seeds and models from the flags (CLIError on a bad value)."""
    from dual_attention.data.relational_games import TASKS
    from dual_attention.errors import CLIError

    tasks = (parse_list("--tasks", args.tasks) if args.tasks
             else list(rg.PAPER_TASKS if args.paper else rg.DEFAULT_TASKS))
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise CLIError(f"--tasks: unknown task {bad[0]!r}; allowed: {', '.join(TASKS)}")
    paper_sizes = [*rg.PAPER_SIZES, *rg.PAPER_MATCH_PATTERN_SIZES]
    sizes = parse_list("--sizes", args.sizes, int) if args.sizes else list(paper_sizes if args.paper
                                                                         else rg.DEFAULT_SIZES)
    if min(sizes) < 2:
        raise CLIError(f"--sizes must all be >= 2 images, got {args.sizes!r}")
    seeds = parse_seeds(args.seeds) if args.seeds else list(rg.PAPER_SEEDS if args.paper else rg.DEFAULT_SEEDS)
    if args.models == "all" or (args.paper and not args.models):
        models = list(rg.VARIANTS)
    else:
        models = parse_list("--models", args.models) if args.models else list(rg.DEFAULT_VARIANTS)
    bad = [m for m in models if m not in rg.VARIANTS]
    if bad:
        raise CLIError(f"--models: unknown model {bad[0]!r}; allowed: {', '.join(rg.VARIANTS)} or all")
    for flag, values in (("--tasks", tasks), ("--sizes", sizes), ("--seeds", seeds), ("--models", models)):
        if len(set(values)) != len(values):
            raise CLIError(f"{flag} lists a value twice: {','.join(map(str, values))}")
    return tasks, sizes, seeds, models


def run(args: argparse.Namespace) -> int:
    from dual_attention.errors import CLIError
    from dual_attention.experiments import relational_games as rg

    tasks, sizes, seeds, models = _grid(args, rg)
    settings = rg.DemoSettings(n_test=10_000 if args.paper else 5000)
    set_from_flags(settings, args, SETTINGS_FLAGS)
    workers, threads = pool_flags(args)
    out = args.out or ("results/demo-paper" if args.paper else "results/demo")

    try:
        res = rg.run_grid(tasks, sizes, seeds, models, settings=settings, out_dir=out, workers=workers,
                          threads=threads, progress=not args.no_progress,
                          log=lambda s: print(s, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # we are leaving: a further Ctrl-C must not cut this short
        print(f"dat demo: interrupted; the finished runs are in {out}/results.json", file=sys.stderr, flush=True)
        return 130
    except (ValueError, TypeError) as e:
        raise CLIError(str(e).splitlines()[0]) from None
    except OSError as e:
        raise CLIError(f"cannot write the results: {e.strerror or e} {e.filename or ''}".strip()) from None
    print()
    print("Accuracy (%), mean ± std over seeds. After each model: Welch's two-sided t-test against the Transformer")
    print("on the same cell (+/- = significantly higher/lower at p < 0.05).")
    print("'paper': Altabaa & Lafferty (2024), in-distribution accuracy, mean of 5 trials.")
    print(res.table())
    print()
    print("parameters: " + " | ".join(f"{rg.VARIANTS[k].label} {n:,}" for k, n in res.param_counts.items()))
    print_files(res.files)
    return 0
