"""``ntkal`` command line: select a batch, dump features, or run the demo.

    ntkal select --model chgnet --train train.extxyz --pool pool.extxyz -n 100 --kernel joint --out selected.extxyz
    ntkal features --model chgnet --structures pool.extxyz --kernel joint --out pool_features
    ntkal demo
    ntkal md --model chgnet --train train.extxyz --structure start.extxyz --temperature 300:1500 --steps 2000 \
        --every 20 --collect 0.1 --halt 0.5 --out flagged.extxyz
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from ._validation import as_int, as_positive_float
from .errors import InvalidArgumentError, fail
from .feature_store import is_store
from .options import (CALIBRATE, FORCE_METHODS, KERNELS, LOSS_ENERGY_TERMS, LOSS_FORCE_TERMS, MD_SIGNALS, ON_ERROR,
                      SKETCH_KINDS, STRATA, STRATEGIES)

__all__ = ["main", "build_parser"]


def _default_workers() -> int:
    import importlib.util

    if importlib.util.find_spec("distributed") is None:  # without the [distributed] extra: in this process
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _client(args):
    """The Dask client of --scheduler (None without it)."""
    if getattr(args, "scheduler", None) is None:
        return None
    from .executors import executor_for

    return executor_for(scheduler=args.scheduler, where=f"ntkal {args.command}: --scheduler").client


def _force_rows(text: str):
    if text == "exact":
        return "exact"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'exact' or an integer k; got {text!r}") from None


def _loss(text: str):
    """'W_E,W_F[,ENERGY[,FORCES]]' -> the arguments of ntkal.torch.Loss (checked again by Loss)."""
    parts = [p.strip() for p in text.split(",")]
    usage = (f"expected W_E,W_F[,{'|'.join(LOSS_ENERGY_TERMS)}[,{'|'.join(LOSS_FORCE_TERMS)}]], e.g. 1,10,per_atom,"
             f"per_component; got {text!r}")
    if not 2 <= len(parts) <= 4:
        raise argparse.ArgumentTypeError(usage)
    try:
        weights = [float(parts[0]), float(parts[1])]
    except ValueError:
        raise argparse.ArgumentTypeError(usage) from None
    terms = parts[2:] + [LOSS_ENERGY_TERMS[0], LOSS_FORCE_TERMS[0]][len(parts) - 2:]
    if terms[0] not in LOSS_ENERGY_TERMS or terms[1] not in LOSS_FORCE_TERMS:
        raise argparse.ArgumentTypeError(usage)
    return (*weights, *terms)


def _params(text: str):
    return text if text in ("all", "readout") else [p for p in text.split(",") if p]


def _add_on_error(p: argparse.ArgumentParser) -> None:
    p.add_argument("--on-error", choices=ON_ERROR, default="stop", help="a structure the model cannot take: stop "
                   "(default; it is named by index, finished chunks stay in the cache) or skip it (listed in the "
                   "summary and in OUT.skipped.csv / the scores)")


def _add_model_args(p: argparse.ArgumentParser, *, kernel_default="joint", dim_default=512, rows_default="4"):
    g = p.add_argument_group("model and features")
    g.add_argument("--model", default="chgnet", help="model name: chgnet, mace (with --checkpoint), sevennet "
                   "(SevenNet-0), a SevenNet checkpoint the sevenn wheel ships (7net-0, 7net-0_22may2024, 7net-l3i5, "
                   "7net-mf-0) or toy (default chgnet); ntkal.torch.models.REGISTRY lists them")
    g.add_argument("--checkpoint", default=None, help="a CHGNet or SevenNet checkpoint file instead of the shipped "
                   "weights, or a MACE model file")
    g.add_argument("--modal", default=None, help="fidelity of a multi-fidelity SevenNet (7net-mf-0), e.g. PBE")
    g.add_argument("--allow-unsafe-load", action="store_true", help="--model mace: let the model file run the code it "
                   "stores while loading (MACE files embed e3nn's generated modules); only for a file you trust")
    g.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    g.add_argument("--kernel", default=kernel_default, help=f"one of {', '.join(KERNELS)} (default {kernel_default})")
    g.add_argument("--dim", type=int, default=dim_default, help=f"sketch width d (default {dim_default})")
    g.add_argument("--sketch", default="sparse_sign", help=f"{' or '.join(SKETCH_KINDS)} (default sparse_sign)")
    g.add_argument("--force-rows", type=_force_rows, default=rows_default,
                   help=f"'exact' (3N rows) or k random force combinations (default {rows_default})")
    g.add_argument("--force-method", choices=FORCE_METHODS, default=None,
                   help="force rows by differences of energy gradients (default for k rows: many structures per "
                        "pass) or by exact mixed derivatives, one structure at a time (autograd; default for exact)")
    g.add_argument("--energy-weight", type=float, default=1.0, help="weight of the energy row (default 1)")
    g.add_argument("--force-weight", type=float, default=1.0, help="weight of each force row (default 1)")
    g.add_argument("--loss", type=_loss, default=None, metavar="W_E,W_F[,ENERGY[,FORCES]]",
                   help="weight the rows as the fine-tuning loss W_E*MSE(energy) + W_F*MSE(forces) weights them; "
                        f"ENERGY {' or '.join(LOSS_ENERGY_TERMS)} (default {LOSS_ENERGY_TERMS[0]}), FORCES "
                        f"{' or '.join(LOSS_FORCE_TERMS)} (default {LOSS_FORCE_TERMS[0]}); see ntkal.torch.Loss")
    g.add_argument("--params", type=_params, default=None,
                   help="'all', 'readout' or comma-separated name patterns, e.g. 'mlp.*,readout_norm.*'")
    g.add_argument("--seed", type=int, default=0, help="seed of the sketch, force combinations and selection")
    g.add_argument("--workers", type=int, default=_default_workers(),
                   help="worker processes of a local Dask cluster, 1 thread each (default: available cores, at most "
                   "8; 1 runs in this process)")
    g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on a Dask cluster, e.g. tcp://head:8786 (dask-jobqueue on SLURM); needs --cache on a "
                   "file system every worker reaches")
    g.add_argument("--chunk-size", type=int, default=64, help="structures per feature chunk (default 64)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def _add_select(sub) -> None:
    p = sub.add_parser("select", help="select a batch from a pool", description="Score a pool with the model's NTK "
                       "posterior variance and select a diverse batch; writes the chosen structures with their "
                       "scores in atoms.info (ntkal_index, ntkal_pv, ntkal_score, ntkal_rank).")
    p.add_argument("--train", default=None, help="labelled structures (extxyz or ASE db); omit for none")
    p.add_argument("--pool", required=True, help="candidate structures (extxyz or ASE db)")
    p.add_argument("-n", type=int, required=True, help="batch size")
    p.add_argument("--out", default="selected.extxyz", help="output file (default selected.extxyz)")
    p.add_argument("--strategy", default="pv_lcmd", help=f"one of {', '.join(STRATEGIES)} (default pv_lcmd)")
    p.add_argument("--shortlist", type=int, default=None, help="PV shortlist size (default max(10 n, 100))")
    p.add_argument("--noise-var", type=float, default=1e-3, help="posterior noise variance (default 1e-3)")
    p.add_argument("--intensive", action="store_true", help="rank by PV per row (mixed structure sizes)")
    p.add_argument("--cache", default=None, help="feature store directory (zarr): finished chunks are kept, a rerun "
                   "resumes; reuse it across rounds for the same pool")
    p.add_argument("--strata", default="composition", choices=STRATA, help="composition (default): split the batch "
                   "over element sets in proportion to their candidates; none: one ranking over the whole pool")
    p.add_argument("--calibrate", default="off", choices=CALIBRATE, help="scale PV per element set by the model's "
                   "residuals on the labelled training forces (auto: when every training structure has forces; "
                   "default off)")
    p.add_argument("--target", default=None, help="--strategy variance_reduction: structures whose integrated "
                   "variance to lower (default the pool)")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="picture of the screen: PV distribution with the "
                   "picks marked and a 2-D map (PCA of the distance vectors) of train, pool and picks")
    _add_on_error(p)
    _add_model_args(p)


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="posterior variance of every pool structure, no selection",
                       description="Score every pool structure with the model's NTK posterior variance given the "
                       "training set and write a CSV (index, formula, atoms, PV, PV per row, the structures' "
                       "scalar info keys); for an uncertainty report or your own selection rule.")
    p.add_argument("--train", default=None, help="labelled structures (extxyz or ASE db); omit for none")
    p.add_argument("--pool", required=True, help="structures to score (extxyz or ASE db)")
    p.add_argument("--out", default="scores.csv", help="CSV file (default scores.csv)")
    p.add_argument("--write-info", default=None, metavar="FILE.extxyz",
                   help="also write the pool with ntkal_pv in each structure's info")
    p.add_argument("--noise-var", type=float, default=1e-3, help="posterior noise variance (default 1e-3)")
    p.add_argument("--cache", default=None, help="feature store directory (zarr): finished chunks are kept")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="PV distribution and 2-D map of the pool")
    _add_on_error(p)
    _add_model_args(p)


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="write feature blocks to a feature store", description="Featurize the "
                       "structures into the feature store OUT (a zarr v3 directory, label 'structures'): chunk by "
                       "chunk, resumable; read it with ntkal.feature_store.FeatureStore(OUT).read('structures') or "
                       ".to_dask('structures').")
    p.add_argument("--structures", required=True, help="structures (extxyz or ASE db)")
    p.add_argument("--out", required=True, help="feature store directory")
    _add_on_error(p)
    _add_model_args(p)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on a generated Cu/CuAu pool with pretrained CHGNet",
                       description="Generate Cu/CuAu cells by EMT molecular dynamics at several temperatures, "
                       "featurize them with pretrained CHGNet (joint NTK, k force rows), select a batch, "
                       "write it and print a summary.")
    p.add_argument("-n", type=int, default=10, help="batch size (default 10)")
    p.add_argument("--pool-size", type=int, default=240, help="pool structures to generate (default 240)")
    p.add_argument("--train-size", type=int, default=20, help="training structures (300 K frames, default 20)")
    p.add_argument("--out", default="selected.extxyz", help="output file (default selected.extxyz)")
    p.add_argument("--strategy", default="pv_lcmd", help=f"one of {', '.join(STRATEGIES)} (default pv_lcmd)")
    p.add_argument("--noise-var", type=float, default=1e-3, help="posterior noise variance (default 1e-3)")
    _add_on_error(p)
    _add_model_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ntkal", description="Force-aware NTK active learning for MLIPs: "
                                     "pick which structures to label next.")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for add_arguments, _ in COMMANDS.values():
        add_arguments(sub)
    return parser


def _featurizer(args):
    from .torch import Featurizer, Loss, models

    model = models.from_options(args.model, where=f"ntkal {args.command}", arg="--model", checkpoint=args.checkpoint,
                                modal=args.modal, device=args.device, allow_unsafe_load=args.allow_unsafe_load)
    return Featurizer(model, args.kernel, args.dim, sketch=args.sketch, seed=args.seed, force_rows=args.force_rows,
                      force_method=args.force_method,
                      energy_weight=args.energy_weight, force_weight=args.force_weight, params=args.params,
                      loss=None if args.loss is None else Loss(*args.loss), progress=False)


def _write_selection(path, chosen, result):
    """The chosen structures (pick order) with their scores in atoms.info."""
    from .structures import write_structures

    info = [{"ntkal_index": int(i), "ntkal_pv": float(p), "ntkal_score": float(s), "ntkal_rank": r}
            for r, (i, p, s) in enumerate(zip(result.indices, result.pv, result.scores))]
    write_structures(path, chosen, info=info)


def _sources(args, scratch: str, where: str):
    """(pool, train) of a command, spooled under ``scratch``: each file is parsed once, by the run's check pass;
    the command's later reads (its picks, its report) load the parsed structures back."""
    from .structures import StructureSource

    pool = StructureSource(args.pool, where=where, arg="--pool").spooled(os.path.join(scratch, "pool"))
    train = None if args.train is None else StructureSource(args.train, where=where, arg="--train").spooled(
        os.path.join(scratch, "train"))
    return pool, train


