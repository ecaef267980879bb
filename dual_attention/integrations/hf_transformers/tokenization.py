"""The package's tokenizers as ``transformers`` tokenizers (saved beside exported weights).

The byte tokenizer (token id = UTF-8 byte) is a byte-level BPE without merges: byte ``b`` is the token spelled by
the GPT-2 byte-to-unicode table, with id ``b``. It has no end-of-text token of its own, so byte 0 (NUL, absent from
text) stands in as ``eos``/``pad`` (the prefix token lm-evaluation-harness puts before an empty context).
"""

from __future__ import annotations

from dual_attention.integrations import BYTE_EOS_ID, require


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character table (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def byte_tokenizer(model_max_length: int | None = None):
    """A ``PreTrainedTokenizerFast`` that encodes text exactly as :class:`~dual_attention.training.tokenizers.
    ByteTokenizer` (``list(text.encode('utf-8'))``) and decodes back."""
    require("tokenizers", "the byte tokenizer for transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    table = _bytes_to_unicode()
    backend = Tokenizer(models.BPE(vocab={table[b]: b for b in range(256)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    eos = table[BYTE_EOS_ID]
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=eos, **kwargs)
