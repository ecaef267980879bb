"""Tokenizers for training and generation, saved as ``tokenizer.json`` beside a checkpoint.

* :class:`ByteTokenizer` (the default for language models): token = UTF-8 byte, vocabulary 256; needs
  no files, so it always works offline.
* :class:`TiktokenTokenizer` (``gpt2``): the GPT-2 BPE of ``tiktoken`` (vocabulary 50257). tiktoken
  downloads its files on first use; offline this fails, and :func:`get_tokenizer` says so in one line.
* :class:`CharTokenizer` (seq2seq): one token per character seen in the training data, after the
  specials ``<pad>=0, <bos>=1, <eos>=2, <unk>=3``.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
from pathlib import Path

from dual_attention.errors import DataError

__all__ = [
    "DataError",
    "ByteTokenizer",
    "TiktokenTokenizer",
    "CharTokenizer",
    "get_tokenizer",
    "tokenizer_from_dict",
    "save_tokenizer",
    "load_tokenizer",
    "StreamDecoder",
    "TOKENIZER_FILE",
]

TOKENIZER_FILE = "tokenizer.json"


class ByteTokenizer:
    """UTF-8 bytes as tokens: ``encode(s) = list(s.encode('utf-8'))``, vocabulary 256."""

    name = "byte"
    vocab_size = 256
    eos_token_id: int | None = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return self.token_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, ids: Iterable[int]) -> bytes:
        return bytes(int(i) & 0xFF for i in ids)

    def to_dict(self) -> dict:
        return {"type": "byte"}


class TiktokenTokenizer:
    """A ``tiktoken`` encoding (``gpt2``: vocabulary 50257, end-of-text 50256)."""

    def __init__(self, name: str = "gpt2"):
        try:
            import tiktoken
        except ImportError:
            raise DataError(
                f"tokenizer {name!r} needs tiktoken (pip install 'dual_attention[lm]'); "
                "or use data.tokenizer=byte"
            ) from None
        try:
            self._enc = tiktoken.get_encoding(name)
        except Exception as e:  # network errors, missing cache files
            raise DataError(
                f"tiktoken could not load the {name!r} files ({type(e).__name__}); they are downloaded on "
                "first use, which fails offline: copy them into the folder named by TIKTOKEN_CACHE_DIR, "
                "or use data.tokenizer=byte"
            ) from None
        self.name = name
        self.vocab_size = self._enc.n_vocab
        self.eos_token_id: int | None = self._enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.token_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self._enc.decode_single_token_bytes(int(i)) for i in ids)

    def to_dict(self) -> dict:
        return {"type": "tiktoken", "name": self.name}


class CharTokenizer:
    """Character vocabulary with specials ``<pad>=0, <bos>=1, <eos>=2, <unk>=3``."""

    name = "char"
    pad_token_id = 0
    bos_token_id = 1
    eos_token_id = 2
    unk_token_id = 3
    n_special = 4

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        self._index = {c: i + self.n_special for i, c in enumerate(self.chars)}
        self.vocab_size = self.n_special + len(self.chars)

    @classmethod
    def build(cls, texts: Iterable[str]) -> CharTokenizer:
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        return cls(chars)

    def encode(self, text: str) -> list[int]:
        return [self._index.get(c, self.unk_token_id) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_token_id:
                break
            if i >= self.n_special:
                out.append(self.chars[i - self.n_special])
        return "".join(out)

    def token_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def to_dict(self) -> dict:
        return {"type": "char", "chars": "".join(self.chars)}


Tokenizer = ByteTokenizer | TiktokenTokenizer | CharTokenizer


def get_tokenizer(name: str) -> ByteTokenizer | TiktokenTokenizer:
    """The LM tokenizer called ``name`` (``byte`` or ``gpt2``); DataError if unknown or unavailable."""
    if name == "byte":
        return ByteTokenizer()
    if name == "gpt2":
        return TiktokenTokenizer("gpt2")
    raise DataError(f"unknown tokenizer {name!r}; allowed: byte, gpt2")


def tokenizer_from_dict(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from its ``to_dict()`` form."""
    kind = d.get("type")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "tiktoken":
        return TiktokenTokenizer(d.get("name", "gpt2"))
    if kind == "char":
        return CharTokenizer(d.get("chars", ""))
    raise DataError(f"unknown tokenizer type {kind!r} in {TOKENIZER_FILE}; allowed: byte, tiktoken, char")


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> None:
    """Write ``tokenizer.json`` into ``directory``."""
    (Path(directory) / TOKENIZER_FILE).write_text(json.dumps(tok.to_dict(), ensure_ascii=False))


def load_tokenizer(directory: str | Path) -> Tokenizer | None:
    """Read ``tokenizer.json`` from ``directory``; None when absent."""
    p = Path(directory) / TOKENIZER_FILE
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {p}: {e}") from None
    return tokenizer_from_dict(d)


class StreamDecoder:
    """Turns a stream of token ids into text pieces, holding back incomplete UTF-8 sequences."""

    def __init__(self, tok: Tokenizer):
        self.tok = tok
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._dec.decode(self.tok.token_bytes([token_id]))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)
