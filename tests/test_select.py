"""ntkal.select (greedy_pv, lcmd, maxdist, topk, random) and ntkal.distance_vectors against the
NumPy reference: same indices, scores close."""

from __future__ import annotations

import numpy as np
import pytest

import ntkal

U32 = 2.0**-24


def _train_and_pool(gen, d=12, n_train=30, n_pool=120, hi=1):
    train = gen.rows(n_train, d)
    rows, offsets = gen.pool(n_pool, d, 1, hi)
    return train, rows, (offsets if hi > 1 else None)


# ------------------------------------------------------------------------------ greedy_pv

@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("hi", [1, 30])
def test_greedy_pv_matches_reference(ref, gen, precision, hi):
    train, rows, offsets = _train_and_pool(gen, hi=hi)
    post = ntkal.Posterior(12, noise_var=1e-2, precision=precision).add(train)
    sel = ntkal.select(rows, offsets, 25, method="greedy_pv", posterior=post)
    idx, scores = ref.greedy_pv(rows, offsets, 25, train, None, 1e-2)
    np.testing.assert_array_equal(sel.indices, idx)
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-9)


def test_greedy_pv_from_train_rows_and_scale(ref, gen):
    train, rows, offsets = _train_and_pool(gen, hi=8)
    sel = ntkal.select(rows, offsets, 20, method="greedy_pv", train_rows=train, noise_var=0.05)
    idx, scores = ref.greedy_pv(rows, offsets, 20, train, None, 0.05)
    np.testing.assert_array_equal(sel.indices, idx)
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-9)
    post = ntkal.Posterior(12, noise_var=0.05, scale=True, precision="float64").add(train * 7.0)
    sel = ntkal.select(rows, offsets, 20, method="greedy_pv", posterior=post)
    idx, scores = ref.greedy_pv(rows, offsets, 20, train * 7.0, None, 0.05, scale=True)
    np.testing.assert_array_equal(sel.indices, idx)
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-9)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_greedy_pv_ill_conditioned(ref, gen, precision):
    d = 16
    train = gen.ill_conditioned(300, d, sv_span=1e4, top=1e2)
    rows, offsets = gen.pool(80, d, 1, 6)
    post = ntkal.Posterior(d, noise_var=1e-4, precision=precision).add(train)
    sel = ntkal.select(rows, offsets, 30, method="greedy_pv", posterior=post)
    idx, scores = ref.greedy_pv(rows, offsets, 30, train, None, 1e-4)
    np.testing.assert_array_equal(sel.indices, idx)
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-7)


def test_greedy_pv_cold_start_full_pool_and_zero(ref, gen):
    d = 6
    rows, offsets = gen.pool(15, d, 1, 4)
    for n in (0, 1, 15):
        sel = ntkal.select(rows, offsets, n, method="greedy_pv", noise_var=0.1)
        idx, scores = ref.greedy_pv(rows, offsets, n, None, None, 0.1)
        np.testing.assert_array_equal(sel.indices, idx)
        np.testing.assert_allclose(sel.scores, scores, rtol=1e-9)
        assert sel.indices.dtype == np.int64 and sel.scores.dtype == np.float64


def test_greedy_pv_exact_ties(ref):
    phi = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 2.0], [1.0, 0.0]], np.float32)
    sel = ntkal.select(phi, None, 4, method="greedy_pv", noise_var=1.0)
    np.testing.assert_array_equal(sel.indices, [1, 0, 2, 3])
    np.testing.assert_allclose(sel.scores, [4.0, 1.0, 0.8, 0.5], rtol=1e-12)
    # duplicate multi-row blocks
    block = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]], np.float32)
    rows = np.concatenate([block, block * 0.5, block, block])
    offsets = np.array([0, 2, 4, 6, 8])
    sel = ntkal.select(rows, offsets, 4, method="greedy_pv", noise_var=0.3)
    np.testing.assert_array_equal(sel.indices, ref.greedy_pv(rows, offsets, 4, None, None, 0.3)[0])
    assert sel.indices[0] == 0


def test_greedy_pv_single_block_and_empty_block(ref, gen):
    d = 5
    rows = gen.rows(9, d)
    sel = ntkal.select(rows, np.array([0, 9]), 1, method="greedy_pv", noise_var=0.1)
    np.testing.assert_array_equal(sel.indices, [0])
    np.testing.assert_allclose(sel.scores, ref.posterior_variance(None, None, rows, [0, 9], 0.1), rtol=1e-9)
    offsets = np.array([0, 4, 4, 9])  # block 1 is empty: PV 0, picked last
    sel = ntkal.select(rows, offsets, 3, method="greedy_pv", noise_var=0.1)
    idx, scores = ref.greedy_pv(rows, offsets, 3, None, None, 0.1)
    np.testing.assert_array_equal(sel.indices, idx)
    assert sel.indices[-1] == 1 and sel.scores[-1] == 0.0


