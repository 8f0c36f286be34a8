"""A picture of a screen: the pool's PV distribution with the picks marked, and a 2-D map (PCA of the
distance vectors LCMD uses) of training structures, pool and picks. Needs matplotlib (extra ``plot``)."""
from __future__ import annotations

import numpy as np

from .errors import fail


class MapSample:
    """Keeps the distance vectors of every training structure and of an even sample of the pool
    (at most ``max_pool``), fed chunk by chunk through ``acquire(..., on_features=sample)``."""

    def __init__(self, n_pool: int, max_pool: int = 3000, seed: int = 0):
        self.every = max(1, -(-n_pool // max_pool))
        self.seed = seed
        self.train: list = []
        self.pool: list = []
        self.pool_index: list = []

    def __call__(self, label: str, start: int, blocks) -> None:
        from ._device import to_numpy
        from .select import distance_vectors

        z = to_numpy(distance_vectors(blocks, seed=self.seed))
        if label == "train":
            self.train.append(z)
            return
        keep = [i for i in range(len(blocks)) if (start + i) % self.every == 0]
        self.pool.append(z[keep])
        self.pool_index.extend(start + i for i in keep)

    def arrays(self):
        pool = np.concatenate(self.pool) if self.pool else np.zeros((0, 2))
        train = np.concatenate(self.train) if self.train else np.zeros((0, pool.shape[1]))
        return train, pool, np.asarray(self.pool_index, dtype=np.int64)


def plot_screen(path, pool_pv: np.ndarray, picks: np.ndarray | None, sample: MapSample, title: str,
                pick_vectors: np.ndarray | None = None) -> None:
    """Write a PNG: PV histogram (log scale) with picks marked, and the PCA map."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        fail("--plot", "needs matplotlib (pip install 'ntkal[plot]')", cause=exc)
    train, pool, pool_index = sample.arrays()
    fig, (ax_pv, ax_map) = plt.subplots(1, 2, figsize=(12, 5))
    pv = np.asarray(pool_pv, dtype=np.float64)
    positive = pv[pv > 0]
    bins = np.logspace(np.log10(positive.min()), np.log10(positive.max()), 40) if positive.size > 1 else 20
    ax_pv.hist(pv, bins=bins, color="0.6", label=f"pool ({pv.size})")
    if positive.size > 1:
        ax_pv.set_xscale("log")
    if picks is not None and len(picks):
        for k, i in enumerate(picks):
            ax_pv.axvline(pv[i], color="tab:red", lw=1, alpha=0.8, label="selected" if k == 0 else None)
    ax_pv.set_xlabel("posterior variance")
    ax_pv.set_ylabel("structures")
    ax_pv.legend()
    ax_pv.set_title("PV of the pool")

    points = [a for a in (train, pool) if a.size]
    if points:
        both = np.concatenate(points).astype(np.float64)
        centre = both.mean(axis=0)
        _, _, vt = np.linalg.svd(both - centre, full_matrices=False)
        proj = lambda a: (a.astype(np.float64) - centre) @ vt[:2].T  # noqa: E731
        if pool.size:
            p2 = proj(pool)
            sc = ax_map.scatter(p2[:, 0], p2[:, 1], c=np.log10(np.maximum(pv[pool_index], 1e-300)), s=8,
                                cmap="viridis", label=f"pool (sample of {len(pool_index)})")
            fig.colorbar(sc, ax=ax_map, label="log10 PV")
        if train.size:
            t2 = proj(train)
            ax_map.scatter(t2[:, 0], t2[:, 1], marker="s", s=22, facecolors="none", edgecolors="k",
                           label=f"train ({len(train)})")
        if pick_vectors is not None and len(pick_vectors):
            s2 = proj(pick_vectors)
            ax_map.scatter(s2[:, 0], s2[:, 1], marker="*", s=140, color="tab:red", edgecolors="k",
                           label=f"selected ({len(pick_vectors)})")
        ax_map.legend(loc="best", fontsize=8)
    ax_map.set_xlabel("PC 1 of the distance vectors")
    ax_map.set_ylabel("PC 2")
    ax_map.set_title("map of the screen (LCMD distance space)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
