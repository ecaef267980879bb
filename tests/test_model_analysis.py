"""Tests of dual_attention.model_analysis: the analysis pass, the published datlm_utils names, post-processors,
token labels and streaming decoding, heat-map PNGs, ``dat viz``, and the apps' non-browser parts (their browser
tests are in test_apps_browser.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dual_attention.model_analysis import analysis as A
from dual_attention.model_analysis.datlm_utils import (
    block_forward_get_weights,
    datlm_forward_w_intermediate_results,
    symbolic_attn_forward_get_weights,
)
from dual_attention.model_analysis.postprocess import future_mask, postprocess_relations, scale_by_attention
from dual_attention.model_analysis.text import TextStream, token_labels

ROOT = Path(__file__).resolve().parents[1]
LM_VARIANTS = {
    "prenorm": {},
    "postnorm": dict(norm_first=False),
    "sa_only": dict(n_heads_sa=4, n_heads_ra=0),
    "ra_only": dict(n_heads_sa=0, n_heads_ra=4),
    "rca": dict(ra_type="rca"),
    "disrca": dict(ra_type="disrca"),
    "positional": dict(symbol_retrieval="positional_symbols"),
    "position_relative": dict(symbol_retrieval="position_relative"),
    "unshared_pos_emb": dict(pos_enc_type="pos_emb", symbol_retriever_config=dict(shared_symbol_retriever=False)),
    "rmsnorm_relu_rel": dict(norm_type="rmsnorm", ra_kwargs=dict(rel_activation="relu", n_relations=4)),
    "hadamard": dict(ra_type="hadamard", ra_kwargs=dict(qk_norm=True, n_kv_heads=2)),
    "hadamard_no_symbols": dict(ra_type="hadamard", symbol_retrieval=None, symbol_retrieval_kwargs=None),
    "persistent_symbols": dict(update_symbols_each_layer=False, ra_kwargs=dict(symmetric_attn=True)),
}


def _plain_logits(model, x):
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        out = model(x)[0]
    for m, f in flags:
        m.training = f
    return out


# ----------------------------------------------------------------------------------------------- analysis: LMs
@pytest.mark.parametrize("variant", list(LM_VARIANTS))
def test_lm_analysis_matches_forward_and_shapes(make_dat_lm, variant):
    model = make_dat_lm(dropout_rate=0.1, **LM_VARIANTS[variant])
    model.train()
    x = torch.randint(0, 37, (2, 11))
    res = A.analyze(model, x)
    assert res.family == "lm" and len(res.layers) == 2
    torch.testing.assert_close(res.output, _plain_logits(model, x), rtol=1e-5, atol=1e-5)
    assert model.training and all(m.training for m in model.modules())  # no eval side effect
    sa, ra = model.n_heads_sa, model.n_heads_ra
    for i, layer in enumerate(res.layers):
        assert layer.index == i and layer.causal and layer.stack == "blocks"
        assert (layer.sa_attn is None) == (sa == 0) and (layer.ra_attn is None) == (ra == 0)
        if sa:
            assert layer.sa_attn.shape == (2, sa, 11, 11)
            torch.testing.assert_close(layer.sa_attn.sum(-1), torch.ones(2, sa, 11))
            assert float(layer.sa_attn[..., future_mask(11)].abs().max()) == 0.0  # causal
        if ra:
            assert layer.ra_attn.shape == (2, ra, 11, 11)
            if model.ra_type in ("rca", "hadamard"):
                assert layer.relations is None
            else:
                n_rel = getattr(model.layers.blocks[i].dual_attn.relational_attention, "n_relations", ra)
                assert layer.relations.shape == (2, 11, 11, n_rel)
                assert layer.relation_maps.shape == (2, n_rel, 11, 11)
        assert layer.hidden.shape == (2, 11, 16) and not layer.hidden.requires_grad


def test_lm_relations_are_r_of_receiver_and_sender(make_dat_lm):
    """relations[b, i, j, r] = <W_q^rel x_i, W_k^rel x_j>_r / sqrt(d_r) of the block's normalised input."""
    model = make_dat_lm()
    ra_mod = model.layers.blocks[1].dual_attn.relational_attention
    captured = []
    hook = ra_mod.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    x = torch.randint(0, 37, (1, 9))
    res = A.analyze(model, x)
    hook.remove()
    h = captured[0]  # (1, n, d), the input of layer 1's RA
    q = ra_mod.wq_rel(h).view(1, 9, ra_mod.n_relations, ra_mod.rel_proj_dim)
    k = ra_mod.wk_rel(h).view(1, 9, ra_mod.n_relations, ra_mod.rel_proj_dim)
    expected = torch.einsum("birc,bjrc->bijr", q, k) * ra_mod.rel_scale  # [b, i, j, r] = r(x_i, x_j)
    rel = res.layers[1].relations
    torch.testing.assert_close(rel, expected, rtol=1e-5, atol=1e-5)
    assert (rel - rel.transpose(1, 2)).abs().max() > 1e-3  # asymmetric, so a transpose would fail the check above
    torch.testing.assert_close(res.layers[1].relation_maps[0, 1], expected[0, :, :, 1])


