"""lm-evaluation-harness backend for dual_attention language models (extra ``eval``).

Registered as the lm-eval model type ``dual_attention`` (alias ``dat``)::

    lm_eval --model dual_attention --model_args pretrained=RUN_DIR_OR_HUB_ID --tasks hellaswag   # after
    import dual_attention.integrations.lm_eval_backend, or: dat eval RUN_DIR --tasks hellaswag

Scoring follows lm-eval's ``hf`` backend token for token, so both give the same numbers on an exported model
(``dat export hf``): ``loglikelihood`` scores ``(context + continuation)[-(block_size + 1):][:-1]`` in right-padded
batches and sums the continuation's log-probabilities; ``loglikelihood_rolling`` scores disjoint windows of
``block_size`` tokens; ``generate_until`` decodes left-padded batches with the model's KV cache
(:func:`dual_attention.generation.stream_generate`) and cuts the text at the first stop sequence.
"""

from __future__ import annotations

from dual_attention.errors import TaskError
from dual_attention.integrations import BYTE_EOS_ID, require

require("lm_eval", "the lm-evaluation-harness backend")

import torch  # noqa: E402
from lm_eval.api.model import TemplateLM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs  # noqa: E402
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from dual_attention.generation import stream_generate  # noqa: E402
from dual_attention.integrations.checkpoints import load_lm  # noqa: E402
from dual_attention.training.checkpoint import CheckpointError  # noqa: E402
from dual_attention.training.mc_eval import continuation_logprobs  # noqa: E402

__all__ = ["DualAttentionLM", "TaskError", "evaluate_tasks"]

#: with generate_until, stop sequences are looked for every this many new tokens
_STOP_CHECK_EVERY = 8


