"""Featurization throughput: the batched featurizer against the per-structure loop and the model itself.

One process, frozen code, methods interleaved round by round on the same structures, the same torch
thread count for every method. Per (model, structure set, threads, device), structures per second of:

* ``own E+F``  — the model's own batched energy + force evaluation, graphs built inside the timing
  (CHGNet: ``CHGNet.forward(graphs, task="ef")`` as its ``predict_structure`` runs it; SevenNet/MACE: the
  adapter's batched energies with forces by autograd, which is how their own force heads work);
* ``batched``  — ``Featurizer(model)`` defaults (joint, k = 4 force rows by differences, d = 512), many
  structures per pass;
* ``loop``     — the previous default (one structure at a time, k = 4 exact mixed-derivative rows);
* ``energy batched`` / ``energy loop`` — the energy kernel both ways.

Ratios printed: features over ``own E+F`` (cost per structure in units of the model's own evaluation)
and batched over loop. Peak memory: the RSS high-water mark above the level before the call on a CPU
(heap trimmed first), ``torch.cuda.max_memory_allocated`` on a GPU. ``--steps`` studies the difference step h (row error of forward and central differences against
exact mixed derivatives); ``--accuracy`` adds the estimator check: Gram error of k = 4 rows (loop's exact rows and the
batched difference rows) against the exact joint Gram, and the Spearman correlation of pool PV on
the demo pool between the two.

Usage: python bench/features.py [--device cpu|cuda] [--threads 1 2] [--rounds 3] [--models chgnet]
                                [--sets cells molecules] [--n 16] [--clock wall|cpu] [--accuracy]
                                [--steps 1e-4 3e-4 1e-3] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
sys.path.insert(0, os.path.dirname(__file__))


def structure_set(name: str, n: int, seed: int = 0) -> list:
    """``cells``: 32-atom Cu/CuAu fcc cells (``cells8``: 8-atom ones); ``molecules``: 6-14-atom molecules; ``molecules20``: 20-atom
    C/H/O molecule pairs; all rattled, every structure different."""
    from ase import Atoms
    from ase.build import bulk, molecule

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if name in ("cells", "cells8"):
            a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2) if name == "cells" else (2, 1, 1))
            a.numbers[rng.choice(len(a), size=int(rng.integers(0, len(a) // 4 + 1)), replace=False)] = 79
        elif name == "molecules":
            a = molecule(["CH3CH2OH", "C6H6", "CH3COOH", "CH3COCH3", "C2H6", "trans-butane", "CH3OCH3"][i % 7])
        elif name == "molecules20":
            a = Atoms(molecule("trans-butane")) + Atoms(molecule("CH3OH"))
            a.positions[14:] += [0.0, 4.0, 0.0]
        else:
            raise SystemExit(f"unknown structure set {name!r}")
        a.rattle(0.02 + 0.06 * rng.random(), seed=int(rng.integers(1 << 30)))
        out.append(a)
    return out


def load_model(name: str, device: str):
    from ntkal.torch import models

    return models.sevennet(device=device) if name == "sevennet" else models.load(name, device=device)


def looped(model):
    """The model without its batched evaluation (the featurizer then runs one structure at a time)."""
    from ntkal.torch import FunctionalModel

    return FunctionalModel(model.energy_fn, model.params, frozen=model.frozen, readout=model.readout,
                           supported_numbers=model.supported_numbers, name=model.name)


def own_energy_forces(name: str, model):
    """The model's own batched energy + force evaluation of a list of structures (graphs built inside)."""
    import contextlib
    import io

    import torch

    b = model.batched
    if name == "chgnet":
        net = b.module

        def run(structures):
            graphs = [b.graph(a) for a in structures]
            with contextlib.redirect_stdout(io.StringIO()):
                out = net(graphs, task="ef")
            return out["f"]
        return run

    def run(structures):
        graphs = [b.graph(a) for a in structures]
        pos = [model.positions(a, requires_grad=True) for a in structures]
        with torch.enable_grad():
            energies, _ = b.energies(graphs, pos)
            return torch.autograd.grad(energies.sum(), pos)
    return run


def methods(name: str, model, batch: int):
    from ntkal.torch import Featurizer

    loop = looped(model)
    return {
        "own E+F": own_energy_forces(name, model),
        "batched": Featurizer(model, "joint", batch_size=batch, threads=None),
        "loop": Featurizer(loop, "joint", force_method="autograd", threads=None),
        "energy batched": Featurizer(model, "energy", batch_size=batch, threads=None),
        "energy loop": Featurizer(loop, "energy", threads=None),
    }


