"""``dat export hf CHECKPOINT OUT``: a language-model checkpoint as a ``transformers`` model directory."""

from __future__ import annotations

import argparse

HELP = "export a language-model checkpoint to another format (hf: a transformers model directory)"


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help=HELP, description=HELP + ".")
    sub = p.add_subparsers(dest="format", metavar="FORMAT", required=True)
    hf = sub.add_parser(
        "hf", help="transformers directory (AutoModelForCausalLM, generate, pipeline, lm-eval's hf backend)",
        description="Write OUT with model.safetensors, config.json, the custom-code files (load with "
                    "AutoModelForCausalLM.from_pretrained(OUT, trust_remote_code=True)) and the tokenizer where "
                    "one is available. Needs the transformers extra: pip install 'dual_attention[transformers]'.")
    hf.add_argument("checkpoint", help="run dir, checkpoint dir (config.json + model.safetensors) or Hub id")
    hf.add_argument("out", help="output directory")
    hf.add_argument("--overwrite", action="store_true", help="write into OUT even if it is not empty")
    hf.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dual_attention.integrations.hf_transformers.export import export_hf  # MissingExtraError without the extra
    from dual_attention.training.cli_support import user_errors

    with user_errors():
        out, note = export_hf(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"wrote {out} ({note}); load it with "
          f"AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0
