"""A torchinfo-like table of a model's layers and parameter counts (no forward pass needed).

Parameters shared between modules (tied embeddings, a shared symbol retriever) are counted once in
the totals and, inside a subtree, once per subtree.
"""

from __future__ import annotations

import torch.nn as nn

__all__ = ["count_params", "model_summary"]


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of unique parameters of ``module`` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for p in module.parameters():
        if trainable_only and not p.requires_grad:
            continue
        seen[id(p)] = p.numel()
    return sum(seen.values())


def _human(n: float) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(int(n))


def model_summary(model: nn.Module, depth: int = 3, title: str | None = None) -> str:
    """The table: one row per module down to ``depth`` (name, type, parameters), then totals.

    Repeated identical sibling rows (e.g. ``blocks.0`` ... ``blocks.23``) are folded into one row
    ``blocks.0-23`` with the per-block count and the multiplier.
    """
    rows: list[tuple[str, str, str]] = []
    _visit(model, "", 1, depth, rows, set())
    total = count_params(model)
    trainable = count_params(model, trainable_only=True)
    w_name = max([len(r[0]) for r in rows] + [20]) + 2
    w_type = max([len(r[1]) for r in rows] + [12]) + 2
    w_cnt = max([len(r[2]) for r in rows] + [10])
    width = w_name + w_type + w_cnt
    lines = [title or type(model).__name__, "=" * width,
             f"{'Layer':<{w_name}}{'Type':<{w_type}}{'Params':>{w_cnt}}", "-" * width]
    lines += [f"{label:<{w_name}}{kind:<{w_type}}{count:>{w_cnt}}" for label, kind, count in rows]
    lines.append("=" * width)
    lines.append(f"Total params: {total:,} ({_human(total)})")
    lines.append(f"Trainable params: {trainable:,}")
    if hasattr(model, "get_num_params"):
        try:
            lines.append(f"get_num_params(): {int(model.get_num_params()):,}")
        except Exception:  # pragma: no cover - model-specific
            pass
    lines.append(f"Size: {total * 4 / 2**20:,.1f} MiB (float32), {total * 2 / 2**20:,.1f} MiB (bfloat16)")
    return "\n".join(lines)


def _visit(mod: nn.Module, prefix: str, level: int, depth: int, rows: list[tuple[str, str, str]],
           seen: set[int]) -> None:
    """Append the rows ``(indented name, type, count)`` of ``mod``'s children, down to ``depth``; ``seen`` holds
    the ids of the tensors already listed (a subtree made only of those is marked shared and not expanded)."""
    children = list(mod.named_children())
    i = 0
    while i < len(children):
        name, child = children[i]
        j = _run_end(children, i)
        full = f"{prefix}.{name}" if prefix else name
        label = full if j == i else f"{prefix}.{name}-{children[j][0]}"
        n = count_params(child)
        ids = {id(p) for p in child.parameters()}
        shared = bool(ids) and ids <= seen  # every tensor already listed in an earlier, non-ancestor row
        times = j - i + 1
        count = f"{n:,}" + (f" x{times}" if times > 1 else "")
        if shared:
            count += " (shared)"
        rows.append(("  " * (level - 1) + label, type(child).__name__, count))
        if level < depth and not shared:
            _visit(child, full, level + 1, depth, rows, seen)
        seen.update(ids)
        i = j + 1


def _run_end(children: list[tuple[str, nn.Module]], i: int) -> int:
    """The last index of the run of same-type, same-size siblings named 0, 1, 2, ... that starts at ``i``."""
    name, child = children[i]
    j = i
    if name.isdigit():
        while (j + 1 < len(children) and children[j + 1][0].isdigit()
               and type(children[j + 1][1]) is type(child)
               and count_params(children[j + 1][1]) == count_params(child)):
            j += 1
    return j
