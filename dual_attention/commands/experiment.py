"""``dat experiment math``: the paper's second experiment (seq2seq DAT vs Transformer on mathematics problems)."""

from __future__ import annotations

import argparse
import sys

HELP = "the paper's other experiments at a CPU-sized scale (math: seq2seq DAT vs Transformer)"

MATH_HELP = "mathematics Q/A: character-level seq2seq DAT vs Transformer on locally generated questions"

MATH_DESCRIPTION = """\
Generates question/answer pairs of DeepMind-mathematics-style task families locally, trains a
character-level encoder-decoder Transformer (4 SA heads per layer) and a DAT (2 SA + 2 RA heads per layer,
symbolic attention) with the same optimizer and step budget, and reports on held-out questions the
teacher-forced per-character accuracy and the greedy full-answer exact-match accuracy (mean ± std over
seeds). Writes results.json, results.csv and math_accuracy.png into --out. Defaults: 2 families
(algebra__linear_1d, calculus__differentiate; --families all4 adds polynomials__add and
polynomials__expand, --families all takes every generator), 1 seed, 10000 easy training pairs, 500 test
questions, d_model 64, 500 steps of 64 pairs, 2 worker processes: about 5 minutes on 2 CPU cores."""


def register(subparsers) -> None:
    p = subparsers.add_parser("experiment", help=HELP, description=HELP + ".")
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    m = sub.add_parser("math", help=MATH_HELP, description=MATH_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--families", metavar="F1,F2", help="comma-separated families, 'all4' or 'all' (default "
                   "algebra__linear_1d,calculus__differentiate)")
    m.add_argument("--seeds", metavar="S1,S2", help="comma-separated seeds or a range like 0-2 (default 0)")
    m.add_argument("--models", metavar="M1,M2", help="comma-separated: transformer, dat (default both)")
    m.add_argument("--steps", metavar="N", help="optimizer steps per run (default 500)")
    m.add_argument("--batch-size", metavar="B", help="pairs per step (default 64)")
    m.add_argument("--lr", metavar="LR", help="peak learning rate (default 1e-3)")
    m.add_argument("--n-train", metavar="N", help="training pairs per family (default 10000)")
    m.add_argument("--n-test", metavar="N", help="held-out test questions per family (default 500)")
    m.add_argument("--difficulty", metavar="D", help="easy, medium or hard (default easy)")
    m.add_argument("--d-model", metavar="D", help="model width (default 64)")
    m.add_argument("--out", metavar="DIR", help="results directory (default results/math)")
    m.add_argument("--workers", metavar="N", help="parallel training processes (default: 2, at most the CPU count)")
    m.add_argument("--threads", metavar="N", help="torch threads per process (default 1)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=run_math)
    p.set_defaults(func=_no_experiment)


def _no_experiment(args: argparse.Namespace) -> int:
    from dual_attention.errors import CLIError

    raise CLIError("name an experiment: dat experiment math (see dat experiment --help)")


def run_math(args: argparse.Namespace) -> int:
    from dual_attention.commands.demo import default_workers, parse_float, parse_int, parse_list, parse_seeds
    from dual_attention.data.math_tasks import DIFFICULTIES, FAMILIES
    from dual_attention.errors import CLIError
    from dual_attention.experiments import math as mx

    if args.families in ("all", "all4"):
        families = list(FAMILIES if args.families == "all" else mx.FOUR_FAMILIES)
    else:
        families = parse_list("--families", args.families) if args.families else list(mx.DEFAULT_FAMILIES)
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        raise CLIError(f"--families: unknown family {bad[0]!r}; allowed: {', '.join(FAMILIES)}")
    seeds = parse_seeds(args.seeds) if args.seeds else [0]
    models = parse_list("--models", args.models) if args.models else list(mx.MODELS)
    bad = [m for m in models if m not in mx.MODELS]
    if bad:
        raise CLIError(f"--models: unknown model {bad[0]!r}; allowed: {', '.join(mx.MODELS)}")
    for flag, values in (("--families", families), ("--seeds", seeds), ("--models", models)):
        if len(set(values)) != len(values):
            raise CLIError(f"{flag} lists a value twice: {','.join(map(str, values))}")
    s = mx.MathSettings()
    if args.steps is not None:
        s.steps = parse_int("--steps", args.steps, minimum=1)
    if args.batch_size is not None:
        s.batch_size = parse_int("--batch-size", args.batch_size, minimum=1)
    if args.lr is not None:
        s.learning_rate = parse_float("--lr", args.lr)
    if args.n_train is not None:
        s.n_train = parse_int("--n-train", args.n_train, minimum=1)
    if args.n_test is not None:
        s.n_test = parse_int("--n-test", args.n_test, minimum=1)
    if args.d_model is not None:
        s.d_model = parse_int("--d-model", args.d_model, minimum=1)
        if s.d_model % (s.n_heads_sa + s.n_heads_ra):
            raise CLIError(f"--d-model must be divisible by the 4 heads, got {args.d_model!r}")
    if args.difficulty is not None:
        if args.difficulty not in DIFFICULTIES:
            raise CLIError(f"--difficulty must be one of: {', '.join(DIFFICULTIES)}; got {args.difficulty!r}")
        s.difficulty = args.difficulty
    workers = parse_int("--workers", args.workers, minimum=1) if args.workers else default_workers()
    threads = parse_int("--threads", args.threads, minimum=1) if args.threads else 1
    out = args.out or "results/math"
    try:
        res = mx.run_math(families, seeds, models, settings=s, out_dir=out, workers=workers, threads=threads,
                          progress=not args.no_progress, log=lambda t: print(t, file=sys.stderr, flush=True))
    except (ValueError, TypeError) as e:
        raise CLIError(str(e).splitlines()[0]) from None
    except OSError as e:
        raise CLIError(f"cannot write the results: {e.strerror or e} {e.filename or ''}".strip()) from None
    print()
    print("Held-out questions: teacher-forced per-character accuracy and greedy exact match (%), mean ± std "
          "over seeds")
    print(mx.format_table(res.summary, models))
    print()
    for m in models:
        counts = sorted({r["n_params"] for r in res.runs if r["model"] == m})
        span = f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,} to {counts[-1]:,}"
        print(f"parameters of {mx.MODEL_LABELS[m]}: {span} (the character vocabulary depends on the family)")
    for kind in ("json", "csv", "png"):
        if kind in res.files:
            print(f"wrote {res.files[kind]}")
    return 0
