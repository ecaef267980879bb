"""``dat info CONFIG|PRESET|CHECKPOINT``: the model's layers and parameter counts as a table."""

from __future__ import annotations

import argparse

HELP = "show a model's layers and parameter counts (from a config, a preset or a checkpoint)"


def register(subparsers) -> None:
    from dual_attention.training.cli_support import use_override_parser

    p = subparsers.add_parser("info", help=HELP, description=HELP + ". Configs are built on the meta device "
                              "(no memory is allocated), so the paper-size presets are instant.")
    use_override_parser(p)
    p.add_argument("source", help="a YAML config, a preset name, a run/checkpoint dir or a Hub id")
    p.add_argument("--depth", type=int, default=2, help="module depth of the table (default 2)")
    p.add_argument("--kwargs", action="store_true", help="also print the constructor keyword arguments")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from dual_attention.errors import CLIError
    from dual_attention.training.cli_support import user_errors
    from dual_attention.training.config import load_config
    from dual_attention.training.inference import load_trained
    from dual_attention.training.models import build_model, model_class_name, model_kwargs
    from dual_attention.training.presets import PRESETS
    from dual_attention.training.summary import model_summary

    if args.depth < 1:
        raise CLIError(f"--depth must be >= 1, got {args.depth}")
    src = args.source
    p = Path(src)
    is_config = src in PRESETS or p.suffix.lower() in (".yaml", ".yml")
    with user_errors():
        if is_config:
            cfg = load_config(src, args.overrides)
            _fill_sizes(cfg)
            kwargs = model_kwargs(cfg.model)
            with torch.device("meta"):
                model = build_model(cfg.model)
            title = f"{model_class_name(cfg.model).removesuffix('_HFHub')} ({cfg.name})"
        else:
            if args.overrides:
                raise CLIError("config overrides apply to a config or preset, not to a checkpoint")
            loaded = load_trained(src)
            model = loaded.model
            kwargs = loaded.model_config or {}
            title = f"{type(model).__name__.removesuffix('_HFHub')} ({loaded.source})"
    print(model_summary(model, depth=args.depth, title=title))
    if args.kwargs:
        print(json.dumps(kwargs, indent=1, sort_keys=True))
    return 0


def _fill_sizes(cfg) -> None:
    """Fill data-derived model sizes without reading big data: LM vocabulary from the tokenizer name;
    seq2seq/vision sizes from the (synthetic or given) data."""
    m = cfg.model
    if m.family == "lm" and m.vocab_size is None:
        m.vocab_size = 256 if cfg.data.tokenizer == "byte" else 50257
    elif (m.family == "seq2seq" and (m.vocab_size is None or not m.in_block_size or not m.out_block_size)) or (
        m.family == "vision" and (m.image_shape is None or m.num_classes is None)
    ):
        if not cfg.data.train:
            return  # model_kwargs names the missing sizes
        import torch

        from dual_attention.training.data_spec import derive_model_config
        from dual_attention.training.tasks import make_task

        cfg.model = derive_model_config(cfg.model, make_task(cfg, torch.device("cpu")).spec)
