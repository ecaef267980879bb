"""``dat eval CHECKPOINT --data PATH``: loss, perplexity and accuracy of a trained model on a data file."""

from __future__ import annotations

import argparse

HELP = "evaluate a checkpoint (run dir, checkpoint dir or Hub id) on a data file"


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help=HELP, description=HELP + ": prints loss, perplexity and accuracy.")
    p.add_argument("checkpoint", help="run dir, checkpoint dir (config.json + model.safetensors) or Hub id")
    p.add_argument("--data", required=True,
                   help="LM: .txt/.bin; seq2seq: .tsv or src,tgt; vision: .pt or image folder; or 'synthetic'")
    p.add_argument("--batch-size", type=int, default=32, help="evaluation batch size (default 32)")
    p.add_argument("--max-batches", type=int, default=50, help="LM: number of random-window batches (default 50)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the LM window sampling (default 0)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from dual_attention.cli import CLIError
    from dual_attention.training.cli_support import user_errors
    from dual_attention.training.distributed import resolve_device
    from dual_attention.training.inference import evaluate_checkpoint

    if args.batch_size < 1 or args.max_batches < 1:
        raise CLIError(f"--batch-size and --max-batches must be >= 1, got {args.batch_size}, {args.max_batches}")
    with user_errors():
        device = str(resolve_device(args.device, "--device"))
        loaded, metrics = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size,
                                              max_batches=args.max_batches, device=device, seed=args.seed)
    if args.json:
        print(json.dumps({"checkpoint": loaded.source, "data": args.data, **metrics}))
    else:
        name = type(loaded.model).__name__.removesuffix("_HFHub")
        print(f"{name} on {args.data}: " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return 0
