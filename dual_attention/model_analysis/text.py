"""Loading models with their tokenizers for the analysis tools, and turning token ids into readable labels.

Models are loaded by :func:`dual_attention.training.inference.load_trained` (run dirs, checkpoint dirs with
``config.json`` + ``model.safetensors`` (+ ``tokenizer.json``), Hub ids), whose tokenizers come from
:mod:`dual_attention.training.tokenizers`: bytes (vocabulary 256), GPT-2 BPE via tiktoken, characters (seq2seq).

Streaming text is decoded from the accumulated bytes (an incremental UTF-8 decoder), so a character split over
several tokens is emitted whole once its last byte arrives, never as a crash or a stray replacement character.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import Any

__all__ = ["load_for_analysis", "token_labels", "TextStream", "display_label"]

SPECIAL_NAMES = {"pad_token_id": "<pad>", "bos_token_id": "<bos>", "eos_token_id": "<eos>", "unk_token_id": "<unk>"}


def load_for_analysis(source: str, device: str = "cpu"):
    """Load a model and its tokenizer: a :class:`dual_attention.training.inference.LoadedModel`.

    Raises ``ValueError`` (a ``CheckpointError`` or ``DataError``) with one readable line for a wrong path, a
    directory that is not a dual_attention checkpoint, a corrupted file or an unavailable tokenizer.
    """
    from dual_attention.training.inference import load_trained

    if not isinstance(source, str) or not source.strip():
        raise ValueError("no checkpoint given: enter a local checkpoint directory or a Hub id (owner/name)")
    return load_trained(source.strip(), map_location=device)


def _token_bytes(tok: Any, token_id: int) -> bytes:
    if hasattr(tok, "token_bytes"):
        return tok.token_bytes([token_id])
    return tok.decode([token_id]).encode("utf-8")


def display_label(text: str) -> str:
    """Make whitespace and control characters visible: ``' '`` → ``'␣'``, ``'\\n'`` → ``'\\\\n'``."""
    out = []
    for ch in text:
        if ch == " ":
            out.append("␣")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out) or "∅"


def token_labels(tok: Any, ids: Iterable[int]) -> list[str]:
    """One readable label per token id.

    A token whose bytes are not valid UTF-8 on their own (a piece of a multi-byte character) is labelled with its
    bytes in hex, e.g. ``<e2 82>``; specials of character tokenizers as ``<bos>``, ``<eos>``, ...
    """
    labels = []
    for i in ids:
        i = int(i)
        if getattr(tok, "name", "") == "char":
            special = next((name for attr, name in SPECIAL_NAMES.items() if getattr(tok, attr, None) == i), None)
            if special is not None:
                labels.append(special)
                continue
        raw = _token_bytes(tok, i)
        try:
            labels.append(display_label(raw.decode("utf-8")))
        except UnicodeDecodeError:
            labels.append("<" + " ".join(f"{b:02x}" for b in raw) + ">")
    return labels


class TextStream:
    """Accumulates generated token ids and returns the decoded text so far.

    ``push(id)`` returns the full text decoded from all bytes received; bytes of an unfinished multi-byte character
    are held back until it completes. ``finish()`` flushes (an unfinished character becomes U+FFFD).
    """

    def __init__(self, tok: Any) -> None:
        self.tok = tok
        self.ids: list[int] = []
        self.text = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bytes = hasattr(tok, "token_bytes")

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        if self._bytes:
            self.text += self._decoder.decode(self.tok.token_bytes([int(token_id)]))
        else:  # a tokenizer without byte access: decode the accumulated ids
            self.text = self.tok.decode(self.ids)
        return self.text

    def finish(self) -> str:
        if self._bytes:
            self.text += self._decoder.decode(b"", final=True)
        return self.text
