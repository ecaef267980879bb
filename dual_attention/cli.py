"""The ``dat`` command line: ``dat <command> --help`` describes each command.

Each command lives in its own module under :mod:`dual_attention.commands` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (called with the parsed
namespace, returning an exit code). Heavy imports (torch, matplotlib, gradio) happen inside
``func`` so that ``dat --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dual_attention import __version__

#: command modules, in the order ``dat --help`` lists them
COMMANDS = ("train", "eval", "generate", "info", "plot", "viz", "demo", "experiment")


class CLIError(Exception):
    """An error the user can fix: printed as one line, exit code 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    except CLIError as e:
        print(f"dat {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dat {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
