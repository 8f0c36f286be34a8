"""What a default ``ntkal select`` costs, against the previous CLI defaults, in one run.

Builds 100 Cu/CuAu fcc cells of 30-48 atoms (supercells of the primitive cell, 0-2 vacancies, up to
a third Au, rattled) and 10 training cells, writes them to extxyz,
then times two CLI commands as a user types them, each in its own process tree:

* the defaults (joint features, k = 4 force rows, d = 512) on all 100 pool structures;
* the previous defaults (exact 3N force rows, d = 1024) on 4 of them, with 1 training structure.

Prints and records (``--json``) the wall time, the peak resident memory of the command's process tree
(the largest process: ``ru_maxrss`` of the waited-for children), the pool featurisation seconds the
CLI reports, the commit and whether the tree had uncommitted changes (then the numbers are not the
commit's)."""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import machine_info  # noqa: E402


def make_cells(n: int, seed: int) -> list:
    """n rattled Cu/CuAu fcc supercells of 30-48 atoms: the primitive cell repeated n1 x n2 x n3 times
    (32-48 atoms), 0-2 vacancies, up to a third of the atoms Au."""
    from ase.build import bulk

    shapes = [(i, j, k) for i in range(2, 7) for j in range(i, 7) for k in range(j, 7) if 32 <= i * j * k <= 48]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.61).repeat(shapes[int(rng.integers(len(shapes)))])
        del a[list(rng.choice(len(a), size=int(rng.integers(0, 3)), replace=False))]
        for i in rng.choice(len(a), size=int(rng.integers(0, len(a) // 3 + 1)), replace=False):
            a[int(i)].symbol = "Au"
        a.rattle(0.05, seed=int(rng.integers(1 << 30)))
        out.append(a)
    return out


def run(cmd: list, cwd: str) -> dict:
    """Wall time, peak RSS (MB) and the CLI's pool featurisation seconds of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    found = re.search(r"pool_features ([0-9.]+)\s*s", proc.stdout + proc.stderr)
    return {"command": " ".join(cmd), "wall_s": round(wall, 1),
            # ru_maxrss of the children is a running maximum: it says nothing new when it did not grow
            "peak_rss_mb": round(peak / 1024, 0) if peak > before else None,
            "pool_features_s": float(found.group(1)) if found else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()
    import ase.io

    info = machine_info()
    print(f"ntkal select cost; {info['cpu']}, {info['cores']} cores; commit {info['commit']}"
          f"{' (with uncommitted changes: not the commit numbers)' if info['dirty'] else ''}; "
          f"OPENBLAS_CORETYPE={info['openblas_coretype']} (kernels {info['openblas_kernels']}); "
          f"load average at start {info['loadavg']}", flush=True)
    pool, train = make_cells(100, 0), make_cells(10, 1)
    sizes = [len(a) for a in pool]
    print(f"pool: 100 cells, {min(sizes)}-{max(sizes)} atoms (mean {np.mean(sizes):.0f}); train: 10 cells", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ase.io.write(os.path.join(tmp, "pool.extxyz"), pool)
        ase.io.write(os.path.join(tmp, "train.extxyz"), train)
        four = [a for a in pool if 32 <= len(a) <= 48][:4]
        ase.io.write(os.path.join(tmp, "pool4.extxyz"), four)
        ase.io.write(os.path.join(tmp, "train1.extxyz"), train[:1])
        ntkal = [sys.executable, "-m", "ntkal.cli", "select"]
        for name, structures, cmd in (
                ("defaults now: joint, k = 4 force rows, d = 512", 100,
                 ntkal + ["--pool", "pool.extxyz", "--train", "train.extxyz", "-n", "10", "--out", "sel.extxyz",
                          "--no-progress"]),
                ("previous defaults: joint, exact 3N force rows, d = 1024", 4,
                 ntkal + ["--pool", "pool4.extxyz", "--train", "train1.extxyz", "-n", "2", "--out", "sel4.extxyz",
                          "--no-progress", "--force-rows", "exact", "--dim", "1024"])):
            res = run(cmd, tmp)
            res.update(settings=name, structures=structures, seconds_per_structure=round(res["wall_s"] / structures, 2))
            rows.append(res)
            print(f"  {name}: {structures} structures, wall {res['wall_s']} s "
                  f"({res['seconds_per_structure']} s per structure), pool features {res['pool_features_s']} s, "
                  f"peak RSS {res['peak_rss_mb']} MB", flush=True)
    ratio = rows[1]["seconds_per_structure"] / rows[0]["seconds_per_structure"]
    print(f"per structure: previous defaults / defaults = {ratio:.1f}x; load average at end {os.getloadavg()}")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"machine": info, "rows": rows, "per_structure_ratio": ratio,
                                                       "loadavg_end": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
