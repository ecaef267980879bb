"""What made the old procedural xoccurs unlearnable? One factor at a time, DAT (0 SA + 2 RA), authors' protocol.

    python benchmarks/relational_games_ablation.py [--n-train 2500] [--seed 0] [--models dat-sa0-ra2]

Variants of xoccurs (each trained on n-train images, tested on 5000 new images of the same variant):
  new             the current generator (pentominoes, shared colours, positives T|TAB, negatives T|ABC or T|TTA)
  new+old-rules   current objects, the old task tables: half of the positives are T|TAA (a non-target repeat),
                  so "is anything repeated" no longer separates the classes; only counting T does
  old-objects     the old generator's objects (14 simple shapes x 8 colours, no colour sharing), current tables
The old generator is read from git (commit 59a7cfa, the last one that had it), so run this inside the repository.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
from pathlib import Path

OLD_COMMIT = "59a7cfa"
NEW_POS = [(0, 0, 1, 2), (0, 1, 0, 2), (0, 1, 2, 0)]
OLD_POS = NEW_POS + [(0, 0, 1, 1), (0, 1, 0, 1), (0, 1, 1, 0)]


def _old_module():
    src = subprocess.run(["git", "show", f"{OLD_COMMIT}:dual_attention/data/relational_games.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_relational_games.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_relational_games", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def _data(variant: str, n: int, seed: int):
    import numpy as np
    import torch

    from dual_attention.data import relational_games as rg

    out = []
    for split, s in (("train", seed), ("test", 10_000 + seed)):
        size = n if split == "train" else 5000
        if variant == "old-objects":
            old = _old_module()
            old._POS["xoccurs"] = NEW_POS  # the current definition on the old objects
            images, labels = old.generate("xoccurs", size, seed=s)
        else:
            if variant == "new+old-rules":
                rg._POS["xoccurs"] = OLD_POS
            images, labels = rg.generate("xoccurs", size, seed=s)
        out.append((rg.images_to_tensor(np.ascontiguousarray(images)), torch.from_numpy(labels)))
    return out


def job(args):
    import torch

    from dual_attention.experiments import relational_games as rge

    variant, model_key, n, seed = args
    torch.set_num_threads(1)
    (x, y), (xt, yt) = _data(variant, n, seed)
    settings = rge.DemoSettings()
    torch.manual_seed(seed)
    model = rge.build_model(model_key, settings)
    loss = rge.train_model(model, x, y, settings, seed)
    return {"variant": variant, "model": model_key, "n_train": n, "seed": seed, "train_loss": round(loss, 4),
            "test_acc": rge.evaluate(model, xt, yt)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=2500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", default="dat-sa0-ra2")
    p.add_argument("--variants", default="new+old-rules,old-objects")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    jobs = [(v, m, a.n_train, a.seed) for v in a.variants.split(",") for m in a.models.split(",")]
    with mp.get_context("spawn").Pool(a.workers, maxtasksperchild=1) as pool:  # variants patch module tables
        for rec in pool.imap_unordered(job, jobs):
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    sys.exit(main())