def test_lm_symbols_and_symbol_ids(make_dat_lm):
    model = make_dat_lm()
    x = torch.randint(0, 37, (2, 7))
    res = A.analyze(model, x)
    retriever = model.layers.symbol_retrievers[0]
    h0 = model._embed(x, None)[0]
    symbols, weights = retriever.forward_with_weights(h0)
    torch.testing.assert_close(res.layers[0].symbol_attn, weights.detach())
    torch.testing.assert_close(res.layers[0].symbols, symbols.detach(), rtol=1e-5, atol=1e-6)
    assert res.layers[0].symbol_ids.shape == (2, 2, 7)
    assert torch.equal(res.layers[0].symbol_ids, weights.argmax(-1))
    pos = A.analyze(make_dat_lm(symbol_retrieval="positional_symbols"), x)
    assert torch.equal(pos.layers[1].symbol_ids, torch.arange(7).expand(2, 1, 7))
    rel = A.analyze(make_dat_lm(symbol_retrieval="position_relative"), x)
    assert rel.layers[0].symbol_ids is None and rel.layers[0].symbol_attn is None


def test_transformer_lm_and_restored_mixed_flags(make_transformer_lm, make_dat_lm):
    model = make_transformer_lm()
    x = torch.randint(0, 37, (1, 6))
    res = A.analyze(model, x)
    torch.testing.assert_close(res.output, _plain_logits(model, x), rtol=1e-5, atol=1e-5)
    assert res.layers[0].sa_attn.shape == (1, 4, 6, 6) and res.layers[0].ra_attn is None
    dat = make_dat_lm(dropout_rate=0.2)
    dat.eval()
    dat.layers.blocks[0].train()  # mixed flags must come back exactly
    before = [m.training for m in dat.modules()]
    A.analyze(dat, x)
    assert [m.training for m in dat.modules()] == before


def test_keep_grad_and_errors(make_dat_lm, make_vidat):
    model = make_dat_lm()
    x = torch.randint(0, 37, (1, 5))
    res = A.analyze(model, x, keep_grad=True)
    res.output.sum().backward()
    assert model.layers.final_out.weight.grad is not None
    with pytest.raises(ValueError, match="exceeds maximum block size"):
        A.analyze(model, torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(TypeError, match="takes 1 input"):
        A.analyze(model, x, x)
    with pytest.raises(TypeError, match="needs a language model"):
        A.analyze_lm(make_vidat(), x)
    with pytest.raises(TypeError, match="not a dual_attention"):
        A.analyze(torch.nn.Linear(2, 2), x)
    with pytest.raises(ValueError, match="stack='encoder' is not valid"):
        res.stack("encoder")


# ------------------------------------------------------------------------------------------ seq2seq and vision
@pytest.mark.parametrize("retrieval", ["symbolic_attention", "rel_sym_attn", "position_relative"])
def test_seq2seq_analysis(make_seq2seq_dat, retrieval):
    model = make_seq2seq_dat(symbol_retrieval=retrieval)
    src, tgt = torch.randint(0, 23, (2, 8)), torch.randint(0, 19, (2, 5))
    res = A.analyze(model, src, tgt)
    with torch.no_grad():
        expected = model.decode(tgt, model.encode(src))
    torch.testing.assert_close(res.output, expected, rtol=1e-5, atol=1e-5)
    enc, dec = res.encoder_layers, res.decoder_layers
    assert len(enc) == 2 and len(dec) == 2
    assert not enc[0].causal and dec[0].causal
    assert enc[0].ra_attn.shape == (2, 2, 8, 8) and dec[1].relations.shape == (2, 5, 5, 2)
    assert dec[0].cross_attn.shape == (2, 2, 5, 8) and enc[0].cross_attn is None
    if retrieval == "position_relative":
        assert enc[0].symbol_attn is None
    else:  # symbolic attention, also inside the relational symbolic attention
        assert enc[0].symbol_attn.shape == (2, 2, 8, 8) and dec[0].symbol_ids.shape == (2, 2, 5)
        torch.testing.assert_close(enc[0].symbol_attn.sum(-1), torch.ones(2, 2, 8))


def test_seq2seq_transformer_and_vision(make_seq2seq_transformer, make_vidat, make_vit):
    s2s = make_seq2seq_transformer()
    src, tgt = torch.randint(0, 23, (1, 6)), torch.randint(0, 19, (1, 4))
    res = A.analyze(s2s, src, tgt)
    with torch.no_grad():
        torch.testing.assert_close(res.output, s2s.decode(tgt, s2s.encode(src)), rtol=1e-5, atol=1e-5)
    assert res.encoder_layers[0].sa_attn.shape == (1, 4, 6, 6) and res.decoder_layers[0].cross_attn.shape[1] == 2
    img = torch.randn(2, 3, 8, 8)
    for model in (make_vidat(), make_vidat(symbol_retrieval="symbolic_attention", ra_kwargs={},
                                          symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=4)),
                  make_vit()):
        res = A.analyze(model, img)
        with torch.no_grad():
            torch.testing.assert_close(res.output, model.eval()(img), rtol=1e-5, atol=1e-5)
        assert res.family == "vision" and res.layers[0].sa_attn.shape[-1] == 5  # cls + 4 patches
        assert not res.layers[0].causal


