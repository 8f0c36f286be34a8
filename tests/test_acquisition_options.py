"""Strata, calibration, variance reduction, training duplicates and loss-matched rows: hand-computed small
cases, float64 references and finite differences of the weighted loss."""
import numpy as np
import pytest
from _require import require
from _structures import cells

torch = require("torch")
require("ase")

from ase.build import bulk, molecule  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

import ntkal  # noqa: E402
from ntkal import _reference as R  # noqa: E402
from ntkal.acquire import acquire  # noqa: E402
from ntkal.calibration import calibrate, force_residual_sq, leave_one_out_variance  # noqa: E402
from ntkal.posterior import training_gram  # noqa: E402
from ntkal.strata import composition_key, quotas  # noqa: E402
from ntkal.torch import Featurizer, Loss, models  # noqa: E402
from ntkal.variance_reduction import variance_reduction_greedy  # noqa: E402


# ---- strata -----------------------------------------------------------------------------------------
def test_quotas_hand_computed():
    # shares 3, 1.5, 0.5: floors 3, 1, 0; the last pick goes to the larger of the tied remainders (B)
    assert quotas({"A": 6, "B": 3, "C": 1}, 5) == {"A": 3, "B": 2, "C": 0}
    assert quotas({"A": 2, "B": 2}, 4) == {"A": 2, "B": 2}
    # a full stratum passes its share on
    assert quotas({"A": 1, "B": 9}, 4, weights={"A": 10.0, "B": 0.0}) == {"A": 1, "B": 3}
    assert sum(quotas({"x": 7, "y": 5, "z": 3}, 11).values()) == 11
    with pytest.raises(ntkal.InvalidArgumentError, match="larger than"):
        quotas({"A": 1}, 2)


def test_composition_key():
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    assert composition_key(a) == "Cu"
    a[0].symbol = "Au"
    assert composition_key(a) == "Au-Cu"
    assert composition_key(molecule("CH3OH")) == "C-H-O"


# ---- calibration ------------------------------------------------------------------------------------
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


# ---- variance reduction -------------------------------------------------------------------------------
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


# ---- through acquire --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def featurizer():
    return Featurizer(models.toy(seed=0, hidden=4, n_radial=3), "joint", dim=24, force_rows=3)


def test_strata_split_the_batch_in_proportion_to_candidates(featurizer):
    train, pool = cells(6, 0), cells(30, 1)  # pool: 10 Au-Cu, 20 Cu
    res = acquire(featurizer, train, pool, 6, strata="composition", progress=False, noise_var=1e-2)
    assert res.quotas == {"Au-Cu": 2, "Cu": 4}
    keys = [composition_key(pool[i]) for i in res.indices]
    assert keys.count("Au-Cu") == 2 and keys.count("Cu") == 4
    # within a stratum: the same LCMD the unstratified pipeline runs on that stratum's candidates alone
    cu = [i for i in range(30) if composition_key(pool[i]) == "Cu"]
    # (shortlist: the stratum's share of min(pool, 100) = 20, its whole size here)
    alone = acquire(featurizer, train, [pool[i] for i in cu], 4, progress=False, noise_var=1e-2, shortlist=20)
    np.testing.assert_array_equal(sorted(np.array(cu)[alone.indices]),
                                  sorted(i for i in res.indices if composition_key(pool[i]) == "Cu"))


def test_training_duplicates_are_never_picked(featurizer):
    train, pool = cells(6, 0), cells(20, 1)
    pool = pool[:5] + [t.copy() for t in train] + pool[5:]  # pool 5..10 are the training structures
    for strategy in ("topk", "pv_lcmd", "greedy_pv", "random"):
        res = acquire(featurizer, train, pool, 20, strategy=strategy, progress=False, seed=1)
        assert not set(res.indices.tolist()) & set(range(5, 11)), strategy
        np.testing.assert_array_equal(res.excluded, np.arange(5, 11))


def test_training_structures_as_files_rewrite_them_are_never_picked(featurizer):
    train, others = cells(6, 0), cells(6, 1)
    reordered = train[0][np.argsort(train[0].numbers, kind="stable")[::-1]]  # grouped by element, as in a POSCAR
    assert (reordered.numbers != train[0].numbers).any() or (reordered.positions != train[0].positions).any()
    shifted = train[1].copy()
    shifted.positions[2] += np.array([1, -1, 2]) @ shifted.cell  # one atom shifted by a lattice vector
    rounded = train[2].copy()
    rounded.positions = np.round(rounded.positions, 6)  # positions rounded to 1e-6 Å
    moved = train[3].copy()
    moved.positions[1] += [0.03, 0.0, 0.04]  # one atom moved 0.05 Å: a new structure
    pool = others[:3] + [reordered, shifted, rounded, moved] + others[3:]
    res = acquire(featurizer, train, pool, len(pool) - 3, strategy="topk", progress=False)
    np.testing.assert_array_equal(res.excluded, [3, 4, 5])
    assert sorted(res.indices.tolist()) == [0, 1, 2, 6, 7, 8, 9]


def labelled(structures, featurizer, shift):
    """Copies whose reference forces are the featurizer model's forces + shift[i] on every component."""
    out = []
    for a, s in zip(structures, shift):
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=0.0, forces=featurizer.predict_forces(a) + s)
        out.append(b)
    return out


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


@pytest.mark.parametrize("bad,needle", [(dict(strata="element"), "strata"), (dict(calibrate="maybe"), "calibrate"),
                                        (dict(workers=0), "workers")])
