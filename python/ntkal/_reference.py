"""Pure-NumPy reference implementation of every ntkal engine operation.

Written independently of the C++ engine, from the math in ARCHITECTURE.md ("The math"), and used by the test
suite as the oracle the engine is compared against. Everything is float64 (posterior algebra in
``np.longdouble``, 80-bit on x86-64, so the reference's own rounding error sits far below the
engine's). Nothing here is fast; everything here is meant to be obviously right.

Conventions
-----------
* A pool is ragged: ``rows`` (M, d) and ``offsets`` (n + 1,) int; block i owns
  ``rows[offsets[i]:offsets[i + 1]]``. ``offsets=None`` means one row per block.
* "Ties -> lower index first" everywhere a ranking is made.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "philox4x32_10",
    "sketch_matrix",
    "project",
    "posterior_variance",
    "posterior_variance_kernel",
    "feature_scale",
    "precision_matrix",
    "whitening_matrix",
    "shortlist",
    "greedy_pv",
    "lcmd",
    "maxdist",
    "topk",
    "random_selection",
    "gram_sketch",
    "distance_vectors",
    "select",
    "block_sizes",
]

# --------------------------------------------------------------------------------------------
# Philox-4x32-10 and the implicit sketch
# --------------------------------------------------------------------------------------------

_MASK32 = np.uint64(0xFFFFFFFF)
_PHILOX_M0 = np.uint64(0xD2511F53)
_PHILOX_M1 = np.uint64(0xCD9E8D57)
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85

# Domain tags in the last counter word keep the sketch kinds on disjoint streams.
TAG_GAUSSIAN = 0x6A09E667
TAG_SPARSE = 0x3C6EF372


def philox4x32_10(counter, key0: int, key1: int) -> np.ndarray:
    """Philox-4x32-10 block function (Salmon et al., SC'11), vectorised over counters.

    Parameters
    ----------
    counter : (n, 4) array of uint32
        Counter words c0..c3 for each of n independent evaluations.
    key0, key1 : int
        The two 32-bit key words (taken modulo 2**32).

    Returns
    -------
    (n, 4) uint32
        Output words r0..r3 of each evaluation.
    """
    c = np.asarray(counter, dtype=np.uint64).reshape(-1, 4) & _MASK32
    c0, c1, c2, c3 = (c[:, i].copy() for i in range(4))
    k0, k1 = int(key0) & 0xFFFFFFFF, int(key1) & 0xFFFFFFFF
    for _ in range(10):
        # 32x32 -> 64-bit products cannot overflow uint64
        prod0 = _PHILOX_M0 * c0
        prod1 = _PHILOX_M1 * c2
        hi0, lo0 = prod0 >> np.uint64(32), prod0 & _MASK32
        hi1, lo1 = prod1 >> np.uint64(32), prod1 & _MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
        k0 = (k0 + _PHILOX_W0) & 0xFFFFFFFF
        k1 = (k1 + _PHILOX_W1) & 0xFFFFFFFF
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def _seed_key(seed: int) -> tuple[int, int]:
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed & 0xFFFFFFFF, seed >> 32


def _uniform_open(words: np.ndarray) -> np.ndarray:
    """32 random bits -> float64 uniform in the open interval (0, 1): (x + 0.5) * 2**-32."""
    return (words.astype(np.float64) + 0.5) * 2.0**-32


def gaussian_entries(params: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Standard normals N(0, 1) of the Gaussian sketch stream (before the 1/sqrt(dim) scale).

    Entry (p, j) comes from counter (j // 4, p mod 2**32, p >> 32, TAG_GAUSSIAN) under key
    (seed mod 2**32, seed >> 32); Box-Muller on the word pairs (r0, r1) and (r2, r3) gives
    z0..z3 = rad1 cos, rad1 sin, rad2 cos, rad2 sin, and column j takes z[j % 4].

    Parameters
    ----------
    params : (p,) int
        Parameter (row) indices.
    dim : int
        Number of columns.
    seed : int
        64-bit seed.

    Returns
    -------
    (p, dim) float64
    """
    params = np.asarray(params, dtype=np.uint64)
    n_quads = (dim + 3) // 4
    p_grid = np.repeat(params, n_quads)
    q_grid = np.tile(np.arange(n_quads, dtype=np.uint64), len(params))
    counter = np.stack(
        [q_grid, p_grid & _MASK32, p_grid >> np.uint64(32), np.full_like(q_grid, TAG_GAUSSIAN)], axis=1
    )
    r = philox4x32_10(counter, *_seed_key(seed))
    z = np.empty((len(counter), 4))
    for h in range(2):
        u1 = _uniform_open(r[:, 2 * h])
        u2 = _uniform_open(r[:, 2 * h + 1])
        rad = np.sqrt(-2.0 * np.log(u1))
        ang = 2.0 * np.pi * u2
        z[:, 2 * h] = rad * np.cos(ang)
        z[:, 2 * h + 1] = rad * np.sin(ang)
    return z.reshape(len(params), n_quads * 4)[:, :dim]


def sparse_sign_entries(params: np.ndarray, dim: int, seed: int, nnz: int) -> tuple[np.ndarray, np.ndarray]:
    """Buckets and signs of the sparse sign sketch.

    Nonzero t of parameter p comes from counter (t, p mod 2**32, p >> 32, TAG_SPARSE):
    bucket = (r0 * dim) >> 32 (64-bit product), sign = +1 if r1 is odd else -1.

    Returns
    -------
    bucket : (p, nnz) int64 in [0, dim)
    sign : (p, nnz) float64 in {-1, +1}
    """
    params = np.asarray(params, dtype=np.uint64)
    p_grid = np.repeat(params, nnz)
    t_grid = np.tile(np.arange(nnz, dtype=np.uint64), len(params))
    counter = np.stack(
        [t_grid, p_grid & _MASK32, p_grid >> np.uint64(32), np.full_like(t_grid, TAG_SPARSE)], axis=1
    )
    r = philox4x32_10(counter, *_seed_key(seed)).astype(np.uint64)
    bucket = ((r[:, 0] * np.uint64(dim)) >> np.uint64(32)).astype(np.int64)
    sign = np.where(r[:, 1] & np.uint64(1), 1.0, -1.0)
    return bucket.reshape(len(params), nnz), sign.reshape(len(params), nnz)


def sketch_matrix(n_params: int, dim: int, kind: str = "sparse_sign", seed: int = 0, nnz: int = 4,
                  p_begin: int = 0, p_end: int | None = None) -> np.ndarray:
    """Explicit rows S[p_begin:p_end, :] of the implicit sketch S (n_params x dim).

    * ``gaussian``: S[p, j] = z(p, j) / sqrt(dim), z standard normal (see ``gaussian_entries``).
    * ``sparse_sign``: each parameter has ``nnz`` hashed (bucket, sign) pairs and
      S[p, bucket] += sign / sqrt(nnz); colliding buckets add.

    Returns
    -------
    (p_end - p_begin, dim) float64
    """
    if p_end is None:
        p_end = n_params
    if not 0 <= p_begin <= p_end <= n_params:
        raise ValueError(f"sketch_matrix: bad parameter range [{p_begin}, {p_end}) for n_params={n_params}")
    params = np.arange(p_begin, p_end, dtype=np.uint64)
    if kind == "gaussian":
        return gaussian_entries(params, dim, seed) * (1.0 / np.sqrt(dim))
    if kind == "sparse_sign":
        bucket, sign = sparse_sign_entries(params, dim, seed, nnz)
        out = np.zeros((len(params), dim))
        row_idx = np.repeat(np.arange(len(params)), nnz)
        np.add.at(out, (row_idx, bucket.ravel()), sign.ravel() * (1.0 / np.sqrt(nnz)))
        return out
    raise ValueError(f"sketch_matrix: unknown kind {kind!r}")


def project(J, sketch: np.ndarray) -> np.ndarray:
    """Features Phi = J S in float64.

    Parameters
    ----------
    J : (m, p) array
        Jacobian rows (any real dtype; used at its exact value).
    sketch : (p, dim) array
        Sketch rows, e.g. from ``sketch_matrix``.

    Returns
    -------
    (m, dim) float64
    """
    return np.asarray(J, dtype=np.float64) @ np.asarray(sketch, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# Ragged blocks
# --------------------------------------------------------------------------------------------

def _offsets_or_default(rows: np.ndarray, offsets) -> np.ndarray:
    if offsets is None:
        return np.arange(len(rows) + 1, dtype=np.int64)
    return np.asarray(offsets, dtype=np.int64)


def block_sizes(rows: np.ndarray, offsets) -> np.ndarray:
    """Row count of every block, (n,) int64."""
    return np.diff(_offsets_or_default(rows, offsets))


def _block_ids(offsets: np.ndarray) -> np.ndarray:
    """Block index of every row, (M,) int64."""
    return np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))


