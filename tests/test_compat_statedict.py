"""State-dict compatibility with the published package (``dual_attention==0.0.7``).

Every ``statedict_*.txt`` listing in ``tests/data/reference`` is parsed (nothing is hard-coded): the model is built
from the constructor in its header and compared key by key (names and order), shape, dtype, aliasing (keys marked
``ALIAS-OF`` must share storage with their target), distinct-tensor and parameter counts, non-persistent buffers;
``statedict_lm_readme_safetensors.txt`` is compared with what ``save_pretrained`` writes.

One deliberate difference is accounted for explicitly: the published seq2seq ``tie_weights`` tied nothing (§18.3),
ours ties the target embedding to ``final_out`` when their shapes allow, so that embedding joins the output alias
group and is counted once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dual_attention.language_models import DualAttnTransformerLM, TransformerLM
from dual_attention.seq2seq_models import Seq2SeqDualAttnTransformer, Seq2SeqTransformer
from dual_attention.vision_models import VisionDualAttnTransformer, VisionTransformer

_CONSTRUCTORS = {
    "DualAttnTransformerLM": DualAttnTransformerLM,
    "TransformerLM": TransformerLM,
    "Seq2SeqDualAttnTransformer": Seq2SeqDualAttnTransformer,
    "Seq2SeqTransformer": Seq2SeqTransformer,
    "VisionDualAttnTransformer": VisionDualAttnTransformer,
    "VisionTransformer": VisionTransformer,
}
REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "reference"  # the listings travel with the tests
_DTYPES = {"float32": torch.float32, "F32": torch.float32, "float64": torch.float64, "int64": torch.int64}


def _listing_names() -> list[str]:
    """The model listings; a missing directory yields one placeholder, whose test then fails (never skips)."""
    names = sorted(p.name for p in REFERENCE_DIR.glob("statedict_*.txt") if "safetensors" not in p.name)
    return names or ["statedict_listings_missing.txt"]


_MODELS: dict[str, torch.nn.Module] = {}


def _build(listing) -> torch.nn.Module:
    """The model of a listing's ``# constructor:`` line (cached: the README models take seconds to build)."""
    name = listing.path.name
    if name not in _MODELS:
        ctor = listing.constructor
        assert ctor is not None, f"{name} has no constructor line"
        cls_name = ctor.split("(", 1)[0]
        assert cls_name in _CONSTRUCTORS, f"{name}: unknown class {cls_name}"
        torch.manual_seed(0)
        _MODELS[name] = eval(ctor, {"__builtins__": {}}, {**_CONSTRUCTORS, "dict": dict, "True": True,
                                                            "False": False, "None": None})
    return _MODELS[name]


def _storage_key(t: torch.Tensor) -> tuple:
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride())


def _tied_extra_alias(model) -> dict[str, str]:
    """Aliases our model has on top of the published ones (the fixed seq2seq weight tying)."""
    if getattr(model, "weights_tied", False):
        return {"layers.target_embedder.weight": "layers.final_out.weight"}
    return {}


@pytest.fixture(scope="module", params=_listing_names())
def listing_and_model(request, reference_dir, statedict_parser):
    listing = statedict_parser(reference_dir / request.param)
    return listing, _build(listing)


def test_reference_listings_found(reference_dir):
    names = _listing_names()
    assert len(names) >= 8, names
    assert (reference_dir / "statedict_lm_readme_safetensors.txt").exists()


def test_keys_and_order(listing_and_model):
    listing, model = listing_and_model
    ours = list(model.state_dict().keys())
    theirs = listing.keys
    missing, extra = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    assert not missing and not extra, f"missing {missing}, extra {extra}"
    assert ours == theirs, "same keys, different order"
    n_keys = listing.header_int(r"number of state_dict keys: ([\d,]+)")
    assert n_keys == len(ours)


def test_shapes_and_dtypes(listing_and_model):
    listing, model = listing_and_model
    sd = model.state_dict()
    for key, shape, dtype, _ in listing.rows:
        assert tuple(sd[key].shape) == shape, f"{key}: {tuple(sd[key].shape)} vs published {shape}"
        assert sd[key].dtype == _DTYPES[dtype], f"{key}: {sd[key].dtype} vs published {dtype}"
    total = listing.header_int(r"sum of numel over all keys: ([\d,]+)")
    assert sum(t.numel() for t in sd.values()) == total


