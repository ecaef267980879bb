"""Hugging Face Hub integration, offline (local directories only).

* A directory laid out like a published checkpoint (``config.json`` holding only the user-passed arguments, as in
  API §13, and ``model.safetensors`` written by ``safetensors.torch.save_model``) loads strictly and reproduces the
  outputs of the model that wrote it.
* Loading is strict: a missing, extra or mis-shaped tensor raises :class:`dual_attention.hf.CheckpointError` (a
  ``ValueError``) listing each offending key; unreadable files raise it too.
* ``save_pretrained`` / ``from_pretrained`` round trips for all six ``*_HFHub`` classes, and ``load_pretrained``
  picks the class from ``config.json``.
* Published seq2seq checkpoints (whose ``tie_weights`` tied nothing) load exactly, untied with a warning.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("huggingface_hub")
pytest.importorskip("safetensors")

from safetensors.torch import load_file, save_file, save_model  # noqa: E402

from dual_attention import hf  # noqa: E402
from dual_attention.hf import CheckpointError, load_pretrained  # noqa: E402
from dual_attention.language_models import DualAttnTransformerLM, TransformerLM  # noqa: E402
from dual_attention.seq2seq_models import Seq2SeqDualAttnTransformer, Seq2SeqTransformer  # noqa: E402

# the §13 README config, scaled down (same keys: only what the user passed)
PUBLISHED_LM_CONFIG = {
    "activation": "swiglu", "d_model": 32, "dff": 64, "dropout_rate": 0.1, "max_block_size": 16, "n_heads_ra": 2,
    "n_heads_sa": 2, "n_layers": 2, "norm_first": True, "pos_enc_type": "RoPE",
    "symbol_retrieval": "symbolic_attention", "symbol_retrieval_kwargs": {"d_model": 32, "n_heads": 2, "n_symbols": 8},
    "vocab_size": 50,
}
PUBLISHED_TLM_CONFIG = {"activation": "gelu", "d_model": 32, "dff": 64, "dropout_rate": 0.1, "max_block_size": 16,
                        "n_heads": 4, "n_layers": 2, "norm_first": True, "vocab_size": 50}


def _write_published_dir(path: Path, model: torch.nn.Module, config: dict) -> Path:
    """What the published package's save_pretrained wrote: config.json (sorted keys) + model.safetensors."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, sort_keys=True, indent=2))
    save_model(model, str(path / "model.safetensors"))
    return path


