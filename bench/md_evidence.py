"""Evidence for ``ntkal.md.Monitor``: heated MD with real labels, the monitor's uncertainty against the model's
real force errors, a 3-member committee at its cost, what thresholds keep, and fine-tuning on what was kept.

1. Training set: Langevin MD at 300 K labelled by the reference method, as bench/al does — ASE EMT for two
   32-atom metal cells (Cu32, Cu24Au8; 2 fs), GFN2-xTB (tblite, non-periodic) for two molecules (ethanol,
   acetone; 0.5 fs; boxed with 7 A of vacuum for CHGNet).
2. The model: pretrained CHGNet with fitted per-element energy offsets, fine-tuned on the training set
   (bench/al/model.py, seed 0). Committee: the model + 2 more fine-tuned with seeds 1 and 2.
3. MD driven by the model (``ntkal.torch.calculator.ModelCalculator``), heated linearly from 300 K to
   ``--hot`` K (past the training conditions), two independent trajectories per system: ``watch`` (the
   monitored run) and ``test`` (a shorter one, the test set of step 5). Every ``--every``-th step is kept and
   labelled by the reference method.
4. On every watch frame: ``Monitor`` (built once from the training set, forces present: eV/A) — per-atom
   readout signal and structure-level joint-NTK signal — and the committee's force deviation (DP-GEN's
   ``max_devi_f``: per atom sqrt(mean_k |F_k - <F>|^2)); the model's real error per atom |F - F_ref| and per
   frame (max over atoms, RMS). Spearman correlations, per system and pooled; frames kept by DP-GEN's window
   on the committee (0.05 <= dev < 0.15 eV/A) and by ntkal's ``--collect`` on the monitor.
5. Fine-tuning (pretrained CHGNet again, training set + a batch of ``--batch`` watch frames, seed 0): batch
   picked from the frames ntkal collected by ``ntkal.acquire`` defaults (PV shortlist + LCMD) and at random
   (``--random-seeds``), and by DP-GEN's recipe (random within the committee window, ``--dpgen-seeds``); force
   MAE on the test trajectories. "Training set only" is the model itself (the same fine-tuning).

Stages are cached in ``--run-dir``/{full,quick}_seed{--seed} (labelled frames, checkpoints), so a rerun only redoes what
is missing.

Usage: nice -n 10 python bench/md_evidence.py --run-dir bench/.cache/md_evidence --json bench/results/md_evidence.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

SYSTEMS = {"Cu32": "metal", "Cu24Au8": "metal", "CH3CH2OH": "molecule", "CH3COCH3": "molecule"}
# per domain: time step (fs), steps of the watch and test runs, keep every n steps, 300 K training frames
PROTOCOL = {"metal": dict(dt=2.0, watch=300, test=150, every=10, train=15),
            "molecule": dict(dt=0.5, watch=600, test=300, every=20, train=15)}


# ---- structures and labels --------------------------------------------------------------------------
def start_structure(system: str, seed: int = 0):
    from ase.build import bulk, molecule

    from al.data import _boxed_molecule

    if SYSTEMS[system] == "molecule":
        atoms = molecule(system)
        atoms.pbc = False
        return _boxed_molecule(atoms)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    if system == "Cu24Au8":
        atoms.numbers[np.random.default_rng(seed).choice(len(atoms), size=8, replace=False)] = 79
    return atoms


def reference_calculator(domain: str):
    if domain == "metal":
        from ase.calculators.emt import EMT

        return EMT()
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def label(frame, domain: str):
    """A copy of ``frame`` with the reference energy and forces (molecules labelled non-periodic), or None."""
    from ase import Atoms

    from al.data import _labelled_copy

    work = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell,
                 pbc=frame.pbc if domain == "metal" else False)
    work.calc = reference_calculator(domain)
    try:
        energy, forces = work.get_potential_energy(), work.get_forces()
    except Exception as exc:  # noqa: BLE001 - an SCF that does not converge on a broken geometry
        print(f"    label failed ({type(exc).__name__}: {str(exc)[:80]})", flush=True)
        return None
    return _labelled_copy(frame, energy, forces, **frame.info)


def training_set(seed: int) -> list:
    from al.data import _boxed_molecule, _labelled_copy, _run_md

    frames = []
    streams = iter(np.random.SeedSequence([seed, 21]).spawn(100))
    for system, domain in SYSTEMS.items():
        p = PROTOCOL[domain]
        atoms = start_structure(system)
        if domain == "molecule":
            atoms = atoms.copy()
            atoms.pbc = False  # xTB non-periodic; frames are boxed again for CHGNet
        rng = np.random.default_rng(next(streams))
        spacing = 10 if domain == "metal" else 20
        for snap, energy, forces in _run_md(atoms, reference_calculator(domain), 300, p["dt"], 0.02, 50 if
                                            domain == "metal" else 100, p["train"], spacing, rng):
            snap = _boxed_molecule(snap) if domain == "molecule" else snap
            frames.append(_labelled_copy(snap, energy, forces, system=system, domain=domain, split="train"))
    return frames


# ---- the model and the committee --------------------------------------------------------------------
def members(run_dir: str, train: list, config, seeds=(0, 1, 2)) -> tuple[list, list]:
    """Fine-tuned CHGNet checkpoints (cached) and the seconds each took to train."""
    import torch

    from al import model as M

    paths, seconds = [], []
    graphs, labels = None, None
    for seed in seeds:
        path = os.path.join(run_dir, f"member{seed}.pth.tar")
        timing = path + ".seconds"
        if not (os.path.exists(path) and os.path.exists(timing)):
            if graphs is None:
                graphs, labels = M.to_graphs(M.pretrained(), train), M.Labels(train)
            net, took = M.finetune(graphs, labels, np.arange(len(train)), config, seed=seed)
            with open(timing, "w") as fh:
                fh.write(str(took))
            torch.save({"model": net.as_dict()}, path + ".tmp")
            os.replace(path + ".tmp", path)  # the checkpoint appears whole, after its timing
            print(f"  member {seed}: fine-tuned in {took:.1f}s", flush=True)
        paths.append(path)
        with open(timing) as fh:
            seconds.append(float(fh.read()))
    return paths, seconds


class Keeper:
    """Keeps a copy of the running structure every ``every`` steps (duck-types the monitor for run_langevin),
    with its step and the thermostat's target temperature (the ramp ``temperature`` over ``steps``)."""

    def __init__(self, every: int, steps: int, temperature, **info):
        self.every, self.steps, self.temperature, self.info, self.frames = every, steps, temperature, info, []

    def attach(self, dyn, interval=1):
        self.dyn = dyn
        dyn.attach(self, interval=interval)

    def __call__(self):
        if self.dyn.nsteps % self.every == 0:
            frame = self.dyn.atoms.copy()
            frame.calc = None
            t0, t1 = self.temperature
            frame.info.update(self.info, step=int(self.dyn.nsteps),
                              target_K=t0 + (t1 - t0) * min(self.dyn.nsteps / self.steps, 1.0))
            self.frames.append(frame)


