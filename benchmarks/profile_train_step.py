#!/usr/bin/env python
"""Where a training step of the DAT-LM goes, module by module, against the Transformer-LM; prints markdown tables.

The models are the benchmark's (``bench_relational_attention.build_lm``: d_model 256, 4 layers, 4 SA + 4 RA heads,
symbolic attention, RoPE, against a TransformerLM with 8 heads). One training step (forward, loss, backward) of each
runs under :mod:`torch.profiler`; every module of interest is wrapped in a ``record_function`` range, and each
operator is charged to the innermost range around it. Backward operators are charged to the module whose forward
created their autograd node (matched by the node's sequence number), so "forward" and "backward" of a row are the
same module's two passes. RA's tiled kernel (the ``_TiledAttention`` autograd function) and the relation readout are
rows of their own. "copies" is the time of ``aten::copy_`` inside a row (layout changes: ``contiguous``,
``reshape`` of transposed views, dtype casts, slice assignments).

The profiler adds a few microseconds to every operator, more to the model that runs more operators (DAT), so the
profiled totals are above the plain times; the ratio printed under each table is measured without the profiler
(wall clock, the two models alternating, median of ``--repeats``).

Example::

    python benchmarks/profile_train_step.py --sizes 1024,4096 --threads 2
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

import torch
from bench_relational_attention import VOCAB, build_lm  # same directory
from torch.autograd.profiler import record_function

import dual_attention.relational_functional as rf

PREFIX = "mod::"
KERNEL_EVENT = "_TiledAttention"
#: (pattern on the module's qualified name, row); the first match wins, unmatched modules are not wrapped
RULES = [
    (r"symbol_retrievers\.\d+$", "symbolic attention (symbol retrieval)"),
    (r"relational_attention\.w[qk]_attn$", "RA attention q/k projections"),
    (r"relational_attention\.w[qk]_rel$", "RA relation q/k projections"),
    (r"relational_attention\.wv$", "RA symbol values W_s"),
    (r"relational_attention\.wo$", "RA output projection"),
    (r"relational_attention$", "RA rest (RoPE, reshapes, mask)"),
    (r"(self_attention|self_attn)\.w[qkvo]$", "SA projections q/k/v/o"),
    (r"(self_attention|self_attn)$", "SA core (RoPE, SDPA, reshapes)"),
    (r"ff_block$", "feed-forward"),
    (r"norm\d?$", "norms"),
    (r"token_embedder$", "embedding"),
    (r"final_out$", "logits projection (tied)"),
    (r"blocks\.\d+$", "block rest (residuals, concat, dropout)"),
]
KERNEL_ROW, READOUT_ROW, REST_ROW = "RA kernel (tiled, fwd + bwd)", "RA relation readout", "loss and the rest"
ROW_ORDER = [label for _, label in RULES[:6]] + [KERNEL_ROW, READOUT_ROW] + [label for _, label in RULES[6:]] \
    + [REST_ROW]


def _wrap(module: torch.nn.Module, label: str) -> None:
    forward = module.forward

    def labelled(*args, **kwargs):
        with record_function(PREFIX + label):
            return forward(*args, **kwargs)

    module.forward = labelled  # instance attribute: nn.Module.__call__ finds it first


def label_modules(model: torch.nn.Module) -> None:
    for name, module in model.named_modules():
        label = next((row for pattern, row in RULES if re.search(pattern, name)), None)
        if label is not None:
            _wrap(module, label)


@contextmanager
def labelled_readout():
    """``relation_readout`` (a function, not a module) in a range of its own while profiling."""
    original = rf.relation_readout

    def readout(*args, **kwargs):
        with record_function(PREFIX + READOUT_ROW):
            return original(*args, **kwargs)

    rf.relation_readout = readout
    try:
        yield
    finally:
        rf.relation_readout = original


def _forward_label(event) -> str:
    while event is not None:
        if event.name.startswith(PREFIX):
            return event.name[len(PREFIX):]
        if event.name == KERNEL_EVENT:
            return KERNEL_ROW
        event = event.cpu_parent
    return REST_ROW


def _backward_node(event):
    while event is not None:
        if event.name.startswith("autograd::engine::evaluate_function:"):
            return event
        event = event.cpu_parent
    return None


def breakdown(events) -> dict[str, dict[str, float]]:
    """``{row: {'fwd': ms, 'bwd': ms, 'copies': ms}}`` from the profiler's events (self times)."""
    seq_label: dict[int, str] = {}
    for e in events:  # the forward op that created autograd node `seq` (the kernel's own event takes precedence)
        if e.sequence_nr >= 0 and _backward_node(e) is None:
            if e.name == KERNEL_EVENT or e.sequence_nr not in seq_label:
                seq_label[e.sequence_nr] = _forward_label(e)
    rows: dict[str, dict[str, float]] = defaultdict(lambda: {"fwd": 0.0, "bwd": 0.0, "copies": 0.0})
    for e in events:
        node = _backward_node(e)
        if node is None:
            label, phase = _forward_label(e), "fwd"
        else:
            label, phase = seq_label.get(node.sequence_nr, REST_ROW), "bwd"
        rows[label][phase] += e.self_cpu_time_total / 1e3
        if e.name == "aten::copy_":
            rows[label]["copies"] += e.self_cpu_time_total / 1e3
    return rows


