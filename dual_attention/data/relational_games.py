"""Procedural *Relational Games* images, rebuilt after the benchmark of Shanahan et al. (2020, arXiv:1905.10307).

An image is 36 x 36 RGB, a 3 x 3 grid of 12 x 12 cells; a cell is empty (black) or holds one *object*. Cells are
numbered row-major, ``k = 3 * row + col``, which is also the patch order of a ViT with 12 x 12 patches.

Object sets (``OBJECT_SETS``), as in the benchmark, each a shape family times a colour palette:

``pentominoes`` (training and the in-distribution test)
    every *fixed* pentomino (each rotation / reflection counts as its own shape) whose bounding box fits 3 x 3
    unit squares: F, P, T, U, V, W, X, Z in all their orientations, 37 shapes. A unit square is 3 x 3 px, so a
    shape covers at most 9 x 9 px, centred in its cell; it is painted in one colour.
``hexominoes`` (out-of-distribution test 1)
    every fixed hexomino fitting 3 x 3 units, drawn the same way (52 shapes).
``stripes`` (out-of-distribution test 2)
    a 9 x 9 px square of three vertical 3-px stripes: the outer two in one colour, the middle one in another.

Colours come from ``PALETTE``: 12 hues x 2 brightness levels = 24 colours. An object is ``(shape, colour,
colour2)`` (``colour2`` only for stripes); two objects are *the same* iff their images are identical, i.e. same
shape (orientation included) and same colour(s). Distinct objects are pixel-distinct, which the tests check.

Colours within an image are shared often, as in the benchmark's images: every image draws a base colour, and
each distinct object of the image takes it with probability ``COLOUR_SHARE = 1/2`` (else a uniform colour), so
telling objects apart usually needs the shape, not just the colour.

Tasks (label ``1`` = the relation holds). Letters name distinct objects of one image, ``T`` is the top object:

``same``      two objects in two distinct cells (uniform among the 9); holds iff they are identical.
              Positives ``AA``, negatives ``AB``.
``occurs``    top row: ``T`` in a uniform column; middle row empty; bottom row: three objects.
              Holds iff ``T`` occurs in the bottom row. Positives ``T | T A B`` (``T``'s position uniform),
              negatives ``T | A B C``.
``xoccurs``   layout of ``occurs``; holds iff ``T`` occurs in the bottom row *exactly once*. Positives as for
              ``occurs``; negatives ``T | A B C`` (no occurrence) with probability ``1 - xoccurs_multi`` and
              ``T | T T A`` (two occurrences, ``A``'s position uniform) with probability ``xoccurs_multi``
              (default 1/2), so that the label is not the label of ``occurs``.
``between``   three objects fill one line (a row or a column, uniform among the 6); holds iff the two outer
              objects are identical. Positives ``A B A``; negatives ``A B C``, ``A A B`` or ``A B B`` (1/3 each).
``match_pattern``  rows 1 and 3 hold three objects each (no object shared between the rows); holds iff both rows
              have the same equality pattern (``AAA, AAB, ABA, ABB, ABC``). The top pattern is uniform; for
              negatives the bottom pattern is uniform over the 4 others.

``generate(task, n, seed, objects)`` returns exactly ``n // 2`` positives, shuffled; everything is a
deterministic function of ``seed``.

Example::

    from dual_attention.data.relational_games import generate, make_splits

    images, labels = generate("xoccurs", 1000, seed=0)                 # uint8 [1000, 36, 36, 3], int64 [1000]
    splits = make_splits("same", n_train=2500, n_test=5000, seed=0)    # train / in_distribution / hexominoes / stripes
    x, y = splits["train"]                                             # float32 [2500, 3, 36, 36], int64 [2500]
"""

from __future__ import annotations

import colorsys
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "TASKS",
    "OBJECT_SETS",
    "OOD_SETS",
    "PALETTE",
    "COLOUR_SHARE",
    "CELL",
    "ObjectSet",
    "polyominoes",
    "object_set",
    "generate",
    "images_to_tensor",
    "make_splits",
    "save_examples_png",
]