def test_analysis_follows_rope_persistent_symbols_and_hadamard(make_seq2seq_dat, make_vidat):
    """The analysis passes match the forward for the post-paper options (RoPE, persistent symbols, no symbols)."""
    src, tgt = torch.randint(0, 23, (2, 8)), torch.randint(0, 19, (2, 5))
    hadamard = dict(n_heads_sa=2, n_heads_ra=2, dff=32, activation="gelu", dropout_rate=0.0, norm_first=True,
                    ra_type="hadamard")
    for kw in (dict(pos_enc_type="RoPE", update_symbols_each_layer=False, symbol_retrieval="rel_sym_attn"),
               dict(symbol_retrieval=None, symbol_retrieval_kwargs=None, encoder_kwargs=hadamard,
                    decoder_kwargs=dict(hadamard, n_heads_cross=2, causal=True), pos_enc_type="RoPE")):
        model = make_seq2seq_dat(**kw)
        res = A.analyze(model, src, tgt)
        with torch.no_grad():
            torch.testing.assert_close(res.output, model.decode(tgt, model.encode(src)), rtol=1e-5, atol=1e-5)
    img = torch.randn(2, 3, 8, 8)
    for kw in (dict(pos_enc_type="RoPE", update_symbols_each_layer=False),
               dict(ra_type="hadamard", symbol_retrieval=None, symbol_retrieval_kwargs=None, ra_kwargs={})):
        model = make_vidat(**kw)
        res = A.analyze(model, img)
        with torch.no_grad():
            torch.testing.assert_close(res.output, model.eval()(img), rtol=1e-5, atol=1e-5)
        assert res.layers[0].ra_attn.shape == (2, 2, 5, 5)


# --------------------------------------------------------------------------------------------- datlm_utils
@pytest.mark.parametrize("variant", ["prenorm", "postnorm", "sa_only", "ra_only", "positional", "position_relative"])
def test_datlm_utils_published_shapes(make_dat_lm, variant):
    model = make_dat_lm(dropout_rate=0.1, **LM_VARIANTS[variant])
    model.train()
    x = torch.randint(0, 37, (2, 6))
    logits, d = datlm_forward_w_intermediate_results(model, x)
    assert model.training  # the published version switched to eval mode
    torch.testing.assert_close(logits, _plain_logits(model, x), rtol=1e-5, atol=1e-5)
    assert set(d) == {"symbol_attn_scores", "sa_attn_scores", "ra_attn_scores", "ra_rels"}
    assert all(len(v) == 2 for v in d.values())
    sa, ra = model.n_heads_sa, model.n_heads_ra
    assert (d["sa_attn_scores"][0] is None) == (sa == 0)
    if ra:
        assert d["ra_attn_scores"][1].shape == (2, ra, 6, 6) and d["ra_rels"][1].shape[:3] == (2, 6, 6)
    if model.symbol_retriever == "symbolic_attention":
        assert d["symbol_attn_scores"][0].shape == (2, 2, 6, 8)
    else:
        assert d["symbol_attn_scores"][0] is None