def make_step(model, n: int, batch: int):
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, VOCAB, (batch, n), generator=g) for _ in range(2))

    def step():
        model.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()

    return step


def profile_step(step) -> dict[str, dict[str, float]]:
    step()  # warm-up
    with labelled_readout(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return breakdown(prof.events())


def wall_ratio(steps: dict, repeats: int) -> dict[str, float]:
    """Median wall-clock seconds of each step, the steps alternating (after the warm-up done by profiling)."""
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def print_table(n: int, batch: int, profiles: dict, wall: dict) -> None:
    dat, tr = profiles["dat"], profiles["transformer"]
    print(f"\n#### n = {n}, batch {batch}: one training step, profiled (ms, self time, profiler overhead included)")
    print("\n| module | DAT fwd | DAT bwd | DAT total | of which copies | Transformer total | DAT − Transformer |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    totals = {"dat": 0.0, "tr": 0.0, "copies": 0.0}
    for row in ROW_ORDER:
        d, t = dat.get(row), tr.get(row)
        if d is None and t is None:
            continue
        d_total = 0.0 if d is None else d["fwd"] + d["bwd"]
        t_total = 0.0 if t is None else t["fwd"] + t["bwd"]
        copies = 0.0 if d is None else d["copies"]
        totals["dat"] += d_total
        totals["tr"] += t_total
        totals["copies"] += copies
        fwd, bwd = ("–", "–") if d is None else (f"{d['fwd']:.0f}", f"{d['bwd']:.0f}")
        print(f"| {row} | {fwd} | {bwd} | {d_total:.0f} | {copies:.0f} | {t_total:.0f} | {d_total - t_total:+.0f} |")
    print(f"| **total** | | | **{totals['dat']:.0f}** | {totals['copies']:.0f} | **{totals['tr']:.0f}** | "
          f"{totals['dat'] - totals['tr']:+.0f} |")
    print(f"\nprofiled ratio {totals['dat'] / totals['tr']:.2f}; without the profiler (wall clock, median, "
          f"alternating): DAT-LM {wall['dat']:.3f} s, Transformer-LM {wall['transformer']:.3f} s, "
          f"ratio **{wall['dat'] / wall['transformer']:.2f}**", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1024,4096", help="sequence lengths (default 1024,4096)")
    p.add_argument("--batch", type=int, default=None, help="batch (default 4 at n <= 1024, 1 above)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5, help="unprofiled timed steps per model (default 5)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for n in (int(s) for s in args.sizes.split(",")):
        batch = args.batch or (4 if n <= 1024 else 1)
        models = {name: build_lm(name, argparse.Namespace(device="cpu"), n) for name in ("dat", "transformer")}
        for model in models.values():
            label_modules(model)
        steps = {name: make_step(model, n, batch) for name, model in models.items()}
        profiles = {name: profile_step(step) for name, step in steps.items()}
        print_table(n, batch, profiles, wall_ratio(steps, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
