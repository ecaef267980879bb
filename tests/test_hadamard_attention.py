"""Hadamard dual attention (``ra_type='hadamard'``): the equation, written out independently, in float64; the KV
cache, ``torch.compile``, the models, checkpoints and argument errors.

Reference (per batch element b, query head h of group g = h // (H / Hkv), SA heads first):
    α^h = softmax(RoPE(N(W_q^h x)) RoPE(N(W_k^g x))ᵀ / √D + M)
    SA head: y_h = α^h (W_v^g x)
    RA head: y_h,i = Σ_j α_ij^h φ((W_qrel^h x_i) ⊙ (W_krel^g x_j)) + Σ_j α_ij^h W_s^g s_j
    out = W_o concat_h y_h
"""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo

from dual_attention import hf
from dual_attention.dual_attention import DualAttention
from dual_attention.generation import _decode_step
from dual_attention.hadamard_attention import HadamardDualAttention

D_MODEL = 24


def _linear(lin: torch.nn.Linear, x: torch.Tensor, rows: slice) -> torch.Tensor:
    out = x @ lin.weight[rows].T
    return out if lin.bias is None else out + lin.bias[rows]


def _rope(t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair RoPE through complex numbers: pair k at position p is multiplied by exp(i p θ_k).

    The angles and their cos/sin are float32, as the published tables are (then used in float64)."""
    d = t.shape[-1]
    theta = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = positions.float()[:, None] * theta  # (n, D/2)
    rotation = torch.complex(torch.cos(angles).double(), torch.sin(angles).double())
    z = torch.view_as_complex(t.reshape(*t.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(z * rotation).reshape(t.shape)


def reference(layer: HadamardDualAttention, x, symbols, allowed, rope=False):
    """The module docstring's equation with explicit loops over batch and heads. ``allowed``: bool (n, n)."""
    b, n, _ = x.shape
    hd, n_heads, sa = layer.head_dim, layer.n_heads, layer.n_heads_sa
    n_rep = n_heads // layer.n_kv_heads
    act = layer.rel_activation
    positions = torch.arange(n, dtype=torch.float64)
    outs = []
    for bi in range(b):
        heads = []
        for h in range(n_heads):
            g = h // n_rep
            rows_h, rows_g = slice(h * hd, (h + 1) * hd), slice(g * hd, (g + 1) * hd)
            q, k = _linear(layer.wq, x[bi], rows_h), _linear(layer.wk, x[bi], rows_g)  # (n, D)
            if layer.qk_norm:
                eps = torch.finfo(x.dtype).eps
                q = q / torch.sqrt(q.pow(2).mean(-1, keepdim=True) + eps)
                k = k / torch.sqrt(k.pow(2).mean(-1, keepdim=True) + eps)
            if rope:
                q, k = _rope(q, positions), _rope(k, positions)
            logits = (q @ k.T) / math.sqrt(hd)
            alpha = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)  # (n, n)
            if h < sa:
                heads.append(alpha @ _linear(layer.wv, x[bi], rows_g))
                continue
            r = h - sa
            q_rel = _linear(layer.wk_rel, x[bi], rows_g) if layer.symmetric_rels \
                else _linear(layer.wq_rel, x[bi], slice(r * hd, (r + 1) * hd))
            u = _linear(layer.wk_rel, x[bi], rows_g)
            y = torch.stack([sum(alpha[i, j] * act(q_rel[i] * u[j]) for j in range(n)) for i in range(n)])
            if layer.use_symbols:
                y = y + alpha @ _linear(layer.ws, symbols[bi], rows_g)
            heads.append(y)
        outs.append(_linear(layer.wo, torch.cat(heads, dim=-1), slice(None)))
    return torch.stack(outs)


CASES = [
    dict(),
    dict(n_kv_heads=1),
    dict(n_kv_heads=2, qk_norm=True),
    dict(symmetric_rels=True, n_kv_heads=2),
    dict(use_symbols=False, rel_activation="tanh"),
    dict(rel_activation="sigmoid", symmetric_rels=True, add_bias_kv=True, add_bias_out=True),
    dict(symmetric_attn=True, qk_norm=True),
]


