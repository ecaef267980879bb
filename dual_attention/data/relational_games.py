"""Procedural "Relational Games" image data (after Shanahan et al. 2020, arXiv:1905.10307).

Every image is a ``canvas x canvas`` RGB picture (default 36 x 36) split into a 3 x 3 grid of square cells of
side ``cell = canvas // 3`` (default 12). A cell is either empty (black background) or holds one *sprite*. A
sprite is a (shape, colour) pair: a binary shape mask drawn with numpy inside the cell (1-pixel margin at
12 px), painted in one colour. Two objects are *identical* iff they are the same sprite (same shape and same
colour); identical objects are pixel-identical, distinct sprites differ in at least one pixel.

Cells are numbered row-major, ``k = 3 * row + col`` (row 0 at the top), which is also the patch order of a
ViT patch embedding with ``patch_size=(cell, cell)``: one patch per cell, 9 patches.

Tasks (binary labels; ``1`` = "yes"). Letters name *distinct* sprites, drawn uniformly without replacement
from the sprite set for every image; ``T`` is the top-row object.

``same``
    Three objects in three distinct cells chosen uniformly among the 9; the other 6 cells are empty.
    ``label = 1`` iff two of the three objects are identical. Positives are ``{A, A, B}``, negatives
    ``{A, B, C}`` (three identical objects are never generated).
``between``
    Three objects fill one complete line, a row or a column chosen uniformly among the 6 lines; the other 6
    cells are empty. Read along the line (left to right, or top to bottom) the objects are ``(x0, x1, x2)``.
    ``label = 1`` iff the middle object lies between two identical objects: ``x0 == x2`` and ``x1 != x0``.
    Positives are ``ABA``; negatives are ``AAB``, ``ABB`` or ``ABC`` with probability 1/3 each.
``occurs``
    One object ``T`` in the top row (column uniform), the middle row empty, three pairwise distinct objects
    ``(b0, b1, b2)`` filling the bottom row. ``label = 1`` iff ``T`` occurs in the bottom row (then exactly
    once, at a uniform position). Positives: ``T | T A B`` (T's position permuted); negatives: ``T | A B C``.
``xoccurs``
    Same layout as ``occurs``, but the bottom row may repeat objects. ``label = 1`` iff ``T`` occurs in the
    bottom row *exactly once* ("exclusively occurs"): ``#{j : b_j == T} == 1``. Positives are ``T | T A B`` or
    ``T | T A A`` (prob. 1/2 each, T's position uniform); negatives are ``T | A B C`` (no occurrence, prob.
    1/2) or ``T | T T A`` (two occurrences, prob. 1/2, A's position uniform). Both classes thus contain a
    repeated bottom object with probability 1/2, and half of the negatives contain ``T``, so neither "is there
    a repeat" nor plain "occurs" solves the task.
``match_pattern``
    The top row and the bottom row each hold three objects, the middle row is empty, and the objects of the
    bottom row are all different from those of the top row. The *pattern* of a row ``(x0, x1, x2)`` is its
    equality structure, one of ``AAA, AAB, ABA, ABB, ABC``. ``label = 1`` iff both rows have the same pattern.
    The top pattern is uniform over the 5; for negatives the bottom pattern is uniform over the 4 others.

Class balance: ``generate(task, n, ...)`` returns exactly ``n // 2`` positives and ``n - n // 2`` negatives in
a random order (exactly 50/50 for even ``n``). Everything is a deterministic function of the seed
(``numpy.random.default_rng(seed)``).

Example::

    from dual_attention.data.relational_games import generate, generate_tensors, make_dataset

    images, labels = generate("between", 1000, seed=0)          # uint8 [1000, 36, 36, 3], int64 [1000]
    x, y = generate_tensors("same", 1000, seed=0)               # float32 [1000, 3, 36, 36] in [0, 1], int64
    data = make_dataset("match_pattern", 10_000, 2_000, seed=0, holdout_sprites=True)
    train, test = data["train"], data["test"]                   # torch TensorDatasets of (x, y)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch.utils.data import TensorDataset

__all__ = [
    "TASKS",
    "SHAPE_NAMES",
    "COLOURS",
    "SpriteSet",
    "make_sprite_set",
    "shape_mask",
    "render",
    "split_sprites",
    "generate",
    "generate_tensors",
    "images_to_tensor",
    "make_dataset",
    "save_examples_png",
]

TASKS: tuple[str, ...] = ("same", "between", "occurs", "xoccurs", "match_pattern")

MIN_CANVAS = 24  # cells of 8 px: the smallest size at which all shapes stay distinct and recognisable

# ----------------------------------------------------------------------------------------------------------
# Sprites
# ----------------------------------------------------------------------------------------------------------

# Each shape is a predicate on centred pixel coordinates (y, x) in (-1, 1), y pointing down.
_ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
_SHAPES: dict[str, _ShapeFn] = {
    "square": lambda y, x: np.ones_like(x, dtype=bool),
    "frame": lambda y, x: np.maximum(np.abs(x), np.abs(y)) > 0.55,
    "disc": lambda y, x: x**2 + y**2 <= 1.0,
    "ring": lambda y, x: (x**2 + y**2 <= 1.0) & (x**2 + y**2 >= 0.55**2),
    "triangle": lambda y, x: np.abs(x) <= (y + 1.0) / 2.0 + 0.05,
    "triangle_down": lambda y, x: np.abs(x) <= (1.0 - y) / 2.0 + 0.05,
    "diamond": lambda y, x: np.abs(x) + np.abs(y) <= 1.0,
    "plus": lambda y, x: (np.abs(x) < 0.35) | (np.abs(y) < 0.35),
    "cross": lambda y, x: np.abs(np.abs(x) - np.abs(y)) < 0.3,
    "hourglass": lambda y, x: np.abs(x) <= np.abs(y),
    "stripes": lambda y, x: np.floor((y + 1.0) * 2.5).astype(int) % 2 == 0,
    "checker": lambda y, x: (x > 0) ^ (y > 0),
    "tee": lambda y, x: (y < -0.4) | (np.abs(x) < 0.3),
    "ell": lambda y, x: (x < -0.4) | (y > 0.4),
}
SHAPE_NAMES: tuple[str, ...] = tuple(_SHAPES)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 75),
    "green": (60, 180, 75),
    "blue": (40, 110, 230),
    "yellow": (255, 225, 25),
    "orange": (245, 130, 48),
    "purple": (145, 30, 180),
    "cyan": (70, 240, 240),
    "white": (255, 255, 255),
}


def shape_mask(shape: str, cell: int = 12) -> np.ndarray:
    """Binary mask ``bool [cell, cell]`` of one shape, centred with a margin ``max(1, round(cell / 12))`` px.

    Pixel centres of the inner ``s x s`` square (``s = cell - 2 * margin``) get coordinates
    ``u_i = (2 i + 1 - s) / s`` in (-1, 1), and the shape predicate is evaluated on the grid
    ``(y, x) = (u_i, u_j)``.
    """
    if shape not in _SHAPES:
        raise ValueError(f"shape={shape!r} is not a known shape; allowed values: {SHAPE_NAMES}")
    margin = max(1, round(cell / 12))
    s = cell - 2 * margin
    u = (2.0 * np.arange(s) + 1.0 - s) / s  # exactly antisymmetric: u[s - 1 - i] == -u[i]
    y, x = np.meshgrid(u, u, indexing="ij")  # (s, s)
    mask = np.zeros((cell, cell), dtype=bool)
    mask[margin : margin + s, margin : margin + s] = _SHAPES[shape](y, x)
    return mask


@dataclass(frozen=True, eq=False)
class SpriteSet:
    """A set of ``S`` distinct sprites, each a (shape, colour) pair rendered as a ``cell x cell`` RGB tile.

    Attributes:
        tiles: ``uint8 [S, cell, cell, 3]``, background pixels are 0 (black).
        shape_ids: ``int64 [S]``, index into ``shape_names``.
        colour_ids: ``int64 [S]``, index into ``colour_names``.
        shape_names, colour_names: the vocabularies the ids refer to.
    """

    tiles: np.ndarray
    shape_ids: np.ndarray
    colour_ids: np.ndarray
    shape_names: tuple[str, ...]
    colour_names: tuple[str, ...]

    @property
    def cell(self) -> int:
        """Side of one tile in pixels."""
        return int(self.tiles.shape[1])

    def __len__(self) -> int:
        return int(self.tiles.shape[0])

    @property
    def names(self) -> list[str]:
        """Human-readable names, e.g. ``"red disc"``."""
        pairs = zip(self.shape_ids, self.colour_ids)
        return [f"{self.colour_names[c]} {self.shape_names[s]}" for s, c in pairs]

    @property
    def keys(self) -> list[tuple[str, str]]:
        """``(shape, colour)`` pairs identifying each sprite across sprite sets."""
        return [(self.shape_names[s], self.colour_names[c]) for s, c in zip(self.shape_ids, self.colour_ids)]

    def subset(self, indices: np.ndarray | list[int]) -> SpriteSet:
        """The sprites at ``indices`` (in that order), as a new ``SpriteSet``."""
        idx = np.asarray(indices, dtype=np.int64)
        return SpriteSet(
            tiles=self.tiles[idx].copy(),
            shape_ids=self.shape_ids[idx].copy(),
            colour_ids=self.colour_ids[idx].copy(),
            shape_names=self.shape_names,
            colour_names=self.colour_names,
        )


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name}={value!r} is invalid; allowed values: integers >= {minimum}")
    return int(value)


def _check_canvas(canvas: object) -> int:
    canvas = _check_int("canvas", canvas, MIN_CANVAS)
    if canvas % 3 != 0:
        raise ValueError(
            f"canvas={canvas!r} is invalid; allowed values: multiples of 3 that are >= {MIN_CANVAS} "
            "(24, 27, ..., 36, ...)"
        )
    return canvas


def make_sprite_set(
    canvas: int = 36,
    n_shapes: int | None = None,
    n_colours: int | None = None,
    seed: int = 0,
) -> SpriteSet:
    """All (shape, colour) pairs of ``n_shapes`` shapes and ``n_colours`` colours, as tiles for ``canvas``.

    With the defaults all ``len(SHAPE_NAMES) = 14`` shapes and ``len(COLOURS) = 8`` colours are used, giving
    112 sprites in shape-major order (sprite ``i`` has shape ``i // 8`` and colour ``i % 8``). When fewer
    shapes or colours are asked for, the subset is drawn with ``numpy.random.default_rng(seed)`` (kept in
    canonical order).

    The tile of sprite (s, c) is ``tile[i, j] = colour_c * mask_s[i, j]`` (``mask_s`` from ``shape_mask``), so
    tiles are pairwise distinct and never blank; this is checked.
    """
    canvas = _check_canvas(canvas)
    n_all_shapes, n_all_colours = len(SHAPE_NAMES), len(COLOURS)
    n_shapes = n_all_shapes if n_shapes is None else _check_int("n_shapes", n_shapes, 1)
    n_colours = n_all_colours if n_colours is None else _check_int("n_colours", n_colours, 1)
    if n_shapes > n_all_shapes:
        raise ValueError(f"n_shapes={n_shapes} is invalid; allowed values: 1..{n_all_shapes}")
    if n_colours > n_all_colours:
        raise ValueError(f"n_colours={n_colours} is invalid; allowed values: 1..{n_all_colours}")
    seed = _check_int("seed", seed, 0)
    rng = np.random.default_rng(seed)
    shape_sel = np.sort(rng.permutation(n_all_shapes)[:n_shapes])  # all of them (sorted) by default
    colour_sel = np.sort(rng.permutation(n_all_colours)[:n_colours])

    cell = canvas // 3
    masks = np.stack([shape_mask(SHAPE_NAMES[s], cell) for s in shape_sel])  # (n_shapes, cell, cell)
    rgb = np.array([COLOURS[name] for name in COLOURS], dtype=np.uint8)[colour_sel]  # (n_colours, 3)
    # tiles[s, c] = mask_s * colour_c, then flatten (s, c) shape-major
    tiles = masks[:, None, :, :, None].astype(np.uint8) * rgb[None, :, None, None, :]  # (ns, nc, c, c, 3)
    tiles = tiles.reshape(n_shapes * n_colours, cell, cell, 3)
    shape_ids, colour_ids = np.meshgrid(shape_sel, colour_sel, indexing="ij")

    flat = tiles.reshape(len(tiles), -1)
    if not flat.any(axis=1).all() or len(np.unique(flat, axis=0)) != len(flat):
        raise ValueError(f"canvas={canvas} is too small: some sprite tiles are blank or coincide")
    return SpriteSet(
        tiles=tiles,
        shape_ids=shape_ids.reshape(-1).astype(np.int64),
        colour_ids=colour_ids.reshape(-1).astype(np.int64),
        shape_names=SHAPE_NAMES,
        colour_names=tuple(COLOURS),
    )


def split_sprites(
    sprites: SpriteSet, holdout: float | int = 0.25, seed: int = 0
) -> tuple[SpriteSet, SpriteSet]:
    """Split a sprite set into disjoint ``(train_sprites, test_sprites)``.

    ``holdout`` is the number of held-out sprites (int) or their fraction of the set (float in (0, 1),
    rounded). The held-out sprites are drawn uniformly without replacement with ``default_rng(seed)``. Both
    parts must hold at least 6 sprites (what ``match_pattern`` needs).
    """
    if not isinstance(sprites, SpriteSet):
        raise TypeError(f"sprites must be a SpriteSet, got {type(sprites).__name__}")
    total = len(sprites)
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float, np.integer, np.floating)):
        raise TypeError(f"holdout must be an int or a float, got {holdout!r}")
    if isinstance(holdout, (float, np.floating)):
        if not 0.0 < holdout < 1.0:
            raise ValueError(
                f"holdout={holdout!r} is invalid; allowed values: a fraction in (0, 1) or an int count"
            )
        n_test = int(round(holdout * total))
    else:
        n_test = int(holdout)
    need = _N_OBJECTS["match_pattern"]
    if n_test < need or total - n_test < need:
        raise ValueError(
            f"holdout={holdout!r} leaves {total - n_test} train and {n_test} test sprites out of {total}; "
            f"allowed values: both parts need >= {need} sprites"
        )
    perm = np.random.default_rng(_check_int("seed", seed, 0)).permutation(total)
    return sprites.subset(np.sort(perm[n_test:])), sprites.subset(np.sort(perm[:n_test]))


# ----------------------------------------------------------------------------------------------------------
# Task tables
# ----------------------------------------------------------------------------------------------------------
# An image is written as "slots": k cells (chosen per task) and a pattern of k indices into m distinct sprites
# (object "letters" 0=A/T, 1, 2, ...). Positives draw their pattern uniformly from _POS[task], negatives from
# _NEG[task]; repeated rows weight a case.

_ROW_PATTERNS = {"AAA": (0, 0, 0), "AAB": (0, 0, 1), "ABA": (0, 1, 0), "ABB": (0, 1, 1), "ABC": (0, 1, 2)}

_POS: dict[str, list[tuple[int, ...]]] = {
    "same": [(0, 0, 1)],
    "between": [(0, 1, 0)],
    # slots: (top, b0, b1, b2); letter 0 is T
    "occurs": [(0, 0, 1, 2), (0, 1, 0, 2), (0, 1, 2, 0)],
    "xoccurs": [(0, 0, 1, 2), (0, 1, 0, 2), (0, 1, 2, 0), (0, 0, 1, 1), (0, 1, 0, 1), (0, 1, 1, 0)],
    # slots: (t0, t1, t2, b0, b1, b2); bottom letters are shifted by 3 so the rows share no object
    "match_pattern": [p + tuple(i + 3 for i in p) for p in _ROW_PATTERNS.values()],
}
_NEG: dict[str, list[tuple[int, ...]]] = {
    "same": [(0, 1, 2)],
    "between": [(0, 0, 1), (0, 1, 1), (0, 1, 2)],
    "occurs": [(0, 1, 2, 3)],
    "xoccurs": [(0, 1, 2, 3)] * 3 + [(0, 0, 0, 1), (0, 0, 1, 0), (0, 1, 0, 0)],
    "match_pattern": [
        p + tuple(i + 3 for i in q) for p in _ROW_PATTERNS.values() for q in _ROW_PATTERNS.values() if p != q
    ],
}
_N_OBJECTS = {task: 1 + max(max(row) for row in _POS[task] + _NEG[task]) for task in TASKS}

# the 6 lines of the grid (3 rows, then 3 columns), as cell indices read left-to-right / top-to-bottom
_LINES = np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8]])


def _slot_cells(task: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Cell index of every slot, ``int64 [n, k]``."""
    if task == "same":
        return np.argsort(rng.random((n, 9)), axis=1)[:, :3]  # 3 distinct uniform cells
    if task == "between":
        return _LINES[rng.integers(0, 6, n)]
    if task in ("occurs", "xoccurs"):
        top = rng.integers(0, 3, n)[:, None]  # column of T in row 0
        return np.concatenate([top, np.broadcast_to(np.arange(6, 9), (n, 3))], axis=1)
    return np.broadcast_to(np.array([0, 1, 2, 6, 7, 8]), (n, 6))  # match_pattern


def _distinct_sprites(n: int, m: int, n_sprites: int, rng: np.random.Generator) -> np.ndarray:
    """``int64 [n, m]``: per row, an ordered uniform draw of m distinct sprites out of ``n_sprites``.

    Each sprite gets an i.i.d. uniform key; the indices of the m smallest keys, sorted by key, are a uniformly
    random ordered m-subset (``argpartition`` finds them in O(S), the final sort only touches m columns).
    """
    keys = rng.random((n, n_sprites))  # (n, S)
    smallest = np.argpartition(keys, m - 1, axis=1)[:, :m]  # (n, m), unordered
    order = np.argsort(np.take_along_axis(keys, smallest, axis=1), axis=1)  # (n, m)
    return np.take_along_axis(smallest, order, axis=1)


def _validate_task(task: object) -> str:
    if not isinstance(task, str) or task not in TASKS:
        raise ValueError(f"task={task!r} is not a valid task; allowed values: {TASKS}")
    return str(task)


def render(grid: np.ndarray, sprites: SpriteSet) -> np.ndarray:
    """Paint grids: ``grid`` int ``[n, 9]`` of sprite indices (-1 = empty) -> ``uint8 [n, 3c, 3c, 3]``."""
    c = sprites.cell
    tiles = np.concatenate([np.zeros((1, c, c, 3), np.uint8), sprites.tiles])  # index 0 = blank cell
    n = grid.shape[0]
    cells = tiles[grid + 1]  # (n, 9, c, c, 3)
    # (n, row, col, y, x, 3) -> (n, row, y, col, x, 3) -> (n, 3c, 3c, 3)
    return cells.reshape(n, 3, 3, c, c, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, 3 * c, 3 * c, 3)


def generate(
    task: str,
    n: int,
    seed: int = 0,
    sprites: SpriteSet | None = None,
    canvas: int = 36,
    return_grid: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` labelled images of ``task`` (see the module docstring for the exact task definitions).

    Args:
        task: one of ``TASKS``.
        n: number of images (>= 1); exactly ``n // 2`` have label 1.
        seed: non-negative int for ``numpy.random.default_rng``; same seed -> identical output.
        sprites: the objects to use (default ``make_sprite_set(canvas)``); tile size must be ``canvas // 3``.
        canvas: image side in pixels, a multiple of 3 and >= 24.
        return_grid: also return the generating grid ``int64 [n, 9]`` (sprite index per cell, -1 = empty).

    Returns:
        ``images`` uint8 ``[n, canvas, canvas, 3]`` (HWC, background 0), ``labels`` int64 ``[n]`` in {0, 1}
        [, ``grid``].

    Sampling, per image: label ``y`` (balanced, shuffled); a pattern row drawn uniformly from the task's
    positive (``y = 1``) or negative table; ``m`` distinct sprites (uniform, ordered); the task's slot cells.
    Then ``grid[cell_j] = sprite[pattern_j]`` and the image is the grid of tiles.
    """
    task = _validate_task(task)
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    canvas = _check_canvas(canvas)
    if sprites is None:
        sprites = make_sprite_set(canvas)
    elif not isinstance(sprites, SpriteSet):
        raise TypeError(f"sprites must be a SpriteSet or None, got {type(sprites).__name__}")
    if sprites.cell * 3 != canvas:
        raise ValueError(
            f"sprites has {sprites.cell}px tiles but canvas={canvas}; "
            f"allowed values: canvas == 3 * {sprites.cell}"
        )
    m = _N_OBJECTS[task]
    if len(sprites) < m:
        raise ValueError(f"sprites has {len(sprites)} sprites; task={task!r} needs at least {m}")

    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2] = 1
    labels = rng.permutation(labels)

    pos, neg = np.array(_POS[task]), np.array(_NEG[task])  # (P, k), (N, k)
    pattern = np.where(
        labels[:, None] == 1,
        pos[rng.integers(0, len(pos), n)],
        neg[rng.integers(0, len(neg), n)],
    )  # (n, k)
    objects = _distinct_sprites(n, m, len(sprites), rng)  # (n, m)
    cells = _slot_cells(task, n, rng)  # (n, k)

    grid = np.full((n, 9), -1, dtype=np.int64)
    grid[np.arange(n)[:, None], cells] = np.take_along_axis(objects, pattern, axis=1)
    images = render(grid, sprites)
    return (images, labels, grid) if return_grid else (images, labels)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """``uint8 [n, H, W, 3]`` -> ``float32 [n, 3, H, W]``, ``x = image / 255`` (vision-model layout)."""
    import torch

    ok = isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
    if not ok or images.shape[-1] != 3:
        desc = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 array [n, H, W, 3], got {desc}")
    nchw = np.ascontiguousarray(images.transpose(0, 3, 1, 2))  # (n, 3, H, W) uint8
    return torch.from_numpy(nchw).float().div_(255.0)


def generate_tensors(
    task: str, n: int, seed: int = 0, sprites: SpriteSet | None = None, canvas: int = 36
) -> tuple[torch.Tensor, torch.Tensor]:
    """``generate`` as torch tensors: ``x`` float32 ``[n, 3, canvas, canvas]`` in [0, 1], ``y`` int64 ``[n]``.

    Feed ``x`` to e.g. ``VisionTransformer(image_shape=(3, 36, 36), patch_size=(12, 12), num_classes=2,
    ...)``: patch ``k`` is cell ``k`` of the 3 x 3 grid.
    """
    import torch

    images, labels = generate(task, n, seed=seed, sprites=sprites, canvas=canvas)
    return images_to_tensor(images), torch.from_numpy(labels)


def make_dataset(
    task: str,
    n_train: int,
    n_test: int,
    seed: int = 0,
    holdout_sprites: bool = False,
    holdout: float | int = 0.25,
    canvas: int = 36,
    sprites: SpriteSet | None = None,
) -> dict[str, TensorDataset]:
    """Train and test splits of one task as ``{"train": TensorDataset(x, y), "test": TensorDataset(x, y)}``.

    ``x`` is float32 ``[n, 3, canvas, canvas]`` in [0, 1] and ``y`` int64 ``[n]``. Three independent seeds are
    derived from ``seed`` by ``numpy.random.SeedSequence(seed).generate_state(3)``: ``(train_seed, test_seed,
    split_seed)``, so the test images come from a different random stream than the training images.

    With ``holdout_sprites=True`` the sprite set (default ``make_sprite_set(canvas)``) is split by
    ``split_sprites(sprites, holdout, seed=split_seed)``: training images use only the train sprites and test
    images only the held-out sprites, so every test object is unseen during training. Without it, both splits
    use all sprites (an individual test image may then, rarely, coincide with a training image).
    """
    import torch
    from torch.utils.data import TensorDataset

    task = _validate_task(task)
    n_train = _check_int("n_train", n_train, 1)
    n_test = _check_int("n_test", n_test, 1)
    seed = _check_int("seed", seed, 0)
    if not isinstance(holdout_sprites, bool):
        raise TypeError(f"holdout_sprites must be a bool, got {holdout_sprites!r}")
    canvas = _check_canvas(canvas)
    if sprites is None:
        sprites = make_sprite_set(canvas)
    train_seed, test_seed, split_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(3))
    train_sprites = test_sprites = sprites
    if holdout_sprites:
        train_sprites, test_sprites = split_sprites(sprites, holdout, seed=split_seed)

    out = {}
    for name, size, stream_seed, split_set in (
        ("train", n_train, train_seed, train_sprites),
        ("test", n_test, test_seed, test_sprites),
    ):
        images, labels = generate(task, size, seed=stream_seed, sprites=split_set, canvas=canvas)
        out[name] = TensorDataset(images_to_tensor(images), torch.from_numpy(labels))
    return out


def save_examples_png(
    path: str = "docs/images/relational_games_examples.png", n_per_class: int = 3, seed: int = 0
) -> str:
    """Save a contact sheet: one row per task, ``n_per_class`` positives then negatives. Returns ``path``.

    Needs matplotlib (the ``plot`` extra). Faint grid lines mark the 3 x 3 cells (not part of the data).
    """
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_per_class = _check_int("n_per_class", n_per_class, 1)
    cols = 2 * n_per_class
    fig, axes = plt.subplots(len(TASKS), cols, figsize=(1.45 * cols + 1.0, 1.55 * len(TASKS)), squeeze=False)
    for r, task in enumerate(TASKS):
        images, labels = generate(task, 8 * n_per_class, seed=seed)
        pos, neg = np.flatnonzero(labels == 1)[:n_per_class], np.flatnonzero(labels == 0)[:n_per_class]
        order = np.concatenate([pos, neg])
        for j, idx in enumerate(order):
            ax = axes[r, j]
            ax.imshow(images[idx], interpolation="nearest")
            side = images.shape[1]
            for t in (side / 3 - 0.5, 2 * side / 3 - 0.5):
                ax.axhline(t, color="0.35", lw=0.5)
                ax.axvline(t, color="0.35", lw=0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"label {labels[idx]}", fontsize=8, color="tab:green" if labels[idx] else "tab:red")
        axes[r, 0].set_ylabel(task, fontsize=10)
    fig.suptitle("Relational games (procedural): label 1 (left) / label 0 (right)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
