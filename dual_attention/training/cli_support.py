"""Helpers shared by the ``dat train/eval/generate/info/plot`` command modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from dual_attention.errors import CheckpointError, CLIError, ConfigError, DataError, RunDirError

__all__ = ["user_errors", "one_line", "Parser", "OverrideParser", "use_override_parser", "USER_ERRORS"]


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (its lines joined; the exception's type when it has no text)."""
    text = "; ".join(line.strip() for line in str(e).strip().splitlines() if line.strip())
    return text or type(e).__name__


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (``dat train: error: ...``), exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """The library's user errors of training and inference (all :class:`DualAttentionError`)."""
    return (ConfigError, DataError, RunDirError, CheckpointError)


USER_ERRORS = _user_error_types


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the foreign exceptions that stand for user errors (a diverging loss, OS errors on user paths) into
    :class:`CLIError`; the package's own errors pass through to :func:`dual_attention.cli.main`, which prints
    every one the same way."""
    try:
        yield
    except FloatingPointError as e:
        raise CLIError(f"{e}: lower optim.learning_rate or use train.dtype=float32") from None
    except OSError as e:
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        raise CLIError(f"{e.strerror or e}{where}") from None


class OverrideParser(Parser):
    """An ArgumentParser that collects ``--section.key=value`` (or ``--section.key value``, or ``--name=NAME``)
    into ``overrides``."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        overrides = list(getattr(namespace, "overrides", None) or [])
        rest: list[str] = []
        i = 0
        while i < len(extras):
            tok = extras[i]
            name = tok[2:].split("=", 1)[0] if tok.startswith("--") else ""
            if name and ("." in name or name == "name"):  # --section.key=value, or the config's --name
                if "=" in tok:
                    overrides.append(tok[2:])
                elif i + 1 < len(extras) and not extras[i + 1].startswith("--"):
                    overrides.append(f"{name}={extras[i + 1]}")
                    i += 1
                else:
                    overrides.append(f"{name}=true")
            else:
                rest.append(tok)
            i += 1
        namespace.overrides = overrides
        return namespace, rest


def use_override_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make a sub-parser created by ``subparsers.add_parser`` accept dotted config overrides."""
    parser.__class__ = OverrideParser
    parser.set_defaults(overrides=[])
    return parser
