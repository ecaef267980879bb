#!/usr/bin/env python
"""Cached decoding of the README's benchmark DAT-LM against the Transformer-LM, and against the published `generate`.

Rows, all measured in one run (wall clock, ``--threads`` threads, median of ``--repeats``):

* time per generated token, DAT-LM / Transformer-LM, batch 1 and 4 (both through ``generate``: the fused cached
  step of :mod:`dual_attention.fast_decode` for both models; ``--compile`` adds the compiled step);
* generating ``--new-tokens`` after ``--prompt`` at batch 1: ``generate`` (eager, compiled) against a faithful
  re-implementation of the published package's ``generate`` (crop to block_size, full forward, last logits /
  temperature, top-k, multinomial, append; ``top_k=1`` so both are greedy) running this package's forward.

Example::

    python benchmarks/bench_decoding.py --threads 2 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_relational_attention import build_lm  # same directory


@torch.no_grad()
def published_generate(model, idx, max_new_tokens, temperature=1.0, top_k=None):
    """The published package's ``generate``, re-implemented: no cache, a full forward per token."""
    for _ in range(max_new_tokens):
        idx_cond = idx if idx.size(1) <= model.block_size else idx[:, -model.block_size:]
        logits = model(idx_cond)[0][:, -1, :] / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits[logits < v[:, [-1]]] = -float("inf")
        probs = torch.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
    return idx


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="also the compiled step (compile time reported)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ns = argparse.Namespace(device="cpu")
    models = {name: build_lm(name, ns, args.prompt + args.new_tokens).eval() for name in ("dat", "transformer")}
    modes = [False, True] if args.compile else [False]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, wall clock, median of {args.repeats}; "
          f"{args.new_tokens} tokens after {args.prompt}")
    print("\n| batch | step | DAT-LM ms/token | Transformer-LM ms/token | DAT / Transformer |")
    print("|---:|---|---:|---:|---:|")
    rates = {}
    for batch in (1, 4):
        prompt = torch.randint(0, 1024, (batch, args.prompt), generator=torch.Generator().manual_seed(2))
        for compile in modes:
            ms = {}
            for name, model in models.items():
                if not compile:  # warm-up
                    model.generate(prompt, 16, temperature=0.0)
                else:
                    start = time.perf_counter()
                    model.generate(prompt, args.new_tokens, temperature=0.0, compile=True)
                    print(f"  (compiling {name}, batch {batch}: {time.perf_counter() - start:.1f} s, once)")
                t, out = _median_time(lambda m=model, x=prompt, c=compile: m.generate(
                    x, args.new_tokens, temperature=0.0, compile=c), args.repeats)
                ms[name] = t / args.new_tokens * 1e3
                if name == "dat":
                    rates[(batch, compile)] = (t, out)
            print(f"| {batch} | {'compiled' if compile else 'eager'} | {ms['dat']:.2f} | {ms['transformer']:.2f} | "
                  f"{ms['dat'] / ms['transformer']:.2f} |", flush=True)
    prompt = torch.randint(0, 1024, (1, args.prompt), generator=torch.Generator().manual_seed(2))
    t_pub, out_pub = _median_time(lambda: published_generate(models["dat"], prompt, args.new_tokens, top_k=1),
                                  max(1, args.repeats - 2))
    print("\n| DAT-LM, batch 1 | seconds | speed-up vs published | same tokens |")
    print("|---|---:|---:|:---:|")
    print(f"| published `generate` (re-implemented, uncached) | {t_pub:.2f} | 1.0× | |")
    for compile in modes:
        t, out = rates[(1, compile)]
        print(f"| `generate`{' (compile=True)' if compile else ''} | {t:.2f} | {t_pub / t:.1f}× | "
              f"{'yes' if torch.equal(out, out_pub) else 'NO'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
