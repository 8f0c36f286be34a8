"""Distributed screening: featurization throughput on Dask workers, scoring a 10^6-structure feature store,
and the Dask path's overhead on the demo.

Three parts, each in fresh subprocesses so that every row has its own peak memory:

1. ``throughput``: pretrained CHGNet, joint features (k = 4 force rows, d = 512) of the demo's Cu/CuAu
   cells; structures per second in this process (1 torch thread), on a Dask LocalCluster of 1 and of 2
   worker processes (1 thread each; the cluster is started before the clock, scattering the model is
   timed), and with the hand-written fork pool ntkal used before (reimplemented here as the baseline:
   ``multiprocessing`` fork, one structure per task), in one run, interleaved.
2. ``store``: a synthetic feature store of 10^6 structures x 5 rows x d 512 (float32, 10 GB), scored and
   shortlisted (k = 1000) against a posterior of 2000 training structures: seconds and peak RSS of every
   process (client and workers), in-process and on 2 workers.
3. ``overhead``: ``ntkal.acquire`` on the demo pool (240 structures, 20 training) in this process against
   the same call on a 1-worker LocalCluster (the same compute, plus Dask), and on 2 workers.

Usage (from the repository root):
    PYTHONPATH=python python bench/distributed_screening.py --out bench/results/distributed.json
    PYTHONPATH=python python bench/distributed_screening.py --parts store --store-structures 100000   # smaller store
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import ntkal  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))

import numpy as np  # noqa: E402

from _common import emit_child_result, machine_info, run_child  # noqa: E402


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _featurizer():
    from ntkal.torch import Featurizer, models

    return Featurizer(models.chgnet(), "joint", dim=512, force_rows=4)


def _client(workers: int):
    """A LocalCluster as a user would start one (Dask's default worker environment, including its
    MALLOC_TRIM_THRESHOLD_, which ntkal's workers undo; see ntkal.screen._generous_malloc)."""
    import distributed

    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=50)
    return distributed.Client(cluster)


# ---- old fork pool, the baseline ----------------------------------------------------------------------
_FORK = {}


def _fork_init(featurizer):
    import torch

    torch.set_num_threads(1)
    import ntkal

    ntkal.set_num_threads(1)
    _FORK["f"] = featurizer


def _fork_features(atoms):
    return _FORK["f"].features(atoms)


def _fork_pool(featurizer, structures, workers):
    import multiprocessing as mp

    with mp.get_context("fork").Pool(workers, initializer=_fork_init, initargs=(featurizer,)) as pool:
        return list(pool.imap(_fork_features, structures, chunksize=1))


# ---- child phases --------------------------------------------------------------------------------------
def child_throughput(mode: str, n: int, chunk: int) -> dict:
    import torch

    from ntkal.demo_data import demo_structures
    from ntkal.features import compute_features

    torch.set_num_threads(1)
    _, pool = demo_structures(n, 2, seed=0)
    feat = _featurizer()
    client, startup = None, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        if mode.startswith("dask"):
            # start-up, timed apart: cluster, model import and load on every worker (a warm-up screen of
            # 2 structures per worker); a screen of hours pays it once
            t0 = time.perf_counter()
            client = _client(int(mode[4:]))
            _, warm = demo_structures(2 * int(mode[4:]), 2, seed=1)
            compute_features(feat, warm, tmp + "/warm", chunk_size=1, client=client, progress=False)
            startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        if mode.startswith("fork"):
            rows = _fork_pool(feat, pool, int(mode[4:]))
            n_rows = sum(r.shape[0] for r in rows)
        else:
            store = compute_features(feat, pool, tmp + "/s", chunk_size=chunk, client=client, progress=False)
            n_rows = store.read("structures").n_rows
        seconds = time.perf_counter() - t0
    if client is not None:
        client.close()
    return {"mode": mode, "structures": n, "rows": int(n_rows), "seconds": seconds, "startup_seconds": startup,
            "structures_per_s": n / seconds}


