"""The ``copper`` scenario: a single-domain pool of mostly redundant near-equilibrium Cu frames plus rarer
conditions (hot, vacancy, surface, strained), labelled by ASE EMT."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from .data import DATA_VERSION, Dataset, _labelled_copy, _run_md


@dataclass(frozen=True)
class CopperRecipe:
    """A pool dominated by redundant 300 K MD frames of bulk Cu (the common case of a screen) plus
    rarer conditions; the in-distribution test set is spread evenly over all conditions.

    Conditions (``info["system"]``): ``bulk`` 8-atom fcc cell at 300 K (most of the pool); ``hot``
    the same cell at 1200 K; ``vacancy`` a 7-atom cell at 600 K; ``surface`` a 12-atom (111) slab
    (3 layers, 10 A of vacuum, periodic cell) at 600 K; ``strained`` the 8-atom cell under up to 4 %
    random strain at 600 K. Labels: ASE EMT. ``test_shift``: bulk and vacancy cells at 1500 K.
    """

    bulk_pool_trajectories: int = 7
    bulk_pool_frames: int = 40  # per trajectory: 280 frames, 70 % of the pool
    rare_pool_trajectories: int = 3
    rare_pool_frames: int = 10  # per (condition, trajectory): 30 per rare condition, 120 in all
    test_frames: int = 20  # per condition (own trajectories)
    shift_frames: int = 10
    seed: int = 0

    def key(self) -> str:
        text = json.dumps({"version": DATA_VERSION, "scenario": "copper", **asdict(self)}, sort_keys=True)
        return "cu_" + hashlib.sha1(text.encode()).hexdigest()[:10]

    def generate(self) -> Dataset:
        return generate_copper(self)


COPPER_CONDITIONS = {"bulk": 300, "hot": 1200, "vacancy": 600, "surface": 600, "strained": 600}


def _copper_cell(condition: str, rng) -> Atoms:
    from ase.build import fcc111

    if condition == "surface":
        slab = fcc111("Cu", size=(2, 2, 3), a=3.61, vacuum=5.0)  # 5 A each side: 10 A between images
        slab.pbc = True
        return slab
    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))  # 8 atoms
    if condition == "vacancy":
        del cell[int(rng.integers(len(cell)))]
    strain = 0.04 if condition == "strained" else 0.005
    eps = rng.uniform(-strain, strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    cell.set_cell(cell.cell @ (np.eye(3) + eps), scale_atoms=True)
    return cell


def _copper_frames(condition, temperature, n_frames, rng, **info):
    atoms = _copper_cell(condition, rng)
    frames = []
    for snap, energy, forces in _run_md(atoms, EMT(), temperature, 2.0, 0.02, 50, n_frames, 10, rng):
        frames.append(_labelled_copy(snap, energy, forces, domain="metal", system=condition,
                                     temperature=int(temperature), **info))
    return frames


def generate_copper(recipe: CopperRecipe) -> Dataset:
    t0 = time.perf_counter()
    streams = iter(np.random.SeedSequence([recipe.seed, 77]).spawn(1000))
    rng = lambda: np.random.default_rng(next(streams))  # noqa: E731
    pool, test_id, test_shift = [], [], []
    r = recipe
    for _ in range(r.bulk_pool_trajectories):
        pool += _copper_frames("bulk", 300, r.bulk_pool_frames, rng(), split="pool")
    for condition, temperature in COPPER_CONDITIONS.items():
        if condition != "bulk":
            for _ in range(r.rare_pool_trajectories):
                pool += _copper_frames(condition, temperature, r.rare_pool_frames, rng(), split="pool")
        test_id += _copper_frames(condition, temperature, r.test_frames, rng(), split="test_id")
    for condition in ("bulk", "vacancy"):
        test_shift += _copper_frames(condition, 1500, r.shift_frames, rng(), split="test_shift", shift="temperature")
    return Dataset(pool, test_id, test_shift, recipe, time.perf_counter() - t0)
