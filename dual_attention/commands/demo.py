"""``dat demo``: the paper's relational-games result on the CPU (ViT vs ViDAT at several training-set sizes)."""

from __future__ import annotations

import argparse
import sys

HELP = "relational games: ViT vs Dual Attention Transformer at several training-set sizes (~7-12 min on 2 cores)"

DESCRIPTION = """\
Trains the paper's three vision models - a ViT with 2 self-attention heads per layer, DAT with 1 SA + 1
relational-attention head, DAT with 0 SA + 2 RA heads (2 layers, d_model 128, 12x12 patches, positional
symbols, symmetric relations) - on relational-games tasks at several training-set sizes and seeds, all
with the same optimizer and step budget. Prints the parameter counts, a progress bar over runs, and a table
of test accuracy (mean ± std over seeds) beside the numbers the paper reports; writes results.json,
results.csv and learning_curves.png into --out. Defaults: task xoccurs, 1000/2500/5000 images, seeds 0 and
1, 1500 steps of 64 images per run, 2 worker processes: about 7 minutes on 2 idle CPU cores (12 on a
busy machine). --paper: tasks xoccurs and match_pattern, sizes 500..25000, 5 seeds, 50 epochs (at least
2000 steps) per run: several hours on a CPU."""


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", metavar="T1,T2", help="comma-separated tasks: same, between, occurs, xoccurs, "
                   "match_pattern (default xoccurs)")
    p.add_argument("--sizes", metavar="N1,N2", help="comma-separated training-set sizes (default 1000,2500,5000)")
    p.add_argument("--seeds", metavar="S1,S2", help="comma-separated seeds or a range like 0-4 (default 0,1)")
    p.add_argument("--models", metavar="M1,M2", help="comma-separated models: vit, dat-sa1-ra1, dat-sa0-ra2 "
                   "(default all three)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", metavar="N", help="optimizer steps per run, the same for every size (default 1500)")
    budget.add_argument("--epochs", metavar="E", help="epochs per run instead of a fixed step count")
    p.add_argument("--batch-size", metavar="B", help="images per step (default 64)")
    p.add_argument("--lr", metavar="LR", help="peak learning rate (default 1e-3)")
    p.add_argument("--n-test", metavar="N", help="test images per seed (default 2000)")
    p.add_argument("--paper", action="store_true", help="the longer, closer-to-paper setting (see above)")
    p.add_argument("--holdout-sprites", action="store_true",
                   help="test images use only objects never seen in training (25%% of the sprites held out)")
    p.add_argument("--out", metavar="DIR", help="results directory (default results/demo, results/demo-paper)")
    p.add_argument("--workers", metavar="N", help="parallel training processes (default: 2, at most the CPU count)")
    p.add_argument("--threads", metavar="N", help="torch threads per process (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_list(flag: str, text: str, kind: type = str) -> list:
    """``'a,b'`` -> ``['a', 'b']`` (``kind=int``: ints, ``1_000`` and ``2.5k`` allowed); CLIError naming the flag."""
    from dual_attention.cli import CLIError

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
    from dual_attention.cli import CLIError

    t = str(text).strip().lower().replace("_", "")
    try:
        value = float(t[:-1]) * 1000 if t.endswith("k") else float(t)
    except ValueError:
        raise CLIError(f"{flag} must be an integer, got {text!r}") from None
    if value != int(value):
        raise CLIError(f"{flag} must be an integer, got {text!r}")
    if value < minimum:
        raise CLIError(f"{flag} must be >= {minimum}, got {text!r}")
    return int(value)


def parse_float(flag: str, text: str) -> float:
    from dual_attention.cli import CLIError

    try:
        value = float(text)
    except ValueError:
        raise CLIError(f"{flag} must be a number, got {text!r}") from None
    if not value > 0:
        raise CLIError(f"{flag} must be > 0, got {text!r}")
    return value


def parse_seeds(text: str) -> list[int]:
    """``'0,4'`` -> ``[0, 4]``; a range ``'0-4'`` -> ``[0, 1, 2, 3, 4]``; CLIError otherwise."""
    from dual_attention.cli import CLIError

    t = text.strip()
    if "-" in t and "," not in t:
        lo, _, hi = t.partition("-")
        a, b = parse_int("--seeds", lo), parse_int("--seeds", hi)
        if b < a:
            raise CLIError(f"--seeds range must be increasing, got {text!r}")
        return list(range(a, b + 1))
    return parse_list("--seeds", text, int)


def default_workers() -> int:
    import os

    return max(1, min(2, os.cpu_count() or 1))


def run(args: argparse.Namespace) -> int:
    from dual_attention.cli import CLIError
    from dual_attention.data.relational_games import TASKS
    from dual_attention.experiments import relational_games as rg

    tasks = (parse_list("--tasks", args.tasks) if args.tasks
             else list(rg.PAPER_TASKS if args.paper else rg.DEFAULT_TASKS))
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise CLIError(f"--tasks: unknown task {bad[0]!r}; allowed: {', '.join(TASKS)}")
    sizes = parse_list("--sizes", args.sizes, int) if args.sizes else list(rg.PAPER_SIZES if args.paper
                                                                         else rg.DEFAULT_SIZES)
    if min(sizes) < 2:
        raise CLIError(f"--sizes must all be >= 2 images, got {args.sizes!r}")
    seeds = parse_seeds(args.seeds) if args.seeds else list(rg.PAPER_SEEDS if args.paper else rg.DEFAULT_SEEDS)
    models = parse_list("--models", args.models) if args.models else list(rg.VARIANTS)
    bad = [m for m in models if m not in rg.VARIANTS]
    if bad:
        raise CLIError(f"--models: unknown model {bad[0]!r}; allowed: {', '.join(rg.VARIANTS)}")
    for flag, values in (("--tasks", tasks), ("--sizes", sizes), ("--seeds", seeds), ("--models", models)):
        if len(set(values)) != len(values):
            raise CLIError(f"{flag} lists a value twice: {','.join(map(str, values))}")

    settings = rg.paper_settings() if args.paper else rg.DemoSettings()
    if args.steps is not None:
        settings.steps = parse_int("--steps", args.steps, minimum=1)
        settings.epochs = None
    if args.epochs is not None:
        settings.epochs = parse_float("--epochs", args.epochs)
    if args.batch_size is not None:
        settings.batch_size = parse_int("--batch-size", args.batch_size, minimum=1)
    if args.lr is not None:
        settings.learning_rate = parse_float("--lr", args.lr)
    if args.n_test is not None:
        settings.n_test = parse_int("--n-test", args.n_test, minimum=2)
    settings.holdout_sprites = bool(args.holdout_sprites)
    workers = parse_int("--workers", args.workers, minimum=1) if args.workers else default_workers()
    threads = parse_int("--threads", args.threads, minimum=1) if args.threads else 1
    out = args.out or ("results/demo-paper" if args.paper else "results/demo")

    try:
        res = rg.run_grid(tasks, sizes, seeds, models, settings=settings, out_dir=out, workers=workers,
                          threads=threads, progress=not args.no_progress,
                          log=lambda s: print(s, file=sys.stderr, flush=True))
    except (ValueError, TypeError) as e:
        raise CLIError(str(e).splitlines()[0]) from None
    except OSError as e:
        raise CLIError(f"cannot write the results: {e.strerror or e} {e.filename or ''}".strip()) from None
    print()
    print("Test accuracy (%), mean ± std over seeds; 'paper' rows: Altabaa & Lafferty (2024), 5 seeds, their budget")
    print(res.table())
    print()
    print("parameters: " + rg.format_param_counts(res.param_counts))
    for kind in ("json", "csv", "png"):
        if kind in res.files:
            print(f"wrote {res.files[kind]}")
    return 0
