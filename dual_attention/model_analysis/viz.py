"""What ``dat viz`` does: load a checkpoint, run :func:`analyze` on a text or an image, write heat-map PNGs.

* Language models: ``text`` is tokenised with the checkpoint's tokenizer; labels are the tokens.
* Seq2seq models: ``text`` is the source; ``target`` the teacher-forced target (default: the model's greedy
  decoding of the source); encoder maps are labelled with source tokens, decoder maps with target tokens.
* Vision models: ``image`` is a ``.pt``/``.pth`` tensor ``(C, H, W)`` or ``(1, C, H, W)``, a ``.npy`` array
  (``(C, H, W)`` or ``(H, W, C)``; uint8 is divided by 255) or a ``.png``/``.jpg`` (RGB or grey as the model
  needs, resized to the model's size, values in [0, 1]); labels are ``cls`` and the patches' (row, column).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dual_attention.errors import VizInputError
from dual_attention.model_analysis.analysis import ForwardAnalysis, analyze_lm, analyze_seq2seq, analyze_vision
from dual_attention.model_analysis.text import load_for_analysis, token_labels

__all__ = ["VizInputError", "VizResult", "load_image", "parse_indices", "run_viz"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass
class VizResult:
    analysis: ForwardAnalysis
    labels: dict[str, list[str]]
    files: list[Path]
    model_name: str


def parse_indices(text: str | None, name: str) -> list[int] | None:
    """``"0,2,5-7"`` → ``[0, 2, 5, 6, 7]``; None or ``"all"`` → None (all)."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise VizInputError(f"{name}={text!r} is not valid; use indices like 0,2 or ranges like 0-3, or 'all'") \
            from None
    if any(v < 0 for v in out):
        raise VizInputError(f"{name}={text!r} is not valid; indices start at 0")
    return sorted(set(out))


