"""Options from the authors' research code after 0.0.7: ``symmetric_attn`` (W_k = W_q), persistent symbols
(``update_symbols_each_layer=False``) and RoPE in the seq2seq and vision models; each tested for what it means, for
its checkpoint round trip and for its ``dat train`` config field."""

from __future__ import annotations

import pytest
import torch

from dual_attention import hf
from dual_attention.attention import Attention
from dual_attention.attention_utils import precompute_freqs_cis
from dual_attention.dual_attention import DualAttention
from dual_attention.training.config import ModelConfig
from dual_attention.training.models import build_model


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


# ------------------------------------------------------------------------------------------------ symmetric_attn
@pytest.mark.parametrize("ra_type,q,k", [("relational_attention", "wq_attn", "wk_attn"), ("rca", "wq", "wk"),
                                         ("disrca", "wq_attn", "wk_attn")])
def test_symmetric_attn_ties_query_and_key_of_both_halves(ra_type, q, k):
    tied = DualAttention(16, 2, 2, 0.0, sa_kwargs=dict(symmetric_attn=True), ra_kwargs=dict(symmetric_attn=True),
                         ra_type=ra_type)
    plain = DualAttention(16, 2, 2, 0.0, ra_type=ra_type)
    sa, ra = tied.self_attention, tied.relational_attention
    assert sa.wk is sa.wq and getattr(ra, k) is getattr(ra, q)
    assert sa.wk.weight is sa.wq.weight  # the same tensor, so it stays tied through any update
    assert list(tied.state_dict()) == list(plain.state_dict())  # same keys, the key entries alias the queries
    sd = tied.state_dict()
    assert sd["self_attention.wk.weight"].data_ptr() == sd["self_attention.wq.weight"].data_ptr()
    n_unique = sum(p.numel() for p in tied.parameters())
    assert n_unique == sum(p.numel() for p in plain.parameters()) - 2 * 16 * 8


def test_symmetric_attention_scores_are_symmetric():
    """Without RoPE the logits ⟨W_q x_i, W_q x_j⟩ are symmetric: α_ij Z_i = α_ji Z_j (Z: the softmax normaliser)."""
    att = Attention(16, 2, 0.0, symmetric_attn=True).double()
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    _, w = att(x, x, x, need_weights=True)  # (1, H, n, n)
    q = att.wq(x).view(1, 6, 2, 8).transpose(1, 2)
    logz = torch.logsumexp(q @ q.transpose(-1, -2) * att.attn_scale, dim=-1, keepdim=True)  # (1, H, n, 1)
    logits = torch.log(w) + logz
    torch.testing.assert_close(logits, logits.transpose(-1, -2))


def test_symmetric_attn_in_a_trained_lm_stays_tied(make_dat_lm):
    model = make_dat_lm(sa_kwargs=dict(symmetric_attn=True), ra_kwargs=dict(symmetric_attn=True))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, model.vocab_size, (2, 12))
    model(x, x)[1].backward()
    opt.step()
    for block in model.layers.blocks:
        da = block.dual_attn
        assert torch.equal(da.self_attention.wk.weight, da.self_attention.wq.weight)
        assert da.relational_attention.wk_attn.weight is da.relational_attention.wq_attn.weight


def test_symmetric_attn_errors():
    with pytest.raises(ValueError, match="symmetric_attn=True ties wk to wq: it needs n_kv_heads == n_heads"):
        Attention(16, 2, 0.0, n_kv_heads=1, symmetric_attn=True)
    with pytest.raises(TypeError, match="symmetric_attn must be a bool"):
        Attention(16, 2, 0.0, symmetric_attn=1)
    with pytest.raises(ValueError, match="ra_kwargs\\['symmetric_attn'\\]=True ties wk_attn to wq_attn"):
        DualAttention(16, 2, 2, 0.0, ra_kwargs=dict(symmetric_attn=True, n_kv_heads=1))
    with pytest.raises(TypeError, match="ra_kwargs\\['symmetric_attn'\\] must be a bool"):
        DualAttention(16, 2, 2, 0.0, ra_kwargs=dict(symmetric_attn="yes"))
    with pytest.raises(ValueError, match="share_attn_params=True needs the same symmetric_attn"):
        DualAttention(16, 2, 2, 0.0, ra_kwargs=dict(symmetric_attn=True), share_attn_params=True)


# ------------------------------------------------------------------------------------------- persistent symbols
def _count_retrievals(retriever, monkeypatch) -> list:
    calls = []
    original = retriever.retrieve

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(retriever, "retrieve", counting)
    return calls


