#!/usr/bin/env python
"""Benchmark relational attention and the DAT language model; print markdown tables.

Three sections, every ratio measured in the same run (the cases of one row alternate, so a slow spell of the
machine hits both):

* ``layer``: one RelationalAttention layer (d_model 256, 4 RA heads of width 32 beside 4 SA heads, R = 4, causal,
  RoPE, batch 4), forward + backward, the published-style plain path (α and the relations materialised, as the
  published package always did) against the fast path ``implementation='auto'`` (one fused SDPA call). With
  ``--relative``, position-relative symbols too (the published ``[n, n, d]`` symbol tensor against the fast path).
* ``lm``: DualAttnTransformerLM (d 256, 4 layers, 4 SA + 4 RA heads, symbolic attention, RoPE) against
  TransformerLM (d 256, 4 layers, 8 heads, same dff/activation), one training step (forward + loss + backward).
* ``generate``: tokens/s of greedy generation of ``--new-tokens`` tokens after a ``--prompt``-token prompt with
  the KV cache against re-running the whole model for every token (the published ``generate``), and whether
  both give the same tokens.

Peak memory. On CUDA: ``torch.cuda.max_memory_allocated`` around one step. On the CPU there is no allocator
statistic, so each case runs once more in a fresh subprocess, which builds the model and inputs, resets the
kernel's high-water mark of its resident set (``/proc/self/clear_refs``), runs one step, and reports
``VmHWM − VmRSS`` before the step: the largest extra memory the step ever held, as the operating system saw it
(tensors, autograd's saved activations, kernel workspaces, allocator slack). glibc is told to return every
block above 64 KiB to the system (``MALLOC_MMAP_THRESHOLD_``), so that the resident set follows the live tensors
instead of keeping freed blocks. Where ``/proc/self/clear_refs`` is missing (not Linux) memory is not reported.

Examples::

    python benchmarks/bench_relational_attention.py --quick
    python benchmarks/bench_relational_attention.py --sizes 256,512,1024,2048,4096 --threads 2
    python benchmarks/bench_relational_attention.py --device cuda --dtype bfloat16 --sections layer,lm
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

VOCAB = 1024
D_MODEL, N_LAYERS, HEADS_SA, HEADS_RA = 256, 4, 4, 4
SECTIONS = ("layer", "lm", "generate")


# ------------------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    """What one measurement runs: ``step()`` does one forward + backward (or one generation)."""

    step: Callable[[], object]
    cleanup: Callable[[], None] = lambda: None


def _dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _autocast(args):
    if args.dtype == "float32":
        return torch.autocast(args.device, enabled=False)
    return torch.autocast(args.device, dtype=_dtype(args.dtype))


def build_layer_case(name: str, n: int, args) -> Case:
    """``name`` in plain, fast, blocked, rel-published, rel-plain, rel-fast: one RA layer, forward + backward.

    ``rel-published`` feeds the published ``[n, n, d]`` relative-symbol tensor (what the published retriever
    returned, projected by W_s pair by pair); the others the compact ``2M+1`` table.
    """
    from dual_attention.attention_utils import precompute_freqs_cis
    from dual_attention.relational_attention import RelationalAttention
    from dual_attention.symbol_retrieval import PositionRelativeSymbolRetriever

    torch.manual_seed(0)
    relative = name.startswith("rel-")
    layer = RelationalAttention(D_MODEL, HEADS_RA, total_n_heads=HEADS_SA + HEADS_RA,
                                use_relative_positional_symbols=relative).to(args.device)
    impl = name.removeprefix("rel-")
    need_weights = impl in ("plain", "published")
    layer.implementation = {"plain": "plain", "published": "plain", "fast": "auto", "blocked": "blocked"}[impl]
    x = torch.randn(args.batch, n, D_MODEL, device=args.device, requires_grad=True)
    if relative:
        retriever = PositionRelativeSymbolRetriever(D_MODEL, 64).to(args.device)
        symbols = None  # built in each step: [n, n, d] (published) or the compact table
        freqs = (None, None)
    else:
        symbols = torch.randn(args.batch, n, D_MODEL, device=args.device)
        cos, sin = precompute_freqs_cis(D_MODEL // (HEADS_SA + HEADS_RA), n)
        freqs = (cos.to(args.device), sin.to(args.device))

    def step():
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with _autocast(args):
            s = symbols
            if relative:
                retriever.zero_grad(set_to_none=True)
                s = retriever(x) if impl == "published" else retriever.retrieve(x)
            out, *_ = layer(x, s, *freqs, is_causal=True, need_weights=need_weights)
        out.float().square().mean().backward()

    return Case(step)


def build_lm(name: str, args, block_size: int):
    from dual_attention.language_models import DualAttnTransformerLM, TransformerLM

    torch.manual_seed(0)
    if name == "dat":
        model = DualAttnTransformerLM(
            VOCAB, D_MODEL, N_LAYERS, HEADS_SA, HEADS_RA, dict(d_model=D_MODEL, n_heads=HEADS_SA, n_symbols=256),
            dff=None, dropout_rate=0.0, activation="gelu", norm_first=True, max_block_size=block_size,
            pos_enc_type="RoPE")
    else:
        model = TransformerLM(VOCAB, D_MODEL, N_LAYERS, HEADS_SA + HEADS_RA, dff=None, dropout_rate=0.0,
                              activation="gelu", norm_first=True, max_block_size=block_size, pos_enc_type="RoPE")
    return model.to(args.device)


def build_lm_case(name: str, n: int, args) -> Case:
    """``name`` in dat, transformer: one training step (forward, loss, backward) on ``(batch, n)`` tokens."""
    model = build_lm(name, args, n)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (args.batch, n), generator=g).to(args.device)
    y = torch.randint(0, VOCAB, (args.batch, n), generator=g).to(args.device)

    def step():
        model.zero_grad(set_to_none=True)
        with _autocast(args):
            _, loss = model(x, y)
        loss.backward()

    return Case(step)


BUILDERS = {"layer": build_layer_case, "lm": build_lm_case}


# ---------------------------------------------------------------------------------------------------- timing
def _sync(args) -> None:
    if args.device == "cuda":
        torch.cuda.synchronize()


def _clock(args):
    return time.process_time if args.timer == "cpu" else time.perf_counter


def time_interleaved(cases: dict[str, Case], args) -> dict[str, float]:
    """Seconds per step of each case: one warm-up, then ``repeats`` rounds, cases alternating; the minimum."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    clock = _clock(args)
    for case in cases.values():
        case.step()
    for _ in range(args.repeats):
        for name, case in cases.items():
            _sync(args)
            start = clock()
            case.step()
            _sync(args)
            times[name].append(clock() - start)
    return {name: min(ts) for name, ts in times.items()}


