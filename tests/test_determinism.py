"""Results must not depend on the machine: the same inputs give bitwise-identical features, PV,
shortlists, selections and distance vectors under every fixed-order kernel set (AVX-512, AVX2+FMA,
scalar fma), every OpenBLAS core type and 1 or 2 threads, and wherever a row sits in its chunk.

Each configuration runs in a fresh interpreter (kernel set, core type and thread pools are fixed at
start-up), prints a digest of every output, and the digests must all be equal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import ntkal

_PROBE = textwrap.dedent(
    """
    import hashlib, json, sys
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
    print(json.dumps({"kernels": ntkal.build_info()["kernels"], "digest": digest}))
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


def _probe(kernels: str | None, coretype: str | None, threads: int) -> dict:
    env = dict(os.environ)
    for key, value in (("NTKAL_KERNELS", kernels), ("OPENBLAS_CORETYPE", coretype)):
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(threads)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"probe crashed (kernels={kernels}, coretype={coretype}):\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if kernels is not None:
        assert out["kernels"] == kernels
    return out["digest"]


def test_identical_across_kernel_sets_core_types_and_threads():
    configs = [(k, None, t) for k in _supported_kernel_sets() for t in (1, 2)]
    configs += [(None, core, 2) for core in ("Haswell", "SkylakeX", "Zen", "Sandybridge", "Prescott")]
    digests = {cfg: _probe(*cfg) for cfg in configs}
    first_cfg, first = next(iter(digests.items()))
    assert len(first) == 15  # every output above was digested
    for cfg, dg in digests.items():
        diff = sorted(k for k in first if dg.get(k) != first[k])
        assert not diff, f"{cfg} differs from {first_cfg} in {diff}"


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
