"""Score a pool already in a feature store: PV of every structure and a global PV shortlist, chunk by chunk,
in this process or on Dask workers. Memory per process: one chunk, the d x d factor and the shortlist."""
from __future__ import annotations

import numpy as np

from .errors import InvalidArgumentError
from .executors import InProcess, executor_for
from .feature_store import FeatureStore
from .progress import bar as progress_bar
from .screen import ChunkContext, ChunkTask, merge_top

__all__ = ["shortlist_store"]


def shortlist_store(store, posterior, k: int, *, label: str = "pool", intensive: bool = False, workers: int = 1,
                    client=None, progress: bool = True, keep_pv: bool = True):
    """The k structures of a stored set with the highest posterior variance.

    Parameters
    ----------
    store : str, os.PathLike or FeatureStore
        Feature store holding ``label`` (e.g. written by :func:`ntkal.features.compute_features`).
    posterior : Posterior
        Conditioned on the training set (it travels to each worker once).
    k : int
        Shortlist size.
    intensive : bool
        Rank by PV per row.
    workers, client, progress
        As in :func:`ntkal.acquire`.
    keep_pv : bool
        Also return the PV of every structure (8 bytes each).

    Returns
    -------
    indices : ndarray (k,), int64
        Highest PV first (ties: lower index).
    pv : ndarray (k,), float64
    all_pv : ndarray (n,), float64 or None

    Raises
    ------
    FeatureStoreError
        ``label`` has no record of its extent, a chunk is missing or holds other structures than
        recorded, or a chunk fails a check when read (see :meth:`FeatureStore.read_chunk`).
    """
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store, where="shortlist_store", arg="store")
    chunks = fs.recorded_chunks(label)  # the label as recorded when complete; a gap raises here, before any work
    n = chunks[-1][1]
    if int(k) < 1 or int(k) > n:
        raise InvalidArgumentError(f"shortlist_store: k must be in [1, {n}]; got {k}")
    executor = executor_for(client, workers, where="shortlist_store")
    all_pv = np.full(n, np.nan) if keep_pv else None
    merged: dict = {}
    try:
        executor.bind(None)
        ctx = ChunkContext(str(fs.path), fs.fingerprint, posterior=posterior, intensive=intensive, top=int(k),
                           one_thread=not isinstance(executor, InProcess))
        tasks = (ChunkTask(label, a, [], digest, ["*"] * (b - a), count=b - a) for a, b, digest in chunks)
        bar = progress_bar(n, progress, f"scoring {label}")
        for res in executor.run(ctx, tasks):
            if all_pv is not None:
                all_pv[res.start:res.stop] = res.pv
            merge_top(merged, res.top, int(k))
            bar.update(res.stop - res.start)
        bar.close()
    finally:
        executor.close()
    idx, pv = merged.get("*", (np.zeros(0, np.int64), np.zeros(0)))
    return idx, pv, all_pv
