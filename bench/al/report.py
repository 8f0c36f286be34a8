"""Aggregate learning curves over seeds, derive the headline ratios, write JSON and PNG plots."""
from __future__ import annotations

import json
import os

import numpy as np

from .loop import DOMAIN_METRICS, METRICS, TEST_SETS, metric_key

CURVE_KEYS = tuple(metric_key(t, m) for t in TEST_SETS for m in METRICS + DOMAIN_METRICS)


def aggregate(records: dict) -> dict:
    """{seed: record} -> mean curves (the JSON's per-strategy entry), ``*_std`` and per-seed data."""
    seeds = sorted(records)
    first = records[seeds[0]]
    out = {"n_labels": first["n_labels"], "seeds": seeds}
    extra = tuple(k for k in first if k not in CURVE_KEYS and ("_sys_" in k or "p95" in k))
    for key in CURVE_KEYS + extra + ("acq_seconds", "finetune_seconds"):
        if key not in first:  # per-domain keys exist only for domains in the test sets
            continue
        values = np.array([records[s][key] for s in seeds], dtype=float)
        out[key] = values.mean(axis=0).tolist()
        out[f"{key}_std"] = values.std(axis=0).tolist()
    out["per_seed"] = {str(s): records[s] for s in seeds}
    return out


def labels_to_reach(n_labels, curve, target) -> float | None:
    """Smallest label count where the curve (linearly interpolated) gets to ``target``; None if never."""
    n, y = np.asarray(n_labels, float), np.asarray(curve, float)
    if y[0] <= target:
        return float(n[0])
    for i in range(1, len(y)):
        if y[i] <= target:
            return float(n[i - 1] + (n[i] - n[i - 1]) * (y[i - 1] - target) / (y[i - 1] - y[i]))
    return None


def summary(strategies: dict) -> dict:
    """Headline numbers per strategy, against random and the committee."""
    out = {}
    rnd = strategies.get("random")
    com = strategies.get("committee")
    for name, s in strategies.items():
        row = {"final_force_mae": s["force_mae"][-1], "final_energy_mae": s["energy_mae"][-1],
               "final_shift_force_mae": s["shift_force_mae"][-1],
               "final_shift_energy_mae": s["shift_energy_mae"][-1],
               "acq_seconds_total": float(np.sum(s["acq_seconds"]))}
        if rnd is not None:
            reach = labels_to_reach(s["n_labels"], s["force_mae"], rnd["force_mae"][-1])
            row["labels_to_random_final_force_mae"] = reach
            row["label_fraction_vs_random"] = None if reach is None else reach / rnd["n_labels"][-1]
            row["force_mae_ratio_vs_random"] = s["force_mae"][-1] / rnd["force_mae"][-1]
        if com is not None:
            row["force_mae_ratio_vs_committee"] = s["force_mae"][-1] / com["force_mae"][-1]
            com_acq = float(np.sum(com["acq_seconds"]))
            row["acq_cost_ratio_vs_committee"] = row["acq_seconds_total"] / com_acq if com_acq > 0 else None
        out[name] = row
    return out


def write_json(path: str, payload: dict) -> None:
    with open(path + ".tmp", "w") as fh:
        json.dump(payload, fh, indent=1, default=_jsonable)
    os.replace(path + ".tmp", path)


