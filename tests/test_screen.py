"""ntkal.screen: what it returns, its inputs (a featurizer with structures, a feature store, precomputed
features), and what it does once: each file parsed once per command, each structure checked once per run."""
import numpy as np
import pytest
from _require import require

torch = require("torch")
require("ase")

import ase.io  # noqa: E402

import ntkal  # noqa: E402
from ntkal.cli import main  # noqa: E402
from ntkal.demo_data import demo_structures  # noqa: E402
from ntkal.features import Precomputed, compute_features  # noqa: E402
from ntkal.structures import structure_digest  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402


@pytest.fixture(scope="module")
def data():
    train, pool = demo_structures(n_pool=30, n_train=5, seed=2)
    return train, pool


class CountingChecks:
    """A toy model's featurizer whose model check counts the checks of each structure."""

    def __init__(self):
        model = models.toy(seed=0, hidden=4, n_radial=3)
        self.counts: dict = {}

        def counted(atoms, where, arg):
            key = structure_digest(atoms)
            self.counts[key] = self.counts.get(key, 0) + 1

        model.check_fn = counted
        self.featurizer = Featurizer(model, "joint", dim=16, force_rows=2)


def test_screen_is_what_acquire_selects_from(data):
    train, pool = data
    f = Featurizer(models.toy(seed=0, hidden=4, n_radial=3), "joint", dim=16, force_rows=2)
    found = ntkal.screen(f, train, pool, shortlist=8, chunk_size=7, progress=False)
    res = ntkal.acquire(f, train, pool, 4, shortlist=8, chunk_size=7, progress=False, strategy="topk")
    np.testing.assert_array_equal(found.pool_pv, res.pool_pv)
    direct = ntkal.Posterior(f.dim, noise_var=1e-3).add(f(train)).variance(f(pool))
    np.testing.assert_allclose(found.pool_pv, direct, rtol=1e-6)
    assert set(found.shortlists) == {key for key in found.keys} and sum(found.available.values()) == len(pool)
    for key, (idx, pv) in found.shortlists.items():
        members = np.array([i for i, k in enumerate(found.keys) if k == key])
        expect = members[np.lexsort((members, -found.pool_pv[members]))][:8]
        np.testing.assert_array_equal(idx, expect)
        np.testing.assert_array_equal(pv, found.pool_pv[idx])
        np.testing.assert_array_equal(found.rows[key].rows, f(pool).take(idx).rows)
    assert found.n_train == len(train) and found.train_features.n_rows == f(train).n_rows


def test_screen_of_a_store_equals_the_screen_of_its_structures(data, tmp_path):
    train, pool = data
    f = Featurizer(models.toy(seed=0, hidden=4, n_radial=3), "joint", dim=16, force_rows=2)
    compute_features(f, pool, tmp_path / "s", label="pool", chunk_size=8, progress=False)
    direct = ntkal.screen(f, train, pool, shortlist=6, strata="none", progress=False)
    for given in (f(train), ntkal.Posterior(f.dim, noise_var=1e-3).add(f(train))):
        stored = ntkal.screen(tmp_path / "s", given, "pool", shortlist=6, progress=False)
        np.testing.assert_array_equal(stored.pool_pv, direct.pool_pv)
        np.testing.assert_array_equal(stored.shortlists["*"][0], direct.shortlists["*"][0])
        np.testing.assert_array_equal(stored.rows["*"].rows, direct.rows["*"].rows)
    with pytest.raises(ntkal.InvalidArgumentError, match="screen: shortlist must be in"):
        ntkal.screen(tmp_path / "s", None, "pool", shortlist=31, progress=False)


@pytest.mark.parametrize("stored", [False, True])
def test_precomputed_features_select_what_the_model_selects(data, tmp_path, stored):
    train, pool = data
    f = Featurizer(models.toy(seed=0, hidden=4, n_radial=3), "joint", dim=16, force_rows=2)
    frames = train + pool
    features = (compute_features(f, frames, tmp_path / "all", progress=False), "structures") if stored else f(frames)
    lookup = Precomputed(features, frames, predict_forces=f.predict_forces)
    for kw in ({}, {"strategy": "greedy_pv", "strata": "none"}):
        a = ntkal.acquire(f, train, pool, 5, progress=False, **kw)
        b = ntkal.acquire(lookup, train, pool, 5, progress=False, **kw)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.pool_pv, b.pool_pv)
    other = demo_structures(n_pool=3, n_train=1, seed=9)[1]
    with pytest.raises(ntkal.InvalidArgumentError, match=r"pool\[1\] .* has no precomputed features"):
        ntkal.acquire(lookup, train, pool[:1] + other, 2, progress=False)
    with pytest.raises(ntkal.InvalidArgumentError, match="one block per structure"):
        Precomputed(f(frames[:3]), frames)


def test_each_structure_is_checked_once_per_run(data, tmp_path):
    train, pool = data
    counting = CountingChecks()
    ntkal.acquire(counting.featurizer, train, pool, 4, chunk_size=7, progress=False)
    assert sorted(set(counting.counts.values())) == [1]
    assert len(counting.counts) == len({structure_digest(a) for a in train + pool})
    counting.counts.clear()
    compute_features(counting.featurizer, pool, tmp_path / "store", progress=False)
    assert sorted(set(counting.counts.values())) == [1]


@pytest.mark.parametrize("command", ["select", "score"])
def test_each_file_is_parsed_once_per_command(data, tmp_path, monkeypatch, command):
    train, pool = data
    ase.io.write(tmp_path / "train.extxyz", train)
    ase.io.write(tmp_path / "pool.extxyz", pool)
    parsed: dict = {}
    iread = ase.io.iread

    def counting_iread(filename, *args, **kwargs):
        parsed[str(filename)] = parsed.get(str(filename), 0) + 1
        return iread(filename, *args, **kwargs)

    monkeypatch.setattr(ase.io, "iread", counting_iread)
    argv = {"select": ["select", "-n", "4", "--out", str(tmp_path / "picked.extxyz")],
            "score": ["score", "--out", str(tmp_path / "scores.csv"), "--write-info", str(tmp_path / "pv.extxyz")]}
    code = main(argv[command] + ["--train", str(tmp_path / "train.extxyz"), "--pool", str(tmp_path / "pool.extxyz"),
                                 "--model", "toy", "--dim", "16", "--workers", "1", "--no-progress",
                                 "--chunk-size", "8"])
    assert code == 0
    assert parsed == {str((tmp_path / "train.extxyz").resolve()): 1, str((tmp_path / "pool.extxyz").resolve()): 1}
    written = ase.io.read(tmp_path / ("picked.extxyz" if command == "select" else "pv.extxyz"), index=":")
    assert len(written) == (4 if command == "select" else len(pool))
