"""The cases whose outputs tests/test_pinned_behaviour.py pins: the demo, representative ``acquire`` calls, the
CLI's select and score files, the store scoring path and the engine's shortlist and select.

Each case returns a dict of plain values: integers and strings as they are, floats as ``float.hex`` (so a
comparison is bit for bit and a difference names the entry), file contents and feature rows as sha256
digests. The recorded values live in tests/data/pinned_behaviour.json, written by

    python tests/_pinned_cases.py --write      # only on a commit whose behaviour is the one to pin

Two kinds of case. ``arith_*`` and ``engine_*`` cases use inputs and features made of exact arithmetic
(+, *, / on structures read from tests/data/pinned_structures.extxyz): their bits are the same on every
machine. ``torch_*`` and ``demo_*`` cases featurize with PyTorch models (and the demo generates its
structures by EMT molecular dynamics); their bits depend on the CPU's vector kernels, so the data file
records the environment they were written in (:func:`environment`) and the test compares them bit for bit
there, and elsewhere picks and quotas exactly and floats to 1e-9.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import pathlib
import sys

import numpy as np

DATA = pathlib.Path(__file__).resolve().parent / "data"
STRUCTURES = DATA / "pinned_structures.extxyz"
RECORD = DATA / "pinned_behaviour.json"


# ---- value encoding ------------------------------------------------------------------------------------
def floats(values) -> list:
    """Floats as hex strings (NaN as 'nan'): exact and readable."""
    return ["nan" if np.isnan(v) else float(v).hex() for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def ints(values) -> list:
    return [int(v) for v in np.asarray(values).reshape(-1)]


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def result_values(res) -> dict:
    """Everything an AcquisitionResult decides (not its timings)."""
    out = {"indices": ints(res.indices), "pv": floats(res.pv), "scores": floats(res.scores),
           "strategy": res.strategy, "shortlist": ints(res.shortlist),
           "pool_pv": None if res.pool_pv is None else floats(res.pool_pv),
           "quotas": {str(k): int(v) for k, v in sorted(res.quotas.items())}, "excluded": ints(res.excluded),
           "skipped": [[str(a), int(b), str(c)] for a, b, c in res.skipped], "n_pool": int(res.n_pool),
           "n_train": int(res.n_train),
           "features": None if res.features is None else digest(np.asarray(res.features.rows),
                                                                np.asarray(res.features.offsets))}
    if res.calibration is not None:
        out["calibration"] = {k: float(res.calibration.scale_of(k)).hex() for k in sorted(res.calibration.scales)}
    return out


# ---- inputs --------------------------------------------------------------------------------------------
def structures():
    """(train, pool, target, bad_pool) from the committed file; train carries EMT forces."""
    import ase.io

    frames = ase.io.read(STRUCTURES, index=":")
    groups: dict = {}
    for atoms in frames:
        groups.setdefault(atoms.info["pinned_set"], []).append(atoms)
    return groups["train"], groups["pool"], groups["target"], groups["bad_pool"]


def write_structures_file() -> None:
    """The committed structures: demo cells (EMT MD), a pool that repeats one training structure, a
    target set, and a pool with an element the toy model does not know (Fe)."""
    import ase.io
    from ase import Atoms
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from ntkal.demo_data import demo_structures

    train, pool = demo_structures(n_pool=48, n_train=6, seed=3)
    pool, target = pool[:40], pool[40:]
    pool[17] = train[2].copy()  # already labelled: never a candidate
    bad = [a.copy() for a in pool[:12]]
    bad[5] = Atoms("Fe2Cu2", positions=[[0, 0, 0], [1.8, 0, 0], [0, 1.8, 0], [0, 0, 1.8]], cell=[6, 6, 6], pbc=True)
    out = []
    for name, group in (("train", train), ("pool", pool), ("target", target), ("bad_pool", bad)):
        for atoms in group:
            a = atoms.copy()
            a.info = {"pinned_set": name}
            if name == "train":
                a.calc = EMT()
                forces, energy = a.get_forces(), a.get_potential_energy()
                a.calc = SinglePointCalculator(a, energy=energy, forces=forces)
            out.append(a)
    DATA.mkdir(exist_ok=True)
    ase.io.write(STRUCTURES, out, format="extxyz")


class ArithmeticFeaturizer:
    """Features made of + and * and / in a fixed order (the same bits on every machine).

    Structure with N atoms: 1 + N % 3 rows; row t, column j is ``sum_i u^2 / (1 + u^2)`` with
    ``u = a x_i + b y_i + c z_i + e Z_i / 29`` for dyadic coefficients (a, b, c, e) of (t, j). Elements
    other than H, C, O, Cu, Au are refused by :meth:`check` (like the toy model)."""

    dim = 16
    supported = (1, 6, 8, 29, 79)

    def __init__(self):
        steps = [(-7 + ((37 * k) % 15)) / 8.0 for k in range(3 * self.dim * 4)]
        self.coef = np.array(steps, dtype=np.float64).reshape(3, self.dim, 4)

    def fingerprint(self) -> str:
        return "pinned-arithmetic-featurizer-1"

    def check(self, atoms, *, where="ArithmeticFeaturizer", arg="atoms") -> None:
        from ntkal.errors import InvalidArgumentError

        unknown = sorted(set(int(z) for z in atoms.numbers) - set(self.supported))
        if unknown:
            raise InvalidArgumentError(f"{where}: {arg} contains elements the model does not support: {unknown}")

    def block(self, atoms) -> np.ndarray:
        pos = [[float(v) for v in row] for row in atoms.get_positions()]
        numbers = [int(z) for z in atoms.numbers]
        m = 1 + len(atoms) % 3
        out = np.zeros((m, self.dim), dtype=np.float32)
        for t in range(m):
            for j in range(self.dim):
                a, b, c, e = (float(x) for x in self.coef[t, j])
                acc = 0.0
                for (x, y, z), number in zip(pos, numbers):
                    u = a * x + b * y + c * z + e * number / 29.0
                    acc += u * u / (1.0 + u * u)
                out[t, j] = acc
        return out

    def __call__(self, structures):
        from ntkal import Blocks

        structures = list(structures)
        for i, atoms in enumerate(structures):
            self.check(atoms, where="ArithmeticFeaturizer", arg=f"structures[{i}]")
        return Blocks.from_list([self.block(a) for a in structures])


def toy_featurizer():
    from ntkal.torch import Featurizer, models

    return Featurizer(models.toy(seed=0, hidden=4, n_radial=3), "joint", dim=24, force_rows=3)


class PredictingFeaturizer(ArithmeticFeaturizer):
    """The arithmetic featurizer with an arithmetic force prediction (calibration needs one): atom i's force is
    ``(x_0 - x_i) / 20`` per component, so residuals against the EMT labels differ by structure."""

    def predict_forces(self, atoms):
        pos = [[float(v) for v in row] for row in atoms.get_positions()]
        return np.array([[(pos[0][c] - p[c]) / 20.0 for c in range(3)] for p in pos], dtype=np.float64)


# ---- cases ---------------------------------------------------------------------------------------------
def _acquire(featurizer, train, pool, n, **kw):
    from ntkal import acquire

    return result_values(acquire(featurizer, train, pool, n, chunk_size=8, progress=False, **kw))


def arith_cases() -> dict:
    """acquire on the arithmetic featurizer: every strategy and option that picks differently."""
    train, pool, target, bad = structures()
    f = ArithmeticFeaturizer()
    out = {}
    for strategy in ("pv_lcmd", "greedy_pv", "variance_reduction", "topk", "random"):
        out[f"arith_{strategy}"] = _acquire(f, train, pool, 6, strategy=strategy)
    for strategy in ("pv_lcmd", "greedy_pv", "topk"):
        out[f"arith_{strategy}_no_strata"] = _acquire(f, train, pool, 6, strategy=strategy, strata="none")
    out["arith_vr_target"] = _acquire(f, train, pool, 5, strategy="variance_reduction", target=target)
    out["arith_vr_target_no_strata"] = _acquire(f, train, pool, 5, strategy="variance_reduction", target=target,
                                                strata="none")
    out["arith_intensive_scale"] = _acquire(f, train, pool, 6, intensive=True, scale=True, noise_var=1e-2)
    out["arith_intensive_greedy"] = _acquire(f, train, pool, 6, strategy="greedy_pv", intensive=True)
    out["arith_shortlist_12"] = _acquire(f, train, pool, 4, shortlist=12, seed=5)
    out["arith_no_train"] = _acquire(f, None, pool, 5)
    out["arith_no_train_greedy"] = _acquire(f, [], pool, 5, strategy="greedy_pv", strata="none")
    out["arith_skip"] = _acquire(f, train, bad, 3, on_error="skip")
    out["arith_skip_topk"] = _acquire(f, train, bad, 3, on_error="skip", strategy="topk", strata="none")
    p = PredictingFeaturizer()
    out["arith_calibrate_on"] = _acquire(p, train, pool, 6, calibrate="on")
    out["arith_calibrate_auto_no_strata"] = _acquire(p, train, pool, 6, calibrate="auto", strata="none")
    out["arith_calibrate_greedy"] = _acquire(p, train, pool, 6, calibrate="on", strategy="greedy_pv")
    return out


def arith_cache_cases(tmp) -> dict:
    """A feature store reused: the second run computes nothing and picks the same."""
    from ntkal import acquire

    train, pool, _, _ = structures()
    f = ArithmeticFeaturizer()
    cache = pathlib.Path(tmp) / "cache"
    out = {}
    for run in ("first", "second"):
        res = acquire(f, train, pool, 6, chunk_size=8, progress=False, cache=cache)
        out[f"arith_cache_{run}"] = {**result_values(res), "computed": res.computed_chunks,
                                     "cached": res.cached_chunks}
    res = acquire(f, train, pool, 6, chunk_size=8, progress=False, cache=cache, strategy="greedy_pv")
    out["arith_cache_other_strategy"] = {**result_values(res), "computed": res.computed_chunks,
                                         "cached": res.cached_chunks}
    return out


def arith_store_cases(tmp) -> dict:
    """A pool scored from a feature store (compute_features, then the store scoring path)."""
    import ntkal

    train, pool, _, _ = structures()
    f = ArithmeticFeaturizer()
    store = score_store(f, pool, pathlib.Path(tmp) / "store")
    post = ntkal.Posterior(f.dim, noise_var=1e-3).add(f(train))
    idx, pv, all_pv = shortlist_stored(store, post, 10)
    idx_i, pv_i, _ = shortlist_stored(store, post, 7, intensive=True)
    return {"arith_store_shortlist": {"indices": ints(idx), "pv": floats(pv), "all_pv": floats(all_pv)},
            "arith_store_shortlist_intensive": {"indices": ints(idx_i), "pv": floats(pv_i)}}


def score_store(featurizer, pool, path):
    from ntkal.features import compute_features

    return compute_features(featurizer, pool, path, label="pool", chunk_size=8, progress=False)


def shortlist_stored(store, posterior, k, *, intensive=False):
    """The k highest-PV structures of the store's 'pool' and every PV, through the product's store scoring
    (``ntkal.screen`` of a feature store; ``store_scoring.shortlist_store`` before it)."""
    import ntkal

    found = ntkal.screen(store, posterior, "pool", shortlist=k, intensive=intensive, progress=False)
    idx, pv = found.shortlists["*"]
    return idx, pv, found.pool_pv


def engine_cases() -> dict:
    """ntkal.shortlist (one array and a stream of chunks) and ntkal.select by every method, on exact inputs."""
    import ntkal

    rng = np.random.default_rng(11)
    d = 12
    sizes = rng.integers(1, 5, size=60)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rows = (rng.integers(-64, 65, size=(int(offsets[-1]), d)) / 32.0).astype(np.float32)
    train = (rng.integers(-64, 65, size=(30, d)) / 32.0).astype(np.float32)
    post = ntkal.Posterior(d, noise_var=1e-2).add(train)
    out = {}
    idx, pv = ntkal.shortlist(rows, offsets, post, 15)
    out["engine_shortlist"] = {"indices": ints(idx), "pv": floats(pv)}
    blocks = ntkal.Blocks(rows, offsets)
    chunks = [blocks.take(np.arange(a, min(a + 7, 60))) for a in range(0, 60, 7)]
    pv_out = np.zeros(60)
    idx, pv = ntkal.shortlist(chunks, None, post, 15, intensive=True, pv_out=pv_out)
    out["engine_shortlist_stream"] = {"indices": ints(idx), "pv": floats(pv), "all_pv": floats(pv_out)}
    for method in ("lcmd", "maxdist", "greedy_pv", "topk", "random"):
        sel = ntkal.select(rows, offsets, 8, method=method, posterior=post if method in ("greedy_pv", "topk") else None,
                           train_rows=train, seed=3)
        out[f"engine_select_{method}"] = {"indices": ints(sel.indices), "scores": floats(sel.scores)}
    sel = ntkal.select(rows, offsets, 8, method="lcmd", seed=3)
    out["engine_select_lcmd_cold"] = {"indices": ints(sel.indices), "scores": floats(sel.scores)}
    return out


def torch_cases() -> dict:
    """acquire with the toy PyTorch model's joint features."""
    train, pool, target, _ = structures()
    f = toy_featurizer()
    return {"torch_pv_lcmd": _acquire(f, train, pool, 6),
            "torch_greedy_pv_no_strata": _acquire(f, train, pool, 6, strategy="greedy_pv", strata="none"),
            "torch_calibrate_on": _acquire(f, train, pool, 6, calibrate="on"),
            "torch_vr_target": _acquire(f, train, pool, 5, strategy="variance_reduction", target=target),
            "torch_intensive": _acquire(f, train, pool, 6, intensive=True)}


