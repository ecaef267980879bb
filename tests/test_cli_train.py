"""`dat train/eval/generate/info/plot` through dual_attention.cli.main: happy paths and every bad-input case."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dual_attention.cli import main
from dual_attention.training.config import load_config
from dual_attention.training.data import synthetic_images
from dual_attention.training.trainer import train

TINY = [
    "model.d_model=32", "model.n_layers=1", "model.dff=64", "model.max_block_size=16", "model.n_symbols=8",
    "train.batch_size=8", "train.eval_iters=2", "train.log_interval=1", "train.progress=false",
    "data.synthetic_size=400", "optim.warmup_iters=2", "train.max_iters=4", "train.eval_interval=2",
]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny trained run per family."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for fam, preset in (("lm", "lm-tiny-dat"), ("seq2seq", "seq2seq-tiny-transformer"),
                        ("vision", "vision-tiny-dat")):
        cfg = load_config(preset, [*TINY, f"train.out_dir={root / fam}"])
        train(cfg, verbose=False)
        out[fam] = root / fam
    torch.set_num_threads(n)
    return out


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(rc, err, command, fragment):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"dat {command}: error: "), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err


# --------------------------------------------------------------------------------------------------- happy paths


def test_train_from_preset_and_from_yaml(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "train", "vision-tiny-transformer", *[f"--{o}" for o in TINY],
                           "--out", tmp_path / "a")
    assert rc == 0, err
    assert out.startswith("done: 4 iters") and "val_acc" in out
    assert "VisionTransformer:" in err and "iter 4: val loss" in err
    cfg_file = tmp_path / "exp.yaml"
    cfg_file.write_text("base: lm-tiny-transformer\ntrain:\n  max_iters: 3\n  eval_interval: 3\n"
                        + "".join(f"# {o}\n" for o in TINY))
    rc, out, err = run_cli(capsys, "train", cfg_file, *[f"--{o}" for o in TINY if "max_iters" not in o],
                           "--train.eval_interval", "3", "--out", tmp_path / "b")
    assert rc == 0, err
    assert out.startswith("done: 3 iters")
    saved = load_config(str(tmp_path / "b" / "config.yaml"))
    assert (saved.name, saved.model.arch, saved.train.max_iters, saved.model.vocab_size) == (
        "exp", "transformer", 3, 256)
    # resume without repeating the config: continue to more iterations
    rc, out, err = run_cli(capsys, "train", "--resume", "--out", tmp_path / "b", "--train.max_iters=5")
    assert rc == 0, err
    assert out.startswith("done: 5 iters") and "resuming at iter 3" in err


def test_list_presets_and_print_config(capsys):
    rc, out, _ = run_cli(capsys, "train", "--list-presets")
    assert rc == 0 and "lm-dat-343m" in out and "vision-tiny-transformer" in out
    rc, out, _ = run_cli(capsys, "train", "lm-dat-343m", "--print-config", "--model.arch=transformer")
    assert rc == 0 and "arch: transformer" in out and "d_model: 1024" in out


def test_eval_each_family(runs, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "eval", runs["lm"], "--data", "synthetic", "--json", "--max-batches", "3")
    assert rc == 0, err
    m = json.loads(out)
    assert m["ppl"] == pytest.approx(torch.tensor(m["loss"]).exp().item(), rel=1e-5) and 0 <= m["acc"] <= 1
    text = tmp_path / "corpus.txt"
    text.write_text("12+30=42\n7-9=-2\n" * 40)
    rc, out, err = run_cli(capsys, "eval", runs["lm"] / "checkpoint", "--data", text)
    assert rc == 0, err
    assert out.startswith("DualAttnTransformerLM on ") and " ppl " in out
    x, y = synthetic_images(50, seed=9)
    torch.save({"images": x, "labels": y}, tmp_path / "test.pt")
    rc, out, err = run_cli(capsys, "eval", runs["vision"], "--data", tmp_path / "test.pt", "--json")
    assert rc == 0, err
    assert json.loads(out)["acc"] in {i / 50 for i in range(51)}
    (tmp_path / "pairs.tsv").write_text("cab\tabc\nba\tab\n")
    rc, out, err = run_cli(capsys, "eval", runs["seq2seq"], "--data", tmp_path / "pairs.tsv", "--json")
    assert rc == 0, err
    assert set(json.loads(out)) >= {"loss", "acc", "seq_acc"}


def _trainer_eval(run_dir, data, batch_size, max_batches, seed):
    """The metrics of the trainer's evaluation of a training split read from ``data`` (what ``evaluate_checkpoint``
    computed before it had a path of its own): the run's config with ``data.train = data``, its Task."""
    from dual_attention.training.inference import load_trained
    from dual_attention.training.tasks import make_task

    loaded = load_trained(run_dir)
    cfg = loaded.train_config
    cfg.data.train, cfg.data.val, cfg.data.test, cfg.data.val_fraction = data, None, None, 0.0
    cfg.data.format = "synthetic" if data == "synthetic" else "auto"
    cfg.train.eval_batch_size, cfg.train.eval_iters, cfg.train.seed = batch_size, max_batches, seed
    return make_task(cfg, torch.device("cpu"), tokenizer=loaded.tokenizer).evaluate(loaded.model, "train")