# ---------------------------------------------------------------------------------------------------- memory
def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_memory_supported() -> bool:
    return os.path.exists("/proc/self/clear_refs") and os.path.exists("/proc/self/status")


def measure_memory_here(section: str, name: str, n: int, args) -> int:
    """Peak extra bytes of one step of a case built in this process (see the module docstring)."""
    case = BUILDERS[section](name, n, args)
    if args.device == "cuda":
        case.step()  # warm-up: lazy CUDA/cuBLAS workspaces are not the case's memory
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        case.step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the resident-set high-water mark (VmHWM) to the current resident set
    base = _proc_status_kib("VmRSS")
    case.step()
    return (_proc_status_kib("VmHWM") - base) * 1024


def measure_memory(section: str, name: str, n: int, args) -> int | None:
    """Peak extra bytes of one step; on the CPU in a fresh subprocess (``None`` if not measurable)."""
    if args.no_memory:
        return None
    if args.device == "cuda":
        return measure_memory_here(section, name, n, args)
    if not cpu_memory_supported():
        return None
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child", f"{section}:{name}:{n}",
           "--device", args.device, "--dtype", args.dtype, "--batch", str(args.batch)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(f"  memory of {section}:{name}:{n} failed: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return int(json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"])


# ---------------------------------------------------------------------------------------------------- tables
def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:,.0f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def run_pair_section(section: str, names: tuple[str, str], labels: tuple[str, str], args) -> list[dict]:
    """Time (interleaved) and measure memory of two cases per size; print a markdown table; return the rows."""
    a, b = names
    print(f"\n| n | {labels[0]} time (s) | {labels[1]} time (s) | time ratio | {labels[0]} peak (MiB) | "
          f"{labels[1]} peak (MiB) | memory ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for n in args.sizes:
        skip_a = section == "layer" and (a == "plain" and n > args.max_plain
                                         or a == "rel-published" and n > args.max_published)
        cases = {name: BUILDERS[section](name, n, args) for name in names if not (skip_a and name == a)}
        times = time_interleaved(cases, args)
        del cases
        gc.collect()
        mem = {name: measure_memory(section, name, n, args) for name in names if not (skip_a and name == a)}
        row = dict(n=n, time={k: times.get(k) for k in names}, peak_bytes={k: mem.get(k) for k in names})
        rows.append(row)
        ta, tb = times.get(a), times.get(b)
        print(f"| {n} | {'skipped' if ta is None else f'{ta:.3f}'} | {tb:.3f} | {_ratio(ta, tb)} | "
              f"{_mib(mem.get(a))} | {_mib(mem.get(b))} | {_ratio(mem.get(a), mem.get(b))} |", flush=True)
    return rows


def run_generation(args) -> list[dict]:
    from dual_attention.generation import generate

    model = build_lm("dat", args, args.prompt + args.new_tokens).eval()
    modes = {"cached": dict(use_cache=True)}
    if args.compile_decoding:
        modes["cached+compiled"] = dict(use_cache=True, compile=True)
    modes["uncached"] = dict(use_cache=False)
    print("\n| batch | " + " | ".join(f"{m} tokens/s" for m in modes) + " | "
          + " | ".join(f"{m} speed-up" for m in modes if m != "uncached") + " | same tokens |")
    print("|---:|" + "---:|" * (2 * len(modes) - 1) + ":---:|")
    clock = _clock(args)
    rows = []
    for batch in args.gen_batches:
        g = torch.Generator().manual_seed(2)
        prompt = torch.randint(0, VOCAB, (batch, args.prompt), generator=g).to(args.device)
        out, rates, warmup = {}, {}, {}
        for mode, kwargs in modes.items():
            if "compile" in kwargs:  # compile (and cache the compiled step) outside the timing
                start = time.perf_counter()
                with _autocast(args):
                    generate(model, prompt, args.new_tokens, temperature=0.0, **kwargs)
                warmup[mode] = time.perf_counter() - start
            best = float("inf")
            for _ in range(args.gen_repeats):
                _sync(args)
                start = clock()
                with _autocast(args):
                    out[mode] = generate(model, prompt, args.new_tokens, temperature=0.0, **kwargs)
                _sync(args)
                best = min(best, clock() - start)
            rates[mode] = batch * args.new_tokens / best
        same = all(torch.equal(o, out["uncached"]) for o in out.values())
        rows.append(dict(batch=batch, tokens_per_s=rates, same_tokens=same, compile_seconds=warmup))
        speedups = [f"{rates[m] / rates['uncached']:.1f}×" for m in modes if m != "uncached"]
        print(f"| {batch} | " + " | ".join(f"{rates[m]:,.0f}" for m in modes) + " | " + " | ".join(speedups)
              + f" | {'yes' if same else 'NO'} |", flush=True)
    for row in rows:
        for mode, seconds in row["compile_seconds"].items():
            print(f"\n(batch {row['batch']}: the first {mode} generation, which compiles, took {seconds:.0f} s)")
    return rows


# ------------------------------------------------------------------------------------------------------- main
def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--sizes must be positive integers, got {text!r}")
    return sizes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=_sizes, default=[256, 512, 1024, 2048, 4096],
                   help="sequence lengths n (default 256,512,1024,2048,4096)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="float32, or autocast to bfloat16/float16 (default float32)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: sizes 128,256, one repeat, 32 new tokens after a 16-token prompt")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--batch", type=int, default=4, help="batch of the layer and LM sections (default 4)")
    p.add_argument("--gen-batches", default="1,4", help="batch sizes of the generation section (default 1,4)")
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens of the generation section (default 64)")
    p.add_argument("--new-tokens", type=int, default=256, help="generated tokens (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per case, after one warm-up (default 3)")
    p.add_argument("--gen-repeats", type=int, default=1, help="timed generations per case (default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--timer", choices=("wall", "cpu"), default="wall",
                   help="wall clock (default) or process CPU time: robust on a shared machine with --threads 1")
    p.add_argument("--compile-decoding", action="store_true",
                   help="also time generation with the cached step compiled by torch.compile (compile excluded)")
    p.add_argument("--max-plain", type=int, default=4096, help="skip the plain RA layer above this n")
    p.add_argument("--max-published", type=int, default=1024,
                   help="skip the published-style relative layer above this n (it holds n·n·d symbols)")
    p.add_argument("--relative", action="store_true", help="also benchmark position-relative symbols")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--json", default=None, help="also write all rows to this JSON file")
    p.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats, args.prompt, args.new_tokens = [128, 256], 1, 16, 32
    args.gen_batches = [int(b) for b in str(args.gen_batches).split(",")]
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"--sections: unknown {sorted(unknown)}; allowed: {', '.join(SECTIONS)}")
    args.sections = sections
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        section, name, n = args.memory_child.split(":")
        print(json.dumps({"peak_bytes": measure_memory_here(section, name, int(n), args)}))
        return 0
    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}, "
          f"batch {args.batch}; times ({args.timer}) are the fastest of {args.repeats} steps after a warm-up, "
          "measured alternately; peak memory is the extra memory of one step"
          + ("" if args.device == "cuda" else " (resident set, fresh subprocess per case)"))
    results: dict[str, list] = {}
    if "layer" in args.sections:
        print("\n### (a) Relational attention layer, forward + backward: plain (published) vs fast")
        results["layer"] = run_pair_section("layer", ("plain", "fast"), ("plain", "fast"), args)
        if args.relative:
            print("\n#### position-relative symbols (M = 64): published [n, n, d] symbols vs the fast path")
            results["layer_relative"] = run_pair_section("layer", ("rel-published", "rel-fast"),
                                                         ("published", "fast"), args)
    if "lm" in args.sections:
        print("\n### (b) Language model training step: DAT-LM vs Transformer-LM (same width, depth, heads)")
        results["lm"] = run_pair_section("lm", ("dat", "transformer"), ("DAT-LM", "Transformer-LM"), args)
    if "generate" in args.sections:
        print(f"\n### (c) Greedy generation, DAT-LM: {args.new_tokens} tokens after {args.prompt}, "
              "KV cache vs re-running the model")
        results["generate"] = run_generation(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(torch=torch.__version__, device=args.device, dtype=args.dtype,
                           threads=torch.get_num_threads(), batch=args.batch, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