def _train_matrix(train_rows, dim: int) -> np.ndarray:
    if train_rows is None:
        return np.zeros((0, dim))
    return np.asarray(train_rows, dtype=np.float64).reshape(-1, dim)


# --------------------------------------------------------------------------------------------
# Posterior (feature space, extended precision)
# --------------------------------------------------------------------------------------------

_XP = np.longdouble  # extended precision for the posterior algebra


def feature_scale(train_rows, scale: bool) -> float:
    """c = 1 / mean over training rows of ||row||^2 when ``scale``, else 1. Also 1 when there are
    no training rows or they are all zero (nothing to normalise by)."""
    if not scale or train_rows is None or len(train_rows) == 0:
        return 1.0
    t = np.asarray(train_rows, dtype=_XP)
    mean_sq = np.mean(np.sum(t * t, axis=1))
    return float(1.0 / mean_sq) if mean_sq > 0 else 1.0


def _cholesky(a: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of SPD ``a`` (d, d) in the dtype of ``a`` (works for longdouble)."""
    d = a.shape[0]
    low = np.zeros_like(a)
    for j in range(d):
        diag = a[j, j] - low[j, :j] @ low[j, :j]
        if not diag > 0:
            raise np.linalg.LinAlgError("reference _cholesky: matrix not positive definite")
        low[j, j] = np.sqrt(diag)
        low[j + 1:, j] = (a[j + 1:, j] - low[j + 1:, :j] @ low[j, :j]) / low[j, j]
    return low


def _forward_solve(low: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Y = low^{-1} b for lower-triangular ``low`` (d, d) and ``b`` (d, k)."""
    y = np.zeros(b.shape, dtype=low.dtype)
    for i in range(low.shape[0]):
        y[i] = (b[i] - low[i, :i] @ y[:i]) / low[i, i]
    return y


def precision_matrix(train_rows, noise_var: float, c: float, dim: int) -> np.ndarray:
    """A = noise_var * I + c * sum_train phi^T phi, (dim, dim) longdouble."""
    t = np.asarray(_train_matrix(train_rows, dim), dtype=_XP)
    return _XP(noise_var) * np.eye(dim, dtype=_XP) + _XP(c) * (t.T @ t)


def _row_pv(a: np.ndarray, rows: np.ndarray, noise_var: float, c: float) -> np.ndarray:
    """Per-row noise_var * c * ||L^{-1} phi^T||^2 with L = chol(a); (M,) longdouble."""
    low = _cholesky(a)
    psi = _forward_solve(low, np.asarray(rows, dtype=_XP).T)  # (d, M)
    return _XP(noise_var) * _XP(c) * np.sum(psi * psi, axis=0)


def whitening_matrix(train_rows, noise_var: float, scale: bool, dim: int) -> np.ndarray:
    """W = sqrt(c) L^{-1} with L = chol(A): PV(row) = noise_var ||W phi||^2. (dim, dim) float64."""
    c = feature_scale(train_rows, scale)
    low = _cholesky(precision_matrix(train_rows, noise_var, c, dim))
    return (np.sqrt(_XP(c)) * _forward_solve(low, np.eye(dim, dtype=_XP))).astype(np.float64)


def _sum_blocks(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    out = np.zeros(len(offsets) - 1, dtype=values.dtype)
    np.add.at(out, _block_ids(offsets), values)
    return out


def posterior_variance(train_rows, train_offsets, rows, offsets, noise_var: float, scale: bool = False,
                       intensive: bool = False) -> np.ndarray:
    """Trace posterior variance of every pool block (feature-space formula).

    A = noise_var I + c sum_train Phi^T Phi, L = chol(A), PV(block) = noise_var c ||L^{-1} Phi^T||_F^2
    summed over the block's rows; c = 1 / mean_train ||row||^2 if ``scale`` else 1 (1 with no train).

    Parameters
    ----------
    train_rows : (M_T, d) array or None
        Training feature rows (None or zero rows: prior only).
    train_offsets : (n_T + 1,) or None
        Training block offsets; they do not change the posterior (only rows matter).
    rows : (M, d) array
        Pool feature rows.
    offsets : (n + 1,) int or None
        Pool block offsets; None = one row per block.
    noise_var : float
        Observation noise variance sigma^2 > 0.
    scale : bool
        Apply the mean-train-diagonal feature scale c.
    intensive : bool
        Divide each block's PV by its row count (empty blocks: 0).

    Returns
    -------
    (n,) float64
    """
    del train_offsets  # block structure of the training set does not enter A
    rows = np.asarray(rows, dtype=np.float64)
    dim = rows.shape[1]
    offsets = _offsets_or_default(rows, offsets)
    c = feature_scale(train_rows, scale)
    pv = _sum_blocks(_row_pv(precision_matrix(train_rows, noise_var, c, dim), rows, noise_var, c), offsets)
    if intensive:
        sizes = np.diff(offsets)
        pv = np.where(sizes > 0, pv / np.maximum(sizes, 1), 0)
    return pv.astype(np.float64)


def posterior_variance_kernel(train_rows, train_offsets, rows, offsets, noise_var: float, scale: bool = False,
                              intensive: bool = False) -> np.ndarray:
    """Same quantity as ``posterior_variance`` from the kernel-space GP formula (tests only).

    PV(x) = tr[K(x,x) - K(x,T) (K(T,T) + noise_var I)^{-1} K(T,x)] with K(a,b) = c Phi(a) Phi(b)^T.
    Builds the M_T x M_T kernel: small problems only. Plain float64.

    Returns
    -------
    (n,) float64
    """
    del train_offsets
    rows = np.asarray(rows, dtype=np.float64)
    dim = rows.shape[1]
    offsets = _offsets_or_default(rows, offsets)
    t = _train_matrix(train_rows, dim)
    c = feature_scale(train_rows, scale)
    k_xx = c * np.sum(rows * rows, axis=1)  # diagonal entries only: the trace needs no more
    if len(t):
        k_tx = c * (t @ rows.T)
        k_tt = c * (t @ t.T) + noise_var * np.eye(len(t))
        k_xx = k_xx - np.sum(k_tx * np.linalg.solve(k_tt, k_tx), axis=0)
    pv = _sum_blocks(k_xx, offsets)
    if intensive:
        sizes = np.diff(offsets)
        pv = np.where(sizes > 0, pv / np.maximum(sizes, 1), 0)
    return pv


# --------------------------------------------------------------------------------------------
# Shortlist and selection
# --------------------------------------------------------------------------------------------

def shortlist(pv, k: int) -> np.ndarray:
    """Indices of the k largest ``pv`` values, PV descending, ties -> lower index first.

    Parameters
    ----------
    pv : (n,) array
    k : int  (values above n return all n)

    Returns
    -------
    (min(k, n),) int64
    """
    pv = np.asarray(pv, dtype=np.float64)
    order = np.lexsort((np.arange(len(pv)), -pv))  # last key is primary
    return order[: max(0, min(int(k), len(pv)))].astype(np.int64)


def _first_argmax(values: np.ndarray) -> int:
    """Index of the largest value, lowest index on ties (np.argmax's documented rule)."""
    return int(np.argmax(values))


def greedy_pv(rows, offsets, n: int, train_rows, train_offsets, noise_var: float,
              scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Plain (non-lazy) greedy posterior-variance batch selection.

    Repeat n times: take the unselected block with the largest current trace PV (ties -> lower
    index), then condition the posterior on all of that block's rows (A += c Phi_block^T Phi_block,
    a rank-m update of the precision matrix), and recompute every PV from scratch. The feature
    scale c is fixed by the training rows (selected pool blocks do not change it).

    Returns
    -------
    indices : (n,) int64
        Selected blocks, in selection order.
    scores : (n,) float64
        Each block's trace PV at the moment it was selected.
    """
    del train_offsets
    rows = np.asarray(rows, dtype=np.float64)
    dim = rows.shape[1]
    offsets = _offsets_or_default(rows, offsets)
    n_blocks = len(offsets) - 1
    if not 0 <= n <= n_blocks:
        raise ValueError(f"greedy_pv: n={n} outside [0, {n_blocks}]")
    c = feature_scale(train_rows, scale)
    a = precision_matrix(train_rows, noise_var, c, dim)
    selected = np.zeros(n_blocks, dtype=bool)
    indices, scores = [], []
    for _ in range(n):
        pv = _sum_blocks(_row_pv(a, rows, noise_var, c), offsets).astype(np.float64)
        pv[selected] = -np.inf
        best = _first_argmax(pv)
        indices.append(best)
        scores.append(pv[best])
        selected[best] = True
        block = np.asarray(rows[offsets[best]:offsets[best + 1]], dtype=_XP)
        a = a + _XP(c) * (block.T @ block)
    return np.asarray(indices, dtype=np.int64), np.asarray(scores, dtype=np.float64)


def _sq_dists(vectors: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every vector to one centre, from differences (exact 0 for
    duplicates, never negative). bmdal_reg expands ||a||^2 + ||b||^2 - 2 a.b instead: the same in
    exact arithmetic, but it can leave duplicates a rounding error apart."""
    diff = vectors - centre[None, :]
    return np.sum(diff * diff, axis=1)


# Score reported for a cold-start pick (no centre exists yet): bmdal_reg picks the largest-norm
# point there; we report that point's squared norm = squared distance to the origin.
def _cold_start(vectors: np.ndarray) -> tuple[int, float]:
    norms = np.sum(vectors * vectors, axis=1)
    best = _first_argmax(norms)
    return best, float(norms[best])


def maxdist(vectors, n: int, train_vectors=None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-centre (bmdal_reg ``maxdist``, TP mode: training points are initial centres).

    Every pool point keeps its squared distance to the nearest centre (initially +inf). Training
    vectors are added as centres first, in order. Each step picks the unselected point with the
    largest squared distance (ties -> lower index), which becomes a centre. Cold start (no training
    vectors, nothing selected yet): pick the point with the largest squared norm, as bmdal_reg does.

    Parameters
    ----------
    vectors : (n_pool, e) array
    n : int, 0 <= n <= n_pool
    train_vectors : (n_train, e) array or None

    Returns
    -------
    indices : (n,) int64
    scores : (n,) float64
        Squared distance to the nearest centre when the point was selected (squared norm for a
        cold-start pick).
    """
    x = np.asarray(vectors, dtype=np.float64)
    n_pool = len(x)
    if not 0 <= n <= n_pool:
        raise ValueError(f"maxdist: n={n} outside [0, {n_pool}]")
    min_sq = np.full(n_pool, np.inf)
    n_centres = 0
    for t in _train_matrix(train_vectors, x.shape[1]):
        min_sq = np.minimum(min_sq, _sq_dists(x, t))
        n_centres += 1
    selected = np.zeros(n_pool, dtype=bool)
    indices, scores = [], []
    for _ in range(n):
        if n_centres == 0:
            best, score = _cold_start(x)
        else:
            cand = np.where(selected, -np.inf, min_sq)
            best = _first_argmax(cand)
            score = float(min_sq[best])
        indices.append(best)
        scores.append(score)
        selected[best] = True
        min_sq = np.minimum(min_sq, _sq_dists(x, x[best]))
        n_centres += 1
    return np.asarray(indices, dtype=np.int64), np.asarray(scores, dtype=np.float64)


def lcmd(vectors, n: int, train_vectors=None) -> tuple[np.ndarray, np.ndarray]:
    """Largest-cluster maximum distance (bmdal_reg ``lcmd``, TP mode, dist_weight_mode='sq-dist').

    State per pool point: squared distance to its nearest centre and that centre's id. Training
    vectors become centres first, in order; a new centre takes over a point only when strictly
    closer (ties keep the older centre). Each step:

    1. cluster weight = sum of its members' squared distances (selected points included; their
       distance is 0);
    2. candidates = unselected points whose cluster has the maximal weight (several clusters may
       tie: their union is the candidate set);
    3. pick the candidate with the largest squared distance, ties -> lower index; it becomes a
       centre.

    Cold start (no training vectors, nothing selected): the largest-norm point, as bmdal_reg.

    Parameters
    ----------
    vectors : (n_pool, e) array
    n : int, 0 <= n <= n_pool
    train_vectors : (n_train, e) array or None

    Returns
    -------
    indices : (n,) int64
    scores : (n,) float64
        Squared distance to the nearest centre when selected (squared norm for a cold-start pick).
    """
    x = np.asarray(vectors, dtype=np.float64)
    n_pool = len(x)
    if not 0 <= n <= n_pool:
        raise ValueError(f"lcmd: n={n} outside [0, {n_pool}]")
    min_sq = np.full(n_pool, np.inf)
    owner = np.full(n_pool, -1, dtype=np.int64)  # centre id of each point's nearest centre
    n_centres = 0

    def add_centre(centre: np.ndarray) -> None:
        nonlocal n_centres
        d = _sq_dists(x, centre)
        closer = d < min_sq
        owner[closer] = n_centres
        min_sq[closer] = d[closer]
        n_centres += 1

    for t in _train_matrix(train_vectors, x.shape[1]):
        add_centre(t)
    selected = np.zeros(n_pool, dtype=bool)
    indices, scores = [], []
    for _ in range(n):
        if n_centres == 0:
            best, score = _cold_start(x)
        else:
            weight = np.bincount(owner, weights=min_sq, minlength=n_centres)
            in_largest = weight[owner] == weight.max()
            cand = np.where(in_largest & ~selected, min_sq, -np.inf)
            best = _first_argmax(cand)
            score = float(min_sq[best])
        indices.append(best)
        scores.append(score)
        selected[best] = True
        add_centre(x[best])
    return np.asarray(indices, dtype=np.int64), np.asarray(scores, dtype=np.float64)


def topk(pv, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n blocks by PV (no diversity): (indices = shortlist(pv, n), scores = pv[indices])."""
    pv = np.asarray(pv, dtype=np.float64)
    idx = shortlist(pv, n)
    return idx, pv[idx]


def random_selection(n_pool: int, n: int, seed: int) -> np.ndarray:
    """Uniform random batch: ``np.random.default_rng(seed).choice(n_pool, n, replace=False)``."""
    return np.random.default_rng(seed).choice(n_pool, n, replace=False).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Distance vectors (one per structure) and the select() dispatcher
# --------------------------------------------------------------------------------------------

# Seeds of the two Gaussian matrices of the Gram sketch: seed XOR these constants.
GRAM_SEED_U = 0x9E3779B97F4A7C15
GRAM_SEED_V = 0xC2B2AE3D27D4EB4F


def gram_sketch(rows, offsets, out_dim: int, seed: int) -> np.ndarray:
    """Gram sketch z(x) of every block: <z(x), z(x')> ~ ||Phi(x) Phi(x')^T||_F^2 = tr(G(x) G(x')).

    z_k(x) = (1 / sqrt(e)) sum_rows (phi_r . u_k)(phi_r . v_k), k < e = out_dim, where u_k, v_k are
    the k-th columns of sqrt(e) * S_U and sqrt(e) * S_V, and S_U, S_V are the (d x e) Gaussian
    sketches with seeds ``seed ^ GRAM_SEED_U`` and ``seed ^ GRAM_SEED_V`` (so u_k, v_k are standard
    normal vectors in R^d). E[z_k(x) z_k(x')] = (1/e) sum_{r,s} (phi_r . phi'_s)^2.

    Parameters
    ----------
    rows : (M, d) array
    offsets : (n + 1,) int or None
    out_dim : int
        e, the sketch width.
    seed : int

    Returns
    -------
    (n, out_dim) float64
    """
    rows = np.asarray(rows, dtype=np.float64)
    d = rows.shape[1]
    offsets = _offsets_or_default(rows, offsets)
    mask = 0xFFFFFFFFFFFFFFFF
    u = sketch_matrix(d, out_dim, "gaussian", (int(seed) ^ GRAM_SEED_U) & mask) * np.sqrt(out_dim)
    v = sketch_matrix(d, out_dim, "gaussian", (int(seed) ^ GRAM_SEED_V) & mask) * np.sqrt(out_dim)
    per_row = (rows @ u) * (rows @ v) / np.sqrt(out_dim)  # (M, e)
    out = np.zeros((len(offsets) - 1, out_dim))
    np.add.at(out, _block_ids(offsets), per_row)
    return out


def distance_vectors(rows, offsets=None, dim: int | None = None, seed: int = 0) -> np.ndarray:
    """One vector per structure for distance-based selection: the row itself when every block has
    exactly one row, else ``gram_sketch(rows, offsets, dim or d, seed)``.

    Returns
    -------
    (n, d) or (n, dim) float64
    """
    rows = np.asarray(rows, dtype=np.float64)
    sizes = block_sizes(rows, offsets)
    if np.all(sizes == 1):
        return rows.copy()
    return gram_sketch(rows, offsets, rows.shape[1] if dim is None else dim, seed)


def select(rows, offsets, n: int, method: str = "lcmd", train_rows=None, train_offsets=None,
           noise_var: float = 1e-3, scale: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference of ``ntkal.select``: dispatch to one of the methods above.

    * greedy_pv / topk: posterior conditioned on ``train_rows`` with ``noise_var`` (and ``scale``).
    * lcmd / maxdist: one vector per structure. When any pool or train block has more than one row,
      pool and train both use the Gram sketch (width d, ``seed``); otherwise the rows themselves.
      Training structures are the initial centres.
    * random: ``random_selection(n_pool, n, seed)``; scores = PV under the train posterior (the
      engine reports these only when it is given a posterior, NaN otherwise).

    Returns
    -------
    indices : (n,) int64
    scores : (n,) float64
    """
    rows = np.asarray(rows, dtype=np.float64)
    offsets = _offsets_or_default(rows, offsets)
    n_pool = len(offsets) - 1
    if method == "greedy_pv":
        return greedy_pv(rows, offsets, n, train_rows, train_offsets, noise_var, scale=scale)
    if method in ("topk", "random"):
        pv = posterior_variance(train_rows, train_offsets, rows, offsets, noise_var, scale=scale)
        if method == "topk":
            return topk(pv, n)
        idx = random_selection(n_pool, n, seed)
        return idx, pv[idx]
    if method in ("lcmd", "maxdist"):
        has_train = train_rows is not None and len(train_rows) > 0
        multi = np.any(np.diff(offsets) != 1)
        if has_train:
            t_rows = np.asarray(train_rows, dtype=np.float64)
            t_off = _offsets_or_default(t_rows, train_offsets)
            multi = multi or np.any(np.diff(t_off) != 1)
        d = rows.shape[1]
        vecs = gram_sketch(rows, offsets, d, seed) if multi else rows
        tvecs = None
        if has_train:
            tvecs = gram_sketch(t_rows, t_off, d, seed) if multi else t_rows
        return (lcmd if method == "lcmd" else maxdist)(vecs, n, tvecs)
    raise ValueError(f"select: unknown method {method!r}")


def nearest_train(vectors, train_vectors) -> np.ndarray:
    """Index of the nearest training vector of every vector (float64 distances, ties: lowest index)."""
    x = np.asarray(vectors, dtype=np.float64)
    t = np.asarray(train_vectors, dtype=np.float64)
    # np.argmin returns the first minimum: the lowest index on ties
    return np.array([int(np.argmin(_sq_dists(t, xi))) for xi in x], dtype=np.int64)


def training_gram(rows) -> np.ndarray:
    """sum_r phi_r^T phi_r in float64."""
    r = np.asarray(rows, dtype=np.float64)
    return r.T @ r


def leave_one_out_variance(train_rows, train_offsets, noise_var: float, scale: bool = False,
                           intensive: bool = False) -> np.ndarray:
    """PV of each training block under the posterior built from all other training blocks (from scratch)."""
    rows = np.asarray(train_rows, dtype=np.float64)
    offsets = _offsets_or_default(rows, train_offsets)
    c = feature_scale(rows, scale)  # the full training set fixes c, as in the product
    out = np.empty(len(offsets) - 1)
    for i in range(len(offsets) - 1):
        a, b = offsets[i], offsets[i + 1]
        others = np.concatenate([rows[:a], rows[b:]])
        A = noise_var * np.eye(rows.shape[1]) + c * others.T @ others
        block = rows[a:b]
        out[i] = noise_var * c * np.trace(block @ np.linalg.solve(A, block.T))
        if intensive:
            out[i] /= (b - a)
    return out


def variance_reduction_scores(rows, offsets, train_rows, noise_var: float, target_gram, active=None,
                              scale: bool = False) -> np.ndarray:
    """One step of variance reduction: for every active block X (scaled rows), the drop of the
    integrated variance noise_var c tr(A^{-1} M) when A gains c X^T X, from the Woodbury form
    noise_var c^2 tr[(I + c X A^{-1} X^T)^{-1} X A^{-1} M A^{-1} X^T] with float64 solves against A
    itself (no Cholesky, no whitening). Inactive or empty blocks score -inf."""
    rows = np.asarray(rows, dtype=np.float64)
    offsets = _offsets_or_default(rows, offsets)
    train = np.asarray(train_rows, dtype=np.float64).reshape(-1, rows.shape[1])
    c = feature_scale(train, scale)
    d = rows.shape[1]
    A = noise_var * np.eye(d) + c * train.T @ train
    M = np.asarray(target_gram, dtype=np.float64)
    n_blocks = len(offsets) - 1
    active = np.ones(n_blocks, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    out = np.full(n_blocks, -np.inf)
    for i in np.flatnonzero(active):
        X = rows[offsets[i]:offsets[i + 1]]
        if not len(X):
            continue
        AiXt = np.linalg.solve(A, X.T)  # A^{-1} X^T
        inner = np.eye(len(X)) + c * X @ AiXt
        out[i] = noise_var * c * c * np.trace(np.linalg.solve(inner, AiXt.T @ M @ AiXt))
    return out


def variance_reduction_greedy(rows, offsets, n: int, train_rows, noise_var: float, target_rows,
                              scale: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Greedy integrated-variance reduction from explicit inverses: reduction of block x =
    noise_var c tr[(A^{-1} - (A + c X^T X)^{-1}) M], M = sum_t phi_t^T phi_t over the target rows."""
    rows = np.asarray(rows, dtype=np.float64)
    offsets = _offsets_or_default(rows, offsets)
    train = np.asarray(train_rows, dtype=np.float64)
    c = feature_scale(train, scale)
    d = rows.shape[1]
    A = noise_var * np.eye(d) + c * train.T @ train
    T = np.asarray(target_rows, dtype=np.float64)
    M = T.T @ T
    chosen = np.zeros(len(offsets) - 1, dtype=bool)
    picks, gains = [], []
    for _ in range(n):
        Ainv = np.linalg.inv(A)
        base = np.trace(Ainv @ M)
        g = np.full(len(offsets) - 1, -np.inf)
        for i in range(len(offsets) - 1):
            if chosen[i] or offsets[i + 1] == offsets[i]:
                continue
            X = rows[offsets[i]:offsets[i + 1]]
            g[i] = noise_var * c * (base - np.trace(np.linalg.inv(A + c * X.T @ X) @ M))
        best = _first_argmax(g)
        picks.append(best)
        gains.append(g[best])
        chosen[best] = True
        X = rows[offsets[best]:offsets[best + 1]]
        A = A + c * X.T @ X
    return np.array(picks, dtype=np.int64), np.array(gains)
