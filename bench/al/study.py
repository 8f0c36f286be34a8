"""Active-learning study: which pool structures to label next when fine-tuning CHGNet.

Data: the scenario's labelled frames (bench/al/scenarios.py, cached under --cache): ``mixed``, MD
frames of small molecules labelled with GFN2-xTB and Cu/Cu-Au cells labelled with EMT; ``copper``;
``adsorbates``, adsorbates on Cu and Pd slabs labelled with GFN1-xTB. Model: pretrained CHGNet with fitted
per-element energy offsets, fine-tuned from the pretrained weights every round.
Strategies: random, committee, max_force, embedding, energy_ntk, force_ntk, joint_ntk,
joint_ntk_greedy, and the product's own pipeline acq_* (bench/al/strategies.py). A pool-shift study repeats a few strategies on
pools biased towards one group (default: 300 K frames) by a mixing coefficient.

Usage (the study installed with ``pip install -e bench/al``, or from bench/ without installing):
    python -m al --quick --out r.json
    nice -n 10 python -m al --out bench/results/al_full.json

Prints per-strategy final errors, the label fraction each strategy needs to reach random's
final force MAE, and its acquisition cost against the committee's, all from this one run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

from . import features as F
from . import pools, report, runner
from .data import CACHE_DIR, load_dataset
from .loop import LoopConfig
from .model import FinetuneConfig
from .scenarios import SCENARIOS, recipe as scenario_recipe
from .strategies import ACQUIRE_KEYS, KERNEL_OF, PRODUCT_STRATEGIES, STRATEGIES


# quick: one seed for the main study, smaller pool and fewer rounds; full: 3 seeds
PRESETS = {
    "quick": dict(seeds=[0], pool_size=240, n_initial=16, batch=16, rounds=3, steps=32, epochs=8.0,
                  committee_size=3, shift_alphas=["natural", 0.8], shift_seeds=[0, 1], shift_rounds=2,
                  shift_pool_size=90, shift_strategies=["random", "joint_ntk"]),
    "full": dict(seeds=[0, 1, 2], pool_size=None, n_initial=20, batch=20, rounds=4, steps=32, epochs=8.0,
                 committee_size=3, shift_alphas=["natural", 0.85], shift_seeds=[0, 1, 2], shift_rounds=2,
                 shift_pool_size=200, shift_strategies=["random", "joint_ntk"]),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, pool 240, 3 rounds of 16 labels (< 20 min on 2 cores)")
    p.add_argument("--out", default="al_results.json", help="JSON output; PNG plots are written next to it")
    p.add_argument("--cache", default=CACHE_DIR, help="labelled-data cache directory")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--scenario", default="mixed", choices=sorted(SCENARIOS),
                   help="the labelled data (bench/al/scenarios.py): mixed: molecules (GFN2-xTB) and metals (EMT); "
                   "copper: single domain, 70 %% redundant 300 K bulk frames plus hot, vacancy, surface and strained "
                   "Cu (EMT); adsorbates: H, O, OH, CO on Cu and Pd slabs, errors per adsorbate@facet (GFN1-xTB; "
                   "generate it first with python -m al.adsorbates --workers N)")
    p.add_argument("--domain", default="all", choices=("all", "molecule", "metal"),
                   help="restrict pool and test sets to molecules (GFN2-xTB) or metals (EMT)")
    p.add_argument("--pool-size", type=int, help="subsample the pool (stratified); default all (full)")
    p.add_argument("--n-initial", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--steps", type=int, help="minimum fine-tuning optimiser steps per round (batch 8)")
    p.add_argument("--epochs", type=float, help="fine-tuning passes over the training set per round "
                                                 "(steps = max(--steps, epochs x labels / 8))")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (cosine decay)")
    p.add_argument("--committee-size", type=int)
    p.add_argument("--dim", type=int, default=512, help="NTK sketch width d")
    p.add_argument("--force-rows", type=int, default=4, help="k random force combinations per structure")
    p.add_argument("--energy-weight", type=float, default=1.0, help="joint NTK: energy-row weight")
    p.add_argument("--noise-var", type=float, default=1e-2, help="posterior sigma^2 (features scaled)")
    p.add_argument("--shortlist-factor", type=int, default=4, help="PV shortlist = factor x batch")
    p.add_argument("--extensive", action="store_true", help="rank by total PV, not PV per row")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:STRATEGY:KEY=VALUE[,KEY=VALUE]",
                   help="extra kernel-strategy setting in the main study, e.g. "
                        "joint_sl10:joint_ntk:shortlist_factor=10 (keys: noise_var, shortlist_factor, "
                        "intensive, normalize, energy_weight, stratify)")
    p.add_argument("--shift-group", default="temperature=300", help="KEY=VALUE of frame.info to bias towards")
    p.add_argument("--shift-alphas", nargs="+", help="group shares of the biased pool ('natural' = unbiased)")
    p.add_argument("--shift-seeds", type=int, nargs="+")
    p.add_argument("--shift-pool-size", type=int)
    p.add_argument("--shift-rounds", type=int)
    p.add_argument("--shift-strategies", nargs="+", choices=STRATEGIES)
    p.add_argument("--shift-variant", action="append", default=[], metavar="LABEL:STRATEGY:KEY=VALUE[,KEY=VALUE]",
                   help="extra strategy setting in the pool-shift study (syntax of --variant)")
    p.add_argument("--no-pool-shift", action="store_true")
    p.add_argument("--work-dir", help="where finished jobs are kept; a rerun with the same settings "
                                        "resumes from it (default: next to --out)")
    p.add_argument("--keep-work", action="store_true", help="keep the work directory after success")
    p.add_argument("--plot-only", metavar="JSON", help="redraw the PNGs of an existing result file, print "
                                                       "its summary and Markdown tables, and exit")
    p.add_argument("--workers", type=int, default=2, help="worker processes (1 torch thread each)")
    args = p.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.shift_alphas = [a if a == "natural" else float(a) for a in args.shift_alphas]
    args.variants = [parse_variant(v) for v in args.variant]
    args.shift_variants = [parse_variant(v) for v in args.shift_variant]
    return args


VARIANT_KEYS = ("noise_var", "shortlist_factor", "intensive", "normalize", "energy_weight", "stratify")


def parse_variant(text: str):
    """'label:strategy:k=v,k=v' -> (label, strategy, {k: v}) with numbers and booleans parsed.

    For acq_* strategies the keys are ntkal.acquire's (strategy, strata, calibrate, noise_var, scale,
    intensive, shortlist) and go to it as {"acquire": {...}}."""
    label, strategy, *rest = text.split(":")
    if strategy not in KERNEL_OF and strategy not in PRODUCT_STRATEGIES:
        raise SystemExit(f"--variant {text!r}: strategy must be one of {sorted({*KERNEL_OF, *PRODUCT_STRATEGIES})}")
    product = strategy in PRODUCT_STRATEGIES
    overrides = {}
    for item in filter(None, (rest[0] if rest else "").split(",")):
        key, value = item.split("=", 1)
        if key not in (ACQUIRE_KEYS if product else VARIANT_KEYS):
            raise SystemExit(f"--variant {text!r}: unknown key {key!r}")
        if value.lower() in ("true", "false"):
            overrides[key] = value.lower() == "true"
        elif key in ("shortlist_factor", "shortlist"):
            overrides[key] = int(value)
        else:
            try:
                overrides[key] = float(value)
            except ValueError:
                overrides[key] = value
    return label, strategy, ({"acquire": overrides} if product else overrides)


def replot(path: str) -> dict:
    """Redraw the PNGs of a result file and print its summary; returns the payload."""
    with open(path) as fh:
        payload = json.load(fh)
    stem, cfg = os.path.splitext(path)[0], payload["config"]
    title = (f"CHGNet fine-tuning, {'quick' if cfg['quick'] else 'full'} run, "
             f"{cfg.get('domain', 'all')} structures, seeds {cfg['seeds']}")
    report.plot_curves(stem + "_curves.png", payload["strategies"], title)
    if "pool_shift" in payload:
        report.plot_pool_shift(stem + "_pool_shift.png", payload["pool_shift"],
                               f"pool biased towards {payload['pool_shift']['group']}")
    print_summary(payload)
    return payload


# arguments that change no finished job's numbers (a resumed run may change them): output
# places, worker count, and the strategy lists, which only add or drop jobs (every job
# checks its own strategy arguments when it is resumed)
NOT_IDENTITY = ("out", "work_dir", "keep_work", "plot_only", "workers", "cache",
                "strategies", "variant", "variants", "shift_strategies", "shift_variant", "shift_variants")


def open_work_dir(args) -> str:
    """The run directory: created, or reused when it holds a run with the same settings."""
    run_dir = args.work_dir or os.path.splitext(os.path.abspath(args.out))[0] + "_work"
    identity = json.loads(json.dumps({k: v for k, v in vars(args).items() if k not in NOT_IDENTITY},
                                     sort_keys=True, default=str))
    stamp = os.path.join(run_dir, "settings.json")
    if os.path.exists(stamp):
        with open(stamp) as fh:
            saved = {k: v for k, v in json.load(fh).items() if k not in NOT_IDENTITY}
            if saved != identity:
                raise SystemExit(f"--work-dir {run_dir!r} holds an interrupted run with other settings; "
                                 "delete it or pass another --work-dir")
        done = len(os.listdir(os.path.join(run_dir, "jobs"))) if os.path.isdir(os.path.join(run_dir, "jobs")) else 0
        print(f"resuming the run in {run_dir} ({done} finished jobs)", flush=True)
        return run_dir
    os.makedirs(run_dir, exist_ok=True)
    with open(stamp + ".tmp", "w") as fh:
        json.dump(identity, fh, sort_keys=True)
    os.replace(stamp + ".tmp", stamp)
    return run_dir


def featurise(args, kernels, frames, master, run_dir) -> dict:
    """Pool features of every kernel, computed once per run directory; {kernel: seconds}."""
    path = lambda name: os.path.join(run_dir, name)  # noqa: E731
    missing = [k for k in kernels if not os.path.exists(path(f"features_{k}.npz"))]
    if "joint_loss" in missing and os.path.exists(path("features_joint.npz")):  # derived, exactly, from joint
        import ntkal

        unit = ntkal.Blocks.load(path("features_joint.npz"))
        if args.energy_weight != 1.0:
            raise SystemExit("joint_loss is derived from unit-weight joint features; drop --energy-weight")
        F.loss_matched(unit, frames).save(path("features_joint_loss.tmp.npz"))
        os.replace(path("features_joint_loss.tmp.npz"), path("features_joint_loss.npz"))
        np.save(path("features_joint_loss_seconds.npy"), np.load(path("features_joint_seconds.npy")))
        missing.remove("joint_loss")
    if missing:
        print(f"featurising {len(frames)} pool structures with pretrained CHGNet: {missing}", flush=True)
        # one process of one thread, as every strategy's acquisition runs: the seconds are charged to the
        # kernel strategies and compared with the committee's (featurized on 2 workers, they were about halved)
        cfg = F.FeatureConfig(dim=args.dim, force_rows=args.force_rows, energy_weight=args.energy_weight,
                              seed=args.data_seed, workers=1)
        np.save(path("features_index.npy"), master)
        for kernel, (blocks, seconds) in F.compute(missing, frames, cfg).items():
            np.save(path(f"features_{kernel}_seconds.npy"), seconds)
            blocks.save(path(f"features_{kernel}.tmp.npz"))  # the rename marks it complete
            os.replace(path(f"features_{kernel}.tmp.npz"), path(f"features_{kernel}.npz"))
    return {k: float(np.load(path(f"features_{k}_seconds.npy"))) for k in kernels}


def _add_shift_runs(args, data, master, shift_cfg, runs: list) -> dict:
    """Append the pool-shift runs (pools biased toward --shift-group at each alpha) to ``runs``; their record."""
    key, value = args.shift_group.split("=", 1)
    shift = {"group": args.shift_group, "alpha_keys": [], "alphas": [], "pools": {}}
    for alpha in args.shift_alphas:
        for seed in args.shift_seeds:
            idx = pools.biased(data.pool, master, key, value, None if alpha == "natural" else alpha,
                               args.shift_pool_size, seed)
            share = float(np.mean([pools.in_group(data.pool[i], key, value) for i in idx]))
            runs.append((f"shift_a{share:.2f}", idx, seed, list(args.shift_strategies) + args.shift_variants,
                         shift_cfg))
        shift["alpha_keys"].append(f"shift_a{share:.2f}")
        shift["alphas"].append(share)
    return shift


def _shift_results(args, shift: dict, results: dict) -> dict:
    """Final-budget mean and std over the shift seeds of every curve key, per shifted pool and strategy."""
    shift_labels = list(args.shift_strategies) + [v[0] for v in args.shift_variants]
    shift["strategies"] = shift_labels
    shift["variants"] = {label: {"strategy": name, **o} for label, name, o in args.shift_variants}
    shift["seeds"] = list(args.shift_seeds)
    shift["results"] = {}
    for pool_key in shift["alpha_keys"]:
        shift["results"][pool_key] = {}
        for name in shift_labels:
            recs = [results[(pool_key, s, name)]["record"] for s in args.shift_seeds]
            row = {}
            for key in report.CURVE_KEYS:
                if key not in recs[0]:
                    continue
                finals = np.array([r[key][-1] for r in recs])
                row[f"{key}_mean"], row[f"{key}_std"] = float(finals.mean()), float(finals.std())
            row["n_labels"] = recs[0]["n_labels"][-1]
            shift["results"][pool_key][name] = row
    return shift


def _config(args, recipe, loop_cfg, strategy_args: dict, feature_seconds: dict, **sizes) -> dict:
    """The run's settings as written into the result file."""
    return {"quick": args.quick, "argv": sys.argv[1:], "seeds": args.seeds, "domain": args.domain, **sizes,
            "data_recipe": recipe.__dict__, "loop": {**loop_cfg.__dict__, "finetune": loop_cfg.finetune.__dict__},
            "shift_rounds": args.shift_rounds, "strategy_args": strategy_args,
            "variants": {label: {"strategy": name, **o} for label, name, o in args.variants},
            "dim": args.dim, "force_rows": args.force_rows, "energy_weight": args.energy_weight,
            "feature_seconds": feature_seconds,
            "units": {"energy": "eV/atom", "force": "eV/A (per component)",
                      "seconds": "wall clock, 1 torch thread per worker"},
            "test_keys": {"id": "energy_mae ...", "shift": "shift_energy_mae ..."},
            "workers": args.workers, "cpu_count": os.cpu_count()}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plot_only:
        if not os.path.isfile(args.plot_only):
            raise SystemExit(f"--plot-only: no result file {args.plot_only!r}")
        print("\n" + report.markdown(replot(args.plot_only)))
        return 0
    t_start = time.perf_counter()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # tblite in this process: no thread oversubscription
    recipe = scenario_recipe(args.scenario, args.data_seed)
    data = load_dataset(args.cache, recipe)
    in_domain = lambda f: args.domain in ("all", f.info["domain"])  # noqa: E731
    eligible = np.array([i for i, f in enumerate(data.pool) if in_domain(f)])
    master = eligible[pools.subsample([data.pool[i] for i in eligible], args.pool_size, args.data_seed)]
    n_id = sum(map(in_domain, data.test_id))
    n_shift = sum(map(in_domain, data.test_shift))
    print(f"data ({args.domain}): pool {len(master)} of {len(data.pool)}, test_id {n_id}, "
          f"test_shift {n_shift}", flush=True)

    loop_cfg = LoopConfig(n_initial=args.n_initial, batch=args.batch, rounds=args.rounds,
                          committee_size=args.committee_size,
                          finetune=FinetuneConfig(steps=args.steps, epochs=args.epochs, lr=args.lr))
    strategy_args = dict(committee_size=args.committee_size, noise_var=args.noise_var,
                         shortlist_factor=args.shortlist_factor, intensive=not args.extensive,
                         feature=dict(dim=args.dim, force_rows=args.force_rows, feature_seed=args.data_seed))

    shift_cfg = LoopConfig(n_initial=args.n_initial, batch=args.batch, rounds=args.shift_rounds,
                           committee_size=args.committee_size, finetune=loop_cfg.finetune)
    main_entries = list(args.strategies) + args.variants
    labels = list(args.strategies) + [v[0] for v in args.variants]
    runs = [("main", master, seed, main_entries, loop_cfg) for seed in args.seeds]
    shift = None if args.no_pool_shift else _add_shift_runs(args, data, master, shift_cfg, runs)

    for key, pool, _, _, cfg in runs:
        need = cfg.n_initial + cfg.rounds * cfg.batch
        if len(pool) < need:
            raise SystemExit(f"pool {key!r} has {len(pool)} structures; n_initial + rounds x batch needs {need}")
    kernels = sorted({KERNEL_OF[e if isinstance(e, str) else e[1]] for _, _, _, entries, _ in runs
                      for e in entries if (e if isinstance(e, str) else e[1]) in KERNEL_OF})
    run_dir = open_work_dir(args)
    feature_seconds = {}
    if kernels:
        feature_seconds = featurise(args, kernels, [data.pool[i] for i in master], master, run_dir)
    print(f"running {sum(len(r[3]) for r in runs)} learning curves on {args.workers} workers "
          f"(finished jobs kept in {run_dir})", flush=True)
    results = runner.run_all(runs, strategy_args=strategy_args, cache_dir=args.cache,
                             recipe=recipe, run_dir=run_dir, kernels=kernels, workers=args.workers,
                             threads=1, domain=args.domain, log=lambda s: print(s, flush=True))

    strategies = {name: report.aggregate({seed: results[("main", seed, name)]["record"] for seed in args.seeds})
                  for name in labels}
    payload = {"strategies": strategies, "summary": report.summary(strategies),
               "selection_mix": selection_mix(strategies, data.pool),
               "config": _config(args, recipe, loop_cfg, strategy_args, feature_seconds,
                                 pool_size=len(master), dataset_pool=len(data.pool), test_id=n_id,
                                 test_shift=n_shift)}
    if shift is not None:
        payload["pool_shift"] = _shift_results(args, shift, results)
    payload["config"]["wall_seconds"] = time.perf_counter() - t_start

    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    report.write_json(out, payload)
    stem = os.path.splitext(out)[0]
    replot(out)
    if not args.keep_work:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"wrote {out} and {stem}_curves.png; total {payload['config']['wall_seconds']:.0f} s")
    return 0


