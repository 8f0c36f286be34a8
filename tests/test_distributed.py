"""Screening on Dask: a two-process LocalCluster gives the in-process result bit for bit, survives a worker
killed mid-featurization, resumes from the feature store, and bad clusters get clear errors."""
import os
import signal
import sys

import numpy as np
import pytest
from _require import require
from _structures import cells

torch = require("torch")
require("ase")
distributed = require("distributed")
cloudpickle = require("cloudpickle")


import ntkal  # noqa: E402
from ntkal.acquire import acquire  # noqa: E402
from ntkal.feature_store import FeatureStore  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402

# the helpers below travel to worker processes by value (tests/ is not on the workers' path)
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def featurizer():
    return Featurizer(models.toy(seed=0, hidden=4, n_radial=3), "joint", dim=24, force_rows=3)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=50)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


class KillOnce:
    """Kills the worker process it runs in (SIGKILL) the first time it sees a marked structure."""

    def __init__(self, inner, marker):
        self.inner, self.marker = inner, str(marker)

    def __call__(self, structures):
        if any(a.info.get("kill") for a in structures) and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.inner(structures)

    def fingerprint(self):
        return self.inner.fingerprint()

    def config(self):
        return self.inner.config()


class FailAfter:
    """Raises after ``n`` calls in this process (an interrupted in-process screen)."""

    def __init__(self, inner, n):
        self.inner, self.n, self.calls = inner, n, 0

    def __call__(self, structures):
        if self.calls >= self.n:
            raise KeyboardInterrupt("interrupted")
        self.calls += 1
        return self.inner(structures)

    def fingerprint(self):
        return self.inner.fingerprint()


@pytest.mark.parametrize("strategy,strata", [("pv_lcmd", "none"), ("greedy_pv", "composition"),
                                             ("variance_reduction", "none")])
def test_two_workers_give_the_in_process_result(featurizer, client, tmp_path, strategy, strata):
    train, pool = cells(8, 0), cells(60, 1)
    kw = dict(strategy=strategy, strata=strata, chunk_size=7, progress=False, noise_var=1e-2, shortlist=20)
    here = acquire(featurizer, train, pool, 5, **kw)
    there = acquire(featurizer, train, pool, 5, client=client, cache=tmp_path / "store", **kw)
    np.testing.assert_array_equal(there.indices, here.indices)
    np.testing.assert_array_equal(there.pool_pv, here.pool_pv)  # same bits, whichever process scored a chunk
    np.testing.assert_array_equal(there.scores, here.scores)
    assert there.computed_chunks == 2 + 9 and there.cached_chunks == 0
    again = acquire(featurizer, train, pool, 5, client=client, cache=tmp_path / "store", **kw)
    assert again.computed_chunks == 0 and again.cached_chunks == 11
    np.testing.assert_array_equal(again.indices, here.indices)


def test_local_workers_option_matches_in_process(featurizer):
    train, pool = cells(5, 2), cells(30, 3)
    here = acquire(featurizer, train, pool, 4, chunk_size=8, progress=False)
    local = acquire(featurizer, train, pool, 4, chunk_size=8, progress=False, workers=2)
    np.testing.assert_array_equal(local.indices, here.indices)
    np.testing.assert_array_equal(local.pool_pv, here.pool_pv)


def test_killed_worker_loses_no_finished_chunk(featurizer, client, tmp_path):
    train, pool = cells(6, 4), cells(48, 5)
    pool[30].info["kill"] = True  # chunk 3 (structures 24..31) kills its worker once
    here = acquire(featurizer, train, pool, 4, chunk_size=8, progress=False)
    res = acquire(KillOnce(featurizer, tmp_path / "killed"), train, pool, 4, chunk_size=8, progress=False,
                  client=client, cache=tmp_path / "store")
    assert os.path.exists(tmp_path / "killed")  # a worker did die
    np.testing.assert_array_equal(res.indices, here.indices)
    np.testing.assert_array_equal(res.pool_pv, here.pool_pv)
    assert FeatureStore(tmp_path / "store").chunks("pool") == [(s, s + 8) for s in range(0, 48, 8)]


