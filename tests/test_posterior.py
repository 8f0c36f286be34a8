"""ntkal.Posterior against the extended-precision NumPy reference.

Tolerances
----------
* precision="float64": |PV - ref| <= (1e-12 + eps64 * cond(A)) * ref. The problem itself is that
  sensitive: rounding A (or the Gram sum) by eps64 * ||A|| moves the PV of a block in A's weakest
  direction by ~eps64 * cond(A) relatively. Measured: <= 2.2e-9 at cond 5e7 (<= 0.2 of the tolerance).
* precision="float32" (one float32 GEMM with W = sqrt(c) L^{-1}): per block
  |PV - ref| <= noise_var * sum_r (2 ||w_r|| e_r + e_r^2), e_r = (d + 2) 2^-24 || |W| |phi_r| ||,
  the standard float32 GEMM forward-error bound (plus rounding W to float32) pushed through the
  squared norm. Measured errors are 0.3-2.5 % of this bound at cond 5e7: <= 5e-5 of the block's
  own PV (well-explained blocks) and <= 7e-8 of the pool's largest PV.
"""

from __future__ import annotations

import numpy as np
import pytest

import ntkal
from _gpu import HAS_CUPY, _dev, _host, _posterior, _torch, on_gpu

EPS64 = np.finfo(np.float64).eps
U32 = 2.0**-24


def _float64_rtol(ref, train, noise_var, scale, d):
    c = ref.feature_scale(train, scale)
    cond = np.linalg.cond(ref.precision_matrix(train, noise_var, c, d).astype(np.float64))
    return 1e-12 + EPS64 * cond


def _float32_tol(ref, train, rows, offsets, noise_var, scale):
    """Per-block float32 error bound (see module docstring)."""
    d = rows.shape[1]
    w_mat = ref.whitening_matrix(train, noise_var, scale, d)
    phi = rows.astype(np.float64)
    w = phi @ w_mat.T
    e = (d + 2) * U32 * np.linalg.norm(np.abs(phi) @ np.abs(w_mat).T, axis=1)
    per_row = noise_var * (2 * np.linalg.norm(w, axis=1) * e + e**2)
    offsets = np.arange(len(rows) + 1) if offsets is None else offsets
    return np.bincount(np.repeat(np.arange(len(offsets) - 1), np.diff(offsets)), per_row, len(offsets) - 1)


def _check(ref, train, rows, offsets, noise_var, *, scale=False, intensive=False, precision="float64"):
    d = rows.shape[1]
    post = ntkal.Posterior(d, noise_var=noise_var, scale=scale, precision=precision)
    if train is not None:
        post.add(train)
    got = post.variance(rows, offsets, intensive=intensive)
    expected = ref.posterior_variance(train, None, rows, offsets, noise_var, scale=scale, intensive=intensive)
    assert got.dtype == np.float64 and got.shape == expected.shape
    if precision == "float64":
        rtol = _float64_rtol(ref, train, noise_var, scale, d)
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=0)
    else:
        tol = _float32_tol(ref, train, rows, offsets, noise_var, scale)
        if intensive:
            tol = tol / np.maximum(np.diff(offsets) if offsets is not None else 1, 1)
        bad = np.abs(got - expected) > tol
        assert not bad.any(), (
            f"float32 PV outside the GEMM error bound for blocks {np.flatnonzero(bad)[:10]}: "
            f"got {got[bad][:5]}, expected {expected[bad][:5]}, bound {tol[bad][:5]}")
    return got, expected


# ---------------------------------------------------------------------------- accuracy

