"""The work of one feature chunk, the same wherever it runs (this process or a Dask worker).

A chunk task featurizes its structures (or reads them back from the feature store when a
finished chunk is there), writes the chunk to the store, and returns only small things: its
block sizes, the PV of every structure and the chunk's best candidates per stratum. The client
merges the candidates with the package's one top-k (:mod:`ntkal.topk`; ties: lower index), so the
result does not depend on how many workers ran or in which order their chunks finished.
"""
from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, field

import numpy as np

from ._device import to_numpy
from .blocks import Blocks
from .errors import InvalidArgumentError, fail
from .topk import top_k

__all__ = ["ChunkTask", "ChunkContext", "ChunkResult", "run_chunk", "pack", "unpack", "featurize_chunk"]


def pack(atoms) -> tuple:
    """A structure as plain arrays (what a featurizer reads): travels to workers without ASE objects."""
    return (np.asarray(atoms.numbers, dtype=np.int64), np.asarray(atoms.get_positions(), dtype=np.float64),
            np.asarray(atoms.cell, dtype=np.float64), np.asarray(atoms.pbc, dtype=bool), dict(atoms.info))


def unpack(packed):
    from ase import Atoms

    numbers, positions, cell, pbc, info = packed
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
    atoms.info.update(info)
    return atoms


@dataclass
class ChunkTask:
    """One chunk of one label: what a worker needs besides the featurizer and the context."""

    label: str
    start: int
    structures: list  # packed structures (see pack)
    digest: str
    keys: list  # stratum of each structure
    left_out: dict = field(default_factory=dict)  # local index -> reason (found by the check pass)
    exclude: list = field(default_factory=list)  # local indices that are no candidates (already in train)
    count: int | None = None  # structures in the chunk when ``structures`` is empty (a stored chunk, read back)

    @property
    def stop(self) -> int:
        return self.start + (len(self.structures) if self.count is None else self.count)


@dataclass
class ChunkContext:
    """What every chunk task of one phase shares (sent to each worker once)."""

    store_path: str
    fingerprint: str
    on_error: str = "stop"
    forces: bool = False  # return the featurizer's predicted forces (calibration residuals)
    posterior: object = None  # score with it
    prior: tuple | None = None  # no posterior: score with the prior Posterior(dim, noise_var, scale, precision)
    intensive: bool = False
    top: int = 0  # best candidates per stratum to return
    scales: dict | None = None  # calibration: score = scale[key] * PV
    stratify: bool = True  # top per key; False: one group "*" (the keys then only pick the scales)
    one_thread: bool = False  # a worker process: 1 torch / engine thread


@dataclass
class ChunkResult:
    label: str
    start: int
    stop: int
    sizes: np.ndarray
    skipped: dict  # global index -> reason
    cached: bool
    seconds: float  # the whole task
    dim: int = 0  # feature width
    score_seconds: float = 0.0  # PV and the chunk's best candidates
    pv: np.ndarray | None = None
    top: dict | None = None  # key -> (global indices, scores), best first
    forces: list | None = None


def featurize_chunk(featurizer, structures, first: int, label: str, left_out: dict, on_error: str,
                    where: str = "acquire") -> tuple[Blocks, dict]:
    """``featurizer(structures)`` with failures named by index; ``on_error="skip"`` leaves a failing
    structure out (empty block) and reports it. Returns (blocks, {local index: reason})."""
    skipped = dict(left_out)
    todo = [i for i in range(len(structures)) if i not in skipped]
    parts = {}
    call = checked_call(featurizer)
    try:
        if len(todo) == len(structures):
            blocks = call(structures)
            _check_blocks(blocks, len(structures))
            return blocks, skipped
        if todo:
            done = call([structures[i] for i in todo])
            _check_blocks(done, len(todo))
            parts = {i: done[k] for k, i in enumerate(todo)}
    except InvalidArgumentError as exc:
        if "featurizer must return" in str(exc):
            raise
        parts = _one_by_one(call, structures, todo, first, label, skipped, on_error, where, exc)
    except Exception as exc:  # noqa: BLE001 - name the structure that failed
        parts = _one_by_one(call, structures, todo, first, label, skipped, on_error, where, exc)
    return _with_empty_blocks(parts, len(structures), getattr(featurizer, "dim", None)), skipped


