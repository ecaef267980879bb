"""Datasets and batch sampling for the three model families.

Sampling is *stateless*: the global batch of optimizer step ``t`` is a pure function of
``(seed, t)``, so a resumed run sees exactly the batches an uninterrupted run would, and every
process of a distributed run can cut its own slice out of the same global batch:

* language models: ``B`` random windows; their start offsets are drawn from a generator seeded
  with ``(seed, t)``;
* seq2seq and vision: epochs over the training set, each epoch ``e`` a permutation seeded with
  ``(seed, e)``; step ``t`` takes positions ``[tB, (t+1)B)`` of the concatenated epochs.

The global batch of ``B`` rows is split into ``A = grad_accum_steps`` micro-batches, each split over the
``W`` processes: process ``r`` at micro-step ``m`` takes rows ``[m B/A + r b, m B/A + (r+1) b)`` with
``b = B/(A W)``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dual_attention.training.tokenizers import ByteTokenizer, CharTokenizer, DataError, TiktokenTokenizer

__all__ = [
    "DataError",
    "TokenStream",
    "PairData",
    "ImageData",
    "LMData",
    "detect_format",
    "load_lm_data",
    "load_seq2seq_data",
    "load_vision_data",
    "load_dataset",
    "synthetic_lm_text",
    "synthetic_pairs",
    "synthetic_images",
    "step_generator",
    "epoch_indices",
    "micro_slice",
    "write_token_bin",
]

_SEED_MIX = 1_000_003


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded by ``(seed, step, stream)``: the same on every process and on resume."""
    g = torch.Generator()
    g.manual_seed((seed * _SEED_MIX + step) * 7919 + stream)
    return g


def epoch_indices(seed: int, step: int, batch_size: int, n: int) -> torch.Tensor:
    """Global sample indices of step ``step``: positions ``[step*B, (step+1)*B)`` of seeded epoch permutations."""
    if n <= 0:
        raise DataError("the training set is empty")
    start = step * batch_size
    out = []
    pos = start
    end = start + batch_size
    while pos < end:
        epoch, off = divmod(pos, n)
        perm = torch.randperm(n, generator=step_generator(seed, epoch, stream=1))
        take = min(n - off, end - pos)
        out.append(perm[off : off + take])
        pos += take
    return torch.cat(out)


def micro_slice(batch_size: int, accum: int, world: int, micro: int, rank: int) -> slice:
    """Rows of the global batch that process ``rank`` uses at micro-step ``micro``."""
    per_micro = batch_size // accum
    b = per_micro // world
    start = micro * per_micro + rank * b
    return slice(start, start + b)


# --------------------------------------------------------------------------------------------------------------
# format detection and file helpers


def detect_format(path: str, family: str) -> str:
    """The data format of ``path`` for ``family`` from its suffix (``auto`` resolution)."""
    if path in ("synthetic",):
        return "synthetic"
    if path == "hf":
        return "hf"
    if family == "seq2seq" and "," in path:
        return "tsv"
    p = Path(path)
    suffix = p.suffix.lower()
    if family == "lm":
        return "bin" if suffix == ".bin" else "text"
    if family == "seq2seq":
        return "tsv"
    if suffix in (".pt", ".pth"):
        return "pt"
    if p.is_dir():
        return "image_folder"
    return "pt"


def _check_file(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} file {str(p)!r} does not exist")
    if p.is_dir():
        raise DataError(f"{what} path {str(p)!r} is a directory, expected a file")
    try:
        with open(p, "rb") as f:
            f.read(1)
    except OSError as e:
        raise DataError(f"cannot read {what} file {str(p)!r}: {e.strerror or e}") from None
    return p


# --------------------------------------------------------------------------------------------------------------
# language modelling


