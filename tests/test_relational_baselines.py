"""Each baseline of dual_attention.relational_baselines against its docstring's equation, recomputed in float64
from the module's weights with plain tensor algebra (explicit patch loops, explicit per-head sums)."""

from __future__ import annotations

import math

import pytest
import torch

from dual_attention.relational_baselines import CoRelNet, PatchEmbedding, PrediNet, VisionAbstractor

SHAPE, PATCH = (3, 36, 36), (12, 12)


def _img(b=3, seed=0):
    return torch.rand(b, 3, 36, 36, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def embed(img, emb: PatchEmbedding):
    """e_i = LN(W_p LN(patch_i)), patch i = cell (row, col) = divmod(i, 3), flattened (y, x, channel)."""
    _, ln1, lin, ln2 = emb.net
    patches = torch.stack([img[:, :, 12 * r:12 * r + 12, 12 * c:12 * c + 12].permute(0, 2, 3, 1).reshape(len(img), -1)
                           for r in range(3) for c in range(3)], dim=1)  # (B, 9, 432)
    return layer_norm(layer_norm(patches, ln1) @ lin.weight.T + lin.bias, ln2)


def mlp(x, seq):
    return torch.relu(x @ seq[0].weight.T + seq[0].bias) @ seq[2].weight.T + seq[2].bias


def softmax(z):
    z = z - z.max(-1, keepdim=True).values
    return z.exp() / z.exp().sum(-1, keepdim=True)


def test_patch_embedding_matches_vit():
    from dual_attention.vision_models import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(SHAPE, PATCH, 2, 32, 1, 2, 64, 0.0, "gelu", True).double()
    emb = PatchEmbedding(SHAPE, PATCH, 32).double()
    emb.load_state_dict({f"net.{k}": v for k, v in vit.to_patch_embedding.state_dict().items()})
    x = _img()
    assert torch.allclose(emb(x), vit.to_patch_embedding(x), atol=1e-12)
    assert torch.allclose(emb(x), embed(x, emb), atol=1e-10)


def test_corelnet_equation():
    torch.manual_seed(1)
    m = CoRelNet(SHAPE, PATCH, 2, d_model=16, hidden=24).double().eval()
    x = _img()
    e = embed(x, m.embed)
    r = torch.empty(len(x), 9, 9, dtype=torch.float64)
    for b in range(len(x)):
        for i in range(9):
            r[b, i] = softmax(torch.stack([e[b, i] @ e[b, j] for j in range(9)]))
    assert torch.allclose(m.relations(x), r, atol=1e-10)
    assert torch.allclose(m(x), mlp(r.reshape(len(x), 81), m.readout), atol=1e-10)


def test_predinet_equation():
    torch.manual_seed(2)
    m = PrediNet(SHAPE, PATCH, 2, d_model=16, n_heads=3, key_dim=5, n_relations=4, hidden=20).double().eval()
    x = _img()
    e = embed(x, m.embed) + m.pos_embedding  # (B, 9, d)
    flat = e.reshape(len(x), -1)
    k = e @ m.w_k.weight.T  # (B, 9, dk)
    wq1 = m.w_q1.weight.view(3, 5, -1)
    wq2 = m.w_q2.weight.view(3, 5, -1)
    d = []
    for h in range(3):
        q1, q2 = flat @ wq1[h].T, flat @ wq2[h].T  # (B, dk)
        e1 = torch.stack([softmax(k[b] @ q1[b]) @ e[b] for b in range(len(x))])  # (B, d)
        e2 = torch.stack([softmax(k[b] @ q2[b]) @ e[b] for b in range(len(x))])
        d.append(e1 @ m.w_s.weight.T - e2 @ m.w_s.weight.T)  # (B, j)
    assert torch.allclose(m(x), mlp(torch.cat(d, dim=1), m.readout), atol=1e-10)


def test_abstractor_equation():
    torch.manual_seed(3)
    m = VisionAbstractor(SHAPE, PATCH, 2, d_model=16, n_layers=2, n_heads=2, dff=24, dropout_rate=0.1)
    m = m.double().eval()
    x = _img()
    e = embed(x, m.embed)
    a = m.symbols.expand(len(x), -1, -1)
    dh = 8
    for layer in m.layers:
        rca = layer["rca"]
        xe, xa = layer_norm(e, layer["norm_x"]), layer_norm(a, layer["norm_a"])
        heads = []
        for h in range(2):
            sl = slice(h * dh, (h + 1) * dh)
            q, kk, v = xe @ rca.wq.weight[sl].T, xe @ rca.wk.weight[sl].T, xa @ rca.wv.weight[sl].T
            w = softmax(q @ kk.transpose(1, 2) / math.sqrt(dh))  # relations as attention weights (B, 9, 9)
            heads.append(w @ v)  # values: the abstract states, never the objects
        a = a + torch.cat(heads, dim=-1) @ rca.wo.weight.T
        ff = layer["ff"]
        z = layer_norm(a, layer["norm_ff"])
        a = a + (torch.nn.functional.silu(z @ ff.linear1.weight.T) * (z @ ff.linear3.weight.T)) @ ff.linear2.weight.T
    out = a.mean(dim=1) @ m.final_out.weight.T + m.final_out.bias
    assert torch.allclose(m(x), out, atol=1e-10)


@pytest.mark.parametrize("cls", [CoRelNet, PrediNet, VisionAbstractor])
def test_baselines_train_and_reject_bad_input(cls):
    torch.manual_seed(0)
    m = cls(SHAPE, PATCH, 2)
    x = torch.rand(4, 3, 36, 36)
    loss = torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="img must be a float tensor"):
        m(torch.zeros(4, 3, 36, 36, dtype=torch.uint8))
    with pytest.raises(ValueError, match="must be divisible by patch_size"):
        cls((3, 36, 36), (10, 10), 2)