def _assert_close_rel(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= rel * max(b.abs().max().item(), 1e-12), f"max abs error {err}"


@pytest.fixture
def published_lm_dir(tmp_path):
    model = DualAttnTransformerLM(**PUBLISHED_LM_CONFIG).eval()
    with torch.no_grad():  # a "trained" checkpoint: no parameter keeps its init
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return _write_published_dir(tmp_path / "published_lm", model, PUBLISHED_LM_CONFIG), model


# ------------------------------------------------------------------------------------------- published layout
def test_published_style_dat_lm_directory_loads_strictly(published_lm_dir):
    path, original = published_lm_dir
    stored = load_file(str(path / "model.safetensors"))
    assert len(stored) < len(original.state_dict())  # aliases (tied embedding, shared retriever) stored once
    loaded = hf.DualAttnTransformerLM_HFHub.from_pretrained(str(path))
    assert isinstance(loaded, DualAttnTransformerLM) and not loaded.training
    assert loaded.layers.token_embedder.weight is loaded.layers.final_out.weight
    x = torch.randint(0, 50, (3, 16))
    with torch.no_grad():
        _assert_close_rel(loaded(x)[0], original(x)[0])
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    auto = load_pretrained(path)
    assert type(auto) is hf.DualAttnTransformerLM_HFHub
    with torch.no_grad():
        _assert_close_rel(auto(x)[0], original(x)[0])


def test_published_style_transformer_lm_directory(tmp_path):
    model = TransformerLM(**PUBLISHED_TLM_CONFIG).eval()
    path = _write_published_dir(tmp_path / "tlm", model, PUBLISHED_TLM_CONFIG)
    loaded = load_pretrained(path)
    assert type(loaded) is hf.TransformerLM_HFHub
    x = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        _assert_close_rel(loaded(x)[0], model(x)[0])


# --------------------------------------------------------------------------------------------------- strictness
def _corrupt_dir(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(str(src / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst


def test_missing_key_raises_listing_it(published_lm_dir, tmp_path):
    src, _ = published_lm_dir
    key = "layers.blocks.1.dual_attn.relational_attention.wr"
    path = _corrupt_dir(src, tmp_path / "missing", lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match="missing keys") as info:
        hf.DualAttnTransformerLM_HFHub.from_pretrained(str(path))
    assert key in str(info.value) and isinstance(info.value, ValueError)


def test_extra_key_raises_listing_it(published_lm_dir, tmp_path):
    src, _ = published_lm_dir
    path = _corrupt_dir(src, tmp_path / "extra", lambda t: t.update({"layers.blocks.0.surprise": torch.zeros(3)}))
    with pytest.raises(ValueError, match="unexpected keys") as info:
        load_pretrained(path)
    assert "layers.blocks.0.surprise" in str(info.value)


def test_misshaped_tensor_raises_listing_it(published_lm_dir, tmp_path):
    src, _ = published_lm_dir
    key = "layers.blocks.0.ff_block.linear1.weight"
    path = _corrupt_dir(src, tmp_path / "shape", lambda t: t.update({key: torch.zeros(63, 32)}))
    with pytest.raises(CheckpointError, match="mis-shaped") as info:
        hf.DualAttnTransformerLM_HFHub.from_pretrained(str(path))
    assert key in str(info.value) and "(63, 32)" in str(info.value) and "(64, 32)" in str(info.value)


def test_all_problems_listed_together(published_lm_dir, tmp_path):
    src, _ = published_lm_dir

    def edit(t):
        t.pop("layers.norm.weight")
        t["extra.tensor"] = torch.ones(1)
        t["layers.norm.bias"] = torch.zeros(31)

    path = _corrupt_dir(src, tmp_path / "all", edit)
    with pytest.raises(CheckpointError) as info:
        hf.DualAttnTransformerLM_HFHub.from_pretrained(str(path))
    message = str(info.value)
    for needle in ("missing keys (1): layers.norm.weight", "unexpected keys (1): extra.tensor", "layers.norm.bias"):
        assert needle in message


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupted_safetensors_raises(published_lm_dir, tmp_path, damage):
    src, _ = published_lm_dir
    path = tmp_path / damage
    path.mkdir()
    (path / "config.json").write_text((src / "config.json").read_text())
    data = (src / "model.safetensors").read_bytes()
    broken = {"truncate": data[: len(data) // 2], "garbage": b"\x00\x01not a safetensors file" * 10,
              "empty": b""}[damage]
    (path / "model.safetensors").write_bytes(broken)
    with pytest.raises(CheckpointError):
        hf.DualAttnTransformerLM_HFHub.from_pretrained(str(path))
    with pytest.raises(CheckpointError):
        load_pretrained(path)


def test_missing_weights_and_bad_config_raise(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(PUBLISHED_TLM_CONFIG))
    with pytest.raises(CheckpointError):
        hf.TransformerLM_HFHub.from_pretrained(str(tmp_path))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        load_pretrained(bad)
    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"hidden_size": 3}))
    with pytest.raises(CheckpointError, match="hidden_size"):
        load_pretrained(unknown)


# ---------------------------------------------------------------------------------------------------- round trips
def _inputs_for(model):
    if isinstance(model, (DualAttnTransformerLM, TransformerLM)):
        return (torch.randint(0, model.vocab_size, (2, 9)),)
    if isinstance(model, (Seq2SeqDualAttnTransformer, Seq2SeqTransformer)):
        return torch.randint(0, 23, (2, 7)), torch.randint(0, 19, (2, 6)), torch.randint(0, 19, (2, 6))
    return (torch.randn(2, 3, 8, 8),)


ROUND_TRIP = {
    "DualAttnTransformerLM_HFHub": lambda: dict(
        vocab_size=37, d_model=16, n_layers=2, n_heads_sa=2, n_heads_ra=2, dff=None, dropout_rate=0.0,
        activation="swiglu", norm_first=True, max_block_size=24, pos_enc_type="RoPE",
        symbol_retrieval="positional_symbols", symbol_retrieval_kwargs=dict(symbol_dim=16, max_length=24),
        symbol_retriever_config=dict(shared_symbol_retriever=False, weight_tie_symbol_library=True),
        sa_kwargs=dict(n_kv_heads=1), ra_kwargs=dict(n_relations=4, symmetric_rels=True)),
    "TransformerLM_HFHub": lambda: dict(vocab_size=37, d_model=16, n_layers=2, n_heads=4, dff=32, dropout_rate=0.0,
                                        activation="gelu", norm_first=False, max_block_size=24, norm_type="rmsnorm",
                                        block_kwargs=dict(attn_kwargs=dict(n_kv_heads=2))),
    "Seq2SeqDualAttnTransformer_HFHub": lambda: dict(
        input_spec=dict(type="token", vocab_size=23), output_spec=dict(type="token", vocab_size=19),
        symbol_retrieval="rel_sym_attn", symbol_retrieval_kwargs=dict(
            d_model=16, rel_n_heads=2, symbolic_attn_n_heads=2, n_symbols=4, nbhd_delta=2),
        d_model=16, out_dim=19, n_layers_enc=1, n_layers_dec=2,
        encoder_kwargs=dict(n_heads_sa=2, n_heads_ra=2, dff=32, activation="gelu", dropout_rate=0.0, norm_first=True),
        decoder_kwargs=dict(n_heads_sa=2, n_heads_ra=2, n_heads_cross=4, dff=32, activation="gelu",
                            dropout_rate=0.0, norm_first=True),
        in_block_size=16, out_block_size=16),
    "Seq2SeqTransformer_HFHub": lambda: dict(
        input_spec=dict(type="token", vocab_size=23), output_spec=dict(type="token", vocab_size=19), d_model=16,
        out_dim=19, n_layers_enc=2, n_layers_dec=1,
        encoder_kwargs=dict(n_heads=4, dff=32, dropout_rate=0.0, activation="relu", norm_first=True),
        decoder_kwargs=dict(n_heads=4, n_heads_cross=2, dff=32, dropout_rate=0.0, activation="relu",
                            norm_first=True), in_block_size=16, out_block_size=16),
    "VisionDualAttnTransformer_HFHub": lambda: dict(
        image_shape=(3, 8, 8), patch_size=(4, 4), num_classes=5, d_model=16, n_layers=2, n_heads_sa=2, n_heads_ra=2,
        dff=32, dropout_rate=0.0, activation="gelu", norm_first=True, symbol_retrieval="position_relative",
        symbol_retrieval_kwargs=dict(symbol_dim=16, max_rel_pos=5),
        ra_kwargs=dict(symmetric_rels=True, use_relative_positional_symbols=True), pool="cls"),
    "VisionTransformer_HFHub": lambda: dict(image_shape=(3, 8, 8), patch_size=(4, 4), num_classes=5, d_model=16,
                                            n_layers=2, n_heads=4, dff=32, dropout_rate=0.0, activation="gelu",
                                            norm_first=True, pool="mean"),
}


@pytest.mark.parametrize("cls_name", list(ROUND_TRIP))
def test_round_trip(cls_name, tmp_path):
    cls = getattr(hf, cls_name)
    model = cls(**ROUND_TRIP[cls_name]()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ROUND_TRIP[cls_name]():
        assert key in config, key
    inputs = _inputs_for(model)
    for loaded in (cls.from_pretrained(str(tmp_path)), load_pretrained(tmp_path)):
        assert type(loaded) is cls and not loaded.training
        sd, ref = loaded.state_dict(), model.state_dict()
        assert list(sd) == list(ref)
        for key in ref:
            assert torch.equal(sd[key], ref[key]), key
        with torch.no_grad():
            out, expected = loaded(*inputs), model(*inputs)
        out, expected = (out[0], expected[0]) if isinstance(out, tuple) else (out, expected)
        assert torch.equal(out, expected)
        # tying / sharing restored by construction
        ptrs = lambda m: sorted({t.data_ptr() for t in m.state_dict().values()})  # noqa: E731
        assert len(ptrs(loaded)) == len(ptrs(model))


def test_positional_construction_records_real_names(tmp_path):
    """The published mixin wrote {"args": ..., "kwargs": ...} for positional arguments (§18.12)."""
    args = [37, 16, 1, 2, 2, dict(d_model=16, n_heads=2, n_symbols=4), 32, 0.0, "relu", True, 12]
    model = hf.DualAttnTransformerLM_HFHub(*args)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vocab_size"] == 37 and config["max_block_size"] == 12 and "args" not in config
    loaded = load_pretrained(tmp_path)
    x = torch.randint(0, 37, (1, 12))
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], model.eval()(x)[0])


# ------------------------------------------------------------------------------------- published seq2seq checkpoints
SEQ2SEQ_CONFIG = dict(
    input_spec=dict(type="token", vocab_size=23), output_spec=dict(type="token", vocab_size=19),
    symbol_retrieval="symbolic_attention", symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=4),
    d_model=16, out_dim=19, n_layers_enc=2, n_layers_dec=2,
    encoder_kwargs=dict(n_heads_sa=2, n_heads_ra=2, dff=32, activation="gelu", dropout_rate=0.1, norm_first=True),
    decoder_kwargs=dict(n_heads_sa=2, n_heads_ra=2, n_heads_cross=4, dff=32, activation="gelu", dropout_rate=0.1,
                        norm_first=True, causal=True),
    in_block_size=16, out_block_size=16)