def test_bad_options(featurizer, bad, needle):
    with pytest.raises(ntkal.InvalidArgumentError, match=needle):
        acquire(featurizer, cells(3, 0), cells(5, 1), 2, progress=False, **bad)


# ---- loss-matched rows ----------------------------------------------------------------------------------
H = 1e-5


@pytest.mark.parametrize("loss", [Loss(), Loss(2.0, 0.5, "total", "per_structure"), Loss(1.0, 3.0, "per_atom",
                                                                                          "per_structure")])
def test_loss_matched_rows_give_the_weighted_loss_gradient(loss):
    """grad L = 2 J_w^T r_w, with J_w the featurizer's weighted rows: checked by central differences of L."""
    model = models.toy(seed=3, hidden=3, n_radial=3)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms[1].symbol = "Au"
    atoms.rattle(0.08, seed=2)
    n = len(atoms)
    rng = np.random.default_rng(0)
    e_ref, f_ref = 0.3, rng.standard_normal((n, 3)) * 0.1
    theta0 = torch.cat([v.reshape(-1) for v in model.params.values()])

    def unflatten(vec):
        out, start = {}, 0
        for k, v in model.params.items():
            out[k] = vec[start:start + v.numel()].reshape(v.shape)
            start += v.numel()
        return out

    def energy_forces(theta):
        pos = model.positions(atoms, requires_grad=True)
        e = model.energy(atoms, unflatten(theta), pos)
        (g,) = torch.autograd.grad(e, pos)
        return float(e.detach()), -g.detach().numpy()

    per_atom = 1.0 / n if loss.energy == "per_atom" else 1.0
    per_comp = 1.0 / (3 * n) if loss.forces == "per_structure" else 1.0

    def L(theta):
        e, f = energy_forces(theta)
        return loss.energy_weight * ((e - e_ref) * per_atom) ** 2 + loss.force_weight * per_comp * np.sum((f - f_ref) ** 2)

    grad_fd = np.zeros(theta0.numel())
    for p in range(theta0.numel()):
        t = theta0.clone()
        t[p] += H
        plus = L(t)
        t[p] -= 2 * H
        grad_fd[p] = (plus - L(t)) / (2 * H)
    J = Featurizer(model, "joint", dim=8, loss=loss, force_rows="exact").jacobian(atoms)
    e, f = energy_forces(theta0)
    r = np.concatenate([[np.sqrt(loss.energy_weight) * per_atom * (e - e_ref)],
                        np.sqrt(loss.force_weight * per_comp) * (f - f_ref).reshape(-1)])
    grad = 2 * J.T @ r
    np.testing.assert_allclose(grad, grad_fd, atol=1e-6 * np.abs(grad_fd).max(), rtol=0)
    # sketched features carry the same weights: rows = weighted Jacobian x sketch
    feat = Featurizer(model, "joint", dim=8, loss=loss, force_rows="exact")
    unweighted = Featurizer(model, "joint", dim=8, force_rows="exact")
    we, wf = loss.row_weights(n)
    np.testing.assert_allclose(feat.features(atoms)[0], we * unweighted.features(atoms)[0], rtol=1e-6)
    np.testing.assert_allclose(feat.features(atoms)[1:], wf * unweighted.features(atoms)[1:], rtol=1e-6)
    assert feat.fingerprint() != unweighted.fingerprint()


def test_loss_rejects_bad_values():
    for kwargs, needle in ((dict(energy_weight=0), "energy_weight"), (dict(forces="mean"), "forces"),
                           (dict(energy="eV"), "energy")):
        with pytest.raises(ntkal.InvalidArgumentError, match=needle):
            Loss(**kwargs)
    with pytest.raises(ntkal.InvalidArgumentError, match="loss"):
        Featurizer(models.toy(), "joint", dim=8, loss={"energy_weight": 1}, force_rows="exact")


def test_the_loop_as_users_run_it(featurizer, tmp_path):
    """Round after round: the same pool file, a training file that grows by the labelled picks, one feature
    store. The pool's features are computed once; nothing already labelled is picked again."""
    import ase.io

    pool = cells(40, 1)
    ase.io.write(tmp_path / "pool.extxyz", pool)
    train = labelled(cells(5, 0), featurizer, np.zeros(5))
    ase.io.write(tmp_path / "train.extxyz", train)
    store = tmp_path / "store"
    picked = set()
    for rnd in range(3):
        res = acquire(featurizer, str(tmp_path / "train.extxyz"), str(tmp_path / "pool.extxyz"), 4, chunk_size=8,
                      cache=store, progress=False, calibrate="auto", noise_var=1e-2)
        assert res.calibration is not None  # the training file carries forces: calibration is on
        pool_chunks = 5
        if rnd == 0:
            assert res.computed_chunks == 1 + pool_chunks
        else:
            assert res.computed_chunks <= 2  # only the training file's grown tail; the pool comes from the store
            assert res.cached_chunks >= pool_chunks
        assert not picked & set(res.indices.tolist())
        assert set(res.excluded.tolist()) == picked
        picked |= set(res.indices.tolist())
        new = labelled([pool[i] for i in res.indices], featurizer, np.full(4, 0.1))  # "DFT" labels
        ase.io.write(tmp_path / "train.extxyz", new, append=True)


def test_featurizer_defaults_are_the_studied_ones():
    model = models.toy()
    f = Featurizer(model)
    assert (f.kernel, f.dim, f.force_rows) == ("joint", 512, 4)
    assert Featurizer(model, "energy").n_rows(bulk("Cu", "fcc", a=3.6, cubic=True)) == 1
