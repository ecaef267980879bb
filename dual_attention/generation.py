"""Autoregressive sampling with a KV cache: greedy, temperature, top-k, top-p, EOS, batched prompts, streaming.

A model usable here provides ``forward(idx, *, kv_cache=None, input_pos=None, key_padding_mask=None)`` returning
``(logits, _)``, ``block_size``, ``supports_kv_cache`` and ``init_kv_cache(batch_size, max_len, device, dtype)``.
With the cache, the prompt is run once (prefill) and each new token costs one single-position step; without it
(or past ``block_size``) the last ``block_size`` tokens are re-run for every token, as the published package did.

The language models decode through :class:`~dual_attention.fast_decode.FastDecoder`: per generated token a few
fused matrix products per layer, no mask building, validation or host synchronisation, preallocated buffers. Every
step has the same shapes, so ``compile=True`` runs it through ``torch.compile`` (one graph, compiled once per model
and batch shape and reused by later calls; the first call pays the compilation, reported by
``dat generate --compile``). ``docs/performance.md`` has the measurements.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from dual_attention import fast_decode


def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one token per row from ``logits (B, V)``; ``temperature == 0`` is greedy (argmax)."""
    finite_number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
    if not (finite_number and 0 <= temperature < math.inf):  # also refuses NaN
        raise ValueError(f"temperature={temperature!r} is not valid; it must be a finite number >= 0 (0 = greedy)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} is not valid; it must be a positive int or None")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p!r} is not valid; it must be in (0, 1] or None")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def _check_prompt(idx: Tensor, max_new_tokens: int) -> None:
    if not isinstance(idx, Tensor) or idx.dim() != 2 or idx.dtype not in (torch.long, torch.int32, torch.int64):
        desc = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, Tensor) else type(idx).__name__
        raise ValueError(f"idx must be an integer tensor of shape (batch, length), got {desc}")
    if idx.shape[1] == 0:
        raise ValueError("idx must hold at least one prompt token")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is not valid; it must be an int >= 0")


def _decode_step(model, token: Tensor, cache, input_pos: Tensor, key_padding_mask: Tensor | None) -> Tensor:
    """One cached decoding step through the model's forward: logits ``(B, V)`` of ``token (B, 1)`` at ``input_pos``.

    Used for the models :mod:`dual_attention.fast_decode` does not serve."""
    logits, _ = model(token, kv_cache=cache, input_pos=input_pos, key_padding_mask=key_padding_mask)
    return logits[:, -1]


_compiled_decode_step = None
#: with ``compile`` the cache length is rounded up to a multiple of this (fewer recompilations)
_COMPILED_LENGTH_MULTIPLE = 128


def compiled_decode_step():
    """:func:`_decode_step` through ``torch.compile`` (fullgraph, static shapes), built on first use.

    The model and its cache are arguments, not constants, so one compiled step serves every cache object of the
    same shapes (a new ``generate`` call does not recompile).
    """
    global _compiled_decode_step
    if _compiled_decode_step is None:
        _compiled_decode_step = torch.compile(_decode_step, dynamic=False, fullgraph=True)
    return _compiled_decode_step


