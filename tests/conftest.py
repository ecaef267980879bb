"""Shared fixtures for the core test suite: seeding, the reference state-dict listings and small model factories.

The factories build *small* models of every family (a few thousand parameters) so that correctness tests run in
milliseconds on a CPU; each takes keyword overrides of its defaults.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

#: the published package's state-dict listings (API.md §15), kept with the tests so that any clone runs them
REFERENCE_DIR = Path(__file__).resolve().parent / "data" / "reference"

# Without CUDA the Triton kernel's tests (test_triton_ra.py) run through Triton's interpreter, which Triton reads when
# it is first imported (torch._dynamo imports it), so it is switched on here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# ---------------------------------------------------------------------------------------------------- seeding
@pytest.fixture(autouse=True)
def _seed(monkeypatch):
    """Every test starts from the same RNG state, and offline: a path that looks like a Hub id fails at once."""
    torch.manual_seed(0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


# ------------------------------------------------------------------------------------------ state-dict listings
@dataclass
class StateDictListing:
    """One ``statedict_*.txt`` file: its header facts and its rows ``key, shape, dtype, alias_of``."""

    path: Path
    header: list[str]
    rows: list[tuple[str, tuple[int, ...], str, str | None]] = field(default_factory=list)

    def header_value(self, pattern: str) -> str | None:
        for line in self.header:
            m = re.search(pattern, line)
            if m:
                return m.group(1)
        return None

    def header_int(self, pattern: str) -> int | None:
        value = self.header_value(pattern)
        return None if value is None else int(value.replace(",", ""))

    @property
    def constructor(self) -> str | None:
        """The constructor expression of the header, without a trailing ``# comment``."""
        value = self.header_value(r"^# constructor: (.*)$")
        return None if value is None else re.sub(r"\)\s+#.*$", ")", value).strip()

    @property
    def keys(self) -> list[str]:
        return [r[0] for r in self.rows]


