"""Building blocks and model-level behaviour: the published package's bugs (API §18) are fixed, utilities match
their definitions, and the training helpers (parameter counts, optimizer groups, MFU) work for every family."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from dual_attention import language_models, seq2seq_models, vision_models
from dual_attention.attention_utils import (
    apply_rotary_emb,
    compute_causal_mask,
    compute_diag_mask,
    precompute_freqs_cis,
    repeat_kv,
)
from dual_attention.dual_attention import DualAttention
from dual_attention.dual_attn_blocks import DualAttnDecoderBlock, DualAttnEncoderBlock
from dual_attention.model_utils import get_activation_function
from dual_attention.positional_encoding import RelativePositionalEncoding, SinusoidalPositionalEncoding
from dual_attention.relational_attention import DisentangledRelationalCrossAttention, RelationalCrossAttention
from dual_attention.symbol_retrieval import (
    PositionalSymbolRetriever,
    PositionRelativeSymbolRetriever,
    SymbolicAttention,
)
from dual_attention.transformer_blocks import DecoderBlock, EncoderBlock, FeedForwardBlock, RMSNorm, create_norm


# ------------------------------------------------------------------------------------------------------ utilities
def test_repeat_kv_is_repeat_interleave():
    x = torch.randn(2, 3, 2, 4)
    out = repeat_kv(x, 3)
    assert out.shape == (2, 3, 6, 4)
    for h in range(6):
        assert torch.equal(out[:, :, h], x[:, :, h // 3])
    assert repeat_kv(x, 1) is x


def test_precompute_freqs_cis_and_rotary_embedding():
    cos, sin = precompute_freqs_cis(8, 5, theta=100.0)
    assert cos.shape == sin.shape == (5, 4) and cos.dtype == torch.float32
    for p in range(5):
        for k in range(4):
            angle = p * 100.0 ** (-2 * k / 8)
            assert cos[p, k].item() == pytest.approx(math.cos(angle), abs=1e-6)
            assert sin[p, k].item() == pytest.approx(math.sin(angle), abs=1e-6)
    q, k = torch.randn(1, 5, 2, 8), torch.randn(1, 5, 1, 8)
    q2, k2 = apply_rotary_emb(q, k, cos, sin)
    assert k2.shape == k.shape
    # interleaved pairs: (x0, x1) at position 1, frequency 0 rotate by angle 1
    c, s = math.cos(1.0), math.sin(1.0)
    torch.testing.assert_close(q2[0, 1, 0, 0], q[0, 1, 0, 0] * c - q[0, 1, 0, 1] * s)
    torch.testing.assert_close(q2[0, 1, 0, 1], q[0, 1, 0, 0] * s + q[0, 1, 0, 1] * c)
    torch.testing.assert_close(q2.norm(dim=-1), q.norm(dim=-1))  # a rotation
    # relative: <RoPE(q)_i, RoPE(k)_j> depends on i - j only
    v = torch.randn(8)
    a, b = apply_rotary_emb(v.expand(1, 5, 1, 8), v.expand(1, 5, 1, 8), cos, sin)
    torch.testing.assert_close((a[0, 3, 0] * b[0, 1, 0]).sum(), (a[0, 4, 0] * b[0, 2, 0]).sum())
    # bf16 in -> bf16 out, float64 stays float64
    assert apply_rotary_emb(q.bfloat16(), k.bfloat16(), cos, sin)[0].dtype == torch.bfloat16
    assert apply_rotary_emb(q.double(), k.double(), cos, sin)[0].dtype == torch.float64


def test_masks():
    assert compute_causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert compute_diag_mask(2).tolist() == [[False, True], [True, False]]


def test_activations():
    x = torch.linspace(-3, 3, 11)
    torch.testing.assert_close(get_activation_function("gelu")(x), torch.nn.functional.gelu(x, approximate="tanh"))
    torch.testing.assert_close(get_activation_function("softmax")(x[None]).sum(), torch.tensor(1.0))
    assert isinstance(get_activation_function("identity"), torch.nn.Identity)


def test_rmsnorm_and_norms():
    x = torch.randn(2, 3, 8)
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.mul_(2.0)
    torch.testing.assert_close(norm(x), 2 * x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5))
    assert isinstance(create_norm(8, "layernorm"), torch.nn.LayerNorm)
    assert isinstance(create_norm(8, "none"), torch.nn.Identity)


def test_feed_forward_block():
    ff = FeedForwardBlock(12, activation="swiglu")
    assert ff.dff == int(2 / 3 * 4 * 12) and hasattr(ff, "linear3")
    x = torch.randn(2, 3, 12)
    torch.testing.assert_close(ff(x), ff.linear2(torch.nn.functional.silu(ff.linear1(x)) * ff.linear3(x)))
    ff = FeedForwardBlock(12, activation="relu", use_bias=True)
    assert ff.dff == 48 and not hasattr(ff, "linear3") and ff.linear1.bias is not None
    torch.testing.assert_close(ff(x), ff.linear2(torch.relu(ff.linear1(x))))


def test_positional_encodings_and_retrievers():
    pe = SinusoidalPositionalEncoding(6, dropout=0.0, max_len=10)
    x = torch.zeros(1, 4, 6)
    out = pe(x)
    for p in range(4):
        for k in range(3):
            assert out[0, p, 2 * k].item() == pytest.approx(math.sin(p / 10000 ** (2 * k / 6)), abs=1e-6)
            assert out[0, p, 2 * k + 1].item() == pytest.approx(math.cos(p / 10000 ** (2 * k / 6)), abs=1e-6)
    torch.testing.assert_close(pe(torch.ones(1, 4, 6)) - out, math.sqrt(6) * torch.ones(1, 4, 6))  # x scaled
    rel = RelativePositionalEncoding(3, max_rel_pos=2)
    table = rel(4, 5)
    for i in range(4):
        for j in range(5):
            assert torch.equal(table[i, j], rel.rel_pos_embeddings[min(max(j - i, -2), 2) + 2])
    retriever = PositionRelativeSymbolRetriever(3, 2)
    assert torch.equal(retriever(torch.zeros(2, 4, 7)), retriever.relative_symbols().materialize(4))
    pos = PositionalSymbolRetriever(3, 6)
    s = pos(torch.zeros(2, 4, 9))
    assert s.shape == (2, 4, 3) and torch.equal(s[1], pos.symbol_library.weight[:4])


# --------------------------------------------------------------------------------------------- §18 bug fixes
def test_seq2seq_dat_decoder_has_n_layers_dec_blocks(make_seq2seq_dat):
    model = make_seq2seq_dat(n_layers_enc=2, n_layers_dec=3)
    assert len(model.layers.encoder_blocks) == 2 and len(model.layers.decoder_blocks) == 3
    assert all(isinstance(b, DualAttnDecoderBlock) for b in model.layers.decoder_blocks)
    _, loss = model(torch.randint(0, 23, (2, 5)), torch.randint(0, 19, (2, 4)), torch.randint(0, 19, (2, 4)))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("family", ["dat", "transformer"])
def test_seq2seq_tie_weights_ties(family, make_seq2seq_dat, make_seq2seq_transformer):
    make = make_seq2seq_dat if family == "dat" else make_seq2seq_transformer
    model = make()
    assert model.layers.target_embedder.weight is model.layers.final_out.weight
    sd = model.state_dict()  # the published alias keys are still written, aliasing final_out
    assert sd["layers.target_embedder.weights.weight"].data_ptr() == sd["layers.final_out.weight"].data_ptr()
    assert sd["layers.target_embedder.weights.bias"].data_ptr() == sd["layers.final_out.bias"].data_ptr()
    untied = make(tie_weights=False)
    assert untied.layers.target_embedder.weight is not untied.layers.final_out.weight
    assert "layers.target_embedder.weights.weight" not in untied.state_dict()
    # shapes that cannot be tied (vocab_size != out_dim): left untied, no error
    odd = make(output_spec=dict(type="token", vocab_size=7))
    assert not odd.weights_tied
    # a gradient step moves the shared matrix for both uses
    src, y = torch.randint(0, 23, (2, 5)), torch.randint(0, 19, (2, 4))
    model(src, y, y)[1].backward()
    assert model.layers.final_out.weight.grad is model.layers.target_embedder.weight.grad


def test_decoder_blocks_honour_n_heads_cross():
    block = DecoderBlock(16, n_heads=2, n_heads_cross=8, dff=32, dropout_rate=0.0, activation="relu",
                         norm_first=True)
    assert block.self_attn.n_heads == 2 and block.cross_attn.n_heads == 8 and block.cross_attn.head_dim == 2
    dual = DualAttnDecoderBlock(16, 2, 2, n_heads_cross=8, dff=32, activation="relu", dropout_rate=0.0,
                                norm_first=True)
    assert dual.cross_attn.n_heads == 8
    out = block(torch.randn(2, 3, 16), torch.randn(2, 5, 16), return_weights=True)[1]["cross"]
    assert out.shape == (2, 8, 3, 5)


def test_symbolic_attention_no_dropout_in_eval():
    layer = SymbolicAttention(16, 2, 8, dropout=0.5)
    x = torch.randn(2, 5, 16)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x), rtol=0, atol=0)
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


@pytest.mark.parametrize("family", ["dat", "transformer"])
def test_lm_embedding_dropout_is_applied_in_training(family, make_dat_lm, make_transformer_lm):
    model = (make_dat_lm if family == "dat" else make_transformer_lm)(dropout_rate=0.5)
    for name, module in model.named_modules():  # keep only the embedding dropout
        if isinstance(module, torch.nn.Dropout) and name != "layers.dropout":
            module.p = 0.0
    for module in model.modules():  # attention layers pass their float `dropout` to the fused kernels
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    x = torch.randint(0, model.vocab_size, (2, 10))
    eval_logits = model.eval()(x)[0]
    model.train()
    assert not torch.allclose(model(x)[0], eval_logits)
    model.layers.dropout.p = 0.0
    torch.testing.assert_close(model(x)[0], eval_logits)


@pytest.mark.parametrize("activation", ["swiglu", "gelu"])
@pytest.mark.parametrize("family", ["dat", "transformer"])
def test_residual_scaled_init_hits_the_down_projection(family, activation, make_dat_lm, make_transformer_lm):
    n_layers = 4
    common = dict(d_model=128, dff=512, n_layers=n_layers, activation=activation, vocab_size=64)
    if family == "dat":
        model = make_dat_lm(**common, symbol_retrieval_kwargs=dict(d_model=128, n_heads=2, n_symbols=8))
    else:
        model = make_transformer_lm(**common)
    residual = 0.02 / math.sqrt(2 * n_layers)
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, p in params.items():
        std = p.detach().std().item()
        if name.endswith("ff_block.linear2.weight") or name.endswith("wo.weight"):
            assert std == pytest.approx(residual, rel=0.1), name
        elif name.endswith("linear1.weight") or name.endswith("linear3.weight") or name.endswith("wq.weight"):
            assert std == pytest.approx(0.02, rel=0.1), name
    assert params["layers.final_out.weight"].std().item() == pytest.approx(0.02, rel=0.1)


def _mutation_cases(make_dat_lm, make_transformer_lm, make_seq2seq_dat, make_vidat):
    enc = dict(n_heads_sa=2, n_heads_ra=2, dff=32, activation="gelu", dropout_rate=0.0, norm_first=True,
               ra_kwargs=dict(n_relations=4), sa_kwargs=dict(n_kv_heads=1))
    dec = dict(enc, n_heads_cross=2, cross_kwargs=dict(add_bias_kv=True))
    return [
        (make_dat_lm, dict(sa_kwargs=dict(n_kv_heads=1), ra_kwargs=dict(n_relations=4),
                           symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=8),
                           symbol_retriever_config=dict(shared_symbol_retriever=False))),
        (make_dat_lm, dict(symbol_retriever_config={})),
        (make_transformer_lm, dict(block_kwargs=dict(attn_kwargs=dict(n_kv_heads=2)))),
        (make_seq2seq_dat, dict(encoder_kwargs=enc, decoder_kwargs=dec, input_spec=dict(type="token", vocab_size=23),
                                symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=8))),
        (make_vidat, dict(ra_kwargs=dict(symmetric_rels=True, use_relative_positional_symbols=True),
                          sa_kwargs=dict(n_kv_heads=1), symbol_retrieval_kwargs=dict(symbol_dim=16, max_rel_pos=5))),
        (DualAttention, dict(d_model=16, n_heads_sa=2, n_heads_ra=2, dropout=0.0, sa_kwargs=dict(key_dim=4),
                             ra_kwargs=dict(rel_proj_dim=3))),
        (EncoderBlock, dict(d_model=16, n_heads=2, dff=8, dropout_rate=0.0, activation="relu", norm_first=True,
                            attn_kwargs=dict(n_kv_heads=1))),
        (DualAttnDecoderBlock, dict(d_model=16, n_heads_sa=2, n_heads_ra=2, n_heads_cross=2, dff=8,
                                    activation="relu", dropout_rate=0.0, norm_first=True,
                                    cross_kwargs=dict(n_kv_heads=1))),
    ]


def test_caller_dicts_are_not_mutated(make_dat_lm, make_transformer_lm, make_seq2seq_dat, make_vidat):
    for factory, kwargs in _mutation_cases(make_dat_lm, make_transformer_lm, make_seq2seq_dat, make_vidat):
        before = copy.deepcopy(kwargs)
        model = factory(**kwargs)
        assert kwargs == before, f"{type(model).__name__} mutated its arguments"
    config = {}
    model = make_dat_lm(symbol_retriever_config=config)
    assert config == {} and model.symbol_retriever_config == {"shared_symbol_retriever": True,
                                                               "weight_tie_symbol_library": False}


@pytest.mark.parametrize("family", ["dat", "transformer"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_temperature_zero_is_greedy(family, use_cache, make_dat_lm, make_transformer_lm):
    model = (make_dat_lm() if family == "dat" else make_transformer_lm()).eval()
    prompt = torch.randint(0, model.vocab_size, (2, 4))
    out = model.generate(prompt, 6, temperature=0.0, use_cache=use_cache)
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("ra_type,cls", [("rca", RelationalCrossAttention),
                                          ("disrca", DisentangledRelationalCrossAttention)])
def test_ablation_ra_types_in_lm(ra_type, cls, make_dat_lm):
    model = make_dat_lm(ra_type=ra_type, ra_kwargs=dict(n_kv_heads=1))
    assert all(isinstance(b.dual_attn.relational_attention, cls) for b in model.layers.blocks)
    x = torch.randint(0, model.vocab_size, (2, 8))
    logits, loss = model(x, x)
    loss.backward()
    assert logits.shape == (2, 8, model.vocab_size) and torch.isfinite(loss)
    block = DualAttnEncoderBlock(16, 2, 2, 32, "relu", 0.0, True, ra_type=ra_type)
    assert isinstance(block.dual_attn.relational_attention, cls)


# ------------------------------------------------------------------------------------------ counting and optimizers
def test_get_num_params(make_dat_lm, make_transformer_lm, make_seq2seq_dat, make_vit):
    def unique(m):
        return sum(p.numel() for p in m.parameters())

    dat = make_dat_lm(pos_enc_type="pos_emb")
    table = dat.layers.positional_embedder.weight.numel()
    assert dat.get_num_params() == unique(dat) - table
    assert dat.get_num_params(non_embedding=False) == unique(dat)
    rope = make_dat_lm()
    assert rope.get_num_params() == rope.get_num_params(non_embedding=False) == unique(rope)
    # the shared retriever and the tied embedding are counted once
    sd_numel = sum(t.numel() for t in rope.state_dict().values())
    shared = sum(p.numel() for p in rope.layers.symbol_retrievers[0].parameters())
    assert unique(rope) == sd_numel - rope.layers.final_out.weight.numel() - shared * (rope.n_layers - 1)
    tlm = make_transformer_lm()
    assert tlm.get_num_params() == unique(tlm) - tlm.layers.positional_embedder.weight.numel()
    for model in (make_seq2seq_dat(), make_vit()):
        assert model.get_num_params() == unique(model)


@pytest.mark.parametrize("module", [language_models, seq2seq_models, vision_models])
def test_configure_optimizers_decays_matrices_only(module, make_dat_lm, capsys):
    model = make_dat_lm(symbol_retrieval_kwargs=dict(d_model=16, n_heads=2, n_symbols=8, trainable_symbols=False))
    opt = module.configure_optimizers(model, weight_decay=0.1, learning_rate=3e-4, betas=(0.9, 0.95),
                                      device_type="cpu")
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decay["lr"] == 3e-4 and decay["betas"] == (0.9, 0.95)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped)) and set(grouped) == trainable
    frozen = model.layers.symbol_retrievers[0].symbol_library
    assert not frozen.requires_grad and id(frozen) not in grouped
    names = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), set()).add(n)
    decayed = set().union(*(names[id(p)] for p in decay["params"]))
    assert any(n.endswith(".wr") for n in decayed) and "layers.final_out.weight" in decayed
    assert not any(n.endswith("bias") or "norm" in n for n in decayed)
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


@pytest.mark.parametrize("family", ["dat", "transformer"])
def test_estimate_mfu(family, make_dat_lm, make_transformer_lm):
    model = make_dat_lm() if family == "dat" else make_transformer_lm()
    mfu = model.estimate_mfu(fwdbwd_per_iter=8, dt=0.5)
    assert isinstance(mfu, float) and mfu > 0
    assert model.estimate_mfu(8, 1.0) == pytest.approx(mfu / 2)
    assert model.estimate_mfu(16, 0.5) == pytest.approx(2 * mfu)
    # at least the 6·N matmul FLOPs per token
    assert mfu >= 6 * model.get_num_params() * model.block_size * 8 / 0.5 / 312e12


def test_seq2seq_estimate_mfu_positive(make_seq2seq_dat):
    assert make_seq2seq_dat().estimate_mfu(4, 0.1) > 0
