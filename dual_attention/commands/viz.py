"""``dat viz CHECKPOINT --text TEXT --out DIR``: heat-map PNGs of attention, relations and symbols per layer."""

from __future__ import annotations

import argparse

HELP = "write heat maps (PNG) of each layer's attention, relations and retrieved symbols for a text or image"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "viz", help=HELP,
        description=HELP + ". One PNG per layer and view: layer{L}_sa.png (self-attention), layer{L}_ra.png "
        "(relational attention), layer{L}_relations.png (relations, entry [i, j] = r(x_i, x_j)), layer{L}_symbols.png "
        "(symbol retrieval); seq2seq files start with encoder_/decoder_ and decoders add _cross.png. Rows are "
        "receivers (queries), columns senders (keys); in causal layers the unused future (j > i) is grey.",
    )
    p.add_argument("checkpoint", help="run dir, checkpoint dir or Hugging Face Hub id (owner/name)")
    p.add_argument("--text", help="input text (language model) or source sequence (seq2seq)")
    p.add_argument("--target", help="seq2seq: target sequence (default: the model's greedy decoding)")
    p.add_argument("--image", help="vision models: image as .pt/.pth tensor (C,H,W), .npy array or .png/.jpg")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--layers", help="layers to draw, e.g. 0,2 or 0-3 (default all)")
    p.add_argument("--heads", help="attention heads to draw, e.g. 0,1 (default all)")
    p.add_argument("--relations", help="relations to draw, e.g. 0-3 (default all)")
    p.add_argument("--views", help="comma-separated subset of sa,ra,relations,symbols,cross (default all)")
    p.add_argument("--postprocess", default="None",
                   choices=("None", "Clip", "Sign", "Sigmoid-Normalize", "Softmax-Normalize"),
                   help="relation post-processor, applied after --scale (default None)")
    p.add_argument("--scale", type=float, default=1.0, help="relation scale factor (default 1)")
    p.add_argument("--dpi", type=int, default=110, help="PNG resolution (default 110)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (default cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dual_attention.errors import CLIError

    if not 0 < args.scale < float("inf"):  # NaN too
        raise CLIError(f"--scale must be > 0, got {args.scale}")
    if args.dpi < 10:
        raise CLIError(f"--dpi must be >= 10, got {args.dpi}")
    if args.text is None and args.image is None:
        raise CLIError("give --text (language and seq2seq models) or --image (vision models)")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError("dat viz needs matplotlib: pip install 'dual_attention[plot]'") from None
    from dual_attention.model_analysis.viz import parse_indices, run_viz
    from dual_attention.training.cli_support import user_errors
    from dual_attention.training.distributed import resolve_device

    with user_errors():
        device = str(resolve_device(args.device, "--device"))

    views = None
    if args.views:
        views = [v.strip() for v in args.views.split(",") if v.strip()]
        bad = [v for v in views if v not in ("sa", "ra", "relations", "symbols", "cross")]
        if bad or not views:
            raise CLIError(f"--views {args.views!r} is not valid; use a comma-separated subset of "
                           "sa,ra,relations,symbols,cross")

    try:
        result = run_viz(args.checkpoint, args.out, text=args.text, image=args.image, target=args.target,
                         layers=parse_indices(args.layers, "--layers"), heads=parse_indices(args.heads, "--heads"),
                         relations=parse_indices(args.relations, "--relations"), postprocess=args.postprocess,
                         scale=args.scale, device=device, dpi=args.dpi, views=views)
    except ValueError as e:  # CheckpointError, DataError, VizInputError, model input errors
        raise CLIError(str(e)) from None
    except OSError as e:
        raise CLIError(f"{e.strerror or e} {e.filename or ''}".strip()) from None
    labels = next(iter(result.labels.values()))
    print(f"{result.model_name}: {len(result.analysis.layers)} layers, {len(labels)} tokens; wrote "
          f"{len(result.files)} PNG files:")
    for path in result.files:
        print(path)
    return 0
