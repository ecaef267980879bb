"""Streaming language-model data from the Hugging Face Hub (``data.train=hf``), e.g. FineWeb-Edu.

Needs the ``datasets`` package (``pip install 'dual_attention[data]'``) and network access; nothing in the
test-suite needs either. Each process reads its own shard of the stream (``split_dataset_by_node``);
documents are tokenized, joined with the tokenizer's end-of-text token and cut into windows of
``block_size + 1`` tokens. The first ``n_val_docs`` documents are held out as the validation split.

Unlike the file sources, a stream cannot be sampled at random: the resume position is the number of
documents consumed plus the leftover tokens, saved in ``trainer_state.pt``; a resumed run skips that many
documents and continues with the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from dual_attention.errors import message_of
from dual_attention.training.data import TokenStream
from dual_attention.training.tokenizers import DataError

__all__ = ["HFStream", "open_hf_stream", "load_hf_validation"]


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(
            "data.train=hf streams from the Hugging Face Hub and needs the datasets package: "
            "pip install 'dual_attention[data]'"
        ) from None
    return datasets


def _open(data_cfg) -> Any:
    datasets = _import_datasets()
    try:
        return datasets.load_dataset(data_cfg.hf_dataset, name=data_cfg.hf_name, split=data_cfg.hf_split,
                                     streaming=True)
    except Exception as e:
        raise DataError(f"cannot open the Hugging Face dataset {data_cfg.hf_dataset!r} "
                        f"({type(e).__name__}: {message_of(e)})") from None


class HFStream:
    """A per-process stream of ``(x, y)`` windows cut from tokenized documents.

    ``docs`` counts the documents of this process's shard consumed so far (validation documents included),
    so ``{'docs', 'buffer'}`` is the exact resume position.
    """

    def __init__(self, data_cfg, tokenizer, block_size: int, rank: int, world: int, skip_docs: int):
        self.cfg = data_cfg
        self.tok = tokenizer
        self.block = block_size
        self.rank, self.world = rank, world
        self.docs = skip_docs
        self.buffer: list[int] = []
        self._it: Iterator | None = None

    def _iterator(self) -> Iterator:
        ds = _open(self.cfg)
        if self.world > 1:
            from datasets.distributed import split_dataset_by_node

            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world)
        if self.docs:
            ds = ds.skip(self.docs)
        return iter(ds)

    def state_dict(self) -> dict:
        return {"docs": self.docs, "buffer": list(self.buffer)}

    def load_state_dict(self, state: dict) -> None:
        self.docs = int(state["docs"])
        self.buffer = [int(t) for t in state["buffer"]]
        self._it = None

    def windows(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` windows: inputs and next-token targets, each ``[n, block_size]``."""
        need = n * (self.block + 1)
        if self._it is None:
            self._it = self._iterator()
        while len(self.buffer) < need:
            try:
                doc = next(self._it)
            except StopIteration:
                raise DataError(f"the stream {self.cfg.hf_dataset!r} ran out of documents") from None
            self.docs += 1
            text = doc.get(self.cfg.hf_text_field)
            if text is None:
                raise DataError(f"documents of {self.cfg.hf_dataset!r} have no field {self.cfg.hf_text_field!r} "
                                f"(fields: {', '.join(doc)}); set data.hf_text_field")
            self.buffer.extend(self.tok.encode(text))
            if self.tok.eos_token_id is not None:
                self.buffer.append(self.tok.eos_token_id)
        chunk, self.buffer = self.buffer[:need], self.buffer[need:]
        block = torch.tensor(chunk, dtype=torch.long).view(n, self.block + 1)  # (n, T+1)
        return block[:, :-1].contiguous(), block[:, 1:].contiguous()


def load_hf_validation(data_cfg, tokenizer, n_docs: int) -> TokenStream:
    """The first ``n_docs`` documents of the stream, tokenized, as the validation split."""
    ds = _open(data_cfg)
    ids: list[int] = []
    for i, doc in enumerate(ds):
        if i >= n_docs:
            break
        ids.extend(tokenizer.encode(doc.get(data_cfg.hf_text_field, "")))
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    if not ids:
        raise DataError(f"the stream {data_cfg.hf_dataset!r} gave no documents")
    dtype = np.uint32 if tokenizer.vocab_size > 65535 else np.uint16
    return TokenStream(np.asarray(ids, dtype=dtype), "data.val (hf)")


def open_hf_stream(data_cfg, tokenizer, block_size: int, rank: int, world: int, n_val_docs: int) -> HFStream:
    """The training stream of this process (its shard, after the validation documents)."""
    return HFStream(data_cfg, tokenizer, block_size, rank, world, skip_docs=n_val_docs // max(world, 1))