TASKS: tuple[str, ...] = ("same", "occurs", "xoccurs", "between", "match_pattern")
OBJECT_SETS: tuple[str, ...] = ("pentominoes", "hexominoes", "stripes")
OOD_SETS: tuple[str, ...] = ("hexominoes", "stripes")
CELL = 12  # px per grid cell
UNIT = 3  # px per polyomino unit square
COLOUR_SHARE = 0.5


def _palette() -> np.ndarray:
    """``uint8 [24, 3]``: 12 hues (HSV, saturation 0.75) at value 1.0 and at value 0.6."""
    cols = [colorsys.hsv_to_rgb(h / 12, 0.75, v) for v in (1.0, 0.6) for h in range(12)]
    return np.round(np.array(cols) * 255).astype(np.uint8)


PALETTE: np.ndarray = _palette()


def polyominoes(k: int, box: int = 3) -> list[np.ndarray]:
    """Every fixed polyomino of ``k`` unit squares inside a ``box x box`` grid, as ``bool [box, box]`` masks.

    Fixed: two shapes are the same only if they coincide after a translation (rotations and reflections are
    different shapes). Each is moved to the top-left corner; the list is sorted by the masks' bytes.
    """
    found = {}
    for cells in itertools.combinations(range(box * box), k):
        rc = np.array([divmod(c, box) for c in cells])
        seen, todo = {cells[0]}, [cells[0]]  # flood fill over 4-neighbours
        while todo:
            r, c = divmod(todo.pop(), box)
            for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
                nb = (r + dr) * box + (c + dc)
                if 0 <= r + dr < box and 0 <= c + dc < box and nb in cells and nb not in seen:
                    seen.add(nb)
                    todo.append(nb)
        if len(seen) != k:
            continue
        mask = np.zeros((box, box), dtype=bool)
        rc -= rc.min(axis=0)
        mask[rc[:, 0], rc[:, 1]] = True
        found[mask.tobytes()] = mask
    return [found[key] for key in sorted(found)]


def _centred(unit_mask: np.ndarray) -> np.ndarray:
    """Unit-square mask -> ``bool [CELL, CELL]`` pixel mask, the bounding box centred (rounded down)."""
    rows, cols = np.nonzero(unit_mask)
    h, w = rows.max() + 1, cols.max() + 1
    px = np.kron(unit_mask[:h, :w], np.ones((UNIT, UNIT), dtype=bool))  # (h*UNIT, w*UNIT)
    out = np.zeros((CELL, CELL), dtype=bool)
    top, left = (CELL - h * UNIT) // 2, (CELL - w * UNIT) // 2
    out[top : top + h * UNIT, left : left + w * UNIT] = px
    return out


@dataclass(frozen=True, eq=False)
class ObjectSet:
    """A family of objects: ``shape`` masks painted with palette colours.

    Object ``(s, a, b)`` is the tile ``mask_a[s] * PALETTE[a] + mask_b[s] * PALETTE[b]``; ``mask_b`` is empty for
    single-colour sets (then ``b`` is ignored and stored as ``-1``), ``two_colour`` sets need ``a != b``.
    """

    name: str
    mask_a: np.ndarray  # bool [S, CELL, CELL]
    mask_b: np.ndarray  # bool [S, CELL, CELL]
    two_colour: bool

    @property
    def n_shapes(self) -> int:
        return int(self.mask_a.shape[0])

    def __len__(self) -> int:
        """Number of distinct objects."""
        c = len(PALETTE)
        return self.n_shapes * (c * (c - 1) if self.two_colour else c)

    def tiles(self, objs: np.ndarray) -> np.ndarray:
        """``int [..., 3]`` objects ``(s, a, b)`` -> ``uint8 [..., CELL, CELL, 3]`` tiles."""
        s, a, b = objs[..., 0], objs[..., 1], objs[..., 2]
        tile = self.mask_a[s][..., None] * PALETTE[a][..., None, None, :]
        if self.two_colour:
            tile = tile + self.mask_b[s][..., None] * PALETTE[b][..., None, None, :]
        return tile.astype(np.uint8)

    def all_objects(self) -> np.ndarray:
        """``int64 [len(self), 3]``: every object once."""
        c = len(PALETTE)
        rows = [(s, a, b if self.two_colour else -1) for s in range(self.n_shapes) for a in range(c)
                for b in (range(c) if self.two_colour else [-1]) if not (self.two_colour and a == b)]
        return np.array(rows, dtype=np.int64)


