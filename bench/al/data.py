"""Labelled structures for the active-learning study, generated offline and cached: the ``mixed`` scenario
(molecules and metals), and what every scenario shares (Dataset, labelled frames, MD, the cache).

Molecules: Langevin MD driven by GFN2-xTB (tblite, non-periodic); every kept frame carries
the xTB energy and forces of that frame. Metals: Langevin MD of small Cu / Cu-Au cells
(strained, some with a vacancy) driven by ASE EMT, labelled by EMT.

Splits
* ``pool``       candidates for selection (the initial training set is drawn from it).
* ``test_id``    in-distribution test: same systems and temperatures, independent trajectories.
* ``test_shift`` shifted test: the training molecules at a higher temperature, an unseen
  molecule, and metal cells at a higher temperature or a larger strain.

Everything is a deterministic function of the seed and the frame counts; the result is
cached as extended XYZ under the cache directory (the file name holds a hash of the recipe).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta

DATA_VERSION = 1
# the study's default cache: $NTKAL_AL_CACHE, else bench/.cache in a checkout (and with an editable install of
# the study), else .al-cache in the working directory (an installed copy must not write into site-packages)
_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.environ.get("NTKAL_AL_CACHE") or (
    os.path.join(_PARENT, ".cache") if os.path.basename(_PARENT) == "bench" else os.path.abspath(".al-cache"))
# CHGNet's atom-graph cutoff is 6 A: 7 A of vacuum on every side keeps periodic images of a
# molecule out of each other's neighbour lists, so the periodic model sees an isolated molecule.
MOLECULE_VACUUM = 7.0


@dataclass(frozen=True)
class DataRecipe:
    """How many frames to generate; defaults are the full benchmark's."""

    molecules: tuple = ("CH3CH2OH", "trans-butane", "CH3COOH", "CH3COCH3")
    unseen_molecule: str = "CH3CH2OCH3"
    metals: tuple = ("Cu8", "Cu6Au2", "Cu7_vacancy")
    temperatures: tuple = (300, 600, 900)
    shift_temperature: int = 1500
    molecule_pool_frames: int = 30  # per (molecule, T), one trajectory
    molecule_test_frames: int = 5  # per (molecule, T), own trajectory
    unseen_frames: int = 8  # per T of the unseen molecule
    metal_pool_trajectories: int = 2  # per (cell, T), each with its own strain
    metal_pool_frames: int = 12  # per trajectory
    metal_test_frames: int = 6  # per (cell, T)
    metal_strain: float = 0.02  # max abs strain component, in distribution
    metal_shift_strain: float = 0.05  # shifted test: larger strain at 600 K
    seed: int = 0

    def key(self) -> str:
        text = json.dumps({"version": DATA_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    def generate(self) -> "Dataset":
        return generate(self)


@dataclass
class Dataset:
    pool: list
    test_id: list
    test_shift: list
    recipe: object = field(default_factory=DataRecipe)
    seconds: float = 0.0  # wall time of generation (0 when read from the cache)


def _labelled_copy(atoms: Atoms, energy: float, forces: np.ndarray, **info) -> Atoms:
    frame = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    frame.info.update(info)
    frame.calc = SinglePointCalculator(frame, energy=float(energy), forces=np.array(forces))
    return frame


def _boxed_molecule(atoms: Atoms) -> Atoms:
    """The frame in a cubic box, periodic, as CHGNet needs a cell (the label is non-periodic)."""
    boxed = Atoms(atoms.numbers, positions=atoms.positions, pbc=True)
    extent = np.ptp(atoms.positions, axis=0).max()
    boxed.set_cell(np.eye(3) * (extent + 2 * MOLECULE_VACUUM))
    boxed.center()
    return boxed


def _run_md(atoms, calc, temperature, timestep_fs, friction_per_fs, n_equil, n_frames, spacing, rng):
    """Langevin MD; yields (atoms, energy, forces) every ``spacing`` steps after equilibration."""
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fixcm deprecation notice
        dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature,
                       friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    dyn.run(n_equil)
    for _ in range(n_frames):
        dyn.run(spacing)
        yield atoms, atoms.get_potential_energy(), atoms.get_forces()


def _molecule_frames(name, temperature, n_frames, rng, **info):
    from tblite.ase import TBLite

    atoms = molecule(name)
    atoms.pbc = False  # label non-periodic: periodic xTB is ~10x slower and not wanted here
    calc = TBLite(method="GFN2-xTB", verbosity=0)
    # 0.5 fs resolves C-H vibrations; 10 fs between frames, 50 fs equilibration
    frames = []
    for snap, energy, forces in _run_md(atoms, calc, temperature, 0.5, 0.02, 100, n_frames, 20, rng):
        boxed = _boxed_molecule(snap)
        frames.append(_labelled_copy(boxed, energy, forces, domain="molecule", system=name,
                                     temperature=int(temperature), **info))
    return frames


def _metal_cell(system: str, strain: float, rng) -> Atoms:
    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))  # 8 atoms
    if system == "Cu6Au2":
        sites = rng.choice(len(cell), size=2, replace=False)
        cell.symbols[sites] = "Au"
    elif system == "Cu7_vacancy":
        del cell[int(rng.integers(len(cell)))]
    elif system != "Cu8":
        raise ValueError(f"_metal_cell: unknown system {system!r}")
    eps = rng.uniform(-strain, strain, size=(3, 3))
    eps = 0.5 * (eps + eps.T)
    cell.set_cell(cell.cell @ (np.eye(3) + eps), scale_atoms=True)
    return cell


