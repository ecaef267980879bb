"""End-to-end checks of ``dat demo`` (relational games) and ``dat experiment math`` at toy sizes.

Accuracy numbers are not asserted (the runs are a few steps long); the structure of the results files,
the fairness of the configs and the determinism of the runs are.
"""

from __future__ import annotations

import csv
import json
import math

import pytest

from dual_attention.cli import main
from dual_attention.experiments import math as mx
from dual_attention.experiments import relational_games as rg

DEMO_ARGS = ["--tasks", "same", "--sizes", "16,32", "--seeds", "0", "--steps", "3", "--batch-size", "8",
             "--n-test", "24", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", *DEMO_ARGS, "--out", str(out)])
    return rc, out


def test_demo_end_to_end_writes_json_csv_png(demo_run, capsys):
    rc, out = demo_run
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert data["experiment"] == "relational_games"
    assert data["complete"] is True
    assert data["tasks"] == ["same"] and data["sizes"] == [16, 32] and data["seeds"] == [0]
    runs = data["runs"]
    assert len(runs) == 2 * 3  # 2 sizes x 1 seed x 3 models
    assert {(r["n_train"], r["model"]) for r in runs} == {(n, m) for n in (16, 32) for m in rg.VARIANTS}
    for r in runs:
        assert r["steps"] == 3
        assert 0.0 <= r["test_acc"] <= 1.0 and math.isfinite(r["test_loss"])
        assert r["n_params"] == data["param_counts"][r["model"]]
        # accuracy is a multiple of 1/24 (24 test images)
        assert abs(r["test_acc"] * 24 - round(r["test_acc"] * 24)) < 1e-9
    assert len(data["summary"]) == 6
    assert all(s["n_seeds"] == 1 and s["acc_std"] == 0.0 for s in data["summary"])
    assert data["settings"]["batch_size"] == 8 and data["settings"]["holdout_sprites"] is False
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and list(rows[0]) == list(rg.CSV_FIELDS)
    assert {float(r["test_acc"]) for r in rows} == {r["test_acc"] for r in runs}
    png = (out / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_demo_param_counts_match_the_paper_setting():
    s = rg.DemoSettings()
    counts = rg.parameter_counts(list(rg.VARIANTS), s)
    # ViT and DAT(1+1) are within 1% of each other; DAT(0+2) carries the extra relation/symbol weights
    assert abs(counts["vit"] - counts["dat-sa1-ra1"]) / counts["vit"] < 0.01
    assert counts["dat-sa0-ra2"] > counts["dat-sa1-ra1"]
    cfg = rg.train_config(rg.VARIANTS["dat-sa0-ra2"], s, seed=3, n_train=500)
    assert (cfg.model.arch, cfg.model.n_heads_sa, cfg.model.n_heads_ra) == ("dat", 0, 2)
    assert cfg.model.symbol_retrieval == "positional_symbols" and cfg.model.symmetric_rels is True
    assert cfg.model.d_model == 128 and cfg.model.n_layers == 2 and cfg.model.patch_size == [12, 12]
    vit = rg.train_config(rg.VARIANTS["vit"], s, seed=3, n_train=500)
    assert (vit.model.arch, vit.model.n_heads) == ("transformer", 2)
    # same budget and optimizer for every model
    assert vit.optim == cfg.optim and vit.train == cfg.train
    assert cfg.train.seed == 3 and cfg.train.max_iters == s.steps
    # with an epoch budget, steps scale with the data: ceil(2 * 100 / 64) = 4
    assert rg.DemoSettings(epochs=2, batch_size=64).steps_for(100) == 4


def test_demo_table_shows_paper_numbers():
    summary = [{"task": "xoccurs", "n_train": 2500, "model": m, "label": rg.VARIANTS[m].label, "n_seeds": 2,
                "acc_mean": 70.0 + i, "acc_std": 1.5, "paper_acc": None} for i, m in enumerate(rg.VARIANTS)]
    table = rg.format_table(summary, list(rg.VARIANTS))
    lines = table.splitlines()
    assert "70.0 ±  1.5" in lines[2] and "72.0 ±  1.5" in lines[2]
    assert lines[3].split()[:5] == ["paper", "2500", "65.3", "87.3", "88.6"]


def test_demo_pool_matches_in_process(tmp_path):
    """Two spawned worker processes give exactly the accuracies of the in-process runs (seeded runs)."""
    s = rg.DemoSettings(steps=2, batch_size=8, n_test=16)
    a = rg.run_grid(["between"], [16], [0], ["vit", "dat-sa1-ra1"], settings=s, workers=1, progress=False, log=None)
    b = rg.run_grid(["between"], [16], [0], ["vit", "dat-sa1-ra1"], settings=s, workers=2, progress=False, log=None,
                    out_dir=tmp_path)
    assert [(r["model"], r["test_acc"], r["test_loss"]) for r in a.runs] == [
        (r["model"], r["test_acc"], r["test_loss"]) for r in b.runs
    ]
    assert (tmp_path / "learning_curves.png").exists()


def test_math_end_to_end_writes_json_csv_png(tmp_path, capsys):
    rc = main(["experiment", "math", "--families", "algebra__linear_1d,calculus__differentiate", "--n-train", "60",
               "--n-test", "8", "--steps", "2", "--batch-size", "8", "--d-model", "32", "--workers", "1",
               "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "algebra__linear_1d" in printed and "exact" in printed
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["experiment"] == "math" and data["complete"] is True
    runs = data["runs"]
    assert [(r["family"], r["model"]) for r in runs] == [
        (f, m) for f in ("algebra__linear_1d", "calculus__differentiate") for m in ("transformer", "dat")
    ]
    for r in runs:
        assert r["steps"] == 2
        for key in ("char_acc", "exact_match", "tf_seq_acc"):
            assert 0.0 <= r[key] <= 1.0
        assert abs(r["exact_match"] * 8 - round(r["exact_match"] * 8)) < 1e-9
        assert len(r["examples"]) == 5 and all(set(e) == {"question", "answer", "greedy"} for e in r["examples"])
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and list(rows[0]) == list(mx.CSV_FIELDS)
    assert (tmp_path / "math_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_math_pairs_are_held_out():
    s = mx.MathSettings(n_train=300, n_test=50)
    train, test = mx.make_pairs("polynomials__expand", s, seed=1)
    assert len(train) == 300 and len(test) == 50
    assert not {q for q, _ in train} & {q for q, _ in test}
    assert len({q for q, _ in test}) == 50
    assert mx.make_pairs("polynomials__expand", s, seed=1) == (train, test)


def test_math_configs_are_fair():
    s = mx.MathSettings()
    t, d = mx.train_config("transformer", s, 0), mx.train_config("dat", s, 0)
    assert t.optim == d.optim and t.train == d.train
    assert t.model.n_heads == 4 and (d.model.n_heads_sa, d.model.n_heads_ra) == (2, 2)
    assert t.model.n_heads_cross == d.model.n_heads_cross == 4


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["demo", "--tasks", "nope"], "--tasks: unknown task 'nope'"),
        (["demo", "--sizes", "100,abc"], "--sizes must be comma-separated integers"),
        (["demo", "--sizes", "1"], "--sizes must all be >= 2"),
        (["demo", "--steps", "0"], "--steps must be >= 1"),
        (["demo", "--lr", "-1"], "--lr must be > 0"),
        (["demo", "--models", "vit,vit"], "--models lists a value twice"),
        (["experiment", "math", "--families", "algebra__nope"], "--families: unknown family"),
        (["experiment", "math", "--difficulty", "insane"], "--difficulty must be one of"),
        (["experiment"], "name an experiment"),
    ],
)
def test_bad_flags_one_line_exit_2(argv, needle, capsys, tmp_path):
    rc = main([*argv, "--out", str(tmp_path)] if argv != ["experiment"] else argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert not (tmp_path / "results.json").exists()


def test_unknown_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--bogus"])
    assert e.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_steps_and_epochs_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--steps", "10", "--epochs", "2"])
    assert e.value.code == 2


def test_flag_parsing_helpers():
    from dual_attention.commands.demo import parse_int, parse_seeds

    assert parse_seeds("0-2") == [0, 1, 2]
    assert parse_seeds("3,7") == [3, 7]
    assert parse_seeds("4") == [4]
    assert parse_int("--sizes", "2.5k") == 2500 and parse_int("--sizes", "25_000") == 25000
    # the --paper budget: 50 epochs of 64 images, at least 2000 steps
    s = rg.paper_settings()
    assert s.steps_for(500) == 2000 and s.steps_for(25_000) == 19532


def test_math_families_all4_and_models_flag(tmp_path, capsys):
    rc = main(["experiment", "math", "--families", "all4", "--models", "transformer,nope", "--out", str(tmp_path)])
    assert rc == 2
    assert "--models: unknown model 'nope'" in capsys.readouterr().err


def test_holdout_sprites_run(tmp_path):
    rc = main(["demo", "--tasks", "occurs", "--sizes", "16,24", "--seeds", "1", "--models", "dat-sa1-ra1",
               "--steps", "2", "--batch-size", "8", "--n-test", "16", "--holdout-sprites", "--workers", "1",
               "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["settings"]["holdout_sprites"] is True
    assert [(r["n_train"], r["seed"], r["model"]) for r in data["runs"]] == [(16, 1, "dat-sa1-ra1"),
                                                                             (24, 1, "dat-sa1-ra1")]
