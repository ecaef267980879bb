"""Two CPU processes (torchrun, gloo) give the same training run as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from dual_attention.training.config import load_config
from dual_attention.training.trainer import train

pytestmark = pytest.mark.slow

TINY = [
    "model.d_model=32", "model.n_layers=2", "model.dff=64", "model.max_block_size=16", "model.n_symbols=8",
    "train.batch_size=8", "train.eval_iters=2", "train.log_interval=1", "train.progress=false",
    "data.synthetic_size=400", "optim.warmup_iters=2", "train.max_iters=6", "train.eval_interval=3",
]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def torchrun(args: list[str], timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dual_attention", "train", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def losses(run_dir, split="train"):
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["loss"]) for r in recs if r["split"] == split]


def compare(single_dir, multi_dir, rtol=1e-5, atol=1e-6):
    a, b = losses(single_dir), losses(multi_dir)
    assert [i for i, _ in a] == [i for i, _ in b] == list(range(1, 7))
    torch.testing.assert_close([v for _, v in b], [v for _, v in a], rtol=rtol, atol=atol)
    torch.testing.assert_close([v for _, v in losses(multi_dir, "val")], [v for _, v in losses(single_dir, "val")],
                               rtol=rtol, atol=atol)
    wa = load_file(str(single_dir / "checkpoint" / "model.safetensors"))
    wb = load_file(str(multi_dir / "checkpoint" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-5, msg=k)


def test_ddp_two_processes_match_one_process(tmp_path):
    """LM DAT, dropout off; 2 ranks x 2 accumulation steps x 2 rows == 1 process x 8 rows."""
    single = tmp_path / "single"
    train(load_config("lm-tiny-dat", [*TINY, f"train.out_dir={single}"]), verbose=False)
    multi = tmp_path / "ddp"
    proc = torchrun(["lm-tiny-dat", *[f"--{o}" for o in TINY], "--train.grad_accum_steps=2", "--out", str(multi)])
    assert "x2 processes (DDP)" in proc.stderr
    assert proc.stdout.count("done: 6 iters") == 1  # rank 0 only reports
    compare(single, multi)
    state = torch.load(multi / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2


def test_fsdp_two_processes_train_resume_and_match_one_process(tmp_path):
    """FSDP2 (fully_shard) on CPU/gloo, 3 steps then --resume to 6: same losses as one process running 6 steps;
    the gathered checkpoint reloads strictly."""
    from dual_attention.hf import load_pretrained

    opts = [*TINY, "optim.lr_decay_iters=6"]  # the first half must use the 6-step schedule
    single = tmp_path / "single"
    train(load_config("vision-tiny-dat", [*opts, f"train.out_dir={single}"]), verbose=False)
    multi = tmp_path / "fsdp"
    args = ["vision-tiny-dat", *[f"--{o}" for o in opts], "--train.fsdp=true", "--out", str(multi)]
    proc = torchrun([*args, "--train.max_iters=3"])
    assert "x2 processes (FSDP)" in proc.stderr
    proc = torchrun([*args, "--resume"])
    assert "resuming at iter 3" in proc.stderr
    compare(single, multi)
    model = load_pretrained(str(multi / "checkpoint"))
    assert type(model).__name__ == "VisionDualAttnTransformer_HFHub"


def test_a_dead_rank_stops_the_run_and_leaves_a_resumable_checkpoint(tmp_path):
    """kill -9 of rank 1 mid-run: the run stops (no hang), the last checkpoint is complete, and one process
    resumes it (docs/training.md, crash safety)."""
    import signal
    import time

    import psutil

    from dual_attention.training.checkpoint import find_checkpoint

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    opts = [*TINY, "train.max_iters=100000", "train.eval_interval=0", "train.checkpoint_interval=5"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dual_attention", "train", "lm-tiny-dat", *[f"--{o}" for o in opts], "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        t0 = time.time()
        while not (run / "metrics.jsonl").exists() or len((run / "metrics.jsonl").read_text().splitlines()) < 12:
            assert proc.poll() is None and time.time() - t0 < 180, proc.communicate()[1][-3000:]
            time.sleep(0.05)
        ranks = {p.environ().get("RANK"): p for p in psutil.Process(proc.pid).children(recursive=True)}
        ranks["1"].send_signal(signal.SIGKILL)
        proc.wait(timeout=120)  # the other rank and torchrun follow; a hang fails here
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    ck = find_checkpoint(run)
    killed_at = torch.load(ck / "trainer_state.pt", weights_only=True)["iter"]
    assert killed_at >= 5 and killed_at % 5 == 0
    res = train(load_config("lm-tiny-dat", [*opts, f"train.max_iters={killed_at + 2}", f"train.out_dir={run}"]),
                resume=True, verbose=False)
    assert res.iters == killed_at + 2
