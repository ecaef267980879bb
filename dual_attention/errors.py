"""The package's errors: one base, :class:`DualAttentionError`, and a class per kind of problem the user can fix.

Each class keeps the built-in base its callers catch (``ValueError`` for bad configs, data, checkpoints and inputs,
``ImportError`` for a missing optional dependency), so ``except ValueError`` still works; ``except
DualAttentionError`` catches every error the package raises on purpose. The classes are importable from the module
that raises them as well (``dual_attention.training.config.ConfigError``, ``dual_attention.cli.CLIError``, ...).

Messages are complete: the library never shortens them. How to show one is the caller's choice; the command line
(:func:`dual_attention.cli.main`) prints ``dat <command>: error: <message on one line>`` once and exits with 2.

This module imports nothing, so that ``dat --help`` and the error classes stay cheap to import.
"""

from __future__ import annotations

__all__ = [
    "DualAttentionError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "RunDirError",
    "TaskError",
    "VizInputError",
    "MissingExtraError",
    "AppError",
    "CLIError",
    "UnsupportedConfigError",
    "message_of",
]


def message_of(e: BaseException) -> str:
    """The whole message of ``e`` (never shortened; its type's name when it has no text), for wrapping it in one
    of the errors below."""
    return str(e).strip() or type(e).__name__


class DualAttentionError(Exception):
    """Base of the errors the package raises on purpose (a problem the user can fix)."""


class ConfigError(DualAttentionError, ValueError):
    """A configuration error the user can fix (unknown key, wrong type, unknown preset, bad value)."""


class DataError(DualAttentionError, ValueError):
    """A data problem the user can fix (missing file, bad format, tokenizer unavailable)."""


class CheckpointError(DualAttentionError, ValueError):
    """A missing, incomplete or corrupted checkpoint."""


class RunDirError(DualAttentionError, ValueError):
    """The run directory exists (and neither resume nor overwrite was asked) or cannot be resumed."""


class TaskError(DualAttentionError, ValueError):
    """An lm-eval task name that is neither built in nor in the include path."""


class VizInputError(DualAttentionError, ValueError):
    """An input that does not fit the model (wrong kind, too long, unreadable image)."""


class MissingExtraError(DualAttentionError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class AppError(DualAttentionError):
    """A problem the user can fix in an app; its text is shown in the page."""


class CLIError(DualAttentionError):
    """A command-line error the user can fix: printed as one line, exit code 2, no traceback."""


class UnsupportedConfigError(DualAttentionError, ValueError, NotImplementedError):
    """A combination of model options that is not implemented (a ValueError, and a NotImplementedError as in the
    published package)."""
