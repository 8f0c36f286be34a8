"""How kernel-strategy settings change the first acquired batch (no fine-tuning, minutes).

For each setting, select the first batch of the active-learning study from the same initial
sets and report its overlap with the default ``joint_ntk`` batch and its share of molecules and
of 900 K frames. This is the cheap screen behind the tuning table of bench/RESULTS.md; the
learning-curve effect of a setting needs ``python -m al --variant``.

Usage (the study installed, or from bench/):
    python -m al.first_batch > bench/results/al_first_batch.txt
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from . import features as F
from . import loop, pools
from .data import CACHE_DIR, DataRecipe, load_dataset
from .features import PoolFeatures
from .strategies import KERNEL_OF, RoundState, make


SETTINGS = [("joint_ntk (default)", "joint_ntk", {}),
            ("sigma^2 1e-3", "joint_ntk", dict(noise_var=1e-3)), ("sigma^2 0.1", "joint_ntk", dict(noise_var=0.1)),
            ("sigma^2 1", "joint_ntk", dict(noise_var=1.0)),
            ("shortlist 1x", "joint_ntk", dict(shortlist_factor=1)),
            ("shortlist 16x", "joint_ntk", dict(shortlist_factor=16)),
            ("energy weight 0.25", "joint_ntk", dict(energy_weight=0.25)),
            ("energy weight 4", "joint_ntk", dict(energy_weight=4.0)),
            ("normalize", "joint_ntk", dict(normalize=True)), ("total PV", "joint_ntk", dict(intensive=False)),
            ("composition strata", "joint_ntk", dict(stratify=True)),
            ("greedy PV", "joint_ntk_greedy", {}), ("force_ntk", "force_ntk", {}),
            ("energy_ntk", "energy_ntk", {}), ("embedding", "embedding", {})]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default=CACHE_DIR)
    p.add_argument("--pool-size", type=int, default=240, help="stratified subsample, as --quick")
    p.add_argument("--n-initial", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)

    data = load_dataset(args.cache, DataRecipe())
    index = pools.subsample(data.pool, args.pool_size, 0)
    frames = [data.pool[i] for i in index]
    feats = F.compute({"joint", "force", "energy", "embedding"}, frames,
                      F.FeatureConfig(workers=args.workers), verbose=False)
    feats = {k: (PoolFeatures(b, index, len(data.pool)), 0.0) for k, (b, _) in feats.items()}
    is_mol = np.array([f.info["domain"] == "molecule" for f in data.pool])
    is_hot = np.array([int(f.info["temperature"]) == 900 for f in data.pool])
    print(f"pool {len(index)} (molecules {is_mol[index].mean():.2f}, 900 K {is_hot[index].mean():.2f}); "
          f"first batch of {args.batch} after {args.n_initial} random labels; mean over seeds {args.seeds}")
    print(f"{'setting':22s} {'overlap with default':>20s} {'molecules':>10s} {'900 K':>6s}")
    default = {}
    for label, name, kw in SETTINGS:
        overlap, mol, hot = [], [], []
        for seed in args.seeds:
            init = loop.initial_set(index, args.n_initial, seed)
            state = RoundState(seed, 0, np.setdiff1d(index, init), init, None, None, None, None, data.pool)
            picked = make(name, feats[KERNEL_OF[name]], **kw).select(state, args.batch)
            default.setdefault(seed, set(picked.tolist()))
            overlap.append(len(default[seed] & set(picked.tolist())) / args.batch)
            mol.append(is_mol[picked].mean())
            hot.append(is_hot[picked].mean())
        print(f"{label:22s} {np.mean(overlap):20.2f} {np.mean(mol):10.2f} {np.mean(hot):6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