def trajectories(model, split: str, hot: float, seed: int) -> list:
    """Heated MD of every system under the model; kept frames labelled by the reference method."""
    from ntkal.md import run_langevin
    from ntkal.torch.calculator import ModelCalculator

    out = []
    for s, (system, domain) in enumerate(SYSTEMS.items()):
        p = PROTOCOL[domain]
        keeper = Keeper(p["every"], p[split], (300.0, hot), system=system, domain=domain, split=split)
        t = time.perf_counter()
        try:
            run = run_langevin(start_structure(system), ModelCalculator(model), keeper, steps=p[split],
                               temperature=(300.0, hot), timestep_fs=p["dt"], seed=1000 * seed + s, progress=False)
            note = f"{run.steps} steps"
        except Exception as exc:  # noqa: BLE001 - the model's MD can break a molecule apart: keep what ran
            note = f"stopped: {type(exc).__name__}: {str(exc)[:100]}"
        labelled = [f for f in (label(frame, domain) for frame in keeper.frames) if f is not None]
        print(f"  {split} {system}: {note}, {len(labelled)} labelled frames in {time.perf_counter() - t:.0f}s",
              flush=True)
        out += labelled
    return out


def cached_frames(path: str, make) -> list:
    import ase.io

    if os.path.exists(path):
        return ase.io.read(path, index=":")
    frames = make()
    ase.io.write(path + ".tmp.extxyz", frames, format="extxyz")
    os.replace(path + ".tmp.extxyz", path)
    return frames


# ---- step 4: uncertainty against real errors --------------------------------------------------------
def force_errors(predicted: list, frames: list) -> list:
    """Per-atom |F_model - F_ref| (eV/A) of every frame."""
    return [np.linalg.norm(p - f.get_forces(), axis=1) for p, f in zip(predicted, frames)]


def committee_deviation(predictions: list) -> list:
    """DP-GEN's per-atom force deviation sqrt(mean_k |F_k - <F>|^2) for every frame; predictions[k][frame]."""
    out = []
    for i in range(len(predictions[0])):
        stack = np.stack([p[i] for p in predictions])  # (K, N, 3)
        out.append(np.sqrt(np.mean(np.sum((stack - stack.mean(axis=0)) ** 2, axis=2), axis=0)))
    return out