class TokenStream:
    """A 1-D token sequence (tensor or ``np.memmap``) from which random windows are cut."""

    def __init__(self, tokens: np.ndarray | torch.Tensor, name: str = "tokens"):
        self.tokens = tokens
        self.name = name

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def windows(self, starts: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs ``x[i] = tokens[s_i : s_i+T]`` and targets ``y[i] = tokens[s_i+1 : s_i+T+1]``, each ``[B, T]``."""
        rows = []
        for s in starts.tolist():
            chunk = self.tokens[s : s + length + 1]
            rows.append(torch.as_tensor(np.asarray(chunk, dtype=np.int64)))
        block = torch.stack(rows)  # (B, T+1)
        return block[:, :-1].contiguous(), block[:, 1:].contiguous()

    def check_windows(self, length: int) -> None:
        """DataError unless windows of ``length + 1`` tokens can start at two or more offsets."""
        if len(self) < length + 2:
            raise DataError(
                f"{self.name} has {len(self)} tokens, too few for windows of {length + 1} tokens; "
                "give more data or a smaller data.block_size"
            )

    def random_starts(self, gen: torch.Generator, batch: int, length: int) -> torch.Tensor:
        self.check_windows(length)
        return torch.randint(0, len(self) - length, (batch,), generator=gen)


@dataclass
class LMData:
    """Train/val/test token streams and the tokenizer that made them."""

    train: TokenStream | None  # None: streamed (data_hf)
    val: TokenStream | None
    test: TokenStream | None
    tokenizer: ByteTokenizer | TiktokenTokenizer


def synthetic_lm_text(n_lines: int, seed: int = 0) -> str:
    """Arithmetic lines ``'a+b=c'`` and ``'a-b=c'`` with 0 <= a, b < 100 (a learnable toy corpus)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        a, b = rng.randrange(100), rng.randrange(100)
        if rng.random() < 0.5:
            lines.append(f"{a}+{b}={a + b}")
        else:
            lines.append(f"{a}-{b}={a - b}")
    return "\n".join(lines) + "\n"


def _encode_text(text: str, tok: ByteTokenizer | TiktokenTokenizer) -> np.ndarray:
    if isinstance(tok, ByteTokenizer):
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
    ids = tok.encode(text)
    return np.asarray(ids, dtype=np.uint32 if tok.vocab_size > 65535 else np.uint16)


def _load_lm_file(path: str, fmt: str, tok: ByteTokenizer | TiktokenTokenizer, what: str) -> np.ndarray:
    p = _check_file(path, what)
    if fmt == "bin":
        if p.stat().st_size % 2:
            raise DataError(f"{what} file {str(p)!r} is not a uint16 token file (odd size {p.stat().st_size})")
        arr = np.memmap(p, dtype=np.uint16, mode="r")
        probe = np.asarray(arr[: min(len(arr), 1 << 20)])
        if probe.size and int(probe.max()) >= tok.vocab_size:
            raise DataError(
                f"{what} file {str(p)!r} holds token id {int(probe.max())} >= vocabulary {tok.vocab_size} "
                f"of tokenizer {tok.name!r}; set data.tokenizer"
            )
        return arr
    if fmt != "text":
        raise DataError(f"data.format={fmt!r} is not a language-model format; allowed: text, bin, synthetic, hf")
    raw = p.read_bytes()
    if not raw:
        raise DataError(f"{what} file {str(p)!r} is empty")
    if isinstance(tok, ByteTokenizer):
        return np.frombuffer(raw, dtype=np.uint8).copy()
    return _encode_text(raw.decode("utf-8", errors="replace"), tok)


def load_lm_data(data_cfg, tokenizer: ByteTokenizer | TiktokenTokenizer, seed: int = 0) -> LMData:
    """Load the LM splits described by ``data_cfg`` (a DataConfig), tokenized with ``tokenizer``."""
    if not data_cfg.train:
        raise DataError("no training data: set data.train to a .txt/.bin file, 'synthetic' or 'hf'")
    fmt = data_cfg.format if data_cfg.format != "auto" else detect_format(data_cfg.train, "lm")
    if fmt == "hf":
        raise DataError("data.format=hf is streamed: use dual_attention.training.data_hf (handled by the trainer)")
    if fmt == "synthetic":
        text = synthetic_lm_text(data_cfg.synthetic_size, seed=seed)
        train = _encode_text(text, tokenizer)
    else:
        train = _load_lm_file(data_cfg.train, fmt, tokenizer, "data.train")

    def load_split(path: str | None, what: str) -> np.ndarray | None:
        if not path:
            return None
        f = data_cfg.format if data_cfg.format not in ("auto", "synthetic") else detect_format(path, "lm")
        if f == "synthetic":
            return _encode_text(synthetic_lm_text(max(data_cfg.synthetic_size // 10, 200), seed=seed + 1), tokenizer)
        return _load_lm_file(path, f, tokenizer, what)

    val = load_split(data_cfg.val, "data.val")
    test = load_split(data_cfg.test, "data.test")
    if val is None and data_cfg.val_fraction > 0:
        n = len(train)
        cut = int(n * (1 - data_cfg.val_fraction))
        train, val = train[:cut], train[cut:]
    return LMData(
        train=TokenStream(train, "data.train"),
        val=TokenStream(val, "data.val") if val is not None and len(val) else None,
        test=TokenStream(test, "data.test") if test is not None else None,
        tokenizer=tokenizer,
    )


def write_token_bin(text_path: str | Path, out_path: str | Path, tokenizer: str = "gpt2") -> int:
    """Tokenize a text file into a nanoGPT-style ``uint16`` ``.bin`` file; returns the token count."""
    from dual_attention.training.tokenizers import get_tokenizer

    tok = get_tokenizer(tokenizer)
    if tok.vocab_size > 65536:
        raise DataError(f"tokenizer {tokenizer!r} has {tok.vocab_size} tokens, too many for uint16")
    text = _check_file(text_path, "text").read_text(encoding="utf-8", errors="replace")
    ids = np.asarray(tok.encode(text), dtype=np.uint16)
    ids.tofile(out_path)
    return int(ids.size)


# --------------------------------------------------------------------------------------------------------------
# seq2seq


class PairData:
    """Source/target token sequences of a seq2seq split (char tokens, no specials inside).

    ``collate`` pads to the longest sequence in the batch and returns ``x [B, Ls]`` (source),
    ``y [B, Lt+1]`` (``<bos>`` + target), ``targets [B, Lt+1]`` (target + ``<eos>``, padding -1), and the
    padding masks ``src_mask``/``tgt_mask`` (bool, True = real token).
    """

    def __init__(self, src: list[list[int]], tgt: list[list[int]], tok: CharTokenizer, name: str = "pairs"):
        self.src = [torch.tensor(s, dtype=torch.long) for s in src]
        self.tgt = [torch.tensor(t, dtype=torch.long) for t in tgt]
        self.tok = tok
        self.name = name
        self.target_counts = torch.tensor([len(t) + 1 for t in tgt], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.src)

    @property
    def max_src_len(self) -> int:
        return max((len(s) for s in self.src), default=0)

    @property
    def max_tgt_len(self) -> int:
        return max((len(t) for t in self.tgt), default=0) + 1

    def collate(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        ids = idx.tolist()
        ls = max(len(self.src[i]) for i in ids)
        lt = max(len(self.tgt[i]) for i in ids) + 1
        b = len(ids)
        pad = self.tok.pad_token_id
        x = torch.full((b, ls), pad, dtype=torch.long)
        y = torch.full((b, lt), pad, dtype=torch.long)
        targets = torch.full((b, lt), -1, dtype=torch.long)
        src_mask = torch.zeros((b, ls), dtype=torch.bool)
        tgt_mask = torch.zeros((b, lt), dtype=torch.bool)
        for row, i in enumerate(ids):
            s, t = self.src[i], self.tgt[i]
            x[row, : len(s)] = s
            src_mask[row, : len(s)] = True
            y[row, 0] = self.tok.bos_token_id
            y[row, 1 : len(t) + 1] = t
            targets[row, : len(t)] = t
            targets[row, len(t)] = self.tok.eos_token_id
            tgt_mask[row, : len(t) + 1] = True
        return {"x": x, "y": y, "targets": targets, "src_mask": src_mask, "tgt_mask": tgt_mask}


def synthetic_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Sorting task: a random string over ``a..j`` (length 3-10) -> its characters sorted."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        s = "".join(rng.choice("abcdefghij") for _ in range(rng.randint(3, 10)))
        pairs.append((s, "".join(sorted(s))))
    return pairs


def _read_pairs(path: str, what: str) -> list[tuple[str, str]]:
    if "," in path and not Path(path).exists():
        src_path, tgt_path = (s.strip() for s in path.split(",", 1))
        src = _check_file(src_path, what).read_text(encoding="utf-8", errors="replace").splitlines()
        tgt = _check_file(tgt_path, what).read_text(encoding="utf-8", errors="replace").splitlines()
        if len(src) != len(tgt):
            raise DataError(f"{what}: {src_path!r} has {len(src)} lines but {tgt_path!r} has {len(tgt)}")
        pairs = list(zip(src, tgt))
    else:
        lines = _check_file(path, what).read_text(encoding="utf-8", errors="replace").splitlines()
        pairs = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise DataError(f"{what} file {path!r} line {n} has no TAB between source and target")
            s, t = line.split("\t", 1)
            pairs.append((s, t))
    if not pairs:
        raise DataError(f"{what} {path!r} holds no source/target pairs")
    return pairs


@dataclass
class Seq2SeqData:
    train: PairData
    val: PairData | None
    test: PairData | None
    tokenizer: CharTokenizer


def load_seq2seq_data(data_cfg, tokenizer: CharTokenizer | None = None, seed: int = 0) -> Seq2SeqData:
    """Load seq2seq pairs (TSV, two files ``src,tgt`` or ``synthetic``); builds the char vocabulary if needed."""
    if not data_cfg.train:
        raise DataError("no training data: set data.train to a .tsv file, 'src.txt,tgt.txt' or 'synthetic'")
    fmt = data_cfg.format if data_cfg.format != "auto" else detect_format(data_cfg.train, "seq2seq")
    if fmt not in ("tsv", "synthetic"):
        raise DataError(f"data.format={fmt!r} is not a seq2seq format; allowed: tsv, synthetic")

    def read(path: str | None, what: str, n: int, s: int) -> list[tuple[str, str]] | None:
        if not path:
            return None
        if path == "synthetic" or (fmt == "synthetic" and what == "data.train"):
            return synthetic_pairs(n, seed=s)
        return _read_pairs(path, what)

    train, val, test = _read_splits(data_cfg, read, max(data_cfg.synthetic_size // 10, 100), seed,
                                    lambda pairs, cut: (pairs[:cut], pairs[cut:]))
    tok = tokenizer or CharTokenizer.build(s + t for s, t in train)

    def make(pairs, name):
        if pairs is None or not pairs:
            return None
        return PairData([tok.encode(s) for s, _ in pairs], [tok.encode(t) for _, t in pairs], tok, name)

    return Seq2SeqData(make(train, "data.train"), make(val, "data.val"), make(test, "data.test"), tok)


# --------------------------------------------------------------------------------------------------------------
# vision


class ImageData:
    """Images ``[N, C, H, W]`` (float) and integer labels ``[N]``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, name: str = "images"):
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise DataError(f"{name}: images must be a tensor [N, C, H, W], got {_describe(images)}")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{name}: labels must be a tensor [N] with N={images.shape[0]}, got {_describe(labels)}"
            )
        if labels.is_floating_point():
            raise DataError(f"{name}: labels must be integers, got dtype {labels.dtype}")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        self.images = images.float()
        self.labels = labels.long()
        self.name = name

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def collate(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"images": self.images[idx], "labels": self.labels[idx]}


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {list(x.shape)}"
    return type(x).__name__


def synthetic_images(n: int, seed: int = 0, size: int = 16, cell: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Same/different task: two coloured ``cell x cell`` squares on a grid; label 1 iff same colour.

    Returns images ``[n, 3, size, size]`` in [0, 1] and labels ``[n]`` (balanced).
    """
    g = torch.Generator().manual_seed(seed)
    palette = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=torch.float32
    )
    cells = (size // cell) ** 2
    images = torch.zeros(n, 3, size, size)
    labels = torch.zeros(n, dtype=torch.long)
    per_row = size // cell
    for i in range(n):
        same = i % 2 == 0
        c1 = int(torch.randint(len(palette), (1,), generator=g))
        c2 = c1 if same else (c1 + 1 + int(torch.randint(len(palette) - 1, (1,), generator=g))) % len(palette)
        pos = torch.randperm(cells, generator=g)[:2].tolist()
        for p, c in zip(pos, (c1, c2)):
            r, col = divmod(p, per_row)
            images[i, :, r * cell : (r + 1) * cell, col * cell : (col + 1) * cell] = palette[c].view(3, 1, 1)
        labels[i] = int(same)
    perm = torch.randperm(n, generator=g)
    return images[perm], labels[perm]


def _load_pt(path: str, what: str) -> ImageData:
    p = _check_file(path, what)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"{what} file {path!r} is not a readable torch file ({type(e).__name__})") from None
    if isinstance(obj, dict) and "images" in obj and "labels" in obj:
        return ImageData(obj["images"], obj["labels"], what)
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return ImageData(obj[0], obj[1], what)
    raise DataError(f"{what} file {path!r} must hold {{'images': [N,C,H,W], 'labels': [N]}}")


def _load_image_folder(path: str, what: str, classes: list[str] | None) -> tuple[ImageData, list[str]]:
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{what} folder {path!r} does not exist")
    try:
        from PIL import Image
    except ImportError:
        raise DataError(
            f"{what}: reading image folders needs Pillow (pip install pillow); or give a .pt file "
            "with {'images': [N,C,H,W], 'labels': [N]}"
        ) from None
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    classes = classes or found
    if not classes:
        raise DataError(f"{what} folder {path!r} has no class sub-folders (expected root/<class>/<image>)")
    images, labels = [], []
    for ci, cname in enumerate(classes):
        for f in sorted((root / cname).glob("*")) if (root / cname).is_dir() else []:
            if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"):
                continue
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except OSError as e:
                raise DataError(f"{what}: cannot read image {str(f)!r}: {e}") from None
            images.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
            labels.append(ci)
    if not images:
        raise DataError(f"{what} folder {path!r} holds no images")
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise DataError(f"{what}: images in {path!r} have different sizes {sorted(shapes)[:3]}; resize them first")
    return ImageData(torch.stack(images), torch.tensor(labels), what), classes


@dataclass
class VisionData:
    train: ImageData
    val: ImageData | None
    test: ImageData | None


def _as_image_data(obj, name: str) -> ImageData | None:
    if obj is None:
        return None
    if isinstance(obj, ImageData):
        return obj
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return ImageData(obj[0], obj[1], name)
    if isinstance(obj, dict) and "images" in obj:
        return ImageData(obj["images"], obj["labels"], name)
    raise DataError(f"{name}: expected (images, labels) tensors, got {type(obj).__name__}")


def load_vision_data(data_cfg, seed: int = 0, train=None, val=None, test=None) -> VisionData:
    """Load vision splits (``.pt`` tensor files, image folders, ``synthetic``) or wrap in-memory tensors."""
    if train is not None:
        tr = _as_image_data(train, "train_data")
        va = _as_image_data(val, "val_data")
        te = _as_image_data(test, "test_data")
        return VisionData(tr, va, te)
    if not data_cfg.train:
        raise DataError("no training data: set data.train to a .pt file, an image folder or 'synthetic'")
    fmt = data_cfg.format if data_cfg.format != "auto" else detect_format(data_cfg.train, "vision")
    if fmt not in ("pt", "image_folder", "synthetic"):
        raise DataError(f"data.format={fmt!r} is not a vision format; allowed: pt, image_folder, synthetic")
    classes = None

    def read(path: str | None, what: str, n: int, s: int) -> ImageData | None:
        nonlocal classes
        if not path:
            return None
        if path == "synthetic":
            return ImageData(*synthetic_images(n, seed=s), name=what)
        f = fmt if fmt != "synthetic" else detect_format(path, "vision")
        if f == "image_folder" or (f == "auto" and Path(path).is_dir()):
            data, classes = _load_image_folder(path, what, classes)
            return data
        return _load_pt(path, what)

    def hold_out(tr: ImageData, cut: int) -> tuple[ImageData, ImageData]:
        return (ImageData(tr.images[:cut], tr.labels[:cut], "data.train"),
                ImageData(tr.images[cut:], tr.labels[cut:], "data.val"))

    return VisionData(*_read_splits(data_cfg, read, max(data_cfg.synthetic_size // 4, 200), seed, hold_out))


def _read_splits(data_cfg, read, eval_size: int, seed: int, hold_out) -> tuple:
    """``read(path, what, n_synthetic, seed)`` of the train, val and test paths of ``data_cfg``; without a val path,
    ``hold_out(train, cut)`` splits the last ``val_fraction`` of train off as val."""
    train = read(data_cfg.train, "data.train", data_cfg.synthetic_size, seed)
    val = read(data_cfg.val, "data.val", eval_size, seed + 1)
    test = read(data_cfg.test, "data.test", eval_size, seed + 2)
    if val is None and data_cfg.val_fraction > 0:
        train, val = hold_out(train, int(len(train) * (1 - data_cfg.val_fraction)))
    return train, val, test


# --------------------------------------------------------------------------------------------------------------
# one split of any family


def load_dataset(path: str, family: str, tokenizer=None, *, seed: int = 0, synthetic_size: int = 4000,
                 name: str = "data") -> TokenStream | PairData | ImageData:
    """The whole of one data file (or ``synthetic``: ``synthetic_size`` examples of the family's toy task, drawn
    with ``seed``) for ``family``, in the format its suffix says (as ``data.format=auto``); ``name`` is how error
    messages call it. LM text is tokenized with ``tokenizer`` (default bytes); seq2seq pairs with ``tokenizer``
    (default: a character vocabulary built from the pairs)."""
    fmt = detect_format(path, family)
    if family == "lm":
        tok = tokenizer or ByteTokenizer()
        if fmt == "hf":
            raise DataError(f"{name} 'hf' is a streamed dataset; give a .txt/.bin file or 'synthetic'")
        if fmt == "synthetic":
            return TokenStream(_encode_text(synthetic_lm_text(synthetic_size, seed=seed), tok), name)
        return TokenStream(_load_lm_file(path, fmt, tok, name), name)
    if family == "seq2seq":
        pairs = synthetic_pairs(synthetic_size, seed=seed) if fmt == "synthetic" else _read_pairs(path, name)
        tok = tokenizer or CharTokenizer.build(s + t for s, t in pairs)
        return PairData([tok.encode(s) for s, _ in pairs], [tok.encode(t) for _, t in pairs], tok, name)
    if family != "vision":
        raise ValueError(f"family={family!r} is not one of: lm, seq2seq, vision")
    if fmt == "synthetic":
        return ImageData(*synthetic_images(synthetic_size, seed=seed), name=name)
    return _load_image_folder(path, name, None)[0] if fmt == "image_folder" else _load_pt(path, name)
