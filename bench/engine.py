"""Engine benchmark: PV scoring throughput against same-run GEMM, and greedy PV / LCMD against bmdal_reg.

Prints, from one run:
1. ``Posterior.variance`` throughput (structures/s, GFLOP/s) in float32 and float64, as a fraction of the
   NumPy matmul rate of the same shape (M x d)(d x d), measured in the same process, same thread count.
2. Wall time and peak memory of ntkal and bmdal_reg on identical features (two families: isotropic
   Gaussian rows and NTK-like rows with a fast-decaying spectrum and cluster structure), for
   greedy PV (bmdal ``maxdet`` on the train posterior) and LCMD with train centres; whether the
   selected indices agree. Each (tool, method, size) runs in its own subprocess so its peak RSS is its own.
3. A summary table with ratios and PASS/MISS against the targets of ARCHITECTURE.md ("Targets").

Usage::

    PYTHONPATH=python python bench/engine.py                 # full set (20-40 min on 2 cores)
    PYTHONPATH=python python bench/engine.py --quick         # pool 20k only, smaller scoring set
    python bench/engine.py --sizes 20000,200000 --skip-bmdal-above 100000 --json out.json
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import pathlib
import sys
import time

# The same wait policy for both sides, set before NumPy's OpenBLAS or libgomp start: a BLAS pool that
# spin-waits after its call (OpenBLAS's default) takes a core from whatever is timed next.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.append(str(pathlib.Path(__file__).resolve().parents[1] / "python"))  # ntkal from the source tree
from _common import (Contention, PeakRSS, emit_child_result, machine_info, rss_mb,  # noqa: E402
                     run_child, timed)

REPO = pathlib.Path(__file__).resolve().parents[1]
FAMILIES = ("isotropic", "ntk-like")
METHODS = ("greedy_pv", "lcmd")
BMDAL_NAME = {"greedy_pv": "maxdet on ('train', [sigma]), maxdet_sigma=sigma",
              "lcmd": "lcmd, sel_with_train=True, no kernel transform"}

# Targets from ARCHITECTURE.md ("Targets").
TARGET_SCORING_FRACTION = 0.80
TARGET_SPEEDUP = {"greedy_pv": 10.0, "lcmd": 30.0}
TARGET_MEMORY_FRACTION = 0.25
TARGET_POOL = 200_000

# ------------------------------------------------------------------ features

GEN_CHUNK = 8192  # rows generated at a time: temporaries stay ~10 MB, so loading leaves no high peak
NTK_CLUSTERS = 100
NTK_TRAIN_CLUSTERS = 75  # training set covers only these clusters: the pool has regions it never saw
NTK_SPECTRUM_POWER = 1.0  # singular values ~ k^-1: energy ~ k^-2, ~94 % of it in the top 10 of 512 directions
NTK_WITHIN = 0.5  # within-cluster spread relative to the spread of cluster centres
NTK_NOISE = 1e-3  # isotropic noise energy relative to the signal (a floor under the decaying spectrum)


def _family_params(family: str, d: int, seed: int) -> dict:
    if family == "isotropic":
        return {}
    rng = np.random.default_rng([seed, d, 7])
    s = (np.arange(1, d + 1, dtype=np.float64)) ** -NTK_SPECTRUM_POWER
    s /= np.sqrt(np.sum(s**2))
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q *= np.sign(np.diag(r))  # a Haar-random rotation
    centres = rng.standard_normal((NTK_CLUSTERS, d))
    centre_energy = np.mean(np.sum((centres * s) ** 2, axis=1))
    norm = 1.0 / np.sqrt(centre_energy + NTK_WITHIN**2 + NTK_NOISE)  # mean squared row norm ~1
    return {"s": s.astype(np.float32), "q": q.astype(np.float32), "centres": centres.astype(np.float32),
            "norm": np.float32(norm)}


def make_features(family: str, n_rows: int, d: int, seed: int, role: str) -> np.ndarray:
    """Deterministic float32 features (n_rows, d) with mean squared row norm 1.

    isotropic: i.i.d. N(0, 1/d) entries. ntk-like: a mixture of ``NTK_CLUSTERS`` Gaussian clusters in
    spectral coordinates scaled by a power-law spectrum, rotated by a random orthogonal matrix, plus
    small isotropic noise; ``role="train"`` draws only from the first ``NTK_TRAIN_CLUSTERS`` clusters.
    Generated in chunks from per-chunk seeds, so the first rows of a larger pool equal a smaller pool.
    """
    params = _family_params(family, d, seed)
    role_id = {"pool": 0, "train": 1}[role]
    out = np.empty((n_rows, d), dtype=np.float32)
    for c, r0 in enumerate(range(0, n_rows, GEN_CHUNK)):
        n = min(GEN_CHUNK, n_rows - r0)
        rng = np.random.default_rng([seed, d, role_id, c, 1 if family == "isotropic" else 2])
        if family == "isotropic":
            out[r0:r0 + n] = rng.standard_normal((n, d), dtype=np.float32) * np.float32(1.0 / np.sqrt(d))
            continue
        n_clusters = NTK_TRAIN_CLUSTERS if role == "train" else NTK_CLUSTERS
        label = rng.integers(0, n_clusters, size=n)
        y = params["centres"][label]
        y += np.float32(NTK_WITHIN) * rng.standard_normal((n, d), dtype=np.float32)
        y *= params["s"]
        x = y @ params["q"]
        x += np.float32(np.sqrt(NTK_NOISE / d)) * rng.standard_normal((n, d), dtype=np.float32)
        x *= params["norm"]
        out[r0:r0 + n] = x
    return out


def spectrum_summary(rows: np.ndarray) -> dict:
    """Share of the feature energy in the top 1 / 10 / 1 % of the directions of rows^T rows."""
    ev = np.sort(np.linalg.eigvalsh(rows.astype(np.float64).T @ rows.astype(np.float64)))[::-1]
    total = ev.sum()
    k1 = max(1, len(ev) // 100)
    return {"top1": ev[0] / total, "top10": ev[:10].sum() / total, f"top{k1}(1%)": ev[:k1].sum() / total,
            "mean_sq_norm": float(np.mean(np.sum(rows.astype(np.float64) ** 2, axis=1)))}


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(memoryview(np.ascontiguousarray(a)).cast("B")).hexdigest()[:16]


# ------------------------------------------------------------------ child: one selection run


def child_main(spec: dict) -> None:
    from threadpoolctl import threadpool_limits

    threads = spec["threads"]
    threadpool_limits(threads)
    tool, method = spec["tool"], spec["method"]
    if tool == "bmdal":
        np.Inf = np.inf  # bmdal_reg 3.0.2 still uses np.Inf (removed in NumPy 2)
        import torch
        from bmdal_reg.bmdal.algorithms import select_batch
        from bmdal_reg.bmdal.feature_data import TensorFeatureData

        torch.set_num_threads(threads)
    else:
        import ntkal

        ntkal.set_num_threads(threads)
    d, seed = spec["d"], spec["seed"]
    pool = make_features(spec["family"], spec["n_pool"], d, seed, "pool")
    train = make_features(spec["family"], spec["n_train"], d, seed, "train")
    digest = {"pool": _digest(pool), "train": _digest(train)}
    if tool == "bmdal":  # zero-copy views: part of "loading", not of the selection
        data = {"train": TensorFeatureData(torch.from_numpy(train)), "pool": TensorFeatureData(torch.from_numpy(pool))}
    gc.collect()
    baseline = rss_mb()
    peak = PeakRSS().start()
    sigma2, batch = spec["noise_var"], spec["batch"]
    t0 = time.perf_counter()
    extra = {}
    if tool == "ntkal":
        if method == "greedy_pv":
            post = ntkal.Posterior(d, noise_var=sigma2).add(train)
            post.feature_scale  # forces the Cholesky factorisation, timed apart for the breakdown
            extra["posterior_s"] = time.perf_counter() - t0
            idx, _ = ntkal.select(pool, None, batch, method="greedy_pv", posterior=post)
        else:
            idx, _ = ntkal.select(pool, None, batch, method="lcmd", train_rows=train)
        idx = np.asarray(idx)
    else:
        sigma = float(np.sqrt(sigma2))
        if method == "greedy_pv":
            cfg = dict(kernel_transforms=[("train", [sigma])], selection_method="maxdet", maxdet_sigma=sigma)
        else:
            cfg = dict(kernel_transforms=[], selection_method="lcmd", sel_with_train=True)
        idx_t, _ = select_batch(batch_size=batch, models=[torch.nn.Identity()], data=data, y_train=None,
                                base_kernel="linear", allow_float64=False, verbosity=0, **cfg)
        idx = idx_t.cpu().numpy()
    seconds = time.perf_counter() - t0
    peak_mb = peak.stop_mb()
    if tool == "ntkal" and method == "greedy_pv" and spec.get("reference64"):
        # untimed float64 reference (exact whitening), to tell which float32 result drifted
        post64 = ntkal.Posterior(d, noise_var=sigma2, precision="float64").add(train)
        extra["indices_f64"] = [int(i) for i in ntkal.select(pool, None, batch, method="greedy_pv",
                                                              posterior=post64).indices]
    emit_child_result({"seconds": seconds, "baseline_mb": baseline, "peak_mb": peak_mb,
                       "work_mb": max(0.0, peak_mb - baseline), "peak_method": peak.method,
                       "indices": [int(i) for i in idx], "digest": digest, **extra})


# ------------------------------------------------------------------ section 1: PV scoring throughput


def bench_scoring(d: int, n_rows: int, n_train: int, noise_var: float, threads: int, repeats: int,
                  seed: int) -> dict:
    import ntkal
    from threadpoolctl import threadpool_limits

    chunk = 4096  # rows per NumPy call in the chunked variant (the engine also works in chunks)
    rows = make_features("isotropic", n_rows, d, seed, "pool")
    train = make_features("isotropic", n_train, d, seed, "train")
    post32 = ntkal.Posterior(d, noise_var=noise_var).add(train)
    post64 = ntkal.Posterior(d, noise_var=noise_var, precision="float64").add(train)
    post32.variance(rows[:chunk])  # factor A outside the timed region
    post64.variance(rows[:chunk])
    rng = np.random.default_rng(seed)
    w32 = rng.standard_normal((d, d)).astype(np.float32)
    w64 = w32.astype(np.float64)
    full_out = np.empty((n_rows, d), np.float32)
    buf32 = np.empty((chunk, d), np.float32)
    x64 = rows[:chunk].astype(np.float64)
    buf64 = np.empty((chunk, d), np.float64)

    def np_full():  # one call, the whole (M x d)(d x d)^T, like the engine's GEMM (B transposed)
        np.matmul(rows, w32.T, out=full_out)

    def np_chunked():
        for r0 in range(0, n_rows, chunk):
            n = min(chunk, n_rows - r0)
            np.matmul(rows[r0:r0 + n], w32.T, out=buf32[:n])

    def np_chunked64():  # float64 GEMM rate on the same shape (one float64 chunk, reused)
        for r0 in range(0, n_rows, chunk):
            n = min(chunk, n_rows - r0)
            np.matmul(x64[:n], w64.T, out=buf64[:n])

    times = {k: [] for k in ("numpy_sgemm_full", "numpy_sgemm_chunked", "ntkal_f32", "numpy_dgemm_chunked",
                             "ntkal_f64")}
    with threadpool_limits(threads), Contention() as cont:
        ntkal.set_num_threads(threads)
        np_full()
        np_chunked64()
        variants = (("numpy_sgemm_full", np_full), ("numpy_sgemm_chunked", np_chunked),
                    ("ntkal_f32", lambda: post32.variance(rows)), ("numpy_dgemm_chunked", np_chunked64),
                    ("ntkal_f64", lambda: post64.variance(rows)))
        for _ in range(repeats):  # interleaved, so slow phases of a shared machine hit every variant
            for name, fn in variants:
                time.sleep(0.3)  # let the previous variant's thread pool go idle first
                times[name].append(timed(fn)[0])
    flop = 2.0 * n_rows * d * d
    res = {"d": d, "rows": n_rows, "repeats": repeats, "other_cores": cont.other_cores, "variants": {}}
    for k, ts in times.items():
        best = min(ts)
        res["variants"][k] = {"best_s": best, "median_s": float(np.median(ts)), "gflops": flop / best / 1e9,
                              "rows_per_s": n_rows / best}
    v = res["variants"]
    sgemm = max(v["numpy_sgemm_full"]["gflops"], v["numpy_sgemm_chunked"]["gflops"])
    res["sgemm_best_gflops"] = sgemm
    res["fraction_f32"] = v["ntkal_f32"]["gflops"] / sgemm
    res["fraction_f32_vs_full"] = v["ntkal_f32"]["gflops"] / v["numpy_sgemm_full"]["gflops"]
    res["fraction_f32_vs_chunked"] = v["ntkal_f32"]["gflops"] / v["numpy_sgemm_chunked"]["gflops"]
    res["fraction_f64_vs_dgemm"] = v["ntkal_f64"]["gflops"] / v["numpy_dgemm_chunked"]["gflops"]
    del full_out
    return res


def print_scoring(res: dict) -> None:
    v = res["variants"]
    print(f"\n  d = {res['d']}, M = {res['rows']:,} rows (1 row per structure), best of {res['repeats']}; "
          f"other processes kept {res['other_cores']:.2f} cores busy meanwhile")
    print(f"  {'variant':<44}{'best s':>9}{'median s':>10}{'structures/s':>15}{'GFLOP/s':>10}")
    labels = {"numpy_sgemm_full": "numpy float32 matmul, one (M x d)(d x d) call",
              "numpy_sgemm_chunked": "numpy float32 matmul, 4096-row chunks",
              "ntkal_f32": "ntkal Posterior.variance, float32",
              "numpy_dgemm_chunked": "numpy float64 matmul, 4096-row chunks",
              "ntkal_f64": "ntkal Posterior.variance, float64"}
    for k, lab in labels.items():
        x = v[k]
        print(f"  {lab:<44}{x['best_s']:>9.3f}{x['median_s']:>10.3f}{x['rows_per_s']:>15,.0f}{x['gflops']:>10.1f}")
    print(f"  float32 PV / numpy sgemm: {res['fraction_f32_vs_full']:.1%} of the one-call rate, "
          f"{res['fraction_f32_vs_chunked']:.1%} of the chunked rate -> {res['fraction_f32']:.1%} of the best")
    print(f"  float64 PV / numpy dgemm (chunked): {res['fraction_f64_vs_dgemm']:.1%} "
          "(float64 path = float32->float64 copy + triangular solve, d^2 FLOP per row; GFLOP/s above "
          "count 2 d^2 per row for every variant)")


# ------------------------------------------------------------------ section 2: versus bmdal_reg


def agreement(a: list, b: list) -> dict:
    common = len(set(a) & set(b))
    prefix = 0
    for x, y in zip(a, b):
        if x != y:
            break
        prefix += 1
    return {"common": common, "n": len(a), "same_sequence": list(a) == list(b), "same_prefix": prefix}


def run_selection(spec: dict, env_extra: dict, timeout: float) -> dict:
    argv = [str(pathlib.Path(__file__).resolve()), "--child", json.dumps(spec)]
    with Contention() as cont:
        res = run_child(argv, env_extra, timeout)
    res["other_cores"] = cont.other_cores
    res["wall_incl_startup_s"] = cont.wall
    return res


def fmt_mem(r: dict) -> str:
    if "error" in r:
        return "error"
    return f"{r['peak_mb']:.0f}/{r['work_mb']:.0f}"


def bench_versus_bmdal(args, env_extra: dict) -> list[dict]:
    rows = []
    for family in args.families:
        for n_pool in args.sizes:
            for method in METHODS:
                spec = {"family": family, "n_pool": n_pool, "n_train": args.train, "d": args.dim,
                        "batch": args.batch, "noise_var": args.noise_var, "seed": args.seed,
                        "threads": args.threads, "method": method, "reference64": not args.no_reference64}
                row = {"family": family, "n_pool": n_pool, "method": method}
                row["ntkal"] = run_selection({**spec, "tool": "ntkal"}, env_extra, args.child_timeout)
                if n_pool > args.skip_bmdal_above:
                    row["bmdal"] = {"skipped": f"pool > --skip-bmdal-above {args.skip_bmdal_above}"}
                else:
                    row["bmdal"] = run_selection({**spec, "tool": "bmdal"}, env_extra, args.child_timeout)
                nt, bm = row["ntkal"], row["bmdal"]
                ok_nt, ok_bm = "seconds" in nt, "seconds" in bm
                if ok_nt and ok_bm:
                    row["speedup"] = bm["seconds"] / nt["seconds"]
                    row["work_ratio"] = nt["work_mb"] / bm["work_mb"] if bm["work_mb"] > 0 else float("nan")
                    row["peak_ratio"] = nt["peak_mb"] / bm["peak_mb"]
                    row["agreement"] = agreement(nt["indices"], bm["indices"])
                    row["same_features"] = nt["digest"] == bm["digest"]
                if "indices_f64" in nt:
                    row["ntkal_f32_vs_f64"] = agreement(nt["indices"], nt["indices_f64"])
                    if ok_bm:
                        row["bmdal_f32_vs_ntkal_f64"] = agreement(bm["indices"], nt["indices_f64"])
                rows.append(row)
                print_selection_row(row)
    return rows


def print_selection_row(row: dict) -> None:
    nt, bm = row["ntkal"], row["bmdal"]
    head = f"  [{row['family']:>9}] pool {row['n_pool']:>7,} {row['method']:<10}"
    parts = []
    for name, r in (("ntkal", nt), ("bmdal", bm)):
        if "seconds" in r:
            parts.append(f"{name} {r['seconds']:8.2f} s, peak {r['peak_mb']:6.0f} MB (base {r['baseline_mb']:.0f}, "
                         f"work {r['work_mb']:.0f}), other load {r['other_cores']:.2f} cores")
        else:
            parts.append(f"{name} {r.get('error') or r.get('skipped')}")
    print(head + " | ".join(parts))
    if "agreement" in row:
        a = row["agreement"]
        print(f"  {'':>39}speedup {row['speedup']:.1f}x, working-memory ratio {row['work_ratio']:.3f}, "
              f"total-peak ratio {row['peak_ratio']:.3f}; indices: {a['common']}/{a['n']} common, "
              f"same sequence: {'yes' if a['same_sequence'] else 'no'} (first {a['same_prefix']} equal); "
              f"identical features: {'yes' if row['same_features'] else 'NO'}")
    for key, label in (("ntkal_f32_vs_f64", "ntkal float32"), ("bmdal_f32_vs_ntkal_f64", "bmdal float32")):
        if key in row:
            a = row[key]
            print(f"  {'':>40}{label} vs ntkal float64 reference: {a['common']}/{a['n']} common, "
                  f"first {a['same_prefix']} equal")
    if "posterior_s" in nt:
        print(f"  {'':>40}ntkal breakdown: posterior add + factor {nt['posterior_s']:.2f} s, "
              f"greedy selection {nt['seconds'] - nt['posterior_s']:.2f} s")
    sys.stdout.flush()


# ------------------------------------------------------------------ section 3: summary


def secs(r: dict) -> str:
    return f"{r['seconds']:.2f}" if "seconds" in r else ("skip" if "skipped" in r else "err")


def verdict(ok) -> str:
    return "n/a " if ok is None else ("PASS" if ok else "MISS")


def print_summary(scoring: list[dict], sel_rows: list[dict]) -> list[dict]:
    print("\n== 3. Summary ==")
    if sel_rows:
        print(f"\n  {'family':<10}{'pool':>8} {'method':<10}{'ntkal s':>9}{'bmdal s':>9}{'bmdal/ntkal':>12}"
              f"{'ntkal MB pk/work':>18}{'bmdal MB pk/work':>18}{'work ratio':>11}{'peak ratio':>11}"
              f"{'common':>8}{'same seq':>9}")
        for r in sel_rows:
            nt, bm, ag = r["ntkal"], r["bmdal"], r.get("agreement")
            cells = [
                secs(nt), secs(bm),
                f"{r['speedup']:.1f}x" if "speedup" in r else "-",
                fmt_mem(nt), fmt_mem(bm) if "seconds" in bm else "-",
                f"{r['work_ratio']:.3f}" if "work_ratio" in r else "-",
                f"{r['peak_ratio']:.3f}" if "peak_ratio" in r else "-",
                f"{ag['common']}/{ag['n']}" if ag else "-",
                ("yes" if ag["same_sequence"] else "no") if ag else "-",
            ]
            widths = (9, 9, 12, 18, 18, 11, 11, 8, 9)
            print(f"  {r['family']:<10}{r['n_pool']:>8} {r['method']:<10}"
                  + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
        print("  (MB pk/work = total process peak RSS / peak above the RSS after imports and features were loaded;"
              " ratios = ntkal / bmdal)")
    targets = []
    print("\n  Targets (ARCHITECTURE.md):")
    for s in scoring:
        ok = s["fraction_f32"] >= TARGET_SCORING_FRACTION
        targets.append({"target": f"PV scoring d={s['d']} >= 80% of same-run sgemm", "value": s["fraction_f32"],
                        "pass": ok})
        print(f"  [{verdict(ok)}] PV scoring (float32) at d={s['d']}: {s['fraction_f32']:.1%} of the best same-run "
              f"numpy sgemm rate (target >= {TARGET_SCORING_FRACTION:.0%})")
    families = sorted({r["family"] for r in sel_rows}, key=FAMILIES.index)
    for family in families:
        for method in METHODS:
            r = next((x for x in sel_rows if x["family"] == family and x["method"] == method
                      and x["n_pool"] == TARGET_POOL), None)
            name = {"greedy_pv": "greedy PV", "lcmd": "LCMD with train"}[method]
            want = TARGET_SPEEDUP[method]
            val = r.get("speedup") if r else None
            ok = None if val is None else val >= want
            targets.append({"target": f"{family} {name} >= {want:g}x faster at pool 200k", "value": val, "pass": ok})
            shown = f"{val:.1f}x faster than bmdal_reg" if val is not None else "not measured"
            print(f"  [{verdict(ok)}] [{family}] {name} at pool 200k: {shown} (target >= {want:g}x)")
            for key, label in (("work_ratio", "working memory (peak above baseline)"),
                               ("peak_ratio", "total process peak")):
                val = r.get(key) if r else None
                ok = None if val is None else val <= TARGET_MEMORY_FRACTION
                targets.append({"target": f"{family} {name} {label} <= 1/4 of bmdal at pool 200k", "value": val,
                                "pass": ok})
                shown = f"{val:.3f}" if val is not None else "not measured"
                print(f"  [{verdict(ok)}] [{family}] {name} at pool 200k: {label} ntkal/bmdal = {shown} "
                      f"(target <= 0.25)")
    return targets


# ------------------------------------------------------------------ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: pool 20k only, scoring on 20k rows, 2 repeats")
    p.add_argument("--sizes", default="20000,100000,200000", help="pool sizes for the bmdal comparison")
    p.add_argument("--skip-bmdal-above", type=int, default=10**12, metavar="N",
                   help="run only ntkal for pools larger than N")
    p.add_argument("--families", default=",".join(FAMILIES), help="feature families: isotropic,ntk-like")
    p.add_argument("--train", type=int, default=10_000, help="training rows")
    p.add_argument("--dim", type=int, default=512, help="feature dimension of the bmdal comparison")
    p.add_argument("--batch", type=int, default=256, help="batch size")
    p.add_argument("--noise-var", type=float, default=1e-2,
                   help="sigma^2 (features have mean squared row norm 1)")
    p.add_argument("--score-dims", default="512,1024", help="feature dimensions of the scoring benchmark")
    p.add_argument("--score-rows", type=int, default=200_000, help="rows scored per call")
    p.add_argument("--repeats", type=int, default=3, help="repeats of each scoring variant (best is reported)")
    p.add_argument("--threads", type=int, default=2, help="threads for ntkal, NumPy's BLAS and torch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-scoring", action="store_true")
    p.add_argument("--skip-selection", action="store_true")
    p.add_argument("--omp-wait-policy", choices=("active", "passive"), default=None,
                   help="set OMP_WAIT_POLICY for the engine (scoring and subprocesses; default: leave as is)")
    p.add_argument("--no-reference64", action="store_true",
                   help="skip the untimed float64 ntkal greedy-PV run used to judge index disagreements")
    p.add_argument("--child-timeout", type=float, default=7200.0, help="seconds before a selection run is abandoned")
    p.add_argument("--json", metavar="FILE", help="save all numbers as JSON")
    p.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.sizes = [int(x) for x in args.sizes.split(",") if x]
    args.families = [x for x in args.families.split(",") if x]
    args.score_dims = [int(x) for x in args.score_dims.split(",") if x]
    bad = [f for f in args.families if f not in FAMILIES]
    if bad:
        p.error(f"unknown family {bad}; choose from {FAMILIES}")
    if args.quick:
        args.sizes = [20_000]
        args.score_rows = min(args.score_rows, 20_000)
        args.repeats = min(args.repeats, 2)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return
    if args.omp_wait_policy:  # must be set before libgomp starts (import of ntkal)
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "python"), os.environ.get("PYTHONPATH")]))
    import ntkal

    env_extra = {"PYTHONPATH": os.environ["PYTHONPATH"]}
    if args.omp_wait_policy:
        env_extra["OMP_WAIT_POLICY"] = args.omp_wait_policy
    t_start = time.time()
    info = machine_info()
    print("ntkal engine benchmark" + (" (--quick)" if args.quick else ""))
    print(f"  {time.strftime('%Y-%m-%d %H:%M:%S')}; {info['cpu']}, {info['cores']} cores, {info['mem_gb']} GB RAM, "
          f"Python {info['python']}; load average at start {info['loadavg']}")
    print(f"  commit {info['commit']}{' (with uncommitted changes)' if info['dirty'] else ''}; "
          f"OPENBLAS_CORETYPE={info['openblas_coretype']}")
    print(f"  ntkal {ntkal.build_info()}; threads {args.threads} for ntkal, NumPy BLAS and torch; "
          f"OMP_WAIT_POLICY={env_extra.get('OMP_WAIT_POLICY', os.environ.get('OMP_WAIT_POLICY', 'unset'))}")
    print(f"  numpy {np.__version__} (its own OpenBLAS build; ntkal links scipy-openblas32)")
    out = {"args": {k: v for k, v in vars(args).items() if k != "child"}, "machine": info,
           "build_info": ntkal.build_info(), "scoring": [], "selection": []}

    if not args.skip_scoring:
        print(f"\n== 1. PV scoring throughput: Posterior.variance vs same-run numpy matmul "
              f"(noise_var {args.noise_var:g}, posterior on {args.train:,} isotropic training rows) ==")
        for d in args.score_dims:
            res = bench_scoring(d, args.score_rows, args.train, args.noise_var, args.threads, args.repeats, args.seed)
            print_scoring(res)
            out["scoring"].append(res)
            gc.collect()

    if not args.skip_selection:
        print(f"\n== 2. Selection versus bmdal_reg on identical features (train {args.train:,}, d {args.dim}, "
              f"batch {args.batch}, sigma^2 {args.noise_var:g}, features with mean squared row norm 1) ==")
        print("  ntkal greedy_pv: Posterior(d, noise_var=sigma^2).add(train) + select(method='greedy_pv') "
              "[float32 scoring]; bmdal: " + BMDAL_NAME["greedy_pv"])
        print("  ntkal lcmd: select(method='lcmd', train_rows=train); bmdal: " + BMDAL_NAME["lcmd"]
              + "; both linear kernel on the raw features, bmdal allow_float64=False")
        print("  each run in a fresh subprocess; time = the selection call only (posterior build included); memory: "
              "baseline = RSS after imports + features, peak = kernel high-water mark during the call")
        for family in args.families:
            sample = make_features(family, 20_000, args.dim, args.seed, "pool")
            sp = spectrum_summary(sample)
            desc = ("i.i.d. Gaussian rows" if family == "isotropic" else
                    f"{NTK_CLUSTERS}-cluster Gaussian mixture (train from {NTK_TRAIN_CLUSTERS} of them) in spectral "
                    f"coordinates with singular values ~ k^-{NTK_SPECTRUM_POWER:g}, random rotation, "
                    f"isotropic noise {NTK_NOISE:g} of the energy")
            print(f"  family {family!r}: {desc}; energy in the top direction {sp['top1']:.1%}, top 10 "
                  f"{sp['top10']:.1%}, top 1% ({max(1, args.dim // 100)}) {sp[f'top{max(1, args.dim // 100)}(1%)']:.1%}; "
                  f"mean ||x||^2 {sp['mean_sq_norm']:.3f}")
            out.setdefault("families", {})[family] = {"description": desc, **sp}
            del sample
        out["selection"] = bench_versus_bmdal(args, env_extra)

    out["targets"] = print_summary(out["scoring"], out["selection"])
    end_load = machine_info()["loadavg"]
    others = [s["other_cores"] for s in out["scoring"]] + [
        r[t]["other_cores"] for r in out["selection"] for t in ("ntkal", "bmdal") if "other_cores" in r[t]]
    others = [x for x in others if x == x]
    shared = bool(others) and max(others) > 0.25
    print(f"\n  total {time.time() - t_start:.0f} s; load average at end {end_load}; other processes kept "
          f"{np.mean(others) if others else float('nan'):.2f} cores busy on average (max {max(others) if others else float('nan'):.2f})"
          + (f" -> the machine was SHARED during this run: absolute times are noisy, ratios less so."
             if shared else "."))
    out["shared_machine"] = shared
    out["total_seconds"] = time.time() - t_start
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=float)
        print(f"  numbers saved to {args.json}")


if __name__ == "__main__":
    main()