def monitor_frames(monitor, frames: list) -> dict:
    """Both monitor signals on every frame, timed apart (the monitor as it runs: per-atom, then structure)."""
    atom, whole, t_atom, t_whole = [], [], 0.0, 0.0
    for frame in frames:
        plain = frame.copy()
        plain.calc = None
        t = time.perf_counter()
        atom.append(monitor.atom_signal(plain))
        t_atom += time.perf_counter() - t
        t = time.perf_counter()
        whole.append(monitor.structure_signal(plain))
        t_whole += time.perf_counter() - t
    return {"atom": atom, "structure": np.array(whole), "seconds_atom": t_atom / len(frames),
            "seconds_structure": t_whole / len(frames)}


def load_member(path: str):
    import contextlib
    import io

    import torch
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNet.from_dict(torch.load(path, map_location="cpu", weights_only=True)["model"]).eval()


def committee_predictions(paths: list, frames: list) -> tuple[list, float, float]:
    """Forces of every member on every frame; seconds per frame of one member, batched and one at a time."""
    from al import model as M

    preds, batched, single = [], 0.0, 0.0
    for path in paths:
        net = load_member(path)
        t = time.perf_counter()
        graphs = M.to_graphs(net, frames)
        preds.append(M.predict(net, graphs)[1])
        batched += time.perf_counter() - t
        t = time.perf_counter()
        for g in graphs[:8]:
            M.predict(net, [g])
        single += (time.perf_counter() - t) / min(8, len(graphs))
    return preds, batched / len(paths) / len(frames), single / len(paths)


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def correlations(frames: list, signals: dict, errors: list) -> dict:
    """Spearman of each signal against the real error: per frame (max atom, RMS) and per atom; per system and pooled."""
    systems = np.array([f.info["system"] for f in frames])
    frame_max = np.array([e.max() for e in errors])
    frame_rms = np.array([np.sqrt(np.mean(e ** 2)) for e in errors])
    out = {}
    for name, (per_frame, per_atom) in signals.items():
        row = {}
        for group in ["all", *SYSTEMS]:
            mask = np.ones(len(frames), bool) if group == "all" else systems == group
            if mask.sum() < 3:
                continue
            idx = np.flatnonzero(mask)
            entry = {"frame_max": spearman(per_frame[mask], frame_max[mask]),
                     "frame_rms": spearman(per_frame[mask], frame_rms[mask]), "frames": int(mask.sum())}
            if per_atom is not None:
                entry["atom"] = spearman(np.concatenate([per_atom[i] for i in idx]),
                                         np.concatenate([errors[i] for i in idx]))
            row[group] = entry
        out[name] = row
    return out


def scale_check(frames, monitor_out, errors) -> dict:
    """Predicted against real RMS per-atom force error, per system (is the eV/A a real eV/A?)."""
    systems = np.array([f.info["system"] for f in frames])
    out = {}
    for system in SYSTEMS:
        idx = np.flatnonzero(systems == system)
        if idx.size == 0:
            continue
        real = np.sqrt(np.mean(np.concatenate([errors[i] ** 2 for i in idx])))
        atom = np.sqrt(np.mean(np.concatenate([monitor_out["atom"][i] ** 2 for i in idx])))
        whole = np.sqrt(np.mean(monitor_out["structure"][idx] ** 2))
        out[system] = {"real_rms": float(real), "atom_rms": float(atom), "structure_rms": float(whole)}
    return out


def kept(values, low, high=np.inf) -> np.ndarray:
    values = np.asarray(values)
    return np.flatnonzero((values >= low) & (values < high))


def thresholds(frames, frame_values: dict, errors, collect: float) -> dict:
    """Frames each rule keeps, and how many of them the model really gets wrong (max atom error >= 0.15 eV/A)."""
    wrong = np.array([e.max() >= 0.15 for e in errors])
    rules = {"DP-GEN window on committee [0.05, 0.15)": kept(frame_values["committee"], 0.05, 0.15),
             "committee >= 0.15 (DP-GEN discards)": kept(frame_values["committee"], 0.15),
             "committee >= 0.05": kept(frame_values["committee"], 0.05),
             "ntkal atom >= 0.05": kept(frame_values["atom"], 0.05),
             "ntkal atom >= 0.15": kept(frame_values["atom"], 0.15),
             f"ntkal collect: atom >= {collect:g}": kept(frame_values["atom"], collect),
             f"ntkal structure >= {collect:g}": kept(frame_values["structure"], collect)}
    return {name: {"frames": int(idx.size), "of": len(frames), "really_wrong": int(wrong[idx].sum()),
                   "wrong_total": int(wrong.sum()), "indices": idx.tolist()} for name, idx in rules.items()}


