#!/usr/bin/env python
"""CUDA benchmark of the relational-attention kernels: the SDPA path, the Triton kernel and a Transformer's attention.

One attention call, forward + backward, causal, in bfloat16 (``--dtype``), of the README's benchmark model's layer
shapes: 4 RA heads of width D = 32 with R = 4 relations of d_r = 32 (values ``[v | k_rel]`` of width 160, keys of
width 32) against the 8 SA heads of width 32 of the Transformer it is compared with. Cases:

* ``RA SDPA``: :func:`~dual_attention.relational_functional.ra_fused` (one ``scaled_dot_product_attention`` call with
  values ``[v | k_rel]``; CUDA's memory-efficient kernel takes the wider values).
* ``RA Triton``: :func:`~dual_attention.triton_ra.ra_triton` (scores at width 32, values at 160, in one kernel).
* ``Transformer``: ``scaled_dot_product_attention`` of 8 heads of width 32 (flash).

TFLOP/s count the matrix products of the attention itself, causal (half the score matrix), forward + backward:
forward 2·B·H·n²/2·(Dk + Dv), backward 2·B·H·n²/2·(3·Dk + 2·Dv) (recomputed scores, dV, dP, dQ, dK). Then one
training step of the DAT-LM (``implementation`` auto = Triton, and forced ``fused``) against the Transformer-LM.

Example::

    python benchmarks/bench_gpu_kernels.py --sizes 1024,2048,4096,8192 --batch 8
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

HEADS_RA, HEADS_SA, D, R, DR = 4, 4, 32, 4, 32


def _flops(batch: int, heads: int, n: int, dk: int, dv: int) -> float:
    pairs = batch * heads * n * n / 2  # causal
    return 2 * pairs * (dk + dv) + 2 * pairs * (3 * dk + 2 * dv)


def _time(fn, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after two warm-ups (CUDA events)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def attention_cases(n: int, args) -> dict:
    """name -> (step, FLOPs) for one attention call, forward + backward."""
    from dual_attention.attention_utils import AttentionMask
    from dual_attention.relational_functional import RAProblem, ra_fused
    from dual_attention.symbol_values import TokenValues
    from dual_attention.triton_ra import ra_triton

    dtype = getattr(torch, args.dtype)
    b = args.batch
    t = lambda *s: torch.randn(*s, device="cuda", dtype=dtype, requires_grad=True)  # noqa: E731
    q, k, v = t(b, HEADS_RA, n, D), t(b, HEADS_RA, n, D), t(b, HEADS_RA, n, D)
    q_rel, k_rel, wr = t(b, n, R, DR), t(b, n, R, DR), t(HEADS_RA, D, R)
    sq, sk, sv = t(b, 2 * HEADS_SA, n, D), t(b, 2 * HEADS_SA, n, D), t(b, 2 * HEADS_SA, n, D)
    problem = RAProblem(q, k, q_rel, k_rel, TokenValues(v), wr, mask=AttentionMask(None, True),
                        attn_scale=D ** -0.5, rel_scale=DR ** -0.5)

    def ra(fn):
        return lambda: fn(problem).sum().backward()

    def sa():
        F.scaled_dot_product_attention(sq, sk, sv, is_causal=True).sum().backward()

    ra_flops = _flops(b, HEADS_RA, n, D, D + R * DR)
    return {"RA SDPA": (ra(ra_fused), ra_flops), "RA Triton": (ra(ra_triton), ra_flops),
            "Transformer": (sa, _flops(b, 2 * HEADS_SA, n, D, D))}


def lm_cases(n: int, args) -> dict:
    """name -> step: one training step of the DAT-LM (Triton, SDPA) and the Transformer-LM."""
    from dual_attention.language_models import DualAttnTransformerLM, TransformerLM

    torch.manual_seed(0)
    dat = DualAttnTransformerLM(1024, 256, 4, HEADS_SA, HEADS_RA, dict(d_model=256, n_heads=4, n_symbols=256),
                                dff=None, dropout_rate=0.0, activation="gelu", norm_first=True, max_block_size=n,
                                pos_enc_type="RoPE").cuda()
    tf = TransformerLM(1024, 256, 4, 8, dff=None, dropout_rate=0.0, activation="gelu", norm_first=True,
                       max_block_size=n, pos_enc_type="RoPE").cuda()
    x = torch.randint(0, 1024, (args.batch, n), device="cuda")

    def step(model, impl=None):
        def run():
            for block in model.layers.blocks:
                ra = getattr(getattr(block, "dual_attn", None), "relational_attention", None)
                if ra is not None and impl is not None:
                    ra.implementation = impl
            with torch.autocast("cuda", dtype=getattr(torch, args.dtype)):
                loss = model(x, x)[1]
            loss.backward()
        return run

    return {"DAT-LM Triton": step(dat, "auto"), "DAT-LM SDPA": step(dat, "fused"), "Transformer-LM": step(tf)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,2048,4096,8192", help="sequence lengths (default 1024,2048,4096,8192)")
    p.add_argument("--lm-sizes", default="1024,4096", help="sequence lengths of the LM step (default 1024,4096)")
    p.add_argument("--batch", type=int, default=8, help="batch (default 8)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    p.add_argument("--repeats", type=int, default=10, help="timed runs per case, median (default 10)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.dtype}, batch {args.batch}, causal, "
          f"forward + backward, median of {args.repeats}")
    print("\n| n | RA SDPA ms (TFLOP/s) | RA Triton ms (TFLOP/s) | Transformer attention ms (TFLOP/s) | "
          "SDPA / Triton | RA Triton / Transformer |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (int(s) for s in args.sizes.split(",")):
        cases = attention_cases(n, args)
        ms = {name: _time(step, args.repeats) for name, (step, _) in cases.items()}
        cells = [f"{ms[k] * 1e3:.2f} ({cases[k][1] / ms[k] / 1e12:.0f})" for k in cases]
        print(f"| {n} | " + " | ".join(cells) + f" | {ms['RA SDPA'] / ms['RA Triton']:.2f} | "
              f"{ms['RA Triton'] / ms['Transformer']:.2f} |", flush=True)
        del cases
    print("\n| n | DAT-LM Triton ms | DAT-LM SDPA ms | Transformer-LM ms | DAT (Triton) / Transformer | "
          "DAT (SDPA) / Transformer |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n in (int(s) for s in args.lm_sizes.split(",")):
        ms = {name: _time(step, args.repeats) for name, step in lm_cases(n, args).items()}
        tf = ms["Transformer-LM"]
        print(f"| {n} | {ms['DAT-LM Triton'] * 1e3:.1f} | {ms['DAT-LM SDPA'] * 1e3:.1f} | {tf * 1e3:.1f} | "
              f"{ms['DAT-LM Triton'] / tf:.2f} | {ms['DAT-LM SDPA'] / tf:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
