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

DEMO_ARGS = ["--tasks", "same", "--sizes", "16,32", "--seeds", "0", "--models", "vit,dat-sa0-ra2,corelnet",
             "--epochs", "1", "--batch-size", "8", "--n-test", "24", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    rc = main(["demo", *DEMO_ARGS, "--out", str(out)])
    return rc, out


def test_demo_end_to_end_writes_json_csv_png(demo_run, capsys):
    rc, out = demo_run
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert data["experiment"] == "relational_games" and data["complete"] is True
    assert data["tasks"] == ["same"] and data["sizes"] == [16, 32] and data["seeds"] == [0]
    runs = data["runs"]
    assert {(r["n_train"], r["model"]) for r in runs} == {(n, m) for n in (16, 32)
                                                          for m in ("vit", "dat-sa0-ra2", "corelnet")}
    for r in runs:
        assert r["steps"] == math.ceil(r["n_train"] / 8)  # 1 epoch of batch 8
        for split in rg.SPLITS:  # accuracy on 24 test images: a multiple of 1/24
            assert 0.0 <= r[split] <= 1.0 and abs(r[split] * 24 - round(r[split] * 24)) < 1e-9
    assert data["settings"]["batch_size"] == 8 and data["settings"]["betas"] == [0.9, 0.99]
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["task", "n_train", "seed", "model", "split", "accuracy"]
    assert len(rows) == len(runs) * 3 == 18
    assert {r["split"] for r in rows} == {"in_distribution", "hexominoes", "stripes"}
    by_run = {(r["task"], r["n_train"], r["seed"], r["model"]): r for r in runs}
    for row in rows:
        rec = by_run[(row["task"], int(row["n_train"]), int(row["seed"]), row["model"])]
        assert float(row["accuracy"]) == rec[row["split"]]
    png = (out / "learning_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_demo_models_are_the_papers():
    s = rg.DemoSettings()
    counts = rg.parameter_counts(list(rg.VARIANTS), s)
    # the paper: Transformer (2 heads) 481K, DAT 1+1 404K, DAT 0+2 421K
    assert abs(counts["vit"] - 481_000) / 481_000 < 0.01
    assert abs(counts["dat-sa0-ra2"] - 421_000) / 421_000 < 0.01
    vit = rg.build_model("vit", s)
    assert (vit.d_model, vit.n_layers, vit.pool, vit.encoder_blocks[0].self_attn.n_heads) == (144, 2, "mean", 2)
    assert vit.encoder_blocks[0].ff_block.dff == 288 and vit.encoder_blocks[0].norm_first is True
    dat = rg.build_model("dat-sa1-ra1", s)
    assert (dat.d_model, dat.n_heads_sa, dat.n_heads_ra, dat.pool) == (128, 1, 1, "mean")
    assert dat.symbol_retrieval == "positional_symbols"
    assert (s.epochs, s.batch_size, s.learning_rate, s.betas, s.dropout) == (50, 512, 1e-3, (0.9, 0.99), 0.1)
    assert s.steps_for(2500) == 250 and s.steps_for(250) == 50


def test_demo_train_model_is_the_protocol(monkeypatch):
    """Adam with the protocol's betas, constant lr, no weight decay; every image once per epoch."""
    import torch

    seen = []
    s = rg.DemoSettings(epochs=2, batch_size=4, n_test=4)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 36 * 36, 2))
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda x: (seen.append(x.shape[0]), real(x))[1])
    x, y = torch.rand(10, 3, 36, 36), torch.randint(0, 2, (10,))
    created = []
    orig = torch.optim.Adam

    def spy(*a, **k):
        created.append(k)
        return orig(*a, **k)

    monkeypatch.setattr(torch.optim, "Adam", spy)
    rg.train_model(model, x, y, s, seed=0)
    assert created == [{"lr": 1e-3, "betas": (0.9, 0.99)}]
    assert seen == [4, 4, 2, 4, 4, 2]