def torch_workers_cases() -> dict:
    """Two local Dask workers (pickled featurizer, chunks in any order): the in-process picks."""
    train, pool, _, _ = structures()
    return {"torch_workers_2": _acquire(toy_featurizer(), train, pool, 6, workers=2)}


def cli_cases(tmp) -> dict:
    """``ntkal select`` and ``ntkal score`` files on the toy model."""
    import ase.io

    from ntkal.cli import main

    train, pool, _, _ = structures()
    d = pathlib.Path(tmp)
    ase.io.write(d / "train.extxyz", train)
    ase.io.write(d / "pool.extxyz", pool)
    toy = ["--model", "toy", "--dim", "32", "--workers", "1", "--no-progress", "--chunk-size", "8"]
    out = {}
    for name, extra in (("cli_select", []), ("cli_select_greedy", ["--strategy", "greedy_pv", "--strata", "none"])):
        path = d / f"{name}.extxyz"
        assert main(["select", "--train", str(d / "train.extxyz"), "--pool", str(d / "pool.extxyz"), "-n", "5",
                     "--out", str(path)] + extra + toy) == 0
        out[name] = info_values(path)
    csv_path = d / "scores.csv"
    assert main(["score", "--train", str(d / "train.extxyz"), "--pool", str(d / "pool.extxyz"), "--out",
                 str(csv_path)] + toy) == 0
    text = csv_path.read_text()
    table = list(csv.DictReader(io.StringIO(text)))
    out["cli_score"] = {"sha256": hashlib.sha256(text.encode()).hexdigest(),
                        "pv": floats([float(r["pv"]) for r in table]),
                        "pv_per_row": floats([float(r["pv_per_row"]) for r in table])}
    return out


