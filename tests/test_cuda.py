"""CUDA backend: CPU/GPU parity for every operation, device/stream/library handling, and the
behaviour of a CUDA-compiled build on a machine without a GPU.

GPU tests (marker ``gpu``) skip with the reason when no CUDA device is usable; they compare the GPU
path (PyTorch CUDA tensors, CuPy arrays when installed) with the CPU engine on the same inputs:
PV within 1e-4 relative, identical selections where the float64 values leave no near-ties.
The first block of tests runs everywhere: it checks what a CPU-only machine must still get right.
"""
from __future__ import annotations

import importlib.util
import pathlib
import re
import shutil

import numpy as np
import pytest
import _device_sketch_model as sketch_model
from _device_greedy_model import LazyGreedyModel

import ntkal
from ntkal._device import is_device_array, to_numpy
from ntkal.backends import cuda as cb
from ntkal._loader import _core

CUDA_DIR = pathlib.Path(__file__).resolve().parents[1] / "cuda"

N_DEVICES = cb.device_count()
NO_GPU_REASON = (f"no usable CUDA device (CUDA backend compiled: {cb.compiled()}, "
                 f"devices: {cb.device_names()}); GPU parity tests need a GPU machine")
HAS_CUPY = importlib.util.find_spec("cupy") is not None


class FakeCudaArray:
    """An object that claims to live on a GPU (CUDA array interface v3) without any device memory."""

    def __init__(self, shape=(4, 8)):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (0, False), "version": 3,
                                         "strides": None, "stream": None}


class FakeDlpack:
    def __init__(self, device_type):
        self._dev = (device_type, 0)

    def __dlpack_device__(self):
        return self._dev


# ---- everywhere: CPU-only machines -------------------------------------------------------------------

def test_build_info_reports_cuda_and_never_raises():
    info = ntkal.build_info()
    assert isinstance(info["cuda_compiled"], bool)
    assert isinstance(info["cuda_devices"], list)
    assert info["cuda_compiled"] == cb.compiled()
    assert len(info["cuda_devices"]) == N_DEVICES
    assert all(isinstance(name, str) and name for name in info["cuda_devices"])


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: a build here has no CUDA backend")
def test_cuda_backend_compiled_when_nvcc_exists():
    # CMake's check_language(CUDA) finds this nvcc, so the build must contain the backend, and the
    # static CUDA runtime must keep the module importable even without a driver.
    assert ntkal.build_info()["cuda_compiled"] is True
    assert _core.cuda.runtime_version >= 12000


def test_device_count_and_names_never_raise():
    assert isinstance(cb.device_count(), int) and cb.device_count() >= 0
    assert len(cb.device_names()) == cb.device_count()


def test_is_device_array_classifies_inputs():
    torch = pytest.importorskip("torch")
    assert not is_device_array(np.zeros(3, np.float32))
    assert not is_device_array(torch.zeros(3))
    assert not is_device_array(torch.zeros(3, requires_grad=True))
    assert not is_device_array([1.0, 2.0])
    assert not is_device_array(FakeDlpack(1))  # kDLCPU
    assert is_device_array(FakeCudaArray())
    assert is_device_array(FakeDlpack(2))  # kDLCUDA
    assert is_device_array(FakeDlpack(13))  # kDLCUDAManaged


@pytest.mark.skipif(not cb.compiled(), reason="CUDA backend not compiled into this build")
def test_whitening_operator_is_the_cpu_scoring_operator(gen):
    # The GPU scores with M = sqrt(c) L^{-1} built on the host from the posterior's float64 Cholesky.
    d = 24
    post = ntkal.Posterior(d, noise_var=0.05, scale=True)
    post.add(gen.rows(300, d, scale=3.0))
    m = post._p.whitening_operator()
    assert m.shape == (d, d) and m.dtype == np.float64
    assert np.all(np.triu(m, 1) == 0.0)
    np.testing.assert_allclose(m @ post.cholesky, np.sqrt(post.feature_scale) * np.eye(d), atol=1e-12)
    rows, offsets = gen.pool(40, d, 1, 6)
    w = rows.astype(np.float64) @ m.T
    pv = post.noise_var * np.add.reduceat((w * w).sum(1), offsets[:-1])
    np.testing.assert_allclose(pv, post.variance(rows, offsets), rtol=1e-5)


@pytest.mark.skipif(N_DEVICES > 0, reason="a CUDA device is present: the no-device error path is not reachable")
@pytest.mark.parametrize("call", ["variance", "shortlist", "select", "project"])
def test_cuda_input_without_device_is_a_clear_error(call):
    post = ntkal.Posterior(8)
    fake = FakeCudaArray((4, 8))
    with pytest.raises(ntkal.InvalidArgumentError, match="CUDA"):
        if call == "variance":
            post.variance(fake)
        elif call == "shortlist":
            ntkal.shortlist(fake, None, post, 2)
        elif call == "select":
            ntkal.select(fake, None, 2)
        else:
            ntkal.Sketch(8, 4).project(fake)