def test_demo_table_and_welch():
    runs = [{"task": "xoccurs", "n_train": 2500, "seed": s, "model": m, "in_distribution": a, "hexominoes": a,
             "stripes": a} for s, (v, d) in enumerate([(0.60, 0.90), (0.62, 0.88), (0.58, 0.91)])
            for m, a in (("vit", v), ("dat-sa0-ra2", d))]
    summary = rg.summarize(runs)
    cell = next(r for r in summary if r["model"] == "dat-sa0-ra2" and r["split"] == "in_distribution")
    assert cell["accs"] == [0.90, 0.88, 0.91] and abs(cell["mean"] - 0.8966666) < 1e-6
    assert cell["p_vs_ref"] < 0.01 and cell["t_vs_ref"] > 0
    table = rg.format_table(summary, ["vit", "dat-sa0-ra2"])
    lines = table.splitlines()
    assert "60.0 ±  2.0" in lines[2] and "89.7 ±  1.5 +p<.01" in lines[2] and "(3 seeds)" in lines[2]
    assert lines[5].split()[-4:] == ["67.0", "88.6", "(5", "seeds)"]


def test_welch_t_test_against_scipy_formula():
    from dual_attention.experiments._common import _betainc_cf, welch_t_test

    a, b = [0.9, 0.85, 0.93], [0.7, 0.75, 0.6, 0.72]
    t, p = welch_t_test(a, b)
    # t by hand; p from scipy.stats.ttest_ind(a, b, equal_var=False) = 0.0042058196...
    assert abs(t - 5.019744097322399) < 1e-12 and abs(p - 0.004205819622698271) < 1e-9
    assert abs(_betainc_cf(2.5, 0.5, 0.3) - 0.018927124071945658) < 1e-12  # the scipy-free path
    assert welch_t_test([0.5, 0.5], [0.5, 0.5]) == (0.0, 1.0)
    with pytest.raises(ValueError, match=">= 2 values"):
        welch_t_test([0.5], [0.4, 0.6])


def test_demo_pool_matches_in_process(tmp_path):
    """Two spawned worker processes give exactly the accuracies of the in-process runs (seeded runs)."""
    s = rg.DemoSettings(epochs=1, batch_size=8, n_test=16)
    a = rg.run_grid(["between"], [16], [0], ["vit", "dat-sa1-ra1"], settings=s, workers=1, progress=False, log=None)
    b = rg.run_grid(["between"], [16], [0], ["vit", "dat-sa1-ra1"], settings=s, workers=2, progress=False, log=None,
                    out_dir=tmp_path)
    key = [(r["model"], r["in_distribution"], r["hexominoes"], r["stripes"], r["train_loss"]) for r in a.runs]
    assert key == [(r["model"], r["in_distribution"], r["hexominoes"], r["stripes"], r["train_loss"]) for r in b.runs]
    assert (tmp_path / "learning_curves.png").exists()


def test_grid_jobs_order_and_match_pattern_sizes():
    jobs = rg.grid_jobs(["same", "match_pattern"], [250, 2500, 5000], [0, 1], ["vit"])
    assert jobs[:3] == [("same", 2500, 0, "vit"), ("same", 250, 0, "vit"), ("match_pattern", 5000, 0, "vit")]
    assert len(jobs) == 6
    assert rg.grid_jobs(["same"], [16, 32], [0], ["vit"]) == [("same", 32, 0, "vit"), ("same", 16, 0, "vit")]


def test_demo_ctrl_c_stops_at_once(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it), twice: one line, exit 130, fast."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "dual_attention", "demo", "--tasks", "same", "--sizes", "2000", "--seeds", "0-3",
           "--models", "vit", "--n-test", "16", "--workers", "2", "--no-progress", "--out", str(tmp_path)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    line = proc.stderr.readline()  # "parameters: ..." once the grid starts
    assert line.startswith("parameters:"), line
    time.sleep(4.0)  # the workers are spawned and training
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.time()
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 20  # a run of this grid takes minutes
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"dat demo: interrupted; the finished runs are in {tmp_path}/results.json"


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
        (["demo", "--epochs", "0"], "--epochs must be >= 1"),
        (["demo", "--models", "vit,transformer"], "--models: unknown model 'transformer'"),
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


def test_flag_parsing_helpers():
    from dual_attention.commands.demo import parse_int, parse_seeds

    assert parse_seeds("0-2") == [0, 1, 2]
    assert parse_seeds("3,7") == [3, 7]
    assert parse_seeds("4") == [4]
    assert parse_int("--sizes", "2.5k") == 2500 and parse_int("--sizes", "25_000") == 25000



def test_math_families_all4_and_models_flag(tmp_path, capsys):
    rc = main(["experiment", "math", "--families", "all4", "--models", "transformer,nope", "--out", str(tmp_path)])
    assert rc == 2
    assert "--models: unknown model 'nope'" in capsys.readouterr().err
