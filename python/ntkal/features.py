"""Featurize a set of structures into a feature store, on this process or on Dask workers."""
from __future__ import annotations

from .errors import InvalidArgumentError
from .executors import InProcess, executor_for
from .feature_store import FeatureStore, chunk_digest
from .progress import bar as progress_bar
from .screen import ChunkContext, ChunkTask, pack
from .structures import StructureSource

__all__ = ["compute_features"]


def compute_features(featurizer, structures, store, *, label: str = "structures", chunk_size: int = 64,
                     workers: int = 1, client=None, progress: bool = True, on_error: str = "stop") -> FeatureStore:
    """Features of every structure, written chunk by chunk to the store ``store`` (a directory).

    Finished chunks already in the store are kept (a rerun resumes); read the result with
    :meth:`FeatureStore.read`, :meth:`FeatureStore.iter_blocks` or :meth:`FeatureStore.to_dask`.

    Parameters
    ----------
    featurizer : ntkal.torch.Featurizer or callable with fingerprint()
    structures : list of ase.Atoms or path
    store : str or os.PathLike
        Feature-store directory.
    label : str
        Name of the set inside the store.
    chunk_size, workers, client, progress, on_error
        As in :func:`ntkal.acquire`.

    Returns
    -------
    FeatureStore
    """
    where = "compute_features"
    if not hasattr(featurizer, "fingerprint"):
        raise InvalidArgumentError(f"{where}: featurizer needs fingerprint() to key the store")
    src = structures if isinstance(structures, StructureSource) else StructureSource(structures, where=where,
                                                                                    arg="structures")
    if len(src) == 0:
        raise InvalidArgumentError(f"{where}: structures must hold at least one structure; got none")
    config = featurizer.config() if hasattr(featurizer, "config") else None
    fs = FeatureStore(store, featurizer.fingerprint(), config, where=where, arg="store")
    executor = executor_for(client, workers, where=where)
    try:
        executor.bind(featurizer)
        ctx = ChunkContext(str(fs.path), fs.fingerprint, on_error=on_error,
                           one_thread=not isinstance(executor, InProcess))

        made = []  # (start, stop, digest) of every chunk: the label's record once all are finished

        def tasks():
            for start, chunk in src.chunks(chunk_size):
                if hasattr(featurizer, "check"):
                    for i, atoms in enumerate(chunk):
                        featurizer.check(atoms, where=where, arg=f"structures[{start + i}]")
                made.append((start, start + len(chunk), chunk_digest(chunk)))
                yield ChunkTask(label, start, [pack(a) for a in chunk], made[-1][2], ["*"] * len(chunk))

        bar = progress_bar(len(src), progress, "features")
        for res in executor.run(ctx, tasks()):
            bar.update(res.stop - res.start)
        bar.close()
        fs.record_label(label, made)
    finally:
        executor.close()
    return fs