def test_datlm_utils_block_and_retriever_functions(make_dat_lm):
    model = make_dat_lm(norm_first=False, dropout_rate=0.3)
    model.train()
    block, retriever = model.layers.blocks[0], model.layers.symbol_retrievers[0]
    h, (cos, sin) = model._embed(torch.randint(0, 37, (1, 5)), None)
    symbols, attn = symbolic_attn_forward_get_weights(retriever, h)
    exp_symbols, exp_attn = retriever.forward_with_weights(h)
    torch.testing.assert_close(attn, exp_attn.detach())
    torch.testing.assert_close(symbols, exp_symbols.detach(), rtol=1e-5, atol=1e-6)
    out, sa, ra_attn, rels = block_forward_get_weights(block, h, symbols, cos, sin)
    block.eval()
    torch.testing.assert_close(out, block(h, symbols, cos, sin).detach(), rtol=1e-5, atol=1e-5)
    assert retriever.training  # restored
    assert sa.shape == (1, 2, 5, 5) and ra_attn.shape == (1, 2, 5, 5) and rels.shape == (1, 5, 5, 2)
    pos_model = make_dat_lm(symbol_retrieval="position_relative")
    sym, none = symbolic_attn_forward_get_weights(pos_model.layers.symbol_retrievers[0], h)
    assert none is None and sym.shape == (5, 5, 16)  # the published (n, n, d) form


# --------------------------------------------------------------------------------------------- postprocess
def test_postprocessors_values_and_causal_triangle():
    r = torch.tensor([[[0.5, -2.0, 3.0], [1.0, 0.2, -0.1], [-1.0, 4.0, 0.0]]])  # (1, 3, 3), [i, j]
    torch.testing.assert_close(postprocess_relations(r, "Clip", 2.0), torch.tensor([[[1.0, 0, 1], [1, 0.4, 0],
                                                                                     [0, 1, 0]]]))
    assert torch.equal(postprocess_relations(r, "Sign"), (r > 0).float())
    torch.testing.assert_close(postprocess_relations(r, "Sigmoid-Normalize", 0.5), torch.sigmoid(0.5 * r))
    sm = postprocess_relations(r, "Softmax-Normalize", 1.0, causal=True)
    assert sm[0, 0].tolist() == [1.0, 0.0, 0.0]  # receiver 0 only sees sender 0
    torch.testing.assert_close(sm[0, 1, :2], torch.softmax(torch.tensor([1.0, 0.2]), 0))
    assert float(sm[0, 1, 2]) == 0.0 and float(sm[0, 2].sum()) == pytest.approx(1.0)
    torch.testing.assert_close(postprocess_relations(r, "Softmax-Normalize"), torch.softmax(r, -1))
    attn = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.2, 0.3, 0.5]])
    scaled = scale_by_attention(torch.stack([r[0], 2 * r[0]]), attn)  # (R=2, 3, 3)
    assert float(scaled[1, 2, 1]) == pytest.approx(2 * 4.0 * 0.3) and float(scaled[0, 0, 1]) == 0.0
    with pytest.raises(ValueError, match="method='Tanh' is not valid"):
        postprocess_relations(r, "Tanh")
    with pytest.raises(ValueError, match="scale=0"):
        postprocess_relations(r, "Clip", 0)


# ---------------------------------------------------------------------------------------------- text helpers
def test_token_labels_and_stream_decoding_of_split_characters():
    from dual_attention.training.tokenizers import ByteTokenizer, CharTokenizer

    tok = ByteTokenizer()
    ids = tok.encode("a é\n$")
    assert token_labels(tok, ids) == ["a", "␣", "<c3>", "<a9>", "\\n", "$"]
    text = "h€llo wörld ✓"
    stream = TextStream(tok)
    seen = [stream.push(i) for i in tok.encode(text)]
    assert all("\ufffd" not in s for s in seen) and stream.finish() == text
    assert seen[1] == "h" and seen[3] == "h€"  # the 3-byte character appears once complete
    broken = TextStream(tok)
    broken.push(0xE2)
    assert broken.finish() == "\ufffd"
    chars = CharTokenizer("abc")
    assert token_labels(chars, [1, 4, 5, 2]) == ["<bos>", "a", "b", "<eos>"]


