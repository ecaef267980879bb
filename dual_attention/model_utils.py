"""Activation functions by name (the published package's ``get_activation_function``)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "softmax": lambda: nn.Softmax(dim=-1),
    "identity": nn.Identity,
}

#: names accepted by :func:`get_activation_function`
ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)


def get_activation_function(name: str) -> nn.Module:
    """Return a fresh activation module for ``name`` (``'gelu'`` is the tanh approximation)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"Activation function {name!r} not found; allowed values: {', '.join(ACTIVATIONS)}")
    return _ACTIVATIONS[name]()