@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("intensive", [False, True])
def test_ragged_pool_matches_reference(ref, gen, precision, scale, intensive):
    d = 24
    train = gen.rows(300, d, scale=2.0)
    rows, offsets = gen.pool(40, d, 1, 200)
    _check(ref, train, rows, offsets, 1e-2, scale=scale, intensive=intensive, precision=precision)


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("d", [16, 64])
def test_ill_conditioned_cond_1e8(ref, gen, precision, d):
    noise = 1e-4
    train = gen.ill_conditioned(400, d, sv_span=1e4, top=1e2)  # A eigenvalues 1e-4 .. 1e4
    cond = np.linalg.cond(ref.precision_matrix(train, noise, 1.0, d).astype(np.float64))
    assert cond > 3e7
    rows, offsets = gen.pool(60, d, 1, 20)
    # add well-explained blocks too (training rows): tiny PV, the hardest relative case
    rows = np.concatenate([rows, train[:40]])
    offsets = np.concatenate([offsets, offsets[-1] + np.arange(1, 41)])
    _check(ref, train, rows, offsets, noise, precision=precision)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_ill_conditioned_with_scale_and_intensive(ref, gen, precision):
    d = 32
    train = gen.ill_conditioned(200, d, sv_span=1e4, top=30.0)
    rows, offsets = gen.pool(30, d, 1, 50)
    _check(ref, train, rows, offsets, 1e-6, scale=True, intensive=True, precision=precision)


@pytest.mark.parametrize("noise_var", [1e-8, 1e-3, 1.0, 1e3])
def test_noise_var_range(ref, gen, noise_var):
    d = 12
    train = gen.rows(50, d)
    rows, offsets = gen.pool(20, d, 1, 10)
    _check(ref, train, rows, offsets, noise_var, precision="float64")
    _check(ref, train, rows, offsets, noise_var, precision="float32")


def test_fewer_train_rows_than_dim(ref, gen):
    d = 40
    train = gen.rows(5, d)
    rows, offsets = gen.pool(25, d, 1, 30)
    _check(ref, train, rows, offsets, 1e-3, precision="float64")
    _check(ref, train, rows, offsets, 1e-3, precision="float32")


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_empty_train_is_prior(ref, gen, precision):
    d = 10
    rows, offsets = gen.pool(15, d, 1, 30)
    post = ntkal.Posterior(d, noise_var=0.3, scale=True, precision=precision)
    assert post.n_rows == 0 and post.feature_scale == 1.0
    post.add(np.zeros((0, d), np.float32))  # adding nothing changes nothing
    got = post.variance(rows, offsets)
    prior = np.add.reduceat((rows.astype(np.float64) ** 2).sum(axis=1), offsets[:-1])
    np.testing.assert_allclose(got, prior, rtol=1e-6 if precision == "float32" else 1e-13)
    _check(ref, None, rows, offsets, 0.3, scale=True, precision=precision)


def test_scale_with_all_zero_train_rows(ref, gen):
    d = 5
    rows = gen.rows(8, d)
    post = ntkal.Posterior(d, noise_var=0.2, scale=True, precision="float64").add(np.zeros((3, d), np.float32))
    assert post.n_rows == 3 and post.feature_scale == 1.0
    np.testing.assert_allclose(post.variance(rows), ref.posterior_variance(np.zeros((3, d)), None, rows, None, 0.2,
                                                                           scale=True), rtol=1e-13)


def test_single_block_and_per_row(ref, gen):
    d = 8
    train = gen.rows(30, d)
    rows = gen.rows(57, d)
    one = _check(ref, train, rows, np.array([0, 57]), 1e-2)[0]
    per_row = _check(ref, train, rows, None, 1e-2)[0]
    assert one.shape == (1,) and per_row.shape == (57,)
    np.testing.assert_allclose(one[0], per_row.sum(), rtol=1e-12)


def test_empty_blocks_score_zero(ref, gen):
    d = 6
    rows = gen.rows(7, d)
    offsets = np.array([0, 0, 3, 3, 3, 7, 7])
    post = ntkal.Posterior(d, noise_var=0.1, precision="float64").add(gen.rows(10, d))
    for intensive in (False, True):
        got = post.variance(rows, offsets, intensive=intensive)
        assert got.shape == (6,)
        np.testing.assert_array_equal(got[[0, 2, 3, 5]], 0.0)
        assert np.all(got[[1, 4]] > 0)
    _check(ref, gen.rows(10, d), rows, offsets, 0.1)