def selection_mix(strategies: dict, frames) -> dict:
    """Share of each strategy's acquired structures (all rounds and seeds) per domain, temperature, system."""
    out = {}
    for name, s in strategies.items():
        picks = [i for rec in s["per_seed"].values() for batch in rec["selected"] for i in batch]
        row = {}
        for key in ("domain", "temperature", "system"):
            values, counts = np.unique([str(frames[i].info[key]) for i in picks], return_counts=True)
            row[key] = {v: float(c / len(picks)) for v, c in zip(values, counts)}
        out[name] = row
    return out


def print_summary(payload) -> None:
    s = payload["summary"]
    print("\nfinal errors (mean over seeds) and ratios from this run:")
    print(f"{'strategy':<17} {'F MAE id':>9} {'F MAE sh':>9} {'E MAE id':>9} {'E MAE sh':>9} "
          f"{'labels->rnd':>11} {'F/rnd':>6} {'F/com':>6} {'acq s':>8} {'acq/com':>8}")
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    for name, row in s.items():
        print(f"{name:<17} {row['final_force_mae']:9.4f} {row['final_shift_force_mae']:9.4f} "
              f"{row['final_energy_mae']:9.4f} {row['final_shift_energy_mae']:9.4f} "
              f"{fmt(row.get('label_fraction_vs_random'), '11.2f')} "
              f"{fmt(row.get('force_mae_ratio_vs_random'), '6.3f')} "
              f"{fmt(row.get('force_mae_ratio_vs_committee'), '6.3f')} {row['acq_seconds_total']:8.1f} "
              f"{fmt(row.get('acq_cost_ratio_vs_committee'), '8.3f')}")
    print("labels->rnd: labels needed to reach random's final force MAE, as a fraction of random's labels")
    if "selection_mix" in payload:
        print("\nacquired structures (all rounds and seeds): share of molecules, and per temperature (K)")
        for name, row in payload["selection_mix"].items():
            temps = "  ".join(f"{t}: {v:.2f}" for t, v in sorted(row["temperature"].items(), key=lambda x: int(x[0])))
            print(f"{name:<17} molecules {row['domain'].get('molecule', 0.0):.2f}   {temps}")
    if "pool_shift" in payload:
        sh = payload["pool_shift"]
        print(f"\npool shift ({sh['group']}), final force MAE mean ± std over seeds {sh['seeds']}:")
        for key, share in zip(sh["alpha_keys"], sh["alphas"]):
            cells = "  ".join(f"{n} {r['force_mae_mean']:.4f}±{r['force_mae_std']:.4f} "
                              f"(shift {r['shift_force_mae_mean']:.4f}±{r['shift_force_mae_std']:.4f})"
                              for n, r in sh["results"][key].items())
            print(f"  share {share:.2f}: {cells}")


if __name__ == "__main__":
    sys.exit(main())
