"""The one driver of chunk tasks: it turns a set of structures (or a stored label) into chunk tasks, runs them
through an executor (this process or Dask workers, :mod:`ntkal.executors`), keeps count of cached and computed
chunks and of structures left out, and records the set in the feature store once every chunk is finished.
:func:`ntkal.screen`, :func:`ntkal.acquire` and :func:`ntkal.features.compute_features` all run through it.
"""
from __future__ import annotations

from .chunk_task import ChunkContext, ChunkTask, pack
from .executors import InProcess
from .progress import bar as progress_bar

__all__ = ["ChunkDriver"]


class ChunkDriver:
    """Runs the chunk tasks of one run.

    Parameters
    ----------
    executor : InProcess or DaskExecutor
        Bound to the run's featurizer.
    store : FeatureStore
        Where chunks are written (and read back).
    chunk_size : int
    progress : bool
    skipped : dict
        ``(label, index) -> reason`` of every structure left out, shared with the check pass; the driver adds
        those that fail while featurized.
    """

    def __init__(self, executor, store, *, chunk_size: int, progress: bool, skipped: dict | None = None):
        self.executor, self.store, self.chunk_size, self.progress = executor, store, chunk_size, progress
        self.skipped = {} if skipped is None else skipped
        self.cached = self.computed = 0

    def context(self, **kw) -> ChunkContext:
        """The context of one phase (sent to each worker once)."""
        return ChunkContext(str(self.store.path), self.store.fingerprint,
                            one_thread=not isinstance(self.executor, InProcess), **kw)

    def structure_tasks(self, src, checked, *, keys=None, exclude=None):
        """One task per chunk of ``src`` (a StructureSource read by the check pass, whose record ``checked`` is)."""
        label = checked.label
        for c, (start, structures) in enumerate(src.chunks(self.chunk_size)):
            stop = start + len(structures)
            left_out = {i - start: self.skipped[(label, i)] for i in range(start, stop) if (label, i) in self.skipped}
            yield ChunkTask(label, start, [pack(a) for a in structures], checked.digests[c],
                            keys[start:stop] if keys is not None else ["*"] * len(structures), left_out,
                            [i - start for i in range(start, stop) if exclude is not None and exclude[i]])

    def stored_tasks(self, label: str, chunks):
        """One task per recorded chunk ``(start, stop, digest)`` of a stored label (read back, never recomputed)."""
        for a, b, digest in chunks:
            yield ChunkTask(label, a, [], digest, ["*"] * (b - a), count=b - a)

    def run(self, ctx: ChunkContext, label: str, tasks, n: int, digests=None):
        """Run one set's tasks; yield their results in any order. With ``digests`` (a set of structures, not a
        stored label) the set is recorded in the store once every chunk is finished."""
        bar = progress_bar(n, self.progress, f"{label} features" if digests is not None else f"scoring {label}")
        try:
            for res in self.executor.run(ctx, tasks):
                if res.cached:
                    self.cached += 1
                else:
                    self.computed += 1
                for i, reason in res.skipped.items():
                    self.skipped.setdefault((label, int(i)), reason if not res.cached or (label, int(i)) in self.skipped
                                            else f"left out in an earlier run: {reason}")
                bar.update(res.stop - res.start)
                yield res
            if digests is not None:  # every chunk finished: the label's record, through which readers read it
                self.store.record_label(label, [(a, min(a + self.chunk_size, n), digest) for a, digest in
                                                zip(range(0, n, self.chunk_size), digests)])
        finally:
            bar.close()