def object_set(name: str) -> ObjectSet:
    """The object set ``name`` (one of ``OBJECT_SETS``)."""
    if name == "stripes":
        outer = np.zeros((1, CELL, CELL), dtype=bool)
        middle = np.zeros_like(outer)
        outer[0, 1:10, 1:4] = outer[0, 1:10, 7:10] = True  # 9 x 9 px square at offset 1, stripes 3 px wide
        middle[0, 1:10, 4:7] = True
        return ObjectSet(name, outer, middle, two_colour=True)
    if name in ("pentominoes", "hexominoes"):
        masks = np.stack([_centred(m) for m in polyominoes(5 if name == "pentominoes" else 6)])
        return ObjectSet(name, masks, np.zeros_like(masks), two_colour=False)
    raise ValueError(f"object set {name!r} is unknown; allowed values: {', '.join(OBJECT_SETS)}")


# ----------------------------------------------------------------------------------------------------------
# Task tables: an image is k slots (cells chosen per task) holding letters, indices into m distinct objects.
# Positives draw their pattern uniformly from _POS[task], negatives from _NEG[task].
# ----------------------------------------------------------------------------------------------------------

_ROW_PATTERNS = ((0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 1, 2))
_OCCURS_POS = [(0, 0, 1, 2), (0, 1, 0, 2), (0, 1, 2, 0)]  # slots (top, b0, b1, b2), letter 0 = T
_POS: dict[str, list[tuple[int, ...]]] = {
    "same": [(0, 0)],
    "occurs": _OCCURS_POS,
    "xoccurs": _OCCURS_POS,
    "between": [(0, 1, 0)],
    # slots (t0, t1, t2, b0, b1, b2); bottom letters shifted by 3 so that the rows share no object
    "match_pattern": [p + tuple(i + 3 for i in p) for p in _ROW_PATTERNS],
}
_NEG: dict[str, list[tuple[int, ...]]] = {
    "same": [(0, 1)],
    "occurs": [(0, 1, 2, 3)],
    "xoccurs": [(0, 1, 2, 3)],  # plus the two-occurrence table _XOCCURS_MULTI, mixed in by `xoccurs_multi`
    "between": [(0, 1, 2), (0, 0, 1), (0, 1, 1)],
    "match_pattern": [p + tuple(i + 3 for i in q) for p in _ROW_PATTERNS for q in _ROW_PATTERNS if p != q],
}
_XOCCURS_MULTI = [(0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]
_N_LETTERS = {"same": 2, "occurs": 4, "xoccurs": 4, "between": 3, "match_pattern": 6}
# the 6 lines of the grid (3 rows, then 3 columns), read left-to-right / top-to-bottom
_LINES = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8]])


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name}={value!r} is invalid; allowed values: integers >= {minimum}")
    return int(value)


def _check_task(task: object) -> str:
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"task={task!r} is not a valid task; allowed values: {', '.join(TASKS)}")
    return task