def info_values(path) -> dict:
    import ase.io

    frames = ase.io.read(path, index=":")
    return {"ntkal_index": [int(a.info["ntkal_index"]) for a in frames],
            "ntkal_rank": [int(a.info["ntkal_rank"]) for a in frames],
            "ntkal_pv": floats([a.info["ntkal_pv"] for a in frames]),
            "ntkal_score": floats([a.info["ntkal_score"] for a in frames])}


def demo_cases(tmp, chgnet: bool) -> dict:
    """``ntkal demo`` on its generated data: the toy model, and small pretrained-CHGNet settings."""
    import contextlib
    import os

    from ntkal.cli import main

    out = {}
    runs = [("demo_toy", ["--pool-size", "25", "--train-size", "3", "-n", "4", "--model", "toy", "--dim", "32"])]
    if chgnet:
        runs.append(("demo_chgnet", ["--pool-size", "16", "--train-size", "3", "-n", "4", "--dim", "64",
                                     "--force-rows", "2"]))
    here = os.getcwd()
    for name, argv in runs:
        path = pathlib.Path(tmp) / f"{name}.extxyz"
        try:
            os.chdir(tmp)
            with contextlib.redirect_stdout(io.StringIO()):
                code = main(["demo", "--out", str(path), "--workers", "1", "--no-progress"] + argv)
        finally:
            os.chdir(here)
        assert code == 0
        out[name] = info_values(path)
    return out