def measure(fn, structures, device: str, clock=time.perf_counter):
    """(seconds, peak MiB above the level before the call) of one call."""
    import ctypes

    import torch

    from _common import PeakRSS, rss_mb

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        fn(structures)
        torch.cuda.synchronize()
        return time.perf_counter() - t, torch.cuda.max_memory_allocated() / 2**20
    try:  # hand freed heap back first, so memory an earlier call freed but kept does not hide this one's growth
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    before = rss_mb()
    peak = PeakRSS().start()
    t = clock()
    fn(structures)
    return clock() - t, peak.stop_mb() - before


def throughput(args, name: str, model, set_name: str, threads: int) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    structures = structure_set(set_name, args.n)
    fns = methods(name, model, args.batch)
    loop_share = max(1, args.n // args.loop_fraction)  # the loop is slow: time it on a subset
    for key, fn in fns.items():  # warm-up: graph caches, allocator, the batched pass's one-time check
        fn(structures[:2])
    times = {k: [] for k in fns}
    peaks = {k: 0.0 for k in fns}
    for r in range(args.rounds):
        order = list(fns)[r % len(fns):] + list(fns)[:r % len(fns)]  # rotate: no method always first
        for key in order:
            subset = structures[:loop_share] if "loop" in key else structures
            clock = time.process_time if args.clock == "cpu" else time.perf_counter
            seconds, peak = measure(fns[key], subset, args.device, clock)
            times[key].append(seconds / len(subset))
            peaks[key] = max(peaks[key], peak)
    per = {k: float(np.median(v)) for k, v in times.items()}
    rows = []
    for key in fns:
        rows.append({"model": name, "set": set_name, "threads": threads, "device": args.device, "method": key,
                     "s_per_structure": per[key], "structures_per_s": 1.0 / per[key],
                     "x_own": per[key] / per["own E+F"], "peak_mib": peaks[key],
                     "n": loop_share if "loop" in key else args.n})
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"\n{'model':9s} {'set':11s} {'thr':>3s} {'method':15s} {'str/s':>8s} {'s/str':>8s} {'x own E+F':>9s} "
          f"{'peak MiB':>9s} {'n':>4s}")
    for r in rows:
        print(f"{r['model']:9s} {r['set']:11s} {r['threads']:3d} {r['method']:15s} {r['structures_per_s']:8.2f} "
              f"{r['s_per_structure']:8.4f} {r['x_own']:9.2f} {r['peak_mib']:9.0f} {r['n']:4d}")
    by = {(r["model"], r["set"], r["threads"], r["method"]): r for r in rows}
    for (m, s, t, method), r in by.items():
        if method in ("batched", "energy batched"):
            loop = by[(m, s, t, method.replace("batched", "loop"))]
            print(f"  {m} {s} {t} thread(s): {method} {loop['s_per_structure'] / r['s_per_structure']:.2f}x the loop")


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def accuracy(args) -> dict:
    """Gram error against exact joint rows (small structures) and PV rank agreement on the demo pool."""
    import ntkal
    from ntkal.demo_data import demo_structures
    from ntkal.torch import Featurizer, models

    model = models.chgnet()
    loop = looped(model)
    small = structure_set("molecules", 4, seed=1) + structure_set("cells8", 4, seed=2)
    exact = Featurizer(loop, "joint", force_rows="exact")  # energy row + all 3N force rows
    ests = {"k=4 exact rows (loop)": Featurizer(loop, "joint", force_method="autograd"),
            "k=4 difference rows (batched)": Featurizer(model, "joint")}
    gram = lambda blocks: sum(b.astype(np.float64).T @ b.astype(np.float64) for b in blocks)  # noqa: E731
    target = gram([exact.features(a) for a in small])
    out = {"gram_error": {}}
    for key, f in ests.items():
        g = gram([f.features(a) for a in small])
        out["gram_error"][key] = float(np.linalg.norm(g - target) / np.linalg.norm(target))
    train, pool = demo_structures()
    pv = {}
    for key, f in ests.items():
        post = ntkal.Posterior(f.dim, noise_var=1e-3, precision="float64").add(f(train))
        pv[key] = np.asarray(post.variance(f(pool)))
    a, b = pv.values()
    out["pv_spearman_demo_pool"] = spearman(a, b)
    out["pv_median_rel_diff"] = float(np.median(np.abs(a - b) / a))
    print("\naccuracy (CHGNet): Gram error against the exact joint Gram (energy + 3N force rows) of 4 molecules "
          "and 4 Cu/CuAu 8-atom cells")
    for key, v in out["gram_error"].items():
        print(f"  {key:32s} {v:.4f}")
    print(f"  pool PV on the demo pool (train 20, pool 240): Spearman(loop exact rows, batched difference rows) = "
          f"{out['pv_spearman_demo_pool']:.4f}, median relative PV difference {out['pv_median_rel_diff']:.4f}")
    return out


