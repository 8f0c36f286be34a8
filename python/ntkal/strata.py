"""Strata of a pool: groups of structures that share what is known before labelling (the element set),
and the split of a batch over them in proportion to their candidates."""
from __future__ import annotations

import numpy as np

from .errors import fail

__all__ = ["composition_key", "quotas"]


def composition_key(atoms) -> str:
    """The structure's element set, e.g. ``"Au-Cu"`` (symbols sorted): its composition stratum. ``atoms`` is an
    ase.Atoms or its atomic numbers."""
    from ase.data import chemical_symbols

    numbers = atoms.numbers if hasattr(atoms, "numbers") else np.asarray(atoms)
    return "-".join(sorted({chemical_symbols[int(z)] for z in np.unique(numbers)}))


def quotas(counts: dict, n: int, *, weights: dict | None = None) -> dict:
    """Split ``n`` picks over strata in proportion to ``weights`` (default: ``counts``), never more than a
    stratum holds; largest remainders get the picks that are left (ties: the larger stratum, then key order).

    Parameters
    ----------
    counts : dict of str -> int
        Candidates per stratum.
    n : int
        Picks to split, ``n <= sum(counts)``.
    weights : dict of str -> float, optional
        Non-negative share of each stratum (e.g. expected squared error); default the counts.

    Returns
    -------
    dict of str -> int
        Picks per stratum (every key of ``counts``), summing to ``n``.
    """
    keys = sorted(counts)
    size = np.array([int(counts[k]) for k in keys], dtype=np.int64)
    if n > size.sum():
        fail("quotas", f"n={n} is larger than the {int(size.sum())} candidates")
    w = size.astype(np.float64) if weights is None else np.array([float(weights.get(k, 0.0)) for k in keys])
    if np.any(~np.isfinite(w)) or np.any(w < 0):
        fail("quotas", "weights must be finite and >= 0")
    w = np.where(size > 0, w, 0.0)
    if w.sum() <= 0:
        w = size.astype(np.float64)
    share = n * w / w.sum()
    quota = np.minimum(np.floor(share).astype(np.int64), size)
    while quota.sum() < n:  # remainders first; a full stratum passes its share on
        room = quota < size
        order = sorted(np.flatnonzero(room), key=lambda j: (-(share[j] - quota[j]), -size[j], j))
        for j in order:
            if quota.sum() == n:
                break
            quota[j] += 1
    return {k: int(q) for k, q in zip(keys, quota)}