def _write_skipped(out, skipped: list) -> None:
    """OUT.skipped.csv beside the selection: every structure left out with --on-error skip, and why."""
    if not skipped:
        return
    import csv

    path = f"{os.path.splitext(str(out))[0]}.skipped.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "index", "reason"])
        writer.writerows(skipped)
    print(f"wrote the {len(skipped)} skipped structure(s) to {path}")


def _sample_for_plot(args, n_pool: int):
    if not getattr(args, "plot", None):
        return None
    from .plot import MapSample

    return MapSample(n_pool, seed=args.seed)


def cmd_select(args) -> int:
    import tempfile

    from .acquire import acquire

    t0 = time.perf_counter()
    featurizer = _featurizer(args)
    t_model = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="ntkal-select-") as scratch:
        pool, train = _sources(args, scratch, "ntkal select")
        sample = _sample_for_plot(args, len(pool))
        result = acquire(featurizer, train, pool, args.n, strategy=args.strategy, shortlist=args.shortlist,
                         noise_var=args.noise_var, seed=args.seed, chunk_size=args.chunk_size, cache=args.cache,
                         progress=not args.no_progress, intensive=args.intensive, on_features=sample,
                         on_error=args.on_error, strata=args.strata, calibrate=args.calibrate, target=args.target,
                         workers=args.workers, client=_client(args))
        chosen = pool.take(result.indices)
    _write_selection(args.out, chosen, result)
    _write_skipped(args.out, result.skipped)
    print(f"model {featurizer.model.name} loaded in {t_model:.2f}s; kernel {featurizer.kernel}, "
          f"P {featurizer.n_params}, d {featurizer.dim}")
    print(result.summary(max_items=len(result), structures=chosen))
    if sample is not None:
        from .plot import plot_screen
        from .select import distance_vectors
        from ._device import to_numpy

        plot_screen(args.plot, result.pool_pv if result.pool_pv is not None else result.pv,
                    result.indices if result.pool_pv is not None else None, sample,
                    f"ntkal select: {result.strategy}, {len(result)} of {result.n_pool} ({featurizer.model.name}, "
                    f"{featurizer.kernel}, d {featurizer.dim})",
                    to_numpy(distance_vectors(result.features, seed=args.seed)))
        print(f"wrote the picture to {args.plot}")
    print(f"wrote {len(result)} structures to {args.out}")
    return 0


