#!/usr/bin/env python
"""Benchmark relational attention and the DAT language model; print markdown tables.

Sections, every ratio measured in the same run (the cases of one row alternate, so a slow spell of the machine
hits both):

* ``summary`` (the default): issue 12's table, ``| measure | published 0.0.7 | now | goal |``, with 2 threads and
  wall-clock time, medians of ``--summary-repeats`` alternating rounds; about 10 minutes on 2 CPU cores. Rows: one
  RA layer at n = 4096 (batch 1) against its plain path (time / memory); DAT-LM / Transformer-LM training step at
  n = 1024 (batch 4; also the DAT-LM with every RA layer on its plain path, the published computation) and n = 4096
  (batch 1; time and peak memory); the seed README's vision model (224 px, batch 8, train mode) against a ViT of
  the same width, depth and 8 heads; cached decoding time per token at batch 1 and 4 (eager, compiled); generating
  ``--new-tokens`` after ``--prompt`` at batch 1 against the published-style ``generate`` (the whole model re-run
  for every token; ``benchmarks/bench_decoding.py``). Figures this benchmark cannot measure (the published
  package itself) are quoted from issue 12 and marked so.
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

    python benchmarks/bench_relational_attention.py                  # the summary table (2 threads, wall clock)
    python benchmarks/bench_relational_attention.py --sections layer,lm,generate --quick
    python benchmarks/bench_relational_attention.py --sizes 256,512,1024,2048,4096 --threads 2
    python benchmarks/bench_relational_attention.py --device cuda --dtype bfloat16 --sections layer,lm
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

VOCAB = 1024
D_MODEL, N_LAYERS, HEADS_SA, HEADS_RA = 256, 4, 4, 4
SECTIONS = ("summary", "layer", "lm", "generate")


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
    """``name`` in dat, transformer, dat-published: one training step (forward, loss, backward) on ``(batch, n)``
    tokens. ``dat-published`` is the DAT-LM computed the published way: every RA layer on its plain path (α and
    the relations materialised), the rest as ``dat``."""
    from dual_attention.relational_attention import RelationalAttention

    model = build_lm(name.removesuffix("-published"), args, n)
    if name == "dat-published":
        for module in model.modules():
            if isinstance(module, RelationalAttention):
                module.implementation = "plain"
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, VOCAB, (args.batch, n), generator=g).to(args.device)
    y = torch.randint(0, VOCAB, (args.batch, n), generator=g).to(args.device)

    def step():
        model.zero_grad(set_to_none=True)
        with _autocast(args):
            _, loss = model(x, y)
        loss.backward()

    return Case(step)


def build_vision_case(name: str, n: int, args) -> Case:
    """``name`` in vidat, vit: one training step of the seed README's vision model (224 px, 16 px patches, d 512,
    6 layers, 4 SA + 4 RA heads, SwiGLU, dropout 0.1, position-relative symbols, cls pooling) or the ViT of the same
    width, depth, 8 heads; ``args.batch`` images (``n`` is unused: 197 tokens)."""
    from dual_attention.vision_models import VisionDualAttnTransformer, VisionTransformer

    torch.manual_seed(0)
    common = dict(image_shape=(3, 224, 224), patch_size=(16, 16), num_classes=1000, d_model=512, n_layers=6,
                  dff=2048, dropout_rate=0.1, activation="swiglu", norm_first=True, pool="cls")
    if name == "vidat":
        model = VisionDualAttnTransformer(
            **common, n_heads_sa=4, n_heads_ra=4, symbol_retrieval="position_relative",
            symbol_retrieval_kwargs=dict(symbol_dim=512, max_rel_pos=197),
            ra_kwargs=dict(symmetric_rels=True, use_relative_positional_symbols=True))
    else:
        model = VisionTransformer(**common, n_heads=8)
    model = model.to(args.device).train()
    g = torch.Generator().manual_seed(1)
    img = torch.randn(args.batch, 3, 224, 224, generator=g).to(args.device)
    labels = torch.randint(0, 1000, (args.batch,), generator=g).to(args.device)

    def step():
        model.zero_grad(set_to_none=True)
        with _autocast(args):
            loss = torch.nn.functional.cross_entropy(model(img), labels)
        loss.backward()

    return Case(step)


BUILDERS = {"layer": build_layer_case, "lm": build_lm_case, "vision": build_vision_case}


# ---------------------------------------------------------------------------------------------------- timing
def _sync(args) -> None:
    if args.device == "cuda":
        torch.cuda.synchronize()


def _clock(args):
    return time.process_time if args.timer == "cpu" else time.perf_counter


def time_interleaved(cases: dict[str, Case], args, repeats: int | None = None, statistic=min) -> dict[str, float]:
    """Seconds per step of each case: one warm-up, then ``repeats`` (default ``args.repeats``) rounds, cases
    alternating; the ``statistic`` (default the minimum) of each case's rounds."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    clock = _clock(args)
    for case in cases.values():
        case.step()
    for _ in range(repeats or args.repeats):
        for name, case in cases.items():
            _sync(args)
            start = clock()
            case.step()
            _sync(args)
            times[name].append(clock() - start)
    return {name: statistic(ts) for name, ts in times.items()}


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


