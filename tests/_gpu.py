"""What the per-area GPU tests share: whether a CUDA device is usable, arrays moved to and from it, and
posteriors and rankings to compare the CUDA backend with the CPU engine.

Each area's test file (test_sketch.py, test_posterior.py, test_shortlist.py, test_select.py) ends with its
GPU class, decorated with :data:`on_gpu` (marker ``gpu``; skipped with the reason when no CUDA device is
usable); they compare the GPU path (PyTorch CUDA tensors, CuPy arrays when installed) with the CPU engine on
the same inputs: PV within 1e-4 relative, identical selections where the float64 values leave no near-ties.
bench/gpu_check.sh runs them on a GPU machine.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import ntkal
from ntkal._device import to_numpy
from ntkal.backends import cuda as cb

N_DEVICES = cb.device_count()
NO_GPU_REASON = (f"no usable CUDA device (CUDA backend compiled: {cb.compiled()}, "
                 f"devices: {cb.device_names()}); GPU parity tests need a GPU machine")
HAS_CUPY = importlib.util.find_spec("cupy") is not None


def on_gpu(cls):
    """Marks a test class as a GPU parity class: marker ``gpu``, skipped without a usable CUDA device."""
    return pytest.mark.gpu(pytest.mark.skipif(N_DEVICES == 0, reason=NO_GPU_REASON)(cls))


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
