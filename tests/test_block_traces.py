"""The engine's per-block trace kernels (cpp/block_traces.cpp) and the nearest-train search against
the float64 NumPy reference (ntkal._reference), on random and adversarial inputs: ill-conditioned
training sets, exact ties (repeated blocks), empty blocks, a block that explains itself."""

from __future__ import annotations

import numpy as np
import pytest

import ntkal
from ntkal import _reference as R
from ntkal.backends import cpu
from ntkal.calibration import leave_one_out_variance


def _blocks(rows, offsets):
    return cpu.blocks(rows, offsets, "test")


def _data(case: str, rng, d: int = 12):
    """(train rows, candidate rows, candidate offsets, target rows), float32."""
    train = rng.standard_normal((60, d))
    cand = rng.standard_normal((45, d))
    offsets = np.arange(0, 46, 3)
    if case == "ill_conditioned":  # column scales over 6 decades: A's condition number ~1e12 / noise
        scales = np.logspace(0, -6, d)
        train, cand = train * scales, cand * scales
    elif case == "ties":  # blocks 8..14 repeat blocks 0..6 exactly
        cand[24:45] = cand[0:21]
    elif case == "ragged":  # empty blocks, a one-row block, a long block
        offsets = np.array([0, 0, 1, 1, 6, 7, 30, 30, 45])
    target = rng.standard_normal((50, d))
    return tuple(x.astype(np.float32) for x in (train, cand, target)) + (offsets,)


@pytest.mark.parametrize("case", ["random", "ill_conditioned", "ties", "ragged"])
@pytest.mark.parametrize("scale", [False, True])
def test_variance_reduction_scores_match_reference(case, scale):
    rng = np.random.default_rng(21)
    train, cand, target, offsets = _data(case, rng)
    post = ntkal.Posterior(train.shape[1], noise_var=1e-2, scale=scale, precision="float64").add(train)
    M = target.astype(np.float64).T @ target.astype(np.float64)
    active = np.ones(len(offsets) - 1, dtype=bool)
    active[-1] = False
    got = cpu.variance_reduction_scores(post._p, _blocks(cand, offsets), M, active)
    ref = R.variance_reduction_scores(cand, offsets, train, 1e-2, M, active, scale=scale)
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(got), finite)
    assert np.all(got[~finite] == -np.inf)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-7, atol=1e-12 * np.abs(ref[finite]).max())
    if case == "ties":  # a repeated block scores exactly what its original scores
        np.testing.assert_array_equal(got[8:14], got[0:6])


def test_variance_reduction_scores_refuse_bad_shapes():
    post = ntkal.Posterior(4).add(np.eye(4, dtype=np.float32))
    b = _blocks(np.eye(4, dtype=np.float32), None)
    with pytest.raises(ntkal.InvalidArgumentError, match="variance_reduction_scores: target_gram"):
        cpu.variance_reduction_scores(post._p, b, np.eye(3), np.ones(4, bool))
    with pytest.raises(ntkal.InvalidArgumentError, match="variance_reduction_scores: active"):
        cpu.variance_reduction_scores(post._p, b, np.eye(4), np.ones(3, bool))


@pytest.mark.parametrize("case", ["random", "ill_conditioned", "ties"])
@pytest.mark.parametrize("scale,intensive", [(False, False), (True, True)])
def test_leave_one_out_variance_matches_reference(case, scale, intensive):
    rng = np.random.default_rng(8)
    d = 10
    rows = rng.standard_normal((70, d))
    if case == "ill_conditioned":
        rows = rows * np.logspace(0, -5, d)
    elif case == "ties":  # repeated structures: each copy's leave-one-out PV sees the other copy
        rows[40:52] = rows[0:12]
    rows = rows.astype(np.float32)
    offsets = np.array([0, 4, 8, 12, 13, 20, 31, 40, 44, 48, 52, 60, 70])
    post = ntkal.Posterior(d, noise_var=1e-3, scale=scale).add(rows, offsets)
    got = leave_one_out_variance(post, ntkal.Blocks(rows, offsets), intensive=intensive)
    ref = R.leave_one_out_variance(rows, offsets, 1e-3, scale=scale, intensive=intensive)
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert np.all(got >= post.variance(rows, offsets, intensive=intensive) * (1 - 1e-6))
    if case == "ties":
        np.testing.assert_array_equal(got[[7, 8, 9]], got[[0, 1, 2]])


def test_leave_one_out_variance_of_an_empty_or_self_explained_block_is_nan():
    rng = np.random.default_rng(2)
    d = 6
    rows = rng.standard_normal((20, d)).astype(np.float32)
    rows[19] = 1e6 * rng.standard_normal(d)  # a lone direction no other block has: S -> 1 to rounding
    rows[:19, 0] = 0.0
    rows[19, 1:] = 0.0
    offsets = np.array([0, 0, 10, 19, 20])
    post = ntkal.Posterior(d, noise_var=1e-9, precision="float64").add(rows, offsets)
    got = leave_one_out_variance(post, ntkal.Blocks(rows, offsets))
    assert np.isnan(got[0])  # empty
    assert np.isnan(got[3])  # I - S is not positive definite in float64: not resolvable
    ref = R.leave_one_out_variance(rows, offsets, 1e-9)
    np.testing.assert_allclose(got[1:3], ref[1:3], rtol=1e-6)


def _decaying(rng, n, d):
    """Rows whose spectrum decays (top 32 directions hold > 90 % of the variance), like NTK features."""
    return (rng.standard_normal((n, d)) * np.logspace(1, -2, d)).astype(np.float32)


@pytest.mark.parametrize("case", ["projected", "projected_ties", "flat", "small"])
def test_nearest_train_matches_reference_on_both_routes(case):
    rng = np.random.default_rng(4)
    d, nt, nx = (128, 1100, 700) if case != "small" else (16, 50, 80)
    train = _decaying(rng, nt, d) if case != "flat" else rng.standard_normal((nt, d)).astype(np.float32)
    x = _decaying(rng, nx, d) if case != "flat" else rng.standard_normal((nx, d)).astype(np.float32)
    if case == "projected_ties":
        train[600:700] = train[100:200]  # duplicate training vectors: the lower index must win
        x[:100] = train[100:200]  # candidates sitting exactly on a (duplicated) training vector
    owner, projected = cpu.nearest_train(_blocks(x, None), _blocks(train, None), "float32")
    assert projected == case.startswith("projected")  # the route under test is the one taken
    np.testing.assert_array_equal(owner, R.nearest_train(x, train))
    if case == "projected_ties":
        np.testing.assert_array_equal(owner[:100], np.arange(100, 200))
