#!/usr/bin/env python
"""What one cached decoding step of the DAT-LM costs against the Transformer-LM's; prints markdown tables.

The models are the benchmark's (``bench_relational_attention.build_lm``), prefilled with a 64-token prompt into a
cache of 320 positions, then stepped through :class:`~dual_attention.fast_decode.FastDecoder` (the eager step
``generate`` uses). Per model and batch: the time per step (wall clock, the two models alternating in rounds, median
round); by part of the step, the top-level ``aten`` operators of one step and their time (``torch.profiler``,
median over ``--rounds`` profiled steps); and the bytes one step reads: the fused weights of every layer, the
vocabulary matrix, and the caches (the step scores the whole preallocated cache, masked, so its shapes stay fixed).

Example::

    python benchmarks/profile_decode_step.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter, defaultdict

import torch
from bench_relational_attention import VOCAB, build_lm  # same directory
from torch.autograd.profiler import record_function

import dual_attention.fast_decode as fd

PROMPT, CACHE = 64, 320
PREFIX = "part::"
ATTENTION = "attention (projections, RoPE, cache writes, scores, readout)"


def make_decoder(model, batch: int) -> fd.FastDecoder:
    prompt = torch.randint(0, VOCAB, (batch, PROMPT), generator=torch.Generator().manual_seed(2))
    cache = model.init_kv_cache(batch, CACHE)
    model(prompt, kv_cache=cache, input_pos=torch.arange(PROMPT))
    return fd.FastDecoder(model, cache, PROMPT)


def _labelled(fn, label):
    def wrapped(*args, **kwargs):
        with record_function(PREFIX + label):
            return fn(*args, **kwargs)

    return wrapped


def label_parts(decoder: fd.FastDecoder) -> None:
    """Ranges around the feed-forward and the norms (modules) of a step."""
    for layer in decoder.layers:
        for module, label in ((layer.ff, "feed-forward"), (layer.norm1, "norms"), (layer.norm2, "norms")):
            if not hasattr(module, "_labelled"):
                module.forward, module._labelled = _labelled(module.forward, label), True
    decoder.final_norm.forward = _labelled(decoder.final_norm.forward, "norms")


def weight_bytes(decoder: fd.FastDecoder) -> dict[str, int]:
    """Bytes of the weights one step reads, by part, and of the caches it reads."""
    parts: dict[str, int] = defaultdict(int)
    size = lambda *ts: sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))  # noqa: E731
    for layer in decoder.layers:
        parts[ATTENTION] += size(layer.w_in, layer.b_in, layer.w_out, layer.b_out)
        if layer.symbols == "symbolic":
            parts["symbolic attention"] += size(*layer.sym_w, layer.sym_v, layer.sym_vb)
        parts["feed-forward"] += size(*layer.ff.parameters())
        parts["norms"] += size(*layer.norm1.parameters(), *layer.norm2.parameters())
        parts["caches (keys, values, relation keys)"] += size(layer.keys, layer.values, layer.rel_keys)
    parts["logits (vocabulary matrix)"] += size(decoder.w_vocab)
    return parts


def _part(event) -> str:
    """The part of the step an operator belongs to: its labelled range, else by its top-level operator."""
    root = event
    while event is not None:
        if event.name.startswith(PREFIX):
            return event.name[len(PREFIX):]
        root, event = event, event.cpu_parent
    return {"aten::linear": "logits (vocabulary matrix)", "aten::embedding": "embedding"}.get(root.name, ATTENTION)


def profile_step(decoder: fd.FastDecoder, token: torch.Tensor) -> tuple[dict, Counter]:
    """``({part: self ms}, Counter of top-level aten operators)`` of one profiled step (symbolic attention, a
    function of :mod:`~dual_attention.fast_decode`, in a range of its own)."""
    symbol_values = fd._symbol_values
    fd._symbol_values = _labelled(symbol_values, "symbolic attention")
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            decoder.step(token)
    finally:
        fd._symbol_values = symbol_values
    times: dict[str, float] = defaultdict(float)
    ops: Counter = Counter()
    for e in prof.events():
        label = _part(e)
        times[label] += e.self_cpu_time_total / 1e3
        top = e.cpu_parent is None or e.cpu_parent.name.startswith(PREFIX)
        if top and e.name.startswith("aten::"):
            ops[label] += 1
            ops["total"] += 1
    return times, ops


def median_profile(decoder: fd.FastDecoder, token: torch.Tensor, repeats: int) -> tuple[dict, Counter]:
    """:func:`profile_step` of ``repeats`` consecutive steps: the median time of each part, the operators of one."""
    runs = [profile_step(decoder, token) for _ in range(repeats)]
    parts = set().union(*(times for times, _ in runs))
    return {part: statistics.median(times.get(part, 0.0) for times, _ in runs) for part in parts}, runs[0][1]


def time_steps(decoders: dict, token: torch.Tensor, rounds: int, steps: int) -> dict[str, float]:
    """Median over ``rounds`` of the mean ms per step of ``steps`` steps, the decoders alternating by round."""
    per_round = {name: [] for name in decoders}
    for _ in range(rounds):
        for name, decoder in decoders.items():
            start = time.perf_counter()
            for _ in range(steps):
                decoder.step(token)
            per_round[name].append((time.perf_counter() - start) / steps * 1e3)
    return {name: statistics.median(ts) for name, ts in per_round.items()}


def report(batch: int, ms: dict, profiles: dict, bytes_: dict) -> None:
    print(f"\n#### batch {batch}: {ms['dat']:.2f} ms (DAT-LM) against {ms['transformer']:.2f} ms (Transformer-LM) "
          f"per step, ratio **{ms['dat'] / ms['transformer']:.2f}** (unprofiled, median)")
    print("\n| part of the step | DAT ops | DAT ms (profiled) | DAT MB read | Transformer ops | "
          "Transformer ms (profiled) | Transformer MB read |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    rows = sorted(set(profiles["dat"][0]) | set(profiles["transformer"][0]) | set(bytes_["dat"]))
    for row in rows:
        cells = []
        for name in ("dat", "transformer"):
            times, ops = profiles[name]
            cells += [str(ops.get(row, 0)), f"{times.get(row, 0.0):.2f}", f"{bytes_[name].get(row, 0) / 1e6:.2f}"]
        print(f"| {row} | " + " | ".join(cells) + " |")
    totals = []
    for name in ("dat", "transformer"):
        times, ops = profiles[name]
        totals += [str(ops["total"]), f"{sum(times.values()):.2f}", f"{sum(bytes_[name].values()) / 1e6:.2f}"]
    print("| **total** | " + " | ".join(totals) + " |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,4")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; prompt {PROMPT}, cache {CACHE} positions")
    models = {name: build_lm(name, argparse.Namespace(device="cpu"), CACHE).eval() for name in ("dat", "transformer")}
    with torch.no_grad():
        for batch in (int(b) for b in args.batches.split(",")):
            token = torch.zeros(batch, dtype=torch.long)
            decoders = {name: make_decoder(model, batch) for name, model in models.items()}
            for decoder in decoders.values():
                decoder.step(token)  # warm-up
            ms = time_steps(decoders, token, args.rounds, steps=(CACHE - PROMPT - 8) // args.rounds)
            decoders = {name: make_decoder(model, batch) for name, model in models.items()}
            for decoder in decoders.values():
                label_parts(decoder)
            profiles = {name: median_profile(decoder, token, args.rounds) for name, decoder in decoders.items()}
            report(batch, ms, profiles, {name: weight_bytes(d) for name, d in decoders.items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