# --------------------------------------------------------------------------------------------------- summary
def _with(args, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def _median_pair(section: str, names: tuple[str, ...], n: int, args, batch: int) -> dict[str, float]:
    """Median seconds per step of each case (built at ``batch``), the cases alternating."""
    cases = {name: BUILDERS[section](name, n, _with(args, batch=batch)) for name in names}
    times = time_interleaved(cases, args, repeats=args.summary_repeats, statistic=statistics.median)
    del cases
    gc.collect()
    return times


def summary_training_rows(args) -> list[tuple[str, str, str, str]]:
    """The training rows of issue 12's table: ``(measure, published 0.0.7, now, goal)``."""
    rows = []
    t = _median_pair("layer", ("plain", "fast"), 4096, args, batch=1)
    mem = {name: measure_memory("layer", name, 4096, _with(args, batch=1)) for name in ("plain", "fast")}
    rows.append(("RA layer fwd+bwd, n = 4096 (batch 1): time / memory vs the published computation",
                 "1 / 1 (measured: the plain path)", f"{_ratio(t['fast'], t['plain'])} / "
                 f"{_ratio(mem['fast'], mem['plain'])}", "keep"))
    t = _median_pair("lm", ("dat-published", "dat", "transformer"), 1024, args, batch=4)
    rows.append(("DAT-LM / Transformer-LM fwd+bwd time, n = 1024 (batch 4)",
                 f"{_ratio(t['dat-published'], t['transformer'])} (measured: RA on its plain path)",
                 f"{_ratio(t['dat'], t['transformer'])} ({t['dat']:.2f} / {t['transformer']:.2f} s)", "≤ 1.3"))
    t = _median_pair("lm", ("dat", "transformer"), 4096, args, batch=1)
    rows.append(("DAT-LM / Transformer-LM fwd+bwd time, n = 4096 (batch 1)", "–",
                 f"{_ratio(t['dat'], t['transformer'])} ({t['dat']:.2f} / {t['transformer']:.2f} s)", "≤ 1.4"))
    mem = {name: measure_memory("lm", name, 4096, _with(args, batch=1)) for name in ("dat", "transformer")}
    rows.append(("DAT-LM / Transformer-LM peak memory, n = 4096 (batch 1)", "≈ 12 (quoted)",
                 f"{_ratio(mem['dat'], mem['transformer'])} ({_mib(mem['dat'])} / {_mib(mem['transformer'])} MiB)",
                 "≤ 1.2"))
    t = _median_pair("vision", ("vidat", "vit"), 197, args, batch=8)
    rows.append(("seed README vision model (224 px, batch 8, train mode), ViDAT / ViT fwd+bwd time",
                 "2.39 (quoted)", f"{_ratio(t['vidat'], t['vit'])} ({t['vidat']:.2f} / {t['vit']:.2f} s)", "≤ 1.2"))
    return rows


def _time_generate(model, prompt, args, compile: bool) -> tuple[float, torch.Tensor]:
    from dual_attention.generation import generate

    start = time.perf_counter()
    out = generate(model, prompt, args.new_tokens, temperature=0.0, compile=compile)
    return time.perf_counter() - start, out


def summary_decoding_rows(args) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """The decoding rows (time per token, batch 1 / 4, eager and compiled; the generation speed-up at batch 1)
    and notes on the compile time."""
    models = {name: build_lm(name, args, args.prompt + args.new_tokens).eval() for name in ("dat", "transformer")}
    ratio, compile_s, notes = {}, {}, []
    for compile in (False, True):
        for batch in (1, 4):
            prompt = torch.randint(0, VOCAB, (batch, args.prompt), generator=torch.Generator().manual_seed(2))
            for name, model in models.items():  # warm-up; the compiled step is compiled here, once per shape
                compile_s[(name, batch, compile)] = _time_generate(model, prompt, args, compile)[0]
            times = {name: [] for name in models}
            for _ in range(args.summary_repeats):
                for name, model in models.items():
                    times[name].append(_time_generate(model, prompt, args, compile)[0])
            ms = {name: statistics.median(ts) / args.new_tokens * 1e3 for name, ts in times.items()}
            ratio[(batch, compile)] = f"{ms['dat'] / ms['transformer']:.2f} ({ms['dat']:.2f} / " \
                                      f"{ms['transformer']:.2f} ms)"
    rows = [(f"cached decoding, DAT-LM / Transformer-LM time per token, batch 1 / 4, {mode}", "–",
             f"{ratio[(1, compile)]} / {ratio[(4, compile)]}", "≤ 1.3")
            for compile, mode in ((False, "eager"), (True, "compiled (`generate(compile=True)`)"))]
    for (name, batch, compile), seconds in compile_s.items():
        if compile:
            notes.append(f"first compiled generate ({name}, batch {batch}), compiling included: {seconds:.1f} s")
    rows += summary_generate_rows(models["dat"], args, compile_s[("dat", 1, True)], notes)
    return rows, notes


def summary_generate_rows(model, args, first_compiled_call: float, notes: list[str]) -> list[tuple[str, ...]]:
    """``generate`` (eager, compiled) against the published-style ``generate`` (the full model re-run for every
    token), batch 1, the three alternating; the compiled step was compiled before (its cost is in ``notes``)."""
    from bench_decoding import published_generate  # same directory

    prompt = torch.randint(0, VOCAB, (1, args.prompt), generator=torch.Generator().manual_seed(2))
    times, outs = {"published": [], "eager": [], "compiled": []}, {}
    for _ in range(max(1, args.summary_repeats - 2)):
        start = time.perf_counter()
        outs["published"] = published_generate(model, prompt, args.new_tokens, top_k=1)
        times["published"].append(time.perf_counter() - start)
        for mode in ("eager", "compiled"):
            seconds, outs[mode] = _time_generate(model, prompt, args, compile=mode == "compiled")
            times[mode].append(seconds)
    t = {mode: statistics.median(ts) for mode, ts in times.items()}
    same = all(torch.equal(outs[m], outs["published"]) for m in ("eager", "compiled"))
    compile_once = first_compiled_call - t["compiled"]  # compiling the batch-1 step, once
    calls = compile_once / max(t["eager"] - t["compiled"], 1e-9)
    amortised = t["published"] / (t["compiled"] + compile_once)
    notes.append(f"generate, batch 1: published-style {t['published']:.2f} s, eager {t['eager']:.2f} s, compiled "
                 f"{t['compiled']:.2f} s + {compile_once:.1f} s compiling once (reused by later calls of the same "
                 f"shapes): {amortised:.1f}× on a single call counting the compilation; compiling pays for itself "
                 f"against eager after {calls:.0f} calls; same tokens as the published-style generate: "
                 f"{'yes' if same else 'NO'}")
    label = f"generate {args.new_tokens} tokens after {args.prompt}, batch 1, vs the published `generate`"
    return [(f"{label}, eager", "1 (measured: re-implemented, full forward per token)",
             f"{t['published'] / t['eager']:.1f}×", "≥ 20×"),
            (f"{label}, compiled (compile time excluded, see below)", "1",
             f"{t['published'] / t['compiled']:.1f}×", "≥ 20×")]


def run_summary(args) -> list[dict]:
    """Issue 12's table, every ratio measured in this run; returns its rows."""
    rows = summary_training_rows(args)
    decoding, notes = summary_decoding_rows(args)
    rows += decoding
    print("\n| measure | published 0.0.7 | now | goal |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for note in notes:
        print(f"* {note}")
    return [dict(zip(("measure", "published", "now", "goal"), row)) for row in rows]


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
    p.add_argument("--sections", default="summary",
                   help=f"comma-separated subset of {SECTIONS} (default: summary)")
    p.add_argument("--batch", type=int, default=4, help="batch of the layer and LM sections (default 4)")
    p.add_argument("--gen-batches", default="1,4", help="batch sizes of the generation section (default 1,4)")
    p.add_argument("--prompt", type=int, default=64, help="prompt tokens of the generation section (default 64)")
    p.add_argument("--new-tokens", type=int, default=256, help="generated tokens (default 256)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per case, after one warm-up (default 3)")
    p.add_argument("--gen-repeats", type=int, default=1, help="timed generations per case (default 1)")
    p.add_argument("--summary-repeats", type=int, default=5,
                   help="timed rounds per case of the summary, median taken (default 5)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
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
    print(f"torch {torch.__version__}, device {args.device}, dtype {args.dtype}, threads {torch.get_num_threads()}; "
          "peak memory is the extra memory of one step"
          + ("" if args.device == "cuda" else " (resident set, fresh subprocess per case)"))
    if set(args.sections) - {"summary"}:
        print(f"sections {', '.join(s for s in args.sections if s != 'summary')}: batch {args.batch}, times "
              f"({args.timer}) are the fastest of {args.repeats} steps after a warm-up, measured alternately")
    results: dict[str, list] = {}
    if "summary" in args.sections:
        print("\n### Issue 12: DAT at the cost of a Transformer (ratios measured in this run, medians of "
              f"{args.summary_repeats} alternating rounds, wall clock)")
        results["summary"] = run_summary(args)
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
