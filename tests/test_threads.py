"""Results must not depend on the thread count: every operation with set_num_threads(1) and (2)
gives bitwise-identical output. Sizes are chosen to cross the engine's OpenMP thresholds."""

from __future__ import annotations

import numpy as np
import pytest

import ntkal


@pytest.fixture
def restore_threads():
    before = ntkal.get_num_threads()
    yield
    ntkal.set_num_threads(before)


def _run_with(threads, fn):
    ntkal.set_num_threads(threads)
    assert ntkal.get_num_threads() == threads
    return fn()


def _same_for_1_and_2_threads(fn):
    one = _run_with(1, fn)
    two = _run_with(2, fn)
    one = one if isinstance(one, tuple) else (one,)
    two = two if isinstance(two, tuple) else (two,)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
@pytest.mark.parametrize("jdtype", [np.float32, np.float64])
def test_project(gen, restore_threads, kind, jdtype):
    sk = ntkal.Sketch(6000, 64, kind=kind, seed=3)
    J = gen.rows(40, 6000, dtype=jdtype)  # m * P > 65536, P > 1024: parallel branches taken
    _same_for_1_and_2_threads(lambda: sk.project(J))
    _same_for_1_and_2_threads(lambda: sk.dense(0, 600))


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_posterior_add_and_variance(gen, restore_threads, precision):
    d = 64
    train = gen.rows(3000, d)  # n * d > 65536
    rows, offsets = gen.pool(400, d, 1, 20)

    def run():
        post = ntkal.Posterior(d, noise_var=1e-3, scale=True, precision=precision).add(train)
        return post.variance(rows, offsets), post.variance(rows, offsets, intensive=True), post.cholesky

    _same_for_1_and_2_threads(run)


def test_shortlist(gen, restore_threads):
    d = 32
    post = ntkal.Posterior(d, noise_var=1e-2).add(gen.rows(200, d))
    rows, offsets = gen.pool(3000, d, 1, 5)
    _same_for_1_and_2_threads(lambda: ntkal.shortlist(rows, offsets, post, 100))


@pytest.mark.parametrize("method", ["greedy_pv", "lcmd", "maxdist", "topk", "random"])
@pytest.mark.parametrize("ragged", [False, True])
def test_select(gen, restore_threads, method, ragged):
    d = 24
    if ragged:
        train, t_off = gen.pool(100, d, 1, 6)
        rows, offsets = gen.pool(1500, d, 1, 6)
    else:
        train, t_off = gen.rows(300, d), None
        rows, offsets = gen.rows(3000, d), None

    def run():
        sel = ntkal.select(rows, offsets, 40, method=method, train_rows=train, train_offsets=t_off, seed=1)
        return sel.indices, sel.scores

    _same_for_1_and_2_threads(run)


def test_distance_vectors(gen, restore_threads):
    rows, offsets = gen.pool(2000, 32, 1, 10)
    _same_for_1_and_2_threads(lambda: ntkal.distance_vectors(rows, offsets, seed=4))