# ---- step 5: fine-tuning on a batch of the kept frames ----------------------------------------------
def picks(featurizer, train, watch, collected, committee_window, batch, seeds, dpgen_seeds) -> dict:
    """Watch-frame indices of each arm's batch."""
    import ntkal

    arms = {}
    if len(collected) >= batch:
        pool = [watch[i] for i in collected]
        t = time.perf_counter()
        result = ntkal.acquire(featurizer, train, pool, batch, progress=False)
        arms["ntkal PV+LCMD of collected"] = (np.asarray(collected)[result.indices].tolist(),
                                               time.perf_counter() - t)
        for seed in seeds:
            chosen = np.random.default_rng([seed, 5]).choice(collected, size=batch, replace=False)
            arms[f"random of collected (seed {seed})"] = (sorted(int(i) for i in chosen), 0.0)
    if len(committee_window) >= batch:
        for seed in dpgen_seeds:
            chosen = np.random.default_rng([seed, 6]).choice(committee_window, size=batch, replace=False)
            arms[f"DP-GEN: random of committee window (seed {seed})"] = (sorted(int(i) for i in chosen), 0.0)
    return arms


def finetune_arms(train, watch, test, arms: dict, config, model_path: str) -> dict:
    """Force MAE on the test trajectories after fine-tuning on train + each arm's batch (seed 0 for all); the
    training set alone is the model itself (the same fine-tuning: member 0, read back)."""
    from al import model as M

    frames = train + watch
    net = M.pretrained()
    graphs, labels = M.to_graphs(net, frames), M.Labels(frames)
    test_graphs, test_labels = M.to_graphs(net, test), M.Labels(test)
    domain = np.array([f.info["domain"] for f in test])
    groups = {"metal": domain == "metal", "molecule": domain == "molecule"}
    out = {}
    for name, (batch, pick_seconds) in {"training set only": ([], 0.0), **arms}.items():
        index = np.concatenate([np.arange(len(train)), len(train) + np.asarray(batch, dtype=np.int64)])
        if batch:
            tuned, seconds = M.finetune(graphs, labels, index, config, seed=0)
        else:
            tuned, seconds = load_member(model_path), 0.0
        errs = M.errors(tuned, test_graphs, test_labels, groups)
        out[name] = {"force_mae": errs["force_mae"], "force_mae_metal": errs.get("force_mae_metal"),
                     "force_mae_molecule": errs.get("force_mae_molecule"), "energy_mae": errs["energy_mae"],
                     "batch": [int(i) for i in batch], "pick_seconds": pick_seconds, "finetune_seconds": seconds}
        print(f"  {name:48s} force MAE {errs['force_mae']:.4f} eV/A (metal {errs.get('force_mae_metal', 0):.4f}, "
              f"molecule {errs.get('force_mae_molecule', 0):.4f})", flush=True)
    return out


