"""The Triton relational-attention kernel equals the plain path, values and gradients, run by Triton's interpreter.

Without CUDA, ``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` before Triton is first imported, so the kernels run
on CPU tensors (float64, to compare at rounding level); with CUDA they are compiled and run in float32. Sizes are
small (the interpreter runs each program in Python) but span several query and key tiles, partial tiles, GQA, causal
and masked attention, and position-relative symbols both on the band and off it. Triton is a ``dev`` dependency:
these tests fail, not skip, without it.
"""

from __future__ import annotations

import pytest
import torch
import triton  # noqa: F401  (a dev dependency: pip install -e '.[dev]')
from torch import nn

import dual_attention.triton_ra as triton_ra
from dual_attention.attention_utils import AttentionMask, build_attn_mask
from dual_attention.relational_attention import RelationalAttention
from dual_attention.relational_functional import RAProblem, ra_plain, resolve_implementation
from dual_attention.symbol_retrieval import PositionRelativeSymbolRetriever
from dual_attention.symbol_values import RelativeSymbols, TokenValues

#: the interpreter runs the kernels on CPU tensors (float64: rounding-level checks); on a GPU they are compiled
DEVICE, DTYPE, ATOL = ("cpu", torch.float64, 1e-12) if triton_ra.INTERPRETED else ("cuda", torch.float32, 2e-5)

TILES = (16, 16)  # query and key tile rows: the lengths below span 2-3 tiles, the last one partial


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    monkeypatch.setitem(triton_ra.BLOCKS, "per_token", TILES)
    monkeypatch.setitem(triton_ra.BLOCKS, "relative", TILES)


def _problem(b=2, heads=4, kv_heads=2, lq=37, lk=None, dk=8, d=8, n_rel=2, d_rel=4, max_rel=None, dtype=DTYPE):
    """Random projected inputs of one RA layer; the leaves that get gradients."""
    lk = lq if lk is None else lk
    t = lambda *shape: torch.randn(*shape, dtype=dtype, device=DEVICE, requires_grad=True)  # noqa: E731
    q, k = t(b, heads, lq, dk), t(b, kv_heads, lk, dk)
    q_rel, k_rel, wr = t(b, lq, n_rel, d_rel), t(b, lk, n_rel, d_rel), t(heads, d, n_rel)
    if max_rel is None:
        leaf = t(b, kv_heads, lk, d)
        values = TokenValues(leaf)
    else:
        leaf = t(2 * max_rel + 1, kv_heads, d)
        values = RelativeSymbols(leaf, max_rel)
    return (q, k, q_rel, k_rel, values, wr), (q, k, q_rel, k_rel, leaf, wr)


def _ra(args, mask=None, is_causal=False) -> RAProblem:
    return RAProblem(*args, mask=AttentionMask(mask, is_causal), attn_scale=0.35, rel_scale=0.5,
                     rel_activation=nn.Identity())


