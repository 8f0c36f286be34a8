"""One active-learning run: fine-tune, evaluate, acquire, repeat."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from . import model as M
from .strategies import RoundState

TEST_SETS = ("id", "shift")  # JSON keys: "energy_mae" (id), "shift_energy_mae" (shift), ...
METRICS = ("energy_mae", "energy_rmse", "force_mae", "force_rmse", "force_p95")
DOMAIN_METRICS = ("energy_mae_molecule", "energy_mae_metal", "force_mae_molecule", "force_mae_metal")


@dataclass(frozen=True)
class LoopConfig:
    n_initial: int = 20
    batch: int = 20
    rounds: int = 5  # acquisitions; the curve has rounds + 1 points
    committee_size: int = 4
    finetune: M.FinetuneConfig = field(default_factory=M.FinetuneConfig)


class Context:
    """Per-process data shared by all runs: graphs and labels of the pool and test sets.

    ``domain`` ("all", "molecule" or "metal") restricts the test sets; pools are chosen by
    the caller (their indices always refer to the whole cached pool).
    """

    def __init__(self, dataset, domain: str = "all"):
        net = M.pretrained()
        self.pool = dataset.pool
        self.graphs = M.to_graphs(net, dataset.pool)
        self.labels = M.Labels(dataset.pool)
        self.tests, self.domains = {}, {}
        for test, frames in (("id", dataset.test_id), ("shift", dataset.test_shift)):
            frames = [f for f in frames if domain in ("all", f.info["domain"])]
            self.tests[test] = (M.to_graphs(net, frames), M.Labels(frames))
            self.domains[test] = _domains(frames)


def _domains(frames) -> dict:
    """Masks of the molecule and metal frames: errors are also reported per domain."""
    domain = np.array([f.info["domain"] for f in frames])
    groups = {"molecule": domain == "molecule", "metal": domain == "metal"}
    system = np.array([str(f.info["system"]) for f in frames])
    groups.update({f"sys_{s}": system == s for s in np.unique(system)})  # per condition / system
    return groups


def metric_key(test: str, metric: str) -> str:
    return metric if test == "id" else f"{test}_{metric}"


def evaluate(ctx: Context, net) -> dict:
    out = {}
    for test, (graphs, labels) in ctx.tests.items():
        for metric, value in M.errors(net, graphs, labels, ctx.domains[test]).items():
            out[metric_key(test, metric)] = value
    return out


def initial_set(pool_index, n_initial: int, seed: int) -> np.ndarray:
    """The seed's initial training set, shared by every strategy."""
    rng = np.random.default_rng([seed, 1])
    return np.sort(rng.choice(np.asarray(pool_index), size=n_initial, replace=False))


def train_round0(ctx: Context, init_index, cfg: LoopConfig, seed: int):
    """Round-0 model and its errors: identical for every strategy of a seed, so trained once."""
    net, seconds = M.finetune(ctx.graphs, ctx.labels, init_index, cfg.finetune, seed=seed)
    return net, seconds, evaluate(ctx, net)


def run(strategy, ctx: Context, pool_index, cfg: LoopConfig, seed: int, round0) -> dict:
    """Learning curve of one strategy.

    ``round0`` = (model, finetune seconds, errors) from :func:`train_round0` on the same
    initial set. Returns lists aligned with ``n_labels``; ``acq_seconds[i]`` is the time spent
    choosing the labels added between points i-1 and i (0 for the initial random set).
    """
    pool_index = np.asarray(pool_index)
    labelled = initial_set(pool_index, cfg.n_initial, seed)
    net, ft_seconds, errs = round0
    record = {"n_labels": [], "acq_seconds": [], "finetune_seconds": [], "selected": []}
    acq = 0.0
    for rnd in range(cfg.rounds + 1):
        if rnd > 0:
            net, ft_seconds = M.finetune(ctx.graphs, ctx.labels, labelled, cfg.finetune, seed=seed)
            errs = evaluate(ctx, net)
        record["n_labels"].append(int(len(labelled)))
        record["acq_seconds"].append(acq)
        record["finetune_seconds"].append(ft_seconds)
        for key, value in errs.items():
            record.setdefault(key, []).append(value)
        if rnd == cfg.rounds:
            break
        candidates = np.setdiff1d(pool_index, labelled)
        state = RoundState(seed, rnd, candidates, labelled, net, ctx.graphs, ctx.labels, cfg.finetune, ctx.pool)
        t0 = time.perf_counter()
        picked = np.asarray(strategy.select(state, cfg.batch))
        acq = time.perf_counter() - t0
        acq += strategy.charge_once() if hasattr(strategy, "charge_once") else 0.0
        if len(np.unique(picked)) != cfg.batch or not np.isin(picked, candidates).all():
            raise RuntimeError(f"{strategy.name}: selection is not {cfg.batch} distinct candidates")
        record["selected"].append(picked.tolist())
        labelled = np.concatenate([labelled, picked])
    return record
