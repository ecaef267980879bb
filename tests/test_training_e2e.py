"""End-to-end training on CPU: every family and architecture, in-memory data, resume equivalence, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from dual_attention.training.config import load_config
from dual_attention.training.trainer import RunDirError, train


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot on a busy machine; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: tiny sizes: every run below takes about a second on 2 CPU cores
TINY = [
    "model.d_model=32", "model.n_layers=1", "model.dff=64", "model.max_block_size=16", "model.n_symbols=8",
    "train.batch_size=8", "train.eval_iters=2", "train.log_interval=1", "train.progress=false",
    "data.synthetic_size=400", "optim.warmup_iters=2",
]


def tiny(preset: str, *extra: str, out=None):
    cfg = load_config(preset, TINY + list(extra))
    cfg.train.out_dir = str(out) if out is not None else None
    return cfg


def train_losses(history):
    return [(r["iter"], r["loss"]) for r in history if r["split"] == "train"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lm_run_end_to_end_learns_and_writes_a_loadable_checkpoint(tmp_path):
    from dual_attention.hf import DualAttnTransformerLM_HFHub, load_pretrained

    run = tmp_path / "run"
    cfg = tiny("lm-tiny-dat", "train.max_iters=40", "train.eval_interval=20", "optim.learning_rate=1e-2", out=run)
    res = train(cfg, verbose=False)
    assert res.iters == 40 and not res.interrupted
    vals = [r["loss"] for r in res.history if r["split"] == "val"]
    assert len(vals) == 3  # iters 0, 20, 40
    assert vals[-1] < vals[0] - 1.0  # ln(256) = 5.55 at the start; the arithmetic corpus is easy
    assert res.metrics["val_ppl"] == pytest.approx(torch.tensor(res.metrics["val_loss"]).exp().item(), rel=1e-5)
    # files of the run
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "config.yaml", "metrics.jsonl"]
    ck = run / "checkpoint"
    assert sorted(p.name for p in ck.iterdir()) == [
        "config.json", "model.safetensors", "tokenizer.json", "train_config.yaml", "trainer_state.pt"]
    assert json.loads((ck / "tokenizer.json").read_text()) == {"type": "byte"}
    records = read_jsonl(run / "metrics.jsonl")
    assert records == res.history
    assert [r["iter"] for r in records if r["split"] == "train"] == list(range(1, 41))
    assert all(r["tokens"] == r["iter"] * 8 * 16 for r in records if r["split"] == "train")
    state = torch.load(ck / "trainer_state.pt", weights_only=True)
    assert state["iter"] == 40 and state["config"]["model"]["vocab_size"] == 256
    # the checkpoint reloads strictly and computes the same logits
    model = load_pretrained(str(ck))
    assert isinstance(model, DualAttnTransformerLM_HFHub)
    x = torch.randint(0, 256, (2, 16))
    res.model.eval()
    torch.testing.assert_close(model(x)[0], res.model(x)[0])


@pytest.mark.parametrize("preset", ["lm-tiny-transformer", "seq2seq-tiny-dat", "seq2seq-tiny-transformer",
                                    "vision-tiny-dat", "vision-tiny-transformer"])
def test_every_family_and_architecture_trains(preset):
    res = train(tiny(preset, "train.max_iters=6", "train.eval_interval=6", "optim.learning_rate=5e-3"),
                verbose=False)
    fam = preset.split("-")[0]
    expected_class = {
        ("lm", "transformer"): "TransformerLM",
        ("seq2seq", "dat"): "Seq2SeqDualAttnTransformer",
        ("seq2seq", "transformer"): "Seq2SeqTransformer",
        ("vision", "dat"): "VisionDualAttnTransformer",
        ("vision", "transformer"): "VisionTransformer",
    }[(fam, preset.split("-")[-1])]
    assert type(res.model).__name__ == expected_class + "_HFHub"
    losses = [loss for _, loss in train_losses(res.history)]
    assert len(losses) == 6 and all(torch.isfinite(torch.tensor(losses)))
    first_val, last_val = [r for r in res.history if r["split"] == "val"][:: 1][0], res.history[-1]
    assert last_val["split"] == "val" and last_val["iter"] == 6
    assert last_val["loss"] < first_val["loss"]
    assert 0.0 <= res.metrics["val_acc"] <= 1.0
    if fam == "seq2seq":
        assert 0.0 <= res.metrics["val_seq_acc"] <= res.metrics["val_acc"]


def test_seq2seq_model_decodes_after_training():
    res = train(tiny("seq2seq-tiny-transformer", "train.max_iters=40", "train.eval_interval=0",
                     "optim.learning_rate=1e-2", "model.d_model=48"), verbose=False)
    tok = res.tokenizer
    src = torch.tensor([tok.encode("cab")])
    out = res.model.eval().generate(src, max_new_tokens=6, bos_token_id=tok.bos_token_id,
                                    eos_token_id=tok.eos_token_id)
    assert out.shape[0] == 1 and out[0, 0] == tok.bos_token_id
    assert set(tok.decode(out[0, 1:].tolist())) <= set("abcdefghij")


def test_vision_with_in_memory_tensors_reports_test_accuracy(tmp_path, monkeypatch):
    from dual_attention.training.data import synthetic_images

    monkeypatch.chdir(tmp_path)
    x, y = synthetic_images(160, seed=3)
    xt, yt = synthetic_images(64, seed=4)
    cfg = tiny("vision-tiny-dat", "train.max_iters=8", "train.eval_interval=4")
    cfg.data.train = None  # all data comes from memory
    res = train(cfg, train_data=(x, y), val_data=(xt[:32], yt[:32]), test_data=(xt, yt), verbose=False)
    model = res.model.eval()
    with torch.no_grad():
        acc = (model(xt).argmax(-1) == yt).float().mean().item()
    assert res.metrics["test_acc"] == pytest.approx(acc)
    assert res.history[-1]["split"] == "test"
    assert list(tmp_path.iterdir()) == []  # out_dir=None writes nothing


def test_gradient_accumulation_matches_one_big_batch_despite_padding():
    """Seq2seq micro-batches are padded differently; the loss is normalised by the global token count."""
    a = train(tiny("seq2seq-tiny-dat", "train.max_iters=4", "train.eval_interval=0"), verbose=False)
    b = train(tiny("seq2seq-tiny-dat", "train.max_iters=4", "train.eval_interval=0", "train.grad_accum_steps=4"),
              verbose=False)
    la, lb = train_losses(a.history), train_losses(b.history)
    assert [i for i, _ in la] == [i for i, _ in lb]
    torch.testing.assert_close([v for _, v in la], [v for _, v in lb], rtol=1e-5, atol=1e-6)
    for (k, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("preset,how", [
    ("lm-tiny-dat", "sigint"), ("lm-tiny-transformer", "callback"),
    ("seq2seq-tiny-dat", "sigint"), ("seq2seq-tiny-transformer", "callback"),  # issue 10.1: never resumed
    ("vision-tiny-dat", "callback"), ("vision-tiny-transformer", "sigint"),
])
def test_resume_gives_the_uninterrupted_result(tmp_path, preset, how):
    """N steps straight == N/2 steps, stop (callback or Ctrl-C), resume for N/2; dropout on, so RNG matters.
    Every family and architecture."""
    extra = ("train.max_iters=12", "train.eval_interval=4", "model.dropout=0.1")
    straight = train(tiny(preset, *extra, out=tmp_path / "a"), verbose=False)

    def stop_at_6(it, rec):
        if it == 6 and rec["split"] == "train":
            if how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)  # handled: finish the step, save, return
                return None
            return True
        return None

    first = train(tiny(preset, *extra, out=tmp_path / "b"), callback=stop_at_6, verbose=False)
    assert first.interrupted and first.iters == 6
    state = torch.load(tmp_path / "b" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["iter"] == 6
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    second = train(tiny(preset, *extra, out=tmp_path / "b"), resume=True, verbose=False)
    assert second.iters == 12 and not second.interrupted
    assert train_losses(second.history) == train_losses(straight.history)  # bit-identical on CPU
    logged = read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [r["iter"] for r in logged if r["split"] == "train"] == list(range(1, 13))
    for (k, p), q in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=k)


def test_run_dir_is_never_overwritten_silently(tmp_path):
    run = tmp_path / "run"
    train(tiny("vision-tiny-transformer", "train.max_iters=2", "train.eval_interval=0", out=run), verbose=False)
    with pytest.raises(RunDirError, match="already exists: pass --resume to continue it or --overwrite"):
        train(tiny("vision-tiny-transformer", "train.max_iters=2", out=run), verbose=False)
    res = train(tiny("vision-tiny-transformer", "train.max_iters=3", "train.eval_interval=0", out=run),
                overwrite=True, verbose=False)
    assert res.iters == 3
    assert [r["iter"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(RunDirError, match="refusing to overwrite"):
        train(tiny("vision-tiny-transformer", "train.max_iters=2", out=other), overwrite=True, verbose=False)
    assert (other / "thesis.tex").read_text() == "precious"
    with pytest.raises(RunDirError, match="cannot resume: model.d_model=48 differs from the run's 32"):
        train(tiny("vision-tiny-transformer", "train.max_iters=4", "model.d_model=48", out=run), resume=True,
              verbose=False)
    with pytest.raises(RunDirError, match="no checkpoint to resume"):
        train(tiny("vision-tiny-transformer", out=tmp_path / "empty"), resume=True, verbose=False)


class _FakeStream:
    """Stands in for a streamed ``datasets`` IterableDataset (no network in tests)."""

    def __init__(self, docs, start=0):
        self.docs, self.start = docs, start

    def skip(self, n):
        return _FakeStream(self.docs, self.start + n)

    def __iter__(self):
        return iter({"text": d, "id": i} for i, d in enumerate(self.docs[self.start:], self.start))


def test_hf_streaming_source_trains_and_resumes_exactly(tmp_path, monkeypatch):
    import sys
    import types

    from dual_attention.training.data import synthetic_lm_text

    docs = synthetic_lm_text(3000, seed=5).splitlines()
    opened = []

    def load_dataset(path, name=None, split=None, streaming=False):
        opened.append((path, name, split, streaming))
        return _FakeStream(docs)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    extra = ("data.train=hf", "data.hf_val_docs=100", "train.max_iters=8", "train.eval_interval=4")
    straight = train(tiny("lm-tiny-dat", *extra, out=tmp_path / "a"), verbose=False)
    assert opened[0] == ("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", True)
    assert len(train_losses(straight.history)) == 8
    first = train(tiny("lm-tiny-dat", *extra, out=tmp_path / "b"), verbose=False,
                  callback=lambda it, rec: it == 4 and rec["split"] == "train")
    assert first.iters == 4
    state = torch.load(tmp_path / "b" / "checkpoint" / "trainer_state.pt", weights_only=True)
    assert state["data"][0]["docs"] > 100  # validation documents are skipped, then the consumed ones
    resumed = train(tiny("lm-tiny-dat", *extra, out=tmp_path / "b"), resume=True, verbose=False)
    assert train_losses(resumed.history) == train_losses(straight.history)
    # without the datasets package: one clear error
    from dual_attention.training.tokenizers import DataError

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"needs the datasets package: pip install 'dual_attention\[data\]'"):
        train(tiny("lm-tiny-dat", *extra), verbose=False)


def test_file_sources_for_each_family(tmp_path, monkeypatch):
    import sys

    import numpy as np

    from dual_attention.training.data import synthetic_images, synthetic_lm_text, synthetic_pairs
    from dual_attention.training.tokenizers import DataError

    text = synthetic_lm_text(300, seed=1)
    (tmp_path / "train.txt").write_text(text)
    (tmp_path / "val.txt").write_text(synthetic_lm_text(60, seed=2))
    np.frombuffer(text.encode(), dtype=np.uint8).astype(np.uint16).tofile(tmp_path / "train.bin")
    steps = ("train.max_iters=2", "train.eval_interval=2")
    a = train(tiny("lm-tiny-dat", *steps, f"data.train={tmp_path / 'train.txt'}",
                   f"data.val={tmp_path / 'val.txt'}"), verbose=False)
    b = train(tiny("lm-tiny-dat", *steps, f"data.train={tmp_path / 'train.bin'}",
                   f"data.val={tmp_path / 'val.txt'}"), verbose=False)
    assert train_losses(a.history) == train_losses(b.history)  # same tokens from text and from the memmap
    (tmp_path / "big.bin").write_bytes(np.array([300, 1, 2], dtype=np.uint16).tobytes())
    with pytest.raises(DataError, match="holds token id 300 >= vocabulary 256 of tokenizer 'byte'"):
        train(tiny("lm-tiny-dat", *steps, f"data.train={tmp_path / 'big.bin'}"), verbose=False)

    pairs = synthetic_pairs(120, seed=3)
    (tmp_path / "pairs.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    (tmp_path / "src.txt").write_text("".join(s + "\n" for s, _ in pairs))
    (tmp_path / "tgt.txt").write_text("".join(t + "\n" for _, t in pairs))
    c = train(tiny("seq2seq-tiny-transformer", *steps, f"data.train={tmp_path / 'pairs.tsv'}"), verbose=False)
    d = train(tiny("seq2seq-tiny-transformer", *steps, f"data.train={tmp_path / 'src.txt'},{tmp_path / 'tgt.txt'}"),
              verbose=False)
    assert train_losses(c.history) == train_losses(d.history)
    assert c.config.model.in_block_size == max(len(s) for s, _ in pairs)

    x, y = synthetic_images(100, seed=4)
    torch.save({"images": (x * 255).to(torch.uint8), "labels": y}, tmp_path / "img.pt")
    e = train(tiny("vision-tiny-transformer", *steps, f"data.train={tmp_path / 'img.pt'}"), verbose=False)
    assert e.config.model.image_shape == [3, 16, 16] and e.config.model.num_classes == 2
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "PIL", None)  # as on a machine without Pillow
    with pytest.raises(DataError, match=r"reading image folders needs Pillow \(pip install pillow\); or give a .pt"):
        train(tiny("vision-tiny-transformer", *steps, f"data.train={tmp_path / 'folder'}"), verbose=False)


def test_optional_loggers_warn_when_missing(tmp_path, capsys):
    import importlib.util

    res = train(tiny("vision-tiny-transformer", "train.max_iters=2", "train.eval_interval=0",
                     "train.tensorboard=true", out=tmp_path / "run"), verbose=True)
    assert res.iters == 2
    err = capsys.readouterr().err
    if importlib.util.find_spec("tensorboard") is None:
        assert "train.tensorboard=true but tensorboard is not installed (pip install tensorboard); skipping" in err
    else:
        assert (tmp_path / "run" / "tensorboard").is_dir()


def test_data_flows_one_way_into_the_model_config():
    """Issue 11.2: loading data never writes into the caller's config; model sizes come from a frozen DataSpec."""
    import dataclasses

    from dual_attention.training.config import ConfigError, config_to_dict
    from dual_attention.training.data_spec import DataSpec, derive_model_config
    from dual_attention.training.tasks import make_task

    cfg = tiny("seq2seq-tiny-dat", "train.max_iters=1", "train.eval_interval=0")
    before = config_to_dict(cfg)
    task = make_task(cfg, torch.device("cpu"))
    assert config_to_dict(cfg) == before and cfg.model.vocab_size is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.spec.vocab_size = 3
    derived = derive_model_config(cfg.model, task.spec)
    assert config_to_dict(cfg) == before  # pure: a new ModelConfig
    assert (derived.vocab_size, derived.in_block_size, derived.out_block_size) == (
        task.spec.vocab_size, task.spec.max_src_len, task.spec.max_tgt_len)
    result = train(cfg, verbose=False)
    assert config_to_dict(cfg) == before and result.config.model == derived
    spec = DataSpec("vision", image_shape=(3, 16, 16), num_classes=4)
    model = load_config("vision-tiny-dat").model
    assert derive_model_config(model, spec).image_shape == [3, 16, 16] and model.image_shape is None
    with pytest.raises(ConfigError, match="model.num_classes=2 but the data has labels up to 3"):
        derive_model_config(dataclasses.replace(model, num_classes=2), spec)