# ------------------------------------------------------------------------------ topk / random

@pytest.mark.parametrize("hi", [1, 20])
def test_topk_matches_reference(ref, gen, hi):
    train, rows, offsets = _train_and_pool(gen, hi=hi)
    post = ntkal.Posterior(12, noise_var=1e-2, precision="float64").add(train)
    sel = ntkal.select(rows, offsets, 30, method="topk", posterior=post)
    pv = ref.posterior_variance(train, None, rows, offsets, 1e-2)
    idx, scores = ref.topk(pv, 30)
    np.testing.assert_array_equal(sel.indices, idx)
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-10)
    sel_all = ntkal.select(rows, offsets, 120, method="topk", posterior=post)
    np.testing.assert_array_equal(sel_all.indices, ref.topk(pv, 120)[0])


def test_random_definition(ref, gen):
    train, rows, _ = _train_and_pool(gen)
    post = ntkal.Posterior(12, noise_var=1e-2, precision="float64").add(train)
    for seed in (0, 7, 2**40):
        sel = ntkal.select(rows, None, 17, method="random", posterior=post, seed=seed)
        expected = ref.random_selection(120, 17, seed)
        np.testing.assert_array_equal(sel.indices, expected)
        np.testing.assert_allclose(sel.scores, ref.posterior_variance(train, None, rows, None, 1e-2)[expected],
                                   rtol=1e-10)
    sel = ntkal.select(rows, None, 5, method="random", seed=3)  # no posterior, no train: no PV to report
    np.testing.assert_array_equal(sel.indices, ref.random_selection(120, 5, 3))
    assert np.all(np.isnan(sel.scores))
    assert np.array_equal(np.sort(ntkal.select(rows, None, 120, method="random").indices), np.arange(120))


# ------------------------------------------------------------------------------ lcmd / maxdist

@pytest.mark.parametrize("method", ["lcmd", "maxdist"])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_distance_methods_with_train(ref, gen, method, precision):
    train, rows, _ = _train_and_pool(gen, d=10, n_train=50, n_pool=300)
    sel = ntkal.select(rows, None, 40, method=method, train_rows=train, precision=precision)
    idx, scores = getattr(ref, method)(rows, 40, train)
    np.testing.assert_array_equal(sel.indices, idx)
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-12)
    assert sel.method == method


@pytest.mark.parametrize("method", ["lcmd", "maxdist"])
def test_distance_methods_cold_start(ref, gen, method):
    rows = gen.rows(200, 8)
    for train in (None, np.zeros((0, 8), np.float32)):
        sel = ntkal.select(rows, None, 30, method=method, train_rows=train)
        idx, scores = getattr(ref, method)(rows, 30, None)
        np.testing.assert_array_equal(sel.indices, idx)
        np.testing.assert_allclose(sel.scores, scores, rtol=1e-12)


@pytest.mark.parametrize("method", ["lcmd", "maxdist"])
def test_distance_methods_full_pool_zero_and_single(ref, gen, method):
    train, rows, _ = _train_and_pool(gen, d=4, n_train=5, n_pool=25)
    for n in (0, 25):
        sel = ntkal.select(rows, None, n, method=method, train_rows=train)
        idx, scores = getattr(ref, method)(rows, n, train)
        np.testing.assert_array_equal(sel.indices, idx)
        np.testing.assert_allclose(sel.scores, scores, rtol=1e-12)
    sel = ntkal.select(rows[:1], None, 1, method=method, train_rows=train)
    np.testing.assert_array_equal(sel.indices, [0])
    np.testing.assert_allclose(sel.scores, getattr(ref, method)(rows[:1], 1, train)[1], rtol=1e-12)