def child_make_store(path: str, n: int, rows_per: int, dim: int, chunk: int) -> dict:
    import ntkal
    from ntkal.feature_store import FeatureStore

    t0 = time.perf_counter()
    store = FeatureStore(path, "synthetic-" + "0" * 22, {"synthetic": True, "rows_per_structure": rows_per})
    offsets = np.arange(0, chunk * rows_per + 1, rows_per, dtype=np.int64)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        rng = np.random.default_rng([7, start])
        rows = rng.standard_normal((m * rows_per, dim), dtype=np.float32)
        store.save("pool", start, start + m, "synthetic", ntkal.Blocks(rows, offsets[:m + 1]))
    store.record_label("pool", [(a, min(a + chunk, n), "synthetic") for a in range(0, n, chunk)])  # complete
    return {"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_mb()}


def child_score_store(path: str, workers: int, k: int, dim: int) -> dict:
    import ntkal

    rng = np.random.default_rng(3)
    train = rng.standard_normal((2000 * 5, dim), dtype=np.float32)
    post = ntkal.Posterior(dim, noise_var=1e-2, scale=True).add(train, np.arange(0, 10001, 5))
    del train
    client = _client(workers) if workers > 1 else None
    t0 = time.perf_counter()
    found = ntkal.screen(path, post, "pool", shortlist=k, client=client, progress=False)
    idx, pv = found.shortlists["*"]
    seconds = time.perf_counter() - t0
    worker_peaks = []
    if client is not None:
        worker_peaks = sorted(client.run(_peak_mb).values())
        client.close()
    return {"workers": workers, "seconds": seconds, "client_peak_rss_mb": _peak_mb(),
            "worker_peak_rss_mb": worker_peaks, "top": idx[:5].tolist(), "top_pv": pv[:5].tolist()}


def child_overhead(mode: str) -> dict:
    import torch

    import ntkal
    from ntkal.demo_data import demo_structures

    torch.set_num_threads(1)
    train, pool = demo_structures(240, 20, seed=0)
    feat = _featurizer()
    client = _client(int(mode[4:])) if mode.startswith("dask") else None
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = ntkal.acquire(feat, train, pool, 10, progress=False, client=client,
                            cache=(tmp + "/s") if client is not None else None)
        seconds = time.perf_counter() - t0
    if client is not None:
        client.close()
    return {"mode": mode, "seconds": seconds, "indices": res.indices.tolist(), "timings": res.timings}


# ---- driver --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", default=["throughput", "store", "overhead"],
                   choices=["throughput", "store", "overhead"])
    p.add_argument("--structures", type=int, default=64, help="throughput: structures featurized per row")
    p.add_argument("--repeats", type=int, default=2, help="throughput: interleaved repeats of every row")
    p.add_argument("--store-structures", type=int, default=1_000_000)
    p.add_argument("--store-dir", default=None, help="where to write the synthetic store (default: a temp dir)")
    p.add_argument("--out", default=None, help="JSON output")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        fn = {"throughput": lambda: child_throughput(rest[0], int(rest[1]), int(rest[2])),
              "make_store": lambda: child_make_store(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4])),
              "score_store": lambda: child_score_store(rest[0], int(rest[1]), int(rest[2]), int(rest[3])),
              "overhead": lambda: child_overhead(rest[0])}[kind]
        emit_child_result(fn())
        return 0

    me = os.path.abspath(__file__)
    out = {"machine": machine_info(), "argv": sys.argv[1:]}
    print(f"commit {out['machine']['commit']} (dirty: {out['machine']['dirty']}), {out['machine']['cores']} cores")
    if "throughput" in args.parts:
        rows = []
        for rep in range(args.repeats):
            for mode in ("fork2", "dask2", "dask1", "inproc1"):
                r = run_child([me, "--child", "throughput", mode, str(args.structures), "8"], timeout=3600)
                r["repeat"] = rep
                rows.append(r)
                print(f"  throughput {mode:8s} repeat {rep}: " + (f"{r['structures_per_s']:.3f} structures/s "
                      f"({r['seconds']:.1f} s; start-up {r['startup_seconds']:.1f} s)" if "error" not in r
                                                                      else r["error"]), flush=True)
        out["throughput"] = rows
    if "store" in args.parts:
        tmp = None
        path = args.store_dir
        if path is None:
            tmp = tempfile.TemporaryDirectory(prefix="ntkal-store-bench-")
            path = os.path.join(tmp.name, "store")
        made = run_child([me, "--child", "make_store", path, str(args.store_structures), "5", "512", "4096"],
                         timeout=7200)
        print(f"  store: wrote {args.store_structures} structures x 5 rows x 512 in {made.get('seconds', 0):.0f} s", flush=True)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
        scored = []
        for workers in (1, 2):
            r = run_child([me, "--child", "score_store", path, str(workers), "1000", "512"], timeout=7200)
            scored.append(r)
            print(f"  store: score + shortlist on {workers} worker(s): " + (
                f"{r['seconds']:.1f} s, client peak {r['client_peak_rss_mb']:.0f} MB, workers "
                f"{[round(x) for x in r['worker_peak_rss_mb']]} MB" if "error" not in r else r["error"]), flush=True)
        out["store"] = {"structures": args.store_structures, "bytes": size, "make": made, "score": scored}
        if tmp is not None:
            tmp.cleanup()
    if "overhead" in args.parts:
        rows = []
        for mode in ("inproc", "dask1", "dask2", "inproc", "dask1"):
            r = run_child([me, "--child", "overhead", mode], timeout=3600)
            rows.append(r)
            print(f"  demo acquire {mode:7s}: " + (f"{r['seconds']:.1f} s" if "error" not in r else r["error"]),
                  flush=True)
        out["overhead"] = rows
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