def _check_blocks(blocks, n):
    if not isinstance(blocks, Blocks) or len(blocks) != n:
        fail("acquire", f"featurizer must return ntkal.Blocks with one block per structure; got "
                        f"{type(blocks).__name__} of length {len(blocks) if hasattr(blocks, '__len__') else '?'}")


def _one_by_one(featurizer, structures, todo, first, label, skipped, on_error, where, exc):
    parts = {}
    for i in todo:  # only after a failure: featurize one by one to find the structure(s)
        try:
            parts[i] = featurizer([structures[i]])[0]
        except Exception as one:  # noqa: BLE001
            if on_error == "skip":
                skipped[i] = f"{type(one).__name__}: {one}"
                continue
            fail(where, f"{label}[{first + i}] ({structures[i].get_chemical_formula()}) could not be "
                        f"featurized: {type(one).__name__}: {one}; finished chunks are kept in the feature store",
                 cause=one)
    if on_error == "stop" and len(parts) == len(todo):  # every one alone worked: the batch failed
        fail(where, f"{label}[{first}...{first + len(structures) - 1}] could not be "
                    f"featurized together: {type(exc).__name__}: {exc}", cause=exc)
    return parts


def _with_empty_blocks(parts: dict, n: int, dim) -> Blocks:
    """Blocks for n structures: parts[i] rows for those featurized, no rows for the ones left out."""
    sizes = np.array([parts[i].shape[0] if i in parts else 0 for i in range(n)], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    if parts:
        rows = [to_numpy(parts[i]).astype(np.float32, copy=False) for i in range(n) if i in parts]
        return Blocks(np.concatenate(rows), offsets)
    if dim is None:
        fail("acquire", "every structure of a chunk was left out before the feature width was "
                        "known (embedding kernel); nothing to score")
    return Blocks(np.zeros((0, int(dim)), np.float32), offsets)


_STORES: dict = {}
_ONE_THREAD = False


def _store(path: str, fingerprint: str, writable: bool = True):
    from .feature_store import FeatureStore

    key = (path, fingerprint, writable)
    if key not in _STORES:
        if writable:
            _STORES[key] = FeatureStore(path, fingerprint, where="acquire", arg="cache")
        else:  # only read: the store may be read-only
            store = FeatureStore(path)
            if store.fingerprint != fingerprint:
                fail("FeatureStore", f"path {path!r} now holds features of another featurizer "
                                     f"(fingerprint {store.fingerprint[:16]}..., expected {fingerprint[:16]}...)")
            _STORES[key] = store
    return _STORES[key]


def _one_thread() -> None:
    """Worker processes run 1 torch and 1 engine thread each (rows are many small reverse passes)."""
    global _ONE_THREAD
    if _ONE_THREAD:
        return
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    from .info import set_num_threads

    set_num_threads(1)
    _generous_malloc()
    _ONE_THREAD = True


def _generous_malloc() -> None:
    """Undo Dask's MALLOC_TRIM_THRESHOLD_=65536 for this worker process.

    Dask's nanny starts workers with that setting (it keeps worker memory low for data frames); for
    autograd, whose every step frees and re-allocates tensors of hundreds of kB, it returns the memory
    to the kernel each time: measured, a 1-worker screen took 75 % longer than the same work in-process.
    glibc's default thresholds are restored by setting them explicitly (to what its dynamic rule reaches
    for large tensors); any other libc is left alone."""
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("MALLOC_TRIM_THRESHOLD_") is None:
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 64 * 1024 * 1024)
    except (OSError, AttributeError):
        pass


