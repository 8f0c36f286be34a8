"""Graphs (neighbour lists) of structures built ahead of use, in worker processes.

A graph costs tens of milliseconds of one core (CHGNet: 16-40 ms per 32-atom cell), a batched pass on a
GPU a fraction of that per structure: one core cannot feed it. :class:`GraphFeed` builds the graphs of
the structures to come in ``workers`` processes while the current batch runs, and hands them back in
order. With ``workers=0`` graphs are built here, one by one, when asked for (a CPU run: the cores are
busy with the passes themselves).
"""
from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor

__all__ = ["GraphFeed"]

_BUILDER = None


def _start(blob: bytes) -> None:
    global _BUILDER
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - a builder always comes from a torch adapter
        pass
    _BUILDER = pickle.loads(blob)


def _build(atoms) -> bytes:
    # pickled to bytes here: tensors then travel as plain bytes, not as shared-memory handles
    return pickle.dumps(_BUILDER(atoms), protocol=pickle.HIGHEST_PROTOCOL)


class GraphFeed:
    """Build ``builder(atoms)`` for many structures, ahead, in ``workers`` processes.

    Parameters
    ----------
    builder : callable
        ``builder(atoms) -> graph``; must pickle when ``workers > 0`` (the model adapters' builders do).
    workers : int
        Worker processes (0: build in this process when asked). They start on first use and stop
        with :meth:`close`.
    """

    def __init__(self, builder: Callable, workers: int = 0):
        self.builder, self.workers = builder, int(workers)
        self._pool = None

    def graphs(self, structures: Iterable) -> Iterator:
        """The graph of each structure, in order; with workers, all are submitted at once and built ahead."""
        structures = list(structures)
        if self.workers <= 0 or len(structures) < 2:
            for atoms in structures:
                yield self.builder(atoms)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_start, initargs=(pickle.dumps(self.builder),))
        futures = [self._pool.submit(_build, atoms) for atoms in structures]
        try:
            for future in futures:
                yield pickle.loads(future.result())
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __getstate__(self) -> dict:
        return {"builder": self.builder, "workers": self.workers, "_pool": None}
