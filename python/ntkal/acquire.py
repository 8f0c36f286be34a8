"""End-to-end acquisition: a screen, quotas per stratum, one selection per stratum.

``acquire`` = :func:`ntkal.screen` (check every structure, featurize the training set and build the
posterior, optionally calibrate it, featurize and score the pool, keep the best candidates per stratum)
+ the split of the batch over strata in proportion to their candidates (:func:`ntkal.strata.quotas`)
+ one :func:`ntkal.select` per stratum on its shortlisted rows, with the strategy's method. Chunks run
in this process or on Dask workers (:mod:`ntkal.executors`), with the same result.

Every chunk is written to a feature store (:class:`ntkal.feature_store.FeatureStore`): ``cache=DIR``
keeps it, so a rerun after an interruption loads the finished chunks and produces identical
output; without ``cache`` a temporary store is removed at the end. Memory holds one chunk per
process, the training features, the d x d Gram and the shortlists, never the whole pool.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np

from ._device import to_numpy
from ._validation import as_int
from .blocks import Blocks
from .calibration import Calibration
from .chunk_task import featurize_chunk
from .errors import fail
from .options import STRATEGIES, choice, method_of
from .posterior import Posterior
from .screen_result import Screen
from .screening import ScreenOptions, Screening
from .select import select
from .strata import quotas

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


def acquire(featurizer, train, pool, n: int, *, strategy: str = "pv_lcmd", shortlist: int | None = None,
            noise_var: float = 1e-3, seed: int = 0, chunk_size: int = 64, cache=None, progress: bool = True,
            intensive: bool = False, scale: bool = False, precision: str = "float32", strata: str = "composition",
            calibrate: str = "off", target=None, client=None, workers: int = 1, on_features=None,
            on_error: str = "stop") -> AcquisitionResult:
    """Select ``n`` pool structures to label next.

    Parameters
    ----------
    featurizer : callable
        ``featurizer(list of ase.Atoms) -> ntkal.Blocks`` (e.g. :class:`ntkal.torch.Featurizer`, or
        :class:`ntkal.features.Precomputed` for features computed before); ``fingerprint()`` keys the feature
        store; ``check(atoms)`` and ``predict_forces(atoms)`` are used when present (up-front checks,
        calibration).
    train : list of ase.Atoms, path, or None
        Labelled structures (extxyz / ASE db path or list). None or empty: prior only. A pool structure
        with the geometry of a training structure is never picked.
    pool : list of ase.Atoms or path
        Candidate structures, streamed in chunks of ``chunk_size``.
    n : int
        Batch size, 1 <= n <= pool size.
    strategy : {"pv_lcmd", "lcmd", "maxdist", "greedy_pv", "topk", "variance_reduction", "random"}
        A PV shortlist per stratum, then that :func:`ntkal.select` method on it (``pv_lcmd`` is ``lcmd``):
        ``lcmd``: LCMD with the training structures as initial centres; ``maxdist``: greedy k-centre from them;
        ``greedy_pv``: greedy PV with block conditioning; ``variance_reduction``: greedy reduction of the
        posterior variance integrated over ``target`` (the pool by default); ``topk``: the shortlist's best
        (highest calibrated PV); ``random``: uniform without replacement over the pool (no shortlist;
        featurizes only the picks).
    shortlist : int, optional
        Shortlist size k (n <= k <= pool size); default min(pool size, max(10 n, 100)).
    noise_var : float
        Posterior noise variance sigma^2 (relative to the mean training row norm when ``scale``).
    seed : int
        Seed of ``random`` and of the Gram sketch used for distances.
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
    method = method_of(strategy)
    opts = ScreenOptions.checked(where, k=None, noise_var=noise_var, chunk_size=chunk_size, cache=cache,
                                 progress=progress, intensive=intensive, scale=scale, precision=precision,
                                 strata=strata, calibrate=calibrate, target_gram=method == "variance_reduction",
                                 score_pool=method != "random", on_error=on_error, workers=workers, client=client,
                                 on_features=on_features)
    seed = as_int(seed, where, "seed", low=0)
    if target is not None and method != "variance_reduction":
        fail(where, f"target applies to strategy='variance_reduction', not {strategy!r}")
    run = Screening(featurizer, train, pool, opts, target=target, where=where)
    n = as_int(n, where, "n", low=1, high=len(run.pool))
    if method != "random":
        run.opts = replace(opts, k=min(len(run.pool), max(10 * n, 100)) if shortlist is None
                           else as_int(shortlist, where, "shortlist", low=n, high=len(run.pool)))
    with run:
        found = run.screen()
        if method == "random":
            return _random(featurizer, run, found, n, seed, opts, strategy, t_start)
    return _select_per_stratum(found, n, method, strategy, seed, precision, t_start)