def _cached_stepper(model, idx: Tensor, max_new_tokens: int, key_padding_mask: Tensor | None, compile: bool):
    """Prefill the cache with the prompt; return ``(logits of the last prompt token, step, cache length)``.

    ``step(token (B,), pos)`` returns the logits after ``token`` at position ``pos``: the fused step of
    :class:`~dual_attention.fast_decode.FastDecoder` where it serves the model (its weights fused here, once per
    call), else the model's own cached forward; through ``torch.compile`` with ``compile``.
    """
    b, t = idx.shape
    max_len = t + max_new_tokens
    if compile:  # round the cache up, so that other lengths reuse the compiled step
        max_len = -(-max_len // _COMPILED_LENGTH_MULTIPLE) * _COMPILED_LENGTH_MULTIPLE
    max_len = min(model.block_size, max_len)
    param = next(model.parameters())
    cache = model.init_kv_cache(b, max_len, device=idx.device, dtype=param.dtype)
    full_pad = None
    if key_padding_mask is not None:
        full_pad = torch.ones(b, max_len, dtype=torch.bool, device=idx.device)
        full_pad[:, :t] = key_padding_mask
    logits, _ = model(idx, kv_cache=cache, input_pos=torch.arange(t, device=idx.device), key_padding_mask=full_pad)
    if fast_decode.supported(model) and not torch.is_autocast_enabled(idx.device.type):
        decoder = fast_decode.FastDecoder(model, cache, t, full_pad)
        fast_step = fast_decode.compiled_step() if compile else fast_decode.FastDecoder.step
        return logits[:, -1], lambda token, pos: fast_step(decoder, token), max_len
    model_step = compiled_decode_step() if compile else _decode_step
    return logits[:, -1], lambda token, pos: model_step(model, token[:, None], cache,
                                                         torch.tensor([pos], device=idx.device), full_pad), max_len


@torch.no_grad()
def stream_generate(
    model,
    idx: Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    key_padding_mask: Tensor | None = None,
    compile: bool = False,
) -> Iterator[Tensor]:
    """Yield one new token per row ``(B,)`` per step, up to ``max_new_tokens`` or until every row hit EOS.

    Rows that already produced ``eos_token_id`` keep yielding it. ``key_padding_mask (B, T)`` marks real prompt
    tokens (True) for left-padded batches of prompts. ``compile`` compiles the cached one-token step (see the
    module docstring); it changes no result beyond float rounding.
    """
    _check_prompt(idx, max_new_tokens)
    if max_new_tokens == 0:
        return
    b, t = idx.shape
    block_size = model.block_size
    if t > block_size:
        idx = idx[:, -block_size:]
        key_padding_mask = None if key_padding_mask is None else key_padding_mask[:, -block_size:]
        t = block_size
    done = torch.zeros(b, dtype=torch.bool, device=idx.device)
    seq = idx.new_empty(b, t + max_new_tokens)  # the prompt and every token generated so far, preallocated
    seq[:, :t] = idx
    pad = None
    if key_padding_mask is not None:
        pad = torch.ones(b, t + max_new_tokens, dtype=torch.bool, device=idx.device)
        pad[:, :t] = key_padding_mask
    max_len = 0  # cached positions: none without the cache
    if use_cache and getattr(model, "supports_kv_cache", False):
        logits, step, max_len = _cached_stepper(model, idx, max_new_tokens, key_padding_mask, compile)
    else:
        logits = model(idx, key_padding_mask=key_padding_mask)[0][:, -1]
    for i in range(max_new_tokens):
        token = sample_next_token(logits, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            token = torch.where(done, torch.full_like(token, eos_token_id), token)
            done = done | (token == eos_token_id)
        yield token
        if i == max_new_tokens - 1 or (eos_token_id is not None and bool(done.all())):
            return
        pos = t + i
        seq[:, pos] = token
        if pos < max_len:
            logits = step(token, pos)
        else:  # no cache, or the context is full: re-run the last block_size tokens
            start = max(0, pos + 1 - block_size)
            window_pad = None if pad is None else pad[:, start:pos + 1]
            logits = model(seq[:, start:pos + 1], key_padding_mask=window_pad)[0][:, -1]


@torch.no_grad()
def generate(model, idx: Tensor, max_new_tokens: int, **kwargs) -> Tensor:
    """Return ``idx`` followed by the generated tokens, ``(B, T + new)`` (see :func:`stream_generate`)."""
    tokens = list(stream_generate(model, idx, max_new_tokens, **kwargs))
    if not tokens:
        return idx
    return torch.cat([idx, torch.stack(tokens, dim=1)], dim=1)
