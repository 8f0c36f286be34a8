"""The demo's data: small Cu/CuAu cells from ASE EMT molecular dynamics (what ``ntkal demo`` screens)."""
from __future__ import annotations

import numpy as np


def demo_structures(n_pool: int = 240, n_train: int = 20, seed: int = 0):
    """Cu and CuAu cells (4 and 8 atoms) from ASE EMT Langevin MD at 300-1500 K.

    Returns
    -------
    train : list of ase.Atoms
        300 K frames of separate trajectories.
    pool : list of ase.Atoms
        Frames at 300, 600, 900, 1200 and 1500 K; ``atoms.info`` holds ``temperature_K``,
        ``emt_energy`` and ``emt_max_force``.
    """
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    import warnings

    rng = np.random.default_rng(seed)
    temperatures = (300, 600, 900, 1200, 1500)

    def cell(kind: int):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        if kind % 2:
            atoms = atoms.repeat((2, 1, 1))
        if kind % 3:  # CuAu: substitute a quarter to a half of the sites
            sites = rng.choice(len(atoms), size=int(rng.integers(1, len(atoms) // 2 + 1)), replace=False)
            for s in sites:
                atoms[int(s)].symbol = "Au"
        return atoms

    def run(temp: int, n_frames: int, stride: int = 6):
        atoms = cell(int(rng.integers(6)))
        atoms.calc = EMT()
        with warnings.catch_warnings():  # ASE deprecation notices about its own defaults
            warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
            MaxwellBoltzmannDistribution(atoms, temperature_K=temp, rng=rng)
            dyn = Langevin(atoms, 4 * units.fs, temperature_K=temp, friction=0.05, rng=rng)
        dyn.run(20)  # leave the perfect lattice
        frames = []
        for _ in range(n_frames):
            dyn.run(stride)
            frame = atoms.copy()
            frame.info.update(temperature_K=temp, emt_energy=float(atoms.get_potential_energy()),
                              emt_max_force=float(np.abs(atoms.get_forces()).max()))
            frames.append(frame)
        return frames

    train = []
    while len(train) < n_train:
        train += run(300, 2, stride=15)
    pool = []
    per_run = 8
    while len(pool) < n_pool:
        for temp in temperatures:
            pool += run(temp, per_run)
    return train[:n_train], pool[:n_pool]