def test_evaluate_checkpoint_equals_the_trainers_evaluation(runs, tmp_path):
    """evaluate_checkpoint reads the file itself and calls the trainer's evaluation loops: the same numbers, to the
    last bit, as the trainer's evaluation of that file as a split (same LM windows for a seed, same chunks)."""
    from dual_attention.training.inference import evaluate_checkpoint

    (tmp_path / "corpus.txt").write_text("12+30=42\n7-9=-2\n" * 40)
    x, y = synthetic_images(30, seed=9)
    torch.save({"images": x, "labels": y}, tmp_path / "test.pt")
    (tmp_path / "pairs.tsv").write_text("cab\tabc\nba\tab\nabcdefg\tabcdefg\ncba\tabc\n")
    cases = [("lm", "synthetic", 32, 2, 0), ("lm", tmp_path / "corpus.txt", 5, 3, 7),
             ("seq2seq", tmp_path / "pairs.tsv", 3, 1, 0), ("seq2seq", "synthetic", 32, 1, 2),
             ("vision", tmp_path / "test.pt", 7, 1, 0), ("vision", "synthetic", 32, 1, 1)]
    for fam, data, bs, n, seed in cases:
        _, got = evaluate_checkpoint(str(runs[fam]), str(data), batch_size=bs, max_batches=n, seed=seed)
        assert got == _trainer_eval(runs[fam], str(data), bs, n, seed), (fam, data)
    _, other_seed = evaluate_checkpoint(str(runs["lm"]), "synthetic", max_batches=2, seed=1)
    assert other_seed != evaluate_checkpoint(str(runs["lm"]), "synthetic", max_batches=2, seed=0)[1]


def test_generate_streams_a_greedy_continuation(runs, capsys):
    from dual_attention.hf import load_pretrained

    rc, out, err = run_cli(capsys, "generate", runs["lm"], "--prompt", "1+1=", "--max-new-tokens", "6",
                           "--temperature", "0")
    assert rc == 0, err
    model = load_pretrained(str(runs["lm"] / "checkpoint"))
    ids = model.generate(torch.tensor([list(b"1+1=")]), 6, temperature=0.0)[0].tolist()
    assert out == bytes(ids).decode("utf-8", errors="replace") + "\n"
    rc, out2, _ = run_cli(capsys, "generate", runs["lm"], "--prompt", "1+1=", "--max-new-tokens", "6",
                          "--temperature", "1.0", "--top-k", "5", "--top-p", "0.9", "--seed", "3")
    rc, out3, _ = run_cli(capsys, "generate", runs["lm"], "--prompt", "1+1=", "--max-new-tokens", "6",
                          "--temperature", "1.0", "--top-k", "5", "--top-p", "0.9", "--seed", "3")
    assert rc == 0 and out2 == out3 and out2.startswith("1+1=")
    rc, out, err = run_cli(capsys, "generate", runs["seq2seq"], "--prompt", "dcba", "--max-new-tokens", "5",
                           "--temperature", "0")
    assert rc == 0, err
    assert set(out.strip()) <= set("abcdefghij") and len(out.strip()) <= 5


