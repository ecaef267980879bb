"""Multiple-choice evaluation during training (train.mc_eval_file): logged in metrics.jsonl at every evaluation,
equal to scoring the saved checkpoint, drawn by `dat plot`; bad files and families are one error line."""

from __future__ import annotations

import json

import pytest
import torch
from lm_checkpoints import MC_EXAMPLES, TEXT, TINY_LM, write_mc_jsonl

from dual_attention.cli import main
from dual_attention.integrations.checkpoints import load_lm
from dual_attention.training.mc_eval import continuation_logprobs, load_mc_examples, score_mc
from dual_attention.training.tokenizers import ByteTokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_continuation_logprobs_by_hand():
    """A model whose logits ignore the input: log p(token) is a fixed distribution, whatever the context."""

    class Fixed(torch.nn.Module):
        block_size = 8

        def __init__(self):
            super().__init__()
            self.logits = torch.log_softmax(torch.arange(5.0), 0)

        def forward(self, x):
            return self.logits.expand(*x.shape, 5), None

    lp = Fixed().logits
    (s1, g1), (s2, g2) = continuation_logprobs(Fixed(), [([1, 2], [4, 4]), ([0] * 10, [3])], 8, torch.device("cpu"))
    assert s1 == pytest.approx(2 * lp[4].item()) and g1  # 4 is the argmax: greedy
    assert s2 == pytest.approx(lp[3].item()) and not g2  # context truncated on the left to fit the block


def test_training_logs_mc_accuracy_and_plots_it(tmp_path, capsys):
    (tmp_path / "text.txt").write_text(TEXT)
    mc = write_mc_jsonl(tmp_path / "mc.jsonl")
    run = tmp_path / "run"
    rc, out, err = run_cli(capsys, "train", "lm-tiny-dat", *[f"--{o}" for o in TINY_LM],
                           f"--data.train={tmp_path / 'text.txt'}", "--train.max_iters=60",
                           "--train.eval_interval=30", f"--train.mc_eval_file={mc}", "--out", run)
    assert rc == 0, err
    assert "iter 60: mc acc " in err
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    mc_recs = [r for r in recs if r["split"] == "mc"]
    assert [r["iter"] for r in mc_recs] == [0, 30, 60]
    assert all(0.0 <= r["acc"] <= 1.0 and 0.0 <= r["acc_norm"] <= 1.0 for r in mc_recs)
    ck = load_lm(str(run))
    final = score_mc(ck.model, ck.tokenizer, MC_EXAMPLES)
    assert mc_recs[-1]["acc"] == pytest.approx(final["acc"]) and mc_recs[-1]["acc_norm"] == pytest.approx(
        final["acc_norm"])
    assert final["acc"] >= 0.5  # trained on these sentences: most true endings are the likeliest
    rc, out, err = run_cli(capsys, "plot", run, "--out", tmp_path / "curve.png")
    assert rc == 0, err
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_mc_counts_argmax_and_length_normalised_argmax():
    """acc picks the highest total log-prob, acc_norm the highest per character (lm-eval's definitions)."""

    class LikesA(torch.nn.Module):  # log p('a') ~ 0, log p(any other byte) ~ -30, whatever the context
        block_size = 64

        def forward(self, x):
            logits = torch.full((*x.shape, 256), -30.0)
            logits[..., ord("a")] = 0.0
            return logits, None

    examples = [
        # " a" and " aaaaaaa" both cost one unlikely space: acc takes the first, acc_norm the longer (label 1)
        {"ctx": "x", "endings": ["a", "aaaaaaa"], "label": 1},
        # " b" costs two unlikely bytes, " aa" one: both metrics are right
        {"ctx": "x", "endings": ["b", "aa"], "label": 1},
    ]
    assert score_mc(LikesA(), ByteTokenizer(), examples) == {"acc": 0.5, "acc_norm": 1.0}
    (s1, _), (s2, _) = continuation_logprobs(LikesA(), [([120], list(b" b")), ([120], list(b" aa"))], 64,
                                             torch.device("cpu"))
    assert s1 == pytest.approx(-60.0, abs=1e-4) and s2 == pytest.approx(-30.0, abs=1e-4)


def test_bad_mc_files_and_families(tmp_path, capsys):
    (tmp_path / "bad.jsonl").write_text('{"ctx": "a", "endings": ["b"], "label": 0}\n{"ctx": "a", "label": 1}\n')
    (tmp_path / "label.jsonl").write_text('{"ctx": "a", "endings": ["b", "c"], "label": 2}\n')
    mc = write_mc_jsonl(tmp_path / "mc.jsonl")
    cases = [
        (["lm-tiny-dat", f"--train.mc_eval_file={tmp_path / 'none.jsonl'}"], "none.jsonl' does not exist"),
        (["lm-tiny-dat", f"--train.mc_eval_file={tmp_path / 'bad.jsonl'}"], "bad.jsonl:2: expected a JSON object"),
        (["lm-tiny-dat", f"--train.mc_eval_file={tmp_path / 'label.jsonl'}"], "label 2 is not an index"),
        (["lm-tiny-dat", f"--train.mc_eval_file={mc}", "--train.mc_eval_limit=0"], "mc_eval_limit must be > 0"),
        (["vision-tiny-dat", f"--train.mc_eval_file={mc}"], "needs a language model, not model.family='vision'"),
    ]
    for argv, fragment in cases:
        rc, _, err = run_cli(capsys, "train", *argv, "--train.max_iters=1",
                             "--out", tmp_path / "run")
        lines = err.strip().splitlines()
        assert rc == 2 and "Traceback" not in err, err
        assert lines[-1].startswith("dat train: error: ") and fragment in lines[-1], lines[-1]
    assert load_mc_examples(mc, limit=2) == MC_EXAMPLES[:2]