@register_model("dual_attention", "dat")
class DualAttentionLM(TemplateLM):
    """A dual_attention LM for lm-eval: ``pretrained`` is a run dir, checkpoint dir or Hub id (or pass ``model``
    and ``tokenizer`` objects: a model in memory)."""

    def __init__(self, pretrained: str | None = None, *, model=None, tokenizer=None, batch_size: int | str = 16,
                 device: str | None = None, max_gen_toks: int = 256, **kwargs) -> None:
        super().__init__()
        if model is None:
            if pretrained is None:
                raise ValueError("DualAttentionLM needs pretrained=<run dir, checkpoint dir or Hub id> or model=")
            ck = load_lm(pretrained, map_location=device or "cpu")
            model, tokenizer = ck.model, tokenizer or ck.tokenizer
            if tokenizer is None:
                raise CheckpointError(f"{pretrained!r} has no usable tokenizer: {ck.tokenizer_note}")
        if str(batch_size).startswith("auto"):
            raise ValueError("batch_size='auto' is not supported by the dual_attention backend; give a number")
        self.model, self.tokenizer = model.eval(), tokenizer
        self._device = next(model.parameters()).device if device is None else torch.device(device)
        self.model.to(self._device)
        self.batch_size = int(batch_size)
        self.max_gen_toks = int(max_gen_toks)

    # ------------------------------------------------------------------------------------------- tokens
    @property
    def eot_token_id(self) -> int:
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return BYTE_EOS_ID if eos is None else int(eos)

    @property
    def max_length(self) -> int:
        return int(self.model.block_size)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return list(self.tokenizer.encode(string))

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(list(tokens))

    # ------------------------------------------------------------------------------------------- scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        reorder = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        res = []
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="loglikelihood") as bar:
            for chunk in reorder.get_batched(n=self.batch_size):
                for (key, _, _), answer in zip(chunk, continuation_logprobs(
                        self.model, [(c[1], c[2]) for c in chunk], self.max_length, self.device)):
                    res.append(answer)
                    if key is not None:
                        self.cache_hook.add_partial("loglikelihood", key, answer)
                bar.update(len(chunk))
        return reorder.get_original(res)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for (text,) in tqdm([r.args for r in requests], disable=disable_tqdm or self.rank != 0, desc="rolling"):
            windows = map(make_disjoint_window, get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                context_len=1))
            scores = self._loglikelihood_tokens([(None, *w) for w in windows], disable_tqdm=True)
            total = sum(s for s, _ in scores)
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return out

    # ------------------------------------------------------------------------------------------- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        reorder = Collator([r.args for r in requests], sort_fn=lambda r: (-len(self.tok_encode(r[0])), r[0]),
                           group_by="gen_kwargs", group_fn=lambda r: r[1])
        eos = self.tok_decode([self.eot_token_id])
        res = []
        with tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="generate_until") as bar:
            for chunk in reorder.get_batched(n=self.batch_size):
                contexts, all_kwargs = zip(*chunk)
                kwargs = normalize_gen_kwargs(dict(all_kwargs[0]), self.max_gen_toks)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                for context, text in zip(contexts, self._generate(list(contexts), until, kwargs)):
                    res.append(text)
                    self.cache_hook.add_partial("generate_until", (context, all_kwargs[0]), text)
                bar.update(len(chunk))
        return reorder.get_original(res)

    @torch.no_grad()
    def _generate(self, contexts: list[str], until: list[str], kwargs: dict) -> list[str]:
        """Continue a batch of contexts (left-padded, KV-cached) until every row holds a stop sequence."""
        max_new = int(kwargs.pop("max_gen_toks"))
        if max_new >= self.max_length:
            raise ValueError(f"max_gen_toks={max_new} must be below the model's block size {self.max_length}")
        encoded = [self.tok_encode(c)[-(self.max_length - max_new):] or [self.prefix_token_id] for c in contexts]
        width = max(len(e) for e in encoded)
        idx = torch.full((len(encoded), width), self.eot_token_id, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(encoded), width, dtype=torch.bool, device=self.device)
        for row, e in enumerate(encoded):
            idx[row, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[row, width - len(e):] = True
        sample = bool(kwargs.get("do_sample", False)) and float(kwargs.get("temperature", 1.0)) > 0
        new: list[list[int]] = [[] for _ in encoded]
        steps = stream_generate(self.model, idx, max_new, temperature=float(kwargs.get("temperature", 1.0))
                                if sample else 0.0, top_k=kwargs.get("top_k") if sample else None,
                                top_p=kwargs.get("top_p") if sample else None,
                                key_padding_mask=None if bool(mask.all()) else mask)
        for step, token in enumerate(steps, 1):
            for row, t in enumerate(token.tolist()):
                new[row].append(t)
            if step % _STOP_CHECK_EVERY == 0 and all(_cut(self.tok_decode(n), until)[1] for n in new):
                break
        return [_cut(self.tok_decode(n), until)[0] for n in new]


def _cut(text: str, until: list[str]) -> tuple[str, bool]:
    """``text`` up to its first stop sequence, and whether it held one."""
    cut = min((text.find(s) for s in until if s and s in text), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def evaluate_tasks(checkpoint: str, tasks: list[str], *, limit: float | None = None, include_path: str | None = None,
                   batch_size: int = 16, device: str = "cpu", num_fewshot: int | None = None,
                   seed: int = 0) -> dict:
    """Run lm-eval ``tasks`` on a checkpoint through :class:`DualAttentionLM`; lm-eval's results dict.

    Unknown task names raise a :class:`TaskError` listing them, before the model is loaded.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        where = f" (nor in --include-path {include_path})" if include_path else ""
        raise TaskError(f"unknown lm-eval task(s) {', '.join(unknown)}{where}; `lm_eval ls tasks` lists the "
                         "known ones, local task YAMLs go in a folder given by --include-path")
    lm = DualAttentionLM(checkpoint, batch_size=batch_size, device=device)
    results = simple_evaluate(model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot, task_manager=manager,
                              log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)
    return dict(results)
