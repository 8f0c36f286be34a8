"""The phases of one screen over structures (what :func:`ntkal.screen` and :func:`ntkal.acquire` run).

Phases (each structure read and checked once; every feature chunk goes through one driver,
:mod:`ntkal.chunk_driver`, in this process or on Dask workers, with the same result):

1. check: every structure of train, pool and target is parsed and checked (:mod:`ntkal.check_pass`);
   a file is parsed once and spooled for the later passes;
2. train: its chunks are featurized into the feature store; the Gram is accumulated from the stored
   rows in one fixed-order pass in structure order (the same bits whatever the chunk size or worker
   count) and the posterior factored;
3. calibration (optional): the output scale per stratum from labelled residuals;
4. target (variance reduction): the Gram of the target's rows;
5. pool: its chunks are featurized and scored; each returns its PVs and best candidates per stratum,
   merged with the one top-k (:mod:`ntkal.topk`); the shortlisted rows are read back from the store.

``cache=DIR`` keeps the feature store, so a rerun after an interruption loads the finished chunks;
without it a temporary store is removed at the end. Memory holds one chunk per process, the training
features, the d x d Gram and the shortlists, never the whole pool.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass

import numpy as np

from ._validation import as_int, as_positive_float
from .blocks import Blocks
from .calibration import calibrate as fit_calibration, force_residual_sq, leave_one_out_variance
from .check_pass import CheckPass
from .chunk_driver import ChunkDriver
from .errors import fail
from .executors import executor_for
from .feature_store import FeatureStore
from .options import CALIBRATE, ON_ERROR, PRECISIONS, STRATA, choice
from .posterior import Posterior
from .screen_result import Screen
from .structures import StructureSource
from .topk import RunningTopK

__all__ = ["ScreenOptions", "Screening"]


@dataclass(frozen=True)
class ScreenOptions:
    """The checked options of one screen (see :func:`screen` for their meaning)."""

    k: int | None = 100
    noise_var: float = 1e-3
    chunk_size: int = 64
    cache: object = None
    progress: bool = True
    intensive: bool = False
    scale: bool = False
    precision: str = "float32"
    strata: str = "composition"
    calibrate: str = "off"
    target_gram: bool = False
    score_pool: bool = True
    on_error: str = "stop"
    workers: int = 1
    client: object = None
    on_features: object = None

    @classmethod
    def checked(cls, where: str, **kw) -> "ScreenOptions":
        """Options after every check, named by ``where`` (acquire or screen) when wrong."""
        kw["strata"] = "none" if kw.get("strata") is None else kw["strata"]
        calibrate = kw.get("calibrate", "off")
        kw["calibrate"] = {True: "on", False: "off", None: "off"}[calibrate] \
            if isinstance(calibrate, (bool, type(None))) else calibrate
        for name, choices in (("on_error", ON_ERROR), ("strata", STRATA), ("calibrate", CALIBRATE),
                              ("precision", PRECISIONS)):
            if name in kw:
                choice(kw[name], choices, where, name)
        if "noise_var" in kw:
            kw["noise_var"] = as_positive_float(kw["noise_var"], where, "noise_var")
        for name in ("chunk_size", "workers"):
            if name in kw:
                kw[name] = as_int(kw[name], where, name, low=1)
        if kw.get("client") is not None and kw.get("cache") is None:
            fail(where, "client needs cache, a feature-store directory every worker can reach")
        return cls(**kw)


def _source(value, where: str, arg: str):
    if value is None or isinstance(value, StructureSource):
        return value
    return StructureSource(value, where=where, arg=arg)


class Screening:
    """One screen's resources and phases: ``with Screening(...) as run: result = run.screen()``.

    It owns a scratch directory (the spooled structure files and, without ``cache``, the feature store),
    the executor bound to the featurizer, and the chunk driver; everything is released on exit.
    :func:`ntkal.acquire` reads its picks' structures and rows through it before it closes.
    """

    def __init__(self, featurizer, train, pool, opts: ScreenOptions, *, target=None, where: str = "screen"):
        if not callable(featurizer):
            fail(where, f"featurizer must be callable (list of Atoms -> Blocks); got {type(featurizer).__name__}")
        self.featurizer, self.opts, self.where = featurizer, opts, where
        self.pool = _source(pool, where, "pool")
        if len(self.pool) == 0:
            fail(where, f"pool must hold at least one structure; got an empty pool ({self.pool.describe()})")
        self.train, self.target = _source(train, where, "train"), _source(target, where, "target")
        if self.target is not None and len(self.target) == 0:
            fail(where, "target must hold at least one structure; got none")
        if opts.k is not None:
            as_int(opts.k, where, "shortlist", low=1)
        self._check_calibration()
        if opts.cache is not None and not hasattr(featurizer, "fingerprint"):
            fail(where, "cache needs a featurizer with fingerprint(); got one without")
        self.timings = {"check": 0.0, "train_features": 0.0, "posterior": 0.0, "calibration": 0.0,
                        "pool_features": 0.0, "scoring": 0.0}
        self.scratch = self.executor = None

    def _check_calibration(self) -> None:
        has_train = self.train is not None and len(self.train) > 0
        if self.opts.calibrate == "on" and not hasattr(self.featurizer, "predict_forces"):
            fail(self.where, "calibrate='on' needs a featurizer with predict_forces(atoms) (the model's residuals); "
                             f"{type(self.featurizer).__name__} has none")
        if self.opts.calibrate == "on" and not has_train:
            fail(self.where, "calibrate='on' needs labelled training structures; train is empty")

    def __enter__(self) -> "Screening":
        f, opts = self.featurizer, self.opts
        fingerprint = f.fingerprint() if hasattr(f, "fingerprint") else f"unkeyed-{uuid.uuid4().hex}"
        self.scratch = tempfile.mkdtemp(prefix="ntkal-screen-")
        try:
            path = os.path.join(self.scratch, "features") if opts.cache is None else str(opts.cache)
            self.store = FeatureStore(path, fingerprint, f.config() if hasattr(f, "config") else None,
                                      where=self.where, arg="cache")
            self.pool, self.train, self.target = (s if s is None else s.spooled(os.path.join(self.scratch, label))
                                                  for s, label in ((self.pool, "pool"), (self.train, "train"),
                                                                   (self.target, "target")))
            self.executor = executor_for(opts.client, opts.workers, where=self.where)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.executor is not None:
            self.executor.close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def screen(self) -> Screen:
        """Run every phase; the Screen of this run."""
        self._check_all()
        self.executor.bind(self.featurizer)
        self.driver = ChunkDriver(self.executor, self.store, chunk_size=self.opts.chunk_size,
                                  progress=self.opts.progress, skipped=self.checker.skipped)
        self._train_phase()
        self._calibration_phase()
        if self.opts.target_gram and self.target is not None:
            self.target_gram = self._stored_gram("target", self._run_set(
                self.target, self.checked["target"], self.driver.context(on_error=self.opts.on_error)))
        if self.opts.score_pool:
            self._pool_phase()
        return self._result()

    # ---- 1. check ------------------------------------------------------------------------------------------
    def _check_all(self) -> None:
        t = time.perf_counter()
        opts = self.opts
        calibrate = opts.calibrate
        if calibrate == "auto" and not (hasattr(self.featurizer, "predict_forces") and self.train is not None
                                        and len(self.train)):
            calibrate = "off"  # "auto" is decided on the training labels, read in the check pass
        self.checker = CheckPass(self.featurizer, chunk_size=opts.chunk_size, strata=opts.strata == "composition",
                                 calibrate=calibrate, on_error=opts.on_error, progress=opts.progress,
                                 where=self.where)
        self.checked = {label: self.checker.run(src, label) for src, label in
                        ((self.train, "train"), (self.pool, "pool"), (self.target, "target"))
                        if src is not None and len(src)}
        self.calibrate = self.checker.calibrate
        self.in_train = self.checked["pool"].in_train
        self.timings["check"] = time.perf_counter() - t

    def _run_set(self, src, checked, ctx, *, keys=None, exclude=None) -> list:
        """Run one set's chunks; their results sorted by start."""
        results = list(self.driver.run(ctx, checked.label, self.driver.structure_tasks(src, checked, keys=keys,
                                                                                        exclude=exclude),
                                       len(src), checked.digests))
        return sorted(results, key=lambda r: r.start)

    def _announce(self, label: str, results: list) -> None:
        if self.opts.on_features is not None:
            for res in results:
                self.opts.on_features(label, res.start, self.store.load(label, res.start, res.stop))

    def _stored_gram(self, label: str, results: list) -> np.ndarray:
        """``sum phi^T phi`` over a stored set's rows, in one fixed-order pass that reads the chunks in index
        order (the engine's Gram accumulation continues each entry's chain from chunk to chunk): the same
        bits whatever the chunk size or the number of workers."""
        acc = None
        for res in results:
            blocks = self.store.load(label, res.start, res.stop, self._digest(label, res.start))
            if acc is None:
                acc = Posterior(blocks.dim)
            if blocks.n_rows:
                acc.add(blocks.rows)
        return acc.gram

    def _digest(self, label: str, start: int) -> str:
        return self.checked[label].digests[start // self.opts.chunk_size]

    # ---- 2. training set: features, one fixed-order Gram pass, one factorisation -----------------------------
    def _train_phase(self) -> None:
        self.posterior, self.train_features, self.n_train, self.predicted = None, None, 0, {}
        self.present = np.zeros(0, np.int64)
        if "train" not in self.checked:
            return
        t = time.perf_counter()
        results = self._run_set(self.train, self.checked["train"], self.driver.context(
            on_error=self.opts.on_error, forces=self.calibrate == "on"))
        for res in results:
            if res.forces is not None:
                self.predicted.update({res.start + i: f for i, f in enumerate(res.forces)})
        self.timings["train_features"] = time.perf_counter() - t
        self._announce("train", results)
        t = time.perf_counter()
        # this run's chunks, checked against this run's structures (the store may hold others)
        blocks = Blocks.concatenate([self.store.load("train", r.start, r.stop, self._digest("train", r.start))
                                     for r in results])
        self.present = np.flatnonzero(blocks.sizes > 0)
        self.train_features = blocks.take(self.present) if self.present.size else None
        self.n_train = int(self.present.size)
        self.posterior = self._posterior(blocks.dim)
        if self.train_features is not None:
            # one fixed-order pass over the training rows in index order: the Gram's bits depend on the rows alone
            self.posterior.add(self.train_features)
        self.posterior.feature_scale  # factor now (client-side scoring and selection); a worker rebuilds the
        # same bits from the pickled Gram with the same fixed-order kernels
        self.timings["posterior"] = time.perf_counter() - t

    def _posterior(self, dim: int) -> Posterior:
        return Posterior(dim, noise_var=self.opts.noise_var, scale=self.opts.scale, precision=self.opts.precision)

    # ---- 3. calibration on labelled residuals --------------------------------------------------------------
    def _calibration_phase(self) -> None:
        self.calibration = None
        if self.calibrate != "on" or self.train_features is None:
            return
        t = time.perf_counter()
        train = self.checked["train"]
        loo = leave_one_out_variance(self.posterior, self.train_features, intensive=self.opts.intensive)
        res_sq = force_residual_sq([self.predicted[int(i)] for i in self.present],
                                   [train.forces[int(i)] for i in self.present])
        self.calibration = fit_calibration(res_sq, loo, [train.keys[int(i)] for i in self.present])
        self.timings["calibration"] = time.perf_counter() - t

    # ---- 5. pool: featurize, score, best candidates per stratum --------------------------------------------
    def _pool_phase(self) -> None:
        t = time.perf_counter()
        opts, keys = self.opts, self.checked["pool"].keys
        scales = None if self.calibration is None else {key: self.calibration.scale_of(key) for key in set(keys)}
        ctx = self.driver.context(on_error=opts.on_error, posterior=self.posterior, intensive=opts.intensive,
                                  top=self.k, scales=scales, stratify=opts.strata == "composition",
                                  prior=None if self.posterior is not None else (opts.noise_var, opts.scale,
                                                                                 opts.precision))
        self.pool_pv = np.full(len(self.pool), np.nan)
        tops: dict = {}
        scoring = 0.0
        results = []
        for res in self.driver.run(ctx, "pool", self.driver.structure_tasks(self.pool, self.checked["pool"],
                                                                            keys=keys, exclude=self.in_train),
                                   len(self.pool), self.checked["pool"].digests):
            self.pool_pv[res.start:res.stop] = res.pv
            for key, (idx, sc) in (res.top or {}).items():
                tops.setdefault(key, RunningTopK(self.k)).push(idx, sc)
            results.append(res)
            scoring += res.score_seconds
        results.sort(key=lambda r: r.start)
        self.timings["pool_features"] = time.perf_counter() - t
        self.timings["scoring"] = scoring
        self._announce("pool", results)
        if self.posterior is None:  # no training set: the prior at the features' width
            self.posterior = self._posterior(results[0].dim)
        if self.opts.target_gram and self.target is None:  # the pool is the target
            self.target_gram = self._stored_gram("pool", results)
        self.tops = {key: top.result() for key, top in tops.items()}

    @property
    def k(self) -> int:
        return 0 if self.opts.k is None else min(len(self.pool), self.opts.k)

    # ---- the result ----------------------------------------------------------------------------------------
    def _result(self) -> Screen:
        skipped = self.checker.skipped
        pool_pv = getattr(self, "pool_pv", None)
        candidates = np.array([("pool", i) not in skipped for i in range(len(self.pool))]) & ~self.in_train
        shortlists, rows, available = {}, {}, {}
        if pool_pv is not None:
            for label, i in skipped:
                if label == "pool":
                    pool_pv[i] = np.nan
            candidates &= np.isfinite(pool_pv)
            for key, (idx, sc) in self.tops.items():
                keep = np.array([("pool", int(i)) not in skipped for i in idx], dtype=bool)
                shortlists[key] = (idx[keep], sc[keep])
            available = {key: 0 for key in shortlists}
            # with strata="none" the composition keys (read for calibration) only scale the scores
            stratum_of = self.checked["pool"].keys if self.opts.strata == "composition" else ["*"] * len(self.pool)
            for i in np.flatnonzero(candidates):
                available[stratum_of[i]] = available.get(stratum_of[i], 0) + 1
            rows = {key: self.store.take("pool", idx) for key, (idx, _) in shortlists.items() if idx.size}
        keys = self.checked["pool"].keys if self.opts.strata == "composition" else ["*"] * len(self.pool)
        return Screen(pool_pv, self.posterior, shortlists, rows, available, list(keys), self.train_features,
                      getattr(self, "target_gram", None), self.calibration,
                      np.flatnonzero(self.in_train).astype(np.int64),
                      [(label, i, reason) for (label, i), reason in sorted(skipped.items())], dict(self.timings),
                      len(self.pool), self.n_train, self.k if pool_pv is not None else 0, self.driver.cached,
                      self.driver.computed, candidates)
