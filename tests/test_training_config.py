"""Unit tests of the training library's pieces: config, presets, schedule, sampling, tokenizers, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from dual_attention.training.checkpoint import atomic_save_dir, capture_rng, find_checkpoint, restore_rng
from dual_attention.training.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
)
from dual_attention.training.data import (
    PairData,
    epoch_indices,
    micro_slice,
    step_generator,
    synthetic_images,
    synthetic_pairs,
)
from dual_attention.training.presets import PRESETS, get_preset
from dual_attention.training.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    DataError,
    StreamDecoder,
    get_tokenizer,
)
from dual_attention.training.trainer import lr_at

# ------------------------------------------------------------------------------------------------ config


def test_overrides_are_type_checked_and_applied():
    cfg = load_config("lm-tiny-dat", ["--train.max_iters=100", "optim.learning_rate=3e-4", "model.arch=transformer",
                                      "train.fsdp=true", "model.patch_size=[2,2]", "model.n_kv_heads=null"])
    assert cfg.train.max_iters == 100 and isinstance(cfg.train.max_iters, int)
    assert cfg.optim.learning_rate == pytest.approx(3e-4)
    assert cfg.model.arch == "transformer"
    assert cfg.train.fsdp is True
    assert cfg.model.patch_size == [2, 2]
    assert cfg.model.n_kv_heads is None


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.max_iter=5", "unknown config key 'train.max_iter'; allowed keys in train: out_dir, max_iters"),
        ("trian.max_iters=5", "unknown config key 'trian.max_iters': the top-level keys are name, model"),
        ("train.max_iters=abc", "config key train.max_iters expects int, got 'abc'"),
        ("train.max_iters=1.5", "config key train.max_iters expects int, got 1.5"),
        ("train.fsdp=maybe", "config key train.fsdp expects bool"),
        ("model.arch=gpt", "config key model.arch='gpt' is not one of: dat, transformer"),
        ("train.batch_size=0", "config key train.batch_size must be > 0, got 0"),
        ("train.max_iters", "must look like --section.key=value"),
        ("model.symbol_retrieval=slots", "model.symbol_retrieval='slots' is not one of: symbolic_attention, "
                                         "rel_sym_attn, positional_symbols, position_relative, none"),
        ("model.patch_size=[2,x]", "config key model.patch_size[1] expects int, got 'x'"),
        ("model.extra_kwargs=[1]", "config key model.extra_kwargs expects a mapping, got [1]"),
        ("optim.min_lr=true", "config key optim.min_lr expects float or null, got True"),
    ],
)
def test_bad_overrides_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config("lm-tiny-dat", [override])
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_symbol_retrieval_choices_are_the_retriever_registry():
    from dual_attention.symbol_retrieval import SYMBOL_RETRIEVERS
    from dual_attention.training.config import CHOICES

    assert CHOICES["model.symbol_retrieval"] == (*SYMBOL_RETRIEVERS, "none")
    for name in CHOICES["model.symbol_retrieval"]:
        assert load_config("vision-tiny-dat", [f"model.symbol_retrieval={name}"]).model.symbol_retrieval == name


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="neither a config file nor a preset; presets: lm-tiny-dat"):
        load_config("no-such-preset")


def test_yaml_round_trip_and_base(tmp_path):
    cfg = load_config("vision-tiny-dat", ["train.max_iters=7"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(str(tmp_path / "c.yaml"))
    assert config_to_dict(again) == config_to_dict(cfg)
    (tmp_path / "b.yaml").write_text("base: lm-tiny-transformer\ntrain:\n  max_iters: 9\n")
    b = load_config(str(tmp_path / "b.yaml"))
    assert (b.name, b.model.arch, b.train.max_iters, b.model.d_model) == ("b", "transformer", 9, 64)
    (tmp_path / "bad.yaml").write_text("train:\n  max_itters: 9\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.max_itters'"):
        load_config(str(tmp_path / "bad.yaml"))
    (tmp_path / "broken.yaml").write_text("train: [1,\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(str(tmp_path / "broken.yaml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_every_preset_prints_as_a_yaml_file_that_loads_back_to_it(tmp_path, capsys):
    """The presets live only in presets.py; `dat train PRESET --print-config` is how a user gets one as a file."""
    from dual_attention.cli import main

    for name in PRESETS:
        assert main(["train", name, "--print-config", "--out", str(tmp_path / "run")]) == 0
        path = tmp_path / f"{name}.yaml"
        path.write_text(capsys.readouterr().out)
        assert set(yaml.safe_load(path.read_text())) == {"name", "model", "data", "optim", "train"}
        expected = get_preset(name)
        expected.train.out_dir = str(tmp_path / "run")
        assert config_to_dict(load_config(str(path))) == config_to_dict(expected), name
    assert get_preset("lm-dat-343m").optim.min_lr == pytest.approx(6e-5)  # a value derived inside presets.py


def test_dict_config_and_copy_semantics():
    base = get_preset("lm-tiny-dat")
    derived = config_from_dict({"train": {"max_iters": 3}}, base=base)
    assert derived.train.max_iters == 3 and base.train.max_iters == 300
    apply_overrides(derived, {"model.d_model": 32})
    assert derived.model.d_model == 32 and base.model.d_model == 64
    assert isinstance(load_config(None), Config)


# ------------------------------------------------------------------------------------------------ schedule


def test_lr_schedule_warmup_then_cosine():
    cfg = load_config("lm-tiny-dat", ["optim.learning_rate=1.0", "optim.min_lr=0.1", "optim.warmup_iters=10",
                                      "train.max_iters=110"])
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert lr_at(500, cfg) == pytest.approx(0.1)
    apply_overrides(cfg, ["optim.schedule=linear"])
    assert lr_at(60, cfg) == pytest.approx(0.55)
    apply_overrides(cfg, ["optim.schedule=constant"])
    assert lr_at(60, cfg) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ sampling


def test_micro_slices_partition_the_global_batch():
    rows = []
    for micro in range(2):
        for rank in range(3):
            s = micro_slice(12, 2, 3, micro, rank)
            rows.extend(range(s.start, s.stop))
    assert rows == list(range(12))


def test_epoch_indices_cover_each_epoch_once_and_are_stateless():
    n, b = 10, 4
    seq = torch.cat([epoch_indices(5, t, b, n) for t in range(5)])  # 20 = two epochs
    assert sorted(seq[:10].tolist()) == list(range(10))
    assert sorted(seq[10:20].tolist()) == list(range(10))
    assert torch.equal(epoch_indices(5, 3, b, n), seq[12:16])
    assert not torch.equal(epoch_indices(6, 0, b, n), epoch_indices(5, 0, b, n))
    a = torch.randint(0, 100, (5,), generator=step_generator(1, 7))
    assert torch.equal(a, torch.randint(0, 100, (5,), generator=step_generator(1, 7)))


def test_synthetic_tasks_are_correct():
    pairs = synthetic_pairs(50, seed=1)
    assert all(t == "".join(sorted(s)) for s, t in pairs)
    images, labels = synthetic_images(40, seed=2)
    assert images.shape == (40, 3, 16, 16) and labels.float().mean() == 0.5
    for img, lab in zip(images, labels):
        colours = {tuple(img[:, y, x].tolist()) for y in range(16) for x in range(16)} - {(0.0, 0.0, 0.0)}
        assert (len(colours) == 1) == bool(lab)


def test_pair_collate_shapes_masks_and_targets():
    tok = CharTokenizer.build(["abc", "cba"])
    data = PairData([tok.encode("ab"), tok.encode("abc")], [tok.encode("b"), tok.encode("cba")], tok)
    batch = data.collate(torch.tensor([0, 1]))
    assert batch["x"].shape == (2, 3) and batch["y"].shape == (2, 4)
    assert batch["src_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["y"][:, 0].tolist() == [tok.bos_token_id] * 2
    assert batch["targets"][0].tolist() == [tok.encode("b")[0], tok.eos_token_id, -1, -1]
    assert data.target_counts.tolist() == [2, 4]


# ------------------------------------------------------------------------------------------------ tokenizers


def test_byte_tokenizer_and_stream_decoder_handle_multibyte_text():
    tok = ByteTokenizer()
    text = "naïve → 結果"
    ids = tok.encode(text)
    assert max(ids) < 256 and tok.decode(ids) == text
    dec = StreamDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) + dec.flush() == text
    assert "" in pieces  # held back inside a multi-byte character


def test_char_tokenizer_round_trip_and_unknown():
    tok = CharTokenizer.build(["hello"])
    assert tok.vocab_size == 4 + 4
    assert tok.decode(tok.encode("hole")) == "hole"
    assert tok.encode("z") == [tok.unk_token_id]


def test_gpt2_tokenizer_offline_gives_one_clear_error(monkeypatch):
    import sys
    import types

    fake = types.ModuleType("tiktoken")

    def get_encoding(name):
        raise ConnectionError("no network")

    fake.get_encoding = get_encoding
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    with pytest.raises(DataError, match="could not load the 'gpt2' files .*TIKTOKEN_CACHE_DIR.*data.tokenizer=byte"):
        get_tokenizer("gpt2")
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # not installed
    with pytest.raises(DataError, match=r"needs tiktoken \(pip install"):
        get_tokenizer("gpt2")
    with pytest.raises(DataError, match="unknown tokenizer 'bpe'; allowed: byte, gpt2"):
        get_tokenizer("bpe")


# ------------------------------------------------------------------------------------------------ checkpoints


def _write(tag):
    def write(d: Path):
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_text(tag)

    return write


def test_atomic_save_replaces_and_recovers_from_a_crash_mid_swap(tmp_path):
    atomic_save_dir(tmp_path, _write("one"))
    atomic_save_dir(tmp_path, _write("two"))
    assert (tmp_path / "checkpoint" / "model.safetensors").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    # a crash after checkpoint/ -> checkpoint.old/ but before checkpoint.tmp/ -> checkpoint/
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")
    (tmp_path / "checkpoint.tmp").mkdir()
    (tmp_path / "checkpoint.tmp" / "config.json").write_text("{}")  # incomplete
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint.old"
    atomic_save_dir(tmp_path, _write("three"))  # the next save cleans up
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint"
    assert (tmp_path / "checkpoint" / "model.safetensors").read_text() == "three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    # a crash while writing the temp dir leaves the last good checkpoint
    def boom(d: Path):
        (d / "config.json").write_text("{}")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_save_dir(tmp_path, boom)
    assert (find_checkpoint(tmp_path) / "model.safetensors").read_text() == "three"


def test_rng_capture_restore_is_exact(tmp_path):
    import random

    import numpy as np

    state = capture_rng()
    torch.save(state, tmp_path / "s.pt")
    a = (random.random(), float(np.random.rand()), float(torch.rand(())))
    restore_rng(torch.load(tmp_path / "s.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == a
