"""``dat export hf``: a dual_attention LM checkpoint as a ``transformers`` model directory.

The directory holds ``model.safetensors`` and ``config.json`` (written by ``save_pretrained``), the custom-code files
``configuration_dat.py`` / ``modeling_dat.py`` (named by ``auto_map``, for ``trust_remote_code=True``) and, where
one is available, the tokenizer (``tokenizer.json``: the byte tokenizer, or GPT-2's converted from tiktoken).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dual_attention.integrations import BYTE_EOS_ID
from dual_attention.integrations.checkpoints import load_lm
from dual_attention.training.checkpoint import CheckpointError

from . import DualAttentionForCausalLM, byte_tokenizer, to_transformers

__all__ = ["export_hf", "CODE_FILES"]

CODE_FILES = ("configuration_dat.py", "modeling_dat.py")
_AUTO_MAP = {"AutoConfig": "configuration_dat.DualAttentionLMConfig",
             "AutoModelForCausalLM": "modeling_dat.DualAttentionForCausalLM"}


def _save_tokenizer(tokenizer, out: Path, block_size: int) -> tuple[str, int | None]:
    """Write the tokenizer files; (what was written, its end-of-text id)."""
    kind = tokenizer.to_dict().get("type") if tokenizer is not None else None
    if kind == "byte":
        byte_tokenizer(model_max_length=block_size).save_pretrained(str(out))
        return "byte tokenizer", BYTE_EOS_ID
    if kind == "tiktoken":
        from transformers.integrations.tiktoken import convert_tiktoken_to_fast

        convert_tiktoken_to_fast(tokenizer._enc, str(out))
        return f"tiktoken {tokenizer.name} tokenizer", tokenizer.eos_token_id
    return "", None


def export_hf(checkpoint: str, out_dir: str | Path, overwrite: bool = False) -> tuple[Path, str]:
    """Export ``checkpoint`` (run dir, checkpoint dir or Hub id) to ``out_dir``; (the directory, a note on the
    tokenizer)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CheckpointError(f"{str(out)!r} exists and is not empty (pass --overwrite to replace its files)")
    ck = load_lm(checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    written, eos = _save_tokenizer(ck.tokenizer, out, int(ck.model.block_size))
    model = to_transformers(ck.model, ck.lm_kwargs, auto_map=dict(_AUTO_MAP),
                            architectures=[DualAttentionForCausalLM.__name__],
                            eos_token_id=eos, pad_token_id=eos, bos_token_id=eos)
    model.save_pretrained(str(out))
    here = Path(__file__).parent
    for name in CODE_FILES:
        shutil.copyfile(here / name, out / name)
    note = f"tokenizer: {written}" if written else (
        f"no tokenizer written ({ck.tokenizer_note or 'none known for this checkpoint'}); "
        "pass one to lm-eval / transformers yourself (e.g. tokenizer=gpt2)")
    return out, note