@pytest.mark.parametrize("method", ["lcmd", "maxdist"])
def test_distance_methods_exact_ties(ref, method):
    # integer-valued coordinates: every distance is exact, many are equal
    train = np.array([[0, 0], [4, 0], [0, 4]], np.float32)
    pool = np.array([[2, 0], [0, 2], [4, 4], [2, 2], [0, 0], [4, 0], [-2, 0], [2, 0], [6, 0], [0, -2]], np.float32)
    for tr in (train, None):
        sel = ntkal.select(pool, None, 10, method=method, train_rows=tr)
        idx, scores = getattr(ref, method)(pool, 10, tr)
        np.testing.assert_array_equal(sel.indices, idx)
        np.testing.assert_array_equal(sel.scores, scores)
    # every pool point duplicates a centre: all distances 0, ties -> lowest index
    sel = ntkal.select(train[[1, 0, 1]], None, 3, method=method, train_rows=train)
    np.testing.assert_array_equal(sel.indices, [0, 1, 2])
    np.testing.assert_array_equal(sel.scores, 0.0)


def test_lcmd_cluster_weight_tie_takes_union(ref):
    pool = np.array([[2, 0], [-2, 0], [12, 2]], np.float32)
    train = np.array([[0, 0], [10, 0]], np.float32)
    sel = ntkal.select(pool, None, 3, method="lcmd", train_rows=train)
    np.testing.assert_array_equal(sel.indices, ref.lcmd(pool, 3, train)[0])
    assert sel.indices[0] == 2 and sel.scores[0] == 8.0


@pytest.mark.parametrize("method", ["lcmd", "maxdist"])
def test_distance_methods_clustered_data(ref, gen, method):
    # tight, well-separated blobs: the engine only rescans clusters a new centre can reach
    # (triangle inequality); the reference rescans everything
    d = 6
    centres = 5.0 * gen.rows(25, d, np.float64)
    labels = gen.rng.integers(0, 25, size=1500)
    rows = (centres[labels] + 0.05 * gen.rows(1500, d, np.float64)).astype(np.float32)
    train = (centres[:4] + 0.05 * gen.rows(4, d, np.float64)).astype(np.float32)
    sel = ntkal.select(rows, None, 120, method=method, train_rows=train, precision="float64")
    idx, scores = getattr(ref, method)(rows, 120, train)
    np.testing.assert_array_equal(sel.indices, idx)
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-12)
    assert len(np.unique(labels[idx[:21]])) == 21  # first picks visit the 21 blobs without a centre


@pytest.mark.parametrize("method", ["lcmd", "maxdist"])
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_distance_methods_features_far_from_origin(ref, gen, method, precision):
    # real NTK features share a large common component: ||x|| >> distances between points. The
    # nearest-train search expands ||x||^2 + ||t||^2 - 2 x.t, which cancels catastrophically then.
    d = 16
    offset = 300.0 * np.ones(d)
    train = (offset + gen.rows(60, d, np.float64)).astype(np.float32)
    rows = (offset + gen.rows(200, d, np.float64)).astype(np.float32)
    sel = ntkal.select(rows, None, 30, method=method, train_rows=train, precision=precision)
    idx, scores = getattr(ref, method)(rows, 30, train)
    np.testing.assert_array_equal(sel.indices, idx)
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-9)


@pytest.mark.parametrize("method", ["lcmd", "maxdist"])
def test_distance_methods_ragged_blocks_use_gram_sketch(ref, gen, method):
    d = 8
    train, t_off = gen.pool(20, d, 2, 10)
    rows, offsets = gen.pool(90, d, 1, 12)
    sel = ntkal.select(rows, offsets, 20, method=method, train_rows=train, train_offsets=t_off, seed=5)
    # selection logic on the engine's own vectors must match exactly
    vecs = ntkal.distance_vectors(rows, offsets, seed=5)
    tvecs = ntkal.distance_vectors(train, t_off, seed=5)
    idx, scores = getattr(ref, method)(vecs, 20, tvecs)
    np.testing.assert_array_equal(sel.indices, idx)
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-12)
    # and the reference dispatcher (float64 Gram sketch) picks the same batch
    ref_idx, ref_scores = ref.select(rows, offsets, 20, method, train, t_off, seed=5)
    np.testing.assert_array_equal(sel.indices, ref_idx)
    np.testing.assert_allclose(sel.scores, ref_scores, rtol=1e-4)


def test_blocks_input_and_selection_object(gen):
    train, rows, offsets = _train_and_pool(gen, hi=5)
    blocks = ntkal.Blocks(rows, offsets)
    a = ntkal.select(blocks, None, 10, method="lcmd", train_rows=train)
    b = ntkal.select(rows, offsets, 10, method="lcmd", train_rows=train)
    np.testing.assert_array_equal(a.indices, b.indices)
    idx, scores = a
    assert len(a) == 10 and idx is a.indices and scores is a.scores
    assert len(set(idx.tolist())) == 10


# ------------------------------------------------------------------------------ distance vectors

