"""The per-area checks on every backend behind the one front end: on the CPU always, and on CUDA
with PyTorch tensors and CuPy arrays when a GPU (and CuPy) is present. Inputs and results cross
with the ``device`` fixture; answers are compared with the float64 reference."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import ntkal
from ntkal._device import to_numpy
from ntkal.backends import cuda

HAS_GPU = cuda.device_count() > 0
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_CUPY = importlib.util.find_spec("cupy") is not None


class Device:
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
        return to_numpy(x)


@pytest.fixture(params=[
    "cpu",
    pytest.param("cuda-torch", marks=pytest.mark.skipif(not (HAS_GPU and HAS_TORCH), reason="no CUDA device")),
    pytest.param("cuda-cupy", marks=pytest.mark.skipif(not (HAS_GPU and HAS_CUPY), reason="no CUDA device / CuPy")),
])
def device(request):
    return Device(request.param)


def test_variance_of_ragged_blocks(device, gen, ref):
    d = 12
    train = gen.rows(200, d)
    rows, offsets = gen.pool(60, d, 1, 9)
    post = ntkal.Posterior(d, noise_var=1e-2).add(device.put(train))
    pv = device.get(post.variance(device.put(rows), offsets))
    np.testing.assert_allclose(pv, ref.posterior_variance(train, None, rows, offsets, 1e-2), rtol=2e-4)


def test_shortlist_stream_with_rows(device, gen):
    d = 10
    post = ntkal.Posterior(d, noise_var=0.05).add(gen.rows(80, d))
    rows, offsets = gen.pool(70, d, 1, 4)
    pool = ntkal.Blocks(rows, offsets)
    chunks = [ntkal.Blocks(device.put(pool.take(range(i, min(i + 20, 70))).rows),
                           pool.take(range(i, min(i + 20, 70))).offsets) for i in range(0, 70, 20)]
    idx, pv, kept = ntkal.shortlist(iter(chunks), None, post, 15, return_rows=True)
    idx_host, pv_host = ntkal.shortlist(rows, offsets, post, 15)
    np.testing.assert_array_equal(device.get(idx), idx_host)
    np.testing.assert_allclose(device.get(pv), pv_host, rtol=1e-5)
    np.testing.assert_array_equal(device.get(kept.rows), pool.take(idx_host).rows)


def test_greedy_pv_ill_conditioned(device, gen, ref):
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
