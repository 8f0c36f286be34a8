"""ntkal.select (greedy_pv, lcmd, maxdist, topk, random) and ntkal.distance_vectors against the
NumPy reference: same indices, scores close."""

from __future__ import annotations

import numpy as np
import pytest

import ntkal
from ntkal.options import DISTANCE_METHODS  # every distance method, checked against the reference of its name
from _gpu import _dev, _float64_twin, _host, _posterior, _torch, assert_ranking_matches, on_gpu
from ntkal._loader import _core

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

@pytest.mark.parametrize("method", DISTANCE_METHODS)
@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_distance_methods_with_train(ref, gen, method, precision):
    train, rows, _ = _train_and_pool(gen, d=10, n_train=50, n_pool=300)
    sel = ntkal.select(rows, None, 40, method=method, train_rows=train, precision=precision)
    idx, scores = getattr(ref, method)(rows, 40, train)
    np.testing.assert_array_equal(sel.indices, idx)
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-12)
    assert sel.method == method


@pytest.mark.parametrize("method", DISTANCE_METHODS)
def test_distance_methods_cold_start(ref, gen, method):
    rows = gen.rows(200, 8)
    for train in (None, np.zeros((0, 8), np.float32)):
        sel = ntkal.select(rows, None, 30, method=method, train_rows=train)
        idx, scores = getattr(ref, method)(rows, 30, None)
        np.testing.assert_array_equal(sel.indices, idx)
        np.testing.assert_allclose(sel.scores, scores, rtol=1e-12)


@pytest.mark.parametrize("method", DISTANCE_METHODS)
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


@pytest.mark.parametrize("method", DISTANCE_METHODS)
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


@pytest.mark.parametrize("method", DISTANCE_METHODS)
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


@pytest.mark.parametrize("method", DISTANCE_METHODS)
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


@pytest.mark.parametrize("method", DISTANCE_METHODS)
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


@pytest.mark.parametrize("method", DISTANCE_METHODS)
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


# ---- every backend (the device fixture of conftest.py: the CPU, and CUDA arrays on a GPU) ----------------

def test_greedy_pv_ill_conditioned_on_every_device(device, gen, ref):
    d = 16
    train = gen.ill_conditioned(300, d, sv_span=1e4, top=1e2)  # cond(Phi^T Phi) ~ 1e8
    rows, offsets = gen.pool(80, d, 1, 6)
    post = ntkal.Posterior(d, noise_var=1e-4, precision="float64").add(train)
    sel = ntkal.select(device.put(rows), offsets, 30, method="greedy_pv", posterior=post)
    idx, scores = ref.greedy_pv(rows, offsets, 30, train, None, 1e-4)
    np.testing.assert_array_equal(device.get(sel.indices), idx)
    np.testing.assert_allclose(device.get(sel.scores), scores, rtol=1e-7)


def test_lcmd_on_multi_row_blocks(device, gen, ref):
    d = 8
    train, t_off = gen.pool(20, d, 1, 5)
    rows, offsets = gen.pool(60, d, 1, 5)
    sel = ntkal.select(device.put(rows), offsets, 12, method="lcmd", train_rows=device.put(train),
                       train_offsets=t_off, seed=4)
    idx, _ = ref.select(rows, offsets, 12, method="lcmd", train_rows=train, train_offsets=t_off, seed=4)
    np.testing.assert_array_equal(device.get(sel.indices), idx)


def test_distance_vectors_and_random(device, gen):
    d = 6
    rows, offsets = gen.pool(30, d, 1, 4)
    z = device.get(ntkal.distance_vectors(device.put(rows), offsets, seed=2))
    np.testing.assert_array_equal(z, ntkal.distance_vectors(rows, offsets, seed=2))
    sel = ntkal.select(device.put(rows), offsets, 7, method="random", seed=9)
    np.testing.assert_array_equal(device.get(sel.indices), ntkal.select(rows, offsets, 7, method="random", seed=9).indices)


# ---- on a GPU: the same inputs through the CPU engine and the CUDA backend ---------------------------------

