"""Tests for dual_attention.data.relational_games.

The central check is an independent labeller: it reads every image back from its pixels only (a 12 x 12 cell
is empty when all black, otherwise the object is its exact bytes; two objects are the same iff their bytes are
equal), checks the task's layout, and recomputes the label with the benchmark's rule written plainly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dual_attention.data import relational_games as rg
from dual_attention.data.relational_games import OBJECT_SETS, TASKS, generate, images_to_tensor, make_splits

N_CHECK = 300  # images per (task, object set) for the labeller check
EMPTY = None


def decode(image: np.ndarray) -> list[list[bytes | None]]:
    """Pixels -> 3 x 3 grid of cell contents (the cell's bytes, or None for an all-black cell)."""
    c = image.shape[0] // 3
    return [[None if not (cell := image[r * c:(r + 1) * c, k * c:(k + 1) * c]).any() else cell.tobytes()
             for k in range(3)] for r in range(3)]


def _count(row) -> int:
    return sum(v is not EMPTY for v in row)


def _pattern(row) -> tuple[int, ...]:
    """Equality structure of a row: index of the first occurrence of each element, e.g. ABA -> (0, 1, 0)."""
    return tuple(row.index(v) for v in row)


def label_same(g) -> int:
    objs = [v for row in g for v in row if v is not EMPTY]
    assert len(objs) == 2
    return int(objs[0] == objs[1])


def _top_and_bottom(g):
    assert _count(g[0]) == 1 and _count(g[1]) == 0 and _count(g[2]) == 3
    return next(v for v in g[0] if v is not EMPTY), g[2]


def label_occurs(g) -> int:
    top, bottom = _top_and_bottom(g)
    return int(top in bottom)


def label_xoccurs(g) -> int:
    top, bottom = _top_and_bottom(g)
    return int(bottom.count(top) == 1)


def label_between(g) -> int:
    assert sum(_count(row) for row in g) == 3
    lines = [list(row) for row in g] + [[g[r][c] for r in range(3)] for c in range(3)]
    full = [line for line in lines if _count(line) == 3]
    assert len(full) == 1, "the three objects fill exactly one row or column"
    return int(full[0][0] == full[0][2])


def label_match_pattern(g) -> int:
    assert _count(g[0]) == 3 and _count(g[1]) == 0 and _count(g[2]) == 3
    assert not set(g[0]) & set(g[2]), "the two rows share no object"
    return int(_pattern(g[0]) == _pattern(g[2]))


LABELLERS = {"same": label_same, "occurs": label_occurs, "xoccurs": label_xoccurs, "between": label_between,
             "match_pattern": label_match_pattern}


@pytest.fixture(scope="module")
def tiles() -> dict[str, set[bytes]]:
    """Every object's tile bytes, per object set."""
    out = {}
    for name in OBJECT_SETS:
        objs = rg.object_set(name)
        out[name] = {t.tobytes() for t in objs.tiles(objs.all_objects())}
    return out


def test_labellers_cover_all_tasks():
    assert set(LABELLERS) == set(TASKS)


@pytest.mark.parametrize("objects", OBJECT_SETS)
@pytest.mark.parametrize("task", TASKS)
def test_labels_match_independent_labeller(task, objects, tiles):
    images, labels = generate(task, N_CHECK, seed=3, objects=objects)
    for img, y in zip(images, labels):
        g = decode(img)
        assert all(v in tiles[objects] for row in g for v in row if v is not EMPTY), "unknown cell content"
        assert LABELLERS[task](g) == y


def test_labeller_can_fail():
    """Swapping one object of a positive 'same' image for another object flips the labeller's verdict."""
    images, labels = generate("same", 20, seed=0)
    img = images[np.flatnonzero(labels == 1)[0]].copy()
    cells = [(r, c) for r in range(3) for c in range(3) if img[12 * r:12 * r + 12, 12 * c:12 * c + 12].any()]
    (r, c) = cells[0]
    img[12 * r:12 * r + 12, 12 * c:12 * c + 12] = img[12 * r:12 * r + 12, 12 * c:12 * c + 12][::-1]  # flipped
    assert label_same(decode(img)) == 0


def test_xoccurs_is_not_occurs():
    """Half of the xoccurs negatives hold the top object twice (the labeller counts), the others never."""
    images, labels = generate("xoccurs", 2000, seed=1)
    counts = []
    for img in images[labels == 0]:
        top, bottom = _top_and_bottom(decode(img))
        counts.append(bottom.count(top))
    assert set(counts) == {0, 2}
    assert abs(np.mean(np.array(counts) == 2) - 0.5) < 0.05
    neg, _ = generate("xoccurs", 400, seed=1, xoccurs_multi=0.0)
    assert all(label_occurs(decode(i)) == label_xoccurs(decode(i)) for i in neg)


def test_object_sets_disjoint_and_distinct(tiles):
    for name in OBJECT_SETS:
        assert len(tiles[name]) == len(rg.object_set(name))  # distinct objects are pixel-distinct
    for a in OBJECT_SETS:
        for b in OBJECT_SETS:
            if a < b:
                assert not tiles[a] & tiles[b], (a, b)
    assert [len(rg.object_set(n)) for n in OBJECT_SETS] == [37 * 24, 46 * 24, 24 * 23]


@pytest.mark.parametrize("k, n_fixed", [(5, 37), (6, 46)])
def test_polyominoes_all_fixed_orientations(k, n_fixed):
    """Each shape is connected, has k units, and the set is closed under the 8 rotations / reflections."""
    shapes = rg.polyominoes(k)
    assert len(shapes) == n_fixed

    def normal(m):
        rows, cols = np.nonzero(m)
        out = np.zeros((3, 3), dtype=bool)
        out[rows - rows.min(), cols - cols.min()] = True
        return out.tobytes()

    keys = {normal(m) for m in shapes}
    assert len(keys) == n_fixed
    for m in shapes:
        assert m.sum() == k
        for t in range(4):
            for f in (False, True):
                img = np.rot90(m[:, ::-1] if f else m, t)
                assert normal(img) in keys
    # the 8 free pentominoes that fit a 3 x 3 box: F, P, T, U, V, W, X, Z (8 + 8 + 4 + 4 + 4 + 4 + 1 + 4 = 37)


def test_sprite_geometry():
    """Polyomino units are 3 x 3 px; stripes are a 9 x 9 square, outer stripes one colour, the middle another."""
    pent = rg.object_set("pentominoes")
    assert pent.mask_a.sum(axis=(1, 2)).tolist() == [45] * 37
    assert rg.object_set("hexominoes").mask_a.sum(axis=(1, 2)).tolist() == [54] * 46
    stripes = rg.object_set("stripes")
    tile = stripes.tiles(np.array([[0, 2, 7]]))[0]
    assert (tile[1:10, 1:4] == rg.PALETTE[2]).all() and (tile[1:10, 7:10] == rg.PALETTE[2]).all()
    assert (tile[1:10, 4:7] == rg.PALETTE[7]).all()
    assert tile.any(axis=-1).sum() == 81


@pytest.mark.parametrize("task", TASKS)
def test_class_balance(task):
    for n in (1, 7, 1000):
        _, labels = generate(task, n, seed=5)
        assert labels.sum() == n // 2 and len(labels) == n


@pytest.mark.parametrize("task", TASKS)
def test_determinism(task):
    a = generate(task, 200, seed=11, objects="stripes")
    b = generate(task, 200, seed=11, objects="stripes")
    c = generate(task, 200, seed=12, objects="stripes")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_colours_are_often_shared():
    """Objects of one image share a colour far more often than uniform colours would (1/24)."""
    _, _, grid = generate("between", 2000, seed=0, return_grid=True)
    objs = grid[grid[..., 0] >= 0].reshape(2000, 3, 3)
    shared = np.mean(objs[:, 0, 1] == objs[:, 1, 1])
    assert shared > 0.2


def test_make_splits():
    a = make_splits("occurs", 40, 30, seed=1)
    b = make_splits("occurs", 40, 30, seed=2)
    assert list(a) == ["train", "in_distribution", "hexominoes", "stripes"]
    x, y = a["train"]
    assert x.shape == (40, 3, 36, 36) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert not torch.equal(a["train"][0], b["train"][0])  # training images follow the seed
    for split in ("in_distribution", "hexominoes", "stripes"):  # test images do not
        assert torch.equal(a[split][0], b[split][0]) and a[split][0].shape[0] == 30
    assert not torch.equal(a["train"][0][:30], a["in_distribution"][0])
    # every cell of each split holds an object of that split's set
    objs = {"train": "pentominoes", "in_distribution": "pentominoes", "hexominoes": "hexominoes",
            "stripes": "stripes"}
    for split, (x, _) in a.items():
        s = rg.object_set(objs[split])
        known = {t.tobytes() for t in s.tiles(s.all_objects())}
        images = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert all(v in known for img in images for row in decode(img) for v in row if v is not None)


def test_vit_patches_are_cells():
    from dual_attention.vision_models import PatchRearrange

    images, _ = generate("match_pattern", 4, seed=0)
    x = images_to_tensor(images)
    patches = PatchRearrange(12, 12)(x)  # (4, 9, 432) in (p1 p2 c) order
    for k in range(9):
        r, c = divmod(k, 3)
        cell = images[:, 12 * r:12 * r + 12, 12 * c:12 * c + 12, :].reshape(4, -1) / 255.0
        assert np.allclose(patches[:, k].numpy(), cell)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(task="nope", n=4), ValueError, "task='nope'"),
        (dict(task="same", n=0), ValueError, "n=0"),
        (dict(task="same", n=2.5), TypeError, "n must be an int"),
        (dict(task="same", n=4, seed=-1), ValueError, "seed=-1"),
        (dict(task="same", n=4, objects="tetrominoes"), ValueError, "object set 'tetrominoes'"),
        (dict(task="xoccurs", n=4, xoccurs_multi=1.5), ValueError, "xoccurs_multi=1.5"),
    ],
)
def test_generate_bad_inputs(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        generate(**kwargs)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="images must be a uint8 array"):
        images_to_tensor(np.zeros((2, 36, 36, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="n_test=0"):
        make_splits("same", 10, 0)
