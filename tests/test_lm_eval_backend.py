"""lm-evaluation-harness backend: local tasks (multiple choice, rolling log-likelihood, generation) scored through
our backend and through lm-eval's own `hf` backend on the exported directory give the same numbers; `dat eval
--tasks` prints the table and writes the JSON; bad input is one error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lm_checkpoints import MC_EXAMPLES, SENTENCES, train_lm, write_mc_jsonl

from dual_attention.cli import main
from dual_attention.integrations.checkpoints import load_lm
from dual_attention.training.mc_eval import score_mc

pytest.importorskip("lm_eval")  # the dev extra installs it: this runs in CI
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from dual_attention.integrations.lm_eval_backend import DualAttentionLM  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = ["tiny_hellaswag", "tiny_text", "tiny_gen"]


def task_yamls(d: Path) -> Path:
    """Three local tasks, one per request type, on json files (lm-eval's dataset_path: json + data_files)."""
    d.mkdir(parents=True, exist_ok=True)
    write_mc_jsonl(d / "mc.jsonl")
    long_text = " ".join(SENTENCES * 4)  # longer than the block: several rolling windows
    (d / "text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in (long_text, SENTENCES[1], "zz")))
    (d / "gen.jsonl").write_text("".join(json.dumps({"prompt": s[:9], "answer": s[9:]}) + "\n" for s in SENTENCES))
    common = "dataset_path: json\nvalidation_split: validation\n"
    (d / "tiny_hellaswag.yaml").write_text(
        f"task: tiny_hellaswag\n{common}dataset_kwargs:\n  data_files:\n    validation: {d / 'mc.jsonl'}\n"
        "output_type: multiple_choice\ndoc_to_text: '{{ctx}}'\ndoc_to_target: '{{label}}'\n"
        "doc_to_choice: '{{endings}}'\nmetric_list:\n  - metric: acc\n    aggregation: mean\n"
        "    higher_is_better: true\n  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
    (d / "tiny_text.yaml").write_text(
        f"task: tiny_text\n{common}dataset_kwargs:\n  data_files:\n    validation: {d / 'text.jsonl'}\n"
        "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    (d / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\n{common}dataset_kwargs:\n  data_files:\n    validation: {d / 'gen.jsonl'}\n"
        "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: ['.']\n  max_gen_toks: 12\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n")
    return d


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("lmeval")
    run = train_lm(root, "dat", iters=60)
    assert main(["export", "hf", str(run), str(root / "hf")]) == 0
    return run, root / "hf", task_yamls(root / "tasks")


def evaluate(model, tasks_dir, **kw):
    return simple_evaluate(model=model, tasks=TASKS, task_manager=TaskManager(include_path=str(tasks_dir)),
                           log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                           fewshot_random_seed=0, bootstrap_iters=0, **kw)


def sample_numbers(samples: list[dict]) -> list:
    """The raw answers of every request, in document order: floats (log-likelihoods) or strings (generations)."""
    out = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        for resp in s["resps"]:
            out.extend(r if isinstance(r, (list, tuple)) else [r] for r in resp)
    return out


def test_our_backend_and_the_hf_backend_agree(setup):
    run, hf_dir, tasks_dir = setup
    ours = evaluate(DualAttentionLM(str(run), batch_size=3), tasks_dir)
    # logits_cache=False: lm-eval 0.4.13's hf backend reuses one forward for requests with equal context +
    # continuation[:-1] and then reads a shorter continuation's log-probs from the wrong (leading) positions, which
    # the examples here trigger ("the cat sat on the" + " mat." vs "the cat" + " sat on the mat.")
    theirs = evaluate("hf", tasks_dir, batch_size=3, device="cpu",
                      model_args=f"pretrained={hf_dir},trust_remote_code=True,dtype=float32,logits_cache=False")
    for task in TASKS:
        a, b = ours["results"][task], theirs["results"][task]
        metrics = [k for k in a if "," in k and "stderr" not in k]
        assert metrics
        for k in metrics:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (task, k)
        mine, hers = sample_numbers(ours["samples"][task]), sample_numbers(theirs["samples"][task])
        assert len(mine) == len(hers) > 0
        for x, y in zip(mine, hers):
            if isinstance(x[0], str):
                assert x == y, task
            else:
                assert x[0] == pytest.approx(y[0], abs=1e-4) and [bool(v) for v in x[1:]] == [bool(v) for v in y[1:]]
    # the training-time scorer (train.mc_eval_file) computes lm-eval's acc / acc_norm
    ck = load_lm(str(run))
    during_training = score_mc(ck.model, ck.tokenizer, MC_EXAMPLES)
    assert during_training["acc"] == ours["results"]["tiny_hellaswag"]["acc,none"]
    assert during_training["acc_norm"] == ours["results"]["tiny_hellaswag"]["acc_norm,none"]
    # real numbers: the trained model prefers the true endings and continues the sentences it saw
    assert ours["results"]["tiny_hellaswag"]["acc,none"] >= 0.5
    assert ours["results"]["tiny_text"]["bits_per_byte,none"] < 4.0


def test_dat_eval_tasks_prints_the_table_and_writes_json(setup, tmp_path, capsys):
    run, _, tasks_dir = setup
    out = tmp_path / "results.json"
    rc = main(["eval", str(run), "--tasks", "tiny_hellaswag,tiny_text", "--include-path", str(tasks_dir),
               "--limit", "4", "--batch-size", "2", "--output", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert "|tiny_hellaswag|" in stdout.replace(" ", "") and "acc_norm" in stdout and "bits_per_byte" in stdout
    results = json.loads(out.read_text())
    assert set(results["results"]) == {"tiny_hellaswag", "tiny_text"}
    assert results["n-samples"]["tiny_hellaswag"]["effective"] == 4
    ck = load_lm(str(run))
    direct = evaluate(DualAttentionLM(model=ck.model, tokenizer=ck.tokenizer, batch_size=5), tasks_dir, limit=4)
    assert results["results"]["tiny_hellaswag"]["acc,none"] == direct["results"]["tiny_hellaswag"]["acc,none"]


def one_line_error(capsys, argv, fragment):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("dat eval: error: ") and fragment in lines[0], lines[0]


def test_bad_input(setup, tmp_path, capsys):
    run, _, tasks_dir = setup
    one_line_error(capsys, ["eval", run, "--tasks", "tiny_hellaswag,no_such_task", "--include-path", tasks_dir],
                   "unknown lm-eval task(s) no_such_task")
    one_line_error(capsys, ["eval", run], "one of --data (a data file) or --tasks")
    one_line_error(capsys, ["eval", run, "--tasks", "tiny_text", "--include-path", tmp_path / "no"], "not a directory")
    one_line_error(capsys, ["eval", tmp_path / "nowhere", "--tasks", "tiny_hellaswag", "--include-path", tasks_dir],
                   "does not exist")
    vision = tmp_path / "vision"
    vision.mkdir()
    (vision / "config.json").write_text(json.dumps({"image_shape": [3, 8, 8], "patch_size": [4, 4], "n_heads_ra": 1}))
    (vision / "model.safetensors").write_bytes(b"")
    one_line_error(capsys, ["eval", vision, "--tasks", "tiny_hellaswag", "--include-path", tasks_dir],
                   "is a vision model (VisionDualAttnTransformer); only language models")


def test_missing_eval_extra_is_one_error_line(setup, tmp_path):
    run, _, _ = setup
    blocked = tmp_path / "blocked" / "lm_eval"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('No module named lm_eval')\n")
    res = subprocess.run([sys.executable, "-m", "dual_attention", "eval", str(run), "--tasks", "hellaswag"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": f"{tmp_path / 'blocked'}:{REPO}"})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "pip install 'dual_attention[eval]'" in lines[0]
