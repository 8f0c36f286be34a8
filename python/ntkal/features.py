"""Features outside a screen: write a set's features to a feature store (:func:`compute_features`, on this
process or on Dask workers), and screen with features computed before (:class:`Precomputed`)."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

import numpy as np

from .blocks import Blocks
from .check_pass import CheckPass
from .chunk_driver import ChunkDriver
from .errors import fail
from .executors import executor_for
from .feature_store import FeatureStore
from .options import ON_ERROR, choice
from .structures import StructureSource, check_atoms, structure_digest

__all__ = ["Precomputed", "compute_features"]


def compute_features(featurizer, structures, store, *, label: str = "structures", chunk_size: int = 64,
                     workers: int = 1, client=None, progress: bool = True, on_error: str = "stop") -> FeatureStore:
    """Features of every structure, written chunk by chunk to the store ``store`` (a directory).

    Every structure is checked first (a file parsed once); finished chunks already in the store are kept (a
    rerun resumes); read the result with :meth:`FeatureStore.read`, :meth:`FeatureStore.iter_blocks` or
    :meth:`FeatureStore.to_dask`.

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
        fail(where, "featurizer needs fingerprint() to key the store")
    choice(on_error, ON_ERROR, where, "on_error")
    src = structures if isinstance(structures, StructureSource) else StructureSource(structures, where=where,
                                                                                    arg="structures")
    if len(src) == 0:
        fail(where, "structures must hold at least one structure; got none")
    config = featurizer.config() if hasattr(featurizer, "config") else None
    fs = FeatureStore(store, featurizer.fingerprint(), config, where=where, arg="store")
    scratch = tempfile.mkdtemp(prefix="ntkal-features-")
    executor = None
    try:
        src = src.spooled(os.path.join(scratch, "structures"))
        checker = CheckPass(featurizer, chunk_size=chunk_size, strata=False, calibrate="off", on_error=on_error,
                            progress=progress, where=where)
        checked = checker.run(src, label, arg="structures")
        executor = executor_for(client, workers, where=where)
        executor.bind(featurizer)
        driver = ChunkDriver(executor, fs, chunk_size=chunk_size, progress=progress, skipped=checker.skipped)
        for _ in driver.run(driver.context(on_error=on_error), label, driver.structure_tasks(src, checked), len(src),
                            checked.digests):
            pass
    finally:
        if executor is not None:
            executor.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return fs


class Precomputed:
    """A featurizer that looks features up instead of computing them: the features of known structures,
    computed before (by any featurizer, in any run), found by each structure's content digest (numbers,
    positions, cell, pbc). Screen or acquire with it like with a model's featurizer; a structure it does not
    know is refused by the check pass, named by index.

    Parameters
    ----------
    features : Blocks, or (FeatureStore or path, label)
        One block per structure of ``structures``, in their order (e.g. ``compute_features(...).read(label)``,
        or the store and label, read chunk by chunk as needed).
    structures : sequence of ase.Atoms, path or StructureSource
        The structures the features belong to.
    predict_forces : callable, optional
        ``predict_forces(atoms) -> (N, 3)`` forces of the model the features come from (``calibrate``).
    name : str
        Part of the fingerprint that keys a feature store (with a digest of the features).

    Examples
    --------
    >>> store = compute_features(featurizer, frames, "frames_store")            # once
    >>> lookup = Precomputed((store, "structures"), frames)
    >>> result = ntkal.acquire(lookup, frames[:20], frames[20:], 10)            # every round, no model
    """

    def __init__(self, features, structures, *, predict_forces=None, name: str = "precomputed"):
        where = "Precomputed"
        self.name = str(name)
        src = structures if isinstance(structures, StructureSource) else StructureSource(structures, where=where,
                                                                                        arg="structures")
        self.index = {}
        for start, chunk in src.chunks(256):
            for i, atoms in enumerate(chunk):
                self.index.setdefault(structure_digest(atoms), start + i)
        if isinstance(features, tuple):
            store, self.label = features
            self.store = store if isinstance(store, FeatureStore) else FeatureStore(store, where=where, arg="features")
            self.blocks, n = None, self.store.extent(self.label)
        else:
            self.store, self.label = None, None
            self.blocks = features if isinstance(features, Blocks) else Blocks(features)
            n = len(self.blocks)
        if n != len(src):
            fail(where, f"features must hold one block per structure: {n} blocks for {len(src)} structures")
        if predict_forces is not None:
            self.predict_forces = predict_forces

    @property
    def dim(self) -> int:
        if self.blocks is not None:
            return self.blocks.dim
        a, b, _ = self.store.recorded_chunks(self.label, check_present=False)[0]
        return int(self.store.meta(self.label, a, b)["dim"])

    def fingerprint(self) -> str:
        """Name and a digest of the features (their store's fingerprint and label for a stored set)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.name.encode())
        if self.blocks is not None:
            host = self.blocks.to_host()
            h.update(np.ascontiguousarray(host.offsets).tobytes())
            h.update(np.ascontiguousarray(host.rows).tobytes())
        else:
            h.update(f"{self.store.fingerprint}|{self.label}|{self.store.recorded_chunks(self.label)}".encode())
        return h.hexdigest()

    def check(self, atoms, *, where: str = "Precomputed.check", arg: str = "atoms") -> None:
        """Refuse a structure without precomputed features."""
        check_atoms(atoms, where=where, arg=arg)
        if structure_digest(atoms) not in self.index:
            fail(where, f"{arg} ({atoms.get_chemical_formula()}) has no precomputed features: it is none of the "
                        f"{len(self.index)} structures they were computed for")

    def __call__(self, structures, *, checked: bool = False) -> Blocks:
        """The features of ``structures`` (each checked unless ``checked``)."""
        if not checked:
            for i, atoms in enumerate(structures):
                self.check(atoms, where="Precomputed", arg=f"structures[{i}]")
        positions = [self.index[structure_digest(a)] for a in structures]
        if self.blocks is not None:
            return self.blocks.take(positions)
        return self.store.take(self.label, positions)
