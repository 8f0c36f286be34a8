"""Batch selection: choose n diverse, informative structures from candidate blocks."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._arrays import as_int, as_positive_float, fail, is_device_array, rows_and_offsets
from ._loader import _core
from .posterior import PRECISIONS, Posterior

METHODS = ("lcmd", "greedy_pv", "maxdist", "topk", "random")


@dataclass(frozen=True)
class Selection:
    """Result of :func:`select`; unpacks as ``indices, scores = selection``.

    Attributes
    ----------
    indices : ndarray, shape (n,), int64
        Chosen candidate indices, in the order they were chosen.
    scores : ndarray, shape (n,), float64
        Per pick: PV at selection time (greedy_pv, topk, random with a posterior), or squared
        distance to the nearest centre at selection time (lcmd, maxdist; for a cold start the
        first pick's squared norm).
    method : str
        The method used.
    """

    indices: np.ndarray
    scores: np.ndarray
    method: str = field(default="")

    def __iter__(self):
        yield self.indices
        yield self.scores

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def distance_vectors(rows, offsets=None, *, dim: int | None = None, seed: int = 0) -> np.ndarray:
    """One vector per structure for distance-based selection.

    Single-row blocks are their own vector; multi-row blocks (force, joint) map to a Gram sketch
    ``z(x)`` with ``<z(x), z(x')> ~ ||Phi(x) Phi(x')^T||_F^2`` (rotation- and permutation-invariant;
    force rows are never summed, since they cancel for translation-invariant models).

    Parameters
    ----------
    rows : array_like, shape (n_rows, d), or Blocks
    offsets : array_like of int, shape (n + 1,), optional
    dim : int, optional
        Gram-sketch width (default d).
    seed : int
        Seed of the Gram sketch.

    Returns
    -------
    ndarray, shape (n, d or dim), float32
    """
    if is_device_array(rows):
        from . import _cuda_backend

        return _cuda_backend.distance_vectors(rows, offsets, dim=dim, seed=seed)
    rows, offsets = rows_and_offsets(rows, offsets, "distance_vectors")
    if offsets is None or np.all(np.diff(offsets) == 1):
        return rows
    dim = rows.shape[1] if dim is None else as_int(dim, "distance_vectors", "dim", low=1)
    return _core.gram_sketch(rows, offsets, dim, as_int(seed, "distance_vectors", "seed", low=0, high=2**64 - 1))


def select(rows, offsets, n: int, *, method: str = "lcmd", posterior: Posterior | None = None,
           train_rows=None, train_offsets=None, seed: int = 0, noise_var: float = 1e-3,
           precision: str = "float32") -> Selection:
    """Select ``n`` candidate structures.

    Parameters
    ----------
    rows : array_like, shape (n_rows, d), or Blocks
        Candidate feature rows (typically a PV shortlist).
    offsets : array_like of int, shape (n_pool + 1,), or None
        Candidate block offsets (None: one row per candidate).
    n : int
        Batch size, ``0 <= n <= n_pool``.
    method : {"lcmd", "greedy_pv", "maxdist", "topk", "random"}
        ``greedy_pv``: repeatedly take the highest-PV block and condition on its whole block
        (equals bmdal_reg ``maxdet`` on the train posterior for one row per block).
        ``lcmd``: largest cluster, maximum distance, with training structures as initial centres.
        ``maxdist``: greedy k-centre. ``topk``: highest PV. ``random``: uniform without replacement.
    posterior : Posterior, optional
        Posterior conditioned on the training set (greedy_pv, topk). If omitted, one is built
        from ``train_rows`` with ``noise_var``.
    train_rows, train_offsets : array_like, optional
        Training features: initial centres for lcmd/maxdist, conditioning set when no posterior is given.
    seed : int
        Seed for ``random`` and for the Gram sketch of multi-row blocks.
    noise_var : float
        Noise variance when the posterior is built here.
    precision : {"float32", "float64"}
        Arithmetic of the distance initialisation GEMM (lcmd, maxdist) and of a posterior built here.

    Returns
    -------
    Selection
    """
    where = "select"
    if method not in METHODS:
        fail(where, f"method must be one of {METHODS}; got {method!r}")
    if precision not in PRECISIONS:
        fail(where, f"precision must be one of {PRECISIONS}; got {precision!r}")
    seed = as_int(seed, where, "seed", low=0, high=2**64 - 1)
    if is_device_array(rows):
        from . import _cuda_backend

        return _cuda_backend.select(rows, offsets, n, method, posterior, train_rows, train_offsets, seed,
                                    noise_var=noise_var, precision=precision)
    rows, offsets = rows_and_offsets(rows, offsets, where)
    n_pool = rows.shape[0] if offsets is None else offsets.shape[0] - 1
    n = as_int(n, where, "n", low=0, high=n_pool)
    dim = rows.shape[1]
    has_train = train_rows is not None
    if has_train:
        train_rows, train_offsets = rows_and_offsets(train_rows, train_offsets, where, dim,
                                                     names=("train_rows", "train_offsets"))
    elif train_offsets is not None:
        fail(where, "train_offsets given without train_rows")

    if posterior is not None:
        if not isinstance(posterior, Posterior):
            fail(where, f"posterior must be an ntkal.Posterior; got {type(posterior).__name__}")
        if posterior.dim != dim:
            fail(where, f"posterior.dim must equal the feature width {dim}; got {posterior.dim}")
    elif method in ("greedy_pv", "topk"):
        posterior = Posterior(dim, noise_var=as_positive_float(noise_var, where, "noise_var"), precision=precision)
        if has_train:
            posterior.add(train_rows, train_offsets)

    if method == "greedy_pv":
        idx, scores = _core.select_greedy_pv(posterior._p, rows, offsets, n)
    elif method == "topk":
        top = _core.TopK(n)
        top.push(posterior._p.variance(rows, offsets, False), 0)
        idx, scores = top.result()
    elif method == "random":
        idx = np.random.default_rng(seed).choice(n_pool, size=n, replace=False).astype(np.int64)
        if posterior is not None:
            scores = posterior._p.variance(rows, offsets, False)[idx]
        else:
            scores = np.full(n, np.nan)
    else:
        multi = (offsets is not None and np.any(np.diff(offsets) != 1)) or (
            has_train and train_offsets is not None and np.any(np.diff(train_offsets) != 1))
        if multi:  # one Gram-sketch vector per structure, same sketch for pool and train
            vecs = _core.gram_sketch(rows, offsets, dim, seed)
            tvecs = _core.gram_sketch(train_rows, train_offsets, dim, seed) if has_train else None
        else:
            vecs, tvecs = rows, (train_rows if has_train else None)
        if tvecs is not None and tvecs.shape[0] == 0:
            tvecs = None
        idx, scores = _core.select_by_distance(method, vecs, tvecs, n, precision)
    return Selection(np.asarray(idx, dtype=np.int64), np.asarray(scores, dtype=np.float64), method)