def _metal_frames(system, temperature, strain, n_frames, rng, **info):
    atoms = _metal_cell(system, strain, rng)
    # 2 fs steps, 20 fs between frames, 100 fs equilibration
    frames = []
    for snap, energy, forces in _run_md(atoms, EMT(), temperature, 2.0, 0.02, 50, n_frames, 10, rng):
        frames.append(_labelled_copy(snap, energy, forces, domain="metal", system=system,
                                     temperature=int(temperature), strain=float(strain), **info))
    return frames


def generate(recipe: DataRecipe) -> Dataset:
    """Run all trajectories; each one has its own generator spawned from the seed."""
    t0 = time.perf_counter()
    streams = iter(np.random.SeedSequence(recipe.seed).spawn(1000))
    rng = lambda: np.random.default_rng(next(streams))  # noqa: E731 - one stream per trajectory
    pool, test_id, test_shift = [], [], []
    r = recipe
    for name in r.molecules:
        for T in r.temperatures:
            pool += _molecule_frames(name, T, r.molecule_pool_frames, rng(), split="pool")
            test_id += _molecule_frames(name, T, r.molecule_test_frames, rng(), split="test_id")
        test_shift += _molecule_frames(name, r.shift_temperature, r.molecule_test_frames, rng(),
                                       split="test_shift", shift="temperature")
    for T in r.temperatures:
        test_shift += _molecule_frames(r.unseen_molecule, T, r.unseen_frames, rng(),
                                       split="test_shift", shift="unseen_molecule")
    for system in r.metals:
        for T in r.temperatures:
            for _ in range(r.metal_pool_trajectories):
                pool += _metal_frames(system, T, r.metal_strain, r.metal_pool_frames, rng(),
                                      split="pool")
            test_id += _metal_frames(system, T, r.metal_strain, r.metal_test_frames, rng(),
                                     split="test_id")
        test_shift += _metal_frames(system, r.shift_temperature, r.metal_strain,
                                    r.metal_test_frames, rng(), split="test_shift",
                                    shift="temperature")
        test_shift += _metal_frames(system, 600, r.metal_shift_strain, r.metal_test_frames,
                                    rng(), split="test_shift", shift="strain")
    return Dataset(pool, test_id, test_shift, recipe, time.perf_counter() - t0)


def make_cache_dir(cache_dir: str) -> None:
    """Create the cache directory, git-ignored as a whole."""
    os.makedirs(cache_dir, exist_ok=True)
    ignore = os.path.join(cache_dir, ".gitignore")
    if not os.path.exists(ignore):
        with open(ignore, "w") as fh:
            fh.write("*\n")


def load_dataset(cache_dir: str, recipe: DataRecipe | None = None, verbose: bool = True) -> Dataset:
    """The dataset for ``recipe``, from the cache when present, else generated and cached.

    A recipe with its own cache (``load(cache_dir, verbose) -> Dataset``, e.g. one whose generation is
    resumable task by task) is read or generated by that method instead."""
    recipe = recipe or DataRecipe()
    if hasattr(recipe, "load"):
        return recipe.load(cache_dir, verbose)
    make_cache_dir(cache_dir)
    path = os.path.join(cache_dir, f"al_data_{recipe.key()}.extxyz")
    if os.path.exists(path):
        frames = read(path, index=":")
        by_split = {s: [f for f in frames if f.info["split"] == s]
                    for s in ("pool", "test_id", "test_shift")}
        return Dataset(by_split["pool"], by_split["test_id"], by_split["test_shift"], recipe)
    if verbose:
        print(f"generating labelled data (GFN2-xTB / EMT MD) -> {path}", flush=True)
    data = recipe.generate()
    tmp = path + ".tmp"
    write(tmp, data.pool + data.test_id + data.test_shift, format="extxyz")
    os.replace(tmp, path)
    if verbose:
        print(f"  {len(data.pool)} pool, {len(data.test_id)} test_id, "
              f"{len(data.test_shift)} test_shift frames in {data.seconds:.1f} s", flush=True)
    return data


def energies_forces(frames) -> tuple[np.ndarray, list]:
    """Reference total energies (n,) in eV and forces, a list of (n_atoms, 3) in eV/A."""
    energies = np.array([f.get_potential_energy() for f in frames])
    forces = [f.get_forces() for f in frames]
    return energies, forces