def test_empty_pool(gen):
    post = ntkal.Posterior(5, noise_var=0.1).add(gen.rows(4, 5))
    assert post.variance(np.zeros((0, 5), np.float32)).shape == (0,)
    assert post.variance(np.zeros((0, 5), np.float32), np.array([0])).shape == (0,)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_duplicate_blocks_score_identically(gen, precision):
    d = 16
    block = gen.rows(9, d)
    other = gen.rows(5, d)
    rows = np.concatenate([block, other, block, block])
    offsets = np.array([0, 9, 14, 23, 32])
    post = ntkal.Posterior(d, noise_var=1e-2, precision=precision).add(gen.rows(40, d))
    pv = post.variance(rows, offsets)
    # exact ties are what the shortlist's "lower index first" rule is about
    assert pv[0] == pv[2] == pv[3]


def test_properties_and_cholesky(ref, gen):
    d = 12
    t1, t2 = gen.rows(20, d, scale=3.0), gen.rows(33, d, scale=3.0)
    post = ntkal.Posterior(d, noise_var=0.05, scale=True, precision="float64")
    post.add(t1, np.array([0, 5, 20])).add(t2)
    assert post.dim == d and post.noise_var == 0.05
    assert post.n_rows == 53 and post.n_blocks == 2 + 33
    train = np.concatenate([t1, t2])
    c = ref.feature_scale(train, True)
    assert post.feature_scale == pytest.approx(c, rel=1e-13)
    low = np.asarray(post.cholesky)
    assert low.shape == (d, d) and low.dtype == np.float64
    np.testing.assert_array_equal(low, np.tril(low))
    a = ref.precision_matrix(train, 0.05, c, d).astype(np.float64)
    np.testing.assert_allclose(low @ low.T, a, rtol=1e-12, atol=1e-13 * np.abs(a).max())


# ---------------------------------------------------------------------------- chunking

@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_add_in_chunks_equals_add_once(gen, precision):
    d = 20
    train, t_off = gen.pool(30, d, 1, 40)
    rows, offsets = gen.pool(25, d, 1, 40)
    once = ntkal.Posterior(d, noise_var=1e-3, scale=True, precision=precision).add(train, t_off)
    chunked = ntkal.Posterior(d, noise_var=1e-3, scale=True, precision=precision)
    cuts = [0, 3, 4, 17, 30]
    for a, b in zip(cuts[:-1], cuts[1:]):
        chunked.add(train[t_off[a]:t_off[b]], t_off[a:b + 1] - t_off[a])
    assert chunked.n_rows == once.n_rows and chunked.n_blocks == once.n_blocks == 30
    # the Gram sum is associative only up to rounding
    np.testing.assert_allclose(chunked.variance(rows, offsets), once.variance(rows, offsets), rtol=1e-10)
    np.testing.assert_allclose(chunked.feature_scale, once.feature_scale, rtol=1e-14)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_variance_in_chunks_equals_one_call(gen, precision):
    d = 32
    post = ntkal.Posterior(d, noise_var=1e-2, precision=precision).add(gen.rows(100, d))
    rows, offsets = gen.pool(60, d, 1, 200)
    whole = post.variance(rows, offsets)
    parts = []
    for a, b in [(0, 1), (1, 20), (20, 21), (21, 60)]:
        parts.append(post.variance(rows[offsets[a]:offsets[b]], offsets[a:b + 1] - offsets[a]))
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_large_pool_crosses_internal_chunks(ref, gen):
    # kChunkElems = 2^21 floats: at d = 16 a chunk holds 131072 rows; use more so a block
    # straddles the internal chunk boundary
    d = 16
    m = 140_000
    rows = gen.rows(m, d)
    offsets = np.array([0, 1000, 131_500, 131_600, m])  # block 1 (rows 1000..131500) straddles row 131072
    train = gen.rows(50, d)
    got = ntkal.Posterior(d, noise_var=1e-2, precision="float64").add(train).variance(rows, offsets)
    per_row = ntkal.Posterior(d, noise_var=1e-2, precision="float64").add(train).variance(rows)
    np.testing.assert_allclose(got, np.add.reduceat(per_row, offsets[:-1]), rtol=1e-12)
    sample = slice(130_000, 133_000)
    np.testing.assert_allclose(per_row[sample], ref.posterior_variance(train, None, rows[sample], None, 1e-2),
                               rtol=1e-11)