@pytest.mark.parametrize("kwargs", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
@pytest.mark.parametrize("sa,ra", [(2, 2), (0, 4), (3, 1)])
@pytest.mark.parametrize("masking", ["causal+rope", "padding", "none"])
def test_matches_the_equation_values_and_gradients(kwargs, sa, ra, masking):
    layer = HadamardDualAttention(D_MODEL, sa, ra, **kwargs).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    b, n = 2, 7
    x = torch.randn(b, n, D_MODEL, dtype=torch.float64, requires_grad=True)
    symbols = torch.randn(b, n, D_MODEL, dtype=torch.float64, requires_grad=True) if layer.use_symbols else None
    allowed = torch.ones(n, n, dtype=torch.bool)
    call = {}
    if masking == "causal+rope":
        allowed = allowed.tril()
        from dual_attention.attention_utils import precompute_freqs_cis

        cos, sin = precompute_freqs_cis(D_MODEL // (sa + ra), n)
        call = dict(is_causal=True, freqs_cos=cos, freqs_sin=sin)
    elif masking == "padding":
        pad = torch.ones(b, n, dtype=torch.bool)
        pad[1, -2:] = False
        call = dict(key_padding_mask=pad)
    out, _ = layer(x, symbols, **call)
    if masking == "padding":  # row 1 of the batch sees only its first n-2 keys
        ref = torch.cat([reference(layer, x[:1], None if symbols is None else symbols[:1], allowed),
                         reference(layer, x[1:], None if symbols is None else symbols[1:],
                                   allowed & (torch.arange(n) < n - 2)[None, :])])
    else:
        ref = reference(layer, x, symbols, allowed, rope=masking == "causal+rope")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    w = torch.randn_like(out)
    inputs = [x, *layer.parameters()] + ([symbols] if symbols is not None else [])
    got = torch.autograd.grad((out * w).sum(), inputs, retain_graph=True)
    want = torch.autograd.grad((ref * w).sum(), inputs)
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, rtol=0, atol=1e-11)


def test_the_fused_call_and_the_explicit_path_agree():
    layer = HadamardDualAttention(D_MODEL, 2, 2, n_kv_heads=2).double()
    x, s = torch.randn(2, 9, D_MODEL, dtype=torch.float64), torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    fused, none = layer(x, s, is_causal=True)
    explicit, weights = layer(x, s, is_causal=True, need_weights=True)
    assert none is None and weights.shape == (2, 4, 9, 9)
    torch.testing.assert_close(fused, explicit, rtol=0, atol=1e-13)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 9, dtype=torch.float64))
    assert torch.all(weights.triu(1) == 0)


def test_parameters_and_tying():
    layer = HadamardDualAttention(D_MODEL, 2, 2, n_kv_heads=2, symmetric_rels=True)
    names = [k for k, _ in layer.state_dict().items()]
    assert names == ["wq.weight", "wk.weight", "wv.weight", "wq_rel.weight", "wk_rel.weight", "ws.weight", "wo.weight"]
    assert layer.wq_rel is layer.wk_rel and layer.wk_rel.weight.shape == (2 * 6, D_MODEL)
    tied = HadamardDualAttention(D_MODEL, 2, 2, symmetric_attn=True, use_symbols=False)
    assert tied.wk is tied.wq and "ws.weight" not in tied.state_dict()
    assert HadamardDualAttention(D_MODEL, 2, 2).wq_rel.weight.shape == (2 * 6, D_MODEL)  # one per RA head


def test_symmetric_relations_are_symmetric():
    """With symmetric_rels, ``(W x_i) ⊙ (W x_j)`` is symmetric in i, j: swapping two tokens' roles changes nothing."""
    layer = HadamardDualAttention(D_MODEL, 0, 2, symmetric_rels=True, use_symbols=False, rel_activation="tanh").double()
    x = torch.randn(1, 5, D_MODEL, dtype=torch.float64)
    u = layer.wk_rel(x[0]).view(5, 2, -1)
    q_rel = layer._rel_queries(x)[0].transpose(0, 1)  # (n, H_ra, D)
    rel = q_rel[:, None] * u[None, :]  # (i, j, H, D)
    torch.testing.assert_close(rel, rel.transpose(0, 1))