# ------------------------------------------------------------------------------------------------- plotting
def test_heatmap_pngs_are_written(tmp_path, make_dat_lm):
    from dual_attention.model_analysis.plotting import heatmap_grid, write_viz_pngs

    model = make_dat_lm()
    res = A.analyze(model, torch.randint(0, 37, (1, 6)))
    labels = {"blocks": list("abcde$")}
    files = write_viz_pngs(res, labels, tmp_path / "out", layers=[1], heads=[1])
    assert [f.name for f in files] == ["layer1_sa.png", "layer1_ra.png", "layer1_relations.png",
                                       "layer1_symbols.png"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 2000 for f in files)
    fig = heatmap_grid(torch.rand(20, 3, 3), list("abc"), list("xyz"), [f"t{i}" for i in range(20)])
    assert len(fig.axes) == 2 * 16  # 16 panels (+ colour bars), the rest left out
    with pytest.raises(ValueError, match="labels do not fit"):
        heatmap_grid(torch.rand(1, 3, 3), list("ab"), list("xyz"), ["t"])


# -------------------------------------------------------------------------------------------------- dat viz
@pytest.fixture
def lm_checkpoint(tmp_path, make_dat_lm):
    from dual_attention.hf import DualAttnTransformerLM_HFHub
    from dual_attention.training.tokenizers import ByteTokenizer, save_tokenizer

    model = DualAttnTransformerLM_HFHub(
        vocab_size=256, d_model=16, n_layers=2, n_heads_sa=2, n_heads_ra=2, dff=32, dropout_rate=0.0,
        activation="gelu", norm_first=False, max_block_size=16, pos_enc_type="RoPE",
        symbol_retrieval="symbolic_attention", symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=8))
    path = tmp_path / "lm"
    model.save_pretrained(path)
    save_tokenizer(ByteTokenizer(), path)
    return path


def _dat(*argv: str) -> int:
    from dual_attention.cli import main

    return main(list(argv))


def test_dat_viz_lm(lm_checkpoint, tmp_path, capsys):
    out = tmp_path / "viz"
    assert _dat("viz", str(lm_checkpoint), "--text", "the cat", "--out", str(out), "--layers", "0", "--dpi", "30",
                "--postprocess", "Sigmoid-Normalize", "--scale", "2") == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["layer0_ra.png", "layer0_relations.png", "layer0_sa.png", "layer0_symbols.png"]
    assert "7 tokens" in capsys.readouterr().out
    assert _dat("viz", str(lm_checkpoint), "--text", "x" * 17, "--out", str(out)) == 2
    assert "17 tokens; the model's context is 16" in capsys.readouterr().err
    assert _dat("viz", str(lm_checkpoint), "--text", "ab", "--out", str(out), "--layers", "5") == 2
    assert "--layers 5 is out of range" in capsys.readouterr().err
    assert _dat("viz", str(lm_checkpoint), "--out", str(out)) == 2
    assert _dat("viz", str(tmp_path / "nope"), "--text", "a", "--out", str(out)) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _dat("viz", str(lm_checkpoint), "--text", "a", "--image", "x.png", "--out", str(out)) == 2
    assert "--image is for vision models" in capsys.readouterr().err