def _slot_cells(task: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Cell index of every slot, ``int64 [n, k]``."""
    if task == "same":
        return np.argsort(rng.random((n, 9)), axis=1)[:, :2]  # 2 distinct uniform cells
    if task == "between":
        return _LINES[rng.integers(0, 6, n)]
    if task in ("occurs", "xoccurs"):
        top = rng.integers(0, 3, n)[:, None]  # column of T in row 0
        return np.concatenate([top, np.broadcast_to(np.arange(6, 9), (n, 3))], axis=1)
    return np.broadcast_to(np.array([0, 1, 2, 6, 7, 8]), (n, 6))  # match_pattern


def _draw_objects(objs: ObjectSet, n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """``int64 [n, m, 3]``: per image m pairwise distinct objects ``(shape, colour, colour2)``.

    Per image a base colour; each object takes it with probability ``COLOUR_SHARE``, else a uniform colour
    (``colour2`` of two-colour objects: uniform among the other colours); shapes are uniform. Objects that
    repeat an earlier one of the same image are redrawn until all are distinct.
    """
    c = len(PALETTE)
    base = rng.integers(0, c, (n, 1))
    out = np.empty((n, m, 3), dtype=np.int64)
    redo = np.ones((n, m), dtype=bool)
    while redo.any():
        k = int(redo.sum())
        shape = rng.integers(0, objs.n_shapes, k)
        colour = np.where(rng.random(k) < COLOUR_SHARE, np.broadcast_to(base, (n, m))[redo], rng.integers(0, c, k))
        colour2 = (colour + rng.integers(1, c, k)) % c if objs.two_colour else np.full(k, -1)
        out[redo] = np.stack([shape, colour, colour2], axis=1)
        key = (out[..., 0] * c + out[..., 1]) * c + out[..., 2]  # (n, m) unique id per object
        same = key[:, :, None] == key[:, None, :]  # (n, m, m)
        redo = np.triu(same, k=1).any(axis=1)  # an object equal to an earlier one is redrawn
    return out


def render(grid: np.ndarray, objs: ObjectSet) -> np.ndarray:
    """``grid`` int ``[n, 9, 3]`` of objects (shape -1 = empty cell) -> ``uint8 [n, 36, 36, 3]``."""
    n = grid.shape[0]
    empty = grid[..., 0] < 0  # (n, 9)
    cells = objs.tiles(np.where(empty[..., None], 0, grid))  # (n, 9, CELL, CELL, 3)
    cells[empty] = 0
    # (n, row, col, y, x, 3) -> (n, row, y, col, x, 3) -> (n, 36, 36, 3)
    return cells.reshape(n, 3, 3, CELL, CELL, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, 3 * CELL, 3 * CELL, 3)


def generate(
    task: str,
    n: int,
    seed: int = 0,
    objects: str = "pentominoes",
    xoccurs_multi: float = 0.5,
    return_grid: bool = False,
):
    """``n`` labelled images of ``task`` drawn with the objects of ``objects`` (see the module docstring).

    Returns ``images`` uint8 ``[n, 36, 36, 3]`` and ``labels`` int64 ``[n]`` (exactly ``n // 2`` ones)
    [and ``grid`` int64 ``[n, 9, 3]``: the object ``(shape, colour, colour2)`` of each cell, shape -1 = empty].
    ``xoccurs_multi`` is the share of ``xoccurs`` negatives in which ``T`` occurs twice (the rest: never).
    """
    task = _check_task(task)
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    objs = object_set(objects)
    if not (isinstance(xoccurs_multi, (int, float)) and 0.0 <= xoccurs_multi <= 1.0):
        raise ValueError(f"xoccurs_multi={xoccurs_multi!r} is invalid; allowed values: a number in [0, 1]")
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) < n // 2).astype(np.int64)

    pos, neg = np.array(_POS[task]), np.array(_NEG[task])  # (P, k), (N, k)
    pattern = np.where(labels[:, None] == 1, pos[rng.integers(0, len(pos), n)], neg[rng.integers(0, len(neg), n)])
    if task == "xoccurs":
        multi = (labels == 0) & (rng.random(n) < xoccurs_multi)
        pattern[multi] = np.array(_XOCCURS_MULTI)[rng.integers(0, 3, int(multi.sum()))]
    drawn = _draw_objects(objs, n, _N_LETTERS[task], rng)  # (n, m, 3)
    cells = _slot_cells(task, n, rng)  # (n, k)

    grid = np.full((n, 9, 3), -1, dtype=np.int64)
    grid[np.arange(n)[:, None], cells] = np.take_along_axis(drawn, pattern[..., None], axis=1)
    images = render(grid, objs)
    return (images, labels, grid) if return_grid else (images, labels)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8 [n, H, W, 3]`` -> ``float32 [n, 3, H, W]``, ``x = image / 255`` (vision-model layout)."""
    import torch

    ok = isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
    if not ok or images.shape[-1] != 3:
        desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 array [n, H, W, 3], got {desc}")
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)


def make_splits(
    task: str, n_train: int, n_test: int, seed: int = 0, test_seed: int = 0, xoccurs_multi: float = 0.5
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Training images and the three test sets of one task, as ``{split: (x float32 [n,3,36,36], y int64 [n])}``.

    Splits: ``train`` (``n_train`` pentomino images from ``seed``), ``in_distribution`` (``n_test`` new
    pentomino images), ``hexominoes`` and ``stripes`` (``n_test`` images each of objects never seen in
    training). The test sets depend on ``test_seed`` only, so every seed, size and model is scored on the same
    test images. Streams: ``numpy.random.SeedSequence([seed, 0])`` for training,
    ``SeedSequence([test_seed, 1 + i])`` for the i-th test set, so no two splits share a random stream.
    """
    import torch

    _check_task(task)
    for name, v, lo in (("n_train", n_train, 1), ("n_test", n_test, 1), ("seed", seed, 0), ("test_seed", test_seed, 0)):
        _check_int(name, v, lo)

    def stream(*key: int) -> int:
        return int(np.random.SeedSequence(list(key)).generate_state(1)[0])

    plan = [("train", "pentominoes", n_train, stream(seed, 0))]
    plan += [(split, objs, n_test, stream(test_seed, 1 + i))
             for i, (split, objs) in enumerate([("in_distribution", "pentominoes"), ("hexominoes", "hexominoes"),
                                                ("stripes", "stripes")])]
    out = {}
    for split, objs, size, s in plan:
        images, labels = generate(task, size, seed=s, objects=objs, xoccurs_multi=xoccurs_multi)
        out[split] = (images_to_tensor(images), torch.from_numpy(labels))
    return out


def save_examples_png(path: str = "docs/images/relational_games_examples.png", seed: int = 0) -> str:
    """Contact sheet: one row per task; 2 positives and 2 negatives of each object set. Returns ``path``.

    Needs matplotlib (the ``plot`` extra). Faint lines mark the 3 x 3 cells (not part of the data).
    """
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [(objs, lab) for objs in OBJECT_SETS for lab in (1, 1, 0, 0)]
    fig, axes = plt.subplots(len(TASKS), len(cols), figsize=(1.05 * len(cols) + 0.8, 1.2 * len(TASKS)),
                             squeeze=False)
    for r, task in enumerate(TASKS):
        for objs in OBJECT_SETS:
            images, labels = generate(task, 16, seed=seed, objects=objs)
            picks = list(np.flatnonzero(labels == 1)[:2]) + list(np.flatnonzero(labels == 0)[:2])
            for j, idx in enumerate(picks):
                ax = axes[r, OBJECT_SETS.index(objs) * 4 + j]
                ax.imshow(images[idx], interpolation="nearest")
                for t in (CELL - 0.5, 2 * CELL - 0.5):
                    ax.axhline(t, color="0.3", lw=0.4)
                    ax.axvline(t, color="0.3", lw=0.4)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{objs}\nlabel {labels[idx]}" if j == 0 else f"label {labels[idx]}", fontsize=7)
        axes[r, 0].set_ylabel(task, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