def run_chunk(featurizer, ctx: ChunkContext, task: ChunkTask) -> ChunkResult:
    """Featurize (or read back) one chunk, store it, and return what the client merges."""
    t0 = time.perf_counter()
    if ctx.one_thread:
        _one_thread()
    blocks, skipped_local, cached, structures = _chunk_blocks(featurizer, ctx, task)
    host = blocks.to_host() if hasattr(blocks, "to_host") else blocks
    out = ChunkResult(task.label, task.start, task.stop, np.asarray(host.sizes), {task.start + i: r for i, r in
                      skipped_local.items()}, cached, 0.0, int(host.dim))
    if ctx.forces:
        structures = structures or [unpack(p) for p in task.structures]
        predict = checked_call(featurizer.predict_forces)  # the run's check pass checked them
        out.forces = [None if out.sizes[i] == 0 else predict(a) for i, a in enumerate(structures)]
    if ctx.posterior is not None or ctx.prior is not None:
        _score(ctx, task, blocks, out)
    out.seconds = time.perf_counter() - t0
    return out


def _chunk_blocks(featurizer, ctx: ChunkContext, task: ChunkTask):
    """(blocks, {local index: reason skipped}, read from the store?, the structures when unpacked)."""
    if task.structures:  # a damaged chunk is moved aside and recomputed from the structures
        store = _store(ctx.store_path, ctx.fingerprint)
        found = store.load_chunk(task.label, task.start, task.stop, task.digest)
    else:  # a stored chunk read back, nothing to recompute it from: a gap or failed check raises
        store = _store(ctx.store_path, ctx.fingerprint, writable=False)
        found = store.read_chunk(task.label, task.start, task.stop, task.digest)
    if found is not None:
        blocks, attrs = found
        return blocks, {int(i): r for i, r in attrs.get("skipped", [])}, True, None
    structures = [unpack(p) for p in task.structures]
    blocks, skipped = featurize_chunk(featurizer, structures, task.start, task.label,
                                      {int(k): v for k, v in task.left_out.items()}, ctx.on_error)
    store.save(task.label, task.start, task.stop, task.digest, blocks, skipped=sorted(skipped.items()))
    return blocks, skipped, False, structures


def _score(ctx: ChunkContext, task: ChunkTask, blocks, out: ChunkResult) -> None:
    """The PV of every structure of the chunk and its best candidates per stratum (``ctx.top`` each)."""
    t_score = time.perf_counter()
    posterior = ctx.posterior
    if posterior is None:  # no training set: the prior, at the chunk's width
        from .posterior import Posterior

        noise_var, scale, precision = ctx.prior
        posterior = Posterior(out.dim, noise_var=noise_var, scale=scale, precision=precision)
    pv = np.asarray(to_numpy(posterior.variance(blocks, intensive=ctx.intensive)), dtype=np.float64)
    pv[out.sizes == 0] = np.nan
    out.pv = pv
    if ctx.top:
        score = pv.copy()
        if ctx.scales is not None:
            score *= np.array([ctx.scales.get(k, ctx.scales.get("*", 1.0)) for k in task.keys])
        score[np.asarray(task.exclude, dtype=np.int64)] = np.nan
        out.top = {}
        groups = task.keys if ctx.stratify else ["*"] * len(task.keys)
        for key in sorted(set(groups)):
            members = np.array([i for i, k in enumerate(groups) if k == key and np.isfinite(score[i])],
                               dtype=np.int64)
            if members.size:
                out.top[key] = top_k(task.start + members, score[members], ctx.top)[1:]
    out.score_seconds = time.perf_counter() - t_score


def checked_call(fn):
    """``fn`` told that its structures were checked already (``checked=True``), when it takes that keyword:
    every structure is checked once per run, by the check pass (:mod:`ntkal.check_pass`)."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    return functools.partial(fn, checked=True) if "checked" in parameters else fn