def test_dat_viz_vision_images(tmp_path, make_vidat, capsys):
    from PIL import Image

    from dual_attention.hf import VisionDualAttnTransformer_HFHub

    model = VisionDualAttnTransformer_HFHub(
        image_shape=[3, 8, 8], patch_size=[4, 4], num_classes=5, d_model=16, n_layers=1, n_heads_sa=2, n_heads_ra=2,
        dff=32, dropout_rate=0.0, activation="gelu", norm_first=True, symbol_retrieval="position_relative",
        symbol_retrieval_kwargs=dict(symbol_dim=16, max_rel_pos=5),
        ra_kwargs=dict(use_relative_positional_symbols=True))
    ckpt = tmp_path / "vit"
    model.save_pretrained(ckpt)
    torch.save(torch.rand(3, 8, 8), tmp_path / "img.pt")
    np.save(tmp_path / "img.npy", (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8))
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "img.png")  # resized to 8x8
    for name in ("img.pt", "img.npy", "img.png"):
        out = tmp_path / f"out_{name}"
        views = [] if name == "img.pt" else ["--views", "sa"]
        assert _dat("viz", str(ckpt), "--image", str(tmp_path / name), "--out", str(out), "--dpi", "30", *views) == 0
        expected = ["layer0_ra.png", "layer0_relations.png", "layer0_sa.png"] if not views else ["layer0_sa.png"]
        assert sorted(p.name for p in out.iterdir()) == expected
    assert "5 tokens" in capsys.readouterr().out  # cls + 2x2 patches
    torch.save(torch.rand(3, 4, 4), tmp_path / "small.pt")
    assert _dat("viz", str(ckpt), "--image", str(tmp_path / "small.pt"), "--out", str(tmp_path / "o")) == 2
    assert "the model needs (C, H, W) = (3, 8, 8)" in capsys.readouterr().err
    assert _dat("viz", str(ckpt), "--text", "hi", "--out", str(tmp_path / "o")) == 2
    assert "give --image" in capsys.readouterr().err


def test_dat_viz_seq2seq(tmp_path, capsys):
    from dual_attention.hf import Seq2SeqDualAttnTransformer_HFHub
    from dual_attention.training.tokenizers import CharTokenizer, save_tokenizer

    tok = CharTokenizer("abcdef")
    model = Seq2SeqDualAttnTransformer_HFHub(
        input_spec=dict(type="token", vocab_size=tok.vocab_size), output_spec=dict(type="token",
                                                                                   vocab_size=tok.vocab_size),
        symbol_retrieval="symbolic_attention", symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=4),
        d_model=16, out_dim=tok.vocab_size, n_layers_enc=1, n_layers_dec=1,
        encoder_kwargs=dict(n_heads_sa=2, n_heads_ra=2, dff=32, activation="gelu", dropout_rate=0.0, norm_first=True),
        decoder_kwargs=dict(n_heads_sa=2, n_heads_ra=2, n_heads_cross=2, dff=32, activation="gelu",
                            dropout_rate=0.0, norm_first=True, causal=True),
        in_block_size=8, out_block_size=6)
    ckpt = tmp_path / "s2s"
    model.save_pretrained(ckpt)
    save_tokenizer(tok, ckpt)
    out = tmp_path / "out"
    assert _dat("viz", str(ckpt), "--text", "abc", "--target", "fed", "--out", str(out), "--dpi", "30") == 0
    names = sorted(p.name for p in out.iterdir())
    assert "decoder_layer0_cross.png" in names and "encoder_layer0_relations.png" in names
    assert "decoder_layer0_symbols.png" in names and len(names) == 9
    greedy = tmp_path / "greedy"
    assert _dat("viz", str(ckpt), "--text", "abc", "--out", str(greedy), "--views", "cross", "--heads", "1",
                "--dpi", "30") == 0  # greedy target
    assert sorted(p.name for p in greedy.iterdir()) == ["decoder_layer0_cross.png"]
    assert _dat("viz", str(ckpt), "--text", "abc", "--out", str(greedy), "--views", "attn") == 2
    assert "--views 'attn' is not valid" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ apps (without a browser)
