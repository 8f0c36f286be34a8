"""Cost of monitoring MD: CHGNet-driven Langevin MD of a 32-atom cell, alone and under ``ntkal.md.Monitor``.

One process, one torch thread, three dynamics on copies of the same cell, interleaved segment by segment
(``--segment`` steps each, ``--rounds`` times): MD alone; MD + Monitor every ``--every`` steps with both
signals (per-atom readout posterior and structure-level joint-NTK PV: joint, k = 4, d = 512); MD + Monitor
with the per-atom signal only (``structure=False``). The model drives the dynamics through
``ntkal.torch.calculator.ModelCalculator`` (forces by autograd of the model's energy); the monitor's
featurizer is ``ntkal.torch.Featurizer(model)`` with its defaults. Building the posteriors from the training
set (EMT-labelled 300 K frames of the same cell) is a one-off, timed apart and not in the ratio. The
ratio is the time of the monitored segments over the MD-alone segments (same step count), by wall clock and by
this process's CPU time (the robust one when other jobs share the machine).

Usage: python bench/md_monitor.py [--rounds 4] [--segment 100] [--every 20] [--train 16] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
sys.path.insert(0, os.path.dirname(__file__))


# wall time, and this process's CPU time (one torch thread: the work itself, less sensitive to other jobs
# on a shared machine)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def cell(seed: int):
    """Cu24Au8: a 2x2x2 cubic fcc Cu cell (32 atoms), 8 random sites Au."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.numbers[rng.choice(len(atoms), size=8, replace=False)] = 79
    return atoms


def training_frames(n: int, seed: int):
    """``n`` EMT-labelled frames of EMT Langevin MD at 300 K (2 fs, 20 fs apart)."""
    from ase.calculators.emt import EMT
    from al.data import _labelled_copy, _run_md

    rng = np.random.default_rng(seed)
    return [_labelled_copy(a, e, f) for a, e, f in _run_md(cell(seed), EMT(), 300, 2.0, 0.02, 50, n, 10, rng)]


def dynamics(model, seed: int, temperature: float):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    from ntkal.torch.calculator import ModelCalculator

    atoms = cell(0)
    atoms.calc = ModelCalculator(model)
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return Langevin(atoms, 2.0 * units.fs, temperature_K=temperature, friction=0.02 / units.fs, fixcm=False,
                        rng=rng)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--segment", type=int, default=100, help="MD steps per segment")
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--train", type=int, default=16, help="training frames")
    p.add_argument("--temperature", type=float, default=600.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch

    import ntkal
    from _common import Contention
    from ntkal.md import Monitor
    from ntkal.torch import Featurizer, models

    torch.set_num_threads(args.threads)
    model = models.chgnet()
    featurizer = Featurizer(model)
    t = time.perf_counter()
    train = training_frames(args.train, seed=1)
    t_label = time.perf_counter() - t
    t = time.perf_counter()
    both = Monitor(featurizer, train, every=args.every)
    t_build = time.perf_counter() - t
    atom_only = Monitor(featurizer, train, every=args.every, structure=False)
    print(f"ntkal {ntkal.__version__}, torch {torch.__version__}, {args.threads} thread(s); CHGNet P "
          f"{featurizer.n_params}; Cu24Au8 (32 atoms), {args.temperature:g} K, 2 fs")
    print(f"training set: {len(train)} EMT frames at 300 K ({t_label:.1f}s to generate); posteriors built in "
          f"{t_build:.1f}s (one-off, not in the ratio); {both!r}")

    runs = {"md": (dynamics(model, 2, args.temperature), None),
            "md+monitor": (dynamics(model, 2, args.temperature), both),
            "md+monitor(atom only)": (dynamics(model, 2, args.temperature), atom_only)}
    for dyn, monitor in runs.values():
        if monitor is not None:
            monitor.attach(dyn)
        dyn.run(2)  # warm-up: first graph, first features
    seconds = {clock: {name: [] for name in runs} for clock in CLOCKS}
    contention = []
    for r in range(args.rounds):
        for name, (dyn, _) in runs.items():
            with Contention() as c:
                start = {clock: fn() for clock, fn in CLOCKS.items()}
                dyn.run(args.segment)
                for clock, fn in CLOCKS.items():
                    seconds[clock][name].append(fn() - start[clock])
            contention.append(c.other_cores)
        print(f"round {r}: " + ", ".join(f"{name} {seconds['wall'][name][-1]:.2f}s wall / "
                                         f"{seconds['cpu'][name][-1]:.2f}s cpu" for name in runs), flush=True)
    steps = args.rounds * args.segment
    print(f"\n{steps} steps each; monitored every {args.every} steps "
          f"({len(both.records)} and {len(atom_only.records)} frames measured, warm-up included)")
    total = {clock: {name: float(np.sum(v)) for name, v in by.items()} for clock, by in seconds.items()}
    for clock in CLOCKS:
        print(f"{clock} clock:")
        for name in runs:
            ratio = total[clock][name] / total[clock]["md"]
            per_round = [a / b for a, b in zip(seconds[clock][name], seconds[clock]["md"])]
            print(f"  {name:24s} {total[clock][name]:8.2f}s  {1e3 * total[clock][name] / steps:7.1f} ms/step  "
                  f"ratio {ratio:.3f} (per round {min(per_round):.3f}-{max(per_round):.3f})")
    print(f"other processes kept {np.mean(contention):.2f} cores busy on average "
          f"(max {np.max(contention):.2f}) of this machine's {os.cpu_count()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "seconds": seconds, "total": total, "steps": steps,
                       "build_seconds": t_build, "train": len(train), "contention": contention,
                       "measured": {"both": len(both.records), "atom_only": len(atom_only.records)}}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
