"""``dat plot RUN_DIR [RUN_DIR ...]``: a PNG of the train/validation loss curves in ``RUN_DIR/metrics.jsonl``."""

from __future__ import annotations

import argparse

HELP = "plot the train/val loss curves of run directories (metrics.jsonl) to a PNG"


def register(subparsers) -> None:
    p = subparsers.add_parser("plot", help=HELP, description=HELP + ".")
    p.add_argument("run_dir", nargs="+", help="run directories written by `dat train` (several: overlaid)")
    p.add_argument("--out", help="output PNG (default: loss.png in the first RUN_DIR)")
    p.add_argument("--log-y", action="store_true", help="logarithmic loss axis")
    p.add_argument("--title", help="plot title (default: the run's name, family and architecture)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dual_attention.errors import CLIError
    from dual_attention.training.plot import plot_run

    try:
        dirs = args.run_dir if len(args.run_dir) > 1 else args.run_dir[0]
        out = plot_run(dirs, args.out, log_y=args.log_y, title=args.title)
    except ValueError as e:
        raise CLIError(str(e)) from None
    except OSError as e:
        raise CLIError(f"cannot write the plot: {e.strerror or e} {e.filename or ''}".strip()) from None
    print(out)
    return 0
