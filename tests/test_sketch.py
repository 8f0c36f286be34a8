"""ntkal.Sketch against the NumPy reference sketch (Philox-4x32-10, both kinds).

Projection tolerance: |out - J S| <= (P + 3) 2^-24 (|J| |S|) + 2^-24 |J S| elementwise -- the
standard forward-error bound of a length-P float32 dot product, plus rounding S to float32 and
the final rounding of the float32 output. float64 J is accumulated in float64 and rounded once,
so there the bound is 2^-24 |J S| + 1e-12 |J| |S|.
"""

from __future__ import annotations

import numpy as np
import pytest

import ntkal
from _gpu import HAS_CUPY, _dev, _host, _torch, cb, on_gpu

U32 = 2.0**-24
KINDS = ["gaussian", "sparse_sign"]


def _assert_projection_close(got, J, s_ref, *, float64_input):
    exact = J.astype(np.float64) @ s_ref
    scale = np.abs(J.astype(np.float64)) @ np.abs(s_ref)
    if float64_input:
        bound = U32 * np.abs(exact) + 1e-12 * scale
    else:
        bound = (J.shape[1] + 3) * U32 * scale + U32 * np.abs(exact)
    assert got.dtype == np.float32 and got.shape == exact.shape
    err = np.abs(got.astype(np.float64) - exact)
    assert np.all(err <= bound), f"max err/bound = {np.max(err / np.maximum(bound, 1e-300)):.3g}"
    # the worst-case bound above is loose for float32 (errors are random, ~sqrt(P) not P): also
    # require the typical accuracy of float32 GEMM (measured 4e-7 relative; 25x margin)
    assert np.linalg.norm(err) <= 1e-5 * np.linalg.norm(exact) + 1e-30


# ------------------------------------------------------------------------ dense() == reference

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", [0, 1, 2**32 + 7, 2**64 - 1])
@pytest.mark.parametrize("dim", [1, 7, 64])
def test_dense_equals_reference(ref, kind, seed, dim):
    nnz = min(4, dim)
    sk = ntkal.Sketch(300, dim, kind=kind, seed=seed, nnz=nnz)
    got = sk.dense()
    assert got.dtype == np.float64 and got.shape == (300, dim)
    expected = ref.sketch_matrix(300, dim, kind, seed, nnz)
    # Gaussian entries go through log/cos/sin: allow libm's last-bit differences
    np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_dense_row_ranges_beyond_32_bits(ref, kind):
    n_params = 2**33
    sk = ntkal.Sketch(n_params, 12, kind=kind, seed=9, nnz=3)
    for p0, p1 in [(0, 5), (2**32 - 3, 2**32 + 3), (n_params - 4, n_params)]:
        np.testing.assert_allclose(sk.dense(p0, p1), ref.sketch_matrix(n_params, 12, kind, 9, 3, p0, p1),
                                   rtol=1e-14, atol=1e-15)
    assert sk.dense(10, 10).shape == (0, 12)


@pytest.mark.parametrize("nnz", [1, 2, 5, 16])
def test_sparse_sign_nnz_values(ref, nnz):
    sk = ntkal.Sketch(500, 16, kind="sparse_sign", seed=3, nnz=nnz)
    np.testing.assert_array_equal(sk.dense(), ref.sketch_matrix(500, 16, "sparse_sign", 3, nnz))


def test_attributes():
    sk = ntkal.Sketch(1000, 32, kind="gaussian", seed=5)
    assert (sk.n_params, sk.dim, sk.kind, sk.seed) == (1000, 32, "gaussian", 5)
    sk = ntkal.Sketch(1000, 32, seed=2**63)
    assert (sk.kind, sk.nnz, sk.seed) == ("sparse_sign", 4, 2**63)


