"""Variance reduction: the greedy rule against the float64 reference, as a select() method, and as an acquire
strategy whose default target is the pool."""
import numpy as np
import pytest
from _require import require
from _structures import cells

torch = require("torch")
require("ase")

import ntkal  # noqa: E402
from ntkal import _reference as R  # noqa: E402
from ntkal.acquire import acquire  # noqa: E402
from ntkal.posterior import training_gram  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402
from ntkal.variance_reduction import variance_reduction_greedy  # noqa: E402


@pytest.mark.parametrize("case", ["random", "ill_conditioned", "ties", "ragged"])
def test_variance_reduction_matches_reference(case):
    rng = np.random.default_rng(11)
    d = 10
    train = rng.standard_normal((20, d))
    cand = rng.standard_normal((36, d))
    offsets = np.arange(0, 37, 3)
    if case == "ill_conditioned":
        basis = np.diag(np.logspace(0, -5, d))
        train, cand = train @ basis, cand @ basis
    elif case == "ties":
        cand[18:36] = cand[0:18]  # blocks 6..11 repeat 0..5: the lower position wins each tie
    elif case == "ragged":
        offsets = np.array([0, 1, 1, 6, 7, 15, 16, 30, 36])
    target = rng.standard_normal((40, d))
    train, cand, target = (x.astype(np.float32) for x in (train, cand, target))
    post = ntkal.Posterior(d, noise_var=0.1, precision="float64").add(train)
    picks, gains = variance_reduction_greedy(ntkal.Blocks(cand, offsets), 4, post, training_gram(target))
    ref_picks, ref_gains = R.variance_reduction_greedy(cand, offsets, 4, train, 0.1, target)
    np.testing.assert_array_equal(picks, ref_picks)
    np.testing.assert_allclose(gains, ref_gains, rtol=1e-6)
    assert np.all(np.diff(gains) <= 1e-12)  # submodular: gains never grow
    if case == "ties":
        assert all(p < 6 or p >= 12 for p in picks[:1])


def test_variance_reduction_rejects_bad_input():
    post = ntkal.Posterior(3).add(np.eye(3, dtype=np.float32))
    b = ntkal.Blocks(np.eye(3, dtype=np.float32))
    with pytest.raises(ntkal.InvalidArgumentError, match="n must be"):
        variance_reduction_greedy(b, 4, post, np.eye(3))
    with pytest.raises(ntkal.InvalidArgumentError, match="target_gram"):
        variance_reduction_greedy(b, 1, post, np.eye(2))


@pytest.fixture(scope="module")
def featurizer():
    return Featurizer(models.toy(seed=0, hidden=4, n_radial=3), "joint", dim=24, force_rows=3)


def test_variance_reduction_in_acquire_uses_the_pool_as_target(featurizer):
    train, pool = cells(6, 0), cells(25, 1)
    res = acquire(featurizer, train, pool, 3, strategy="variance_reduction", shortlist=10, progress=False,
                  noise_var=1e-2, chunk_size=7, strata="none")
    blocks = featurizer(pool)
    post = ntkal.Posterior(24, noise_var=1e-2).add(featurizer(train))
    short = np.lexsort((np.arange(25), -post.variance(blocks)))[:10]
    picks, _ = variance_reduction_greedy(blocks.take(short), 3, post, training_gram(blocks.rows))
    np.testing.assert_array_equal(res.indices, short[picks])
    # an explicit target changes what is lowered
    other = acquire(featurizer, train, pool, 3, strategy="variance_reduction", shortlist=10, progress=False,
                    noise_var=1e-2, target=cells(8, 9, gold_every=1))
    assert other.indices.shape == (3,)
    with pytest.raises(ntkal.InvalidArgumentError, match="target applies"):
        acquire(featurizer, train, pool, 3, target=pool, progress=False)


def test_select_method_is_the_greedy_rule():
    """select(method="variance_reduction") is the greedy rule: the same picks and gains, with the target given as
    rows, as a Gram, or by default the candidates themselves."""
    rng = np.random.default_rng(5)
    d = 10
    train = rng.standard_normal((40, d)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(rng.integers(1, 4, 25))]).astype(np.int64)
    cand = rng.standard_normal((int(offsets[-1]), d)).astype(np.float32)
    target = rng.standard_normal((30, d)).astype(np.float32)
    post = ntkal.Posterior(d, noise_var=0.1).add(train)
    picks, gains = variance_reduction_greedy(ntkal.Blocks(cand, offsets), 5, post, training_gram(target))
    for kw in (dict(target_rows=target), dict(target_gram=training_gram(target))):
        sel = ntkal.select(cand, offsets, 5, method="variance_reduction", posterior=post, **kw)
        np.testing.assert_array_equal(sel.indices, picks)
        np.testing.assert_array_equal(sel.scores, gains)
    own = ntkal.select(cand, offsets, 5, method="variance_reduction", posterior=post)
    np.testing.assert_array_equal(own.indices, variance_reduction_greedy(ntkal.Blocks(cand, offsets), 5, post,
                                                                         training_gram(cand))[0])
    built = ntkal.select(cand, offsets, 5, method="variance_reduction", train_rows=train, noise_var=0.1,
                         target_rows=target)
    np.testing.assert_array_equal(built.indices, picks)
    assert len(ntkal.select(cand, offsets, 0, method="variance_reduction", posterior=post)) == 0


def test_select_refuses_targets_of_other_methods_and_empty_blocks():
    rows = np.ones((3, 4), np.float32)
    post = ntkal.Posterior(4)
    with pytest.raises(ntkal.InvalidArgumentError, match="target_rows / target_gram apply to method='variance_red"):
        ntkal.select(rows, None, 1, method="lcmd", target_rows=rows)
    with pytest.raises(ntkal.InvalidArgumentError, match="select: n must be <= 2, the candidates with feature rows"):
        ntkal.select(rows, [0, 1, 1, 3], 3, method="variance_reduction", posterior=post)