@pytest.mark.parametrize("retrieval", ["symbolic_attention", "positional_symbols", "position_relative"])
def test_lm_persistent_symbols_are_one_retrieval_from_the_embeddings(make_dat_lm, retrieval, monkeypatch):
    model = make_dat_lm(symbol_retrieval=retrieval, update_symbols_each_layer=False, n_layers=3).double().eval()
    x = torch.randint(0, model.vocab_size, (2, 10))
    retriever = model.layers.symbol_retrievers[0]
    with torch.no_grad():
        h, freqs = model._embed(x, None)
        symbols = retriever.retrieve(h, None)
        for block in model.layers.blocks:  # the definition: the same symbols for every layer
            h = block(h, symbols, *freqs)
        expected = model.layers.final_out(model.layers.norm(h))
        calls = _count_retrievals(retriever, monkeypatch)
        logits, _ = model(x)
    assert len(calls) == 1
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-12)
    if retrieval == "symbolic_attention":  # the published per-layer retrieval gives another function
        per_layer = make_dat_lm(symbol_retrieval=retrieval, n_layers=3).double().eval()
        per_layer.load_state_dict(model.state_dict())
        with torch.no_grad():
            assert not torch.allclose(per_layer(x)[0], logits)


def test_lm_persistent_symbols_cached_decoding(make_dat_lm):
    model = make_dat_lm(update_symbols_each_layer=False, max_block_size=40).double().eval()
    x = torch.randint(0, model.vocab_size, (2, 20))
    cache = model.init_kv_cache(2, 20)
    with torch.no_grad():
        full, _ = model(x)
        steps = [model(x[:, :4], kv_cache=cache, input_pos=torch.arange(4))[0]]
        steps += [model(x[:, i:i + 1], kv_cache=cache, input_pos=torch.tensor([i]))[0] for i in range(4, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)


def test_seq2seq_and_vision_persistent_symbols(make_seq2seq_dat, make_vidat, monkeypatch):
    model = make_seq2seq_dat(update_symbols_each_layer=False).double().eval()
    src, tgt = torch.randint(0, 23, (2, 9)), torch.randint(0, 19, (2, 7))
    retriever = model.layers.symbol_retriever
    with torch.no_grad():
        h = model._embed(src, "source")
        s = retriever.retrieve(h)
        for block in model.layers.encoder_blocks:
            h = block(h, s)
        g = model._embed(tgt, "target")
        s = retriever.retrieve(g)
        for block in model.layers.decoder_blocks:
            g = block(g, h, s)
        expected = model.layers.final_out(g)
        calls = _count_retrievals(retriever, monkeypatch)
        logits = model.decode(tgt, model.encode(src))
    assert len(calls) == 2  # once for the source, once for the target
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-12)

    vision = make_vidat(update_symbols_each_layer=False).double().eval()
    img = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        x = vision.embed(img)
        s = vision.symbol_retriever.retrieve(x)
        for block in vision.encoder_blocks:
            x = block(x, s)
        expected = vision.final_out(x[:, 0])
        calls = _count_retrievals(vision.symbol_retriever, monkeypatch)
        out = vision(img)
    assert len(calls) == 1
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_persistent_symbols_errors(make_dat_lm):
    with pytest.raises(TypeError, match="update_symbols_each_layer must be a bool"):
        make_dat_lm(update_symbols_each_layer="no")
    with pytest.raises(ValueError, match="update_symbols_each_layer=False .* needs symbol_retriever_config"):
        make_dat_lm(update_symbols_each_layer=False, symbol_retriever_config=dict(shared_symbol_retriever=False))