@on_gpu
class TestOnGpu:
    """Selection on CUDA arrays against the CPU engine (tests/_gpu.py)."""

    @pytest.mark.parametrize("layout", ["one_row", "ragged"])
    @pytest.mark.parametrize("scale", [False, True])
    def test_greedy_pv_same_picks(self, gen, layout, scale):
        d = 48
        post = _posterior(gen, d, scale=scale, noise_var=0.05, n_train=100)
        if layout == "one_row":
            rows, offsets = gen.rows(400, d), None
        else:
            offsets = gen.offsets(200, 1, 7)
            rows = gen.rows(int(offsets[-1]), d)
        cpu = ntkal.select(rows, offsets, 25, method="greedy_pv", posterior=post)
        gpu = ntkal.select(_dev(rows), offsets, 25, method="greedy_pv", posterior=post)
        np.testing.assert_array_equal(_host(gpu.indices), cpu.indices)
        np.testing.assert_allclose(_host(gpu.scores), cpu.scores, rtol=1e-8)

    @pytest.mark.parametrize("layout", ["one_row", "ragged", "duplicates"])
    def test_greedy_pv_matches_reference_across_activations(self, gen, ref, layout):
        """Pools larger than the first activation batch (4096 blocks), with exact ties and empty blocks:
        the lazy device path picks plain greedy's sequence, like the CPU."""
        d, n = 24, 40
        if layout == "one_row":
            rows, offsets = gen.rows(9000, d), None
        elif layout == "ragged":
            offsets = gen.offsets(6000, 0, 4)
            rows = gen.rows(int(offsets[-1]), d)
        else:
            half = gen.rows(5000, d)
            rows, offsets = np.concatenate([half, half[gen.rng.permutation(5000)]]), None
        train, noise = gen.rows(200, d), 0.05
        post = ntkal.Posterior(d, noise_var=noise, precision="float64").add(train)
        gpu = ntkal.select(_dev(rows), offsets, n, method="greedy_pv", posterior=post)
        cpu = ntkal.select(rows, offsets, n, method="greedy_pv", posterior=post)
        ref_idx, ref_scores = ref.greedy_pv(rows, offsets, n, train, None, noise)
        np.testing.assert_array_equal(_host(gpu.indices), ref_idx)
        np.testing.assert_array_equal(cpu.indices, ref_idx)
        np.testing.assert_allclose(_host(gpu.scores), ref_scores, rtol=1e-8)

    def test_greedy_pv_holds_no_whitened_pool(self, gen):
        """Device scratch stays far below the float64 whitened pool (rows x d x 8 bytes) that a non-lazy
        path holds."""
        torch = _torch()
        d, n_pool = 256, 100_000
        post = _posterior(gen, d, noise_var=1e-2, n_train=2000)
        rows = torch.randn(n_pool, d, device="cuda", generator=torch.Generator("cuda").manual_seed(0)) / d ** 0.5
        device = torch.cuda.current_device()
        torch.cuda.synchronize()
        _core.cuda.scratch_peak_bytes(device, True)
        sel = ntkal.select(rows, None, 64, method="greedy_pv", posterior=post)
        torch.cuda.synchronize()
        peak = _core.cuda.scratch_peak_bytes(device, False)
        assert _host(sel.indices).size == 64
        assert peak < n_pool * d * 8 / 8, f"scratch peak {peak / 2**20:.1f} MiB"

    @pytest.mark.parametrize("method", DISTANCE_METHODS)
    @pytest.mark.parametrize("with_train", [False, True])
    def test_distance_selection_same_picks(self, gen, method, with_train):
        e = 40
        rows = gen.rows(1500, e)
        train = gen.rows(300, e) if with_train else None
        kw = dict(method=method, train_rows=train, precision="float64")
        cpu = ntkal.select(rows, None, 30, **kw)
        gpu = ntkal.select(_dev(rows), None, 30, **kw)
        np.testing.assert_array_equal(_host(gpu.indices), cpu.indices)
        np.testing.assert_allclose(_host(gpu.scores), cpu.scores, rtol=1e-9)

    @pytest.mark.parametrize("method", DISTANCE_METHODS)
    def test_train_centres_far_from_origin(self, gen, method):
        # a large shared offset: the GEMM form ||t||^2 - 2 x.t loses the differences in float32 unless
        # both sides are centred, and the winner must still be the exact nearest train vector
        e = 32
        rows = gen.rows(1200, e) + np.float32(300.0)
        train = gen.rows(250, e) + np.float32(300.0)
        cpu = ntkal.select(rows, None, 25, method=method, train_rows=train, precision="float32")
        gpu = ntkal.select(_dev(rows), None, 25, method=method, train_rows=_dev(train), precision="float32")
        np.testing.assert_array_equal(_host(gpu.indices), cpu.indices)
        np.testing.assert_allclose(_host(gpu.scores), cpu.scores, rtol=1e-9)

    def test_lcmd_float32_init_on_separated_clusters(self, gen):
        # nearest train centres are unambiguous (clusters 10 apart, noise 0.1): float32 init is exact
        e = 24
        centres = 10.0 * gen.rows(50, e)
        train = centres.astype(np.float32)
        rows = (np.repeat(centres, 30, axis=0) + gen.rows(1500, e, scale=0.1)).astype(np.float32)
        cpu = ntkal.select(rows, None, 40, method="lcmd", train_rows=train)
        gpu = ntkal.select(_dev(rows), None, 40, method="lcmd", train_rows=_dev(train))
        np.testing.assert_array_equal(_host(gpu.indices), cpu.indices)
        np.testing.assert_allclose(_host(gpu.scores), cpu.scores, rtol=1e-9)

    def test_lcmd_on_ragged_blocks_uses_the_gram_sketch(self, gen):
        d = 32
        offsets = gen.offsets(400, 1, 6)
        rows = gen.rows(int(offsets[-1]), d)
        t_off = gen.offsets(80, 1, 6)
        train = gen.rows(int(t_off[-1]), d)
        z_cpu = ntkal.distance_vectors(rows, offsets, seed=5)
        z_gpu = _host(ntkal.distance_vectors(_dev(rows), offsets, seed=5))
        np.testing.assert_allclose(z_gpu, z_cpu, rtol=1e-4, atol=1e-4 * np.abs(z_cpu).max())
        tz_gpu = _host(ntkal.distance_vectors(_dev(train), t_off, seed=5))
        gpu = ntkal.select(_dev(rows), offsets, 20, method="lcmd", train_rows=train, train_offsets=t_off, seed=5,
                           precision="float64")
        # the CPU selection on the GPU's own vectors: float32 rounding of z cannot make them differ
        cpu = ntkal.select(z_gpu, None, 20, method="lcmd", train_rows=tz_gpu, precision="float64")
        np.testing.assert_array_equal(_host(gpu.indices), cpu.indices)
        np.testing.assert_allclose(_host(gpu.scores), cpu.scores, rtol=1e-9)

    def test_topk_and_random(self, gen):
        d = 40
        post = _posterior(gen, d, noise_var=0.1)
        offsets = gen.offsets(600, 1, 4)
        rows = gen.rows(int(offsets[-1]), d)
        exact = _float64_twin(post).variance(rows, offsets)
        top = ntkal.select(_dev(rows), offsets, 30, method="topk", posterior=post)
        assert_ranking_matches(_host(top.indices), exact, 30)
        cpu_rand = ntkal.select(rows, offsets, 30, method="random", posterior=post, seed=9)
        gpu_rand = ntkal.select(_dev(rows), offsets, 30, method="random", posterior=post, seed=9)
        np.testing.assert_array_equal(_host(gpu_rand.indices), cpu_rand.indices)
        np.testing.assert_allclose(_host(gpu_rand.scores), cpu_rand.scores, rtol=1e-4)

    def test_select_builds_posterior_from_device_train_rows(self, gen):
        d = 24
        rows, train = gen.rows(300, d), gen.rows(80, d)
        cpu = ntkal.select(rows, None, 10, method="greedy_pv", train_rows=train, noise_var=0.02)
        gpu = ntkal.select(_dev(rows), None, 10, method="greedy_pv", train_rows=_dev(train), noise_var=0.02)
        np.testing.assert_array_equal(_host(gpu.indices), cpu.indices)