def parse_statedict_listing(path: Path) -> StateDictListing:
    """Parse a listing: ``# ...`` header lines, then ``key<TAB>shape<TAB>dtype[<TAB>ALIAS-OF key]`` rows."""
    listing = StateDictListing(path=path, header=[])
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            listing.header.append(line)
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            raise ValueError(f"{path.name}: cannot parse row {line!r}")
        key, shape_text, dtype = parts[:3]
        shape = tuple(int(s) for s in re.findall(r"\d+", shape_text))
        alias = None
        if len(parts) > 3:
            m = re.fullmatch(r"ALIAS-OF (\S+)", parts[3].strip())
            if not m:
                raise ValueError(f"{path.name}: cannot parse alias column {parts[3]!r}")
            alias = m.group(1)
        listing.rows.append((key, shape, dtype, alias))
    return listing


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not sorted(REFERENCE_DIR.glob("statedict_*.txt")):  # a broken checkout must fail, never skip
        pytest.fail(f"the reference listings statedict_*.txt are missing from {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def statedict_parser():
    return parse_statedict_listing


# ------------------------------------------------------------------------------------------------- factories
SMALL_VOCAB = 37


@pytest.fixture
def make_dat_lm():
    """Small :class:`DualAttnTransformerLM` (d=16, 2 layers, 2+2 heads); keyword overrides replace defaults."""
    from dual_attention.language_models import DualAttnTransformerLM

    def make(**overrides):
        d = overrides.get("d_model", 16)
        retrieval = overrides.get("symbol_retrieval", "symbolic_attention")
        kwargs = dict(vocab_size=SMALL_VOCAB, d_model=d, n_layers=2, n_heads_sa=2, n_heads_ra=2, dff=32,
                      dropout_rate=0.0, activation="swiglu", norm_first=True, max_block_size=24,
                      symbol_retrieval=retrieval, pos_enc_type="RoPE")
        if retrieval == "symbolic_attention":
            kwargs["symbol_retrieval_kwargs"] = dict(d_model=d, n_heads=2, n_symbols=8)
        elif retrieval == "positional_symbols":
            kwargs["symbol_retrieval_kwargs"] = dict(symbol_dim=d, max_length=overrides.get("max_block_size", 24))
        elif retrieval == "position_relative":
            kwargs["symbol_retrieval_kwargs"] = dict(symbol_dim=d, max_rel_pos=5)
            kwargs["ra_kwargs"] = dict(use_relative_positional_symbols=True)
        kwargs.update(overrides)
        return DualAttnTransformerLM(**kwargs)

    return make


@pytest.fixture
def make_transformer_lm():
    from dual_attention.language_models import TransformerLM

    def make(**overrides):
        kwargs = dict(vocab_size=SMALL_VOCAB, d_model=16, n_layers=2, n_heads=4, dff=32, dropout_rate=0.0,
                      activation="gelu", norm_first=True, max_block_size=24)
        kwargs.update(overrides)
        return TransformerLM(**kwargs)

    return make


@pytest.fixture
def make_seq2seq_dat():
    """Small :class:`Seq2SeqDualAttnTransformer` with token input and output."""
    from dual_attention.seq2seq_models import Seq2SeqDualAttnTransformer

    def make(**overrides):
        d = overrides.get("d_model", 16)
        retrieval = overrides.get("symbol_retrieval", "symbolic_attention")
        retriever_kwargs = {
            "symbolic_attention": dict(d_model=d, n_heads=2, n_symbols=8),
            "positional_symbols": dict(symbol_dim=d, max_length=20),
            "position_relative": dict(symbol_dim=d, max_rel_pos=4),
            "rel_sym_attn": dict(d_model=d, rel_n_heads=2, symbolic_attn_n_heads=2, n_symbols=8, nbhd_delta=2,
                                 causal_nbhd=True),
        }.get(retrieval)  # None: no retriever (ra_type='hadamard')
        ra_kwargs = dict(use_relative_positional_symbols=True) if retrieval == "position_relative" else {}
        kwargs = dict(
            input_spec=dict(type="token", vocab_size=23), output_spec=dict(type="token", vocab_size=19),
            symbol_retrieval=retrieval, symbol_retrieval_kwargs=retriever_kwargs, d_model=d, out_dim=19,
            n_layers_enc=2, n_layers_dec=2,
            encoder_kwargs=dict(n_heads_sa=2, n_heads_ra=2, dff=32, activation="gelu", dropout_rate=0.0,
                                norm_first=True, ra_kwargs=ra_kwargs),
            decoder_kwargs=dict(n_heads_sa=2, n_heads_ra=2, n_heads_cross=2, dff=32, activation="gelu",
                                dropout_rate=0.0, norm_first=True, causal=True, ra_kwargs=ra_kwargs),
            in_block_size=20, out_block_size=20)
        kwargs.update(overrides)
        return Seq2SeqDualAttnTransformer(**kwargs)

    return make


@pytest.fixture
def make_seq2seq_transformer():
    from dual_attention.seq2seq_models import Seq2SeqTransformer

    def make(**overrides):
        kwargs = dict(
            input_spec=dict(type="token", vocab_size=23), output_spec=dict(type="token", vocab_size=19),
            d_model=16, out_dim=19, n_layers_enc=2, n_layers_dec=2,
            encoder_kwargs=dict(n_heads=4, dff=32, dropout_rate=0.0, activation="relu", norm_first=True),
            decoder_kwargs=dict(n_heads=4, n_heads_cross=2, dff=32, dropout_rate=0.0, activation="relu",
                                norm_first=True, causal=True),
            in_block_size=20, out_block_size=20)
        kwargs.update(overrides)
        return Seq2SeqTransformer(**kwargs)

    return make


@pytest.fixture
def make_vidat():
    from dual_attention.vision_models import VisionDualAttnTransformer

    def make(**overrides):
        d = overrides.get("d_model", 16)
        kwargs = dict(image_shape=(3, 8, 8), patch_size=(4, 4), num_classes=5, d_model=d, n_layers=2, n_heads_sa=2,
                      n_heads_ra=2, dff=32, dropout_rate=0.0, activation="gelu", norm_first=True,
                      symbol_retrieval="position_relative", symbol_retrieval_kwargs=dict(symbol_dim=d, max_rel_pos=5),
                      ra_kwargs=dict(symmetric_rels=True, use_relative_positional_symbols=True), pool="cls")
        kwargs.update(overrides)
        return VisionDualAttnTransformer(**kwargs)

    return make


@pytest.fixture
def make_vit():
    from dual_attention.vision_models import VisionTransformer

    def make(**overrides):
        kwargs = dict(image_shape=(3, 8, 8), patch_size=(4, 4), num_classes=5, d_model=16, n_layers=2, n_heads=4,
                      dff=32, dropout_rate=0.0, activation="gelu", norm_first=True, pool="mean")
        kwargs.update(overrides)
        return VisionTransformer(**kwargs)

    return make