# ------------------------------------------------------------------------ project()

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("jdtype", [np.float32, np.float64])
def test_project_matches_reference(ref, gen, kind, jdtype):
    P, dim = 1500, 48
    sk = ntkal.Sketch(P, dim, kind=kind, seed=11)
    J = gen.rows(37, P, dtype=jdtype)
    J[3] = 0.0  # an all-zero row
    J[5, ::3] = 0.0  # sparse-ish row (the sparse kernel skips zeros)
    got = sk.project(J)
    _assert_projection_close(got, J, ref.sketch_matrix(P, dim, kind, 11), float64_input=jdtype == np.float64)
    np.testing.assert_array_equal(got[3], 0.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("jdtype", [np.float32, np.float64])
def test_chunked_projection_equals_whole(ref, gen, kind, jdtype):
    P, dim = 2000, 40
    sk = ntkal.Sketch(P, dim, kind=kind, seed=4)
    J = gen.rows(15, P, dtype=jdtype)
    whole = sk.project(J)
    out = np.zeros((15, dim), np.float32)
    cuts = [0, 1, 257, 258, 1024, 1999, 2000]  # odd sizes, crossing the 256-parameter Gaussian tile
    for a, b in zip(cuts[:-1], cuts[1:]):
        returned = sk.project(J[:, a:b], col_offset=a, out=out)
        assert returned is out
    s_ref = ref.sketch_matrix(P, dim, kind, 4)
    # each chunk is rounded to float32 once more when added: allow one rounding per chunk
    _assert_projection_close(whole, J, s_ref, float64_input=jdtype == np.float64)
    exact = J.astype(np.float64) @ s_ref
    scale = np.abs(J.astype(np.float64)) @ np.abs(s_ref)
    bound = (P + 3 + len(cuts)) * U32 * scale
    assert np.all(np.abs(out - exact) <= bound)
    np.testing.assert_allclose(out, whole, rtol=0, atol=2 * bound.max())


@pytest.mark.parametrize("kind", KINDS)
def test_project_accumulates_into_out(ref, gen, kind):
    P, dim = 300, 16
    sk = ntkal.Sketch(P, dim, kind=kind, seed=1)
    J = gen.rows(4, P)
    start = gen.rows(4, dim)
    out = start.copy()
    result = sk.project(J, out=out)
    assert result is out
    s_ref = ref.sketch_matrix(P, dim, kind, 1)
    exact = start.astype(np.float64) + J.astype(np.float64) @ s_ref
    scale = np.abs(start) + np.abs(J.astype(np.float64)) @ np.abs(s_ref)
    assert not np.allclose(out, start)  # something was added
    assert np.all(np.abs(out - exact) <= (P + 4) * U32 * scale)


@pytest.mark.parametrize("kind", KINDS)
def test_project_column_window(ref, gen, kind):
    # a chunk in the middle of parameter space uses rows col_offset.. of S
    P, dim = 5000, 24
    sk = ntkal.Sketch(P, dim, kind=kind, seed=8)
    J = gen.rows(6, 700)
    got = sk.project(J, col_offset=4300)
    _assert_projection_close(got, J, ref.sketch_matrix(P, dim, kind, 8, p_begin=4300, p_end=5000),
                             float64_input=False)


@pytest.mark.parametrize("kind", KINDS)
def test_project_beyond_32_bit_parameter_index(ref, gen, kind):
    n_params = 2**33
    sk = ntkal.Sketch(n_params, 7, kind=kind, seed=21, nnz=3)
    J = gen.rows(3, 60)
    for col in (2**32 - 30, n_params - 60):
        got = sk.project(J, col_offset=col)
        _assert_projection_close(got, J, ref.sketch_matrix(n_params, 7, kind, 21, 3, col, col + 60),
                                 float64_input=False)


@pytest.mark.parametrize("kind", KINDS)
def test_project_empty_and_strided(ref, gen, kind):
    sk = ntkal.Sketch(100, 8, kind=kind, seed=2)
    assert sk.project(np.zeros((0, 100), np.float32)).shape == (0, 8)
    np.testing.assert_array_equal(sk.project(np.zeros((3, 0), np.float32), col_offset=100), 0.0)
    J = gen.rows(5, 200)[:, ::2]  # non-contiguous view
    _assert_projection_close(sk.project(J), J, ref.sketch_matrix(100, 8, kind, 2), float64_input=False)


@pytest.mark.parametrize("kind", KINDS)
def test_project_deterministic(gen, kind):
    sk = ntkal.Sketch(3000, 64, kind=kind, seed=123)
    J = gen.rows(50, 3000)
    np.testing.assert_array_equal(sk.project(J), sk.project(J))
    np.testing.assert_array_equal(sk.project(J), ntkal.Sketch(3000, 64, kind=kind, seed=123).project(J))


# ---- on a GPU: the same inputs through the CPU engine and the CUDA backend ---------------------------------

@on_gpu
class TestOnGpu:
    """Sketch projections on CUDA arrays against the CPU engine (tests/_gpu.py)."""

    @pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    @pytest.mark.parametrize("lib", ["torch", "cupy"])
    def test_project_matches_cpu(self, gen, kind, dtype, lib):
        if lib == "cupy" and not HAS_CUPY:
            pytest.skip("CuPy not installed")
        sk = ntkal.Sketch(5000, 96, kind=kind, seed=11, nnz=3)
        J = gen.rows(37, 3000, dtype=dtype)
        J[:, 100:400] = 0.0  # unused parameters
        cpu = sk.project(J, col_offset=1500)
        out = sk.project(_dev(J, lib), col_offset=1500)
        assert type(out).__module__.split(".")[0] == lib
        assert tuple(out.shape) == (37, 96)
        if kind == "sparse_sign":  # the CPU's chain per output, term for term
            np.testing.assert_array_equal(_host(out), cpu)
        np.testing.assert_allclose(_host(out), cpu, rtol=1e-5, atol=1e-5 * np.abs(cpu).max())

    @pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
    @pytest.mark.parametrize("dtype", [np.float32, np.float64])
    def test_project_is_reproducible(self, gen, kind, dtype):
        """Few rows and many parameters: the case the GPU splits over parameters. Same bits every run."""
        torch = _torch()
        sk = ntkal.Sketch(120_000, 200, kind=kind, seed=4, nnz=3)
        J = _dev(gen.rows(24, 120_000, dtype=dtype))
        base = _dev(gen.rows(24, 200))
        runs = [sk.project(J, out=base.clone()) for _ in range(4)]
        for other in runs[1:]:
            assert torch.equal(other, runs[0])

    @pytest.mark.parametrize("m,n_params,dim,nnz,col_offset", [
        (5, 40_000, 96, 1, 0),          # one entry per parameter
        (19, 30_000, 700, 8, 1234),     # two column groups of the gather, rows not a multiple of 8
        (8, 1_000_000, 3000, 3, 7),     # several passes of per-column lists
        (3, 3_000, 3000, 2500, 0),      # nnz above one sub-tile: sub-tiles split parameters
    ])
    def test_sparse_project_equals_cpu_bitwise(self, gen, m, n_params, dim, nnz, col_offset):
        sk = ntkal.Sketch(n_params + col_offset, dim, kind="sparse_sign", seed=21, nnz=nnz)
        J = gen.rows(m, n_params)
        J[:, 10:300] = 0.0
        for dtype in (np.float32, np.float64):
            Jt = J.astype(dtype)
            base = gen.rows(m, dim)
            cpu = sk.project(Jt, col_offset=col_offset, out=base.copy())
            gpu = sk.project(_dev(Jt), col_offset=col_offset, out=_dev(base))
            np.testing.assert_array_equal(_host(gpu), cpu)

    def test_project_rejects_non_finite_j(self, gen):
        J = gen.rows(4, 100)
        J[2, 7] = np.inf
        with pytest.raises(ntkal.InvalidArgumentError, match="Sketch.project: J contains NaN or Inf"):
            ntkal.Sketch(100, 8).project(_dev(J))

    @pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
    def test_sketch_entries_identical(self, kind):
        sk = ntkal.Sketch(10_000, 130, kind=kind, seed=2**40 + 7, nnz=5)
        gpu = _host(cb.sketch_dense(sk._s, 4321, 4821))
        np.testing.assert_allclose(gpu, sk.dense(4321, 4821), rtol=1e-13, atol=1e-15)

    @pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
    def test_project_accumulates_into_out_and_views(self, gen, kind):
        torch = _torch()
        sk = ntkal.Sketch(4000, 64, kind=kind, seed=3)
        J = gen.rows(20, 4000)
        base = gen.rows(20, 64)
        expect = sk.project(J[:, :2500], out=base.copy())
        expect = sk.project(J[:, 2500:], col_offset=2500, out=expect)
        out = _dev(base)
        Jd = _dev(J)
        res = sk.project(Jd[:, :2500], out=out)  # a column slice: rows strided by 4000
        assert res is out
        sk.project(Jd[:, 2500:], col_offset=2500, out=out)
        np.testing.assert_allclose(_host(out), expect, rtol=1e-5, atol=1e-5 * np.abs(expect).max())
        assert out.device == Jd.device and out.dtype == torch.float32
