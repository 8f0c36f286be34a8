"""End-to-end acquisition: featurize train and pool in chunks, score PV, shortlist, select a batch.

Phases: check every structure; featurize the training set chunk by chunk; accumulate its Gram from
the stored rows in one fixed-order pass in structure order (the same bits whatever the chunk size
or worker count) and factor the posterior; optionally calibrate its output scale on labelled residuals;
featurize and score the pool chunk by chunk (each chunk returns its PVs and best candidates per
stratum); merge the shortlists; read the shortlisted rows back from the feature store and select.
Chunks run in this process or on Dask workers (:mod:`ntkal.executors`), with the same result.

Every chunk is written to a feature store (:class:`ntkal.feature_store.FeatureStore`): ``cache=DIR``
keeps it, so a rerun after an interruption loads the finished chunks and produces identical
output; without ``cache`` a temporary store is removed at the end. Memory holds one chunk per
process, the training features, the d x d Gram and the shortlist, never the whole pool.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

from ._device import to_numpy
from ._validation import as_int, as_positive_float
from .blocks import Blocks
from .errors import InvalidArgumentError
from .calibration import Calibration, calibrate as fit_calibration, force_residual_sq, leave_one_out_variance
from .executors import InProcess, executor_for
from .feature_store import FeatureStore, chunk_digest
from .options import CALIBRATE, ON_ERROR, STRATA, STRATEGIES, choice
from .posterior import Posterior
from .progress import bar as progress_bar
from .screen import ChunkContext, ChunkTask, featurize_chunk, merge_top, pack
from .select import select
from .strata import composition_key, quotas
from .same_geometry import GeometryIndex
from .structures import StructureSource
from .variance_reduction import variance_reduction_greedy

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
        posterior, calibration, pool_features (wall time of featurizing and scoring the pool), scoring
        (the scoring part of it, summed over chunks), select, total.
    n_pool, n_train : int
    cached_chunks, computed_chunks : int
        Feature chunks loaded from the cache / computed in this run.
    quotas : dict of str -> int
        Picks per stratum (``{"*": n}`` without strata).
    calibration : Calibration or None
        Output scale per stratum fitted on the training labels (``calibrate``).
    excluded : ndarray of int64
        Pool structures never picked because the training set holds the same geometry (the same atoms
        within 1e-4 Å in any order, modulo lattice shifts: :mod:`ntkal.same_geometry`).
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
    quotas: dict = field(default_factory=dict)
    calibration: Calibration | None = None
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

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
        if len(self.quotas) > 1:
            lines.append("picks per stratum: " + ", ".join(f"{k} {q}" for k, q in sorted(self.quotas.items())))
        if self.calibration is not None:
            lines.append(self.calibration.summary())
        if self.excluded.size:
            lines.append(f"{self.excluded.size} pool structure(s) already in the training set were not candidates")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} structure(s) the model could not take:")
            lines += [f"  {label}[{i}]: {reason}" for label, i, reason in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... ({len(self.skipped) - 20} more)")
        return "\n".join(lines)


def _listed(skipped: dict) -> list:
    return [(label, i, reason) for (label, i), reason in sorted(skipped.items())]


def _source(value, where: str, arg: str):
    if value is None or isinstance(value, StructureSource):
        return value
    return StructureSource(value, where=where, arg=arg)


def _reference_forces(atoms, where: str, arg: str) -> np.ndarray:
    """Labelled forces of a training structure (extxyz / ASE db labels load as a calculator)."""
    try:
        forces = atoms.get_forces() if atoms.calc is not None else atoms.arrays.get("forces")
    except Exception as exc:  # noqa: BLE001 - a calculator without forces
        raise InvalidArgumentError(f"{where}: {arg} has no reference forces ({type(exc).__name__}: {exc}); "
                                   "calibrate needs labelled training structures") from exc
    if forces is None:
        raise InvalidArgumentError(f"{where}: {arg} has no reference forces; calibrate needs labelled training "
                                   "structures (extxyz forces or an ASE db with forces)")
    return np.asarray(forces, dtype=np.float64)


def _has_forces(atoms) -> bool:
    try:
        return (atoms.calc is not None and "forces" in getattr(atoms.calc, "results", {})) or "forces" in atoms.arrays
    except Exception:  # noqa: BLE001
        return False


def acquire(featurizer, train, pool, n: int, *, strategy: str = "pv_lcmd", shortlist: int | None = None,
            noise_var: float = 1e-3, seed: int = 0, chunk_size: int = 64, cache=None, progress: bool = True,
            intensive: bool = False, scale: bool = False, precision: str = "float32", strata: str = "composition",
            calibrate: str = "off", target=None, client=None, workers: int = 1, on_features=None,
            on_error: str = "stop") -> AcquisitionResult:
    """Select ``n`` pool structures to label next.

    Parameters
    ----------
    featurizer : callable
        ``featurizer(list of ase.Atoms) -> ntkal.Blocks`` (e.g. :class:`ntkal.torch.Featurizer`);
        ``fingerprint()`` keys the feature store; ``check(atoms)`` and ``predict_forces(atoms)`` are used
        when present (up-front checks, calibration).
    train : list of ase.Atoms, path, or None
        Labelled structures (extxyz / ASE db path or list). None or empty: prior only. A pool structure
        with the geometry of a training structure is never picked.
    pool : list of ase.Atoms or path
        Candidate structures, streamed in chunks of ``chunk_size``.
    n : int
        Batch size, 1 <= n <= pool size.
    strategy : {"pv_lcmd", "greedy_pv", "variance_reduction", "topk", "random"}
        ``pv_lcmd``: PV shortlist then LCMD with the training structures as initial centres;
        ``greedy_pv``: PV shortlist then greedy PV with block conditioning; ``variance_reduction``: PV
        shortlist then greedy reduction of the posterior variance integrated over ``target`` (the pool by
        default); ``topk``: highest PV; ``random``: uniform without replacement (featurizes only the picks).
    shortlist : int, optional
        Shortlist size k (n <= k <= pool size); default min(pool size, max(10 n, 100)).
    noise_var : float
        Posterior noise variance sigma^2 (relative to the mean training row norm when ``scale``).
    seed : int
        Seed of ``random`` and of the Gram sketch used for LCMD distances.
    chunk_size : int
        Structures per feature chunk (per task and per stored chunk).
    cache : str or os.PathLike, optional
        Feature store directory: finished chunks are kept, so a rerun resumes. Needed with ``client``
        (a directory every worker can reach). Without it a temporary store is used and removed.
    progress : bool
        tqdm bars on stderr.
    intensive, scale, precision
        Passed to :class:`ntkal.Posterior` / :meth:`ntkal.Posterior.variance`.
    strata : {"composition", "none"}
        ``composition`` (default): split the batch over element sets in proportion to their candidates;
        the shortlist and the selection run within each (against the whole training set). Measured
        (bench/RESULTS.md §3): unstratified, force-aware NTK spent 98-99 % of its labels on the molecules of a
        mixed molecule/metal pool and lost 5-9 % to random; stratified, it tied random. A pool of one
        element set is one stratum (no change).
    calibrate : {"off", "on", "auto"}
        Scale PV per composition stratum by ``sum residual^2 / sum leave-one-out PV`` of the labelled
        training structures (residuals of the featurizer's model on their reference forces), so strata
        where the model is wrong rank higher. ``auto``: on when every training structure has forces and
        the featurizer can predict them.
    target : list of ase.Atoms or path, optional
        ``variance_reduction`` only: the structures whose integrated variance to lower (default the pool).
    client : distributed.Client, optional
        Run the chunk tasks on this Dask cluster (needs ``cache``).
    workers : int
        Without ``client``: more than 1 starts a local Dask cluster of that many worker processes
        (1 thread each) for this call.
    on_error : {"stop", "skip"}
        A structure the model cannot take (found by the check before any featurisation, or failing
        while featurized): ``"stop"`` raises, naming it by index (finished chunks stay in the store);
        ``"skip"`` leaves it out, lists it in ``skipped`` and goes on.
    on_features : callable, optional
        ``on_features(label, start, blocks)`` for every feature chunk of the training set and the pool
        (``start`` its first index), in order: a way to keep what a report needs without a second pass.

    Returns
    -------
    AcquisitionResult
    """
    t_start = time.perf_counter()
    where = "acquire"
    choice(strategy, STRATEGIES, where, "strategy")
    choice(on_error, ON_ERROR, where, "on_error")
    strata = "none" if strata is None else strata
    choice(strata, STRATA, where, "strata")
    calibrate = {True: "on", False: "off", None: "off"}.get(calibrate, calibrate) \
        if isinstance(calibrate, (bool, type(None))) else calibrate
    choice(calibrate, CALIBRATE, where, "calibrate")
    if not callable(featurizer):
        raise InvalidArgumentError(f"acquire: featurizer must be callable (list of Atoms -> Blocks); "
                                   f"got {type(featurizer).__name__}")
    noise_var = as_positive_float(noise_var, where, "noise_var")
    chunk_size = as_int(chunk_size, where, "chunk_size", low=1)
    seed = as_int(seed, where, "seed", low=0)
    workers = as_int(workers, where, "workers", low=1)
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
    train_src = _source(train, where, "train")
    if target is not None and strategy != "variance_reduction":
        raise InvalidArgumentError(f"{where}: target applies to strategy='variance_reduction', not {strategy!r}")
    target_src = _source(target, where, "target")
    if target_src is not None and len(target_src) == 0:
        raise InvalidArgumentError(f"{where}: target must hold at least one structure; got none")
    if calibrate == "on" and not hasattr(featurizer, "predict_forces"):
        raise InvalidArgumentError(f"{where}: calibrate='on' needs a featurizer with predict_forces(atoms) (the "
                                   f"model's residuals); {type(featurizer).__name__} has none")
    if calibrate == "on" and (train_src is None or len(train_src) == 0):
        raise InvalidArgumentError(f"{where}: calibrate='on' needs labelled training structures; train is empty")
    if (client is not None) and cache is None:
        raise InvalidArgumentError(f"{where}: client needs cache, a feature-store directory every worker can reach")
    if cache is not None and not hasattr(featurizer, "fingerprint"):
        raise InvalidArgumentError("acquire: cache needs a featurizer with fingerprint(); got one without")

    fingerprint = featurizer.fingerprint() if hasattr(featurizer, "fingerprint") else f"unkeyed-{uuid.uuid4().hex}"
    config = featurizer.config() if hasattr(featurizer, "config") else None
    temp_dir = None
    if cache is None:
        temp_dir = tempfile.mkdtemp(prefix="ntkal-features-")
        store_path = temp_dir
    else:
        store_path = str(cache)
    try:
        FeatureStore(store_path, fingerprint, config, where=where, arg="cache")
        executor = executor_for(client, workers, where=where)
        try:
            return _acquire(featurizer, train_src, pool_src, target_src, n, k, strategy, noise_var, seed, chunk_size,
                            store_path, fingerprint, executor, progress, intensive, scale, precision, strata,
                            calibrate, on_features, on_error, t_start)
        finally:
            executor.close()
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)


def _acquire(featurizer, train_src, pool_src, target_src, n, k, strategy, noise_var, seed, chunk_size, store_path,
             fingerprint, executor, progress, intensive, scale, precision, strata, calibrate, on_features, on_error,
             t_start) -> AcquisitionResult:
    where = "acquire"
    n_pool = len(pool_src)
    store = FeatureStore(store_path, fingerprint, where=where, arg="cache")
    timings = {"check": 0.0, "train_features": 0.0, "posterior": 0.0, "calibration": 0.0, "pool_features": 0.0,
               "scoring": 0.0, "select": 0.0}
    skipped: dict = {}  # (label, index) -> reason
    counts = {"cached": 0, "computed": 0}

    # ---- 1. check every structure before any featurisation ---------------------------------------------
    t = time.perf_counter()
    train_geometries, train_keys, train_forces = GeometryIndex(where=where), [], []
    pool_is_train = np.zeros(n_pool, dtype=bool)
    if calibrate == "auto" and not (hasattr(featurizer, "predict_forces") and train_src is not None and len(train_src)):
        calibrate = "off"  # "auto" is decided on the training labels, read in the check pass below

    def check_all(src, label):
        problems = []
        chunk_digests, keys = [], []
        bar = progress_bar(len(src), progress, f"checking {label}")
        for start, structures in src.chunks(chunk_size):
            for i, atoms in enumerate(structures):
                if hasattr(featurizer, "check"):
                    try:
                        featurizer.check(atoms, where=where, arg=f"{label}[{start + i}]")
                    except InvalidArgumentError as exc:
                        problems.append(str(exc))
                        skipped[(label, start + i)] = str(exc).split(": ", 1)[-1]
                key = composition_key(atoms) if strata == "composition" or calibrate != "off" else "*"
                keys.append(key)
                if label == "pool" and len(train_geometries) and atoms in train_geometries:
                    pool_is_train[start + i] = True  # already labelled (same geometry): never a candidate
                if label == "train":
                    train_geometries.add(atoms)
                    if calibrate == "on" or (calibrate == "auto" and _has_forces(atoms)):
                        train_forces.append(_reference_forces(atoms, where, f"train[{start + i}]"))
                    elif calibrate == "auto":
                        train_forces.append(None)
            chunk_digests.append(chunk_digest(structures))
            bar.update(len(structures))
        bar.close()
        if problems and on_error == "stop":
            more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise InvalidArgumentError(f"{where}: {len(problems)} {label} structure(s) of {src.describe()} cannot be "
                                       "featurized by this model; nothing was computed:\n  " + "\n  ".join(problems[:5])
                                       + more)
        return chunk_digests, keys

    digests = {}
    for src, label in ((train_src, "train"), (pool_src, "pool"), (target_src, "target")):
        if src is not None and len(src):
            digests[label], keys = check_all(src, label)
            if label == "train":
                train_keys = keys
                if calibrate == "auto":  # on when every training structure carries forces
                    calibrate = "on" if all(f is not None for f in train_forces) else "off"
            elif label == "pool":
                pool_keys = keys
    excluded = np.flatnonzero(pool_is_train).astype(np.int64)
    timings["check"] = time.perf_counter() - t

    executor.bind(featurizer)

    def tasks(src, label, keys=None):
        for c, (start, structures) in enumerate(src.chunks(chunk_size)):
            stop = start + len(structures)
            yield ChunkTask(label, start, [pack(a) for a in structures], digests[label][c],
                            keys[start:stop] if keys is not None else ["*"] * len(structures),
                            {i - start: skipped[(label, i)] for i in range(start, stop) if (label, i) in skipped},
                            [i - start for i in range(start, stop) if label == "pool" and pool_is_train[i]])

    def context(**kw):
        return ChunkContext(store_path, fingerprint, on_error=on_error, one_thread=not isinstance(executor, InProcess),
                            **kw)

    def run_phase(src, label, ctx, keys=None):
        """Run a label's chunk tasks; yield results in any order, recording skips and cache use."""
        bar = progress_bar(len(src), progress, f"{label} features")
        try:
            for res in executor.run(ctx, tasks(src, label, keys)):
                counts["cached" if res.cached else "computed"] += 1
                for i, reason in res.skipped.items():
                    skipped.setdefault((label, int(i)), reason if not res.cached or (label, int(i)) in skipped
                                       else f"left out in an earlier run: {reason}")
                bar.update(res.stop - res.start)
                yield res
            # every chunk finished: the label's record, through which readers of the store read it
            store.record_label(label, [(a, min(a + chunk_size, len(src)), digest) for a, digest in
                                       zip(range(0, len(src), chunk_size), digests[label])])
        finally:
            bar.close()

    def announce(label, starts):
        if on_features is not None:
            for start in sorted(starts):
                stop = min(start + chunk_size, len(pool_src) if label == "pool" else len(train_src))
                on_features(label, start, store.load(label, start, stop))

    # ---- 2. training set: features, one fixed-order Gram pass, one factorisation ----------------------
    posterior, train_blocks, n_train = None, None, 0
    predicted = {}
    if train_src is not None and len(train_src):
        t = time.perf_counter()
        starts = []
        for res in run_phase(train_src, "train", context(forces=calibrate == "on")):
            starts.append((res.start, res.stop))
            if res.forces is not None:
                predicted.update({res.start + i: f for i, f in enumerate(res.forces)})
        timings["train_features"] = time.perf_counter() - t
        starts.sort()
        announce("train", [a for a, _ in starts])
        t = time.perf_counter()
        # this run's chunks, checked against this run's structures (the store may hold others)
        blocks = Blocks.concatenate([store.load("train", a, b, digests["train"][a // chunk_size])
                                     for a, b in starts])
        present = np.flatnonzero(blocks.sizes > 0)
        train_blocks = blocks.take(present) if present.size else None
        n_train = int(present.size)
        posterior = Posterior(blocks.dim, noise_var=noise_var, scale=scale, precision=precision)
        if train_blocks is not None:
            # one fixed-order pass over the training rows in index order: the Gram's bits depend on the
            # rows alone (partial Grams per chunk, summed, changed with the chunk size)
            posterior.add(train_blocks)
        posterior.feature_scale  # factor now (client-side scoring and selection); a worker rebuilds the
        # same bits from the pickled Gram with the same fixed-order kernels
        timings["posterior"] = time.perf_counter() - t

    # ---- 3. calibration on labelled residuals ----------------------------------------------------------
    calibration = None
    if calibrate == "on" and train_blocks is not None:
        t = time.perf_counter()
        loo = leave_one_out_variance(posterior, train_blocks, intensive=intensive)
        res_sq = force_residual_sq([predicted[int(i)] for i in present], [train_forces[int(i)] for i in present])
        calibration = fit_calibration(res_sq, loo, [train_keys[int(i)] for i in present])
        timings["calibration"] = time.perf_counter() - t

    if strategy == "random":
        return _random(featurizer, pool_src, n, seed, posterior, intensive, skipped, pool_is_train, excluded, timings,
                       t_start, n_train, counts, on_error, (noise_var, scale, precision))

    # ---- 4. the target of variance reduction ----------------------------------------------------------
    target_gram = None
    if strategy == "variance_reduction" and target_src is not None:
        spans = sorted((res.start, res.stop) for res in run_phase(target_src, "target", context()))
        target_gram = _stored_gram(store, "target", spans, digests["target"], chunk_size)

    # ---- 5. pool: featurize, score, best candidates per stratum ---------------------------------------
    t = time.perf_counter()
    scales = None
    if calibration is not None:
        scales = {key: calibration.scale_of(key) for key in set(pool_keys)}
    pool_pv = np.full(n_pool, np.nan)
    merged: dict = {}

    def pool_context(post):
        return context(posterior=post, intensive=intensive, top=k, scales=scales, stratify=strata == "composition")

    starts, spans = [], []
    if posterior is None:  # no training set: the prior, at the width of the first chunk
        first = next(iter(tasks(pool_src, "pool", pool_keys)))
        here = InProcess()
        here.bind(featurizer)
        res = next(here.run(context(), [first]))
        posterior = Posterior(int(store.load("pool", res.start, res.stop).dim), noise_var=noise_var, scale=scale,
                              precision=precision)
    scoring = 0.0
    for res in run_phase(pool_src, "pool", pool_context(posterior), pool_keys):
        pool_pv[res.start:res.stop] = res.pv
        merge_top(merged, res.top, k)
        starts.append(res.start)
        spans.append((res.start, res.stop))
        scoring += res.score_seconds
    timings["pool_features"] = time.perf_counter() - t
    announce("pool", starts)
    if strategy == "variance_reduction" and target_src is None:  # the pool is the target
        target_gram = _stored_gram(store, "pool", sorted(spans), digests["pool"], chunk_size)
    for label, i in skipped:
        if label == "pool":
            pool_pv[i] = np.nan

    # ---- 6. split the batch over strata, shortlist, select ---------------------------------------------
    t = time.perf_counter()
    merged = {key: (idx[[("pool", int(i)) not in skipped for i in idx]], sc[[("pool", int(i)) not in skipped
                                                                             for i in idx]])
              for key, (idx, sc) in merged.items()}
    available = {}
    for key in merged:
        available[key] = 0
    candidate = np.isfinite(pool_pv) & ~pool_is_train
    # with strata="none" the composition keys (read for calibration) only scale the scores
    stratum_of = pool_keys if strata == "composition" else ["*"] * n_pool
    for i in np.flatnonzero(candidate):
        available[stratum_of[i]] = available.get(stratum_of[i], 0) + 1
    total = sum(available.values())
    if total < n:
        raise InvalidArgumentError(f"{where}: n={n}, but only {total} pool structures are candidates after leaving out "
                                   f"{len([1 for lab, _ in skipped if lab == 'pool'])} skipped and {excluded.size} "
                                   "already in the training set")
    split = quotas(available, n)
    indices, scores, short_all, picked_blocks = [], [], [], []
    for key in sorted(split):
        q = split[key]
        if q == 0:
            continue
        k_s = min(len(merged[key][0]), max(q, int(np.ceil(k * available[key] / total))))
        kept_idx = merged[key][0][:k_s]
        short_all.append(kept_idx)
        kept = store.take("pool", kept_idx)
        if strategy == "topk":
            local, sc = np.arange(q, dtype=np.int64), merged[key][1][:q].copy()
        elif strategy == "greedy_pv":
            local, sc = select(kept, None, q, method="greedy_pv", posterior=posterior, seed=seed)
        elif strategy == "variance_reduction":
            local, sc = variance_reduction_greedy(kept, q, posterior, target_gram)
        else:
            local, sc = select(kept, None, q, method="lcmd", train_rows=train_blocks, seed=seed, precision=precision)
        local = to_numpy(local)
        indices.append(kept_idx[local])
        scores.append(np.asarray(to_numpy(sc), dtype=np.float64))
        picked_blocks.append(kept.take(local))
    indices = np.concatenate(indices)
    timings["select"] = time.perf_counter() - t
    timings["scoring"] = scoring
    timings["total"] = time.perf_counter() - t_start
    shortlist_idx = np.concatenate(short_all)
    order = np.lexsort((shortlist_idx, -pool_pv[shortlist_idx]))
    return AcquisitionResult(indices, pool_pv[indices], np.concatenate(scores), strategy, shortlist_idx[order], pool_pv,
                             timings, n_pool, n_train, counts["cached"], counts["computed"],
                             Blocks.concatenate(picked_blocks), _listed(skipped), split, calibration, excluded)


def _stored_gram(store, label: str, spans, digests, chunk_size: int) -> np.ndarray:
    """``sum phi^T phi`` over a stored set's rows, in one fixed-order pass that reads the chunks in index
    order (the engine's Gram accumulation continues each entry's chain from chunk to chunk): the same
    bits whatever the chunk size or the number of workers."""
    acc = None
    for a, b in spans:
        blocks = store.load(label, a, b, digests[a // chunk_size])
        if acc is None:
            acc = Posterior(blocks.dim)
        if blocks.n_rows:
            acc.add(blocks.rows)
    return acc.gram


def _random(featurizer, pool_src, n, seed, posterior, intensive, skipped, pool_is_train, excluded, timings, t_start,
            n_train, counts, on_error, prior) -> AcquisitionResult:
    where = "acquire"
    t = time.perf_counter()
    allowed = np.array([i for i in range(len(pool_src)) if ("pool", i) not in skipped and not pool_is_train[i]],
                       dtype=np.int64)
    if allowed.size < n:
        raise InvalidArgumentError(f"{where}: n={n}, but only {allowed.size} pool structures are left after skipping")
    indices = np.random.default_rng(seed).choice(allowed, size=n, replace=False).astype(np.int64)
    picked, reasons = featurize_chunk(featurizer, pool_src.take(indices), 0, "pool", {}, on_error)
    for j, reason in reasons.items():
        skipped[("pool", int(indices[j]))] = reason
    timings["pool_features"] = time.perf_counter() - t
    t = time.perf_counter()
    if posterior is None:
        noise_var, scale, precision = prior
        posterior = Posterior(picked.dim, noise_var=noise_var, scale=scale, precision=precision)
    pv = np.asarray(to_numpy(posterior.variance(picked, intensive=intensive)), dtype=np.float64)
    pv[picked.sizes == 0] = np.nan  # a pick that failed while featurized (on_error="skip")
    timings["scoring"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    return AcquisitionResult(indices, pv, pv.copy(), "random", np.zeros(0, np.int64), None, timings, len(pool_src),
                             n_train, counts["cached"], counts["computed"], picked, _listed(skipped), {"*": n}, None,
                             excluded)
