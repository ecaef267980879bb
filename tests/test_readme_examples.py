"""The two examples of the published README run verbatim and give the documented shapes (forward only)."""

from __future__ import annotations

import math

import torch


def test_readme_language_model_example():
    from dual_attention.language_models import DualAttnTransformerLM

    model = DualAttnTransformerLM(
        vocab_size=32_000,  # vocabulary size
        d_model=512,  # model dimension
        n_layers=6,  # number of layers
        n_heads_sa=4,  # number of self-attention heads
        n_heads_ra=4,  # number of relational attention heads
        dff=2048,  # feedforward intermediate dimension
        dropout_rate=0.1,  # dropout rate
        activation='swiglu',  # activation function of feedforward block
        norm_first=True,  # whether to use pre-LN or post-LN
        max_block_size=1024,  # max context length
        symbol_retrieval='symbolic_attention',  # type of symbol assignment mechanism
        symbol_retrieval_kwargs=dict(d_model=512, n_heads=4, n_symbols=512),
        pos_enc_type='RoPE'  # type of positional encoding to use
    )

    x = torch.randint(0, 32_000, (1, 128))
    logits, loss = model(x)
    print(logits.shape)  # torch.Size([1, 128, 32000])

    assert logits.shape == torch.Size([1, 128, 32000])
    assert loss is None
    assert torch.isfinite(logits).all()
    assert tuple(model.freqs_cos.shape) == (1024, 32)
    # a freshly initialised LM predicts ~uniformly: its next-token loss is close to ln(V) (published: ≈ 10.49)
    next_token_loss = torch.nn.functional.cross_entropy(logits[0, :-1], x[0, 1:])
    assert abs(next_token_loss.item() - math.log(32_000)) < 0.5


def test_readme_vision_example():
    from dual_attention.vision_models import VisionDualAttnTransformer

    model = VisionDualAttnTransformer(
        image_shape=(3, 224, 224),  # shape of input image
        patch_size=(16, 16),  # size of patch
        num_classes=1000,  # number of classes
        d_model=512,  # model dimension
        n_layers=6,  # number of layers
        n_heads_sa=4,  # number of self-attention heads
        n_heads_ra=4,  # number of relational attention heads
        dff=2048,  # feedforward intermediate dimension
        dropout_rate=0.1,  # dropout rate
        activation='swiglu',  # activation function of feedforward block
        norm_first=True,  # whether to use pre-LN or post-LN
        symbol_retrieval='position_relative',  # type of symbol assignment mechanism
        symbol_retrieval_kwargs=dict(symbol_dim=512, max_rel_pos=197),
        ra_kwargs=dict(symmetric_rels=True, use_relative_positional_symbols=True),
        pool='cls',  # type of pooling (class token)
    )

    img = torch.randn(1, 3, 224, 224)
    logits = model(img)
    print(logits.shape)  # torch.Size([1, 1000])

    assert logits.shape == torch.Size([1, 1000])
    assert torch.isfinite(logits).all()
