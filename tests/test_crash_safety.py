"""What survives a careful user's accidents: a full disk, a run stopped before its first checkpoint, a NaN,
evaluation turned off, a mistyped path while the Hub is offline, corrupted weights, a closed pipe, torchrun ranks.

Each test names the defect of issue 10 it would have caught; the guarantees are listed in docs/training.md.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dual_attention.cli import main
from dual_attention.training import trainer as trainer_module
from dual_attention.training.checkpoint import CheckpointError, find_checkpoint
from dual_attention.training.config import load_config
from dual_attention.training.trainer import RunDirError, train

TINY = [
    "model.d_model=32", "model.n_layers=1", "model.dff=64", "model.max_block_size=16", "model.n_symbols=8",
    "train.batch_size=8", "train.eval_iters=2", "train.log_interval=1", "train.progress=false",
    "data.synthetic_size=400", "optim.warmup_iters=2",
]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """Never reach the network: the Hub is offline and its cache empty."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def tiny(preset: str, *extra: str, out=None):
    cfg = load_config(preset, TINY + list(extra))
    cfg.train.out_dir = str(out) if out is not None else None
    return cfg


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_error_line(rc, err, command):
    """The one error line, last on stderr (after the training banner when training had started)."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    errors = [x for x in lines if x.startswith(f"dat {command}: error: ")]
    assert errors == lines[-1:] and "Traceback" not in err, err
    return errors[0]


def saved_iter(run) -> int:
    return int(torch.load(find_checkpoint(run) / "trainer_state.pt", weights_only=True)["iter"])


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("lm") / "run"
    train(tiny("lm-tiny-dat", "train.max_iters=2", "train.eval_interval=0", out=run), verbose=False)
    return run


# ------------------------------------------------------------------------------------------------ checkpoints
def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    """Issue 10.5: ENOSPC while writing the checkpoint of iter 4 -> one line, the checkpoint of iter 2 intact."""
    run = tmp_path / "run"
    real_save, calls = trainer_module._save_model, []

    def save_then_fill_the_disk(model, directory):
        calls.append(directory)
        if len(calls) == 2:
            (Path(directory) / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(directory) / "model.safetensors"))
        real_save(model, directory)

    monkeypatch.setattr(trainer_module, "_save_model", save_then_fill_the_disk)
    args = ["train", "vision-tiny-transformer", *[f"--{o}" for o in TINY], "--train.max_iters=6",
            "--train.eval_interval=0", "--train.checkpoint_interval=2", "--out", run]
    line = one_error_line(*cli(capsys, *args)[::2], "train")
    assert "No space left on device" in line and "previous checkpoint" in line and "intact" in line
    assert saved_iter(run) == 2 and not (run / "checkpoint.tmp").exists()
    monkeypatch.setattr(trainer_module, "_save_model", real_save)  # space was freed: resume
    rc, out, err = cli(capsys, *args, "--resume")
    assert rc == 0, err
    assert "resuming at iter 2" in err and out.startswith("done: 6 iters")


def test_checkpoints_follow_their_own_schedule_when_evaluation_is_off(tmp_path):
    """Issue 10.7: eval_interval=0 used to turn periodic checkpoints off; the default is now ceil(max_iters/10)."""
    run = tmp_path / "run"
    seen = {}

    def look(it, rec):
        if it == 19 and rec["split"] == "train":
            seen["iter"] = saved_iter(run)

    train(tiny("lm-tiny-transformer", "train.max_iters=20", "train.eval_interval=0", out=run), callback=look,
          verbose=False)
    assert seen["iter"] == 18  # every 2 steps: a run killed at iter 19 keeps 18 of them
    assert trainer_module.checkpoint_every(load_config("lm-dat-343m")) == 1000
    assert trainer_module.checkpoint_every(tiny("lm-tiny-dat", "train.checkpoint_interval=0")) == 0


def test_a_run_dir_without_a_checkpoint_is_started_over(tmp_path, capsys):
    """Issue 10.8: killed (here: a second Ctrl-C) before the first checkpoint -> a rerun, with or without
    --resume, starts over instead of asking for --resume/--overwrite and then finding nothing to resume."""
    run = tmp_path / "run"

    def abort(it, rec):
        if it == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny("lm-tiny-dat", "train.max_iters=6", "train.eval_interval=0", out=run), callback=abort,
              verbose=False)
    assert (run / "config.yaml").exists() and find_checkpoint(run) is None
    args = ["train", "lm-tiny-dat", *[f"--{o}" for o in TINY], "--train.max_iters=3", "--out", run]
    rc, out, err = cli(capsys, *args)
    assert rc == 0 and "holds no checkpoint yet" in err and "starting over" in err
    assert out.startswith("done: 3 iters") and saved_iter(run) == 3
    (run / "checkpoint").rename(tmp_path / "moved")  # again without a checkpoint: --resume starts over too
    rc, out, err = cli(capsys, "train", "--resume", "--out", run)
    assert rc == 0 and "starting over" in err and out.startswith("done: 3 iters"), err
    assert [r["iter"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"] == [1, 2, 3]
    with pytest.raises(RunDirError, match="no checkpoint to resume"):  # a typo'd path is still an error
        train(tiny("lm-tiny-dat", out=tmp_path / "nothing-here"), resume=True, verbose=False)


def test_a_nan_loss_stops_with_one_line_and_strict_json_metrics(tmp_path, capsys, monkeypatch):
    """Issue 10.9: metrics.jsonl had a bare NaN (not JSON); the run stops with one line and can be rerun."""
    real = trainer_module.make_task

    def poisoned(*args, **kwargs):
        task = real(*args, **kwargs)
        loss_sum = task.loss_sum
        task.loss_sum = lambda model, batch: loss_sum(model, batch) * float("nan")
        return task

    monkeypatch.setattr(trainer_module, "make_task", poisoned)
    run = tmp_path / "run"
    args = ["train", "lm-tiny-dat", *[f"--{o}" for o in TINY], "--train.max_iters=4", "--out", run]
    line = one_error_line(*cli(capsys, *args)[::2], "train")
    assert "the training loss is nan at iter 1" in line

    def no_constants(name):
        raise AssertionError(f"metrics.jsonl holds the non-JSON constant {name}")

    recs = [json.loads(x, parse_constant=no_constants) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in recs if r["split"] == "train"] == [None]
    monkeypatch.setattr(trainer_module, "make_task", real)
    rc, out, err = cli(capsys, *args)  # nothing to lose: the rerun starts over
    assert rc == 0 and "starting over" in err, err


@pytest.mark.parametrize("preset", ["seq2seq-tiny-dat", "seq2seq-tiny-transformer"])
def test_resume_loads_seq2seq_aliases_and_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys, preset):
    """Issue 10.1: the resume loader rejected the seq2seq models' alias keys, and printed an empty first line."""
    run = tmp_path / "run"
    args = ["train", preset, *[f"--{o}" for o in TINY], "--train.eval_interval=0", "--out", run]
    assert cli(capsys, *args, "--train.max_iters=2")[0] == 0
    rc, out, err = cli(capsys, *args, "--train.max_iters=3", "--resume")
    assert rc == 0 and "resuming at iter 2" in err and out.startswith("done: 3 iters"), err
    from safetensors.torch import load_file, save_file

    weights = run / "checkpoint" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(weights))
    line = one_error_line(*cli(capsys, *args, "--train.max_iters=4", "--resume")[::2], "train")
    assert "does not fit" in line and "missing keys (1)" in line