# ---- everywhere: the device algorithms' bookkeeping, modelled in NumPy ---------------------------------------

def _greedy_case(gen, layout):
    d = 12
    if layout == "one_row":
        rows, offsets = gen.rows(1500, d), None
    elif layout == "ragged":  # empty, one-row and multi-row blocks
        offsets = gen.offsets(500, 0, 5)
        rows = gen.rows(int(offsets[-1]), d)
    else:  # every row has an identical twin elsewhere: exact ties, decided by the lower index
        half = gen.rows(600, d)
        rows, offsets = np.concatenate([half, half[gen.rng.permutation(600)]]), None
    return rows, offsets, gen.rows(80, d), 0.05


@pytest.mark.parametrize("layout", ["one_row", "ragged", "duplicates"])
def test_lazy_device_greedy_model_picks_the_reference_sequence(gen, ref, layout):
    """The GPU's lazy greedy PV (cuda/greedy_slots.cuh), step for step in NumPy, against plain greedy."""
    rows, offsets, train, noise = _greedy_case(gen, layout)
    whiten = ref.whitening_matrix(train, noise, False, rows.shape[1])
    idx, scores, stats = LazyGreedyModel(rows, offsets, whiten, noise, first_activation=64).select(30)
    ref_idx, ref_scores = ref.greedy_pv(rows, offsets, 30, train, None, noise)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-9)
    assert len(stats.activations) >= 2  # the path that activates more blocks mid-selection ran


def test_lazy_device_greedy_model_touches_few_blocks(gen, ref):
    """A pool whose PV sits in a few blocks: the lazy order activates and refreshes a small part of it."""
    d, n_pool = 16, 4000
    train = gen.rows(400, d)
    rows = gen.rows(n_pool, d, scale=0.05)  # mostly explained by the training set
    rows[::97] = gen.rows(len(rows[::97]), d, scale=3.0)  # 42 structures carry the variance
    whiten = ref.whitening_matrix(train, 1e-2, False, d)
    idx, _, stats = LazyGreedyModel(rows, None, whiten, 1e-2, first_activation=64).select(20)
    ref_idx, _ = ref.greedy_pv(rows, None, 20, train, None, 1e-2)
    np.testing.assert_array_equal(idx, ref_idx)
    assert max(stats.activations) <= n_pool // 16
    assert stats.refreshes < stats.eager_terms // 20


def test_lazy_device_greedy_model_follows_the_kernels():
    """The model's activation rule is the one cuda/greedy_pv.cu implements."""
    src = (CUDA_DIR / "greedy_pv.cu").read_text()
    first = int(re.search(r"kFirstActivation = (\d+);", src).group(1))
    assert first == LazyGreedyModel.__init__.__defaults__[0]
    assert "active_ + std::max(kFirstActivation, active_)" in src


@pytest.mark.parametrize("m,n_params,dim,nnz,col_offset,table_bytes", [
    (5, 3000, 96, 1, 0, None),           # one entry per parameter
    (7, 2500, 700, 8, 1234, None),       # whole-parameter sub-tiles of 256 parameters
    (4, 4000, 300, 3, 5, 1 << 15),       # smaller tables: two passes
    (3, 20, 2600, 2100, 0, None),        # nnz above one sub-tile: sub-tiles split parameters
])
def test_sparse_device_model_equals_cpu_bitwise(gen, ref, monkeypatch, m, n_params, dim, nnz, col_offset,
                                                table_bytes):
    """The GPU's sparse-sign projection order (cuda/sketch.cu), modelled in NumPy, gives the CPU's bits."""
    if table_bytes:
        monkeypatch.setattr(sketch_model, "TABLE_BYTES", table_bytes)
        assert sketch_model.pass_params(nnz, dim) < n_params
    sk = ntkal.Sketch(n_params + col_offset, dim, kind="sparse_sign", seed=13, nnz=nnz)
    J = gen.rows(m, n_params)
    J[:, 3:40] = 0.0
    for dtype in (np.float32, np.float64):
        Jt = J.astype(dtype) * dtype(1.0 + 2.0**-30)  # float64 J carries bits float32 cannot hold
        base = gen.rows(m, dim)
        cpu = sk.project(Jt, col_offset=col_offset, out=base.copy())
        model, acc = sketch_model.sparse_project(Jt, col_offset, base, dim, 13, nnz, ref.sparse_sign_entries)
        # every float64 sum in the CPU loop's order (the final float32 rounding would hide most slips)
        np.testing.assert_array_equal(acc, sketch_model.cpu_order_sums(Jt, col_offset, dim, 13, nnz,
                                                                       ref.sparse_sign_entries))
        np.testing.assert_array_equal(model, cpu)