# ---- driver -------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default=os.path.join(HERE, ".cache", "md_evidence"))
    p.add_argument("--json", default=None)
    p.add_argument("--hot", type=float, default=1500.0, help="end of the heating ramp (K)")
    p.add_argument("--collect", type=float, default=0.15, help="ntkal's collect threshold on the frame value, eV/A")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--random-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--dpgen-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a smoke run: tiny trajectories and fine-tuning")
    args = p.parse_args(argv)
    # cached stages depend on these settings: a smoke run never feeds a full one, nor one seed another
    args.run_dir = os.path.join(args.run_dir, f"{'quick' if args.quick else 'full'}_seed{args.seed}")
    if args.quick:
        for domain in PROTOCOL.values():
            domain.update(watch=domain["every"] * 4, test=domain["every"] * 2, train=3)
        args.batch, args.random_seeds, args.dpgen_seeds = 2, [0], [0]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from ntkal.md import Monitor
    from ntkal.torch import Featurizer, models

    torch.set_num_threads(args.threads)
    os.makedirs(args.run_dir, exist_ok=True)
    t0 = time.perf_counter()
    train = cached_frames(os.path.join(args.run_dir, "train.extxyz"), lambda: training_set(args.seed))
    print(f"training set: {len(train)} frames at 300 K", flush=True)
    from al.model import FinetuneConfig

    config = FinetuneConfig(steps=2, epochs=0.0) if args.quick else FinetuneConfig()
    paths, member_seconds = members(args.run_dir, train, config)
    model = models.chgnet(checkpoint=paths[0])
    featurizer = Featurizer(model)
    watch = cached_frames(os.path.join(args.run_dir, f"watch_{args.hot:g}.extxyz"),
                          lambda: trajectories(model, "watch", args.hot, args.seed))
    test = cached_frames(os.path.join(args.run_dir, f"test_{args.hot:g}.extxyz"),
                         lambda: trajectories(model, "test", args.hot, args.seed + 1))
    t = time.perf_counter()
    monitor = Monitor(featurizer, train)
    build = time.perf_counter() - t
    print(f"{monitor!r} built in {build:.1f}s; {len(watch)} watch and {len(test)} test frames", flush=True)
    mon = monitor_frames(monitor, watch)
    preds, per_frame_batched, per_frame_single = committee_predictions(paths, watch)
    errors = force_errors(preds[0], watch)
    deviation = committee_deviation(preds)
    frame_values = {"atom": np.array([a.max() for a in mon["atom"]]), "structure": mon["structure"],
                    "committee": np.array([d.max() for d in deviation])}
    corr = correlations(watch, {"ntkal atom (readout posterior)": (frame_values["atom"], mon["atom"]),
                                "ntkal structure (joint NTK PV)": (frame_values["structure"], None),
                                "committee deviation (3 members)": (frame_values["committee"], deviation)}, errors)
    report = {"args": vars(args), "train": len(train), "watch": len(watch), "test": len(test),
              "unit": monitor.unit, "monitor_build_seconds": build, "correlations": corr,
              "scale": scale_check(watch, mon, errors),
              "thresholds": thresholds(watch, frame_values, errors, args.collect),
              "cost": {"monitor_atom_s_per_frame": mon["seconds_atom"],
                       "monitor_structure_s_per_frame": mon["seconds_structure"],
                       "committee_extra_training_s": float(sum(member_seconds[1:])),
                       "committee_member_s_per_frame_single": per_frame_single,
                       "committee_member_s_per_frame_batched": per_frame_batched},
              "calibration": {"atom": monitor.atom_signal.calibration.summary(),
                              "structure": monitor.structure_signal.calibration.summary()}}
    print_report(report)
    collected = report["thresholds"][f"ntkal collect: atom >= {args.collect:g}"]["indices"]
    window = report["thresholds"]["DP-GEN window on committee [0.05, 0.15)"]["indices"]
    arms = picks(featurizer, train, watch, collected, window, args.batch, args.random_seeds, args.dpgen_seeds)
    print(f"fine-tuning: training set + {args.batch} of {len(collected)} collected / {len(window)} committee-window "
          f"frames; test: {len(test)} frames", flush=True)
    report["finetune"] = finetune_arms(train, watch, test, arms, config, paths[0])
    report["seconds"] = time.perf_counter() - t0
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    print(f"total {report['seconds'] / 60:.1f} min")
    return 0


def print_report(report: dict) -> None:
    print(f"\nSpearman against the model's real force error ({report['watch']} watch frames):")
    for name, row in report["correlations"].items():
        for group, e in row.items():
            atom = f", per atom {e['atom']:.3f}" if "atom" in e else ""
            print(f"  {name:34s} {group:9s} ({e['frames']:3d} frames): frame max {e['frame_max']:.3f}, frame RMS "
                  f"{e['frame_rms']:.3f}{atom}")
    print("predicted vs real RMS per-atom force error (eV/A):")
    for system, e in report["scale"].items():
        print(f"  {system:9s} real {e['real_rms']:.3f}, atom signal {e['atom_rms']:.3f}, structure signal "
              f"{e['structure_rms']:.3f}")
    print("frames kept (of which the model's max atom error >= 0.15 eV/A):")
    for name, e in report["thresholds"].items():
        print(f"  {name:42s} {e['frames']:4d} of {e['of']} ({e['really_wrong']} of the {e['wrong_total']} wrong)")
    c = report["cost"]
    print(f"cost per frame: monitor per-atom {c['monitor_atom_s_per_frame']:.3f}s + structure "
          f"{c['monitor_structure_s_per_frame']:.3f}s (posteriors built once in {report['monitor_build_seconds']:.1f}s); "
          f"committee: 2 extra members trained in {c['committee_extra_training_s']:.0f}s, then "
          f"{c['committee_member_s_per_frame_single']:.3f}s per member per frame "
          f"({c['committee_member_s_per_frame_batched']:.3f}s batched)", flush=True)


if __name__ == "__main__":
    sys.exit(main())