# ----------------------------------------------------------------------------------------- RoPE: vision, seq2seq
@pytest.mark.parametrize("dat", [True, False])
def test_vision_rope_rotates_by_the_token_index(make_vidat, dat):
    from dual_attention.vision_models import VisionTransformer

    if dat:
        model = make_vidat(pos_enc_type="RoPE").double().eval()
        head_dim = 16 // 4
    else:
        model = VisionTransformer((3, 8, 8), (4, 4), 5, 16, 2, 4, 32, 0.0, "gelu", True, pos_enc_type="RoPE")
        model = model.double().eval()
        head_dim = 4
    assert not any(k == "pos_embedding" or "freqs" in k for k in model.state_dict())
    cos, sin = precompute_freqs_cis(head_dim, 5)  # cls + 4 patches, row by row
    torch.testing.assert_close(model.freqs_cos, cos.double())
    img = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        x = model.to_patch_embedding(img)
        x = torch.cat([model.cls_token.expand(2, -1, -1), x], dim=1)  # no additive position
        for block in model.encoder_blocks:
            args = (x, model.symbol_retriever.retrieve(x)) if dat else (x,)
            x = block(*args, freqs_cos=cos, freqs_sin=sin)
        expected = model.final_out(x[:, 0])
        torch.testing.assert_close(model(img), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dat", [True, False])
def test_seq2seq_rope(make_seq2seq_dat, make_seq2seq_transformer, dat):
    model = (make_seq2seq_dat if dat else make_seq2seq_transformer)(pos_enc_type="RoPE").double().eval()
    assert not any("pos_embedder" in k or "freqs" in k for k in model.state_dict())
    src, tgt = torch.randint(0, 23, (2, 9)), torch.randint(0, 19, (2, 7))
    with torch.no_grad():
        ctx = model.encode(src)
        full = model.decode(tgt, ctx)
        cache = torch.nn.ModuleList(b.init_kv_cache(2, 7, dtype=torch.float64) for b in model.layers.decoder_blocks)
        steps = [model.decode(tgt[:, i:i + 1], ctx, kv_cache=cache, input_pos=torch.tensor([i])) for i in range(7)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)
        # RoPE makes self-attention see relative positions only: the embeddings carry no position (√d scale only)
        torch.testing.assert_close(model._embed(src, "source"), model.layers.source_embedder(src) * 4.0)
        # causality survives: changing the last target token leaves the earlier logits unchanged
        tgt2 = tgt.clone()
        tgt2[:, -1] = (tgt2[:, -1] + 1) % 19
        torch.testing.assert_close(model.decode(tgt2, ctx)[:, :-1], full[:, :-1], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="pos_enc_type='rope' is not valid; allowed values: 'sinusoidal', 'RoPE'"):
        make_seq2seq_dat(pos_enc_type="rope")


def test_rope_needs_matching_key_dim(make_vidat):
    with pytest.raises(ValueError, match="pos_enc_type='RoPE' needs every attention's key_dim"):
        make_vidat(pos_enc_type="RoPE", sa_kwargs=dict(key_dim=6))


# ----------------------------------------------------------------------------------------- checkpoints, config
def test_round_trips_of_every_option(tmp_path):
    lm = hf.DualAttnTransformerLM_HFHub(
        vocab_size=37, d_model=16, n_layers=2, n_heads_sa=2, n_heads_ra=2, dff=32, dropout_rate=0.0,
        activation="gelu", norm_first=True, max_block_size=24, pos_enc_type="RoPE",
        symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=8), update_symbols_each_layer=False,
        sa_kwargs=dict(symmetric_attn=True), ra_kwargs=dict(symmetric_attn=True, symmetric_rels=True))
    s2s = hf.Seq2SeqDualAttnTransformer_HFHub(
        input_spec=dict(type="token", vocab_size=23), output_spec=dict(type="token", vocab_size=19),
        symbol_retrieval="symbolic_attention", symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=4),
        d_model=16, out_dim=19, n_layers_enc=1, n_layers_dec=2, in_block_size=16, out_block_size=16,
        encoder_kwargs=dict(n_heads_sa=2, n_heads_ra=2, dff=32, activation="gelu", dropout_rate=0.0, norm_first=True,
                            ra_type="disrca", ra_kwargs=dict(symmetric_attn=True)),
        decoder_kwargs=dict(n_heads_sa=2, n_heads_ra=2, n_heads_cross=4, dff=32, activation="gelu",
                            dropout_rate=0.0, norm_first=True, ra_type="rca"),
        update_symbols_each_layer=False, pos_enc_type="RoPE")
    vit = hf.VisionTransformer_HFHub(image_shape=(3, 8, 8), patch_size=(4, 4), num_classes=5, d_model=16, n_layers=2,
                                     n_heads=4, dff=32, dropout_rate=0.0, activation="gelu", norm_first=True,
                                     pos_enc_type="RoPE")
    inputs = [(torch.randint(0, 37, (2, 10)),), (torch.randint(0, 23, (2, 9)), torch.randint(0, 19, (2, 5))),
              (torch.randn(2, 3, 8, 8),)]
    for i, (model, args) in enumerate(zip((lm, s2s, vit), inputs)):
        _perturb(model).eval().save_pretrained(tmp_path / str(i))
        loaded = hf.load_pretrained(tmp_path / str(i))
        assert type(loaded) is type(model)
        ref = model.state_dict()
        assert list(loaded.state_dict()) == list(ref)
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, ref[key]), key
        with torch.no_grad():
            out, expected = loaded(*args), model(*args)
        out, expected = (out[0], expected[0]) if isinstance(out, tuple) else (out, expected)
        assert torch.equal(out, expected)
        ptrs = lambda m: len({t.data_ptr() for t in m.state_dict().values()})  # noqa: E731
        assert ptrs(loaded) == ptrs(model)  # ties restored
    assert not loaded.training and loaded.pos_enc_type == "RoPE"