def _jsonable(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


STYLE = {"random": ("k", "o"), "committee": ("tab:red", "s"), "max_force": ("tab:gray", "v"),
         "embedding": ("tab:olive", "^"), "energy_ntk": ("tab:cyan", "D"),
         "force_ntk": ("tab:blue", "P"), "joint_ntk": ("tab:green", "X"),
         "joint_ntk_greedy": ("tab:purple", "*")}


def plot_curves(path: str, strategies: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("force_mae", "force MAE, in-distribution (eV/Å)"),
              ("shift_force_mae", "force MAE, shifted test (eV/Å)"),
              ("energy_mae", "energy MAE, in-distribution (eV/atom)"),
              ("shift_energy_mae", "energy MAE, shifted test (eV/atom)")]
    any_run = next(iter(strategies.values()))
    if "force_mae_molecule" in any_run and "force_mae_metal" in any_run:
        panels += [("force_mae_molecule", "force MAE, in-distribution molecules (eV/Å)"),
                   ("force_mae_metal", "force MAE, in-distribution metals (eV/Å)")]
    rows = len(panels) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4 * rows))
    for ax, (key, label) in zip(axes.ravel(), panels):
        for name, s in strategies.items():
            color, marker = STYLE.get(name, (None, "."))
            ax.errorbar(s["n_labels"], s[key], yerr=s[f"{key}_std"], label=name, color=color,
                        marker=marker, ms=5, capsize=2, lw=1.2, ls="-" if name in STYLE else "--")
        ax.set_xlabel("labels")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pool_shift(path: str, shift: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    alphas = [float(a) for a in shift["alphas"]]
    for ax, key, label in ((axes[0], "force_mae", "final force MAE, in-distribution (eV/Å)"),
                           (axes[1], "shift_force_mae", "final force MAE, shifted test (eV/Å)")):
        for name in shift["strategies"]:
            mean = [shift["results"][str(a)][name][f"{key}_mean"] for a in shift["alpha_keys"]]
            std = [shift["results"][str(a)][name][f"{key}_std"] for a in shift["alpha_keys"]]
            color, marker = STYLE.get(name, (None, "."))
            ax.errorbar(alphas, mean, yerr=std, label=name, color=color, marker=marker, capsize=3)
        ax.set_xlabel(f"share of the pool from {shift['group']}")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pm(s, key, i=-1) -> str:
    """'mean ± std' of a curve entry."""
    return f"{s[key][i]:.4f} ± {s[key + '_std'][i]:.4f}"


def _reach_and_cost(row: dict) -> tuple[str, str]:
    """('labels to random's final' cell, 'acq / committee' cell) of a summary row."""
    frac = row.get("label_fraction_vs_random")
    reach = "never" if frac is None else f"{row['labels_to_random_final_force_mae']:.0f} ({frac:.0%})"
    com = row.get("acq_cost_ratio_vs_committee")
    return reach, "-" if com is None else f"{com:.3f}"


def markdown_conditions(payload: dict) -> str:
    """Tables of a single-domain study (per condition, tails, every round), for bench/RESULTS.md."""
    strategies, summary = payload["strategies"], payload["summary"]
    any_run = next(iter(strategies.values()))
    conds = sorted(k[len("force_mae_sys_"):] for k in any_run if k.startswith("force_mae_sys_") and not k.endswith("_std"))
    pm = _pm
    out = ["| strategy | force MAE | force RMSE | force p95 | energy MAE | energy RMSE | labels to random's final "
           "| acq s | acq / committee |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in strategies.items():
        row = summary[name]
        reach, com = _reach_and_cost(row)
        out.append(f"| {name} | {pm(s, 'force_mae')} | {pm(s, 'force_rmse')} | {pm(s, 'force_p95')} "
                   f"| {pm(s, 'energy_mae')} | {pm(s, 'energy_rmse')} | {reach} | {row['acq_seconds_total']:.0f} "
                   f"| {com} |")
    out += ["", "| final force MAE per condition (eV/Å) | " + " | ".join(conds) + " | shifted test |",
            "|---|" + "---|" * (len(conds) + 1)]
    for name, s in strategies.items():
        out.append(f"| {name} | " + " | ".join(pm(s, f"force_mae_sys_{c}") for c in conds)
                   + f" | {pm(s, 'shift_force_mae')} |")
    out += ["", "| final force p95 per condition (eV/Å) | " + " | ".join(conds) + " |",
            "|---|" + "---|" * len(conds)]
    for name, s in strategies.items():
        out.append(f"| {name} | " + " | ".join(pm(s, f"force_p95_sys_{c}") for c in conds) + " |")
    n = any_run["n_labels"]
    for key, label in (("force_mae", "force MAE (eV/Å)"), ("force_p95", "force p95 (eV/Å)"),
                       ("energy_mae", "energy MAE (eV/atom)")):
        out += ["", f"| {label} by labels | " + " | ".join(str(x) for x in n) + " |", "|---|" + "---|" * len(n)]
        for name, s in strategies.items():
            out.append(f"| {name} | " + " | ".join(f"{m:.4f} ± {d:.4f}" for m, d in zip(s[key], s[f"{key}_std"])) + " |")
    if "selection_mix" in payload:
        systems = sorted({t for r in payload["selection_mix"].values() for t in r["system"]})
        out += ["", "| acquired structures (share) | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
        for name, r in payload["selection_mix"].items():
            out.append(f"| {name} | " + " | ".join(f"{r['system'].get(t, 0.0):.2f}" for t in systems) + " |")
    return "\n".join(out)


def markdown(payload: dict) -> str:
    """The study's tables as Markdown (mean ± std over seeds), for bench/RESULTS.md."""
    strategies, summary = payload["strategies"], payload["summary"]
    if "force_mae_molecule" not in next(iter(strategies.values())):
        return markdown_conditions(payload)
    rnd = strategies.get("random")
    out = []
    pm = _pm
    out.append("| strategy | force MAE id | molecules | metals | force MAE shifted | energy MAE id "
               "| labels to random's final | acq s | acq / committee |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for name, s in strategies.items():
        row = summary[name]
        reach, com = _reach_and_cost(row)
        out.append(f"| {name} | {pm(s, 'force_mae')} | {pm(s, 'force_mae_molecule')} | {pm(s, 'force_mae_metal')} "
                   f"| {pm(s, 'shift_force_mae')} | {pm(s, 'energy_mae')} | {reach} "
                   f"| {row['acq_seconds_total']:.0f} | {com} |")
    n = rnd["n_labels"] if rnd else next(iter(strategies.values()))["n_labels"]
    out.append("")
    out.append("| force MAE id (eV/Å) | " + " | ".join(str(x) for x in n) + " |")
    out.append("|---|" + "---|" * len(n))
    for name, s in strategies.items():
        out.append(f"| {name} | " + " | ".join(f"{m:.4f} ± {d:.4f}" for m, d in zip(s["force_mae"], s["force_mae_std"]))
                   + " |")
    if "selection_mix" in payload:
        temps = sorted({t for r in payload["selection_mix"].values() for t in r["temperature"]}, key=int)
        out.append("")
        out.append("| acquired structures | molecules | " + " | ".join(f"{t} K" for t in temps) + " |")
        out.append("|---|---|" + "---|" * len(temps))
        for name, r in payload["selection_mix"].items():
            out.append(f"| {name} | {r['domain'].get('molecule', 0.0):.2f} | "
                       + " | ".join(f"{r['temperature'].get(t, 0.0):.2f}" for t in temps) + " |")
    if "pool_shift" in payload:
        sh = payload["pool_shift"]
        out.append("")
        out.append(f"| pool share of {sh['group']} | strategy | force MAE id | force MAE shifted | labels |")
        out.append("|---|---|---|---|---|")
        for key, share in zip(sh["alpha_keys"], sh["alphas"]):
            for name, r in sh["results"][key].items():
                out.append(f"| {share:.2f} | {name} | {r['force_mae_mean']:.4f} ± {r['force_mae_std']:.4f} "
                           f"| {r['shift_force_mae_mean']:.4f} ± {r['shift_force_mae_std']:.4f} | {r['n_labels']} |")
    return "\n".join(out)
