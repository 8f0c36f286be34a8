"""The CUDA build: what a CPU-only machine must still get right (build info, device arrays recognised and
refused with a clear error), and the device models of the lazy greedy PV and of the sparse sketch checked
against the reference and the CPU. The CPU/GPU parity of each operation is in its area's test file
(test_sketch.py, test_posterior.py, test_shortlist.py, test_select.py: class TestOnGpu, marker ``gpu``)."""
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
from ntkal._device import is_device_array
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