def test_alias_structure(listing_and_model):
    """Keys marked ALIAS-OF share storage with their target; all other keys are distinct tensors."""
    listing, model = listing_and_model
    sd = model.state_dict()
    aliases = {key: alias for key, _, _, alias in listing.rows if alias is not None}
    aliases.update(_tied_extra_alias(model))
    for key, target in aliases.items():
        assert sd[key].data_ptr() == sd[target].data_ptr(), f"{key} must alias {target}"
        assert _storage_key(sd[key]) == _storage_key(sd[target])
    # the remaining keys are pairwise distinct: distinct tensors = keys - aliases
    distinct = {_storage_key(t) for t in sd.values()}
    assert len(distinct) == len(sd) - len(aliases)
    published_distinct = listing.header_int(r"distinct tensors: ([\d,]+)")
    assert len(distinct) == published_distinct - len(_tied_extra_alias(model))


def test_parameter_counts(listing_and_model):
    listing, model = listing_and_model
    tied = sum(model.state_dict()[k].numel() for k in _tied_extra_alias(model))
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == listing.header_int(r"de-duplicated\) numel: ([\d,]+)") - tied
    published = listing.header_int(r"get_num_params\(\): ([\d,]+)")
    if published is not None:
        assert model.get_num_params() == published - tied
    if "requires_grad=False: none" in "\n".join(listing.header):
        assert all(p.requires_grad for p in model.parameters())


def test_non_persistent_buffers(listing_and_model):
    listing, model = listing_and_model
    text = listing.header_value(r"non-persistent buffers \(NOT in state_dict\): (.*)$")
    assert text is not None
    expected = {} if text.strip() == "none" else {
        name: tuple(int(s) for s in shape.split(",") if s.strip())
        for name, shape in re.findall(r"\('(\w+)', \(([\d, ]+)\)\)", text)}
    sd = model.state_dict()
    buffers = dict(model.named_buffers())
    non_persistent = {name: tuple(b.shape) for name, b in buffers.items() if name not in sd}
    assert non_persistent == expected


def test_tied_seq2seq_weights_are_the_fix(reference_dir, statedict_parser):
    """The published seq2seq 'tie' was a no-op; ours ties the embedding to the output layer (§18.3)."""
    for name in ("statedict_seq2seq_dat.txt", "statedict_seq2seq_transformer.txt"):
        model = _build(statedict_parser(reference_dir / name))
        assert model.weights_tied
        assert model.layers.target_embedder.weight is model.layers.final_out.weight


# ------------------------------------------------------------------------------------------- safetensors listing
def test_save_pretrained_matches_published_safetensors(tmp_path, reference_dir, statedict_parser):
    """``save_pretrained`` of the README LM stores the published 133 tensors, names and alias metadata."""
    pytest.importorskip("safetensors")
    from safetensors import safe_open

    from dual_attention.hf import DualAttnTransformerLM_HFHub

    listing = statedict_parser(reference_dir / "statedict_lm_readme_safetensors.txt")
    config = json.loads(listing.header_value(r"^# config.json: (.*)$"))
    n_stored = listing.header_int(r"tensors stored: (\d+)")
    metadata = json.loads(listing.header_value(r"metadata \(dropped alias -> stored name\): (.*)$"))
    assert n_stored == len(listing.rows) == 133

    model = DualAttnTransformerLM_HFHub(**config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "model.safetensors").exists()
    written = json.loads((tmp_path / "config.json").read_text())
    for key, value in config.items():  # the published config (user-passed args) is contained in ours
        assert written[key] == value, key

    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        assert sorted(keys) == listing.keys  # safetensors lists names sorted
        for key, shape, dtype, _ in listing.rows:
            sl = f.get_slice(key)
            assert tuple(sl.get_shape()) == shape, key
            assert sl.get_dtype() == dtype, key
        stored_meta = {k: v for k, v in (f.metadata() or {}).items() if k != "format"}
    assert stored_meta == metadata
    assert len(model.state_dict()) - len(keys) == len(metadata) == 154 - 133