def load_image(path: str | Path, image_shape: Sequence[int]) -> Tensor:
    """Read an image file as a float tensor ``(1, C, H, W)`` for a model with ``image_shape = (C, W, H)``."""
    p = Path(path)
    if not p.is_file():
        raise VizInputError(f"image file {str(p)!r} does not exist")
    c, w, h = (int(v) for v in image_shape)
    suffix = p.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        from PIL import Image

        try:
            with Image.open(p) as im:
                im = im.convert("L" if c == 1 else "RGB").resize((w, h))
                arr = np.asarray(im, dtype=np.float32) / 255.0  # (H, W) or (H, W, 3)
        except OSError as e:
            raise VizInputError(f"cannot read image {str(p)!r}: {e}") from None
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
        if arr.shape[0] != c:
            raise VizInputError(f"the model needs {c} channels; {str(p)!r} has {arr.shape[0]}")
        return torch.from_numpy(np.ascontiguousarray(arr))[None]
    if suffix in (".pt", ".pth"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # corrupted file, pickled objects
            raise VizInputError(f"cannot read tensor file {str(p)!r}: {e}") from None
        if not isinstance(obj, Tensor):
            raise VizInputError(f"{str(p)!r} must hold a tensor (C, H, W) or (1, C, H, W), got {type(obj).__name__}")
        t = obj.float()
    elif suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise VizInputError(f"cannot read array file {str(p)!r}: {e}") from None
        scale = 255.0 if arr.dtype == np.uint8 else 1.0
        arr = arr.astype(np.float32) / scale
        if arr.ndim == 3 and arr.shape[-1] == c and arr.shape[0] != c:
            arr = arr.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    else:
        raise VizInputError(f"image {str(p)!r} has an unknown suffix; allowed: .pt, .pth, .npy, "
                            + ", ".join(IMAGE_SUFFIXES))
    if t.dim() == 3:
        t = t[None]
    if t.dim() != 4 or t.shape[0] != 1 or tuple(t.shape[1:]) != (c, h, w):
        raise VizInputError(f"image {str(p)!r} has shape {tuple(t.shape)}; the model needs (C, H, W) = "
                            f"({c}, {h}, {w}) or (1, {c}, {h}, {w})")
    return t


def _encode(tok, text: str, what: str, limit: int, vocab: int | None) -> list[int]:
    ids = tok.encode(text)
    if not ids:
        raise VizInputError(f"{what} is empty")
    if len(ids) > limit:
        raise VizInputError(f"{what} has {len(ids)} tokens; the model's context is {limit} tokens: shorten it")
    if vocab is not None and max(ids) >= vocab:
        raise VizInputError(f"{what} has token ids >= the model's vocabulary ({vocab}): wrong tokenizer?")
    return ids


def run_viz(
    source: str,
    out_dir: str | Path,
    *,
    text: str | None = None,
    image: str | None = None,
    target: str | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    relations: Sequence[int] | None = None,
    postprocess: str = "None",
    scale: float = 1.0,
    device: str = "cpu",
    dpi: int = 110,
    views: Sequence[str] | None = None,
) -> VizResult:
    """Load ``source``, analyse ``text`` (LM, seq2seq) or ``image`` (vision), write the PNGs into ``out_dir``."""
    from dual_attention.model_analysis.plotting import write_viz_pngs

    loaded = load_for_analysis(source, device=device)
    name = type(loaded.model).__name__.removesuffix("_HFHub")
    if loaded.family == "vision":
        if image is None:
            raise VizInputError(f"{source!r} is a vision model ({name}): give --image FILE")
        analysis, labels = _analyse_image(loaded.model, image, device)
    else:
        if text is None:
            raise VizInputError(f"{source!r} is a {'language' if loaded.family == 'lm' else 'seq2seq'} model "
                                f"({name}): give --text")
        if image is not None:
            raise VizInputError(f"--image is for vision models; {source!r} is a {loaded.family} model ({name})")
        if loaded.tokenizer is None:
            raise VizInputError(f"{source!r} has no tokenizer.json and its vocabulary does not identify a tokenizer")
        analyse = _analyse_text if loaded.family == "lm" else _analyse_pair
        analysis, labels = analyse(loaded.model, loaded.tokenizer, text, target, device)
    _check_layers(analysis, layers)
    _check_heads(analysis, heads, relations)
    files = write_viz_pngs(analysis, labels, out_dir, layers=layers, heads=heads, relations=relations,
                           postprocess=postprocess, scale=scale, dpi=dpi, model_name=name, views=views)
    return VizResult(analysis, labels, files, name)


def _analyse_image(model, image: str, device: str) -> tuple[ForwardAnalysis, dict[str, list[str]]]:
    """A vision model on the image file; the maps are labelled ``cls`` and the patches' (row, column)."""
    from dual_attention.model_analysis.plotting import patch_labels

    img = load_image(image, model.image_shape).to(device)
    c, w, h = model.image_shape
    pw, ph = model.patch_size
    return analyze_vision(model, img), {"blocks": patch_labels(h // ph, w // pw)}


def _analyse_text(model, tok, text: str, target, device: str) -> tuple[ForwardAnalysis, dict[str, list[str]]]:
    """A language model on ``text``, labelled with its tokens."""
    ids = _encode(tok, text, "--text", int(model.block_size), int(model.vocab_size))
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    return analyze_lm(model, idx), {"blocks": token_labels(tok, ids)}


def _analyse_pair(model, tok, text: str, target: str | None, device: str) -> tuple[ForwardAnalysis, dict]:
    """A seq2seq model on the source ``text`` and ``target`` (default: its greedy decoding of the source)."""
    src_ids = _encode(tok, text, "--text (the source)", int(model.in_block_size), None)
    src = torch.tensor([src_ids], dtype=torch.long, device=device)
    bos = int(getattr(tok, "bos_token_id", 1))
    if target is None:
        tgt = model.generate(src, max_new_tokens=int(model.out_block_size) - 1, bos_token_id=bos,
                             eos_token_id=getattr(tok, "eos_token_id", None))
    else:
        tgt_ids = [bos] + _encode(tok, target, "--target", int(model.out_block_size) - 1, None)
        tgt = torch.tensor([tgt_ids], dtype=torch.long, device=device)
    labels = {"encoder": token_labels(tok, src_ids), "decoder": token_labels(tok, tgt[0].tolist())}
    return analyze_seq2seq(model, src, tgt), labels


def _check_layers(analysis: ForwardAnalysis, layers) -> None:
    n_layers = max(sum(1 for layer in analysis.layers if layer.stack == s) for s in
                   {layer.stack for layer in analysis.layers})
    if layers is not None and max(layers) >= n_layers:
        raise VizInputError(f"--layers {max(layers)} is out of range: the model has {n_layers} layers "
                            f"(0-{n_layers - 1})")


def _check_heads(analysis: ForwardAnalysis, heads, relations) -> None:
    counts = {"heads": 0, "relations": 0}
    for layer in analysis.layers:
        for t in (layer.sa_attn, layer.ra_attn, layer.cross_attn):
            if t is not None:
                counts["heads"] = max(counts["heads"], t.shape[1])
        if layer.relations is not None:
            counts["relations"] = max(counts["relations"], layer.relations.shape[-1])
    for what, chosen in (("heads", heads), ("relations", relations)):
        if chosen is not None and max(chosen) >= counts[what]:
            raise VizInputError(f"--{what} {max(chosen)} is out of range: the model's layers have at most "
                                f"{counts[what]} {what}")
