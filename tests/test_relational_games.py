"""Tests for dual_attention.data.relational_games.

The central check is an independent brute-force labeller: it reads the objects back from the pixels only
(each 12 x 12 cell is looked up by its exact bytes among the sprite tiles, an all-black cell is empty), then
recomputes each task's label from the decoded 3 x 3 grid with a plain rule, and compares with the generator's
label.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from dual_attention.data import relational_games as rg
from dual_attention.data.relational_games import (
    TASKS,
    generate,
    generate_tensors,
    images_to_tensor,
    make_dataset,
    make_sprite_set,
    split_sprites,
)

N_CHECK = 400  # images per task for the brute-force label check
EMPTY = None


# ------------------------------------------------------------------------------------------------------------
# Independent decoder and reference rules
# ------------------------------------------------------------------------------------------------------------


def decode(images: np.ndarray, sprites: rg.SpriteSet) -> list[list[list[tuple[str, str] | None]]]:
    """Pixels -> per image a 3 x 3 list of (shape, colour) keys or None. Fails on any unknown cell content."""
    lookup = {sprites.tiles[i].tobytes(): key for i, key in enumerate(sprites.keys)}
    c = images.shape[1] // 3
    out = []
    for img in images:
        grid = []
        for r in range(3):
            row = []
            for col in range(3):
                cell = img[r * c : (r + 1) * c, col * c : (col + 1) * c]
                if not cell.any():
                    row.append(EMPTY)
                else:
                    key = lookup.get(cell.tobytes())
                    assert key is not None, "cell content is neither background nor a sprite tile"
                    row.append(key)
            grid.append(row)
        out.append(grid)
    return out


def objects(grid) -> list:
    return [v for row in grid for v in row if v is not EMPTY]


def row_pattern(row) -> tuple[int, ...]:
    """Equality structure of a row: index of the first occurrence of each element, e.g. ABA -> (0, 1, 0)."""
    return tuple(row.index(v) for v in row)


def rule_same(grid) -> int:
    objs = objects(grid)
    assert len(objs) == 3
    return int(len(set(objs)) < 3)


def rule_between(grid) -> int:
    assert len(objects(grid)) == 3
    lines = [list(row) for row in grid] + [[grid[r][c] for r in range(3)] for c in range(3)]
    full = [line for line in lines if all(v is not EMPTY for v in line)]
    assert len(full) == 1, "the three objects must fill exactly one row or column"
    x0, x1, x2 = full[0]
    return int(x0 == x2 and x1 != x0)


def _top_and_bottom(grid):
    top = [v for v in grid[0] if v is not EMPTY]
    assert len(top) == 1 and all(v is EMPTY for v in grid[1])
    assert all(v is not EMPTY for v in grid[2])
    return top[0], list(grid[2])


def rule_occurs(grid) -> int:
    t, bottom = _top_and_bottom(grid)
    return int(t in bottom)


def rule_xoccurs(grid) -> int:
    t, bottom = _top_and_bottom(grid)
    return int(bottom.count(t) == 1)


def rule_match_pattern(grid) -> int:
    top, middle, bottom = (list(row) for row in grid)
    assert all(v is EMPTY for v in middle)
    assert all(v is not EMPTY for v in top + bottom)
    assert not set(top) & set(bottom), "top and bottom rows must not share objects"
    return int(row_pattern(top) == row_pattern(bottom))


RULES = {
    "same": rule_same,
    "between": rule_between,
    "occurs": rule_occurs,
    "xoccurs": rule_xoccurs,
    "match_pattern": rule_match_pattern,
}


@pytest.fixture(scope="module")
def sprites() -> rg.SpriteSet:
    return make_sprite_set()


@pytest.fixture(scope="module")
def samples(sprites):
    return {task: generate(task, N_CHECK, seed=11, sprites=sprites) for task in TASKS}


# ------------------------------------------------------------------------------------------------------------
# Labels, read back from pixels
# ------------------------------------------------------------------------------------------------------------


def test_rules_cover_all_tasks():
    assert set(RULES) == set(TASKS)
    assert TASKS == ("same", "between", "occurs", "xoccurs", "match_pattern")


@pytest.mark.parametrize("task", TASKS)
def test_brute_force_labels_match(task, samples, sprites):
    images, labels = samples[task]
    grids = decode(images, sprites)
    recomputed = np.array([RULES[task](g) for g in grids])
    mismatches = np.flatnonzero(recomputed != labels)
    assert mismatches.size == 0, f"{task}: {mismatches.size} labels disagree, first at {mismatches[:5]}"


@pytest.mark.parametrize("canvas", [24, 48])
@pytest.mark.parametrize("task", TASKS)
def test_brute_force_labels_other_canvas(task, canvas):
    s = make_sprite_set(canvas)
    images, labels = generate(task, 60, seed=5, canvas=canvas)
    assert images.shape == (60, canvas, canvas, 3)
    assert [RULES[task](g) for g in decode(images, s)] == labels.tolist()


def test_labeller_can_fail(samples, sprites):
    """Sanity of the checker itself: breaking the duplicate of a positive 'same' image flips the rule."""
    images, labels = samples["same"]
    i = int(np.flatnonzero(labels == 1)[0])
    img = images[i].copy()
    grid = decode(img[None], sprites)[0]
    dup = next(k for k in objects(grid) if objects(grid).count(k) == 2)
    r, c = next((r, c) for r in range(3) for c in range(3) if grid[r][c] == dup)
    unused = next(j for j, key in enumerate(sprites.keys) if key not in objects(grid))
    img[r * 12 : (r + 1) * 12, c * 12 : (c + 1) * 12] = sprites.tiles[unused]
    assert rule_same(decode(img[None], sprites)[0]) == 0
    img[0:12, 0:12, 0] ^= 1  # a cell that is not background and not a tile must be rejected
    with pytest.raises(AssertionError):
        decode(img[None], sprites)


def test_return_grid_matches_pixels(sprites):
    images, labels, grid = generate("match_pattern", 50, seed=2, return_grid=True)
    assert grid.shape == (50, 9) and grid.dtype == np.int64
    keys = sprites.keys
    rows = [[g[3 * r : 3 * r + 3] for r in range(3)] for g in grid]
    from_grid = [[[keys[v] if v >= 0 else EMPTY for v in row] for row in g] for g in rows]
    assert from_grid == decode(images, sprites)


# ------------------------------------------------------------------------------------------------------------
# Documented sampling distributions (the negatives contain the confusable cases)
# ------------------------------------------------------------------------------------------------------------


def test_same_cases(samples, sprites):
    images, labels = samples["same"]
    counts = [sorted(Counter(objects(g)).values()) for g in decode(images, sprites)]
    assert all(c == [1, 2] for c, y in zip(counts, labels) if y == 1)
    assert all(c == [1, 1, 1] for c, y in zip(counts, labels) if y == 0)


def test_between_cases(samples, sprites):
    images, labels = samples["between"]
    pats = {0: set(), 1: set()}
    for g, y in zip(decode(images, sprites), labels):
        lines = [list(row) for row in g] + [[g[r][c] for r in range(3)] for c in range(3)]
        pats[int(y)].add(row_pattern(next(line for line in lines if EMPTY not in line)))
    assert pats[1] == {(0, 1, 0)}
    assert pats[0] == {(0, 0, 2), (0, 1, 1), (0, 1, 2)}  # AAB, ABB, ABC


def test_occurs_and_xoccurs_cases(samples, sprites):
    images, labels = samples["occurs"]
    for g, y in zip(decode(images, sprites), labels):
        t, bottom = _top_and_bottom(g)
        assert len(set(bottom)) == 3 and bottom.count(t) == y
    images, labels = samples["xoccurs"]
    counts = {0: [], 1: []}
    repeats = {0: [], 1: []}
    for g, y in zip(decode(images, sprites), labels):
        t, bottom = _top_and_bottom(g)
        counts[int(y)].append(bottom.count(t))
        repeats[int(y)].append(len(set(bottom)) < 3)
    assert set(counts[1]) == {1} and set(counts[0]) == {0, 2}
    assert 0.35 < np.mean(np.array(counts[0]) == 2) < 0.65
    assert 0.35 < np.mean(repeats[0]) < 0.65 and 0.35 < np.mean(repeats[1]) < 0.65


def test_object_roles_unbiased(sprites):
    """The repeated object of 'same' is a uniform sprite: every shape and colour plays that role evenly."""
    images, labels = generate("same", 2000, seed=9)
    images = images[labels == 1]
    dup_shapes, dup_colours = Counter(), Counter()
    for g in decode(images, sprites):
        (key,) = [k for k, v in Counter(objects(g)).items() if v == 2]
        dup_shapes[key[0]] += 1
        dup_colours[key[1]] += 1
    assert set(dup_shapes) == set(rg.SHAPE_NAMES) and set(dup_colours) == set(rg.COLOURS)
    expected_shape, expected_colour = len(images) / 14, len(images) / 8
    assert all(0.5 * expected_shape < c < 1.5 * expected_shape for c in dup_shapes.values())
    assert all(0.7 * expected_colour < c < 1.3 * expected_colour for c in dup_colours.values())


def test_match_pattern_cases(samples, sprites):
    images, labels = samples["match_pattern"]
    top_pats = {0: set(), 1: set()}
    for g, y in zip(decode(images, sprites), labels):
        top_pats[int(y)].add(row_pattern(list(g[0])))
    all_five = {(0, 0, 0), (0, 0, 2), (0, 1, 0), (0, 1, 1), (0, 1, 2)}
    assert top_pats[0] == all_five and top_pats[1] == all_five


# ------------------------------------------------------------------------------------------------------------
# Balance, determinism, shapes
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_class_balance(task):
    _, labels = generate(task, 1000, seed=3)
    assert labels.sum() == 500
    _, labels = generate(task, 7, seed=3)
    assert labels.sum() == 3 and set(labels.tolist()) == {0, 1}


@pytest.mark.parametrize("task", TASKS)
def test_determinism(task):
    a_img, a_lab = generate(task, 200, seed=42)
    b_img, b_lab = generate(task, 200, seed=42)
    c_img, c_lab = generate(task, 200, seed=43)
    assert a_img.tobytes() == b_img.tobytes() and a_lab.tobytes() == b_lab.tobytes()
    assert a_img.tobytes() != c_img.tobytes()
    assert not np.array_equal(a_lab, c_lab)


def test_shapes_and_dtypes():
    images, labels = generate("same", 10, seed=0)
    assert images.shape == (10, 36, 36, 3) and images.dtype == np.uint8
    assert labels.shape == (10,) and labels.dtype == np.int64
    x, y = generate_tensors("same", 10, seed=0)
    assert x.shape == (10, 3, 36, 36) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.dtype == torch.int64 and torch.equal(y, torch.from_numpy(labels))
    assert float(x.min()) == 0.0 and float(x.max()) <= 1.0
    expected = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    assert torch.equal(x, expected)


def test_vit_patches_are_cells():
    """A ViT patchifier 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' with 12 x 12 patches: one cell per patch."""
    images, _ = generate("between", 4, seed=1)
    x = images_to_tensor(images)
    patches = x.reshape(4, 3, 3, 12, 3, 12)  # (b, c, h, p1, w, p2)
    patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(4, 9, 12 * 12 * 3)  # (b, h w, p1 p2 c)
    for k in range(9):
        r, c = divmod(k, 3)
        cell = torch.from_numpy(images[:, 12 * r : 12 * r + 12, 12 * c : 12 * c + 12]).float() / 255.0
        assert torch.equal(patches[:, k], cell.reshape(4, -1))


