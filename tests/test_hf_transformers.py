"""transformers integration: `dat export hf`, AutoModelForCausalLM / generate / pipeline against our own model
(logits to 1e-5, identical greedy tokens), the DATCache, PEFT LoRA, and bad input (one error line, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from lm_checkpoints import rope_dat_kwargs, save_mixin, train_lm

from dual_attention.cli import main
from dual_attention.integrations.checkpoints import load_lm

transformers = pytest.importorskip("transformers")  # the dev extra installs it: this runs in CI
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from dual_attention.integrations.hf_transformers import DATCache, DualAttentionForCausalLM  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OTHER_FAMILIES = ["model.d_model=32", "model.n_layers=1", "model.dff=64", "model.max_block_size=16",
                  "model.n_symbols=8", "train.batch_size=8", "train.eval_iters=1", "train.progress=false",
                  "data.synthetic_size=64", "train.max_iters=1", "train.eval_interval=1"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """name -> (checkpoint, exported transformers dir): trained DAT and Transformer runs, mixin dirs (RoPE with
    grouped-query self-attention and per-layer retrievers sharing a symbol library; Hadamard dual attention)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hf")
    sources = {"dat-run": train_lm(root, "dat"), "transformer-run": train_lm(root, "transformer", iters=20),
               "rope-mixin": save_mixin(root / "rope", "DualAttnTransformerLM_HFHub", **rope_dat_kwargs()),
               "hadamard-mixin": save_mixin(root / "hadamard", "DualAttnTransformerLM_HFHub", **rope_dat_kwargs(
                   ra_type="hadamard", symbol_retrieval=None, symbol_retrieval_kwargs=None,
                   symbol_retriever_config=None))}
    out = {}
    for name, src in sources.items():
        assert main(["export", "hf", str(src), str(root / f"{name}-hf")]) == 0
        out[name] = (src, root / f"{name}-hf")
    return out


@pytest.fixture(scope="module")
def other_families(tmp_path_factory):
    from dual_attention.training.config import load_config
    from dual_attention.training.trainer import train

    root = tmp_path_factory.mktemp("families")
    for preset in ("vision-tiny-dat", "seq2seq-tiny-transformer"):
        train(load_config(preset, [*OTHER_FAMILIES, f"train.out_dir={root / preset}"]), verbose=False)
    return {"vision": root / "vision-tiny-dat", "seq2seq": root / "seq2seq-tiny-transformer"}


def ours_and_hf(ckpts, name):
    src, out = ckpts[name]
    ours = load_lm(str(src)).model
    return ours, AutoModelForCausalLM.from_pretrained(str(out), trust_remote_code=True).eval(), out


def prompts(n: int = 3, t: int = 7) -> torch.Tensor:
    return torch.tensor([list(b"the cat sat on the"[i:i + t]) for i in range(n)])


# ---------------------------------------------------------------------------------------------- export layout
def test_export_writes_a_transformers_directory(ckpts):
    _, out = ckpts["dat-run"]
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "configuration_dat.py", "modeling_dat.py", "tokenizer.json"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "dual_attention_lm" and config["lm_class"] == "DualAttnTransformerLM"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_dat.DualAttentionForCausalLM"
    assert config["max_position_embeddings"] == 48 and config["vocab_size"] == 256
    tok = AutoTokenizer.from_pretrained(str(out))
    text = "héllo, wörld €\n"
    assert tok(text)["input_ids"] == list(text.encode("utf-8"))
    assert tok.decode(list(text.encode("utf-8"))) == text
    assert json.loads((ckpts["transformer-run"][1] / "config.json").read_text())["lm_class"] == "TransformerLM"


# ---------------------------------------------------------------------------------------- equality with ours
@pytest.mark.parametrize("name", ["dat-run", "transformer-run", "rope-mixin", "hadamard-mixin"])
def test_logits_and_greedy_tokens_equal_ours(ckpts, name):
    ours, hf, _ = ours_and_hf(ckpts, name)
    x = prompts()
    with torch.no_grad():
        ref = ours(x)[0]
        got = hf(x).logits
    assert got.shape == ref.shape and (got - ref).abs().max().item() <= 1e-5
    expected = ours.generate(x, 12, temperature=0)
    assert torch.equal(hf.generate(x, max_new_tokens=12, do_sample=False), expected)
    assert torch.equal(hf.generate(x, max_new_tokens=12, do_sample=False, use_cache=False), expected)


def test_left_padded_batch_matches_our_padded_generate(ckpts):
    ours, hf, _ = ours_and_hf(ckpts, "dat-run")
    x = prompts()
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, :3] = False
    mask[2, :1] = False
    x = x.masked_fill(~mask, 0)
    expected = ours.generate(x, 10, temperature=0, key_padding_mask=mask)
    got = hf.generate(x, attention_mask=mask.long(), max_new_tokens=10, do_sample=False)
    assert torch.equal(got, expected)
    with torch.no_grad():  # the unpadded positions' logits, without a cache
        ref = ours(x, key_padding_mask=mask)[0]
        out = hf(x, attention_mask=mask.long()).logits
    assert (out - ref)[mask].abs().max().item() <= 1e-5


