"""Results must not depend on the machine: the same inputs give bitwise-identical features, PV,
shortlists, selections (greedy PV, LCMD with the projected nearest-centre route, variance
reduction), calibration and distance vectors under every fixed-order kernel set (AVX-512, AVX2+FMA,
scalar fma), every OpenBLAS core type and 1 or 2 threads, wherever a row sits in its chunk, and
whatever the chunk size of ``acquire``.

Each configuration runs in a fresh interpreter (kernel set, core type and thread pools are fixed at
start-up), prints a sha256 digest of every output, and the digests must all be equal. The same
interpreter digests a NumPy BLAS/LAPACK computation on the same data (the canary): it must change
with the core type, or the run could not have seen a route that used a core-type-dependent BLAS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from _require import require

import ntkal

_PROBE = textwrap.dedent(
    """
    import hashlib, json, os, sys
    import numpy as np
    import ntkal

    ntkal.set_num_threads(int(sys.argv[1]))
    rng = np.random.default_rng(7)
    d = 96
    digest = {}

    def put(name, *arrays):
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a).tobytes())
        digest[name] = h.hexdigest()[:16]

    # sketch: Gaussian (GEMM tiles) and sparse, float32 and float64 Jacobians, in two parameter chunks
    for kind in ("gaussian", "sparse_sign"):
        sk = ntkal.Sketch(3000, d, kind=kind, seed=5)
        for dt in (np.float32, np.float64):
            J = rng.standard_normal((37, 3000)).astype(dt)
            out = sk.project(J[:, :1700])
            sk.project(J[:, 1700:], col_offset=1700, out=out)
            put(f"project_{kind}_{np.dtype(dt).name}", sk.project(J), out)

    # posterior: ill-conditioned training rows (column scales 1e1 .. 1e-3, made without NumPy's BLAS,
    # whose results themselves depend on the core type), ragged pool, both precisions
    train = (rng.standard_normal((700, d)) * np.logspace(1, -3, d)).astype(np.float32)
    sizes = rng.integers(1, 9, size=900)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    pool = rng.standard_normal((int(offsets[-1]), d)).astype(np.float32)
    for precision in ("float32", "float64"):
        post = ntkal.Posterior(d, noise_var=1e-3, precision=precision).add(train[:300]).add(train[300:])
        pv = post.variance(pool, offsets)
        # the same blocks one row further down (a different position in every chunk and tile)
        shifted = post.variance(np.concatenate([pool[:1], pool]), np.concatenate([[0], offsets + 1]))
        assert np.array_equal(pv, shifted[1:]), "PV depends on the row's position"
        put(f"variance_{precision}", pv)
        idx, top = ntkal.shortlist(pool, offsets, post, 64)
        put(f"shortlist_{precision}", idx, top)
        for method in ("greedy_pv", "topk"):
            sel = ntkal.select(pool, offsets, 24, method=method, posterior=post)
            put(f"select_{method}_{precision}", sel.indices, sel.scores)
    post = ntkal.Posterior(d, noise_var=1e-2).add(train)
    for method in ("lcmd", "maxdist"):
        sel = ntkal.select(pool, offsets, 24, method=method, posterior=post, train_rows=train)
        put(f"select_{method}", sel.indices, sel.scores)
    put("distance_vectors", ntkal.distance_vectors(pool, offsets))

    # variance reduction and calibration: block traces on the engine's kernels, NumPy only for sums
    from ntkal.calibration import calibrate, leave_one_out_variance
    from ntkal.posterior import training_gram
    from ntkal.variance_reduction import variance_reduction_greedy

    post = ntkal.Posterior(d, noise_var=1e-3, scale=True).add(train)
    shortlist = ntkal.Blocks(pool, offsets).take(np.arange(0, 900, 9))
    picks, gains = variance_reduction_greedy(shortlist, 12, post, training_gram(pool))
    put("variance_reduction", picks, gains)
    train_offsets = np.arange(0, 701, 7)
    loo = leave_one_out_variance(post, ntkal.Blocks(train, train_offsets))
    cal = calibrate(rng.random(100), loo, ["ab"[i % 2] for i in range(100)], min_count=3)
    put("calibration", loo, np.array([cal.pooled, cal.scales["a"], cal.scales["b"]]))

    # LCMD through the projected nearest-centre route: >= 1024 training vectors of dim >= 128 whose
    # spectrum decays (the route takes a LAPACK eigenbasis, and must still give the same picks)
    big_d = 128
    spectrum = np.logspace(1, -2, big_d)
    big_train = (rng.standard_normal((1100, big_d)) * spectrum).astype(np.float32)
    big_pool = (rng.standard_normal((1500, big_d)) * spectrum).astype(np.float32)
    from ntkal.backends import cpu

    owner, projected = cpu.nearest_train(cpu.blocks(big_pool, None, "probe"), cpu.blocks(big_train, None, "probe"),
                                         "float32")
    assert projected, "the projected nearest-centre route was not taken"
    sel = ntkal.select(big_pool, None, 24, method="lcmd", train_rows=big_train)
    put("projected_nearest_centre", owner, sel.indices, sel.scores)

    # the canary: NumPy's BLAS and LAPACK on the same kind of data (expected to change with the core type)
    x = train.astype(np.float64)
    canary = hashlib.sha256((x.T @ x).tobytes() + np.linalg.eigvalsh(x.T @ x).tobytes()).hexdigest()[:16]

    from threadpoolctl import threadpool_info

    blas = {os.path.basename(i["filepath"]): i.get("architecture") for i in threadpool_info()
            if i.get("internal_api") == "openblas"}
    print(json.dumps({"kernels": ntkal.build_info()["kernels"], "digest": digest, "canary": canary, "blas": blas}))
    """
)


def _supported_kernel_sets() -> list[str]:
    sets = ["scalar"]
    if sys.platform.startswith("linux"):
        flags = open("/proc/cpuinfo").read().split()
        if "fma" in flags and "avx2" in flags:
            sets.append("avx2")
        if "fma" in flags and "avx512f" in flags:
            sets.append("avx512")
    return sets


DIGESTS = 18  # outputs the probe digests; a probe that silently skipped one would show here

# "own": OPENBLAS_CORETYPE unset, the kernel OpenBLAS picks for this processor
CORE_TYPES = ("own", "Haswell", "SkylakeX", "Zen", "Sandybridge", "Prescott")


def _probe(kernels: str | None, coretype: str, threads: int) -> dict:
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("NTKAL_KERNELS", None)
    if coretype != "own":
        env["OPENBLAS_CORETYPE"] = coretype
    if kernels is not None:
        env["NTKAL_KERNELS"] = kernels
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(threads)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"probe crashed (kernels={kernels}, coretype={coretype}):\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if kernels is not None:
        assert out["kernels"] == kernels
    assert len(out["digest"]) == DIGESTS, sorted(out["digest"])
    return out


@pytest.fixture(scope="module")
def core_type_probes() -> dict:
    require("threadpoolctl")
    return {core: _probe(None, core, 2) for core in CORE_TYPES}


def test_core_types_took_effect_and_the_canary_sees_them(core_type_probes):
    """Without this, equal digests could mean OpenBLAS ignored OPENBLAS_CORETYPE: then a route through
    NumPy's BLAS would pass unseen. ntkal's and NumPy's OpenBLAS must report the requested kernels, and
    the NumPy canary must take more than one value across them."""
    archs = {core: sorted(set(p["blas"].values())) for core, p in core_type_probes.items()}
    for core in ("Haswell", "Sandybridge"):  # kernels every x86-64 processor with AVX2 can run
        assert archs[core] == [core], f"OPENBLAS_CORETYPE={core} gave OpenBLAS kernels {archs[core]}"
    assert len({tuple(a) for a in archs.values()}) >= 3, archs
    canaries = {core: p["canary"] for core, p in core_type_probes.items()}
    assert len(set(canaries.values())) >= 2, f"NumPy's BLAS gave the same bits under every core type: {canaries}"


def test_identical_across_core_types(core_type_probes):
    first = core_type_probes["own"]["digest"]
    for core, probe in core_type_probes.items():
        diff = sorted(k for k in first if probe["digest"][k] != first[k])
        assert not diff, f"OPENBLAS_CORETYPE={core} ({probe['blas']}) differs from the machine's own in {diff}"


def test_identical_across_kernel_sets_and_threads(core_type_probes):
    first = core_type_probes["own"]["digest"]
    for kernels in _supported_kernel_sets():
        for threads in (1, 2):
            digest = _probe(kernels, "own", threads)["digest"]
            diff = sorted(k for k in first if digest[k] != first[k])
            assert not diff, f"kernels={kernels}, threads={threads} differs from the default run in {diff}"


def test_unknown_kernel_set_is_a_clear_error():
    env = dict(os.environ, NTKAL_KERNELS="sse9")
    code = "import ntkal, numpy as np; ntkal.Posterior(4).add(np.ones((2, 4), np.float32)).variance(np.ones((1, 4), np.float32))"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "NTKAL_KERNELS" in proc.stderr and "sse9" in proc.stderr


def test_build_info_names_the_kernel_set():
    assert ntkal.build_info()["kernels"] in ("scalar", "avx2", "avx512")


@pytest.mark.parametrize("n", [1, 5, 97, 4099])
def test_pv_of_a_row_does_not_depend_on_its_neighbours(n):
    rng = np.random.default_rng(n)
    d = 64
    post = ntkal.Posterior(d, noise_var=1e-2).add(rng.standard_normal((200, d)).astype(np.float32))
    pool = rng.standard_normal((n, d)).astype(np.float32)
    alone = np.array([post.variance(pool[i:i + 1])[0] for i in range(min(n, 40))])
    together = post.variance(pool)[: len(alone)]
    np.testing.assert_array_equal(alone, together)


@pytest.mark.parametrize("strategy,calibrate,target", [("pv_lcmd", "on", False), ("greedy_pv", "off", False),
                                                       ("variance_reduction", "off", False),
                                                       ("variance_reduction", "on", True)])
def test_acquire_does_not_depend_on_the_chunk_size(strategy, calibrate, target):
    """The training Gram (and variance reduction's target Gram) is one fixed-order pass over the rows in
    structure order: summing per-chunk partial Grams changed PV bits with the chunk size."""
    require("torch")
    require("ase")
    from ase.calculators.singlepoint import SinglePointCalculator
    from _structures import cells

    from ntkal.acquire import acquire
    from ntkal.torch import Featurizer, models

    featurizer = Featurizer(models.toy(seed=0, hidden=4, n_radial=3), "joint", dim=24, force_rows=3)
    train = cells(30, 0)
    for i, a in enumerate(train):  # labelled: the model's forces plus a per-structure offset
        a.calc = SinglePointCalculator(a, energy=0.0, forces=featurizer.predict_forces(a) + 0.01 * (i % 4))
    pool = cells(40, 1)
    kw = dict(strategy=strategy, calibrate=calibrate, target=cells(12, 2) if target else None, progress=False,
              noise_var=1e-3, shortlist=20)
    runs = {size: acquire(featurizer, train, pool, 6, chunk_size=size, **kw) for size in (1, 7, 64)}
    first = runs[1]
    for size, res in runs.items():
        for name in ("pool_pv", "shortlist", "indices", "scores"):
            np.testing.assert_array_equal(getattr(res, name), getattr(first, name), err_msg=f"{name}, chunk {size}")
        if calibrate == "on":
            assert res.calibration.scales == first.calibration.scales
            assert res.calibration.pooled == first.calibration.pooled