def test_rerun_on_dask_resumes_an_interrupted_screen(featurizer, client, tmp_path):
    train, pool = cells(6, 6), cells(40, 7)
    with pytest.raises(KeyboardInterrupt):
        acquire(FailAfter(featurizer, 4), train, pool, 3, chunk_size=8, progress=False, cache=tmp_path / "s")
    # 1 train chunk and 3 pool chunks were finished before the interruption
    res = acquire(featurizer, train, pool, 3, chunk_size=8, progress=False, cache=tmp_path / "s", client=client)
    assert res.cached_chunks == 4 and res.computed_chunks == 2
    here = acquire(featurizer, train, pool, 3, chunk_size=8, progress=False)
    np.testing.assert_array_equal(res.indices, here.indices)


def test_bad_clusters_get_clear_errors(featurizer, client, tmp_path):
    from ntkal.executors import executor_for

    with pytest.raises(ntkal.InvalidArgumentError, match="client needs cache"):
        acquire(featurizer, cells(3, 0), cells(5, 1), 2, client=client, progress=False)
    with pytest.raises(ntkal.InvalidArgumentError, match="client must be a distributed.Client"):
        acquire(featurizer, cells(3, 0), cells(5, 1), 2, client="tcp://x:1", cache=tmp_path, progress=False)
    with pytest.raises(ntkal.InvalidArgumentError, match="scheduler 'tcp://127.0.0.1:9' cannot be reached"):
        executor_for(scheduler="tcp://127.0.0.1:9")


def test_cli_scheduler_and_workers(tmp_path, capsys):
    import ase.io

    from ntkal.cli import main

    ase.io.write(tmp_path / "train.extxyz", cells(4, 8))
    ase.io.write(tmp_path / "pool.extxyz", cells(20, 9))
    base = ["select", "--train", str(tmp_path / "train.extxyz"), "--pool", str(tmp_path / "pool.extxyz"), "-n", "3",
            "--model", "toy", "--dim", "16", "--no-progress", "--chunk-size", "6"]
    assert main(base + ["--workers", "1", "--out", str(tmp_path / "a.extxyz")]) == 0
    assert main(base + ["--workers", "2", "--out", str(tmp_path / "b.extxyz")]) == 0
    a = [x.info["ntkal_index"] for x in ase.io.read(tmp_path / "a.extxyz", ":")]
    b = [x.info["ntkal_index"] for x in ase.io.read(tmp_path / "b.extxyz", ":")]
    assert a == b
    code = main(base + ["--scheduler", "tcp://127.0.0.1:9", "--cache", str(tmp_path / "c")])
    assert code == 2 and "cannot be reached" in capsys.readouterr().err


def test_two_screens_on_one_store_at_once(featurizer, tmp_path):
    """Two processes screen the same pool into one store at the same time: both get the single-process
    answer and the store holds one complete copy of every chunk. (Separate interpreters, as two users' screens
    are: a forked child of this process, which has run OpenMP and torch thread pools, may hang.)"""
    import pathlib
    import subprocess

    train, pool = cells(6, 10), cells(40, 11)
    here = acquire(featurizer, train, pool, 4, chunk_size=5, progress=False)
    tests = pathlib.Path(__file__).parent
    script = (
        "import sys; sys.path.insert(0, {tests!r})\n"
        "from _structures import cells\n"
        "from ntkal.acquire import acquire\n"
        "from ntkal.torch import Featurizer, models\n"
        "f = Featurizer(models.toy(seed=0, hidden=4, n_radial=3), 'joint', dim=24, force_rows=3)\n"
        "r = acquire(f, cells(6, 10), cells(40, 11), 4, chunk_size=5, progress=False, cache={cache!r})\n"
        "print(' '.join(map(str, r.indices.tolist())))\n"
    ).format(tests=str(tests), cache=str(tmp_path / "s"))
    pkg_dir = os.path.dirname(os.path.dirname(ntkal.__file__))  # the ntkal this test imported (tree or install)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_dir, os.environ.get("PYTHONPATH", "")]))
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        assert [int(x) for x in out.split()] == here.indices.tolist()
    store = FeatureStore(tmp_path / "s")
    assert store.chunks("pool") == [(s, s + 5) for s in range(0, 40, 5)]
    np.testing.assert_array_equal(store.read("pool").rows, featurizer(pool).rows)