def difference_study(args) -> dict:
    """Row error of forward and central differences of per-structure energy gradients against exact mixed
    derivatives (the loop's autograd rows, the same k = 4 directions), for several steps h (CHGNet, float32)."""
    import torch

    from ntkal.torch import Featurizer, models
    from ntkal.torch.batched import GradientPlan, per_structure_gradients
    from ntkal.torch.jacobian import displaced

    model = models.chgnet()
    b, plan = model.batched, GradientPlan.build(model.batched, model.names)
    structures = structure_set("cells", 2, seed=3) + structure_set("molecules", 3, seed=4) + slabs()
    exact = Featurizer(looped(model), "force", force_method="autograd")
    rows = [exact.jacobian(a).astype(np.float64) for a in structures]
    graphs, r0 = [b.graph(a) for a in structures], [a.get_positions() for a in structures]
    directions = [exact.rowspec.directions(a) for a in structures]

    def grads(positions):
        _, g = per_structure_gradients(b, plan, graphs, [torch.as_tensor(p, dtype=model.dtype) for p in positions])
        return [np.concatenate([g[n][s].reshape(-1).double().numpy() if n in g else np.zeros(model.params[n].numel())
                                for n in model.names]) for s in range(len(structures))]

    base = grads(r0)
    out = {}
    for h in args.steps:
        one, two = np.zeros((len(structures), 4)), np.zeros((len(structures), 4))
        for j in range(4):
            plus = grads([displaced(p, d[j], h) for p, d in zip(r0, directions)])
            minus = grads([displaced(p, d[j], -h) for p, d in zip(r0, directions)])
            for s, e in enumerate(rows):
                norm = np.linalg.norm(e[j])
                one[s, j] = np.linalg.norm(-(plus[s] - base[s]) / h - e[j]) / norm
                two[s, j] = np.linalg.norm(-(plus[s] - minus[s]) / (2 * h) - e[j]) / norm
        out[str(h)] = {"forward": one.tolist(), "central": two.tolist()}
    names = [a.get_chemical_formula() for a in structures]
    print(f"\nforce-row error of differences against exact mixed derivatives (CHGNet float32, k = 4 rows of each of "
          f"{', '.join(names)}): median / max over rows")
    for h, e in out.items():
        f, c = np.array(e["forward"]), np.array(e["central"])
        print(f"  h = {float(h):7.1e}  forward {np.median(f):.4f} / {f.max():.4f}   central {np.median(c):.4f} / {c.max():.4f}")
    return {"structures": names, "errors": out}


def slabs() -> list:
    """Two adsorbate-on-slab structures: H atop Cu(111) 2.9 A up, O in a Pt(111) fcc hollow."""
    from ase.build import add_adsorbate, fcc111

    cu = fcc111("Cu", size=(2, 2, 3), vacuum=7.0)
    add_adsorbate(cu, "H", 2.9, "ontop")
    pt = fcc111("Pt", size=(2, 2, 3), vacuum=7.0)
    add_adsorbate(pt, "O", 1.9, "fcc")
    pt.rattle(0.05, seed=4)
    return [cu, pt]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", nargs="+", default=["chgnet"])
    ap.add_argument("--sets", nargs="*", default=["cells", "molecules"], help="structure sets to time (none: skip)")
    ap.add_argument("--n", type=int, default=16, help="structures per set (the loop times n / loop-fraction)")
    ap.add_argument("--loop-fraction", type=int, default=4)
    ap.add_argument("--batch", type=int, default=None, help="Featurizer batch_size (default: the featurizer's)")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="cpu: this process's CPU seconds (one thread on a shared machine: other jobs do not count)")
    ap.add_argument("--accuracy", action="store_true")
    ap.add_argument("--steps", type=float, nargs="*", default=[],
                    help="difference steps h to study against exact mixed derivatives (e.g. 1e-4 3e-4 1e-3)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch  # noqa: F401

    from _common import machine_info

    info = machine_info()
    print(f"# bench/features.py on {info['cpu']} ({info['cores']} cores), device {args.device}, commit {info['commit']}"
          f"{' (with uncommitted changes)' if info['dirty'] else ''}, load average {info['loadavg']}, {args.clock} clock")
    rows = []
    for name in args.models:
        model = load_model(name, args.device)
        for set_name in args.sets:
            for threads in args.threads:
                rows += throughput(args, name, model, set_name, threads)
    print_rows(rows)
    result = {"machine": info, "args": vars(args), "rows": rows}
    if args.accuracy:
        result["accuracy"] = accuracy(args)
    if args.steps:
        result["differences"] = difference_study(args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