CONFIG_CASES = [
    ("lm", dict(ra_type="hadamard", qk_norm=True, symbol_retrieval="none", n_kv_heads=2)),
    ("lm", dict(symmetric_attn=True, update_symbols_each_layer=False)),
    ("seq2seq", dict(pos_enc_type="RoPE", ra_type="hadamard", symmetric_attn=True)),
    ("vision", dict(pos_enc_type="RoPE", update_symbols_each_layer=False, symmetric_attn=True)),
]


@pytest.mark.parametrize("family,fields", CONFIG_CASES)
def test_dat_train_config_fields_build_the_options(family, fields):
    sizes = dict(vocab_size=37, max_block_size=16, in_block_size=12, out_block_size=12, image_shape=[3, 8, 8],
                 num_classes=5, d_model=16, n_symbols=8, symbol_heads=2)
    model = build_model(ModelConfig(family=family, arch="dat", **sizes, **fields))
    blocks = {"lm": lambda m: m.layers.blocks, "seq2seq": lambda m: m.layers.encoder_blocks,
              "vision": lambda m: m.encoder_blocks}[family](model)
    da = blocks[0].dual_attn
    if fields.get("ra_type") == "hadamard":
        had = da.hadamard_attention
        assert had.qk_norm == fields.get("qk_norm", False) and had.symmetric_attn == fields.get("symmetric_attn", False)
        assert had.use_symbols == (fields.get("symbol_retrieval") != "none")
    if fields.get("symmetric_attn") and fields.get("ra_type") != "hadamard":
        assert da.self_attention.wk is da.self_attention.wq
        assert da.relational_attention.wk_attn is da.relational_attention.wq_attn
    assert model.update_symbols_each_layer == fields.get("update_symbols_each_layer", True)
    if family != "lm":
        assert model.pos_enc_type == fields.get("pos_enc_type", "pos_emb" if family == "vision" else "sinusoidal")


def test_qk_norm_needs_hadamard_in_the_config():
    from dual_attention.training.config import ConfigError
    from dual_attention.training.models import model_kwargs

    with pytest.raises(ConfigError, match="model.qk_norm=true needs model.ra_type=hadamard"):
        model_kwargs(ModelConfig(vocab_size=37, qk_norm=True))


@pytest.mark.parametrize("family", ["lm", "seq2seq", "vision"])
def test_tiny_hadamard_presets_train_and_reload(family, tmp_path):
    """``dat train <family>-tiny-hadamard``: the model is Hadamard-DAT without symbols, it learns, its checkpoint
    reloads to the same outputs."""
    from dual_attention.hf import load_pretrained
    from dual_attention.training.config import load_config
    from dual_attention.training.trainer import train

    cfg = load_config(f"{family}-tiny-hadamard", [
        "model.d_model=32", "model.n_layers=1", "model.dff=64", "model.max_block_size=16", "train.batch_size=8",
        "train.eval_iters=2", "train.progress=false", "data.synthetic_size=400", "optim.warmup_iters=2",
        "train.max_iters=6", "train.eval_interval=6", "optim.learning_rate=5e-3"])
    cfg.train.out_dir = str(tmp_path / "run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = train(cfg, verbose=False)
    finally:
        torch.set_num_threads(threads)
    blocks = {"lm": lambda m: m.layers.blocks, "seq2seq": lambda m: m.layers.decoder_blocks,
              "vision": lambda m: m.encoder_blocks}[family](res.model)
    had = blocks[0].dual_attn.hadamard_attention
    assert had.qk_norm and not had.use_symbols
    val = [r["loss"] for r in res.history if r["split"] == "val"]
    assert val[-1] < val[0]
    loaded = load_pretrained(tmp_path / "run" / "checkpoint")
    assert list(loaded.state_dict()) == list(res.model.state_dict())
    for key, value in res.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key].to(value.device), value), key
