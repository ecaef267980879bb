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
    from dual_attention.commands.demo import add_run_flags, add_settings_flags, experiment_parser

    p = subparsers.add_parser("experiment", help=HELP, description=HELP + ".")
    sub = p.add_subparsers(dest="experiment", metavar="EXPERIMENT")
    m = experiment_parser(sub, "math", MATH_HELP, MATH_DESCRIPTION)
    m.add_argument("--families", metavar="F1,F2", help="comma-separated families, 'all4' or 'all' (default "
                   "algebra__linear_1d,calculus__differentiate)")
    m.add_argument("--seeds", metavar="S1,S2", help="comma-separated seeds or a range like 0-2 (default 0)")
    m.add_argument("--models", metavar="M1,M2", help="comma-separated: transformer, dat (default both)")
    add_settings_flags(m, _math_flags())
    add_run_flags(m, "results/math")
    m.set_defaults(func=run_math)
    p.set_defaults(func=_no_experiment)


def _no_experiment(args: argparse.Namespace) -> int:
    from dual_attention.errors import CLIError

    raise CLIError("name an experiment: dat experiment math (see dat experiment --help)")


def _math_grid(args: argparse.Namespace, mx) -> tuple[list[str], list[int], list[str]]:
    """Families, seeds and models from the flags (CLIError on a bad value)."""
    from dual_attention.commands.demo import parse_list, parse_seeds
    from dual_attention.data.math_tasks import FAMILIES
    from dual_attention.errors import CLIError

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
    return families, seeds, models


def _math_flags() -> tuple:
    """The flags of :class:`MathSettings` fields: (flag, metavar, help, attribute, parse)."""
    from dual_attention.commands.demo import parse_float, parse_positive
    from dual_attention.errors import CLIError

    def width(flag: str, text: str) -> int:
        from dual_attention.experiments.math import MathSettings

        value = parse_positive(flag, text)
        default = MathSettings()
        if value % (default.n_heads_sa + default.n_heads_ra):
            raise CLIError(f"--d-model must be divisible by the 4 heads, got {text!r}")
        return value

    def difficulty(flag: str, text: str) -> str:
        from dual_attention.data.math_tasks import DIFFICULTIES

        if text not in DIFFICULTIES:
            raise CLIError(f"--difficulty must be one of: {', '.join(DIFFICULTIES)}; got {text!r}")
        return text

    return (
        ("--steps", "N", "optimizer steps per run (default 500)", "steps", parse_positive),
        ("--batch-size", "B", "pairs per step (default 64)", "batch_size", parse_positive),
        ("--lr", "LR", "peak learning rate (default 1e-3)", "learning_rate", parse_float),
        ("--n-train", "N", "training pairs per family (default 10000)", "n_train", parse_positive),
        ("--n-test", "N", "held-out test questions per family (default 500)", "n_test", parse_positive),
        ("--difficulty", "D", "easy, medium or hard (default easy)", "difficulty", difficulty),
        ("--d-model", "D", "model width (default 64)", "d_model", width),
    )


def run_math(args: argparse.Namespace) -> int:
    from dual_attention.commands.demo import pool_flags, print_files, set_from_flags
    from dual_attention.errors import CLIError
    from dual_attention.experiments import math as mx

    families, seeds, models = _math_grid(args, mx)
    s = mx.MathSettings()
    set_from_flags(s, args, _math_flags())
    workers, threads = pool_flags(args)
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
    print_files(res.files)
    return 0
