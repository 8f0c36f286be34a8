"""Target-aware batch selection: greedily pick the structures that most lower the posterior variance
integrated over a target distribution (the pool by default), in feature space.

Max-PV plus diversity aims at the worst case; the average error over the structures a user cares
about falls fastest where the integrated variance falls most. With ``A = noise_var I + c sum Phi^T Phi``
and the target's second moment ``M = sum_t phi_t^T phi_t`` (a d x d Gram, accumulated chunk by chunk),
adding a block X of scaled rows lowers the integrated variance ``noise_var c tr(A^{-1} M)`` by

    noise_var * tr[(I + X A^{-1} X^T)^{-1} X A^{-1} (c M) A^{-1} X^T].

In whitened coordinates (``w = sqrt(c) L^{-1} phi``, ``N = sqrt(c) L^{-1} M L^{-T} sqrt(c)``) this is
``noise_var tr[(I + W W^T)^{-1} W N W^T]``. After each pick the posterior is conditioned on it and
the candidates re-whitened: O(k m d^2 + d^3) per pick for k candidates of m rows, no n x n kernel.
The scores come from the engine (``cpp/block_traces.cpp``: fixed-order products, Cholesky and
traces, so the picks and gains have the same bits under every BLAS build, core type and thread
count). The float64 references are ``ntkal._reference.variance_reduction_scores`` (one step) and
``ntkal._reference.variance_reduction_greedy`` (the whole greedy run).
"""
from __future__ import annotations

import numpy as np

from . import backends
from .blocks import Blocks
from .errors import fail

__all__ = ["variance_reduction_greedy"]


def variance_reduction_greedy(candidates: Blocks, n: int, posterior, target_gram) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n`` candidate blocks, each time the one that most lowers the integrated target variance.

    Parameters
    ----------
    candidates : Blocks
        Candidate feature blocks (host rows), e.g. a PV shortlist.
    n : int
        Picks, ``1 <= n <= len(candidates)``.
    posterior : Posterior
        Conditioned on the training set; not modified (a copy is conditioned on the picks).
    target_gram : ndarray, shape (dim, dim)
        ``sum_t phi_t^T phi_t`` over the target structures' rows (unscaled features; divide by the
        number of target structures for a mean, which does not change the picks).

    Returns
    -------
    picks : ndarray, shape (n,), int64
        Positions in ``candidates``, in pick order (ties: lower position).
    reductions : ndarray, shape (n,), float64
        Integrated-variance reduction of each pick at the time it was picked.
    """
    where = "variance_reduction_greedy"
    if not isinstance(candidates, Blocks):
        fail(where, f"candidates must be ntkal.Blocks; got {type(candidates).__name__}")
    candidates = candidates.to_host()
    if not (1 <= int(n) <= len(candidates)):
        fail(where, f"n must be in [1, {len(candidates)}]; got {n}")
    M = np.asarray(target_gram, dtype=np.float64)
    if M.shape != (posterior.dim, posterior.dim) or not np.all(np.isfinite(M)):
        fail(where, f"target_gram must be a finite ({posterior.dim}, {posterior.dim}) array; "
                    f"got shape {M.shape}")
    # the feature scale c stays the training set's while picks are added (as in greedy PV): work with
    # scaled rows sqrt(c) phi in an unscaled float64 posterior
    from .posterior import Posterior

    c = float(posterior.feature_scale)
    post = Posterior(posterior.dim, noise_var=posterior.noise_var, precision="float64")
    if posterior.n_rows:
        post.add_gram(c * posterior.gram, posterior.n_rows, posterior.n_blocks)
    rows = candidates.rows if c == 1.0 else (np.sqrt(c) * candidates.rows.astype(np.float64)).astype(np.float32)
    candidates = Blocks(rows, candidates.offsets)
    M = c * M
    b = backends.cpu.blocks(candidates, None, where, width=posterior.dim)
    active = np.diff(candidates.offsets) > 0
    picks, gains = [], []
    for _ in range(int(n)):
        # the engine's fixed-order kernels, not NumPy's BLAS/LAPACK: the same bits on every machine
        s = backends.cpu.variance_reduction_scores(post._p, b, M, active)
        if not np.isfinite(s).any():
            fail(where, f"fewer than n={n} candidates with feature rows")
        best = int(np.argmax(s))  # first maximum: ties go to the lower position
        picks.append(best)
        gains.append(float(s[best]))
        active[best] = False
        post.add(candidates[best])
    return np.array(picks, dtype=np.int64), np.array(gains)