# ------------------------------------------------------------------------------------------------------------
# Sprites and held-out splits
# ------------------------------------------------------------------------------------------------------------


def test_sprite_set_distinct(sprites):
    assert len(sprites) == len(rg.SHAPE_NAMES) * len(rg.COLOURS) == 112
    assert sprites.tiles.shape == (112, 12, 12, 3) and sprites.tiles.dtype == np.uint8
    flat = sprites.tiles.reshape(112, -1)
    assert flat.any(axis=1).all()
    assert len({t.tobytes() for t in sprites.tiles}) == 112
    assert len(set(sprites.keys)) == 112
    # each tile is one colour on black
    for tile in sprites.tiles:
        assert len(np.unique(tile.reshape(-1, 3), axis=0)) == 2
    small = make_sprite_set(n_shapes=3, n_colours=2, seed=1)
    assert len(small) == 6 and len({s for s, _ in small.keys}) == 3


def test_split_sprites_disjoint(sprites):
    train, test = split_sprites(sprites, 0.25, seed=0)
    assert len(test) == 28 and len(train) == 84
    assert not set(train.keys) & set(test.keys)
    assert set(train.keys) | set(test.keys) == set(sprites.keys)
    train2, test2 = split_sprites(sprites, 10, seed=0)
    assert len(test2) == 10
    _, test3 = split_sprites(sprites, 0.25, seed=1)
    assert set(test3.keys) != set(test.keys)


