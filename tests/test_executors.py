"""Dask task keys: the scheduler shares keys between all its clients, so two runs must never submit the same
key, even for the same context object (same ``id``) on two clients of one scheduler."""
import pytest
from _require import require

distributed = require("distributed")

from ntkal import executors  # noqa: E402
from ntkal.chunk_task import ChunkContext, ChunkTask  # noqa: E402


def echo_chunk(featurizer, ctx, task):
    """Stands in for run_chunk: which featurizer ran which chunk."""
    return featurizer, task.start


@pytest.fixture()
def cluster():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                                  silence_logs=50) as c:
        yield c


def test_two_clients_with_one_context_object_get_their_own_results(cluster, monkeypatch):
    monkeypatch.setattr(executors, "run_chunk", echo_chunk)
    ctx = ChunkContext(store_path="unused", fingerprint="f")  # one object: one id() for both runs
    tasks = [ChunkTask("pool", start, [], "", [], count=1) for start in (0, 8)]
    with distributed.Client(cluster) as c1, \
            distributed.Client(cluster) as c2:
        keys = []
        for c in (c1, c2):
            submit = c.submit

            def recording(*args, _submit=submit, **kw):
                keys.append(kw["key"])
                return _submit(*args, **kw)

            monkeypatch.setattr(c, "submit", recording)
        first, second = executors.DaskExecutor(c1), executors.DaskExecutor(c2)
        first.bind("model-1")
        second.bind("model-2")
        run1 = first.run(ctx, tasks)
        got1 = [next(run1)]  # run 1 now holds its other chunk's future on the scheduler
        got2 = list(second.run(ctx, tasks))
        got1 += list(run1)
    assert sorted(got1) == [("model-1", 0), ("model-1", 8)]
    assert sorted(got2) == [("model-2", 0), ("model-2", 8)]
    assert len(keys) == 4 and len(set(keys)) == 4
    assert all(k.startswith(("ntkal-pool-0-", "ntkal-pool-8-")) for k in keys)


def test_task_keys_differ_between_runs():
    task = ChunkTask("train", 16, [], "", [], count=3)
    assert executors._task_key(task, "a") != executors._task_key(task, "b")
    assert executors._task_key(task, "a").startswith("ntkal-train-16-")
