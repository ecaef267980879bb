"""A tiny byte-level DAT language model, trained for seconds on a short text, saved as a checkpoint directory.

Used by the tests and the documentation screenshots of the apps, and handy to try the apps without a trained model::

    python -m dual_attention.model_analysis.demo_checkpoint /tmp/tiny-dat   # then --model /tmp/tiny-dat

The model (d_model 32, 2 layers, 2 SA + 2 RA heads, 16 symbols, context 64 bytes) learns to continue the text.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

__all__ = ["DEMO_TEXT", "tiny_dat_config", "train_tiny_lm", "make_demo_checkpoint"]

DEMO_TEXT = ("the cat sat on the mat. the dog sat on the log. the cat saw the dog. "
             "the dog saw the cat. a cat and a dog sat on a mat. ")


def tiny_dat_config(**overrides) -> dict:
    """Keyword arguments of the tiny byte-level :class:`DualAttnTransformerLM`."""
    config = dict(vocab_size=256, d_model=32, n_layers=2, n_heads_sa=2, n_heads_ra=2, dff=64, dropout_rate=0.0,
                  activation="gelu", norm_first=True, max_block_size=64, pos_enc_type="RoPE",
                  symbol_retrieval="symbolic_attention",
                  symbol_retrieval_kwargs=dict(d_model=32, n_heads=2, n_symbols=16))
    config.update(overrides)
    return config


def train_tiny_lm(model: torch.nn.Module, text: str = DEMO_TEXT, steps: int = 150, seed: int = 0,
                  lr: float = 3e-3, batch_size: int = 16) -> float:
    """Next-byte training on random windows of ``text`` (repeated); returns the last loss."""
    gen = torch.Generator().manual_seed(seed)
    data = torch.tensor(list((text * 8).encode("utf-8")), dtype=torch.long)
    block = min(int(model.block_size), 48)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        starts = torch.randint(0, len(data) - block - 1, (batch_size,), generator=gen)
        x = torch.stack([data[s:s + block] for s in starts.tolist()])  # (B, block)
        y = torch.stack([data[s + 1:s + block + 1] for s in starts.tolist()])
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return float(loss.detach())


def make_demo_checkpoint(directory: str | Path, steps: int = 150, seed: int = 0, batch_size: int = 16,
                         **overrides) -> Path:
    """Build, train and save the tiny model with ``save_pretrained`` and a byte ``tokenizer.json``."""
    from dual_attention.hf import DualAttnTransformerLM_HFHub
    from dual_attention.training.tokenizers import ByteTokenizer, save_tokenizer

    torch.manual_seed(seed)
    model = DualAttnTransformerLM_HFHub(**tiny_dat_config(**overrides))
    if steps > 0:
        train_tiny_lm(model, steps=steps, seed=seed, batch_size=batch_size)
    out = Path(directory)
    model.save_pretrained(out)
    save_tokenizer(ByteTokenizer(), out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and save a tiny byte-level DAT language model.")
    parser.add_argument("directory", help="where to write config.json, model.safetensors and tokenizer.json")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300, a few seconds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_demo_checkpoint(args.directory, steps=args.steps, seed=args.seed))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
