"""The acquisition pipeline: strategies, streaming, file inputs, resumable cache, bad input."""
import numpy as np
import pytest
from _require import require
from _structures import cells as small_cells, labelled

torch = require("torch")
require("ase")

import ase.db  # noqa: E402
import ase.io  # noqa: E402
from ase.build import bulk  # noqa: E402

import ntkal  # noqa: E402
from ntkal.acquire import acquire  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402


def cells(n, seed, rattle=0.05):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("Cu", "fcc", a=3.6 + 0.1 * rng.standard_normal(), cubic=True)
        if i % 3 == 0:
            a[int(rng.integers(4))].symbol = "Au"
        a.rattle(rattle * (1 + 3 * rng.random()), seed=int(rng.integers(1 << 30)))
        out.append(a)
    return out


@pytest.fixture(scope="module")
def featurizer():
    return Featurizer(models.toy(seed=0, hidden=4, n_radial=3), "joint", dim=24, force_rows=3)


@pytest.fixture(scope="module")
def data():
    return cells(6, 0, rattle=0.02), cells(40, 1)


class Counting:
    """Wraps a featurizer, counting structures featurized; optionally fails after some calls."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.fail_after, self.calls, self.structures = inner, fail_after, 0, 0

    def __call__(self, structures):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.structures += len(structures)
        return self.inner(structures)

    def fingerprint(self):
        return self.inner.fingerprint()

    def config(self):
        return self.inner.config()


def reference_pv(featurizer, train, pool, noise_var):
    post = ntkal.Posterior(featurizer.dim, noise_var=noise_var).add(featurizer(train))
    return post.variance(featurizer(pool))


def test_pv_scores_and_topk_match_direct_computation(featurizer, data):
    train, pool = data
    res = acquire(featurizer, train, pool, 5, strategy="topk", chunk_size=7, progress=False, noise_var=1e-2,
                  strata="none")  # one ranking over the whole pool
    pv = reference_pv(featurizer, train, pool, 1e-2)
    np.testing.assert_allclose(res.pool_pv, pv, rtol=1e-5)
    expected = np.lexsort((np.arange(pv.size), -pv))[:5]
    np.testing.assert_array_equal(res.indices, expected)
    np.testing.assert_allclose(res.pv, pv[expected], rtol=1e-5)
    assert res.n_pool == 40 and res.n_train == 6
    assert set(res.timings) >= {"train_features", "pool_features", "scoring", "select", "total"}


@pytest.mark.parametrize("strategy", ["pv_lcmd", "greedy_pv"])
def test_shortlist_then_select_equals_select_on_shortlist(featurizer, data, strategy):
    train, pool = data
    res = acquire(featurizer, train, pool, 4, strategy=strategy, shortlist=12, chunk_size=5, progress=False,
                  strata="none")
    pv = res.pool_pv
    short = np.lexsort((np.arange(pv.size), -pv))[:12]
    np.testing.assert_array_equal(res.shortlist, short)
    feats = featurizer([pool[i] for i in short])
    tb = featurizer(train)
    if strategy == "greedy_pv":
        post = ntkal.Posterior(feats.dim).add(tb)
        local, scores = ntkal.select(feats, None, 4, method="greedy_pv", posterior=post)
    else:
        local, scores = ntkal.select(feats, None, 4, method="lcmd", train_rows=tb)
    np.testing.assert_array_equal(res.indices, short[local])
    np.testing.assert_allclose(res.scores, scores, rtol=1e-4)
    assert len(set(res.indices.tolist())) == 4


def test_random_strategy_and_no_training_set(featurizer, data):
    _, pool = data
    res = acquire(featurizer, None, pool, 6, strategy="random", seed=3, progress=False)
    np.testing.assert_array_equal(res.indices, np.random.default_rng(3).choice(40, size=6, replace=False))
    assert res.pool_pv is None and np.all(res.pv > 0)
    res2 = acquire(featurizer, [], pool, 3, strategy="topk", progress=False)
    post = ntkal.Posterior(featurizer.dim)
    np.testing.assert_allclose(res2.pool_pv, post.variance(featurizer(pool)), rtol=1e-5)


def test_file_inputs_extxyz_and_db(featurizer, data, tmp_path):
    train, pool = data
    ase.io.write(tmp_path / "train.extxyz", train)
    ase.io.write(tmp_path / "pool.extxyz", pool)
    with ase.db.connect(str(tmp_path / "pool.db")) as db:
        for a in pool:
            db.write(a)
    ref = acquire(featurizer, train, pool, 4, progress=False, chunk_size=9)
    for pool_path in ("pool.extxyz", "pool.db"):
        got = acquire(featurizer, tmp_path / "train.extxyz", tmp_path / pool_path, 4, progress=False, chunk_size=9)
        np.testing.assert_array_equal(got.indices, ref.indices)
        np.testing.assert_allclose(got.pool_pv, ref.pool_pv, rtol=1e-4)  # files round positions to 1e-8


def test_cache_resumes_after_interruption_with_identical_output(featurizer, data, tmp_path):
    train, pool = data
    ref = acquire(featurizer, train, pool, 5, chunk_size=8, progress=False)
    cache = tmp_path / "cache"
    broken = Counting(featurizer, fail_after=3)  # train chunk + 2 pool chunks, then "Ctrl-C"
    with pytest.raises(KeyboardInterrupt):
        acquire(broken, train, pool, 5, chunk_size=8, cache=cache, progress=False)
    resumed = Counting(featurizer)
    res = acquire(resumed, train, pool, 5, chunk_size=8, cache=cache, progress=False)
    assert resumed.structures == 40 - 16  # the two finished pool chunks and the train chunk were reused
    assert res.cached_chunks == 3 and res.computed_chunks == 3
    np.testing.assert_array_equal(res.indices, ref.indices)
    np.testing.assert_array_equal(res.pool_pv, ref.pool_pv)
    again = Counting(featurizer)
    res2 = acquire(again, train, pool, 5, chunk_size=8, cache=cache, progress=False)
    assert again.structures == 0 and res2.computed_chunks == 0
    np.testing.assert_array_equal(res2.indices, ref.indices)
    # a changed pool structure invalidates only its chunk
    changed = list(pool)
    changed[35] = changed[35].copy()
    changed[35].positions[0, 0] += 0.1
    third = Counting(featurizer)
    acquire(third, train, changed, 5, chunk_size=8, cache=cache, progress=False)
    assert third.structures == 8


def test_store_of_another_featurizer_is_refused(featurizer, data, tmp_path):
    train, pool = data
    acquire(featurizer, train, pool, 3, chunk_size=20, cache=tmp_path, progress=False)
    other = Counting(Featurizer(featurizer.base_model, "joint", dim=24, force_rows=3, seed=1))
    with pytest.raises(ntkal.InvalidArgumentError, match="cache .* holds features of another featurizer"):
        acquire(other, train, pool, 3, chunk_size=20, cache=tmp_path, progress=False)
    assert other.structures == 0
    acquire(other, train, pool, 3, chunk_size=20, cache=tmp_path / "other", progress=False)
    assert other.structures == 46


@pytest.mark.parametrize("kwargs,needle", [
    (dict(n=0), "n must be"),
    (dict(n=41), "n must be"),
    (dict(n=3, strategy="best"), "strategy"),
    (dict(n=3, shortlist=2), "shortlist"),
    (dict(n=3, noise_var=0.0), "noise_var"),
    (dict(n=3, chunk_size=0), "chunk_size"),
])
def test_bad_arguments(featurizer, data, kwargs, needle):
    train, pool = data
    with pytest.raises(ntkal.InvalidArgumentError, match=needle):
        acquire(featurizer, train, pool, progress=False, **kwargs)


def test_bad_pools(featurizer, data, tmp_path):
    train, pool = data
    with pytest.raises(ntkal.InvalidArgumentError, match="pool must hold at least one"):
        acquire(featurizer, train, [], 1, progress=False)
    with pytest.raises(ntkal.InvalidArgumentError, match="pool file not found"):
        acquire(featurizer, train, tmp_path / "missing.extxyz", 1, progress=False)
    bad = tmp_path / "corrupt.extxyz"
    bad.write_text("3\nLattice=\"1 0 0 0 1 0 0 0 1\"\nCu 0 0 0\n")
    with pytest.raises(ntkal.InvalidArgumentError, match="pool .* truncated"):
        acquire(featurizer, train, bad, 1, progress=False)
    nan = [a.copy() for a in pool[:3]]
    nan[2].positions[1, 0] = np.nan
    with pytest.raises(ntkal.InvalidArgumentError, match=r"pool\[2\] positions must be finite"):
        acquire(featurizer, train, nan, 1, progress=False)
    with pytest.raises(ntkal.InvalidArgumentError, match="train file not found"):
        acquire(featurizer, tmp_path / "nope.db", pool, 1, progress=False)


# ------------------------------------------------------------------------------ one bad structure

def test_bad_structures_are_found_before_any_featurisation(featurizer, data):
    train, pool = data
    pool = list(pool)
    for i in (17, 30):  # neon: not among the toy model's elements
        pool[i] = pool[i].copy()
        pool[i][0].symbol = "Ne"
    counting = Counting(featurizer)
    counting.check = featurizer.check
    with pytest.raises(ntkal.InvalidArgumentError) as info:
        acquire(counting, train, pool, 5, chunk_size=8, progress=False)
    msg = str(info.value)
    assert "2 pool structure(s)" in msg and "pool[17]" in msg and "pool[30]" in msg and "Ne" in msg
    assert counting.structures == 0  # nothing was featurized


class Exploding(Counting):
    """Fails like a model would on one structure (marked in atoms.info)."""

    def __call__(self, structures):
        if any(a.info.get("explode") for a in structures):
            raise RuntimeError("the model fell over")
        return super().__call__(structures)


def test_failure_during_featurisation_names_the_structure_and_keeps_finished_chunks(featurizer, data, tmp_path):
    train, pool = data
    pool = [a.copy() for a in pool]
    pool[27].info["explode"] = True
    cache = tmp_path / "cache"
    with pytest.raises(ntkal.InvalidArgumentError) as info:
        acquire(Exploding(featurizer), train, pool, 5, chunk_size=8, cache=cache, progress=False)
    msg = str(info.value)
    assert f"pool[27] ({pool[27].get_chemical_formula()})" in msg and "the model fell over" in msg
    assert "kept in the feature store" in msg
    del pool[27].info["explode"]
    rerun = Counting(featurizer)
    res = acquire(rerun, train, pool, 5, chunk_size=8, cache=cache, progress=False)
    assert rerun.structures == 40 - 24 and res.cached_chunks == 4  # train + 3 pool chunks were finished


def test_on_error_skip_leaves_bad_structures_out_and_lists_them(featurizer, data, tmp_path):
    train, pool = data
    pool = [a.copy() for a in pool]
    for i in (17, 30):
        pool[i][0].symbol = "Ne"  # refused by the check
    pool[27].info["explode"] = True  # fails while featurized
    cache = tmp_path / "cache"
    exploding = Exploding(featurizer)
    exploding.check = featurizer.check
    res = acquire(exploding, train, pool, 5, chunk_size=8, cache=cache, progress=False, on_error="skip")
    assert [(label, i) for label, i, _ in res.skipped] == [("pool", 17), ("pool", 27), ("pool", 30)]
    assert "Ne" in dict(((i, r) for _, i, r in res.skipped))[17] and "fell over" in res.skipped[1][2]
    assert not set(res.indices.tolist()) & {17, 27, 30}
    assert np.isnan(res.pool_pv[[17, 27, 30]]).all()
    good = [i for i in range(40) if i not in (17, 27, 30)]
    expect = reference_pv(featurizer, train, [pool[i] for i in good], 1e-3)
    np.testing.assert_allclose(res.pool_pv[good], expect, rtol=1e-5)
    assert "skipped 3 structure(s)" in res.summary()
    # a rerun from the cache knows the empty blocks as left out (the exploding one now loads from the cache)
    again = acquire(Counting(featurizer), train, pool, 5, chunk_size=8, cache=cache, progress=False, on_error="skip")
    assert [i for _, i, _ in again.skipped] == [17, 27, 30]
    np.testing.assert_array_equal(again.indices, res.indices)
    with pytest.raises(ntkal.InvalidArgumentError, match="on_error must be one of"):
        acquire(featurizer, train, pool, 5, on_error="ignore", progress=False)


def test_a_featurizer_without_check_still_names_the_pool_index(featurizer, data):
    train, pool = data
    pool = [a.copy() for a in pool]
    pool[21][0].symbol = "Ne"
    with pytest.raises(ntkal.InvalidArgumentError, match=r"pool\[21\] \(.*\) could not be featurized: .*Ne"):
        acquire(Counting(featurizer), train, pool, 5, chunk_size=8, progress=False)


@pytest.mark.parametrize("bad,needle", [(dict(strata="element"), "strata"), (dict(calibrate="maybe"), "calibrate"),
                                        (dict(workers=0), "workers")])
def test_bad_options(featurizer, bad, needle):
    with pytest.raises(ntkal.InvalidArgumentError, match=needle):
        acquire(featurizer, small_cells(3, 0), small_cells(5, 1), 2, progress=False, **bad)


def test_the_loop_as_users_run_it(featurizer, tmp_path):
    """Round after round: the same pool file, a training file that grows by the labelled picks, one feature
    store. The pool's features are computed once; nothing already labelled is picked again."""
    import ase.io

    pool = small_cells(40, 1)
    ase.io.write(tmp_path / "pool.extxyz", pool)
    train = labelled(small_cells(5, 0), featurizer, np.zeros(5))
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


def test_a_strategy_is_a_shortlist_and_a_select_method(featurizer, data):
    """Every select() method is an acquire strategy; "pv_lcmd", the default, is "lcmd"."""
    train, pool = data
    default = acquire(featurizer, train, pool, 5, progress=False)
    same = acquire(featurizer, train, pool, 5, strategy="lcmd", progress=False)
    np.testing.assert_array_equal(same.indices, default.indices)
    np.testing.assert_array_equal(same.scores, default.scores)
    assert default.strategy == "pv_lcmd" and same.strategy == "lcmd"
    far = acquire(featurizer, train, pool, 5, strategy="maxdist", shortlist=12, progress=False)
    found = ntkal.screen(featurizer, train, pool, shortlist=12, progress=False)
    for key, q in far.quotas.items():  # maxdist on each stratum's shortlist, the training set as centres
        idx = found.shortlists[key][0]
        k_s = min(len(idx), max(q, int(np.ceil(12 * found.available[key] / sum(found.available.values())))))
        sel = ntkal.select(found.rows[key].take(np.arange(k_s)), None, q, method="maxdist",
                           train_rows=found.train_features)
        assert set(idx[sel.indices].tolist()) <= set(far.indices.tolist())
