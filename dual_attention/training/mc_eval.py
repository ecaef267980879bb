"""Multiple-choice evaluation during training (HellaSwag format), for ``train.mc_eval_file``.

Each line of the JSON-lines file is one example ``{"ctx": str, "endings": [str, ...], "label": int}`` (HellaSwag's
own ``ctx`` / ``endings`` / ``label`` fields; ``label`` may be a string). The model scores every ending ``e`` as a
continuation of the context: ``s(e) = sum_t log p(e_t | ctx, e_<t)`` over the tokens of ``" " + e``, the context
truncated on the left to fit the block. Reported (as lm-evaluation-harness does for HellaSwag):

    acc      = mean [argmax_e s(e) == label]
    acc_norm = mean [argmax_e s(e) / len(e in characters) == label]

Needs no extra: the scoring is a batched forward of the model, in eval mode, without gradients.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from dual_attention.training.config import Config, ConfigError

__all__ = ["load_mc_examples", "continuation_logprobs", "score_mc", "make_mc_eval"]


def load_mc_examples(path: str | Path, limit: int | None = None) -> list[dict]:
    """The examples of a HellaSwag-format JSON-lines file; ConfigError naming the line for a malformed one."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"train.mc_eval_file={str(path)!r} does not exist")
    examples = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            ex = {"ctx": str(d["ctx"]), "endings": [str(e) for e in d["endings"]], "label": int(d["label"])}
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{p}:{n}: expected a JSON object with ctx, endings (list) and label "
                              f"(int): {type(e).__name__}: {e}") from None
        if not 0 <= ex["label"] < len(ex["endings"]):
            raise ConfigError(f"{p}:{n}: label {ex['label']} is not an index of the {len(ex['endings'])} endings")
        examples.append(ex)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise ConfigError(f"train.mc_eval_file={str(path)!r} holds no examples")
    return examples


@torch.no_grad()
def continuation_logprobs(model, pairs: list[tuple[list[int], list[int]]], block_size: int,
                          device: torch.device) -> list[tuple[float, bool]]:
    """``(sum log p(continuation | context), continuation is the greedy one)`` for each ``(context ids,
    continuation ids)``, in one right-padded forward of ``(context + continuation)[-(block_size + 1):][:-1]``
    (lm-evaluation-harness' rule for causal models)."""
    inps = [(ctx + cont)[-(block_size + 1):][:-1] for ctx, cont in pairs]
    x = torch.zeros(len(inps), max(len(i) for i in inps), dtype=torch.long, device=device)
    for row, inp in enumerate(inps):
        x[row, :len(inp)] = torch.tensor(inp, dtype=torch.long)
    logp = F.log_softmax(model(x)[0].float(), dim=-1)  # (B, T, V)
    out = []
    for row, (inp, (_, cont)) in enumerate(zip(inps, pairs)):
        lp = logp[row, len(inp) - len(cont):len(inp)]  # (len(cont), V)
        target = torch.tensor(cont, dtype=torch.long, device=device)
        out.append((float(lp.gather(1, target[:, None]).sum()), bool((lp.argmax(dim=-1) == target).all())))
    return out


def score_mc(model, tokenizer, examples: list[dict], device: torch.device | str = "cpu",
             batch_size: int = 32) -> dict[str, float]:
    """``{"acc", "acc_norm"}`` of ``model`` on the examples (see the module docstring)."""
    device = torch.device(device)
    block = int(model.block_size)
    pairs, owners = [], []
    for i, ex in enumerate(examples):
        ctx = tokenizer.encode(ex["ctx"])
        for ending in ex["endings"]:
            pairs.append((ctx, tokenizer.encode(" " + ending)[:block]))
            owners.append(i)
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        scores.extend(s for s, _ in continuation_logprobs(model, pairs[start:start + batch_size], block, device))
    acc = acc_norm = 0
    k = 0
    for ex in examples:
        s = scores[k:k + len(ex["endings"])]
        norm = [v / max(len(e), 1) for v, e in zip(s, ex["endings"])]
        acc += int(max(range(len(s)), key=s.__getitem__) == ex["label"])
        acc_norm += int(max(range(len(norm)), key=norm.__getitem__) == ex["label"])
        k += len(ex["endings"])
    return {"acc": acc / len(examples), "acc_norm": acc_norm / len(examples)}


def make_mc_eval(cfg: Config, tokenizer, device: torch.device) -> Callable | None:
    """The training hook: ``hook(model, autocast) -> {"acc", "acc_norm"}``, or None without ``mc_eval_file``."""
    path = cfg.train.mc_eval_file
    if not path:
        return None
    if cfg.model.family != "lm":
        raise ConfigError(f"train.mc_eval_file needs a language model, not model.family={cfg.model.family!r}")
    examples = load_mc_examples(path, cfg.train.mc_eval_limit)  # the limit's range: validate_config
    batch = cfg.train.eval_batch_size or cfg.train.batch_size

    def hook(model, autocast) -> dict[str, float]:  # called with the model in eval mode
        with autocast():
            return score_mc(model, tokenizer, examples, device, batch)

    return hook