def test_info_for_presets_and_checkpoints(runs, capsys):
    rc, out, err = run_cli(capsys, "info", "lm-dat-343m")
    assert rc == 0, err
    assert "Total params: 344,370,144 (344.37M)" in out
    rc, out, _ = run_cli(capsys, "info", "lm-transformer-353m", "--model.arch=dat")
    assert rc == 0 and "DualAttnTransformerLM (lm-transformer-353m)" in out
    rc, out, err = run_cli(capsys, "info", runs["vision"], "--depth", "3", "--kwargs")
    assert rc == 0, err
    n = sum(p.numel() for p in {id(p): p for p in load_pretrained_params(runs["vision"])}.values())
    assert f"Total params: {n:,}" in out and '"num_classes": 2' in out
    rc, out, err = run_cli(capsys, "info", "seq2seq-tiny-dat")
    assert rc == 0 and "Seq2SeqDualAttnTransformer" in out


def load_pretrained_params(run_dir):
    from dual_attention.hf import load_pretrained

    return list(load_pretrained(str(run_dir / "checkpoint")).parameters())


def test_plot_writes_a_png(runs, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "plot", runs["lm"], "--out", tmp_path / "curve.png")
    assert rc == 0, err
    assert out.strip() == str(tmp_path / "curve.png")
    data = (tmp_path / "curve.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    rc, out, err = run_cli(capsys, "plot", runs["lm"], runs["seq2seq"], "--out", tmp_path / "both.png", "--log-y")
    assert rc == 0, err
    assert (tmp_path / "both.png").read_bytes()[:4] == b"\x89PNG"
    rc, out, err = run_cli(capsys, "plot", runs["vision"])
    assert rc == 0 and (runs["vision"] / "loss.png").is_file()


# --------------------------------------------------------------------------------------------------- bad input


@pytest.fixture()
def corrupted(runs, tmp_path):
    """Copies of the LM run with a damaged file each."""
    out = {}
    for name, fname, content in (("weights", "model.safetensors", b"\x00garbage"),
                                 ("config", "config.json", b"{not json"),
                                 ("state", "trainer_state.pt", b"PK\x03\x04 truncated")):
        d = tmp_path / name
        shutil.copytree(runs["lm"], d)
        (d / "checkpoint" / fname).write_bytes(content)
        out[name] = d
    return out


def test_bad_data_files(tmp_path, capsys):
    base = ["train", "lm-tiny-dat", *[f"--{o}" for o in TINY]]
    rc, _, err = run_cli(capsys, *base, "--data.train=/nonexistent/corpus.txt", "--out", tmp_path / "r1")
    assert_one_line_error(rc, err, "train", "data.train file '/nonexistent/corpus.txt' does not exist")
    rc, _, err = run_cli(capsys, *base, f"--data.train={tmp_path}", "--data.format=text", "--out", tmp_path / "r2")
    assert_one_line_error(rc, err, "train", "is a directory, expected a file")
    (tmp_path / "empty.txt").write_text("")
    rc, _, err = run_cli(capsys, *base, f"--data.train={tmp_path / 'empty.txt'}", "--out", tmp_path / "r3")
    assert_one_line_error(rc, err, "train", "is empty")
    (tmp_path / "bad.tsv").write_text("no tab here\n")
    rc, _, err = run_cli(capsys, "train", "seq2seq-tiny-dat", f"--data.train={tmp_path / 'bad.tsv'}",
                         "--out", tmp_path / "r4")
    assert_one_line_error(rc, err, "train", "line 1 has no TAB between source and target")
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    rc, _, err = run_cli(capsys, "train", "vision-tiny-dat", f"--data.train={tmp_path / 'bad.pt'}",
                         "--out", tmp_path / "r5")
    assert_one_line_error(rc, err, "train", "is not a readable torch file")
    rc, _, err = run_cli(capsys, "eval", tmp_path / "nope", "--data", "synthetic")
    assert_one_line_error(rc, err, "eval", "does not exist")
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 6))  # nothing created on errors


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["lm-tiny-dat", "--train.max_iter=5"], "unknown config key 'train.max_iter'; allowed keys in train:"),
        (["lm-tiny-dat", "--modle.d_model=5"], "unknown config key 'modle.d_model': the top-level keys are"),
        (["lm-nope"], "'lm-nope' is neither a config file nor a preset; presets: lm-tiny-dat"),
        (["lm-tiny-dat", "--train.max_iters=abc"], "config key train.max_iters expects int, got 'abc'"),
        (["lm-tiny-dat", "--model.dropout=lots"], "config key model.dropout expects float, got 'lots'"),
        (["lm-tiny-dat", "--train.dtype=fp8"], "train.dtype='fp8' is not one of: auto, float32, bfloat16"),
        (["lm-tiny-dat", "--model.d_model=30"], "cannot build DualAttnTransformerLM_HFHub from the model config"),
        (["missing.yaml"], "config file 'missing.yaml' does not exist"),
        (["lm-tiny-dat", "--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
        ([], "give a CONFIG (YAML file or preset), or --resume --out RUN_DIR"),
    ],
)
def test_bad_configs(argv, fragment, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "train", *argv, *(["--out", tmp_path / "run"] if argv else []))
    assert_one_line_error(rc, err, "train", fragment)
    assert not (tmp_path / "run").exists()


