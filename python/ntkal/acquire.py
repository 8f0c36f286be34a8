"""End-to-end acquisition: featurize train and pool in chunks, score PV, shortlist, select a batch.

Pool features are streamed: memory holds one chunk of features, the training features, and the
running shortlist — never the whole pool. With ``cache=DIR`` each finished chunk's features are
written atomically (temp file + ``os.replace``) with a JSON record of the featurizer fingerprint
and the chunk's structure digest; a rerun (after an interruption or not) loads matching chunks
instead of recomputing them and produces identical output.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .blocks import Blocks
from .io import StructureSource, structure_digest
from .posterior import Posterior
from .select import select

__all__ = ["STRATEGIES", "AcquisitionResult", "FeatureCache", "acquire"]

STRATEGIES = ("pv_lcmd", "greedy_pv", "topk", "random")


def _invalid(message: str) -> Exception:
    from . import InvalidArgumentError

    return InvalidArgumentError(message)


@dataclass
class AcquisitionResult:
    """What :func:`acquire` chose and how long each stage took.

    Attributes
    ----------
    indices : ndarray, shape (n,), int64
        Selected pool indices, in the order they were picked.
    pv : ndarray, shape (n,), float64
        Posterior variance of each selected structure given the training set only.
    scores : ndarray, shape (n,), float64
        Score at pick time: PV after conditioning on earlier picks (greedy_pv), PV (topk,
        random), squared distance to the nearest centre (pv_lcmd).
    strategy : str
    shortlist : ndarray, shape (k,), int64
        Pool indices of the PV shortlist, highest PV first (empty for ``random``).
    pool_pv : ndarray, shape (n_pool,), float64 or None
        PV of every pool structure (None for ``random``, which featurizes only its picks).
    timings : dict of str -> float
        Seconds per stage: train_features, posterior, pool_features, scoring, select, total.
    n_pool, n_train : int
    cached_chunks, computed_chunks : int
        Feature chunks loaded from the cache / computed in this run.
    """

    indices: np.ndarray
    pv: np.ndarray
    scores: np.ndarray
    strategy: str
    shortlist: np.ndarray
    pool_pv: np.ndarray | None
    timings: dict = field(default_factory=dict)
    n_pool: int = 0
    n_train: int = 0
    cached_chunks: int = 0
    computed_chunks: int = 0

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def summary(self, max_items: int = 10) -> str:
        """A few lines for a terminal."""
        t = self.timings
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in t.items())
        shown = ", ".join(f"{i} (PV {p:.3g})" for i, p in zip(self.indices[:max_items], self.pv[:max_items]))
        more = f", ... ({len(self) - max_items} more)" if len(self) > max_items else ""
        return (f"strategy {self.strategy}: selected {len(self)} of {self.n_pool} pool structures "
                f"(train {self.n_train}, shortlist {self.shortlist.shape[0]})\n"
                f"timings: {stages}\n"
                f"feature chunks: {self.computed_chunks} computed, {self.cached_chunks} from cache\n"
                f"selected: {shown}{more}")


class FeatureCache:
    """Feature chunks on disk, keyed by featurizer fingerprint, chunk range and structure digest.

    Files per chunk: ``{label}-{fp}-{start}-{stop}.rows.npy``, ``.offsets.npy`` and a ``.json``
    record written last; a chunk counts as present only if its record matches.
    """

    def __init__(self, path, fingerprint: str, config: dict | None = None):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _invalid(f"acquire: cache directory {str(self.path)!r} cannot be created: {exc}") from exc
        self.fingerprint = fingerprint
        manifest = self.path / f"featurizer-{fingerprint[:16]}.json"
        if config is not None and not manifest.exists():
            _write_atomic(manifest, json.dumps({"fingerprint": fingerprint, "config": config}, indent=1).encode())

    def _stem(self, label: str, start: int, stop: int) -> Path:
        return self.path / f"{label}-{self.fingerprint[:16]}-{start:09d}-{stop:09d}"

    def load(self, label: str, start: int, stop: int, digest: str) -> Blocks | None:
        stem = self._stem(label, start, stop)
        record = stem.with_suffix(".json")
        if not record.exists():
            return None
        try:
            meta = json.loads(record.read_text())
            if meta.get("fingerprint") != self.fingerprint or meta.get("structures") != digest:
                return None
            rows = np.load(f"{stem}.rows.npy")
            offsets = np.load(f"{stem}.offsets.npy")
            if offsets.shape != (stop - start + 1,) or rows.shape[0] != offsets[-1]:
                return None
            return Blocks(rows, offsets)
        except (OSError, ValueError, json.JSONDecodeError):
            return None  # a damaged chunk is recomputed

    def save(self, label: str, start: int, stop: int, digest: str, blocks: Blocks) -> None:
        stem = self._stem(label, start, stop)
        _save_npy_atomic(Path(f"{stem}.rows.npy"), blocks.rows)
        _save_npy_atomic(Path(f"{stem}.offsets.npy"), blocks.offsets)
        meta = {"fingerprint": self.fingerprint, "structures": digest, "start": start, "stop": stop,
                "n_rows": int(blocks.n_rows), "dim": int(blocks.dim)}
        _write_atomic(stem.with_suffix(".json"), json.dumps(meta).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def _chunk_digest(structures) -> str:
    h = hashlib.blake2b(digest_size=16)
    for atoms in structures:
        h.update(structure_digest(atoms))
    return h.hexdigest()


class _Bar:
    def __init__(self, total: int, show: bool, desc: str):
        self.bar = None
        if show and total > 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, unit="struct", dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _as_int(value, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _invalid(f"acquire: {name} must be an integer; got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise _invalid(f"acquire: {name} must be {bound}; got {value}")
    return int(value)


def acquire(featurizer, train, pool, n: int, *, strategy: str = "pv_lcmd", shortlist: int | None = None,
            noise_var: float = 1e-3, seed: int = 0, chunk_size: int = 64, cache=None, progress: bool = True,
            intensive: bool = False, scale: bool = False, precision: str = "float32") -> AcquisitionResult:
    """Select ``n`` pool structures to label next.

    Parameters
    ----------
    featurizer : callable
        ``featurizer(list of ase.Atoms) -> ntkal.Blocks`` (e.g. :class:`ntkal.torch.Featurizer`);
        needs ``fingerprint()`` when ``cache`` is given.
    train : list of ase.Atoms, path, or None
        Labelled structures (extxyz / ASE db path or list). None or empty: prior only.
    pool : list of ase.Atoms or path
        Candidate structures, streamed in chunks of ``chunk_size``.
    n : int
        Batch size, 1 <= n <= pool size.
    strategy : {"pv_lcmd", "greedy_pv", "topk", "random"}
        ``pv_lcmd``: PV shortlist then LCMD with the training structures as initial centres;
        ``greedy_pv``: PV shortlist then greedy PV with block conditioning; ``topk``: highest PV;
        ``random``: uniform without replacement (featurizes only the picks, to report their PV).
    shortlist : int, optional
        Shortlist size k (n <= k <= pool size); default min(pool size, max(10 n, 100)).
    noise_var : float
        Posterior noise variance sigma^2.
    seed : int
        Seed of ``random`` and of the Gram sketch used for LCMD distances.
    chunk_size : int
        Structures per feature chunk (and per cache file).
    cache : str or os.PathLike, optional
        Directory for resumable feature chunks.
    progress : bool
        tqdm bars on stderr.
    intensive, scale, precision
        Passed to :class:`ntkal.Posterior` / :meth:`ntkal.Posterior.variance`.

    Returns
    -------
    AcquisitionResult
    """
    t_start = time.perf_counter()
    if strategy not in STRATEGIES:
        raise _invalid(f"acquire: strategy must be one of {STRATEGIES}; got {strategy!r}")
    if not callable(featurizer):
        raise _invalid(f"acquire: featurizer must be callable (list of Atoms -> Blocks); got {type(featurizer).__name__}")
    if not (isinstance(noise_var, (int, float, np.floating)) and np.isfinite(noise_var) and noise_var > 0):
        raise _invalid(f"acquire: noise_var must be a finite number > 0; got {noise_var!r}")
    chunk_size = _as_int(chunk_size, "chunk_size", 1)
    seed = _as_int(seed, "seed", 0)
    pool_src = pool if isinstance(pool, StructureSource) else StructureSource(pool, where="acquire", arg="pool")
    if len(pool_src) == 0:
        raise _invalid(f"acquire: pool must hold at least one structure; got an empty pool ({pool_src.describe()})")
    n_pool = len(pool_src)
    n = _as_int(n, "n", 1, n_pool)
    if strategy != "random":
        k = min(n_pool, max(10 * n, 100)) if shortlist is None else _as_int(shortlist, "shortlist", n, n_pool)
    else:
        k = 0
    if train is None or isinstance(train, StructureSource):
        train_src = train
    else:
        train_src = StructureSource(train, where="acquire", arg="train")
    store = None
    if cache is not None:
        if not hasattr(featurizer, "fingerprint"):
            raise _invalid("acquire: cache needs a featurizer with fingerprint(); got one without")
        config = featurizer.config() if hasattr(featurizer, "config") else None
        store = FeatureCache(cache, featurizer.fingerprint(), config)

    counts = {"cached": 0, "computed": 0}

    def feature_chunks(src: StructureSource, label: str):
        bar = _Bar(len(src), progress, f"{label} features")
        try:
            for start, structures in src.chunks(chunk_size):
                stop = start + len(structures)
                digest = _chunk_digest(structures) if store is not None else ""
                blocks = store.load(label, start, stop, digest) if store is not None else None
                if blocks is None:
                    blocks = featurizer(structures)
                    if not isinstance(blocks, Blocks) or len(blocks) != len(structures):
                        raise _invalid(f"acquire: featurizer must return ntkal.Blocks with one block per structure; "
                                       f"got {type(blocks).__name__} of length {len(blocks) if hasattr(blocks, '__len__') else '?'}")
                    if store is not None:
                        store.save(label, start, stop, digest, blocks)
                    counts["computed"] += 1
                else:
                    counts["cached"] += 1
                bar.update(len(structures))
                yield start, blocks
        finally:
            bar.close()

    timings = {}
    t = time.perf_counter()
    train_blocks = None
    if train_src is not None and len(train_src) > 0:
        train_blocks = Blocks.concatenate([b for _, b in feature_chunks(train_src, "train")])
    timings["train_features"] = time.perf_counter() - t

    def make_posterior(dim: int) -> Posterior:
        post = Posterior(dim, noise_var=float(noise_var), scale=scale, precision=precision)
        if train_blocks is not None:
            post.add(train_blocks)
        return post

    t = time.perf_counter()
    posterior = make_posterior(train_blocks.dim) if train_blocks is not None else None
    timings["posterior"] = time.perf_counter() - t

    if strategy == "random":
        t = time.perf_counter()
        indices = np.random.default_rng(seed).choice(n_pool, size=n, replace=False).astype(np.int64)
        picked = featurizer(pool_src.take(indices))
        timings["pool_features"] = time.perf_counter() - t
        t = time.perf_counter()
        posterior = posterior or make_posterior(picked.dim)
        pv = posterior.variance(picked, intensive=intensive)
        timings["scoring"] = time.perf_counter() - t
        timings["select"] = 0.0
        timings["total"] = time.perf_counter() - t_start
        return AcquisitionResult(indices, pv, pv.copy(), strategy, np.zeros(0, np.int64), None, timings,
                                 n_pool, 0 if train_blocks is None else len(train_blocks),
                                 counts["cached"], counts["computed"])

    pool_pv = np.empty(n_pool, dtype=np.float64)
    kept_idx = np.zeros(0, dtype=np.int64)
    kept_pv = np.zeros(0, dtype=np.float64)
    kept = None
    t_feat = t_score = 0.0
    t = time.perf_counter()
    for start, blocks in feature_chunks(pool_src, "pool"):
        t_feat += time.perf_counter() - t
        t = time.perf_counter()
        if posterior is None:
            posterior = make_posterior(blocks.dim)
        pv = posterior.variance(blocks, intensive=intensive)
        pool_pv[start:start + len(blocks)] = pv
        # keep this chunk's best k, then merge with the running shortlist (ties: lower index)
        idx = start + np.arange(len(blocks), dtype=np.int64)
        best = np.lexsort((idx, -pv))[:k]
        cand_idx = np.concatenate([kept_idx, idx[best]])
        cand_pv = np.concatenate([kept_pv, pv[best]])
        cand = blocks.take(best) if kept is None else Blocks.concatenate([kept, blocks.take(best)])
        order = np.lexsort((cand_idx, -cand_pv))[:k]
        kept_idx, kept_pv, kept = cand_idx[order], cand_pv[order], cand.take(order)
        t_score += time.perf_counter() - t
        t = time.perf_counter()
    timings["pool_features"] = t_feat
    timings["scoring"] = t_score

    t = time.perf_counter()
    if strategy == "topk":
        local, scores = np.arange(n, dtype=np.int64), kept_pv[:n].copy()
    elif strategy == "greedy_pv":
        local, scores = select(kept, None, n, method="greedy_pv", posterior=posterior, seed=seed)
    else:
        local, scores = select(kept, None, n, method="lcmd", train_rows=train_blocks, seed=seed,
                               precision=precision)
    timings["select"] = time.perf_counter() - t
    indices = kept_idx[local]
    timings["total"] = time.perf_counter() - t_start
    return AcquisitionResult(indices, pool_pv[indices], np.asarray(scores, dtype=np.float64), strategy, kept_idx,
                             pool_pv, timings, n_pool, 0 if train_blocks is None else len(train_blocks),
                             counts["cached"], counts["computed"])
