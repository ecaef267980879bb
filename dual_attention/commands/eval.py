"""``dat eval CHECKPOINT --data PATH``: loss, perplexity and accuracy of a trained model on a data file;
``dat eval CHECKPOINT --tasks hellaswag,arc_easy``: lm-evaluation-harness tasks (extra ``eval``)."""

from __future__ import annotations

import argparse

HELP = "evaluate a checkpoint (run dir, checkpoint dir or Hub id) on a data file"


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help=HELP, description=HELP + ": prints loss, perplexity and accuracy.")
    p.add_argument("checkpoint", help="run dir, checkpoint dir (config.json + model.safetensors) or Hub id")
    p.add_argument("--data",
                   help="LM: .txt/.bin; seq2seq: .tsv or src,tgt; vision: .pt or image folder; or 'synthetic'")
    p.add_argument("--batch-size", type=int, default=32, help="evaluation batch size (default 32)")
    p.add_argument("--max-batches", type=int, default=50, help="LM: number of random-window batches (default 50)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--seed", type=int, default=0, help="seed of the LM window sampling (default 0)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    g = p.add_argument_group("lm-evaluation-harness (instead of --data; pip install 'dual_attention[eval]')")
    g.add_argument("--tasks", help="comma-separated lm-eval task names, e.g. hellaswag,arc_easy (LM checkpoints)")
    g.add_argument("--limit", type=float, help="examples per task (a fraction if < 1)")
    g.add_argument("--include-path", help="folder of extra task YAMLs (e.g. local datasets)")
    g.add_argument("--num-fewshot", type=int, help="few-shot examples per prompt (default: the task's)")
    g.add_argument("--output", default="lm_eval_results.json",
                   help="where lm-eval's results JSON goes (default lm_eval_results.json)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from dual_attention.errors import CLIError
    from dual_attention.training.cli_support import user_errors
    from dual_attention.training.distributed import resolve_device
    from dual_attention.training.inference import evaluate_checkpoint

    if args.tasks is not None:
        return run_tasks(args)
    if args.data is None:
        raise CLIError("one of --data (a data file) or --tasks (lm-eval tasks) is required")
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


def run_tasks(args: argparse.Namespace) -> int:
    """``--tasks``: lm-eval's table on stdout, its results JSON in ``--output``."""
    import json
    import os

    from dual_attention.errors import CLIError
    from dual_attention.integrations.lm_eval_backend import evaluate_tasks  # MissingExtraError without the extra
    from dual_attention.training.cli_support import user_errors

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise CLIError("--tasks needs at least one task name")
    if args.batch_size < 1 or (args.limit is not None and args.limit <= 0):
        raise CLIError(f"--batch-size must be >= 1 and --limit > 0, got {args.batch_size}, {args.limit}")
    if args.include_path is not None and not os.path.isdir(args.include_path):
        raise CLIError(f"--include-path {args.include_path!r} is not a directory (of task YAML files)")
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    from lm_eval.utils import handle_non_serializable, make_table

    with user_errors():
        results = evaluate_tasks(args.checkpoint, tasks, limit=limit, include_path=args.include_path,
                                 batch_size=args.batch_size, device=args.device, num_fewshot=args.num_fewshot,
                                 seed=args.seed)
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2, default=handle_non_serializable)
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    print(f"results: {args.output}")
    return 0
