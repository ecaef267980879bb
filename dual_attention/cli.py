"""The ``dat`` command line: ``dat <command> --help`` describes each command.

Each command lives in its own module under :mod:`dual_attention.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
namespace, returning an exit code). Heavy imports (torch, matplotlib, gradio) happen inside
``func`` so that ``dat --help`` stays fast.

Errors have one policy, here in :func:`main`: every error of the package (a
:class:`~dual_attention.errors.DualAttentionError`: a bad flag raised as :class:`CLIError`, a bad config, data
file or checkpoint raised by the library) is printed as one line ``dat <command>: error: <message>`` on stderr,
once under ``torchrun``, with exit status 2 and no traceback. Commands turn foreign exceptions that stand for user
errors (OS errors on user paths, model input errors) into :class:`CLIError` and leave the wording to :func:`main`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dual_attention import __version__
from dual_attention.errors import CLIError, DualAttentionError  # noqa: F401 - CLIError: dual_attention.cli.CLIError
from dual_attention.training.cli_support import Parser, one_line

#: command modules, in the order ``dat --help`` lists them
COMMANDS = ("train", "eval", "export", "generate", "info", "plot", "viz", "demo", "experiment")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dat",
        description="Dual Attention Transformer: train, evaluate, generate, inspect, demonstrate.",
    )
    parser.add_argument("--version", action="version", version=f"dual_attention {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"dual_attention.commands.{name}")
        except ModuleNotFoundError as e:  # a command whose module is not there yet
            if e.name == f"dual_attention.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DualAttentionError as e:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every process fails alike: say it once
            print(f"dat {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dat {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (dat generate ... | head): stop quietly, as cat or yes do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