def test_invalid_yaml_file(tmp_path, capsys):
    f = tmp_path / "broken.yaml"
    f.write_text("model: [d_model: 3\n")
    rc, _, err = run_cli(capsys, "train", f)
    assert_one_line_error(rc, err, "train", "is not valid YAML")


def test_existing_run_dir_and_wrong_family_resume(runs, capsys):
    before = (runs["lm"] / "metrics.jsonl").read_text()
    rc, _, err = run_cli(capsys, "train", "lm-tiny-dat", "--out", runs["lm"])
    assert_one_line_error(rc, err, "train", "already exists: pass --resume to continue it or --overwrite")
    rc, _, err = run_cli(capsys, "train", "lm-tiny-dat", *[f"--{o}" for o in TINY], "--resume", "--out",
                         runs["vision"])
    assert_one_line_error(rc, err, "train", "is a 'vision' model but the config asks for model.family='lm'")
    assert (runs["lm"] / "metrics.jsonl").read_text() == before


def test_checkpoint_of_another_family(runs, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "generate", runs["vision"], "--prompt", "hi")
    assert_one_line_error(rc, err, "generate", "is a vision model (VisionDualAttnTransformer); dat generate needs")
    torch.save({"images": torch.zeros(2, 3, 16, 16), "labels": torch.zeros(2, dtype=torch.long)}, tmp_path / "v.pt")
    rc, _, err = run_cli(capsys, "eval", runs["lm"], "--data", tmp_path / "v.pt")
    assert_one_line_error(rc, err, "eval", "is a language model (DualAttnTransformerLM) but")
    (tmp_path / "t.txt").write_text("hello world " * 20)
    rc, _, err = run_cli(capsys, "eval", runs["vision"], "--data", tmp_path / "t.txt")
    assert_one_line_error(rc, err, "eval", "is a vision model (VisionDualAttnTransformer) but")


def test_corrupted_checkpoints(corrupted, capsys):
    for cmd in (["eval", corrupted["weights"], "--data", "synthetic"], ["generate", corrupted["weights"]],
                ["info", corrupted["weights"]]):
        rc, _, err = run_cli(capsys, *cmd)
        assert_one_line_error(rc, err, cmd[0], "cannot read weights from")
    rc, _, err = run_cli(capsys, "eval", corrupted["config"], "--data", "synthetic")
    assert_one_line_error(rc, err, "eval", "config.json is not valid JSON (corrupted checkpoint)")
    rc, _, err = run_cli(capsys, "train", "--resume", "--out", corrupted["state"], "--train.max_iters=6")
    assert_one_line_error(rc, err, "train", "trainer_state.pt is corrupted")


def test_bad_generate_and_plot_arguments(runs, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "generate", runs["lm"], "--top-p", "2")
    assert_one_line_error(rc, err, "generate", "--top-p must be in (0, 1], got 2.0")
    rc, _, err = run_cli(capsys, "generate", runs["lm"], "--temperature", "-1")
    assert_one_line_error(rc, err, "generate", "--temperature must be a finite number >= 0")
    rc, _, err = run_cli(capsys, "plot", tmp_path)
    assert_one_line_error(rc, err, "plot", "metrics.jsonl does not exist: is")
