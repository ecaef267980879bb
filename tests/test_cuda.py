"""CUDA checks (``-m cuda``; skipped without a CUDA device): ``benchmarks/gpu_check.sh`` runs them on a GPU machine.

The language model with ``implementation='auto'`` (the Triton kernel on CUDA when Triton is installed, else the fused
SDPA call) against the plain path, in float32 and under bfloat16 autocast; cached decoding against the full forward.
The kernel itself is checked value by value in ``tests/test_triton_ra.py`` (compiled on CUDA, interpreted on a CPU).
"""

from __future__ import annotations

import pytest
import torch

from dual_attention.relational_attention import RelationalAttention

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

RETRIEVERS = ["symbolic_attention", "positional_symbols", "position_relative"]


def _set_implementation(model, impl: str) -> None:
    for module in model.modules():
        if isinstance(module, RelationalAttention):
            module.implementation = impl


def _loss_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    loss = model(x, x)[1]
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_lm_training_step_auto_equals_plain(make_dat_lm, retriever):
    """float32 (no TF32): the fast path's loss and gradients equal the plain path's."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = make_dat_lm(symbol_retrieval=retriever, max_block_size=96, d_model=32).cuda()
    x = torch.randint(0, model.vocab_size, (2, 90), device="cuda")
    fast = _loss_and_grads(model, x)
    _set_implementation(model, "plain")
    ref = _loss_and_grads(model, x)
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-5)
    for name, grad in ref[1].items():
        torch.testing.assert_close(fast[1][name], grad, rtol=1e-3, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("impl", ["auto", "fused"])
def test_lm_bf16_autocast_close_to_float32(make_dat_lm, impl):
    model = make_dat_lm(max_block_size=300, d_model=64, n_heads_sa=2, n_heads_ra=2).cuda()
    _set_implementation(model, impl)
    x = torch.randint(0, model.vocab_size, (2, 300), device="cuda")
    ref = model(x, x)[1]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x, x)[1]
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 2e-2 * abs(ref.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("retriever", RETRIEVERS)
def test_cached_generation_on_cuda(make_dat_lm, retriever):
    """Cached (eager and fused-step) decoding equals the full forward's greedy tokens on CUDA."""
    model = make_dat_lm(symbol_retrieval=retriever, max_block_size=64).cuda().eval()
    prompt = torch.randint(0, model.vocab_size, (2, 20), device="cuda")
    uncached = model.generate(prompt, 24, temperature=0.0, use_cache=False)
    assert torch.equal(model.generate(prompt, 24, temperature=0.0), uncached)
