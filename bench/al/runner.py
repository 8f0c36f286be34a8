"""Run many (strategy, seed, pool) learning curves, in worker processes when asked.

Jobs are many small CHGNet passes, for which a second torch thread in one process gains little (see
``ntkal.torch.Featurizer``'s ``threads``), so the study runs its jobs in ``workers`` spawned processes of
one thread each. Every worker loads
the cached dataset and the pool features from the run directory once.

Phase 1 trains each (pool, seed)'s round-0 model once (all strategies share the initial set);
phase 2 runs the strategies from that model.

Resumable: the run directory keeps every finished job (round-0 weights and errors, each
learning curve as JSON, written atomically); a rerun on the same directory skips them, so an
interrupted study loses only the jobs that were running.
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

import numpy as np

_WORKER = {}


def _init(cache_dir, recipe, run_dir, kernels, threads, domain="all"):
    import torch

    from . import loop
    from .data import load_dataset

    torch.set_num_threads(threads)
    _WORKER["ctx"] = loop.Context(load_dataset(cache_dir, recipe, verbose=False), domain)
    _WORKER["run_dir"] = run_dir
    _WORKER["features"] = {}
    if kernels:
        import ntkal

        from .features import PoolFeatures

        index = np.load(os.path.join(run_dir, "features_index.npy"))
        n_pool = len(_WORKER["ctx"].pool)
        for kernel in kernels:
            blocks = ntkal.Blocks.load(os.path.join(run_dir, f"features_{kernel}.npz"))
            seconds = float(np.load(os.path.join(run_dir, f"features_{kernel}_seconds.npy")))
            _WORKER["features"][kernel] = (PoolFeatures(blocks, index, n_pool), seconds)


def _round0_path(pool_key, seed):
    return os.path.join(_WORKER["run_dir"], f"round0_{pool_key}_seed{seed}.pt")


def _result_path(run_dir, job) -> str:
    name = "round0" if job["kind"] == "round0" else f"curve_{job['label']}"
    return os.path.join(run_dir, "jobs", f"{name}_{job['pool_key']}_seed{job['seed']}.json")


def _save_result(run_dir, res) -> None:
    keep = {k: v for k, v in res.items() if k not in ("pool", "loop", "round0")}
    path = _result_path(run_dir, res)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(keep, fh)
    os.replace(path + ".tmp", path)


def _load_result(run_dir, job):
    path = _result_path(run_dir, job)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        saved = json.load(fh)
    if job["kind"] == "strategy" and (saved.get("strategy") != job["strategy"]
                                      or saved.get("strategy_args") != job["strategy_args"]):
        return None  # same label, other settings: run it again
    return {**job, **saved}


def _job(job: dict) -> dict:
    import torch

    from . import loop
    from . import model as M
    from . import strategies

    ctx, cfg = _WORKER["ctx"], job["loop"]
    t0 = time.perf_counter()
    init = loop.initial_set(job["pool"], cfg.n_initial, job["seed"])
    if job["kind"] == "round0":
        net, seconds, errs = loop.train_round0(ctx, init, cfg, job["seed"])
        torch.save(net.state_dict(), _round0_path(job["pool_key"], job["seed"]))
        return {**job, "finetune_seconds": seconds, "errors": errs}
    r0 = job["round0"]
    net = M.pretrained()
    net.load_state_dict(torch.load(_round0_path(job["pool_key"], job["seed"])))
    net.eval()
    kernel = strategies.KERNEL_OF.get(job["strategy"])
    strategy = strategies.make(job["strategy"], _WORKER["features"].get(kernel), **job["strategy_args"])
    strategy.name = job["label"]
    record = loop.run(strategy, ctx, job["pool"], cfg, job["seed"],
                      (net, r0["finetune_seconds"], r0["errors"]))
    return {**job, "record": record, "wall_seconds": time.perf_counter() - t0}


def _map(jobs, init_args, workers, on_done):
    run_dir = init_args[2]
    pending = []
    for job in jobs:
        res = _load_result(run_dir, job)
        if res is None:
            pending.append(job)
        else:
            on_done(res, resumed=True)
    jobs = pending
    if not jobs:
        return
    _done = on_done

    def on_done(res):  # noqa: F811 - persist first, then report
        _save_result(run_dir, res)
        _done(res, resumed=False)

    if workers <= 1:
        _init(*init_args)
        for job in jobs:
            on_done(_job(job))
        return
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init,
                             initargs=init_args) as ex:
        futures = [ex.submit(_job, job) for job in jobs]
        for fut in as_completed(futures):
            on_done(fut.result())


def _spec(entry):
    """A strategy entry: its name, or (label, name, {strategy argument overrides})."""
    return (entry, entry, {}) if isinstance(entry, str) else tuple(entry)


def run_all(runs, *, strategy_args, cache_dir, recipe, run_dir, kernels, workers,
            threads, domain="all", log=print):
    """``runs``: list of (pool_key, pool indices, seed, [strategy entries], LoopConfig).

    A strategy entry is a name or (label, name, {argument overrides}) (parameter sweeps).
    Returns {(pool_key, seed, label): job result with "record"}.
    """
    init_args = (cache_dir, recipe, run_dir, tuple(kernels), threads, domain)
    round0 = {}

    def done0(res, resumed):
        round0[(res["pool_key"], res["seed"])] = res
        log(f"  {'(done) ' if resumed else ''}round 0  pool={res['pool_key']:<14} seed={res['seed']}  "
            f"force MAE {res['errors']['force_mae']:.4f} eV/A  ({res['finetune_seconds']:.0f} s fine-tune)")

    jobs0 = [{"kind": "round0", "pool_key": key, "pool": pool, "seed": seed, "loop": cfg}
             for key, pool, seed, _, cfg in runs]
    _map(jobs0, init_args, workers, done0)

    results = {}

    def done(res, resumed):
        results[(res["pool_key"], res["seed"], res["label"])] = res
        rec = res["record"]
        log(f"  {'(done) ' if resumed else ''}{res['label']:<17} pool={res['pool_key']:<14} seed={res['seed']}  "
            f"force MAE {rec['force_mae'][0]:.4f} -> {rec['force_mae'][-1]:.4f} eV/A  "
            f"acq {sum(rec['acq_seconds']):.1f} s  wall {res['wall_seconds']:.0f} s  "
            f"[{len(results)}/{len(jobs)}]")

    jobs = [{"kind": "strategy", "pool_key": key, "pool": pool, "seed": seed, "label": label,
             "strategy": name, "loop": cfg, "strategy_args": {**strategy_args, **override},
             "round0": round0[(key, seed)]}
            for key, pool, seed, names, cfg in runs for label, name, override in map(_spec, names)]
    # committee jobs are the longest: start them first so the workers finish together
    jobs.sort(key=lambda j: j["strategy"] != "committee")
    _map(jobs, init_args, workers, done)
    return results