# ------------------------------------------------------------------------------------------------ loading
def test_load_pretrained_accepts_a_run_dir(lm_run):
    """Issue 10.9: every dat command took a run directory but load_pretrained did not."""
    from dual_attention.hf import load_pretrained

    model = load_pretrained(lm_run)
    assert type(model).__name__ == "DualAttnTransformerLM_HFHub"
    ref = load_pretrained(lm_run / "checkpoint")
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_mistyped_path_fails_at_once_offline_naming_both_places(tmp_path, capsys, monkeypatch, lm_run):
    """Issue 10.4: 'runs/lm-tiny-dta' (two parts, missing) was sent to the Hub and retried for 25 s."""
    import dual_attention.hf as hf
    from dual_attention.model_analysis.app_common import AppError, ModelStore

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "lm-tiny-dat").symlink_to(lm_run)

    real_download, online_calls = hf.hf_hub_download, []

    def no_network(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            online_calls.append(args)
        return real_download(*args, **kwargs)

    monkeypatch.setattr(hf, "hf_hub_download", no_network)
    for command in (["generate", "runs/lm-tiny-dta"], ["eval", "runs/lm-tiny-dta", "--data", "synthetic"],
                    ["info", "runs/lm-tiny-dta"]):
        line = one_error_line(*cli(capsys, *command)[::2], command[0])
        assert f"the local path '{tmp_path / 'runs' / 'lm-tiny-dta'}' does not exist" in line
        assert "not in the local Hub cache while the Hub is offline" in line
        assert "similar: runs/lm-tiny-dat" in line
    with pytest.raises(AppError, match="does not exist.* offline"):
        ModelStore("cpu").load("runs/lm-tiny-dta")
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online but unreachable: also at once
    monkeypatch.setattr(hf, "hub_offline", lambda: False)
    monkeypatch.setattr(hf, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(CheckpointError, match="does not exist.*the Hub is unreachable"):
        hf.load_pretrained("runs/lm-tiny-dta")
    with pytest.raises(CheckpointError, match="not found: the local path .* does not exist, and it is not a Hub id"):
        hf.load_pretrained("runs/x/lm-tiny-dta")
    assert online_calls == []


def test_non_finite_weights_are_refused_by_generate_and_eval(tmp_path, capsys, lm_run):
    """Issue 10.5: NaN weights crashed dat generate and gave `loss nan` with exit 0 from dat eval."""
    import shutil

    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(lm_run, run)
    weights = run / "checkpoint" / "model.safetensors"
    tensors = load_file(str(weights))
    key = next(k for k in sorted(tensors) if tensors[k].is_floating_point() and tensors[k].dim() == 2)
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(weights))
    for command in (["generate", run, "--prompt", "1+"], ["eval", run, "--data", "synthetic"]):
        line = one_error_line(*cli(capsys, *command)[::2], command[0])
        assert "not finite" in line and key in line


def test_seq2seq_prompt_longer_than_the_context_and_unknown_characters(tmp_path, capsys):
    """Issue 10.5/10.9: a too-long seq2seq prompt was a traceback; unknown characters were silently <unk>."""
    run = tmp_path / "s2s"
    train(tiny("seq2seq-tiny-transformer", "train.max_iters=1", "train.eval_interval=0", out=run), verbose=False)
    line = one_error_line(*cli(capsys, "generate", run, "--prompt", "1" * 500)[::2], "generate")
    assert "500 tokens long but the model's source context is" in line
    rc, out, err = cli(capsys, "generate", run, "--prompt", "abc\u00e9!", "--temperature", "0")
    assert rc == 0 and err.strip() == "dat generate: warning: characters outside the model's vocabulary become " \
                                      "<unk>: '!\u00e9'", err


# ------------------------------------------------------------------------------------------------ processes
def _run(code_or_args, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(code_or_args, capture_output=True, text=True, env=env, timeout=120, **kw)


def test_broken_pipe_ends_generate_quietly(lm_run):
    """Issue 10.5: `dat generate ... | head` printed a BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dual_attention", "generate", str(lm_run), "--prompt", "1",
                             "--max-new-tokens", "5000", "--no-cache"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    assert proc.stdout.read(1) == b"1"
    proc.stdout.close()  # the reader goes away, as `head -c 1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


def test_package_import_and_help_do_not_import_torch():
    """Issue 10.9: `dat --help` took 1.2-2 s because the package imported torch and every model."""
    code = ("import sys, dual_attention, dual_attention.cli as c; c.build_parser(); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "from dual_attention import DualAttnTransformerLM, VisionTransformer, __all__; "
            "import dual_attention.language_models as lm; assert DualAttnTransformerLM is lm.DualAttnTransformerLM; "
            "assert all(hasattr(dual_attention, n) for n in __all__) and set(__all__) <= set(dir(dual_attention)); "
            "print('ok')")
    proc = _run([sys.executable, "-c", code])
    assert proc.stdout.strip() == "ok", proc.stderr
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        import dual_attention

        dual_attention.Nope  # noqa: B018


def test_errors_under_torchrun_print_once(capsys, monkeypatch):
    """Issue 10.9: every process printed the same error; only rank 0 does, every rank exits non-zero."""
    monkeypatch.setenv("RANK", "1")
    rc, out, err = cli(capsys, "train", "lm-tiny-dat", "--optim.beta1=2")
    assert rc == 2 and err == ""
    monkeypatch.setenv("RANK", "0")
    line = one_error_line(*cli(capsys, "train", "lm-tiny-dat", "--optim.beta1=2")[::2], "train")
    assert "optim.beta1 must be in [0, 1), got 2" in line