def test_app_modules_import_without_side_effects(tmp_path):
    """Importing the apps does no network I/O, creates no files and does not even import gradio."""
    code = ("import sys, socket\n"
            "def no_net(*a, **k):\n    raise RuntimeError('network I/O at import')\n"
            "socket.socket.connect = no_net\n"
            "import dual_attention.model_analysis.lm_inference_app\n"
            "import dual_attention.model_analysis.lm_visualization_app\n"
            "print('gradio' in sys.modules)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert list(tmp_path.iterdir()) == []


def test_app_flags_and_launch_never_shares_by_default(monkeypatch):
    from dual_attention.model_analysis import app_common, lm_inference_app, lm_visualization_app

    parser = app_common.build_arg_parser("x", "y")
    args = parser.parse_args([])
    assert (args.host, args.port, args.share, args.model) == ("127.0.0.1", None, False, None)
    assert parser.parse_args(["--share", "--port", "7000"]).share is True
    calls = []

    class FakeApp:
        def queue(self, **kwargs):
            calls.append(("queue", kwargs))

        def launch(self, **kwargs):
            calls.append(("launch", kwargs))

    for module in (lm_inference_app, lm_visualization_app):
        calls.clear()
        monkeypatch.setattr(module, "build_app", lambda *a, **k: FakeApp())
        assert module.main(["--port", "7001"]) == 0
        launch = dict(calls)["launch"]
        assert launch["share"] is False and launch["server_name"] == "127.0.0.1" and launch["server_port"] == 7001
        calls.clear()
        assert module.main(["--share"]) == 0
        assert dict(calls)["launch"]["share"] is True


def test_generate_text_greedy_matches_model_and_validates(lm_checkpoint):
    from dual_attention.model_analysis.app_common import AppError, ModelStore
    from dual_attention.model_analysis.lm_inference_app import generate_text

    store = ModelStore("cpu")
    key, loaded = store.load(str(lm_checkpoint))
    pieces = list(generate_text(loaded, "ab", temperature=0.0, max_new_tokens=10))
    ids = loaded.model.generate(torch.tensor([[97, 98]]), 10, temperature=0.0)[0, 2:].tolist()
    assert pieces[-1] == (bytes(ids).decode("utf-8", errors="replace"), 10)
    with pytest.raises(AppError, match="prompt has 17 tokens but the model's context is 16"):
        list(generate_text(loaded, "x" * 17))
    with pytest.raises(AppError, match="enter a prompt"):
        list(generate_text(loaded, ""))
    with pytest.raises(AppError, match="temperature must be >= 0"):
        list(generate_text(loaded, "a", temperature=-1))
    sampled = [list(generate_text(loaded, "ab", temperature=1.0, top_k=5, top_p=0.9, seed=s, max_new_tokens=8))[-1]
               for s in (3, 3)]
    assert sampled[0] == sampled[1]  # seeded


def test_model_store_messages(tmp_path, lm_checkpoint, make_vidat):
    from dual_attention.hf import VisionDualAttnTransformer_HFHub
    from dual_attention.model_analysis.app_common import AppError, ModelStore

    store = ModelStore("cpu")
    with pytest.raises(AppError, match="does not exist"):
        store.load(str(tmp_path / "missing"))
    with pytest.raises(AppError, match="enter a local checkpoint"):
        store.load("  ")
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (other / "model.safetensors").write_bytes(b"")
    with pytest.raises(AppError, match="could not load"):
        store.load(str(other))
    vit = VisionDualAttnTransformer_HFHub(
        image_shape=[3, 8, 8], patch_size=[4, 4], num_classes=5, d_model=16, n_layers=1, n_heads_sa=2, n_heads_ra=2,
        dff=32, dropout_rate=0.0, activation="gelu", norm_first=True, symbol_retrieval="positional_symbols",
        symbol_retrieval_kwargs=dict(symbol_dim=16, max_length=5))
    vit.save_pretrained(tmp_path / "vit")
    with pytest.raises(AppError, match="is a vision model .* needs a language model"):
        store.load(str(tmp_path / "vit"))
    with pytest.raises(AppError, match="no model loaded"):
        store.get(None)
    key, loaded = store.load(str(lm_checkpoint))
    assert store.get(key) is loaded and store.load(str(lm_checkpoint))[1] is loaded  # cached


def test_visualizer_render_and_bertviz_glue(lm_checkpoint, monkeypatch):
    from dual_attention.model_analysis import lm_visualization_app as V
    from dual_attention.model_analysis.app_common import AppError, ModelStore

    _, loaded = ModelStore("cpu").load(str(lm_checkpoint))
    dims = V.model_dims(loaded.model)
    assert dims == dict(n_layers=2, sa=2, ra=2, relations=2, symbolic=True, views=list(V.VIEWS))
    result = V.run_analysis(loaded, "abc")
    assert result["labels"] == ["a", "b", "c"]
    fig = V.render_view(result, "Relations × RA attention", "1", "all", "0", "1", "Softmax-Normalize", 3.0)
    assert len(fig.axes) == 2  # one relation + its colour bar
    assert V.token_table(result, "0")[2][:2] == [2, "c"] and len(V.token_table(result, "0")[0]) == 4
    with pytest.raises(AppError, match="2 relational attention heads"):
        V.render_view(result, "Relational attention", "0", "3", "all", "0")
    with pytest.raises(AppError, match="context is 16 tokens"):
        V.run_analysis(loaded, "y" * 20)
    with pytest.raises(AppError, match="run a forward pass first"):
        V.render_view(None, "Relations", "0", "all", "all", "0")
    calls = {}

    def head_view(attention, tokens, html_action):
        calls.update(attention=attention, tokens=tokens, html_action=html_action)
        return types.SimpleNamespace(data="<html>head view</html>")

    monkeypatch.setitem(sys.modules, "bertviz", types.SimpleNamespace(head_view=head_view, model_view=head_view))
    html = V.bertviz_html(result, "Relations", "Head view", "Clip", 1.0)
    assert html == "<html>head view</html>" and calls["tokens"] == ["a", "b", "c"]
    maps = calls["attention"]
    assert len(maps) == 2 and maps[0].shape == (1, 2, 3, 3)
    rel = result["analysis"].layers[0].relations  # bertviz's [b, head, from=i, to=j] = r(x_i, x_j), clipped
    torch.testing.assert_close(maps[0][0, 1], rel[0, :, :, 1].clamp(0, 1))
    with pytest.raises(AppError, match="bertviz shows attention-like maps"):
        V.bertviz_html(result, "Symbol retrieval", "Model view")


def test_apps_build_without_launching(lm_checkpoint):
    pytest.importorskip("gradio")
    from dual_attention.model_analysis import lm_inference_app, lm_visualization_app

    for module in (lm_inference_app, lm_visualization_app):
        app = module.build_app(str(lm_checkpoint), "cpu")
        assert type(app).__name__ == "Blocks"
        app = module.build_app("/definitely/missing", "cpu")  # the error is shown in the page, no exception
        assert type(app).__name__ == "Blocks"


# ---------------------------------------------------------------------------------- models: forward_intermediates
def test_models_report_their_own_intermediates(make_dat_lm, make_transformer_lm, make_seq2seq_dat, make_vidat):
    """``forward_intermediates`` of each family: typed per-block results, the forward's output (float64)."""
    from dual_attention.intermediates import Intermediates, LayerIntermediates

    lm = make_dat_lm(ra_kwargs=dict(rel_activation="softmax")).to(torch.float64).eval()
    x = torch.randint(0, 37, (2, 9))
    with torch.no_grad():
        res = lm.forward_intermediates(x)
        logits = lm(x)[0]
    assert isinstance(res, Intermediates) and all(isinstance(layer, LayerIntermediates) for layer in res.layers)
    torch.testing.assert_close(res.output, logits, rtol=0, atol=1e-10)
    assert [layer.index for layer in res.layers] == [0, 1] and all(layer.causal for layer in res.layers)
    first = res.layers[0]
    assert first.relations.shape == (2, 9, 9, lm.layers.blocks[0].dual_attn.relational_attention.n_relations)
    torch.testing.assert_close(first.relations.sum(2), torch.ones_like(first.relations.sum(2)))  # over senders j
    assert (first.relations[:, 0, 1:] == 0).all()  # causal: the first receiver's only sender is itself
    h0, _ = lm._embed(x, None)
    symbols = lm.layers.symbol_retrievers[0](h0)
    torch.testing.assert_close(first.symbols, symbols, rtol=0, atol=1e-12)  # what the first block received

    tlm = make_transformer_lm().to(torch.float64).eval()
    with torch.no_grad():
        res = tlm.forward_intermediates(x)
        torch.testing.assert_close(res.output, tlm(x)[0], rtol=0, atol=1e-10)
    assert res.layers[0].sa_attn.shape[-2:] == (9, 9) and res.layers[0].relations is None

    s2s = make_seq2seq_dat().to(torch.float64).eval()
    src, tgt = torch.randint(0, 23, (2, 7)), torch.randint(0, 19, (2, 5))
    with torch.no_grad():
        res = s2s.forward_intermediates(src, tgt)
        torch.testing.assert_close(res.output, s2s(src, tgt, targets=tgt)[0], rtol=0, atol=1e-10)
    assert [layer.stack for layer in res.layers] == ["encoder"] * s2s.n_layers_enc + ["decoder"] * s2s.n_layers_dec
    assert res.layers[-1].cross_attn.shape[-2:] == (5, 7)

    vit = make_vidat().to(torch.float64).eval()  # images (B, 3, 8, 8)
    img = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        res = vit.forward_intermediates(img)
        torch.testing.assert_close(res.output, vit(img), rtol=0, atol=1e-10)
    assert len(res.layers) == vit.n_layers and res.layers[0].ra_attn.shape[-2:] == (5, 5)  # cls + 4 patches