# ---------------------------------------------------------------------------- inputs

def test_float64_rows_are_rounded_to_float32(gen):
    d = 8
    train = gen.rows(20, d, dtype=np.float64)
    rows = gen.rows(10, d, dtype=np.float64)
    a = ntkal.Posterior(d, noise_var=0.1, precision="float64").add(train).variance(rows)
    b = ntkal.Posterior(d, noise_var=0.1, precision="float64").add(train.astype(np.float32)).variance(
        rows.astype(np.float32))
    np.testing.assert_array_equal(a, b)


def test_non_contiguous_and_blocks_inputs(gen):
    d = 10
    train = gen.rows(30, 2 * d)[:, ::2]  # strided view
    rows, offsets = gen.pool(12, d, 1, 9)
    post = ntkal.Posterior(d, noise_var=0.1, precision="float64").add(train)
    expected = ntkal.Posterior(d, noise_var=0.1, precision="float64").add(np.ascontiguousarray(train)).variance(
        rows, offsets)
    np.testing.assert_array_equal(post.variance(rows, offsets), expected)
    np.testing.assert_array_equal(post.variance(ntkal.Blocks(rows, offsets)), expected)
    np.testing.assert_array_equal(post.variance(np.asfortranarray(rows), offsets), expected)


def test_copy_is_independent(gen):
    d = 6
    post = ntkal.Posterior(d, noise_var=0.1, precision="float64").add(gen.rows(10, d))
    rows = gen.rows(5, d)
    before = post.variance(rows)
    clone = post.copy()
    clone.add(gen.rows(10, d))
    np.testing.assert_array_equal(post.variance(rows), before)
    assert np.all(clone.variance(rows) < before)
    assert clone.n_rows == 20 and post.n_rows == 10


# ---- every backend (the device fixture of conftest.py: the CPU, and CUDA arrays on a GPU) ----------------

def test_variance_of_ragged_blocks(device, gen, ref):
    d = 12
    train = gen.rows(200, d)
    rows, offsets = gen.pool(60, d, 1, 9)
    post = ntkal.Posterior(d, noise_var=1e-2).add(device.put(train))
    pv = device.get(post.variance(device.put(rows), offsets))
    np.testing.assert_allclose(pv, ref.posterior_variance(train, None, rows, offsets, 1e-2), rtol=2e-4)


# ---- on a GPU: the same inputs through the CPU engine and the CUDA backend ---------------------------------

