"""``dat generate CHECKPOINT --prompt TEXT``: stream a continuation to stdout (LM) or decode a target (seq2seq)."""

from __future__ import annotations

import argparse
import math

HELP = "generate text from a trained language model (streamed) or decode with a seq2seq model"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate", help=HELP,
        description=HELP + ". The tokenizer saved with the checkpoint (tokenizer.json) is used; without one, "
        "a 256-token vocabulary means bytes and a >= 50257-token vocabulary the GPT-2 tokenizer.",
    )
    p.add_argument("checkpoint", help="run dir, checkpoint dir or Hugging Face Hub id (owner/name)")
    p.add_argument("--prompt", default="", help="prompt text (LM) or source sequence (seq2seq)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set with mass >= p")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--no-cache", action="store_true", help="do not use the KV cache")
    p.add_argument("--compile", action="store_true",
                   help="compile the cached decoding step with torch.compile (pays off on long generations; the "
                   "compile time is reported on stderr)")
    p.set_defaults(func=run)


def _check(args, CLIError) -> None:
    if args.max_new_tokens < 0:
        raise CLIError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not 0 <= args.temperature < math.inf:  # NaN too
        raise CLIError(f"--temperature must be a finite number >= 0 (0 = greedy), got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise CLIError(f"--top-k must be >= 1, got {args.top_k}")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise CLIError(f"--top-p must be in (0, 1], got {args.top_p}")


def run(args: argparse.Namespace) -> int:
    import torch

    from dual_attention.errors import CLIError
    from dual_attention.training.cli_support import user_errors
    from dual_attention.training.distributed import resolve_device
    from dual_attention.training.inference import load_trained

    _check(args, CLIError)
    with user_errors():
        device = resolve_device(args.device, "--device")
        loaded = load_trained(args.checkpoint, map_location=device)
    name = type(loaded.model).__name__.removesuffix("_HFHub")
    if loaded.family == "vision":
        raise CLIError(f"checkpoint {args.checkpoint!r} is a vision model ({name}); dat generate needs a "
                       "language model or a seq2seq model (use dat eval)")
    if loaded.tokenizer is None:
        raise CLIError(f"checkpoint {args.checkpoint!r} has no tokenizer.json and its vocabulary "
                       "does not identify a tokenizer")
    torch.manual_seed(args.seed)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    if loaded.family == "seq2seq":
        _decode_seq2seq(args, loaded.model, loaded.tokenizer, device, CLIError)
    else:
        _stream_lm(args, loaded.model, loaded.tokenizer, device, gen, CLIError)
    return 0


def _decode_seq2seq(args: argparse.Namespace, model, tok, device, CLIError) -> None:
    """Decode a target for the source ``--prompt`` and print it."""
    src = _seq2seq_source(args.prompt, tok, model, CLIError)
    src = src.to(device)
    out = model.generate(src, max_new_tokens=args.max_new_tokens, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p)
    print(tok.decode(out[0, 1:].tolist()))


def _stream_lm(args: argparse.Namespace, model, tok, device, gen, CLIError) -> None:
    """Write ``--prompt`` and its continuation to stdout as the tokens come (the compile time on stderr)."""
    import sys
    import time

    import torch

    from dual_attention.generation import stream_generate
    from dual_attention.training.tokenizers import StreamDecoder

    ids = tok.encode(args.prompt) or tok.encode("\n")
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    if int(idx.max()) >= int(model.vocab_size):
        raise CLIError(f"the prompt has token ids >= the model's vocabulary ({model.vocab_size}): wrong tokenizer?")
    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    dec = StreamDecoder(tok)
    start = None
    try:
        for i, token in enumerate(stream_generate(model, idx, args.max_new_tokens, temperature=args.temperature,
                                     top_k=args.top_k, top_p=args.top_p, eos_token_id=tok.eos_token_id,
                                     use_cache=not args.no_cache, generator=gen, compile=args.compile)):
            if args.compile and i == 0:
                start = time.perf_counter()
            elif args.compile and i == 1:  # the first decoding step compiled (or reused a compiled) step
                print(f"[decoding step compiled in {time.perf_counter() - start:.1f} s]", file=sys.stderr)
            t = int(token[0])
            if tok.eos_token_id is not None and t == tok.eos_token_id:
                break
            piece = dec.push(t)
            if piece:
                out.write(piece)
                out.flush()
    except ValueError as e:
        raise CLIError(str(e)) from None
    out.write(dec.flush() + "\n")
    out.flush()


def _seq2seq_source(prompt: str, tok, model, CLIError):
    """The source sequence as a (1, L) tensor; CLIError if empty or longer than the model's input context, a
    warning on stderr for characters outside the vocabulary (they become the unknown token)."""
    import sys

    import torch

    ids = tok.encode(prompt)
    if not ids:
        raise CLIError("--prompt (the source sequence) is empty")
    limit = getattr(model, "in_block_size", None)
    if limit is not None and len(ids) > limit:
        raise CLIError(f"--prompt is {len(ids)} tokens long but the model's source context is {limit} tokens")
    unk = getattr(tok, "unk_token_id", None)
    unknown = sorted({c for c, i in zip(prompt, ids) if i == unk}) if unk is not None else []
    if unknown and len(ids) == len(prompt):
        print(f"dat generate: warning: characters outside the model's vocabulary become <unk>: "
              f"{''.join(unknown)!r}", file=sys.stderr)
    return torch.tensor([ids], dtype=torch.long)
