"""End-to-end acquisition: featurize train and pool in chunks, score PV, shortlist, select a batch.

Pool features are streamed: memory holds one chunk of features, the training features, and the
running shortlist — never the whole pool. With ``cache=DIR`` finished chunks are kept on disk
(:class:`ntkal.feature_cache.FeatureCache`); a rerun, after an interruption or not, loads them
instead of recomputing them and produces identical output.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from ._device import to_numpy
from ._validation import as_int, as_positive_float
from .blocks import Blocks
from .errors import InvalidArgumentError
from .feature_cache import FeatureCache, chunk_digest
from .options import ON_ERROR, STRATEGIES, choice
from .posterior import Posterior
from .progress import bar as progress_bar
from .select import select
from .shortlist import shortlist as pv_shortlist
from .structures import StructureSource

__all__ = ["AcquisitionResult", "acquire"]


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
        Seconds per stage: check (every structure, before any featurisation), train_features,
        posterior, pool_features, scoring, select, total.
    n_pool, n_train : int
    cached_chunks, computed_chunks : int
        Feature chunks loaded from the cache / computed in this run.
    features : Blocks or None
        Feature rows of the selected structures, in pick order.
    skipped : list of (str, int, str)
        ``(label, index, reason)`` of every train or pool structure left out with ``on_error="skip"``;
        skipped pool structures have PV NaN and are never selected.
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
    features: Blocks | None = None
    skipped: list = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def summary(self, max_items: int = 10, structures=None) -> str:
        """A few lines for a terminal: what was chosen, how long each stage took, and the picks
        (with formula and atom count when ``structures``, the picked ase.Atoms, are given)."""
        stages = ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items())
        lines = [f"strategy {self.strategy}: selected {len(self)} of {self.n_pool} pool structures "
                 f"(train {self.n_train}, shortlist {self.shortlist.shape[0]})",
                 f"timings: {stages}",
                 f"feature chunks: {self.computed_chunks} computed, {self.cached_chunks} from cache",
                 "selected (rank: pool index" + (", formula, atoms" if structures is not None else "") + ", PV):"]
        for rank, (i, pv) in enumerate(zip(self.indices[:max_items], self.pv[:max_items])):
            what = f"  {structures[rank].get_chemical_formula():>14s}  {len(structures[rank]):5d} atoms" \
                if structures is not None else ""
            lines.append(f"  {rank:3d}: {int(i):6d}{what}  PV {pv:.4g}")
        if len(self) > max_items:
            lines.append(f"  ... ({len(self) - max_items} more)")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} structure(s) the model could not take:")
            lines += [f"  {label}[{i}]: {reason}" for label, i, reason in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... ({len(self.skipped) - 20} more)")
        return "\n".join(lines)


def _listed(skipped: dict) -> list:
    return [(label, i, reason) for (label, i), reason in sorted(skipped.items())]


def _with_empty_blocks(parts: dict, n: int, dim) -> Blocks:
    """Blocks for n structures: parts[i] rows for those featurized, no rows for the ones left out."""
    sizes = np.array([parts[i].shape[0] if i in parts else 0 for i in range(n)], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    if parts:
        from ._device import is_device_array

        rows = [parts[i] for i in range(n) if i in parts]
        if not any(is_device_array(r) for r in rows):
            return Blocks(np.concatenate([np.asarray(r, dtype=np.float32) for r in rows]), offsets)
        return Blocks(Blocks.from_list(rows).rows, offsets)
    if dim is None:
        raise InvalidArgumentError("acquire: every structure of a chunk was left out before the feature width was "
                                   "known (embedding kernel); nothing to score")
    return Blocks(np.zeros((0, int(dim)), np.float32), offsets)


def acquire(featurizer, train, pool, n: int, *, strategy: str = "pv_lcmd", shortlist: int | None = None,
            noise_var: float = 1e-3, seed: int = 0, chunk_size: int = 64, cache=None, progress: bool = True,
            intensive: bool = False, scale: bool = False, precision: str = "float32",
            on_features=None, on_error: str = "stop") -> AcquisitionResult:
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
    on_error : {"stop", "skip"}
        A structure the model cannot take (found by the check before any featurisation, or failing
        while featurized): ``"stop"`` raises, naming it by index (finished chunks stay in the cache);
        ``"skip"`` leaves it out, lists it in ``skipped`` and goes on.
    on_features : callable, optional
        ``on_features(label, start, blocks)`` for every feature chunk as it streams by (``label`` is
        "train" or "pool", ``start`` the chunk's first index): a way to keep what a report or plot
        needs without a second pass over the pool.

    Returns
    -------
    AcquisitionResult
    """
    t_start = time.perf_counter()
    where = "acquire"
    choice(strategy, STRATEGIES, where, "strategy")
    choice(on_error, ON_ERROR, where, "on_error")
    if not callable(featurizer):
        raise InvalidArgumentError(f"acquire: featurizer must be callable (list of Atoms -> Blocks); "
                                   f"got {type(featurizer).__name__}")
    noise_var = as_positive_float(noise_var, where, "noise_var")
    chunk_size = as_int(chunk_size, where, "chunk_size", low=1)
    seed = as_int(seed, where, "seed", low=0)
    pool_src = pool if isinstance(pool, StructureSource) else StructureSource(pool, where=where, arg="pool")
    if len(pool_src) == 0:
        raise InvalidArgumentError(f"acquire: pool must hold at least one structure; got an empty pool "
                                   f"({pool_src.describe()})")
    n_pool = len(pool_src)
    n = as_int(n, where, "n", low=1, high=n_pool)
    if strategy != "random":
        k = min(n_pool, max(10 * n, 100)) if shortlist is None else as_int(shortlist, where, "shortlist", low=n,
                                                                          high=n_pool)
    else:
        k = 0
    if train is None or isinstance(train, StructureSource):
        train_src = train
    else:
        train_src = StructureSource(train, where=where, arg="train")
    store = None
    if cache is not None:
        if not hasattr(featurizer, "fingerprint"):
            raise InvalidArgumentError("acquire: cache needs a featurizer with fingerprint(); got one without")
        config = featurizer.config() if hasattr(featurizer, "config") else None
        store = FeatureCache(cache, featurizer.fingerprint(), config)

    def check_all(src: StructureSource, label: str) -> None:
        """Every structure the model cannot take, found before any featurisation (a screen of hours
        must not die on structure 90,000); the error lists them by index."""
        if not hasattr(featurizer, "check"):
            return
        problems = []
        bar = progress_bar(len(src), progress, f"checking {label}")
        for start, structures in src.chunks(chunk_size):
            for i, atoms in enumerate(structures):
                try:
                    featurizer.check(atoms, where=where, arg=f"{label}[{start + i}]")
                except InvalidArgumentError as exc:
                    problems.append(str(exc))
                    skipped[(label, start + i)] = str(exc).split(": ", 1)[-1]
            bar.update(len(structures))
        bar.close()
        if problems and on_error == "stop":
            more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise InvalidArgumentError(f"{where}: {len(problems)} {label} structure(s) of {src.describe()} cannot be "
                                       "featurized by this model; nothing was computed:\n  " + "\n  ".join(problems[:5])
                                       + more)

    def featurize(structures, label: str, positions) -> Blocks:
        """featurizer(structures); a failure names the structure (by index) and the model's reason, or
        (on_error="skip") leaves it out. Left-out structures get empty blocks, so indices stay aligned."""
        todo = [i for i in range(len(structures)) if (label, positions[i]) not in skipped]
        try:
            if len(todo) == len(structures):
                return featurizer(structures)
            parts = {}
            if todo:
                done = featurizer([structures[i] for i in todo])
                parts = {i: done[k] for k, i in enumerate(todo)}
        except Exception as exc:  # including the featurizer's own InvalidArgumentError: name the structure
            parts = {}
            for i in todo:  # only after a failure: featurize one by one to find the structure(s)
                try:
                    parts[i] = featurizer([structures[i]])[0]
                except Exception as one:
                    if on_error == "skip":
                        skipped[(label, positions[i])] = f"{type(one).__name__}: {one}"
                        continue
                    kept = f"; the {counts['computed']} finished chunk(s) are kept in the cache" if store else ""
                    raise InvalidArgumentError(
                        f"{where}: {label}[{positions[i]}] ({structures[i].get_chemical_formula()}) could not be "
                        f"featurized: {type(one).__name__}: {one}{kept}") from one
            if on_error == "stop" and len(parts) == len(todo):  # every one alone worked: the batch failed
                raise InvalidArgumentError(f"{where}: {label}[{positions[0]}...{positions[-1]}] could not be "
                                           f"featurized together: {type(exc).__name__}: {exc}") from exc
        return _with_empty_blocks(parts, len(structures), getattr(featurizer, "dim", None))

    skipped: dict = {}  # (label, index) -> reason, with on_error="skip"
    counts = {"cached": 0, "computed": 0}
    timings = {"check": 0.0, "train_features": 0.0, "posterior": 0.0, "pool_features": 0.0, "scoring": 0.0,
               "select": 0.0}
    t = time.perf_counter()
    for src, label in ((train_src, "train"), (pool_src, "pool")):
        if src is not None:
            check_all(src, label)
    timings["check"] = time.perf_counter() - t

    def feature_chunks(src: StructureSource, label: str):
        """Blocks of each chunk, from the cache or the featurizer; featurisation time is charged here."""
        bar = progress_bar(len(src), progress, f"{label} features")
        try:
            for start, structures in src.chunks(chunk_size):
                t = time.perf_counter()
                stop = start + len(structures)
                digest = chunk_digest(structures) if store is not None else ""
                blocks = store.load(label, start, stop, digest) if store is not None else None
                if blocks is None:
                    blocks = featurize(structures, label, range(start, stop))
                    if not isinstance(blocks, Blocks) or len(blocks) != len(structures):
                        raise InvalidArgumentError(
                            f"acquire: featurizer must return ntkal.Blocks with one block per structure; got "
                            f"{type(blocks).__name__} of length {len(blocks) if hasattr(blocks, '__len__') else '?'}")
                    if store is not None:
                        store.save(label, start, stop, digest, blocks)
                    counts["computed"] += 1
                else:
                    counts["cached"] += 1
                timings[f"{label}_features"] += time.perf_counter() - t
                bar.update(len(structures))
                for i in np.flatnonzero(blocks.sizes == 0):  # left out in this run or an earlier one
                    skipped.setdefault((label, start + int(i)), "left out in an earlier run (empty features in the cache)")
                if on_features is not None:
                    on_features(label, start, blocks)
                yield blocks
        finally:
            bar.close()

    train_blocks = None
    if train_src is not None and len(train_src) > 0:
        train_blocks = Blocks.concatenate(list(feature_chunks(train_src, "train")))
        if np.any(train_blocks.sizes == 0):  # skipped training structures are no centres either
            present = np.flatnonzero(train_blocks.sizes > 0)
            train_blocks = train_blocks.take(present) if present.size else None

    def make_posterior(dim: int) -> Posterior:
        t = time.perf_counter()
        post = Posterior(dim, noise_var=noise_var, scale=scale, precision=precision)
        if train_blocks is not None:
            post.add(train_blocks)
        timings["posterior"] += time.perf_counter() - t
        return post

    posterior = make_posterior(train_blocks.dim) if train_blocks is not None else None
    n_train = 0 if train_blocks is None else len(train_blocks)

    if strategy == "random":
        t = time.perf_counter()
        allowed = np.array([i for i in range(n_pool) if ("pool", i) not in skipped], dtype=np.int64)
        if allowed.size < n:
            raise InvalidArgumentError(f"{where}: n={n}, but only {allowed.size} pool structures are left after skipping")
        indices = np.random.default_rng(seed).choice(allowed, size=n, replace=False).astype(np.int64)
        picked = featurize(pool_src.take(indices), "pool", indices)
        timings["pool_features"] = time.perf_counter() - t
        t = time.perf_counter()
        posterior = posterior or make_posterior(picked.dim)
        pv = to_numpy(posterior.variance(picked, intensive=intensive))
        pv[picked.sizes == 0] = np.nan  # a pick that failed while featurized (on_error="skip")
        timings["scoring"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        return AcquisitionResult(indices, pv, pv.copy(), strategy, np.zeros(0, np.int64), None, timings,
                                 n_pool, n_train, counts["cached"], counts["computed"], picked, _listed(skipped))

    pool_pv = np.empty(n_pool, dtype=np.float64)
    t_loop = time.perf_counter()

    def pool_chunks():
        nonlocal posterior
        for blocks in feature_chunks(pool_src, "pool"):
            if posterior is None:  # no training set: the prior, built at the first chunk's width
                posterior = make_posterior(blocks.dim)
            yield blocks

    chunks = pool_chunks()
    first = next(chunks)  # the posterior exists from here on
    kept_idx, kept_pv, kept = pv_shortlist(itertools.chain([first], chunks), None, posterior, k, intensive=intensive,
                                           return_rows=True, pv_out=pool_pv)
    timings["scoring"] = time.perf_counter() - t_loop - timings["pool_features"] - timings["posterior"]
    kept_idx = to_numpy(kept_idx)  # device runs: only indices and scores come back
    if skipped:  # left-out structures (empty blocks, PV 0) are never candidates
        for label, i in skipped:
            if label == "pool":
                pool_pv[i] = np.nan
        keep = np.array([j for j, i in enumerate(kept_idx) if ("pool", int(i)) not in skipped], dtype=np.int64)
        if keep.size < n:
            raise InvalidArgumentError(f"{where}: n={n}, but only {keep.size} shortlisted pool structures are left "
                                       f"after skipping {len(skipped)}")
        kept_idx, kept_pv, kept = kept_idx[keep], to_numpy(kept_pv)[keep], kept.take(keep)

    t = time.perf_counter()
    if strategy == "topk":
        local, scores = np.arange(n, dtype=np.int64), to_numpy(kept_pv)[:n].copy()
    elif strategy == "greedy_pv":
        local, scores = select(kept, None, n, method="greedy_pv", posterior=posterior, seed=seed)
    else:
        local, scores = select(kept, None, n, method="lcmd", train_rows=train_blocks, seed=seed, precision=precision)
    timings["select"] = time.perf_counter() - t
    local, scores = to_numpy(local), to_numpy(scores)
    indices = kept_idx[local]
    timings["total"] = time.perf_counter() - t_start
    return AcquisitionResult(indices, pool_pv[indices], np.asarray(scores, dtype=np.float64), strategy, kept_idx,
                             pool_pv, timings, n_pool, n_train, counts["cached"], counts["computed"], kept.take(local),
                             _listed(skipped))