def environment() -> dict:
    """What the torch and demo cases' bits depend on besides the code: CPU vector kernels and versions."""
    import platform

    import torch

    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy 1.x
        from numpy.core._multiarray_umath import __cpu_features__
    import ase

    return {"machine": platform.machine(), "torch": torch.__version__, "numpy": np.__version__,
            "ase": ase.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "numpy_cpu_features": sorted(k for k, v in __cpu_features__.items() if v)}


def portable_cases(tmp) -> dict:
    return {**arith_cases(), **arith_cache_cases(tmp), **arith_store_cases(tmp), **engine_cases()}


def environment_cases(tmp, chgnet: bool = True) -> dict:
    return {**torch_cases(), **torch_workers_cases(), **cli_cases(tmp), **demo_cases(tmp, chgnet)}


def main(argv) -> int:
    import tempfile

    if "--write" not in argv:
        print(__doc__)
        return 2
    if "--structures" in argv or not STRUCTURES.exists():
        write_structures_file()
    with tempfile.TemporaryDirectory() as tmp:
        record = {"environment": environment(), "portable": portable_cases(tmp),
                  "environment_dependent": environment_cases(tmp)}
    RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {RECORD}: {len(record['portable'])} portable and {len(record['environment_dependent'])} "
          "environment-dependent cases")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:]))