def test_dual_attention_routes_to_one_hadamard_layer():
    da = DualAttention(D_MODEL, 2, 2, 0.0, sa_kwargs=dict(n_kv_heads=2), ra_kwargs=dict(n_kv_heads=2, qk_norm=True),
                       ra_type="hadamard").double()
    assert not hasattr(da, "self_attention") and not hasattr(da, "relational_attention")
    assert da.hadamard_attention.qk_norm and da.hadamard_attention.n_kv_heads == 2
    x, s = torch.randn(2, 6, D_MODEL, dtype=torch.float64), torch.randn(2, 6, D_MODEL, dtype=torch.float64)
    out, sa_w, ra = da(x, s, is_causal=True, need_weights=True)
    expected, weights = da.hadamard_attention(x, s, is_causal=True, need_weights=True)
    torch.testing.assert_close(out, expected)
    assert torch.equal(sa_w, weights[:, :2]) and torch.equal(ra[0], weights[:, 2:])
    with pytest.raises(ValueError, match="different values for \\['n_kv_heads'\\]"):
        DualAttention(D_MODEL, 2, 2, 0.0, sa_kwargs=dict(n_kv_heads=1), ra_kwargs=dict(n_kv_heads=2),
                      ra_type="hadamard")
    with pytest.raises(ValueError, match="share_attn_params=True needs ra_type='relational_attention'"):
        DualAttention(D_MODEL, 2, 2, 0.0, ra_type="hadamard", share_attn_params=True)


# ------------------------------------------------------------------------------------------------------ models
def _lm(make_dat_lm, symbols=True, **ra_kwargs):
    kw = dict(ra_type="hadamard", ra_kwargs=ra_kwargs, max_block_size=40)
    if not symbols:
        kw.update(symbol_retrieval=None, symbol_retrieval_kwargs=None)
    return make_dat_lm(**kw)


LM_CASES = [(True, {}), (False, {}), (True, dict(n_kv_heads=1, qk_norm=True)),
            (False, dict(n_kv_heads=2, symmetric_rels=True)), (True, dict(rel_activation="tanh"))]


@pytest.mark.parametrize("symbols,ra_kwargs", LM_CASES)
@pytest.mark.parametrize("prefill", [3, 20])
def test_lm_cached_decoding_equals_full_forward(make_dat_lm, symbols, ra_kwargs, prefill):
    model = _lm(make_dat_lm, symbols, **ra_kwargs).double().eval()
    x = torch.randint(0, model.vocab_size, (2, 30))
    cache = model.init_kv_cache(2, 36)
    spec = model.layers.blocks[0].dual_attn.hadamard_attention.cache_spec()
    assert spec["v"][1] == (3 if symbols else 2) * model.layers.blocks[0].dual_attn.hadamard_attention.head_dim
    with torch.no_grad():
        full, _ = model(x)
        outs = [model(x[:, :prefill], kv_cache=cache, input_pos=torch.arange(prefill))[0]]
        outs += [model(x[:, i:i + 1], kv_cache=cache, input_pos=torch.tensor([i]))[0] for i in range(prefill, 30)]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=0, atol=1e-10)
    tokens = model.generate(x[:, :5], 8, temperature=0)
    assert torch.equal(tokens, model.generate(x[:, :5], 8, temperature=0, use_cache=False))


