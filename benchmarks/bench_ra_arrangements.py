#!/usr/bin/env python
"""Compare exact arrangements of the relational-attention kernel (forward + backward); print a markdown table.

Relational attention with the identity relation activation needs, per head h, Σ_j α_ij^h [v_j | k_rel_j]: a value
width of D + R·d_r (here 32 + 128 = 160) against a query/key width of D_k = 32, with the relation keys shared by all
heads. The arrangements timed here (all exact; checked against each other before timing):

* ``fused-pad``: one ``scaled_dot_product_attention`` call, q/k zero-padded to the value width (the CPU flash
  kernel needs equal widths): the library's ``ra_fused``.
* ``chunk-32`` / ``chunk-64``: one call per value chunk of width 32 (no padding) / 64 (q/k padded to 64).
* ``split``: one call for the symbol values (width 32), one for the relation keys (q/k padded to 128).
* ``math``: one call with unpadded q/k, which sends SDPA to its O(n²)-memory math kernel.
* ``tiled``: the library's ``ra_tiled``, a hand-written flash-style pass over tiles of queries (scores at width 32,
  values at 160, the shared relation keys attended for all heads in one product, O(n·tile) memory).
* ``blocked``: the library's ``ra_blocked`` (query blocks of ``ra_plain`` with activation checkpointing).
* ``plain``: ``ra_plain``, the equation as written (α and the relations materialised, O(n²) memory).

Example::

    python benchmarks/bench_ra_arrangements.py --sizes 512,1024,2048 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from dual_attention import relational_functional as rf
from dual_attention.attention_utils import AttentionMask
from dual_attention.symbol_values import TokenValues

B, H, D, R, DR = 4, 4, 32, 4, 32


def _sdpa_chunks(q, k, values, k_rel, widths, scale):
    """One causal SDPA call per chunk of ``[v | k_rel]``; q/k zero-padded to each chunk's width if narrower."""
    b, h, n, dk = q.shape
    v = torch.cat([values, k_rel.reshape(b, 1, n, -1).expand(b, h, n, R * DR)], dim=-1)
    outs = []
    for chunk in v.split(widths, dim=-1):
        w = chunk.shape[-1]
        qq, kk = (F.pad(q, (0, w - dk)), F.pad(k, (0, w - dk))) if w > dk else (q, k)
        outs.append(F.scaled_dot_product_attention(qq, kk, chunk, is_causal=True, scale=scale))
    return torch.cat(outs, dim=-1)


def make_cases(n: int):
    torch.manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, requires_grad=True)

    q, k, q_rel, k_rel, v, wr = t(B, H, n, D), t(B, H, n, D), t(B, n, R, DR), t(B, n, R, DR), t(B, H, n, D), t(H, D, R)
    args = (q, k, q_rel, k_rel, v, wr)
    kw = dict(attn_scale=D ** -0.5, rel_scale=DR ** -0.5)
    problem = rf.RAProblem(q, k, q_rel, k_rel, TokenValues(v), wr, mask=AttentionMask(is_causal=True), **kw)

    def via_chunks(widths):
        def run():
            out = _sdpa_chunks(q, k, v, k_rel, widths, kw["attn_scale"])
            sym, k_rel_bar = out.split([D, R * DR], dim=-1)
            return sym + rf.relation_readout(q_rel, k_rel_bar, wr, kw["rel_scale"])
        return run

    def math():
        vals = torch.cat([v, k_rel.reshape(B, 1, n, -1).expand(B, H, n, R * DR)], dim=-1)
        out = F.scaled_dot_product_attention(q, k, vals, is_causal=True, scale=kw["attn_scale"])
        sym, k_rel_bar = out.split([D, R * DR], dim=-1)
        return sym + rf.relation_readout(q_rel, k_rel_bar, wr, kw["rel_scale"])

    width = D + R * DR
    return args, {
        "fused-pad": lambda: rf.ra_fused(problem),
        "chunk-32": via_chunks([32] * (width // 32)),
        "chunk-64": via_chunks([64, 64, width - 128]),
        "split": via_chunks([D, R * DR]),
        "math": math,
        "tiled": lambda: rf.ra_tiled(problem),
        "blocked": lambda: rf.ra_blocked(problem, block_size=256),
        "plain": lambda: rf.ra_plain(problem)[0],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="512,1024,2048", help="sequence lengths (default 512,1024,2048)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after a warm-up (default 3)")
    p.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                   help="wall clock, or process CPU time (robust on a shared machine with --threads 1)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.timer == "wall" else time.process_time
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {B}, {H} heads, D_k = D = {D}, "
          f"R = {R}, d_r = {DR}, causal; forward + backward, fastest of {args.repeats} ({args.timer} time), "
          "seconds (relative to fused-pad)")
    names = list(make_cases(8)[1])
    print("\n| n | " + " | ".join(names) + " |")
    print("|---:|" + "---:|" * len(names))
    for n in sizes:
        tensors, cases = make_cases(n)
        reference = cases["fused-pad"]().detach()
        for name, fn in cases.items():  # every arrangement is exact
            torch.testing.assert_close(fn().detach(), reference, rtol=1e-4, atol=1e-4, msg=lambda m, x=name: x + m)
        times = {name: [] for name in cases}
        for _ in range(args.repeats + 1):
            for name, fn in cases.items():
                for x in tensors:
                    x.grad = None
                start = clock()
                fn().square().mean().backward()
                times[name].append(clock() - start)
        best = {name: min(ts[1:]) for name, ts in times.items()}
        base = best["fused-pad"]
        print(f"| {n} | " + " | ".join(f"{best[m]:.3f} ({best[m] / base:.2f})" for m in names) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