@pytest.mark.parametrize("task", ["same", "match_pattern"])
def test_make_dataset_holdout(task, sprites):
    data = make_dataset(task, 120, 80, seed=7, holdout_sprites=True)
    train_x, train_y = data["train"].tensors
    test_x, test_y = data["test"].tensors
    assert train_x.shape == (120, 3, 36, 36) and test_x.shape == (80, 3, 36, 36)
    assert int(train_y.sum()) == 60 and int(test_y.sum()) == 40

    def used(x):
        images = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        grids = decode(images, sprites)
        return {k for g in grids for k in objects(g)}, grids

    train_used, train_grids = used(train_x)
    test_used, test_grids = used(test_x)
    assert train_used and test_used and not train_used & test_used
    assert [RULES[task](g) for g in test_grids] == test_y.tolist()
    assert [RULES[task](g) for g in train_grids] == train_y.tolist()
    # the held-out sprites are exactly those of split_sprites with the documented seed
    split_seed = int(np.random.SeedSequence(7).generate_state(3)[2])
    _, held = split_sprites(sprites, 0.25, seed=split_seed)
    assert test_used <= set(held.keys)


def test_make_dataset_deterministic_and_splits_differ():
    a = make_dataset("occurs", 50, 50, seed=1)
    b = make_dataset("occurs", 50, 50, seed=1)
    c = make_dataset("occurs", 50, 50, seed=2)
    assert torch.equal(a["train"].tensors[0], b["train"].tensors[0])
    assert torch.equal(a["test"].tensors[0], b["test"].tensors[0])
    assert not torch.equal(a["train"].tensors[0], a["test"].tensors[0])
    assert not torch.equal(a["train"].tensors[0], c["train"].tensors[0])