def _no_breaks(explanation) -> None:
    reasons = [str(r.reason).splitlines()[0] for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("symbols", [True, False])
def test_compile_without_graph_breaks(make_dat_lm, symbols):
    torch._dynamo.reset()
    model = _lm(make_dat_lm, symbols, n_kv_heads=2, qk_norm=True)
    x = torch.randint(0, model.vocab_size, (2, 24))
    _no_breaks(torch._dynamo.explain(lambda a, b: model(a, b)[1])(x, x))
    model.eval()
    cache = model.init_kv_cache(2, 32)
    with torch.no_grad():
        model(x[:, :20], kv_cache=cache, input_pos=torch.arange(20))
        _no_breaks(torch._dynamo.explain(_decode_step)(model, x[:, :1], cache, torch.tensor([20]), None))
    torch._dynamo.reset()


def test_every_parameter_gets_a_gradient(make_dat_lm):
    models = [_lm(make_dat_lm, True, n_kv_heads=2), _lm(make_dat_lm, False, symmetric_rels=True)]
    for model in models:
        x = torch.randint(0, model.vocab_size, (2, 12))
        model(x, x)[1].backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def _seq2seq_hadamard(make_seq2seq_dat, symbols=True):
    enc = dict(n_heads_sa=2, n_heads_ra=2, dff=32, activation="gelu", dropout_rate=0.0, norm_first=True,
               ra_type="hadamard", ra_kwargs=dict(qk_norm=True))
    dec = dict(enc, n_heads_cross=2, causal=True, ra_kwargs=dict(n_kv_heads=2))
    kw = dict(encoder_kwargs=enc, decoder_kwargs=dec)
    if not symbols:
        kw.update(symbol_retrieval=None, symbol_retrieval_kwargs=None)
    return make_seq2seq_dat(**kw)


@pytest.mark.parametrize("symbols", [True, False])
def test_seq2seq_and_vision_take_hadamard(make_seq2seq_dat, make_vidat, symbols):
    model = _seq2seq_hadamard(make_seq2seq_dat, symbols).double().eval()
    assert ("symbol_retriever" in model.layers) == symbols
    src, tgt = torch.randint(0, 23, (2, 9)), torch.randint(0, 19, (2, 7))
    logits, loss = model(src, tgt, tgt)
    assert torch.isfinite(loss)
    with torch.no_grad():  # cached decoding = full decoder
        ctx = model.encode(src)
        full = model.decode(tgt, ctx)
        cache = torch.nn.ModuleList(b.init_kv_cache(2, 7, dtype=torch.float64) for b in model.layers.decoder_blocks)
        steps = [model.decode(tgt[:, i:i + 1], ctx, kv_cache=cache, input_pos=torch.tensor([i])) for i in range(7)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=0, atol=1e-10)
    kw = dict(ra_type="hadamard", ra_kwargs=dict(n_kv_heads=2))
    kw.update(dict(symbol_retrieval="symbolic_attention", symbol_retrieval_kwargs=dict(d_model=16, n_heads=2,
                                                                                      n_symbols=8))
              if symbols else dict(symbol_retrieval=None, symbol_retrieval_kwargs=None))
    vision = make_vidat(**kw)
    assert vision(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_hub_round_trips(tmp_path, make_seq2seq_dat):
    lm = hf.DualAttnTransformerLM_HFHub(
        vocab_size=37, d_model=16, n_layers=2, n_heads_sa=2, n_heads_ra=2, symbol_retrieval_kwargs=None, dff=32,
        dropout_rate=0.0, activation="swiglu", norm_first=True, max_block_size=24, pos_enc_type="RoPE",
        ra_type="hadamard", symbol_retrieval=None, ra_kwargs=dict(n_kv_heads=2, symmetric_rels=True, qk_norm=True))
    vision = hf.VisionDualAttnTransformer_HFHub(
        image_shape=(3, 8, 8), patch_size=(4, 4), num_classes=5, d_model=16, n_layers=2, n_heads_sa=2, n_heads_ra=2,
        dff=32, dropout_rate=0.0, activation="gelu", norm_first=True, symbol_retrieval="positional_symbols",
        symbol_retrieval_kwargs=dict(symbol_dim=16, max_length=5), ra_type="hadamard", pos_enc_type="RoPE")
    inputs = {id(lm): (torch.randint(0, 37, (2, 10)),), id(vision): (torch.randn(2, 3, 8, 8),)}
    for i, model in enumerate((lm, vision)):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        model.eval().save_pretrained(tmp_path / str(i))
        loaded = hf.load_pretrained(tmp_path / str(i))
        assert type(loaded) is type(model)
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        out, expected = loaded(*inputs[id(model)]), model(*inputs[id(model)])
        out, expected = (out[0], expected[0]) if isinstance(out, tuple) else (out, expected)
        assert torch.equal(out, expected)
    assert loaded.encoder_blocks[0].dual_attn.hadamard_attention is not None
    blocks = hf.load_pretrained(tmp_path / "0").layers.blocks
    assert blocks[0].dual_attn.hadamard_attention.wq_rel is blocks[0].dual_attn.hadamard_attention.wk_rel


def test_errors_name_the_argument(make_dat_lm, make_vidat):
    with pytest.raises(TypeError, match="qk_norm must be a bool"):
        HadamardDualAttention(D_MODEL, 2, 2, qk_norm="yes")
    with pytest.raises(ValueError, match="rel_activation='nope' is not valid"):
        HadamardDualAttention(D_MODEL, 2, 2, rel_activation="nope")
    with pytest.raises(ValueError, match="symmetric_attn=True ties wk to wq: it needs n_kv_heads == n_heads"):
        HadamardDualAttention(D_MODEL, 2, 2, n_kv_heads=2, symmetric_attn=True)
    with pytest.raises(ValueError, match="n_heads_ra=0 is not valid"):
        HadamardDualAttention(D_MODEL, 2, 0)
    with pytest.raises(ValueError, match="symbol_retrieval='position_relative' is not valid with it"):
        make_dat_lm(ra_type="hadamard", symbol_retrieval="position_relative", ra_kwargs={})
    with pytest.raises(ValueError, match="symbol_retrieval=None needs ra_type='hadamard'"):
        make_dat_lm(symbol_retrieval=None, symbol_retrieval_kwargs=None)
    with pytest.raises(ValueError, match="symbol_retrieval=None takes no symbol_retrieval_kwargs"):
        make_dat_lm(ra_type="hadamard", symbol_retrieval=None, symbol_retrieval_kwargs=dict(d_model=16))
    with pytest.raises(ValueError, match="contradicts symbol_retrieval"):
        make_dat_lm(ra_type="hadamard", ra_kwargs=dict(use_symbols=False))
    with pytest.raises(TypeError, match="sa_kwargs/ra_kwargs="):
        make_dat_lm(ra_type="hadamard", ra_kwargs=dict(n_relations=3))
    layer = HadamardDualAttention(D_MODEL, 2, 2)
    with pytest.raises(ValueError, match="per-token symbols of shape"):
        layer(torch.randn(1, 4, D_MODEL), None)
    with pytest.raises(ValueError, match="use_symbols=False: pass symbols=None"):
        HadamardDualAttention(D_MODEL, 2, 2, use_symbols=False)(torch.randn(1, 4, D_MODEL), torch.randn(1, 4, D_MODEL))


def test_lm_causality_and_right_padding(make_dat_lm):
    model = _lm(make_dat_lm, True, n_kv_heads=2, qk_norm=True).double().eval()
    x = torch.randint(0, model.vocab_size, (2, 16))
    changed = x.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % model.vocab_size
    pad = torch.ones(2, 16, dtype=torch.bool)
    pad[1, 12:] = False
    with torch.no_grad():
        full = model(x)[0]
        torch.testing.assert_close(model(changed)[0][:, :10], full[:, :10], rtol=0, atol=1e-11)
        padded = model(x, key_padding_mask=pad)[0]
        torch.testing.assert_close(padded[1, :12], model(x[1:, :12])[0][0], rtol=0, atol=1e-11)


def test_bf16_autocast_close_to_float32(make_dat_lm):
    model = _lm(make_dat_lm, True, n_kv_heads=2, qk_norm=True)
    x = torch.randint(0, model.vocab_size, (2, 24))
    reference_loss = model(x, x)[1].item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(x, x)
    loss.backward()
    assert abs(loss.item() - reference_loss) < 0.02 * reference_loss
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_materialised_path_in_query_blocks(monkeypatch):
    """A non-identity φ runs a block of queries at a time (checkpointed): the same values and gradients."""
    import dual_attention.hadamard_attention as module

    layer = HadamardDualAttention(D_MODEL, 1, 3, rel_activation="gelu", n_kv_heads=2).double()
    x = torch.randn(2, 11, D_MODEL, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 11, D_MODEL, dtype=torch.float64)
    whole, _ = layer(x, s, is_causal=True)
    (g_whole,) = torch.autograd.grad(whole.square().sum(), x)
    monkeypatch.setattr(module, "RELATION_BLOCK_SIZE", 4)
    blocked, _ = layer(x, s, is_causal=True)
    (g_blocked,) = torch.autograd.grad(blocked.square().sum(), x)
    torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-13)
    torch.testing.assert_close(g_blocked, g_whole, rtol=0, atol=1e-12)