def _select_per_stratum(found: Screen, n: int, method: str, strategy: str, seed: int, precision: str,
                        t_start: float) -> AcquisitionResult:
    """Split the batch over strata (quotas) and run ``method`` on each stratum's shortlist."""
    t = time.perf_counter()
    total = sum(found.available.values())
    if total < n:
        fail("acquire", f"n={n}, but only {total} pool structures are candidates after leaving out "
                        f"{len([1 for lab, _, _ in found.skipped if lab == 'pool'])} skipped and {found.excluded.size} "
                        "already in the training set")
    split = quotas(found.available, n)
    indices, scores, short_all, picked_blocks = [], [], [], []
    for key in sorted(split):
        q = split[key]
        if q == 0:
            continue
        idx, sc = found.shortlists[key]
        k_s = min(len(idx), max(q, int(np.ceil(found.k * found.available[key] / total))))
        short_all.append(idx[:k_s])
        kept = found.rows[key].take(np.arange(k_s))
        if method == "topk":  # the shortlist is ranked already, by the screen's (calibrated) scores
            local, picked = np.arange(q, dtype=np.int64), sc[:q].copy()
        else:
            local, picked = select(kept, None, q, method=method, posterior=found.posterior,
                                   train_rows=found.train_features, seed=seed, precision=precision,
                                   target_gram=found.target_gram if method == "variance_reduction" else None)
        local = to_numpy(local)
        indices.append(idx[local])
        scores.append(np.asarray(to_numpy(picked), dtype=np.float64))
        picked_blocks.append(kept.take(local))
    indices = np.concatenate(indices)
    timings = {**found.timings, "select": time.perf_counter() - t, "total": time.perf_counter() - t_start}
    shortlist_idx = np.concatenate(short_all)
    order = np.lexsort((shortlist_idx, -found.pool_pv[shortlist_idx]))
    return AcquisitionResult(indices, found.pool_pv[indices], np.concatenate(scores), strategy, shortlist_idx[order],
                             found.pool_pv, timings, found.n_pool, found.n_train, found.cached_chunks,
                             found.computed_chunks, Blocks.concatenate(picked_blocks), found.skipped, split,
                             found.calibration, found.excluded)


def _random(featurizer, run: Screening, found: Screen, n: int, seed: int, opts: ScreenOptions, strategy: str,
            t_start: float) -> AcquisitionResult:
    """Uniform picks over the pool's candidates; only the picks are featurized (to report their PV)."""
    t = time.perf_counter()
    allowed = np.flatnonzero(found.candidates).astype(np.int64)
    if allowed.size < n:
        fail("acquire", f"n={n}, but only {allowed.size} pool structures are left after skipping")
    indices = np.random.default_rng(seed).choice(allowed, size=n, replace=False).astype(np.int64)
    picked, reasons = featurize_chunk(featurizer, run.pool.take(indices), 0, "pool", {}, opts.on_error)
    skipped = list(found.skipped) + [("pool", int(indices[j]), reason) for j, reason in reasons.items()]
    timings = {**found.timings, "pool_features": time.perf_counter() - t, "select": 0.0}
    t = time.perf_counter()
    posterior = found.posterior or Posterior(picked.dim, noise_var=opts.noise_var, scale=opts.scale,
                                             precision=opts.precision)
    pv = np.asarray(to_numpy(posterior.variance(picked, intensive=opts.intensive)), dtype=np.float64)
    pv[picked.sizes == 0] = np.nan  # a pick that failed while featurized (on_error="skip")
    timings.update(scoring=time.perf_counter() - t, total=time.perf_counter() - t_start)
    return AcquisitionResult(indices, pv, pv.copy(), strategy, np.zeros(0, np.int64), None, timings, found.n_pool,
                             found.n_train, found.cached_chunks, found.computed_chunks, picked, sorted(skipped),
                             {"*": n}, None, found.excluded)
