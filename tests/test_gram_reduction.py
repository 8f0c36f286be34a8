"""Training Grams: the engine's Gram against the reference, and a posterior rebuilt from a Gram (what
travels to a worker) scoring with the same bits."""
import pickle

import numpy as np
import pytest

import ntkal
from ntkal import _reference as R
from ntkal.posterior import training_gram


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
