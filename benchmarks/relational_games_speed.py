"""Per-run time of a Relational Games run under the authors' protocol: the training library vs the lean loop of
``dual_attention.experiments.relational_games``, and a vmap ensemble of seeds vs training them one by one.

    python benchmarks/relational_games_speed.py [--n-train 512] [--repeats 3] [--ensemble 3]

Both paths train the paper's Transformer (d_model 144, dff 288, SwiGLU, dropout 0.1, mean pooling) with Adam
(lr 1e-3 constant, betas (0.9, 0.99), no weight decay, no clipping), batch 512, 50 epochs, one torch thread, and
then score 5000 test images. Medians of ``--repeats`` runs measured in this one process; ratios are printed.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time


def library_run(x, y, xt, yt, n_train: int, seed: int) -> float:
    """The old ``dat demo`` path: ``dual_attention.training.trainer.train`` with the protocol as its config."""
    from dual_attention.training.config import load_config
    from dual_attention.training.trainer import train

    steps = 50 * -(-n_train // 512)
    cfg = load_config({
        "name": "speed", "model": {"family": "vision", "arch": "transformer", "d_model": 144, "n_layers": 2,
                                   "n_heads": 2, "dff": 288, "dropout": 0.1, "activation": "swiglu",
                                   "norm_first": True, "patch_size": [12, 12], "image_shape": [3, 36, 36],
                                   "num_classes": 2, "pool": "mean"},
        "optim": {"learning_rate": 1e-3, "min_lr": 1e-3, "weight_decay": 0.0, "beta2": 0.99, "warmup_iters": 0,
                  "grad_clip": 0.0, "schedule": "constant"},
        "train": {"max_iters": steps, "batch_size": 512, "eval_interval": 0, "eval_batch_size": 1000,
                  "log_interval": 50, "seed": seed, "device": "cpu", "progress": False, "checkpoint_interval": 0},
    })
    t0 = time.perf_counter()
    train(cfg, train_data=(x, y), test_data=(xt, yt), verbose=False)
    return time.perf_counter() - t0


def lean_run(x, y, xt, yt, seed: int) -> float:
    import torch

    from dual_attention.experiments import relational_games as rg

    t0 = time.perf_counter()
    s = rg.DemoSettings()
    torch.manual_seed(seed)
    model = rg.build_model("vit", s)
    rg.train_model(model, x, y, s, seed)
    rg.evaluate(model, xt, yt)
    return time.perf_counter() - t0


def ensemble_step_times(x, y, members: int, steps: int = 5) -> tuple[float, float]:
    """Seconds per optimizer step: ``members`` models as one vmapped ensemble vs one after another (batch 512)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, stack_module_state, vmap

    from dual_attention.experiments import relational_games as rg

    s = rg.DemoSettings(dropout=0.0)
    models = [rg.build_model("vit", s) for _ in range(members)]
    params, buffers = stack_module_state(models)  # leaves with a leading member dim
    base = copy.deepcopy(models[0]).to("meta")
    opt = torch.optim.Adam(params.values(), lr=1e-3, betas=(0.9, 0.99))
    xb, yb = x[:512].expand(members, -1, -1, -1, -1), y[:512].expand(members, -1)

    def loss_fn(p, b, xs, ys):
        return F.cross_entropy(functional_call(base, (p, b), (xs,)), ys)

    def ens_step():
        loss = vmap(loss_fn)(params, buffers, xb, yb).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.9, 0.99)) for m in models]

    def seq_step():
        for m, o in zip(models, opts):
            loss = F.cross_entropy(m(x[:512]), y[:512])
            o.zero_grad()
            loss.backward()
            o.step()

    out = []
    for fn in (ens_step, seq_step):
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        out.append((time.perf_counter() - t0) / steps)
    return out[0], out[1]


def main() -> None:
    import torch

    from dual_attention.data.relational_games import make_splits

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ensemble", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(1)
    d = make_splits("same", a.n_train, 5000, seed=0)
    (x, y), (xt, yt) = d["train"], d["in_distribution"]
    lib, lean = [], []
    for r in range(a.repeats):
        lib.append(library_run(x, y, xt, yt, a.n_train, r))
        lean.append(lean_run(x, y, xt, yt, r))
    ml, mn = statistics.median(lib), statistics.median(lean)
    steps = 50 * -(-a.n_train // 512)
    print(f"n_train {a.n_train} ({steps} steps of batch 512, 50 epochs), Transformer, 1 thread, medians of {a.repeats}")
    print(f"  training library: {ml:6.1f} s/run   ({[round(v, 1) for v in lib]})")
    print(f"  lean loop:        {mn:6.1f} s/run   ({[round(v, 1) for v in lean]})   ratio {ml / mn:.2f}x")
    ens, seq = ensemble_step_times(x, y, a.ensemble)
    print(f"  {a.ensemble} seeds per step: vmap ensemble {ens:.3f} s, one by one {seq:.3f} s   ratio {seq / ens:.2f}x")


if __name__ == "__main__":
    main()