def _published_seq2seq():
    """A model with the published 0.0.7 structure: untied embedding, and ``final_out`` registered a second time as
    ``layers.target_embedder.weights`` (the ``tie_weights`` typo), hence the published alias keys."""
    model = Seq2SeqDualAttnTransformer(**SEQ2SEQ_CONFIG, tie_weights=False)
    model.layers.target_embedder.weights = model.layers.final_out
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert not torch.equal(model.layers.target_embedder.weight, model.layers.final_out.weight)
    return model.eval()


def test_published_seq2seq_state_dict_loads_untied(tmp_path):
    published = _published_seq2seq()
    keys = list(published.state_dict())
    assert "layers.target_embedder.weights.weight" in keys and "layers.target_embedder.weights.bias" in keys
    ours = Seq2SeqDualAttnTransformer(**SEQ2SEQ_CONFIG)
    assert ours.weights_tied and list(ours.state_dict()) == keys  # same keys as published
    with pytest.warns(UserWarning, match="untied"):
        ours.load_state_dict(published.state_dict(), strict=True)
    ours.eval()
    assert not ours.weights_tied
    assert ours.layers.target_embedder.weight is not ours.layers.final_out.weight
    src, y = torch.randint(0, 23, (2, 7)), torch.randint(0, 19, (2, 6))
    with torch.no_grad():
        assert torch.equal(ours(src, y, y)[0], published(src, y, y)[0])
    # and through a published-style Hub directory (user-passed config + save_model of the published model)
    path = _write_published_dir(tmp_path / "s2s", published, {**SEQ2SEQ_CONFIG})
    with pytest.warns(UserWarning, match="untied"):
        loaded = hf.Seq2SeqDualAttnTransformer_HFHub.from_pretrained(str(path))
    with torch.no_grad():
        _assert_close_rel(loaded(src, y, y)[0], published(src, y, y)[0])
    with pytest.warns(UserWarning, match="untied"):
        assert type(load_pretrained(path)) is hf.Seq2SeqDualAttnTransformer_HFHub


def test_tied_seq2seq_checkpoint_loads_without_warning(tmp_path):
    model = hf.Seq2SeqTransformer_HFHub(**ROUND_TRIP["Seq2SeqTransformer_HFHub"]())
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_pretrained(tmp_path)
    assert loaded.weights_tied
    assert loaded.layers.target_embedder.weight is loaded.layers.final_out.weight
