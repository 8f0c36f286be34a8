"""Pool features for the kernel strategies — the one place ntkal.torch is called.

Choice: the NTK (and the embedding) are those of the *pretrained* CHGNet, computed once per
run for the whole pool and reused by every round, strategy and seed. Featurising the pool
with each round's fine-tuned model would multiply the dominant cost (joint Jacobian rows,
~0.1-0.4 s per structure) by rounds x strategies x seeds; the pretrained kernel is the one
the companion MACE study used, and each round restarts fine-tuning from those weights.
The posterior still conditions on the current training set every round.

The force kernel's rows are the joint kernel's force rows (same sketch seed, same random
+-1 force combinations, weights 1): computing them again would give identical numbers, so
``force`` reuses the ``joint`` computation and is charged the joint's measured seconds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FeatureConfig:
    dim: int = 512
    force_rows: int = 4  # k random +-1 combinations of the 3N force components
    energy_weight: float = 1.0  # joint kernel: weight of the energy row vs each force row
    seed: int = 0
    workers: int = 1  # featuriser worker processes (each 1 torch thread)


class PoolFeatures:
    """Feature blocks of some dataset-pool structures, looked up by dataset-pool index."""

    def __init__(self, blocks, index, n_pool: int):
        self.blocks = blocks
        self.index = np.asarray(index)
        self.lookup = np.full(n_pool, -1, dtype=np.int64)
        self.lookup[self.index] = np.arange(len(self.index))

    @property
    def dim(self) -> int:
        return self.blocks.dim

    def take(self, pool_indices):
        pos = self.lookup[np.asarray(pool_indices)]
        if (pos < 0).any():
            raise IndexError("PoolFeatures.take: some structures were not featurised")
        return self.blocks.take(pos)


def _featurizer(kernel: str, cfg: FeatureConfig):
    from ntkal.torch import Featurizer, models

    kwargs = {"force_rows": cfg.force_rows} if kernel in ("force", "joint") else {}
    return Featurizer(models.chgnet(), kernel=kernel, dim=cfg.dim, seed=cfg.seed, **kwargs)


def _features(kernel: str, cfg: FeatureConfig, frames):
    """Blocks of ``frames``: the product's screen (ntkal.features.compute_features), on cfg.workers Dask
    worker processes when more than one."""
    import tempfile

    from ntkal.features import compute_features

    with tempfile.TemporaryDirectory(prefix="al-features-") as tmp:
        store = compute_features(_featurizer(kernel, cfg), frames, tmp + "/store", workers=cfg.workers,
                                 progress=False)
        return store.read("structures")


def split_joint(blocks, energy_weight: float):
    """(force blocks, reweighted joint blocks) from unit-weight joint blocks (energy row first)."""
    import ntkal

    force, joint = [], []
    for i in range(len(blocks)):
        rows = blocks[i]
        force.append(rows[1:])
        joint.append(np.vstack([energy_weight * rows[:1], rows[1:]]))
    return ntkal.Blocks.from_list(force), ntkal.Blocks.from_list(joint)


def loss_matched(unit, frames):
    """Joint rows weighted to the study's fine-tuning loss, MSE(E/atom) + MSE(F) over a batch's components,
    by the product's ntkal.torch.Loss (energy row / N, force rows x sqrt(1 / (3 N_mean))). Exact from the
    unit-weight joint rows (weighting after the linear sketch is exact), so no second featurisation."""
    import ntkal
    from ntkal.torch import Loss

    n_atoms = np.array([len(f) for f in frames])
    loss = Loss(1.0, 1.0 / (3.0 * n_atoms.mean()), "per_atom", "per_component")
    return ntkal.Blocks.from_list([loss.weight_rows(np.array(unit[i], dtype=np.float32), int(n_atoms[i]),
                                                    energy_row=True, force_rows=True) for i in range(len(unit))])


def compute(kernels, frames, cfg: FeatureConfig, verbose: bool = True) -> dict:
    """{kernel: (ntkal.Blocks over ``frames``, seconds)} for kernels in energy/force/joint/embedding."""
    kernels = set(kernels)
    out = {}
    for kernel in ("embedding", "energy"):
        if kernel in kernels:
            t0 = time.perf_counter()
            out[kernel] = (_features(kernel, cfg, frames), time.perf_counter() - t0)
    if kernels & {"force", "joint", "joint_loss"}:
        t0 = time.perf_counter()
        unit = _features("joint", cfg, frames)
        seconds = time.perf_counter() - t0
        force, joint = split_joint(unit, cfg.energy_weight)
        out["force"] = (force, seconds)
        out["joint"] = (joint, seconds)
        out["joint_loss"] = (loss_matched(unit, frames), seconds)
    if verbose:
        for kernel, (blocks, seconds) in out.items():
            print(f"  features {kernel:9s}: {len(blocks)} structures, {blocks.n_rows} rows x "
                  f"{blocks.dim} in {seconds:.1f} s", flush=True)
    return {k: v for k, v in out.items() if k in kernels}