# ------------------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"task": "same_different"}, ValueError, r"task='same_different'.*allowed values.*match_pattern"),
        ({"n": 0}, ValueError, r"n=0.*allowed values"),
        ({"n": -5}, ValueError, r"n=-5"),
        ({"n": 2.5}, TypeError, r"n must be an int"),
        ({"n": True}, TypeError, r"n must be an int"),
        ({"canvas": 35}, ValueError, r"canvas=35.*multiples of 3"),
        ({"canvas": 21}, ValueError, r"canvas=21.*>= 24"),
        ({"canvas": "36"}, TypeError, r"canvas must be an int"),
        ({"seed": -1}, ValueError, r"seed=-1"),
        ({"sprites": "abc"}, TypeError, r"sprites must be a SpriteSet"),
    ],
)
def test_generate_bad_inputs(kwargs, exc, match):
    args = {"task": "same", "n": 4, "seed": 0, **kwargs}
    with pytest.raises(exc, match=match):
        generate(**args)


def test_other_bad_inputs(sprites):
    with pytest.raises(ValueError, match=r"canvas=48.*3 \* 12"):
        generate("same", 4, sprites=sprites, canvas=48)
    with pytest.raises(ValueError, match=r"needs at least 6"):
        generate("match_pattern", 4, sprites=sprites.subset([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match=r"n_shapes=99.*1\.\.14"):
        make_sprite_set(n_shapes=99)
    with pytest.raises(ValueError, match=r"holdout=0.99.*>= 6"):
        split_sprites(sprites, 0.99)
    with pytest.raises(ValueError, match=r"holdout=1.5"):
        split_sprites(sprites, 1.5)
    with pytest.raises(ValueError, match=r"task='nope'"):
        make_dataset("nope", 4, 4)
    with pytest.raises(ValueError, match=r"n_test=0"):
        make_dataset("same", 4, 0)
    with pytest.raises(ValueError, match=r"shape='blob'"):
        rg.shape_mask("blob")
    with pytest.raises(ValueError, match=r"uint8 array"):
        images_to_tensor(np.zeros((2, 36, 36, 3), dtype=np.float32))
