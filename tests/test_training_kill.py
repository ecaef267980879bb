"""A `dat train` process killed with SIGKILL (or stopped with SIGINT) mid-run resumes to the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dual_attention.training.checkpoint import find_checkpoint
from dual_attention.training.config import load_config
from dual_attention.training.trainer import train

pytestmark = pytest.mark.slow

TINY = [
    "model.d_model=32", "model.n_layers=1", "model.dff=64", "model.max_block_size=16", "model.n_symbols=8",
    "train.batch_size=8", "train.eval_iters=2", "train.log_interval=1", "train.progress=false",
    "data.synthetic_size=400", "optim.warmup_iters=2", "model.dropout=0.1",
    "train.max_iters=300", "train.eval_interval=0", "train.checkpoint_interval=10",
]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def start(run_dir) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "dual_attention", "train", "lm-tiny-dat", *[f"--{o}" for o in TINY],
           "--out", str(run_dir)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def last_iter(run_dir) -> int:
    p = run_dir / "metrics.jsonl"
    if not p.exists():
        return 0
    its = [json.loads(line)["iter"] for line in p.read_text().splitlines() if line.endswith("}")]
    return max(its, default=0)


def wait_for_iter(proc, run_dir, n: int, timeout: float = 120) -> None:
    t0 = time.time()
    while last_iter(run_dir) < n:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()[1][-2000:]}"
        assert time.time() - t0 < timeout, "the run is too slow"
        time.sleep(0.02)


def train_losses(history):
    return [(r["iter"], r["loss"]) for r in history if r["split"] == "train"]


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    run = tmp_path / "run"
    proc = start(run)
    wait_for_iter(proc, run, 37)  # past the checkpoint of iter 30, before that of 40 (or while writing it)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ck = find_checkpoint(run)
    assert ck is not None  # never left without a complete checkpoint
    killed_at = torch.load(ck / "trainer_state.pt", weights_only=True)["iter"]
    assert killed_at % 10 == 0 and 30 <= killed_at < 300
    assert last_iter(run) >= killed_at  # steps logged after the checkpoint are re-run by the resume

    resumed = train(load_config("lm-tiny-dat", [*TINY, f"train.out_dir={run}"]), resume=True, verbose=False)
    straight = train(load_config("lm-tiny-dat", [*TINY, f"train.out_dir={tmp_path / 'straight'}"]), verbose=False)
    assert resumed.iters == 300
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in logged] == list(range(1, 301))  # the killed run's extra lines were dropped
    assert train_losses(logged) == train_losses(straight.history)
    for (k, p), q in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=k)


def test_sigint_saves_a_checkpoint_and_exits_130(tmp_path):
    run = tmp_path / "run"
    proc = start(run)
    wait_for_iter(proc, run, 15)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "SIGINT: finishing this step and saving a checkpoint" in err
    assert out.startswith("interrupted: ")
    state = torch.load(run / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["iter"] == last_iter(run) >= 15
    assert "Traceback" not in err