def cmd_score(args) -> int:
    import tempfile

    from .screen import screen

    t0 = time.perf_counter()
    featurizer = _featurizer(args)
    with tempfile.TemporaryDirectory(prefix="ntkal-score-") as scratch:
        pool, train = _sources(args, scratch, "ntkal score")
        sample = _sample_for_plot(args, len(pool))
        found = screen(featurizer, train, pool, shortlist=1, noise_var=args.noise_var, chunk_size=args.chunk_size,
                       cache=args.cache, progress=not args.no_progress, on_features=sample, on_error=args.on_error,
                       workers=args.workers, client=_client(args))
        rows, keys, annotated = _score_rows(args, featurizer, pool, found)
    _write_scores(args, rows, keys, annotated)
    pv = found.pool_pv
    order = np.argsort(-np.nan_to_num(pv, nan=-np.inf), kind="stable")
    if found.skipped:
        print(f"skipped {len(found.skipped)} structure(s) the model could not take (reason in the CSV's skipped column)")
    print(f"scored {len(pv)} structures in {time.perf_counter() - t0:.1f}s ({featurizer.model.name}, {featurizer.kernel}, "
          f"d {featurizer.dim}); stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in found.timings.items()))
    print(f"PV: median {np.nanmedian(pv):.4g}, 90th percentile {np.nanpercentile(pv, 90):.4g}, max {np.nanmax(pv):.4g} "
          f"(pool index {int(order[0])}, {rows[int(order[0])]['formula']})")
    if sample is not None:
        from .plot import plot_screen

        plot_screen(args.plot, pv, None, sample, f"ntkal score: {len(pv)} structures ({featurizer.model.name}, "
                    f"{featurizer.kernel}, d {featurizer.dim})")
        print(f"wrote the picture to {args.plot}")
    print(f"wrote {args.out}" + (f" and {args.write_info}" if args.write_info else ""))
    return 0


def _score_rows(args, featurizer, pool, found):
    """One pass over the (spooled) pool: the CSV rows, their extra columns, and the annotated structures."""
    pv = found.pool_pv
    left_out = {i: reason for label, i, reason in found.skipped if label == "pool"}
    rows, keys, annotated = [], [], []
    for start, chunk in pool.chunks(args.chunk_size):
        for i, atoms in enumerate(chunk):
            extra = {k: v for k, v in atoms.info.items() if isinstance(v, (int, float, str, bool, np.number))}
            keys += [k for k in extra if k not in keys]
            n_rows = featurizer.n_rows(atoms)
            rows.append({"index": start + i, "formula": atoms.get_chemical_formula(), "n_atoms": len(atoms),
                         "pv": float(pv[start + i]), "pv_per_row": float(pv[start + i]) / max(n_rows, 1),
                         "skipped": left_out.get(start + i, ""), **extra})
            if args.write_info:
                annotated.append(atoms)
    return rows, keys, annotated


def _write_scores(args, rows, keys, annotated) -> None:
    import csv

    from .structures import write_structures

    tmp = f"{args.out}.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["index", "formula", "n_atoms", "pv", "pv_per_row", "skipped", *keys])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, args.out)
    if args.write_info:
        write_structures(args.write_info, annotated, info=[{"ntkal_pv": r["pv"]} for r in rows])


def cmd_features(args) -> int:
    from .features import compute_features

    featurizer = _featurizer(args)
    store = compute_features(featurizer, args.structures, args.out, chunk_size=args.chunk_size, workers=args.workers,
                             client=_client(args), progress=not args.no_progress, on_error=args.on_error)
    rows, offsets = store.to_dask("structures")
    print(f"wrote {len(offsets) - 1} structures, {rows.shape[0]} rows x {rows.shape[1]} float32 to the feature store "
          f"{args.out} (kernel {featurizer.kernel}, P {featurizer.n_params})")
    return 0


def cmd_demo(args) -> int:
    from .acquire import acquire

    times = {}
    t = time.perf_counter()
    from .demo_data import demo_structures

    train, pool = demo_structures(args.pool_size, args.train_size, seed=args.seed)
    times["generate pool (EMT MD)"] = time.perf_counter() - t
    t = time.perf_counter()
    featurizer = _featurizer(args)
    times["load model"] = time.perf_counter() - t
    result = acquire(featurizer, train, pool, args.n, strategy=args.strategy, noise_var=args.noise_var,
                     seed=args.seed, chunk_size=args.chunk_size, progress=not args.no_progress, on_error=args.on_error,
                     workers=args.workers)
    _write_selection(args.out, [pool[int(i)] for i in result.indices], result)
    temps = np.array([a.info["temperature_K"] for a in pool], dtype=float)
    fmax = np.array([a.info["emt_max_force"] for a in pool])
    sel = result.indices
    print(f"ntkal demo: {featurizer.model.name} (P {featurizer.n_params}), kernel {featurizer.kernel}, "
          f"force rows {featurizer.force_rows}, d {featurizer.dim}, {args.workers} worker(s)")
    print(f"pool {len(pool)} Cu/CuAu cells (4-8 atoms, EMT MD at {sorted(set(temps.astype(int).tolist()))} K), "
          f"train {len(train)} frames at 300 K, batch n = {args.n}")
    for name, seconds in times.items():
        print(f"  {name:28s} {seconds:7.2f} s")
    for name, seconds in result.timings.items():
        print(f"  {name:28s} {seconds:7.2f} s")
    per = result.timings["pool_features"] / max(1, len(pool))
    print(f"  pool features per structure  {per:7.3f} s")
    print("selected (pool index: temperature, atoms, PV):")
    for i, p in zip(sel, result.pv):
        print(f"  {int(i):4d}: {int(temps[i]):5d} K, {pool[i].get_chemical_formula():>8s}, PV {p:.4g}")
    print(f"mean temperature: selected {temps[sel].mean():.0f} K vs pool {temps.mean():.0f} K; "
          f"mean EMT max |F|: selected {fmax[sel].mean():.2f} vs pool {fmax.mean():.2f} eV/A")
    print(f"wrote {len(sel)} structures to {args.out}")
    return 0


def _add_md(sub) -> None:
    p = sub.add_parser("md", help="Langevin MD with the model, monitored: collect uncertain frames, halt",
                       description="Run Langevin MD with the model as the calculator and measure its uncertainty "
                       "every --every steps (ntkal.md.Monitor): per-atom readout posterior and structure-level "
                       "joint-NTK PV, in eV/A when the training structures carry forces (calibrated on the "
                       "model's residuals), else relative. Frames at or above --collect are appended to --out; "
                       "one at or above --halt stops the run. Then select a batch from them (-n) or print the "
                       "ntkal select command that does.")
    p.add_argument("--train", required=True, help="training structures (extxyz or ASE db; with forces for eV/A) or "
                   "a feature store directory")
    p.add_argument("--structure", required=True, help="start structure (the first frame of the file)")
    p.add_argument("--temperature", default="300", help="T or T_START:T_END in K, a linear ramp (default 300)")
    p.add_argument("--steps", type=int, required=True, help="MD steps")
    p.add_argument("--timestep", type=float, default=1.0, help="time step in fs (default 1)")
    p.add_argument("--friction", type=float, default=0.02, help="Langevin friction in 1/fs (default 0.02)")
    p.add_argument("--every", type=int, default=20, help="measure every N steps (default 20)")
    p.add_argument("--collect", type=float, default=None, help="collect frames at or above this uncertainty")
    p.add_argument("--halt", type=float, default=None, help="stop the run at a frame at or above this uncertainty")
    p.add_argument("--out", default="flagged.extxyz", help="extxyz file collected frames are appended to "
                   "(default flagged.extxyz)")
    p.add_argument("--signal", default=None, choices=MD_SIGNALS, help="frame value: atom (most uncertain atom; "
                   "default when the model has per-atom features) or structure (joint-NTK PV)")
    p.add_argument("--calibrate", default="auto", choices=CALIBRATE, help="eV/A from the training forces: auto "
                   "(default, when every training structure has forces), on, off (relative units)")
    p.add_argument("--noise-var", type=float, default=1e-3, help="posterior noise variance (default 1e-3)")
    p.add_argument("-n", type=int, default=None, help="after the run, select this many collected frames "
                   "(ntkal select's defaults) and write them to --select-out")
    p.add_argument("--select-out", default="selected.extxyz", help="with -n: output file (default selected.extxyz)")
    _add_on_error(p)
    _add_model_args(p)


def cmd_md(args) -> int:
    import ase.io

    from .md import Monitor, parse_temperature, run_langevin
    from .md.collect import FrameAppender
    from .torch.calculator import ModelCalculator

    temperature = parse_temperature(args.temperature)
    if args.collect is None and args.n is not None:
        fail("ntkal md", "-n selects from the collected frames: give --collect")
    for value, option in ((args.steps, "--steps"), (args.every, "--every")):
        as_int(value, "ntkal md", option, low=1)  # before the model loads and the training set is featurized
    for value, option in ((args.timestep, "--timestep"), (args.friction, "--friction")):
        as_positive_float(value, "ntkal md", option)
    if args.collect is not None:
        FrameAppender(args.out, where="ntkal md", arg="--out")  # an extxyz file of whole frames, writable
    try:
        atoms = ase.io.read(args.structure, index=0)
    except Exception as exc:  # noqa: BLE001 - any reader failure, named
        fail("ntkal md", f"--structure {args.structure!r} could not be read: {type(exc).__name__}: "
                         f"{exc}", cause=exc)
    featurizer = _featurizer(args)
    monitor = Monitor(featurizer, args.train, every=args.every, collect=args.collect, halt=args.halt,
                      out=args.out if args.collect is not None else None, calibrate=args.calibrate,
                      signal=args.signal, noise_var=args.noise_var, progress=not args.no_progress)
    print(f"{monitor!r}")
    run = run_langevin(atoms, ModelCalculator(featurizer.base_model), monitor, steps=args.steps,
                       temperature=temperature, timestep_fs=args.timestep, friction_per_fs=args.friction,
                       seed=args.seed, progress=not args.no_progress)
    print(f"ran {run.steps} steps in {run.seconds:.1f}s ({temperature[0]:g} -> {run.final_temperature:.0f} K)")
    print(monitor.summary())
    if run.stopped is not None:  # the model could not go on (e.g. an atom left without neighbours)
        print(f"ntkal md: error: the run stopped at step {run.steps}: {run.stopped}", file=sys.stderr)
    if args.collect is None:
        return 2 if run.stopped is not None else 0
    total = monitor.out_frames
    command = _select_command(args)
    if args.n is None or run.stopped is not None:
        print(f"next: label a batch of the collected frames: {command}")
    elif total < args.n:
        print(f"-n {args.n}: only {total} frames in {args.out}; nothing selected (lower --collect or run longer), "
              f"or later: {command}")
    else:
        _select_collected(args, featurizer, total)
    return 2 if run.stopped is not None else 0


# ntkal md's own options (each takes one value); the rest of its command line is the model's, as select takes it
_MD_ONLY = {"--train", "--structure", "--temperature", "--steps", "--timestep", "--friction", "--every", "--collect",
            "--halt", "--out", "--signal", "--calibrate", "-n", "--select-out"}


def _select_command(args) -> str:
    """The ntkal select command that picks from the collected frames with the model and features this run used."""
    import shlex

    words, tokens = [], args.argv[args.argv.index("md") + 1:]
    skip = False
    for token in tokens:
        if skip:
            skip = False
        elif token in _MD_ONLY:
            skip = True
        elif token.split("=", 1)[0] not in _MD_ONLY:
            words.append(token)
    train = [] if is_store(args.train) else ["--train", args.train]  # select needs training structures
    return shlex.join(["ntkal", "select", *words, *train, "--pool", args.out, "-n", "N", "--out", args.select_out])


def _select_collected(args, featurizer, total: int) -> None:
    """ntkal md -n: select from the collected frames with ntkal select's defaults (a training feature store
    cannot give strata or calibration: then the selection uses the collected frames alone)."""
    import tempfile

    from .acquire import acquire
    from .structures import StructureSource

    with tempfile.TemporaryDirectory(prefix="ntkal-md-") as scratch:
        pool = StructureSource(args.out, where="ntkal md", arg="--out").spooled(os.path.join(scratch, "pool"))
        train = None if is_store(args.train) else StructureSource(
            args.train, where="ntkal md", arg="--train").spooled(os.path.join(scratch, "train"))
        if train is None:
            print(f"-n: --train {args.train} is a feature store: the batch is selected without a training set")
        result = acquire(featurizer, train, pool, args.n, seed=args.seed, progress=not args.no_progress,
                         noise_var=args.noise_var, chunk_size=args.chunk_size, on_error=args.on_error,
                         workers=args.workers, client=_client(args))
        chosen = pool.take(result.indices)
    _write_selection(args.select_out, chosen, result)
    print(result.summary(max_items=len(result), structures=chosen))
    print(f"wrote {len(result)} of the {total} collected frames to {args.select_out}")


# the commands: name -> (the function adding its arguments, the function running it); one line each
COMMANDS = {
    "select": (_add_select, cmd_select),
    "score": (_add_score, cmd_score),
    "features": (_add_features, cmd_features),
    "demo": (_add_demo, cmd_demo),
    "md": (_add_md, cmd_md),
}

# every path a command writes, as (attribute, option, kind): checked before the model loads, so a typo in a
# directory name costs nothing instead of a whole featurization
OUTPUTS = {
    "select": (("out", "--out", "structures"), ("plot", "--plot", "picture"), ("cache", "--cache", "directory")),
    "score": (("out", "--out", "file"), ("write_info", "--write-info", "structures"), ("plot", "--plot", "picture"),
              ("cache", "--cache", "directory")),
    "features": (("out", "--out", "directory"),),
    "demo": (("out", "--out", "structures"),),
    "md": (("out", "--out", "structures"), ("select_out", "--select-out", "structures")),
}


def _check_outputs(args) -> None:
    """Refuse an output path that cannot be written (missing or read-only directory, wrong kind, format)."""
    for attr, option, kind in OUTPUTS[args.command]:
        value = getattr(args, attr, None)
        if value is None:
            continue
        path = os.path.abspath(value)
        if kind == "directory":
            if os.path.exists(path) and not os.path.isdir(path):
                fail(f"argument {option}", f"{value!r} exists and is not a directory")
            parent = path
            while not os.path.exists(parent):  # the store creates missing parents
                parent = os.path.dirname(parent)
        else:
            if os.path.isdir(path):
                fail(f"argument {option}", f"{value!r} is a directory; expected a file name")
            parent = os.path.dirname(path)
            if not os.path.isdir(parent):
                fail(f"argument {option}", f"the directory {os.path.dirname(value) or '.'!r} of "
                                           f"{value!r} does not exist")
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
            fail(f"argument {option}", f"cannot write {value!r}: {parent!r} is not a writable "
                                       "directory")
        if kind == "structures":
            from .structures import check_structure_output

            check_structure_output(path, frames=getattr(args, "n", None), where=f"ntkal {args.command}",
                                   arg=f"argument {option}")
        elif kind == "picture":
            _check_picture(value, option)


def _check_picture(value: str, option: str) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        fail(f"argument {option}", "needs matplotlib (pip install 'ntkal[plot]')")
    suffix = os.path.splitext(value)[1].lower().lstrip(".")
    supported = Figure().canvas.get_supported_filetypes()
    if suffix and suffix not in supported:
        fail(f"argument {option}", f"matplotlib cannot write .{suffix} pictures; use one of "
                                   f"{', '.join('.' + s for s in sorted(supported))}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # ntkal md repeats its model options in a command
    if args.command is None:
        parser.print_help()
        return 2
    if args.no_progress:
        os.environ["NTKAL_NO_PROGRESS"] = "1"
    try:
        _check_outputs(args)
        return COMMANDS[args.command][1](args)
    except InvalidArgumentError as exc:
        message = str(exc).removeprefix(f"ntkal {args.command}: ")
        print(f"ntkal {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