@on_gpu
class TestOnGpu:
    """Posterior variance on CUDA arrays against the CPU engine (tests/_gpu.py)."""

    @pytest.mark.parametrize("precision", ["float32", "float64"])
    @pytest.mark.parametrize("intensive", [False, True])
    @pytest.mark.parametrize("layout", ["one_row", "ragged", "large_blocks"])
    def test_variance_matches_cpu(self, gen, precision, intensive, layout):
        d = 200  # not a multiple of the 128-wide tiles
        post = _posterior(gen, d, precision, scale=True)
        if layout == "one_row":
            rows, offsets = gen.rows(1000, d), None
        elif layout == "ragged":
            offsets = gen.offsets(300, 0, 9)  # includes empty blocks
            rows = gen.rows(int(offsets[-1]), d)
        else:  # blocks spanning several 128-row tiles (head/tail fix-up path)
            offsets = gen.offsets(12, 100, 700)
            rows = gen.rows(int(offsets[-1]), d)
        cpu = post.variance(rows, offsets, intensive=intensive)
        gpu = post.variance(_dev(rows), offsets, intensive=intensive)
        assert gpu.dtype == _torch().float64 and gpu.is_cuda
        np.testing.assert_allclose(_host(gpu), cpu, rtol=1e-4 if precision == "float32" else 1e-9)

    def test_variance_device_offsets_and_empty_pool(self, gen):
        d = 64
        post = _posterior(gen, d)
        offsets = gen.offsets(50, 1, 5)
        rows = gen.rows(int(offsets[-1]), d)
        gpu = post.variance(_dev(rows), _dev(offsets))
        np.testing.assert_allclose(_host(gpu), post.variance(rows, offsets), rtol=1e-4)
        empty = post.variance(_dev(np.zeros((0, d), np.float32)), np.zeros(4, np.int64))
        np.testing.assert_array_equal(_host(empty), np.zeros(3))

    @pytest.mark.parametrize("matmul,rtol", [("tf32", 2e-2), ("bf16", 6e-2)])
    def test_tensor_core_variance_close(self, gen, matmul, rtol):
        d = 256
        post = _posterior(gen, d)
        offsets = gen.offsets(200, 1, 20)
        rows = gen.rows(int(offsets[-1]), d)
        cpu = post.variance(rows, offsets)
        gpu = _host(post.variance(_dev(rows), offsets, matmul=matmul))
        np.testing.assert_allclose(gpu, cpu, rtol=rtol)
        # per-structure errors must not all be zero: the option really changed the arithmetic
        assert np.abs(gpu - cpu).max() > 0

    def test_variance_rejects_bad_input(self, gen):
        post = _posterior(gen, 16)
        rows = gen.rows(10, 16)
        rows[3, 5] = np.nan
        with pytest.raises(ntkal.InvalidArgumentError, match="Posterior.variance: rows contains NaN"):
            post.variance(_dev(rows))
        with pytest.raises(ntkal.InvalidArgumentError, match=r"Posterior.variance: rows must be 2-D \(n_rows, 16\)"):
            post.variance(_dev(gen.rows(10, 17)))
        with pytest.raises(ntkal.InvalidArgumentError, match="offsets must end at the row count 10"):
            post.variance(_dev(gen.rows(10, 16)), np.array([0, 4, 9]))
        with pytest.raises(ntkal.InvalidArgumentError, match="matmul"):
            post.variance(_dev(gen.rows(10, 16)), None, matmul="fp8")

    def test_variance_on_a_side_stream(self, gen):
        torch = _torch()
        d = 128
        post = _posterior(gen, d)
        rows = gen.rows(20_000, d)
        cpu = post.variance(rows)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            # produce the rows on the side stream right before scoring: reading them on another
            # stream would race with this kernel
            x = torch.from_numpy(rows).cuda(non_blocking=True) * 2.0
            x = x * 0.5
            pv = post.variance(x)
        stream.synchronize()
        np.testing.assert_allclose(pv.cpu().numpy(), cpu, rtol=1e-4)

    def test_cuda_array_interface_only_object(self, gen):
        torch = _torch()
        post = _posterior(gen, 32)
        rows = gen.rows(50, 32)
        t = _dev(rows)

        class Wrapped:  # exposes only the CUDA array interface
            __cuda_array_interface__ = t.__cuda_array_interface__

        pv = post.variance(Wrapped())
        assert isinstance(pv, torch.Tensor) and pv.is_cuda
        np.testing.assert_allclose(pv.cpu().numpy(), post.variance(rows), rtol=1e-4)

    @pytest.mark.skipif(not HAS_CUPY, reason="CuPy not installed")
    def test_cupy_in_cupy_out(self, gen):
        import cupy

        post = _posterior(gen, 48)
        offsets = gen.offsets(30, 1, 4)
        rows = gen.rows(int(offsets[-1]), 48)
        pv = post.variance(cupy.asarray(rows), offsets)
        assert isinstance(pv, cupy.ndarray)
        np.testing.assert_allclose(cupy.asnumpy(pv), post.variance(rows, offsets), rtol=1e-4)
        idx, top = ntkal.shortlist(cupy.asarray(rows), offsets, post, 5)
        assert isinstance(idx, cupy.ndarray) and isinstance(top, cupy.ndarray)
