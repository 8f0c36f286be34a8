"""Candidate pools: the run's pool (optionally a subsample) and pools biased towards one group."""
from __future__ import annotations

import numpy as np


def group_of(frame) -> tuple:
    return (str(frame.info["system"]), int(frame.info["temperature"]))


def subsample(frames, size: int | None, seed: int) -> np.ndarray:
    """Indices of a subsample stratified by (system, temperature); all frames if size is None."""
    n = len(frames)
    if size is None or size >= n:
        return np.arange(n)
    rng = np.random.default_rng([seed, 2])
    groups = {}
    for i, f in enumerate(frames):
        groups.setdefault(group_of(f), []).append(i)
    # the same share of every group, then top up at random to the exact size
    picked = []
    for members in groups.values():
        take = int(np.floor(size * len(members) / n))
        picked += rng.choice(members, size=take, replace=False).tolist()
    rest = np.setdiff1d(np.arange(n), picked)
    picked += rng.choice(rest, size=size - len(picked), replace=False).tolist()
    return np.sort(np.array(picked))


def in_group(frame, key: str, value) -> bool:
    return str(frame.info[key]) == str(value)


def biased(frames, base_index, key: str, value, alpha: float, size: int, seed: int) -> np.ndarray:
    """``size`` indices from ``base_index``: a share ``alpha`` from the group ``info[key] == value``.

    ``alpha=None`` keeps the group's natural share of ``base_index``.
    """
    base_index = np.asarray(base_index)
    member = np.array([in_group(frames[i], key, value) for i in base_index])
    if alpha is None:
        alpha = member.mean()
    n_in = int(round(alpha * size))
    inside, outside = base_index[member], base_index[~member]
    if n_in > len(inside) or size - n_in > len(outside):
        raise ValueError(f"pools.biased: alpha={alpha} needs {n_in} of {len(inside)} group frames and "
                         f"{size - n_in} of {len(outside)} others; lower the biased pool size")
    rng = np.random.default_rng([seed, 3, int(round(alpha * 1000))])
    picked = np.concatenate([rng.choice(inside, n_in, replace=False),
                             rng.choice(outside, size - n_in, replace=False)])
    return np.sort(picked)
