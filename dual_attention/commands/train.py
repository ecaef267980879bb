"""``dat train CONFIG.yaml|PRESET [--section.key=value ...] [--out RUN_DIR] [--resume] [--overwrite]``."""

from __future__ import annotations

import argparse
import sys

HELP = "train a model from a YAML config or a preset (dotted overrides: --train.max_iters=100)"


def register(subparsers) -> None:
    from dual_attention.training.cli_support import use_override_parser

    p = subparsers.add_parser(
        "train",
        help=HELP,
        description=HELP + ". Presets: see `dat train --list-presets`. Ctrl-C saves a checkpoint; "
        "`--resume` continues the run to the same result as an uninterrupted one. Under torchrun it "
        "trains with DistributedDataParallel (or FSDP with --train.fsdp=true).",
    )
    use_override_parser(p)
    p.add_argument("config", nargs="?", help="a YAML config file or a preset name (optional with --resume)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: train.out_dir or runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    import yaml

    from dual_attention.errors import CLIError
    from dual_attention.training.cli_support import user_errors
    from dual_attention.training.config import config_to_dict, load_config
    from dual_attention.training.presets import PRESETS
    from dual_attention.training.trainer import CONFIG_FILE, train

    if args.list_presets:
        for name, p in PRESETS.items():
            m = p["model"]
            print(f"{name:<26} {m['family']:<8} {m['arch']:<12} d_model={m['d_model']} n_layers={m['n_layers']}")
        return 0
    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite exclude each other")
    with user_errors():
        source = args.config
        if source is None:
            if not (args.resume and args.out):
                raise CLIError("give a CONFIG (YAML file or preset), or --resume --out RUN_DIR")
            saved = Path(args.out) / CONFIG_FILE
            if not saved.is_file():
                raise CLIError(f"{saved} does not exist: is {args.out!r} a run directory?")
            source = str(saved)
        cfg = load_config(source, args.overrides)
        if args.out:
            cfg.train.out_dir = args.out
        elif cfg.train.out_dir is None:
            cfg.train.out_dir = str(Path("runs") / cfg.name)
        if args.no_progress:
            cfg.train.progress = False
        if args.print_config:
            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
            return 0
        result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        parts = [f"{result.iters} iters", f"{result.elapsed_s:.1f}s"]
        if result.train_loss is not None:
            parts.append(f"train loss {result.train_loss:.4f}")
        parts += [f"{k} {v:.4f}" for k, v in result.metrics.items()]
        print(("interrupted: " if result.interrupted else "done: ") + ", ".join(parts))
        if result.run_dir is not None:
            print(f"run dir: {result.run_dir} (checkpoint: {result.run_dir / 'checkpoint'})")
    sys.stdout.flush()
    return 130 if result.interrupted else 0
