"""Every `dat` sub-command through invalid values of each of its flags and configuration fields (issue 10).

Each case must give exactly one line on stderr (``dat <command>: error: ...`` or argparse's one-line form), a
non-zero exit status, no traceback, and leave the run directory it names byte-for-byte untouched, even with
``--overwrite``. ``test_every_config_field_has_an_invalid_case`` keeps the table complete when a field is added.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from dual_attention.cli import main
from dual_attention.training.config import SECTIONS, load_config
from dual_attention.training.trainer import train

TINY = [
    "model.d_model=32", "model.n_layers=1", "model.dff=64", "model.max_block_size=16", "model.n_symbols=8",
    "train.batch_size=8", "train.eval_iters=2", "train.log_interval=1", "train.progress=false",
    "data.synthetic_size=200", "optim.warmup_iters=2", "train.max_iters=2", "train.eval_interval=0",
]

#: config key -> invalid values (as typed on the command line)
BAD_CONFIG: dict[str, list[str]] = {
    "name": [""],
    "model.family": ["plant"],
    "model.arch": ["rnn"],
    "model.d_model": ["0", "-1", "abc", "1.5"],
    "model.n_layers": ["0"],
    "model.n_heads": ["0"],
    "model.n_heads_sa": ["-1", "3"],  # 3: d_model 32 is not divisible by 3 + 2 heads
    "model.n_heads_ra": ["-1"],
    "model.n_kv_heads": ["0", "3"],
    "model.n_relations": ["0"],
    "model.rel_activation": ["bogus"],
    "model.symmetric_rels": ["maybe"],
    "model.ra_type": ["bogus"],
    "model.share_attn_params": ["maybe"],
    "model.symmetric_attn": ["maybe"],
    "model.qk_norm": ["maybe", "true"],  # true: needs model.ra_type=hadamard
    "model.update_symbols_each_layer": ["maybe"],
    "model.symbol_retrieval": ["bogus"],
    "model.n_symbols": ["0"],
    "model.symbol_heads": ["0"],
    "model.dff": ["0"],
    "model.dropout": ["1", "-0.1", "nan"],
    "model.activation": ["bogus"],
    "model.norm_first": ["maybe"],
    "model.norm_type": ["bogus"],
    "model.bias": ["maybe"],
    "model.vocab_size": ["0", "-3", "10"],  # 10: smaller than the byte tokenizer's 256
    "model.max_block_size": ["0"],
    "model.pos_enc_type": ["bogus"],
    "model.n_layers_dec": ["0"],
    "model.n_heads_cross": ["0"],
    "model.in_block_size": ["0"],
    "model.out_block_size": ["0"],
    "model.image_shape": ["[3,0,8]", "[3,8]"],
    "model.patch_size": ["[0,4]", "[4]"],
    "model.num_classes": ["0"],
    "model.pool": ["max"],
    "model.extra_kwargs": ["{bogus_kwarg: 1}", "notamapping"],
    "data.train": ["missing.txt"],
    "data.val": ["missing.txt"],
    "data.test": ["missing.txt"],
    "data.format": ["csv"],
    "data.val_fraction": ["1", "-0.1", "nan"],
    "data.tokenizer": ["bogus"],
    "data.block_size": ["0"],
    "data.synthetic_size": ["0"],
    "data.hf_val_docs": ["0"],
    "optim.learning_rate": ["0", "-1", "nan", "inf"],
    "optim.min_lr": ["-1e-4", "nan", "1"],
    "optim.weight_decay": ["-0.1", "nan"],
    "optim.beta1": ["2", "-0.1", "nan"],
    "optim.beta2": ["1"],
    "optim.grad_clip": ["-1", "nan"],
    "optim.warmup_iters": ["-1"],
    "optim.lr_decay_iters": ["-5", "0"],
    "optim.schedule": ["step"],
    "train.max_iters": ["0"],
    "train.batch_size": ["0"],
    "train.grad_accum_steps": ["0", "3"],
    "train.eval_interval": ["-1"],
    "train.eval_iters": ["0"],
    "train.eval_batch_size": ["0"],
    "train.log_interval": ["0"],
    "train.checkpoint_interval": ["-1"],
    "train.mc_eval_file": ["no-such-task.jsonl"],
    "train.mc_eval_limit": ["0"],
    "train.seed": ["-1", "x"],
    "train.device": ["tpu", "cuda:99", "cpu:x"],
    "train.dtype": ["float8"],
    "train.compile": ["maybe"],
    "train.fsdp": ["maybe"],
    "train.progress": ["maybe"],
    "train.tensorboard": ["maybe"],
    "train.wandb": ["maybe"],
}

#: fields without an invalid value of their own (any text is a valid value), and why
NO_INVALID_VALUE = {
    "train.out_dir": "any path; a file in its place is a --out case below",
    "train.wandb_project": "any name",
    "data.hf_dataset": "read only with data.train=hf, which streams from the Hub (no network in tests)",
    "data.hf_name": "read only with data.train=hf",
    "data.hf_split": "read only with data.train=hf",
    "data.hf_text_field": "read only with data.train=hf",
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """One thread, no network, and no experiment grid ever started by a case that wrongly passes validation."""
    from dual_attention.experiments import math as mx
    from dual_attention.experiments import relational_games as rg

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))

    def started(*args, **kwargs):
        raise AssertionError("the flags were accepted and the experiment started")

    monkeypatch.setattr(rg, "run_grid", started)
    monkeypatch.setattr(mx, "run_math", started)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny LM run: every case names it, and it must come out untouched."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("walk") / "run"
    train(load_config("lm-tiny-dat", [*TINY, f"train.out_dir={out}"]), verbose=False)
    torch.set_num_threads(n)
    return out


def snapshot(root):
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def check(capsys, run, argv):
    before = snapshot(run)
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc not in (0, None), f"{argv} was accepted"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0] and "Traceback" not in err, f"{argv}:\n{err}"
    assert snapshot(run) == before, f"{argv} changed the run directory"
    return lines[0]


def test_every_config_field_has_an_invalid_case():
    keys = {"name"} | {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert keys == set(BAD_CONFIG) | set(NO_INVALID_VALUE)


def config_cases():
    return [(key, value) for key, values in BAD_CONFIG.items() for value in values]


@pytest.mark.parametrize("key,value", config_cases(), ids=[f"{k}={v}" for k, v in config_cases()])
def test_train_rejects_each_invalid_config_value_with_overwrite(capsys, run, key, value):
    line = check(capsys, run, ["train", "lm-tiny-dat", *[f"--{o}" for o in TINY], f"--{key}={value}",
                               "--out", run, "--overwrite"])
    assert line.startswith("dat train: error: ")
    if key != "name":
        assert key.split(".")[-1] in line or "model config" in line or "data" in line, line


def test_train_flags(capsys, run, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a run")
    base = ["train", "lm-tiny-dat", *[f"--{o}" for o in TINY]]
    cases = [
        (["train", "no-such-preset", "--out", run, "--overwrite"], "neither a config file nor a preset"),
        (["train", tmp_path / "missing.yaml", "--out", run, "--overwrite"], "does not exist"),
        ([*base, "--out", run, "--resume", "--overwrite"], "exclude each other"),
        ([*base, "--out", run], "already exists"),
        ([*base, "--out", a_file, "--overwrite"], "is a file"),
        ([*base, "--train.out_dir", a_file], "is a file"),
        (["train", "--resume"], "give a CONFIG"),
        (["train", "--resume", "--out", tmp_path], "does not exist: is"),
        ([*base, "--out", run, "--overwrite", "--no-such-flag"], "unrecognized arguments"),
        ([*base, "--out", run, "--overwrite", "--bogus.key=1"], "unknown config key"),
        ([*base, "--out", run, "--overwrite", "--model.bogus=1"], "unknown config key"),
        ([*base, "--out", run, "--overwrite", "--train.max_iters"], "expects int"),
    ]
    for argv, needle in cases:
        assert needle in check(capsys, run, argv)


def test_eval_flags(capsys, run, tmp_path):
    ok = ["eval", run, "--data", "synthetic"]
    cases = [
        (["eval", run], "one of --data (a data file) or --tasks"),
        ([*ok, "--batch-size", "0"], "--batch-size"),
        ([*ok, "--batch-size", "x"], "invalid int value"),
        ([*ok, "--max-batches", "0"], "--max-batches"),
        ([*ok, "--device", "tpu"], "--device='tpu'"),
        ([*ok, "--device", "cuda:9"], "--device='cuda:9'"),
        ([*ok, "--seed", "x"], "invalid int value"),
        (["eval", run, "--data", tmp_path / "missing.txt"], "missing.txt"),
        (["eval", run, "--data", tmp_path / "images.pt"], "looks like image (vision) data"),
        (["eval", tmp_path / "nope", "--data", "synthetic"], "does not exist"),
        (["eval", "runs/nope", "--data", "synthetic"], "offline"),
    ]
    for argv, needle in cases:
        assert needle in check(capsys, run, argv)


def test_generate_flags(capsys, run, tmp_path):
    cases = [
        (["generate", run, "--max-new-tokens", "-1"], "--max-new-tokens"),
        (["generate", run, "--max-new-tokens", "x"], "invalid int value"),
        (["generate", run, "--temperature", "nan"], "--temperature"),
        (["generate", run, "--temperature", "-1"], "--temperature"),
        (["generate", run, "--temperature", "inf"], "--temperature"),
        (["generate", run, "--top-k", "0"], "--top-k"),
        (["generate", run, "--top-p", "0"], "--top-p"),
        (["generate", run, "--top-p", "nan"], "--top-p"),
        (["generate", run, "--top-p", "1.5"], "--top-p"),
        (["generate", run, "--seed", "x"], "invalid int value"),
        (["generate", run, "--device", "tpu"], "--device='tpu'"),
        (["generate", run, "--device", "cuda"], "--device='cuda'"),
        (["generate", tmp_path / "nope"], "does not exist"),
        (["generate", "runs/nope"], "offline"),
        (["generate"], "required"),
    ]
    for argv, needle in cases:
        assert needle in check(capsys, run, argv)


def test_info_plot_and_viz_flags(capsys, run, tmp_path):
    cases = [
        (["info", run, "--depth", "0"], "--depth"),
        (["info", run, "--depth", "x"], "invalid int value"),
        (["info", run, "--model.d_model=8"], "overrides apply to a config"),
        (["info", "lm-tiny-dat", "--model.d_model=0"], "model.d_model must be > 0"),
        (["info", "lm-tiny-dat", "--optim.beta1=nan"], "optim.beta1"),
        (["info", tmp_path / "nope"], "does not exist"),
        (["info", tmp_path / "nope.yaml"], "does not exist"),
        (["plot", tmp_path / "nope"], "nope"),
        (["plot", run, "--out", tmp_path / "no" / "dir" / "x.png"], "cannot write the plot"),
        (["viz", run, "--text", "1+1", "--out", tmp_path / "v", "--scale", "0"], "--scale"),
        (["viz", run, "--text", "1+1", "--out", tmp_path / "v", "--scale", "nan"], "--scale"),
        (["viz", run, "--text", "1+1", "--out", tmp_path / "v", "--dpi", "5"], "--dpi"),
        (["viz", run, "--text", "1+1", "--out", tmp_path / "v", "--layers", "x"], "--layers"),
        (["viz", run, "--text", "1+1", "--out", tmp_path / "v", "--layers", "7"], "layer"),
        (["viz", run, "--text", "1+1", "--out", tmp_path / "v", "--heads", "x"], "--heads"),
        (["viz", run, "--text", "1+1", "--out", tmp_path / "v", "--relations", "x"], "--relations"),
        (["viz", run, "--text", "1+1", "--out", tmp_path / "v", "--views", "bogus"], "--views"),
        (["viz", run, "--text", "1+1", "--out", tmp_path / "v", "--postprocess", "bogus"], "invalid choice"),
        (["viz", run, "--text", "1+1", "--out", tmp_path / "v", "--device", "tpu"], "--device='tpu'"),
        (["viz", run, "--out", tmp_path / "v"], "give --text"),
        (["viz", run, "--text", "1+1"], "required: --out"),
        (["viz", tmp_path / "nope", "--text", "1", "--out", tmp_path / "v"], "does not exist"),
    ]
    for argv, needle in cases:
        assert needle in check(capsys, run, argv)


def test_demo_and_experiment_flags(capsys, run):
    cases = [
        (["demo", "--tasks", "bogus"], "--tasks"),
        (["demo", "--sizes", "1"], "--sizes"),
        (["demo", "--sizes", "x"], "--sizes"),
        (["demo", "--seeds", "x"], "--seeds"),
        (["demo", "--seeds", "3-1"], "--seeds"),
        (["demo", "--models", "bogus"], "--models"),
        (["demo", "--epochs", "0"], "--epochs"),
        (["demo", "--epochs", "nan"], "--epochs"),
        (["demo", "--steps", "5"], "unrecognized arguments"),  # the demo counts epochs, as the paper did
        (["demo", "--batch-size", "0"], "--batch-size"),
        (["demo", "--lr", "0"], "--lr"),
        (["demo", "--lr", "nan"], "--lr"),
        (["demo", "--n-test", "1"], "--n-test"),
        (["demo", "--workers", "0"], "--workers"),
        (["demo", "--threads", "0"], "--threads"),
        (["experiment"], "name an experiment"),
        (["experiment", "bogus"], "invalid choice"),
        (["experiment", "math", "--families", "bogus"], "--families"),
        (["experiment", "math", "--seeds", "x"], "--seeds"),
        (["experiment", "math", "--models", "bogus"], "--models"),
        (["experiment", "math", "--steps", "0"], "--steps"),
        (["experiment", "math", "--batch-size", "0"], "--batch-size"),
        (["experiment", "math", "--lr", "-1"], "--lr"),
        (["experiment", "math", "--n-train", "0"], "--n-train"),
        (["experiment", "math", "--n-test", "0"], "--n-test"),
        (["experiment", "math", "--difficulty", "extreme"], "--difficulty"),
        (["experiment", "math", "--d-model", "30"], "--d-model"),
        (["experiment", "math", "--workers", "0"], "--workers"),
        (["experiment", "math", "--threads", "x"], "--threads"),
        (["bogus-command"], "invalid choice"),
    ]
    for argv, needle in cases:
        assert needle in check(capsys, run, argv)
