"""What a screen found: :class:`Screen`, returned by :func:`ntkal.screen` and used by :func:`ntkal.acquire`."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .blocks import Blocks
from .calibration import Calibration
from .posterior import Posterior

__all__ = ["Screen"]


@dataclass
class Screen:
    """What :func:`screen` found.

    Attributes
    ----------
    pool_pv : ndarray, shape (n_pool,), float64 or None
        PV of every pool structure given the training set (NaN for a skipped one); None when the pool was
        not scored (``score_pool=False``).
    posterior : Posterior or None
        Conditioned on the training set (the prior without one; None only when nothing was featurized).
    shortlists : dict of str -> (ndarray int64, ndarray float64)
        Per stratum, the ``k`` best candidates (pool index, score = calibration scale x PV), best first;
        a structure skipped or already in the training set is no candidate.
    rows : dict of str -> Blocks
        The feature rows of each shortlist, in its order.
    available : dict of str -> int
        Candidates per stratum (finite PV, not skipped, not in the training set).
    keys : list of str
        Stratum of every pool structure (``"*"`` with ``strata="none"``).
    train_features : Blocks or None
        Feature rows of the training structures that have some.
    target_gram : ndarray (dim, dim) or None
        ``sum phi^T phi`` over the target's rows (``target_gram=True``; the pool's without ``target``).
    calibration : Calibration or None
    excluded : ndarray of int64
        Pool structures with the geometry of a training structure (:mod:`ntkal.same_geometry`).
    skipped : list of (str, int, str)
        ``(label, index, reason)`` of every structure left out (``on_error="skip"``).
    timings : dict of str -> float
        Seconds per phase: check, train_features, posterior, calibration, pool_features, scoring.
    n_pool, n_train, k : int
    cached_chunks, computed_chunks : int
        Feature chunks loaded from the store / computed in this run.
    """

    pool_pv: np.ndarray | None
    posterior: Posterior | None
    shortlists: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)
    available: dict = field(default_factory=dict)
    keys: list = field(default_factory=list)
    train_features: Blocks | None = None
    target_gram: np.ndarray | None = None
    calibration: Calibration | None = None
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    skipped: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    n_pool: int = 0
    n_train: int = 0
    k: int = 0
    cached_chunks: int = 0
    computed_chunks: int = 0
    candidates: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def shortlist(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stratum's shortlist in one ranking: (pool indices, scores), best score first (ties: lower index)."""
        if not self.shortlists:
            return np.zeros(0, np.int64), np.zeros(0)
        idx = np.concatenate([v[0] for v in self.shortlists.values()])
        sc = np.concatenate([v[1] for v in self.shortlists.values()])
        order = np.lexsort((idx, -sc))
        return idx[order], sc[order]
