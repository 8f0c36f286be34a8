"""Calibration: the output scale per stratum from labelled residuals (hand-computed), leave-one-out PV against
the float64 reference, and calibrated screens through acquire."""
import numpy as np
import pytest
from _require import require
from _structures import cells, labelled

torch = require("torch")
require("ase")

import ntkal  # noqa: E402
from ntkal import _reference as R  # noqa: E402
from ntkal.acquire import acquire  # noqa: E402
from ntkal.calibration import calibrate, force_residual_sq, leave_one_out_variance  # noqa: E402
from ntkal.strata import composition_key  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402


def test_calibrate_hand_computed():
    cal = calibrate([1.0, 3.0, 2.0, 2.0, 5.0], [1.0, 1.0, 2.0, 2.0, 1.0], ["a", "a", "b", "b", "c"], min_count=2)
    assert cal.scales == {"a": 2.0, "b": 1.0}  # 4/2 and 4/4; c has one structure
    assert cal.pooled == pytest.approx(13.0 / 7.0)
    assert cal.scale_of("c") == pytest.approx(13.0 / 7.0) and cal.scale_of("unseen") == cal.pooled
    assert cal.counts == {"a": 2, "b": 2, "c": 1}
    with pytest.raises(ntkal.InvalidArgumentError, match="one entry per"):
        calibrate([1.0], [1.0, 2.0], ["a"])


def test_force_residual_sq_hand_computed():
    r = force_residual_sq([np.zeros((2, 3)), np.ones((1, 3))], [np.ones((2, 3)), np.full((1, 3), 3.0)])
    np.testing.assert_allclose(r, [1.0, 4.0])


@pytest.mark.parametrize("scale,intensive", [(False, False), (True, True)])
def test_leave_one_out_variance_matches_reference(scale, intensive):
    rng = np.random.default_rng(5)
    rows = rng.standard_normal((27, 9)).astype(np.float32)
    rows[10:14] = rows[2:6]  # repeated structures: the leave-one-out PV is far above the in-sample PV
    offsets = np.array([0, 2, 6, 7, 10, 14, 20, 27])
    post = ntkal.Posterior(9, noise_var=0.05, scale=scale, precision="float64").add(rows, offsets)
    got = leave_one_out_variance(post, ntkal.Blocks(rows, offsets), intensive=intensive)
    ref = R.leave_one_out_variance(rows, offsets, 0.05, scale=scale, intensive=intensive)
    np.testing.assert_allclose(got, ref, rtol=1e-7)
    assert np.all(got >= post.variance(rows, offsets, intensive=intensive) - 1e-12)


@pytest.fixture(scope="module")
def featurizer():
    return Featurizer(models.toy(seed=0, hidden=4, n_radial=3), "joint", dim=24, force_rows=3)


def test_calibration_in_acquire_matches_hand_computation(featurizer):
    train_plain, pool = cells(12, 0, gold_every=2), cells(30, 1)
    shift = np.where([composition_key(a) == "Cu" for a in train_plain], 0.3, 0.05)
    train = labelled(train_plain, featurizer, shift)
    res = acquire(featurizer, train, pool, 4, calibrate="on", progress=False, noise_var=1e-2)
    blocks = featurizer(train_plain)
    post = ntkal.Posterior(24, noise_var=1e-2).add(blocks)
    loo = R.leave_one_out_variance(blocks.rows, blocks.offsets, 1e-2)
    keys = np.array([composition_key(a) for a in train_plain])
    for key in ("Au-Cu", "Cu"):
        m = keys == key
        expected = np.sum(shift[m] ** 2) / np.sum(loo[m])
        assert res.calibration.scale_of(key) == pytest.approx(expected, rel=1e-4)
    assert post.n_blocks == 12
    # calibrated scores rank the pool: the shortlist is ordered by scale * PV
    scaled = np.array([res.calibration.scale_of(composition_key(a)) for a in pool]) * res.pool_pv
    top = np.lexsort((np.arange(30), -scaled))[:res.shortlist.size]
    assert set(top.tolist()) == set(res.shortlist.tolist())
    # auto: on when every training structure has forces, off otherwise
    assert acquire(featurizer, train, pool, 2, calibrate="auto", progress=False).calibration is not None
    assert acquire(featurizer, train_plain, pool, 2, calibrate="auto", progress=False).calibration is None
    with pytest.raises(ntkal.InvalidArgumentError, match="no reference forces"):
        acquire(featurizer, train_plain, pool, 2, calibrate="on", progress=False)


def test_calibration_without_strata_ranks_the_whole_pool_by_scaled_pv(featurizer):
    """strata="none" + calibrate: the composition keys scale PV but do not split the batch (they did: the
    picks equalled the stratified ones). Hand pipeline: global top-k of scale x PV, then LCMD."""
    train_plain, pool = cells(12, 0, gold_every=2), cells(30, 1)
    shift = np.where([composition_key(a) == "Cu" for a in train_plain], 0.02, 0.4)  # the model is wrong on Au-Cu
    train = labelled(train_plain, featurizer, shift)
    res = acquire(featurizer, train, pool, 4, calibrate="on", strata="none", shortlist=8, progress=False,
                  noise_var=1e-2, chunk_size=7)
    assert res.quotas == {"*": 4}
    scaled = np.array([res.calibration.scale_of(composition_key(a)) for a in pool]) * res.pool_pv
    short = np.lexsort((np.arange(30), -scaled))[:8]
    picks, _ = ntkal.select(featurizer(pool).take(short), None, 4, method="lcmd", train_rows=featurizer(train_plain),
                            seed=0)
    np.testing.assert_array_equal(res.indices, short[picks])
    gold = [i for i in range(30) if composition_key(pool[i]) == "Au-Cu"]
    stratified = acquire(featurizer, train, pool, 4, calibrate="on", shortlist=8, progress=False, noise_var=1e-2)
    assert stratified.quotas != res.quotas
    # the stratified batch gets Au-Cu's share of the candidates; the calibrated one goes where the model is wrong
    assert np.isin(res.indices, gold).sum() > stratified.quotas["Au-Cu"]