def test_cache_steps_equal_the_full_forward(ckpts):
    ours, hf, _ = ours_and_hf(ckpts, "rope-mixin")
    x = prompts(2, 9)
    with torch.no_grad():
        full = hf(x).logits
        first = hf(x[:, :5], use_cache=True)
        assert isinstance(first.cache, DATCache) and first.cache.get_seq_length() == 5
        step = hf(x[:, 5:], cache=first.cache)
        assert step.cache.get_seq_length() == 9
        one = hf(x[:, :5], past_key_values=DATCache(hf.model, 2)).logits  # the old name of the argument
        dyn = hf(x[:, :5], cache=transformers.DynamicCache())  # an empty standard cache is replaced by ours
    assert isinstance(dyn.cache, DATCache) and torch.equal(dyn.logits, first.logits)
    assert (torch.cat([first.logits, step.logits], 1) - full).abs().max().item() <= 1e-5
    assert (one - full[:, :5]).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="exceeds the model's max_block_size 32"):
        hf(torch.zeros(1, 33, dtype=torch.long))


def test_beam_search_with_the_cache_equals_without(ckpts):
    _, hf, _ = ours_and_hf(ckpts, "dat-run")
    x = prompts(2)
    kw = dict(max_new_tokens=8, do_sample=False, num_beams=3)
    assert torch.equal(hf.generate(x, **kw), hf.generate(x, use_cache=False, **kw))


def test_labels_give_the_shifted_next_token_loss(ckpts):
    ours, hf, _ = ours_and_hf(ckpts, "dat-run")
    x = prompts(2, 10)
    labels = x.clone()
    labels[0, 4] = -100
    targets = torch.cat([x[:, 1:], torch.full((2, 1), -1)], 1)
    targets[0, 3] = -1
    with torch.no_grad():
        assert abs(hf(x, labels=labels).loss.item() - ours(x, targets)[1].item()) <= 1e-5


def test_save_and_reload_keeps_the_shared_weights(ckpts, tmp_path):
    _, hf, _ = ours_and_hf(ckpts, "rope-mixin")
    hf.save_pretrained(str(tmp_path))
    again = DualAttentionForCausalLM.from_pretrained(str(tmp_path))
    layers = again.model.layers
    assert layers.token_embedder.weight is layers.final_out.weight
    assert layers.symbol_retrievers[1].symbol_library is layers.symbol_retrievers[0].symbol_library
    x = prompts()
    with torch.no_grad():
        assert (again(x).logits - hf(x).logits).abs().max().item() == 0.0


# --------------------------------------------------------------------------------- remote code, pipeline, PEFT
def test_remote_code_and_pipeline_in_a_fresh_process(ckpts):
    """Only transformers is imported: the exported custom code, config and tokenizer do the rest."""
    src, out = ckpts["dat-run"]
    script = textwrap.dedent(f"""
        import json
        from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
        model = AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True)
        tok = AutoTokenizer.from_pretrained({str(out)!r}, trust_remote_code=True)
        pipe = pipeline("text-generation", model=model, tokenizer=tok, device="cpu", trust_remote_code=True)
        text = pipe("the cat", max_new_tokens=12, do_sample=False, return_full_text=False)[0]["generated_text"]
        print(json.dumps([type(model).__module__, text]))
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-2000:]
    module, text = json.loads(res.stdout.strip().splitlines()[-1])
    assert module.startswith("transformers_modules.")  # the exported file, not our package's copy
    ours = load_lm(str(src))
    expected = ours.model.generate(torch.tensor([list(b"the cat")]), 12, temperature=0)[0, 7:]
    assert text == ours.tokenizer.decode(expected.tolist())


def test_peft_lora_wraps_the_model_and_trains_a_step(ckpts):
    peft = pytest.importorskip("peft")
    _, hf, _ = ours_and_hf(ckpts, "dat-run")
    base = {k: v.clone() for k, v in hf.state_dict().items()}
    model = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["wq", "wv", "wq_attn"],
                                                    init_lora_weights="gaussian"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    x = prompts(3, 12)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    merged = model.merge_and_unload().state_dict()
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all(k.endswith(("wq.weight", "wv.weight", "wq_attn.weight")) for k in changed)


# ----------------------------------------------------------------------------------------------- bad input
def one_line_error(capsys, argv, fragment, command="export"):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"dat {command}: error: ") and fragment in lines[0], lines[0]


def test_export_bad_input(other_families, ckpts, tmp_path, capsys):
    one_line_error(capsys, ["export", "hf", other_families["vision"], tmp_path / "v"],
                   "is a vision model (VisionDualAttnTransformer); only language models")
    one_line_error(capsys, ["export", "hf", other_families["seq2seq"], tmp_path / "s"],
                   "is a seq2seq model (Seq2SeqTransformer)")
    one_line_error(capsys, ["export", "hf", tmp_path / "nowhere", tmp_path / "n"], "does not exist")
    one_line_error(capsys, ["export", "hf", ckpts["dat-run"][0], ckpts["dat-run"][1]], "is not empty")


def test_missing_transformers_extra_is_one_error_line(ckpts, tmp_path):
    blocked = tmp_path / "blocked" / "transformers"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('No module named transformers')\n")
    res = subprocess.run([sys.executable, "-m", "dual_attention", "export", "hf", str(ckpts["dat-run"][0]),
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": f"{tmp_path / 'blocked'}:{REPO}"})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "pip install 'dual_attention[transformers]'" in lines[0]