def _check(args, leaves, atol=ATOL, **kwargs):
    """Triton kernel vs ra_plain (α and the relations materialised): outputs and all input gradients."""
    out = triton_ra.ra_triton(_ra(args, **kwargs))
    ref = ra_plain(_ra(args, **kwargs))[0]
    torch.testing.assert_close(out, ref, rtol=0, atol=atol)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    want = torch.autograd.grad(ref, leaves, grad)
    for name, g, w in zip(("q", "k", "q_rel", "k_rel", "values", "wr"), got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=atol * 10, msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_per_token_symbols(causal, kv_heads):
    _check(*_problem(kv_heads=kv_heads), is_causal=causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("max_rel", [3, 20])  # tiles off the band (row sums) and on it; a band wider than a tile
def test_relative_symbols(causal, max_rel):
    _check(*_problem(max_rel=max_rel), is_causal=causal)


def test_unequal_widths_and_bool_mask():
    """Key width, value width and relation width all different and not powers of two; an arbitrary bool mask."""
    args, leaves = _problem(dk=6, d=10, n_rel=3, d_rel=5, lq=29)
    mask = torch.rand(2, 4, 29, 29, device=DEVICE) > 0.4
    mask |= torch.eye(29, dtype=torch.bool, device=DEVICE)  # every row attends somewhere
    _check(args, leaves, mask=mask)


def test_key_padding_with_causality_as_the_layers_build_it():
    """Left padding of one row plus causality, combined by build_attn_mask (which opens rows with no key)."""
    args, leaves = _problem(lq=33, max_rel=5)
    pad = torch.ones(2, 33, dtype=torch.bool, device=DEVICE)
    pad[1, :7] = False
    mask, causal = build_attn_mask(None, True, pad, 33, 33, device=DEVICE, batch_size=2, n_heads=4)
    assert not causal and mask.shape == (2, 1, 33, 33)
    _check(args, leaves, mask=mask)


def test_additive_mask_and_fewer_queries_than_keys():
    """A float mask broadcast over heads, and a query block shorter than the keys (as a cached prefill)."""
    args, leaves = _problem(lq=18, lk=40)
    mask = torch.randn(2, 1, 18, 40, dtype=DTYPE, device=DEVICE)
    mask[..., 30:] = float("-inf")
    _check(args, leaves, mask=mask)


#: Triton 3.9's interpreter computes bfloat16 ``tl.dot`` wrongly (garbage even for a plain 16×16 product), so bfloat16
#: is checked on CUDA only
BF16 = pytest.param(torch.bfloat16, marks=[pytest.mark.cuda, pytest.mark.skipif(
    DEVICE != "cuda", reason="bfloat16 tl.dot is wrong under Triton's interpreter; checked on CUDA")])


@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_lower_precision_matches_float64_reference(dtype):
    """float32 (exact products, no TF32) and bfloat16 (float32 accumulators) against a float64 reference."""
    args, _ = _problem(dtype=dtype, max_rel=4)
    out = triton_ra.ra_triton(_ra(args, is_causal=True))
    args64 = [a.double() if isinstance(a, torch.Tensor) else RelativeSymbols(a.table.double(), a.max_rel_pos)
              for a in args]
    ref = ra_plain(_ra(args64, is_causal=True))[0]
    assert out.dtype == dtype
    scale = ref.abs().max().item()
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=(2e-5 if dtype == torch.float32 else 3e-2) * scale)


@pytest.mark.parametrize("relative", [False, True])
def test_relational_attention_layer_with_triton_implementation(relative):
    """RelationalAttention(implementation='triton') equals 'plain': output and parameter gradients (RoPE, GQA)."""
    from dual_attention.attention_utils import precompute_freqs_cis

    layer = RelationalAttention(16, 2, n_kv_heads=1, total_n_heads=4, use_relative_positional_symbols=relative)
    layer = layer.to(DEVICE, DTYPE)
    x = torch.randn(2, 21, 16, dtype=DTYPE, device=DEVICE)
    if relative:
        symbols = PositionRelativeSymbolRetriever(16, 4).to(DEVICE, DTYPE).retrieve(x)
        freqs = (None, None)
    else:
        symbols = torch.randn(2, 21, 16, dtype=DTYPE, device=DEVICE)
        freqs = tuple(f.to(DEVICE, DTYPE) for f in precompute_freqs_cis(4, 21))
    results = {}
    for impl in ("plain", "triton"):
        layer.implementation = impl
        layer.zero_grad(set_to_none=True)
        out = layer(x, symbols, *freqs, is_causal=True, need_weights=False)[0]
        out.square().sum().backward()
        results[impl] = (out, {n: p.grad.clone() for n, p in layer.named_parameters()})
    torch.testing.assert_close(results["triton"][0], results["plain"][0], rtol=0, atol=ATOL)
    for name, grad in results["plain"][1].items():
        torch.testing.assert_close(results["triton"][1][name], grad, rtol=0, atol=ATOL * 100)


def test_auto_picks_triton_on_cuda_only():
    args, _ = _problem()
    chosen = resolve_implementation("auto", _ra(args, is_causal=True), need_weights=False, decoding=False)
    assert chosen == ("triton" if DEVICE == "cuda" else "tiled")
    assert triton_ra.triton_available("cuda") == torch.cuda.is_available()
    assert triton_ra.triton_available("cpu") == triton_ra.INTERPRETED
