#!/usr/bin/env python
"""Time one training step (forward + backward + AdamW) of the Transformer, DAT and Hadamard-DAT language models.

The models are built like the tiny presets (``lm-tiny-transformer``, ``lm-tiny-dat``, ``lm-tiny-hadamard``; the
last also with symbols) at the given sizes. Steps of the models are interleaved (round-robin) so that the noise of a
shared machine hits them alike; the table gives the median over the repeats and the ratio to the Transformer
measured in the same run.

Example::

    python benchmarks/bench_hadamard.py --d-model 64 --seq 64 --batch 32 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dual_attention.language_models import DualAttnTransformerLM, TransformerLM


def build(name: str, d: int, layers: int, seq: int, vocab: int) -> torch.nn.Module:
    common = dict(vocab_size=vocab, d_model=d, n_layers=layers, dff=2 * d, dropout_rate=0.0, activation="gelu",
                  norm_first=True, max_block_size=seq, pos_enc_type="RoPE")
    if name == "transformer":
        return TransformerLM(n_heads=4, **common)
    symbols = dict(symbol_retrieval_kwargs=dict(d_model=d, n_heads=2, n_symbols=32))
    if name == "dat":
        return DualAttnTransformerLM(n_heads_sa=2, n_heads_ra=2, **symbols, **common)
    hadamard = dict(n_heads_sa=2, n_heads_ra=2, ra_type="hadamard", ra_kwargs=dict(qk_norm=True))
    if name == "hadamard":
        return DualAttnTransformerLM(symbol_retrieval=None, symbol_retrieval_kwargs=None, **hadamard, **common)
    return DualAttnTransformerLM(**symbols, **hadamard, **common)  # hadamard+sym


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    names = ["transformer", "dat", "hadamard", "hadamard+sym"]
    models = {n: build(n, args.d_model, args.layers, args.seq, args.vocab) for n in names}
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-3) for n, m in models.items()}
    x = torch.randint(0, args.vocab, (args.batch, args.seq))
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(args.repeats + 3):  # 3 warm-up rounds
        for n in names:
            start = time.perf_counter()
            loss = models[n](x, x)[1]
            loss.backward()
            opts[n].step()
            opts[n].zero_grad(set_to_none=True)
            if rep >= 3:
                times[n].append(time.perf_counter() - start)
    base = statistics.median(times["transformer"])
    print(f"d_model={args.d_model} layers={args.layers} seq={args.seq} batch={args.batch} threads={args.threads} "
          f"repeats={args.repeats}")
    print("| model | params | ms / step (median) | × Transformer |")
    print("|---|---|---|---|")
    for n in names:
        med = statistics.median(times[n])
        params = sum(p.numel() for p in models[n].parameters())
        print(f"| {n} | {params:,} | {1000 * med:.1f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
