"""``screen()`` of a pool that is in a feature store already, without its structures: the PV of every stored
structure and the global shortlist, chunk by chunk, in this process or on Dask workers (the chunk driver of
:mod:`ntkal.chunk_driver`, reading chunks back through the store's checks). Memory per process: one chunk, the
d x d factor and the shortlist."""
from __future__ import annotations

import numpy as np

from ._validation import as_int
from .blocks import Blocks
from .chunk_driver import ChunkDriver
from .errors import fail
from .executors import executor_for
from .feature_store import FeatureStore
from .posterior import Posterior
from .screen_result import Screen
from .topk import RunningTopK

__all__ = ["screen_store"]


def screen_store(store, train, pool: str = "pool", *, k: int, noise_var: float = 1e-3, progress: bool = True,
                 intensive: bool = False, scale: bool = False, precision: str = "float32", workers: int = 1,
                 client=None) -> Screen:
    """The Screen of the stored label ``pool`` (see :func:`ntkal.screen`; no strata, calibration or exclusions:
    those need the structures).

    ``train``: None (the prior), a stored label, training features (Blocks) or a :class:`Posterior`.

    Raises
    ------
    FeatureStoreError
        ``pool`` has no record of its extent, a chunk is missing or holds other structures than recorded, or a
        chunk fails a check when read (see :meth:`FeatureStore.read_chunk`).
    """
    where = "screen"
    fs = store if isinstance(store, FeatureStore) else FeatureStore(store, where=where, arg="store")
    if not isinstance(pool, str):
        fail(where, f"pool must name a stored label when the first argument is a feature store; got "
                    f"{type(pool).__name__}")
    chunks = fs.recorded_chunks(pool)  # the label as recorded when complete; a gap raises here, before any work
    n = chunks[-1][1]
    k = as_int(k, where, "shortlist", low=1, high=n)
    train_features, posterior = _posterior(fs, train, chunks, pool, noise_var, scale, precision, where)
    executor = executor_for(client, workers, where=where)
    pool_pv, top = np.full(n, np.nan), RunningTopK(k)
    try:
        executor.bind(None)
        driver = ChunkDriver(executor, fs, chunk_size=0, progress=progress)
        ctx = driver.context(posterior=posterior, intensive=intensive, top=k)
        for res in driver.run(ctx, pool, driver.stored_tasks(pool, chunks), n):
            pool_pv[res.start:res.stop] = res.pv
            top.push(*res.top.get("*", (np.zeros(0, np.int64), np.zeros(0))))
    finally:
        executor.close()
    idx, sc = top.result()
    candidates = np.isfinite(pool_pv)
    return Screen(pool_pv, posterior, {"*": (idx, sc)}, {"*": fs.take(pool, idx)} if idx.size else {},
                  {"*": int(candidates.sum())}, ["*"] * n, train_features, n_pool=n,
                  n_train=0 if train_features is None else len(train_features), k=k, cached_chunks=driver.cached,
                  candidates=candidates)


def _posterior(fs, train, chunks, pool, noise_var, scale, precision, where):
    """(training features or None, the posterior) for a stored pool."""
    if isinstance(train, Posterior):
        return None, train
    if train is None:  # the prior, at the stored width
        dim = int(fs.meta(pool, chunks[0][0], chunks[0][1])["dim"])
        return None, Posterior(dim, noise_var=noise_var, scale=scale, precision=precision)
    blocks = fs.read(train) if isinstance(train, str) else train if isinstance(train, Blocks) else Blocks(train)
    present = np.flatnonzero(blocks.sizes > 0)
    if present.size == 0:
        fail(where, "train holds no feature rows")
    features = blocks.take(present)
    return features, Posterior(features.dim, noise_var=noise_var, scale=scale, precision=precision).add(features)
