"""Gradio app: text generation with a trained DAT (or Transformer) language model, streamed token by token.

    python -m dual_attention.model_analysis.lm_inference_app --model CHECKPOINT [--host 127.0.0.1] [--port 7860]
                                                             [--share] [--device cuda]

Load a local checkpoint directory (``save_pretrained`` output or a ``dat train`` run dir, with its
``tokenizer.json``) or a Hugging Face Hub id from the page, type a prompt, choose temperature (0 = greedy), top-k,
top-p, the number of new tokens and a seed, and watch the continuation stream in. Generation uses the KV cache
(:func:`dual_attention.generation.stream_generate`): the prompt is run once, then one position per token; past the
model's context the last ``block_size`` tokens are kept (the published app cropped the wrong end).

Fixed with respect to the published app: no network I/O or files at import time, a public link only with
``--share``, the tokenizer saved with the checkpoint (bytes, GPT-2 BPE, ...), UTF-8 decoded from the accumulated
bytes (characters split across tokens do not crash), and errors (wrong path, not a language model, over-long prompt)
shown in the page while the app keeps serving.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from dual_attention.model_analysis.app_common import AppBase, AppError, message, serve

__all__ = ["build_app", "generate_text", "main"]

TITLE = "Dual Attention Transformer: text generation"


def generate_text(loaded, prompt: str, *, temperature: float = 0.8, top_k: int | None = None,
                  top_p: float | None = None, max_new_tokens: int = 100, seed: int = 0,
                  device: str = "cpu") -> Iterator[tuple[str, int]]:
    """Stream ``(generated text so far, tokens generated)`` for ``prompt`` (validated; AppError otherwise).

    ``temperature=0`` is greedy; ``top_k``/``top_p`` of None (or ``top_k <= 0``, ``top_p >= 1``) are off. Stops at
    ``max_new_tokens`` or at the tokenizer's end-of-text token.
    """
    from dual_attention.generation import stream_generate
    from dual_attention.model_analysis.text import TextStream

    model, tok = loaded.model, loaded.tokenizer
    if not prompt:
        raise AppError("enter a prompt")
    if temperature is None or temperature < 0:
        raise AppError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if max_new_tokens is None or int(max_new_tokens) < 1:
        raise AppError(f"the number of tokens to generate must be >= 1, got {max_new_tokens}")
    top_k = int(top_k) if top_k is not None and int(top_k) > 0 else None
    top_p = float(top_p) if top_p is not None and float(top_p) < 1.0 else None
    if top_p is not None and top_p <= 0:
        raise AppError(f"top-p must be in (0, 1], got {top_p}")
    ids = tok.encode(prompt)
    if not ids:
        raise AppError("the prompt encodes to no tokens")
    if len(ids) > int(model.block_size):
        raise AppError(f"the prompt has {len(ids)} tokens but the model's context is {model.block_size} tokens: "
                       "shorten the prompt")
    if max(ids) >= int(model.vocab_size):
        raise AppError(f"the prompt has token ids >= the model's vocabulary ({model.vocab_size}): wrong tokenizer?")
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    text = TextStream(tok)
    eos = getattr(tok, "eos_token_id", None)
    count = 0
    for token in stream_generate(model, idx, int(max_new_tokens), temperature=float(temperature), top_k=top_k,
                                 top_p=top_p, eos_token_id=eos, use_cache=True, generator=gen):
        t = int(token[0])
        if eos is not None and t == eos:
            break
        count += 1
        yield text.push(t), count
    yield text.finish(), count


class _InferenceApp(AppBase):
    """The page and its event handlers (one instance per built app; the model store is shared by its sessions)."""

    def __init__(self, model: str | None, device: str | None, max_new_tokens_limit: int) -> None:
        super().__init__(model, device)
        self.limit = max_new_tokens_limit

    def load_model(self, source: str, current_key: str | None):
        key, status, _ = self.load_status(source, current_key)
        return key, status

    def generate(self, key, prompt, temperature, top_k, top_p, max_new_tokens, seed):
        try:
            loaded = self.store.get(key)
            start = time.perf_counter()
            out, count = prompt, 0
            for text, count in generate_text(loaded, prompt, temperature=temperature, top_k=top_k, top_p=top_p,
                                             max_new_tokens=min(int(max_new_tokens or 0), self.limit),
                                             seed=int(seed or 0), device=self.device):
                out = prompt + text
                rate = count / max(time.perf_counter() - start, 1e-9)
                yield out, message(f"generating: {count} tokens, {rate:.1f} tokens/s")
            elapsed = time.perf_counter() - start
            yield out, message(f"done: {count} new tokens in {elapsed:.2f} s ({count / max(elapsed, 1e-9):.1f} "
                               "tokens/s, KV cache)", "ok")
        except AppError as e:
            yield self.gr.skip(), message(str(e), "error")
        except Exception as e:  # noqa: BLE001 - keep serving; show what went wrong
            yield self.gr.skip(), message(f"generation failed: {type(e).__name__}: {e}", "error")

    def sampling_inputs(self) -> list:
        """The prompt and sampling controls, in :meth:`generate`'s order after the model key."""
        gr = self.gr
        prompt = gr.Textbox(label="Prompt", lines=4, placeholder="Once upon a time", elem_id="prompt")
        with gr.Row():
            temperature = gr.Number(0.8, label="Temperature (0 = greedy)", minimum=0.0, step=0.05,
                                    elem_id="temperature")
            top_k = gr.Number(50, label="Top-k (0 = off)", minimum=0, precision=0, elem_id="top-k")
        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p (1 = off)", elem_id="top-p")
        with gr.Row():
            max_tokens = gr.Number(100, label="Tokens to generate", minimum=1, maximum=self.limit, precision=0,
                                   elem_id="max-tokens")
            seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
        return [prompt, temperature, top_k, top_p, max_tokens, seed]

    def page(self):
        """The ``gr.Blocks``: checkpoint and sampling controls on the left, the streamed text on the right."""
        gr = self.gr
        with gr.Blocks(title=TITLE) as app:
            gr.Markdown(f"# {TITLE}\nGenerate text with a trained Dual Attention Transformer language model "
                        "([arXiv:2405.16727](https://arxiv.org/abs/2405.16727)).")
            model_state = gr.State(self.initial_key)
            with gr.Row():
                with gr.Column(scale=1):
                    model_box, load_btn, status = self.model_panel()
                    sampling = self.sampling_inputs()
                    with gr.Row():
                        gen_btn = gr.Button("Generate", variant="primary", elem_id="generate-button")
                        stop_btn = gr.Button("Stop", elem_id="stop-button")
                with gr.Column(scale=1):
                    output = gr.Textbox(label="Prompt + generated text", lines=18, interactive=False,
                                        buttons=["copy"], elem_id="output")
                    gen_status = gr.Markdown("", elem_id="generation-status")
            self.machine_info()

            for trigger in (load_btn.click, model_box.submit):
                trigger(self.load_model, [model_box, model_state], [model_state, status])
            event = gen_btn.click(self.generate, [model_state, *sampling], [output, gen_status])
            stop_btn.click(None, cancels=[event])
        return app


def build_app(model: str | None = None, device: str | None = None, *, max_new_tokens_limit: int = 1024):
    """Build the app (a ``gr.Blocks``); ``model`` (a path or Hub id) is loaded now, errors shown in the page."""
    return _InferenceApp(model, device, max_new_tokens_limit).page()


def main(argv: list[str] | None = None) -> int:
    return serve("python -m dual_attention.model_analysis.lm_inference_app", TITLE, build_app, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
