"""Argument checks that raise ``ValueError``/``TypeError`` naming the argument (never bare ``assert``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; allowed values: {', '.join(map(repr, allowed))}")


def check_positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}={value} is not valid; it must be {bound}")


def check_optional_positive_int(name: str, value: Any) -> None:
    if value is not None:
        check_positive_int(name, value)


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    if value % divisor != 0:
        raise ValueError(f"{name}={value} must be divisible by {divisor_name}={divisor}")


def check_probability(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__} ({value!r})")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value} is not valid; it must be in [0, 1)")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")


def check_bools(**flags: Any) -> None:
    """:func:`check_bool` for each ``name=value``, in the order given."""
    for name, value in flags.items():
        check_bool(name, value)


def check_kwargs_dict(name: str, value: Any) -> dict:
    """Return a *copy* of an optional kwargs dict (never mutate the caller's dict)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict or None, got {type(value).__name__}")
    return dict(value)


def build_with_kwargs(kwargs_name: str, cls: type, kwargs: dict, *args: Any, **fixed: Any) -> Any:
    """``cls(*args, **fixed, **kwargs)``, re-raising a signature ``TypeError`` so that it names ``kwargs_name``."""
    try:
        return cls(*args, **fixed, **kwargs)
    except TypeError as e:
        raise TypeError(f"{kwargs_name}={kwargs!r} does not fit {cls.__name__}: {e}") from e