def test_sparse_device_model_follows_the_kernels():
    src = (CUDA_DIR / "sketch.cu").read_text()
    for name, value in (("kEntryBits", sketch_model.ENTRY_BITS), ("kSubParams", sketch_model.SUB_PARAMS)):
        assert int(re.search(rf"{name} = (\d+);", src).group(1)) == value
    assert "kTableBytes = int64_t(1) << 24;" in src and sketch_model.TABLE_BYTES == 1 << 24
    assert "kSortThreads = 256, kSortItems = 8;" in src and sketch_model.SUB_ENTRIES == 256 * 8


# ---- GPU parity --------------------------------------------------------------------------------------------

def _torch():
    return pytest.importorskip("torch")


def _dev(a, lib="torch"):
    if lib == "cupy":
        cupy = pytest.importorskip("cupy")
        return cupy.asarray(a)
    return _torch().from_numpy(np.ascontiguousarray(a)).cuda()


def _host(x):
    return to_numpy(x)


def _posterior(gen, d, precision="float32", scale=False, noise_var=1e-2, n_train=400):
    post = ntkal.Posterior(d, noise_var=noise_var, scale=scale, precision=precision)
    post._train_rows = gen.rows(n_train, d)  # kept for _float64_twin
    post.add(post._train_rows)
    return post


def _float64_twin(post):
    """A float64-precision posterior with the same training statistics (reference PVs)."""
    twin = ntkal.Posterior(post.dim, noise_var=post.noise_var, scale=post._p.scale, precision="float64")
    twin.add(post._train_rows)
    return twin


def assert_ranking_matches(got_idx, ref_values, k, rel_tol=1e-5):
    """got_idx must be the top-k of ref_values (float64), largest first, ties -> lower index. Ranks
    whose reference values lie within rel_tol of each other may come in either order (float32
    scoring cannot order them), so they are compared as sets."""
    ref_values = np.asarray(ref_values, np.float64)
    order = np.lexsort((np.arange(ref_values.size), -ref_values))
    got_idx = np.asarray(got_idx)
    assert got_idx.shape == (k,)
    i = 0
    while i < k:
        j = i + 1
        while j < ref_values.size and abs(ref_values[order[j]] - ref_values[order[j - 1]]) <= rel_tol * abs(
                ref_values[order[j - 1]]):
            j += 1
        group = set(order[i:j].tolist())
        got = set(got_idx[i:min(j, k)].tolist())
        assert got <= group, f"ranks {i}..{min(j, k) - 1}: got {sorted(got)}, expected among {sorted(group)}"
        i = j


@pytest.mark.gpu
@pytest.mark.skipif(N_DEVICES == 0, reason=NO_GPU_REASON)
class TestGpuParity:
    """Same inputs through the CPU engine and the GPU backend."""

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

    @pytest.mark.parametrize("intensive", [False, True])
    def test_shortlist_matches_cpu(self, gen, intensive):
        d = 96
        post = _posterior(gen, d, noise_var=0.1)
        offsets = gen.offsets(3000, 1, 6)
        rows = gen.rows(int(offsets[-1]), d)
        k = 60
        idx, pv = ntkal.shortlist(_dev(rows), offsets, post, k, intensive=intensive)
        cpu_idx, cpu_pv = ntkal.shortlist(rows, offsets, post, k, intensive=intensive)
        np.testing.assert_allclose(_host(pv), cpu_pv, rtol=1e-4)
        exact = _float64_twin(post).variance(rows, offsets, intensive=intensive)  # decides near-ties
        assert_ranking_matches(_host(idx), exact, k)
        assert_ranking_matches(cpu_idx, exact, k)

    def test_shortlist_stream_of_chunks(self, gen):
        d = 64
        post = _posterior(gen, d)
        chunks, host = [], []
        for n_blocks in (500, 1, 0, 800):
            offsets = gen.offsets(n_blocks, 1, 4) if n_blocks else np.zeros(1, np.int64)
            rows = gen.rows(int(offsets[-1]), d)
            chunks.append((_dev(rows), offsets))
            host.append(ntkal.Blocks(rows, offsets))
        done = []
        idx, pv = ntkal.shortlist(iter(chunks), None, post, 40, progress=done.append)
        assert done == [500, 501, 501, 1301]
        allb = ntkal.Blocks.concatenate(host)
        exact = _float64_twin(post).variance(allb)
        assert_ranking_matches(_host(idx), exact, 40)
        np.testing.assert_allclose(_host(pv), exact[_host(idx)], rtol=1e-4)

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

    @pytest.mark.parametrize("method", ["lcmd", "maxdist"])
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

    @pytest.mark.parametrize("method", ["lcmd", "maxdist"])
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