def test_distance_vectors_single_rows_are_the_rows(gen):
    rows = gen.rows(20, 6)
    np.testing.assert_array_equal(ntkal.distance_vectors(rows), rows)
    np.testing.assert_array_equal(ntkal.distance_vectors(rows, np.arange(21)), rows)


@pytest.mark.parametrize("seed", [0, 9, 2**64 - 1])
@pytest.mark.parametrize("dim", [None, 5, 40])
def test_gram_sketch_matches_reference(ref, gen, seed, dim):
    d = 12
    rows, offsets = gen.pool(25, d, 1, 30)
    offsets[3] = offsets[2]  # an empty block
    got = ntkal.distance_vectors(rows, offsets, dim=dim, seed=seed)
    e = d if dim is None else dim
    expected = ref.gram_sketch(rows, offsets, e, seed)
    assert got.shape == (25, e) and got.dtype == np.float32
    # float32 U, V and GEMMs: each product term is off by <= 2 (d + 2) u relative to |phi||U| |phi||V|
    u = ref.sketch_matrix(d, e, "gaussian", seed ^ ref.GRAM_SEED_U) * np.sqrt(e)
    v = ref.sketch_matrix(d, e, "gaussian", seed ^ ref.GRAM_SEED_V) * np.sqrt(e)
    a = np.abs(rows.astype(np.float64))
    per_row = (a @ np.abs(u)) * (a @ np.abs(v)) / np.sqrt(e)
    scale = np.add.reduceat(per_row, offsets[:-1]) * (np.diff(offsets) > 0)[:, None]
    bound = (2 * (d + 2) + 2) * U32 * scale + U32 * np.abs(expected)
    assert np.all(np.abs(got - expected) <= bound)
    np.testing.assert_array_equal(got[2], 0.0)


def test_gram_sketch_is_rotation_and_permutation_invariant(gen):
    d = 10
    blocks = [gen.rows(m, d) for m in (3, 7, 12)]
    q, _ = np.linalg.qr(gen.rng.standard_normal((7, 7)))
    moved = [blocks[0][[2, 0, 1]], (q @ blocks[1].astype(np.float64)).astype(np.float32), blocks[2][::-1]]
    z = ntkal.distance_vectors(ntkal.Blocks.from_list(blocks), seed=1)
    z_moved = ntkal.distance_vectors(ntkal.Blocks.from_list(moved), seed=1)
    np.testing.assert_allclose(z_moved, z, rtol=0, atol=1e-5 * np.abs(z).max())


def test_gram_sketch_inner_products_estimate_kernel(gen):
    d, e = 8, 4096
    blocks = [gen.rows(m, d) for m in (2, 5, 9, 4)]
    z = ntkal.distance_vectors(ntkal.Blocks.from_list(blocks), dim=e, seed=2).astype(np.float64)
    exact = np.array([[np.sum((a.astype(np.float64) @ b.T.astype(np.float64)) ** 2) for b in blocks]
                      for a in blocks])
    approx = z @ z.T
    # unbiased estimator; relative spread ~ sqrt(8 / e) for these sizes
    np.testing.assert_allclose(approx, exact, rtol=0.15)


@pytest.mark.parametrize("method", ["lcmd", "maxdist"])
@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_train_centres_projected_bounds_route(ref, method, offset):
    # >= 1024 train vectors of width >= 128 with a decaying spectrum take the engine's
    # projected-bounds route (float32); it must pick exactly what brute force in float64 and the
    # reference pick. Duplicated train rows create exact distance ties.
    rng = np.random.default_rng(7)
    d, n_train, n_pool = 128, 1100, 700
    scales = (np.arange(1, d + 1, dtype=np.float64) ** -1.5)
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    latent = rng.standard_normal((n_train + n_pool, d)) * scales
    feats = (latent @ basis.T + offset).astype(np.float32)
    train, pool = feats[:n_train].copy(), feats[n_train:].copy()
    train[5] = train[900]  # exact duplicate centre: ties must go to the lower index
    fast = ntkal.select(pool, None, 40, method=method, train_rows=train, precision="float32")
    exact = ntkal.select(pool, None, 40, method=method, train_rows=train, precision="float64")
    idx, scores = getattr(ref, method)(pool, 40, train)
    np.testing.assert_array_equal(fast.indices, exact.indices)
    np.testing.assert_array_equal(fast.indices, idx)
    np.testing.assert_allclose(fast.scores, scores, rtol=1e-9, atol=1e-12 * float(np.max(scores)))
