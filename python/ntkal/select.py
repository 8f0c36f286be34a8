"""Batch selection: choose n diverse, informative structures from candidate blocks."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import backends
from ._validation import as_int, as_positive_float
from .blocks import Blocks
from .errors import fail
from .options import DISTANCE_METHODS, MATMULS, METHODS, POSTERIOR_METHODS, PRECISIONS, choice
from .posterior import Posterior
from .variance_reduction import variance_reduction_greedy


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
    where = "distance_vectors"
    backend = backends.for_array(rows, where)
    b = backend.blocks(rows, offsets, where)
    if b.one_row_each:
        return backend.array(b)
    dim = b.dim if dim is None else as_int(dim, where, "dim", low=1)
    return backend.array(backend.gram_sketch(b, dim, as_int(seed, where, "seed", low=0, high=2**64 - 1)))


def select(rows, offsets, n: int, *, method: str = "lcmd", posterior: Posterior | None = None,
           train_rows=None, train_offsets=None, seed: int = 0, noise_var: float = 1e-3,
           precision: str = "float32", matmul: str = "float32", target_rows=None, target_offsets=None,
           target_gram=None) -> Selection:
    """Select ``n`` candidate structures.

    Parameters
    ----------
    rows : array_like, shape (n_rows, d), or Blocks
        Candidate feature rows (typically a PV shortlist).
    offsets : array_like of int, shape (n_pool + 1,), or None
        Candidate block offsets (None: one row per candidate).
    n : int
        Batch size, ``0 <= n <= n_pool``.
    method : {"lcmd", "maxdist", "greedy_pv", "topk", "variance_reduction", "random"}
        ``greedy_pv``: repeatedly take the highest-PV block and condition on its whole block
        (equals bmdal_reg ``maxdet`` on the train posterior for one row per block).
        ``lcmd``: largest cluster, maximum distance, with training structures as initial centres.
        ``maxdist``: greedy k-centre. ``topk``: highest PV. ``variance_reduction``: repeatedly take the
        block that most lowers the posterior variance integrated over a target (:mod:`ntkal.variance_reduction`;
        host arrays). ``random``: uniform without replacement.
    posterior : Posterior, optional
        Posterior conditioned on the training set (greedy_pv, topk, variance_reduction). If omitted, one is
        built from ``train_rows`` with ``noise_var``.
    train_rows, train_offsets : array_like, optional
        Training features: initial centres for lcmd/maxdist, conditioning set when no posterior is given.
    seed : int
        Seed for ``random`` and for the Gram sketch of multi-row blocks.
    noise_var : float
        Noise variance when the posterior is built here.
    precision : {"float32", "float64"}
        Arithmetic of the distance initialisation GEMM (lcmd, maxdist) and of a posterior built here.
    matmul : {"float32", "tf32", "bf16"}
        GPU scoring arithmetic for topk / random scores (see :meth:`Posterior.variance`).
    target_rows, target_offsets : array_like, optional
        ``variance_reduction``: the structures whose integrated variance to lower (default the candidates).
    target_gram : array_like (d, d), optional
        ``variance_reduction``: ``sum phi^T phi`` over the target's rows, instead of ``target_rows``.

    Returns
    -------
    Selection
    """
    where = "select"
    choice(method, METHODS, where, "method")
    choice(precision, PRECISIONS, where, "precision")
    choice(matmul, MATMULS, where, "matmul")
    seed = as_int(seed, where, "seed", low=0, high=2**64 - 1)
    backend = backends.for_array(rows, where)
    b = backend.blocks(rows, offsets, where)
    n = as_int(n, where, "n", low=0, high=b.n_blocks)
    train = None
    if train_rows is not None:
        train = backend.blocks(train_rows, train_offsets, where, width=b.dim, names=("train_rows", "train_offsets"),
                               like=b)
    elif train_offsets is not None:
        fail(where, "train_offsets given without train_rows")
    if (target_rows is not None or target_gram is not None) and method != "variance_reduction":
        fail(where, f"target_rows / target_gram apply to method='variance_reduction', not {method!r}")
    if method == "variance_reduction" and b.offsets_host is not None:
        with_rows = int(np.count_nonzero(np.diff(b.offsets_host)))
        if n > with_rows:  # a block without rows lowers no variance: it is never picked
            fail(where, f"n must be <= {with_rows}, the candidates with feature rows, for method='variance_reduction'; "
                        f"got {n}")
    posterior = _posterior(posterior, method, b, train, backend, noise_var, precision, where)
    c = _Candidates(backend, b, n, posterior, train, seed, precision, matmul,
                    (target_rows, target_offsets, target_gram))
    idx, scores = _RULES[method](c)
    if backend is backends.cpu:
        idx, scores = np.asarray(idx, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    return Selection(idx, scores, method)


def _posterior(posterior, method, b, train, backend, noise_var, precision, where):
    """The given posterior (checked), or for a method that needs one, one built from the training rows."""
    if posterior is not None:
        if not isinstance(posterior, Posterior):
            fail(where, f"posterior must be an ntkal.Posterior; got {type(posterior).__name__}")
        if posterior.dim != b.dim:
            fail(where, f"posterior.dim must equal the feature width {b.dim}; got {posterior.dim}")
        return posterior
    if method not in POSTERIOR_METHODS:
        return None
    posterior = Posterior(b.dim, noise_var=as_positive_float(noise_var, where, "noise_var"), precision=precision)
    if train is not None:  # A is accumulated on the host in float64 (training sets are small)
        posterior._p.add(backend.host_rows(train), train.n_blocks)
    return posterior


@dataclass
class _Candidates:
    """What a selection rule reads: validated candidates (and training rows) on one backend, and the settings."""

    backend: object
    blocks: object  # BlockArgs
    n: int
    posterior: Posterior | None
    train: object  # BlockArgs or None
    seed: int
    precision: str
    matmul: str
    target: tuple  # (rows, offsets, gram), variance_reduction only

    def variance(self):
        return self.backend.variance(self.posterior._p, self.blocks, False, self.matmul)


def _greedy_pv(c: _Candidates):
    return c.backend.greedy_pv(c.posterior._p, c.blocks, c.n)


def _topk(c: _Candidates):
    return c.backend.top_k(c.variance(), c.n)


def _random(c: _Candidates):
    b = c.blocks
    picks = np.random.default_rng(c.seed).choice(b.n_blocks, size=c.n, replace=False).astype(np.int64)
    idx = c.backend.from_host(picks, b)
    if c.posterior is not None:
        return idx, c.backend.take(c.variance(), idx)
    return idx, c.backend.full(c.n, float("nan"), b)


def _by_distance(c: _Candidates, method: str):
    """A DISTANCE_METHODS rule of the engine on one vector per structure (the train vectors as initial centres)."""
    b, train = c.blocks, c.train
    multi = not b.one_row_each or (train is not None and not train.one_row_each)
    if multi:  # one Gram-sketch vector per structure, same sketch for pool and train
        vecs = c.backend.gram_sketch(b, b.dim, c.seed)
        tvecs = c.backend.gram_sketch(train, b.dim, c.seed) if train is not None else None
    else:
        vecs, tvecs = b, train
    if tvecs is not None and tvecs.n_blocks == 0:
        tvecs = None
    return c.backend.select_by_distance(method, vecs, tvecs, c.n, c.precision)


def _variance_reduction(c: _Candidates):
    if c.n == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    rows, offsets, gram = c.target
    host = Blocks(c.backend.host_rows(c.blocks), c.blocks.offsets_host)
    if gram is None:  # the target's second moment in one fixed-order pass (default: the candidates themselves)
        gram = Posterior(c.blocks.dim).add(host if rows is None else rows, None if rows is None else offsets).gram
    return variance_reduction_greedy(host, c.n, c.posterior, gram)


# one rule per method of options.METHODS; a distance rule the engine implements needs no line here
_RULES = {"greedy_pv": _greedy_pv, "topk": _topk, "random": _random, "variance_reduction": _variance_reduction,
          **{m: (lambda c, m=m: _by_distance(c, m)) for m in DISTANCE_METHODS}}
