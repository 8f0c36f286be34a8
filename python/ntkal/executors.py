"""Where chunk tasks run: in this process, or on a Dask cluster (one mechanism for a laptop and a cluster).

``executor_for(client, workers)`` picks one: a Dask ``client`` runs tasks on its workers; ``workers > 1``
without a client starts a ``LocalCluster`` of worker processes (1 thread each) for the run; otherwise
tasks run here, in order. On Dask the featurizer is scattered once to every worker (held there for
the run, never pickled per task) and each phase's context once; structures travel as plain arrays.
"""
from __future__ import annotations

import contextlib
import uuid

from .errors import fail
from .chunk_task import ChunkContext, ChunkResult, run_chunk

__all__ = ["InProcess", "DaskExecutor", "executor_for"]


class InProcess:
    """Run chunk tasks here, one after another, in order."""

    name = "in-process"
    n_workers = 1

    def bind(self, featurizer) -> None:
        self.featurizer = featurizer

    def run(self, ctx: ChunkContext, tasks):
        """Yield each task's ChunkResult as it finishes (here: in task order)."""
        for task in tasks:
            yield run_chunk(self.featurizer, ctx, task)

    def close(self) -> None:
        pass


def _dask(where: str):
    try:
        import distributed
    except ImportError as exc:
        fail(where, "parallel screening runs on Dask; install it with "
                    "pip install 'ntkal[distributed]' (dask[distributed])", cause=exc)
    return distributed


class DaskExecutor:
    """Run chunk tasks on the workers of a ``distributed.Client``.

    Parameters
    ----------
    client : distributed.Client
    owns : bool
        Close the client (and its LocalCluster) in :meth:`close`.
    window : int
        Most tasks in flight per worker: the client reads structures and sends chunks only as fast
        as workers finish them, so a pool of 10^6 never sits in the client's or the scheduler's memory.
    """

    name = "dask"

    def __init__(self, client, *, owns: bool = False, window: int = 4):
        self.client, self.owns, self.window = client, owns, window
        self._featurizer = None

    @property
    def n_workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1).get("workers", {})))

    def bind(self, featurizer) -> None:
        # one copy per worker, held for the run: the model is deserialised once per worker
        self._featurizer = self.client.scatter(featurizer, broadcast=True, hash=False)

    def run(self, ctx: ChunkContext, tasks):
        distributed = _dask("acquire")
        ctx_future = self.client.scatter(ctx, broadcast=True, hash=False)
        run_token = uuid.uuid4().hex
        limit = self.window * self.n_workers
        pending = distributed.as_completed()
        tasks = iter(tasks)
        in_flight = 0

        def submit_next() -> bool:
            nonlocal in_flight
            task = next(tasks, None)
            if task is None:
                return False
            pending.add(self.client.submit(run_chunk, self._featurizer, ctx_future, task, pure=False,
                                           retries=2, key=_task_key(task, run_token)))
            in_flight += 1
            return True

        while in_flight < limit and submit_next():
            pass
        for future in pending:
            result: ChunkResult = future.result()
            in_flight -= 1
            future.release()
            submit_next()
            yield result

    def close(self) -> None:
        if self.owns:
            cluster = getattr(self.client, "cluster", None)
            with contextlib.suppress(Exception):
                self.client.close()
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close()


def _task_key(task, run_token: str) -> str:
    """The Dask key of one chunk task of one run. The scheduler shares keys between all its clients and
    returns a held result to anyone who submits the same key, so the key carries a random token per run
    (an object's ``id`` repeats across processes and after garbage collection)."""
    return f"ntkal-{task.label}-{task.start}-{run_token}"


def executor_for(client=None, workers: int = 1, *, where: str = "acquire", scheduler: str | None = None):
    """The executor for a run: ``client`` (a distributed.Client), ``scheduler`` (its address), ``workers``
    local worker processes, or in-process."""
    if client is not None or scheduler is not None:
        distributed = _dask(where)
        if client is None:
            try:
                client = distributed.Client(scheduler, timeout="5s")
            except (OSError, TimeoutError) as exc:
                fail(where, f"scheduler {scheduler!r} cannot be reached: {exc}", cause=exc)
            return DaskExecutor(client, owns=True)
        if not isinstance(client, distributed.Client):
            fail(where, f"client must be a distributed.Client; got {type(client).__name__}")
        if client.status not in ("running", "newly-created"):
            fail(where, f"client is {client.status!r}, not connected to a scheduler")
        return DaskExecutor(client)
    if workers > 1:
        distributed = _dask(where)
        import dask

        # no MALLOC_TRIM_THRESHOLD_ in our workers' environment (see chunk_task._generous_malloc)
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = _local_cluster(distributed, workers)
        return DaskExecutor(distributed.Client(cluster), owns=True)
    return InProcess()


def _local_cluster(distributed, workers: int):
    return distributed.LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                    dashboard_address=":0", silence_logs=40,  # any free port: never a clash
                                    worker_class=distributed.Nanny)
