"""Chunk Grams and their fixed-order tree sum: the posterior of a screen does not depend on how many
processes computed it, or in which order their chunks finished."""
import pickle

import numpy as np
import pytest

import ntkal
from ntkal import _reference as R
from ntkal.posterior import training_gram
from ntkal.screen import TreeSum


@pytest.mark.parametrize("case", ["random", "ill_conditioned", "zero_rows", "one_row"])
def test_training_gram_matches_reference(case):
    rng = np.random.default_rng(3)
    if case == "random":
        rows = rng.standard_normal((57, 12))
    elif case == "ill_conditioned":
        rows = rng.standard_normal((40, 12)) @ np.diag(np.logspace(0, -7, 12)) + 1e3
    elif case == "zero_rows":
        rows = np.zeros((5, 12))
    else:
        rows = rng.standard_normal((1, 12))
    rows = rows.astype(np.float32)
    g = training_gram(rows)
    ref = R.training_gram(rows)
    np.testing.assert_allclose(g, ref, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(ref).max()))
    np.testing.assert_array_equal(g, g.T)


def test_add_gram_equals_add_and_survives_pickling():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((90, 16)).astype(np.float32)
    pool = rng.standard_normal((30, 16)).astype(np.float32)
    for scale in (False, True):
        direct = ntkal.Posterior(16, noise_var=1e-2, scale=scale).add(rows, np.arange(0, 91, 3))
        summed = ntkal.Posterior(16, noise_var=1e-2, scale=scale)
        for a in range(0, 90, 30):
            summed.add_gram(training_gram(rows[a:a + 30]), 30, 10)
        assert summed.n_rows == 90 and summed.n_blocks == 30
        np.testing.assert_allclose(summed.variance(pool), direct.variance(pool), rtol=1e-6)
        clone = pickle.loads(pickle.dumps(summed))  # what travels to a worker
        np.testing.assert_array_equal(clone.variance(pool), summed.variance(pool))
        np.testing.assert_array_equal(clone.gram, summed.gram)


def test_add_gram_rejects_bad_input():
    post = ntkal.Posterior(4)
    with pytest.raises(ntkal.InvalidArgumentError, match="gram must have shape"):
        post.add_gram(np.eye(3), 1, 1)
    with pytest.raises(ntkal.InvalidArgumentError, match="finite"):
        post.add_gram(np.full((4, 4), np.nan), 1, 1)
    with pytest.raises(ntkal.InvalidArgumentError, match="n_rows"):
        post.add_gram(np.eye(4), -1, 1)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 13])
def test_tree_sum_is_the_same_bits_in_any_arrival_order(n):
    rng = np.random.default_rng(n)
    parts = [rng.standard_normal((6, 6)) * 10.0 ** rng.integers(-8, 8) for _ in range(n)]
    reference = None
    for trial in range(6):
        order = rng.permutation(n) if trial else np.arange(n)
        tree = TreeSum()
        for i in order:
            tree.add(int(i), parts[i])
        total = tree.total()
        if reference is None:
            reference = total
            np.testing.assert_allclose(total, np.sum(parts, axis=0), rtol=1e-9, atol=1e-6)
        np.testing.assert_array_equal(total, reference)


def test_tree_sum_reports_a_missing_chunk():
    tree = TreeSum()
    tree.add(1, np.eye(2))
    with pytest.raises(RuntimeError, match="without chunk 0"):
        tree.total()
