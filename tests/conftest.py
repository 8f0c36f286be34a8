"""Shared fixtures for the engine test suite: the NumPy reference, data generators, bmdal_reg, and the
``device`` every per-area test that takes it runs on (the CPU always; CUDA through PyTorch tensors and CuPy
arrays when a GPU and the library are present)."""

from __future__ import annotations

import importlib
import importlib.util
import pathlib

import numpy as np
import pytest
from _require import unavailable

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _load_reference():
    """ntkal._reference without needing the compiled engine (it is pure NumPy)."""
    try:
        return importlib.import_module("ntkal._reference")
    except ImportError:
        path = _REPO / "python" / "ntkal" / "_reference.py"
        spec = importlib.util.spec_from_file_location("ntkal_reference_standalone", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


REFERENCE = _load_reference()


@pytest.fixture(scope="session")
def ref():
    """The pure-NumPy float64 reference implementation (ntkal._reference)."""
    return REFERENCE


class DataGen:
    """Random test data: feature rows (float32, as the engine stores them), ragged offsets,
    ill-conditioned training sets, duplicate blocks."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def rows(self, m: int, d: int, dtype=np.float32, scale: float = 1.0) -> np.ndarray:
        return (scale * self.rng.standard_normal((m, d))).astype(dtype)

    def offsets(self, n_blocks: int, lo: int = 1, hi: int = 200) -> np.ndarray:
        sizes = self.rng.integers(lo, hi + 1, size=n_blocks)
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def pool(self, n_blocks: int, d: int, lo: int = 1, hi: int = 200, dtype=np.float32):
        """Ragged pool: rows (M, d) and offsets (n_blocks + 1,)."""
        offsets = self.offsets(n_blocks, lo, hi)
        return self.rows(int(offsets[-1]), d, dtype), offsets

    def ill_conditioned(self, m: int, d: int, sv_span: float = 1e4, top: float = 1e2) -> np.ndarray:
        """float32 rows (m, d), m >= d, with singular values log-spaced from ``top`` down to
        ``top / sv_span``: Phi^T Phi has condition number ~ sv_span**2."""
        u, _ = np.linalg.qr(self.rng.standard_normal((m, d)))
        v, _ = np.linalg.qr(self.rng.standard_normal((d, d)))
        s = top * np.logspace(0.0, -np.log10(sv_span), d)
        return ((u * s) @ v.T).astype(np.float32)


@pytest.fixture
def gen(request):
    """A DataGen seeded from the test's name, so every test has its own reproducible data."""
    seed = sum(request.node.name.encode()) * 7919 % (2**31)
    return DataGen(seed)


@pytest.fixture(scope="session")
def bmdal():
    """bmdal_reg's select_batch and TensorFeatureData, or skip with the reason."""
    np.Inf = np.inf  # bmdal_reg 3.0.2 still uses np.Inf, removed in NumPy 2
    try:
        torch = importlib.import_module("torch")
        algorithms = importlib.import_module("bmdal_reg.bmdal.algorithms")
        feature_data = importlib.import_module("bmdal_reg.bmdal.feature_data")
    except Exception as exc:  # ImportError or a broken install: either way the oracle is absent
        unavailable("bmdal_reg (the correctness oracle)", exc)

    class Bmdal:
        def select(self, pool, train, n, selection_method, kernel_transforms=(), **config):
            """Indices bmdal_reg selects on precomputed linear-kernel features (float64)."""
            data = {
                "train": feature_data.TensorFeatureData(torch.as_tensor(np.asarray(train, np.float64))),
                "pool": feature_data.TensorFeatureData(torch.as_tensor(np.asarray(pool, np.float64))),
            }
            idx, _ = algorithms.select_batch(
                batch_size=n, models=[torch.nn.Identity()], data=data, y_train=None,
                base_kernel="linear", kernel_transforms=list(kernel_transforms),
                selection_method=selection_method, allow_float64=True, verbosity=0, **config)
            return idx.cpu().numpy().astype(np.int64)

    return Bmdal()


# ---- the device of the per-area tests ------------------------------------------------------------------

def _gpu_count() -> int:
    try:  # the compiled engine may be absent (the reference tests run without it)
        from ntkal.backends import cuda
    except ImportError:
        return 0
    return cuda.device_count()


HAS_GPU = _gpu_count() > 0
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_CUPY = importlib.util.find_spec("cupy") is not None


class Device:
    """Where a test's arrays live: ``put`` a host array there, ``get`` a result back to the host."""

    def __init__(self, name):
        self.name = name

    def put(self, a):
        if self.name == "cpu":
            return a
        if self.name == "cuda-torch":
            import torch

            return torch.from_numpy(np.ascontiguousarray(a)).cuda()
        import cupy

        return cupy.asarray(a)

    @staticmethod
    def get(x):
        from ntkal._device import to_numpy

        return to_numpy(x)


@pytest.fixture(params=[
    "cpu",
    pytest.param("cuda-torch", marks=pytest.mark.skipif(not (HAS_GPU and HAS_TORCH), reason="no CUDA device")),
    pytest.param("cuda-cupy", marks=pytest.mark.skipif(not (HAS_GPU and HAS_CUPY), reason="no CUDA device / CuPy")),
])
def device(request):
    return Device(request.param)
