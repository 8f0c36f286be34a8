"""Adsorbates on metal slabs (an OC20-like scenario), labelled with GFN1-xTB, generated once and cached.

Systems: small adsorbates (H, O, OH, CO; CH3 only in the shifted test) on 2 x 2 fcc(111) and (100)
slabs and a 3 x 2 stepped (211) slab, 3 layers (12 or 18 metal atoms) of Cu and Pd (Ag only in the
shifted test), with 6 A of vacuum on each side (periodic cell, as CHGNet needs). Metals were chosen by
GFN1-xTB's forces on the ideal bare slabs at these lattice constants (largest atomic force, eV/A,
(111) / (211)): Ag 0.28 / 0.99, Cu 0.62, Pd 0.79 / 1.14, Au 0.74 / 1.38, Ni 1.45 / 0.84, Pt 3.58 /
3.88; Pt's surface is far from GFN1-xTB's equilibrium, so every Pt frame would carry large forces
that say more about the method than about the adsorbate.

Frames come from two sources:
* MD: Langevin dynamics at 300, 600 or 900 K from the facet's common site (a hollow on the flat
  facets, the step-edge bridge on (211)), 0.5 fs steps, a frame every 20 fs after 100 fs.
* Random sites: the adsorbate at a uniformly random lateral point, randomly tilted (<= 35 degrees)
  and rotated, lifted from above until its binding atom is 1.8-2.1 A from the nearest metal atom,
  on a slab rattled by 0.05 A.

Labels: every kept frame is labelled by GFN1-xTB (tblite, periodic, a fresh calculator per frame so
a label does not depend on the order of the frames, electronic temperature 1000 K: at tblite's
default 300 K the SCF of O on a metal slab does not converge). One setting for every label.

MD driver: xTB itself costs 1-5 s per 13-20-atom step, so a trajectory with 0.5 fs steps would
cost hours per frame. The dynamics are driven instead by a cheap potential, ``SlabDriver``: EMT for
the metal atoms (its parameters are fitted to these fcc metals), a Morse pair potential between the
adsorbate's binding atom and the metal atoms (minimum at the binding distance, so hollow sites bind
more strongly than top sites), a repulsive wall between the adsorbate's other atoms and the metal,
and harmonic bonds inside the adsorbate. EMT's own H/C/O parameters are not used: they are not
meant for adsorbate-metal bonds. The driver only proposes geometries; its energies are discarded.

Splits: ``pool`` biased as real pools are (about half of it 300 K MD frames of the common site on
(111), redundant by construction; rarer facets, hot MD and random sites make up the rest);
``test_id`` spread evenly over metal x adsorbate x facet x condition (300/600/900 K MD, random
site); ``test_shift``: an adsorbate (CH3) and a metal (Ag) absent from the pool.

Cache: every generation task (one trajectory or one group of random-site frames) is written as its
own file, so an interrupted generation resumes where it stopped; when all are done they are joined
into ``ads_<key>.extxyz`` with a JSON summary (counts and seconds) beside it. The key hashes the
recipe and the label settings.

The study runs on it as the ``adsorbates`` scenario (``python -m al --scenario adsorbates``); the study
reads the cache or generates the data in one process, so generate the full data set first with
``python -m al.adsorbates --workers N`` (resumable). Command line: ``python -m al.adsorbates [--smoke]
[--cache DIR] [--workers N]``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .data import CACHE_DIR, Dataset, make_cache_dir

DATA_VERSION = 1
XTB_SETTINGS = {"method": "GFN1-xTB", "electronic_temperature": 1000.0, "accuracy": 1.0, "max_iterations": 250}
# mixer settings of the one retry after a failed SCF: they change the path to the solution, not the solution
XTB_RETRY = {"mixer_damping": 0.2, "max_iterations": 500}
VACUUM = 6.0  # A on each side: 12 A between slab images, > CHGNet's 6 A cutoff above a 3 A adsorbate
LATTICE = {"Cu": 3.61, "Pt": 3.92, "Ag": 4.09, "Au": 4.08, "Pd": 3.89, "Ni": 3.52}  # fcc, experimental (A)
SLAB_SIZE = {"fcc111": (2, 2, 3), "fcc100": (2, 2, 3), "fcc211": (3, 2, 3)}
TIMESTEP_FS = 0.5  # resolves O-H and C-H vibrations
FRAME_EVERY = 40  # steps: 20 fs between frames
EQUILIBRATION = 200  # steps: 100 fs
RATTLE = 0.05  # A, metal displacement of random-site frames (about a 300 K snapshot)
MAX_TILT = np.radians(35.0)


@dataclass(frozen=True)
class Adsorbate:
    """Atoms along +z from the binding atom (first), and the driver's parameters."""

    symbols: tuple
    offsets: tuple  # (n, 3) A, binding atom at the origin
    binding_distance: float  # Morse minimum, binding atom to one metal atom (A)
    bonds: tuple = ()  # (i, j, length A, stiffness eV/A^2) inside the adsorbate


def _methyl() -> Adsorbate:
    up = np.cos(np.radians(180 - 109.47))  # H above the C, which binds downwards
    side = np.sin(np.radians(180 - 109.47))
    hs = [(1.09 * side * np.cos(p), 1.09 * side * np.sin(p), 1.09 * up) for p in (0, 2 * np.pi / 3, 4 * np.pi / 3)]
    hh = 1.09 * side * np.sqrt(3.0)
    bonds = tuple((0, i, 1.09, 30.0) for i in (1, 2, 3)) + ((1, 2, hh, 5.0), (1, 3, hh, 5.0), (2, 3, hh, 5.0))
    return Adsorbate(("C", "H", "H", "H"), ((0.0, 0.0, 0.0), *hs), 2.05, bonds)


ADSORBATES = {
    "H": Adsorbate(("H",), ((0.0, 0.0, 0.0),), 1.80),
    "O": Adsorbate(("O",), ((0.0, 0.0, 0.0),), 1.95),
    "OH": Adsorbate(("O", "H"), ((0.0, 0.0, 0.0), (0.0, 0.0, 0.97)), 2.00, ((0, 1, 0.97, 45.0),)),
    "CO": Adsorbate(("C", "O"), ((0.0, 0.0, 0.0), (0.0, 0.0, 1.15)), 1.90, ((0, 1, 1.15, 110.0),)),
    "CH3": _methyl(),
}
BINDING_RANGE = (1.8, 2.1)  # A: random-site frames lift the binding atom to a distance drawn from it


@dataclass(frozen=True)
class AdsorbateRecipe:
    """Frame counts of each split; the defaults are the study's (672 pool, 96 test_id, 48 test_shift)."""

    metals: tuple = ("Cu", "Pd")
    adsorbates: tuple = ("H", "O", "OH", "CO")
    facets: tuple = ("fcc111", "fcc100", "fcc211")  # names of ase.build's slab builders
    common_facet: str = "fcc111"
    common_temperature: int = 300
    hot_temperatures: tuple = (600, 900)
    common_trajectories: int = 2  # per (metal, adsorbate) on the common facet at the common temperature
    common_frames: int = 20  # per such trajectory
    facet_frames: int = 10  # per (metal, adsorbate, other facet), one trajectory at the common temperature
    hot_frames: int = 3  # per (metal, adsorbate, facet, hot temperature), one trajectory
    random_site_frames: int = 2  # per (metal, adsorbate, facet)
    test_conditions: tuple = (300, 600, 900, "random")  # MD temperatures and random sites
    test_frames: int = 1  # per (metal, adsorbate, facet, test condition)
    shift_adsorbate: str = "CH3"  # absent from the pool: on the pool's metals and facets
    shift_metal: str = "Ag"  # absent from the pool: with the pool's adsorbates on every facet
    shift_conditions: tuple = (300, "random")
    shift_frames: int = 2  # per (pool metal, facet, condition) of the shifted adsorbate
    shift_metal_frames: int = 1  # per (pool adsorbate, facet, condition) on the shifted metal
    seed: int = 0

    def key(self) -> str:
        text = json.dumps({"version": DATA_VERSION, "xtb": XTB_SETTINGS, "vacuum": VACUUM, **asdict(self)},
                          sort_keys=True)
        return "ads_" + hashlib.sha1(text.encode()).hexdigest()[:10]

    def load(self, cache_dir: str, verbose: bool = True) -> "AdsorbateDataset":
        """The data set from the cache under ``cache_dir``, generated (or its generation resumed) when absent."""
        return load_adsorbates(cache_dir, self, verbose=verbose)

    def generate(self) -> "AdsorbateDataset":
        """The data set generated afresh, in a temporary cache (one process)."""
        import tempfile

        with tempfile.TemporaryDirectory() as cache_dir:
            return load_adsorbates(cache_dir, self, verbose=False)


# A few frames for a CI test: 4 pool, 4 test_id, 2 test_shift.
SMOKE = AdsorbateRecipe(metals=("Cu",), adsorbates=("O", "CO"), facets=("fcc111", "fcc211"), common_trajectories=1,
                        common_frames=1, facet_frames=1, hot_frames=0, random_site_frames=0,
                        test_conditions=("random",), shift_adsorbate="H", shift_conditions=("random",),
                        shift_frames=1, shift_metal_frames=0)


@dataclass
class AdsorbateDataset(Dataset):
    """The three splits (lists of labelled ase.Atoms); ``seconds`` is the generation time summed over tasks
    (also when read from the cache) and ``summary`` the cache's JSON summary (counts and seconds)."""

    summary: dict = field(default_factory=dict)


# ---- geometry -------------------------------------------------------------------------------------------

def make_slab(metal: str, facet: str):
    """A periodic 3-layer slab of ``metal`` exposing ``facet``; tags 1 mark the fixed bottom third."""
    from ase.build import fcc100, fcc111, fcc211

    build = {"fcc111": fcc111, "fcc100": fcc100, "fcc211": fcc211}[facet]
    slab = build(metal, size=SLAB_SIZE[facet], a=LATTICE[metal], vacuum=VACUUM)
    slab.pbc = True
    order = np.argsort(slab.positions[:, 2], kind="stable")
    tags = np.zeros(len(slab), dtype=int)
    tags[order[: len(slab) // 3]] = 1
    slab.set_tags(tags)
    return slab


def _lateral_images(cell) -> np.ndarray:
    """(9, 3) translations by -1, 0, 1 of the two in-plane cell vectors."""
    return np.array([i * cell[0] + j * cell[1] for i in (-1, 0, 1) for j in (-1, 0, 1)])


def _min_distance(point, metal_positions, cell) -> float:
    images = (metal_positions[None, :, :] + _lateral_images(cell)[:, None, :]).reshape(-1, 3)
    return float(np.linalg.norm(images - point, axis=1).min())


def common_site(slab, facet: str) -> np.ndarray:
    """Lateral (x, y) of the facet's common site: the hollow farthest from every top-layer atom on the
    flat facets, the bridge between two step-edge atoms on (211)."""
    pos, cell = slab.positions, slab.cell.array
    top = pos[pos[:, 2] > pos[:, 2].max() - 0.5]
    images = (top[None, :, :2] + _lateral_images(cell)[:, None, :2]).reshape(-1, 2)
    if facet == "fcc211":
        others = images[np.linalg.norm(images - top[0, :2], axis=1) > 0.1]
        nearest = others[np.argmin(np.linalg.norm(others - top[0, :2], axis=1))]
        return 0.5 * (top[0, :2] + nearest)
    grid = np.linspace(0.0, 1.0, 24, endpoint=False)
    points = np.array([u * cell[0, :2] + v * cell[1, :2] for u in grid for v in grid])
    gaps = np.linalg.norm(points[:, None, :] - images[None, :, :], axis=2).min(axis=1)
    return points[int(np.argmax(gaps))]


def lift_height(slab, xy, distance: float) -> float:
    """The highest z over lateral point ``xy`` at which an atom is ``distance`` from the nearest metal atom
    (lowered from above in 0.01 A steps, so it stops at the first contact)."""
    pos, cell = slab.positions, slab.cell.array
    z = pos[:, 2].max() + distance + 1.0
    while _min_distance(np.array([xy[0], xy[1], z]), pos, cell) > distance:
        z -= 0.01
        if z < pos[:, 2].min():
            raise RuntimeError(f"lift_height: no contact at {distance} A over {xy}")
    return z


def _rotation(tilt: float, azimuth: float, spin: float) -> np.ndarray:
    """Rotate about z by ``spin``, tilt off z by ``tilt`` towards ``azimuth``."""
    def rz(a):
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(tilt), 0, np.sin(tilt)], [0, 1, 0], [-np.sin(tilt), 0, np.cos(tilt)]])
    return rz(azimuth) @ ry @ rz(spin)


def place(slab, name: str, xy, distance: float, rotation=None):
    """Slab + adsorbate ``name`` with its binding atom over ``xy`` at ``distance`` from the nearest metal atom."""
    from ase import Atoms

    ads = ADSORBATES[name]
    offsets = np.array(ads.offsets) @ (np.eye(3) if rotation is None else rotation).T
    z = lift_height(slab, xy, distance)
    atoms = slab + Atoms(ads.symbols, positions=offsets + np.array([xy[0], xy[1], z]))
    atoms.set_tags(np.concatenate([slab.get_tags(), np.full(len(ads.symbols), 2)]))  # 2: adsorbate
    return atoms


def _place_random(slab, name, rng):
    """A random-site frame: random lateral point, tilt, rotation and binding distance; tilts that bring
    another adsorbate atom within 2 A of a metal atom are halved until it clears."""
    cell = slab.cell.array
    u, v = rng.random(2)
    xy = (u * cell[0] + v * cell[1])[:2]
    distance = float(rng.uniform(*BINDING_RANGE))
    tilt, azimuth, spin = rng.uniform(0, MAX_TILT), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
    n_metal = len(slab)
    for _ in range(6):
        atoms = place(slab, name, xy, distance, _rotation(tilt, azimuth, spin))
        others = atoms.positions[n_metal + 1:]
        if all(_min_distance(p, atoms.positions[:n_metal], cell) >= 2.0 for p in others):
            return atoms, distance
        tilt *= 0.5
    return place(slab, name, xy, distance), distance


# ---- the cheap MD driver -----------------------------------------------------------------------------

class SlabDriver(Calculator):
    """ASE calculator for the MD only: EMT on the metal atoms, a Morse pair potential binding atom-metal,
    a wall keeping the adsorbate's other atoms >= 2.2 A from the metal, harmonic bonds in the adsorbate.
    The first ``n_metal`` atoms are the metal; the adsorbate ``name`` follows, binding atom first."""

    implemented_properties = ["energy", "free_energy", "forces"]
    MORSE_DEPTH = 0.6  # eV per metal neighbour: a 3-fold hollow binds by about 1.8 eV
    MORSE_WIDTH = 1.4  # 1/A
    # mostly first metal neighbours (farther ones would pull the adsorbate into the hollow): the Morse term
    # is switched off smoothly (cosine) between these distances, so energy and force stay continuous
    SWITCH = (2.5, 3.1)  # A
    WALL = (2.2, 10.0)  # A, eV/A^2

    def __init__(self, n_metal: int, name: str):
        super().__init__()
        self.n_metal, self.adsorbate = n_metal, ADSORBATES[name]
        self._metal = None  # the metal atoms with one EMT calculator, kept: EMT updates its neighbour list

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from ase.calculators.emt import EMT

        super().calculate(atoms, properties, system_changes)
        if self._metal is None or "numbers" in system_changes or "cell" in system_changes:
            self._metal = self.atoms[: self.n_metal].copy()
            self._metal.calc = EMT()
        self._metal.positions = self.atoms.positions[: self.n_metal]
        energy = self._metal.get_potential_energy()
        forces = np.zeros((len(self.atoms), 3))
        forces[: self.n_metal] = self._metal.get_forces()
        e_ads, f_ads = adsorbate_terms(self.atoms, self.n_metal, self.adsorbate)
        self.results = {"energy": energy + e_ads, "free_energy": energy + e_ads, "forces": forces + f_ads}


def _morse(r, r0):
    """Switched Morse pair energy and its derivative in r."""
    a, depth = SlabDriver.MORSE_WIDTH, SlabDriver.MORSE_DEPTH
    r_on, r_off = SlabDriver.SWITCH
    x = np.exp(-a * (r - r0))
    v, dv = depth * ((1 - x) ** 2 - 1), 2 * depth * a * x * (1 - x)
    t = np.clip((r - r_on) / (r_off - r_on), 0.0, 1.0)
    s, ds = 0.5 * (1 + np.cos(np.pi * t)), -0.5 * np.pi * np.sin(np.pi * t) / (r_off - r_on)
    return v * s, dv * s + v * ds


def adsorbate_terms(atoms, n_metal: int, ads: Adsorbate):
    """Energy (eV) and forces (eV/A) of the driver's adsorbate terms (all but EMT)."""
    pos, cell = atoms.positions, atoms.cell.array
    metal = (pos[None, :n_metal] + _lateral_images(cell)[:, None, :]).reshape(-1, 3)  # the slab's images
    owner = np.tile(np.arange(n_metal), 9)
    energy, forces = 0.0, np.zeros((len(atoms), 3))
    r_wall, k_wall = SlabDriver.WALL
    for a in range(n_metal, len(atoms)):
        vec = metal - pos[a]  # from the adsorbate atom to each metal atom
        d = np.linalg.norm(vec, axis=1)
        if a == n_metal:
            near = d < SlabDriver.SWITCH[1]
            v, dv = _morse(d[near], ads.binding_distance)
            energy += float(np.sum(v))
        else:
            near = d < r_wall
            energy += float(np.sum(0.5 * k_wall * (r_wall - d[near]) ** 2))
            dv = -k_wall * (r_wall - d[near])
        pair = (dv / d[near])[:, None] * vec[near]  # F_a = dV/dr * vec / r, the metal atom gets -that
        forces[a] += pair.sum(axis=0)
        np.add.at(forces, owner[near], -pair)
    for p, q, length, k in ads.bonds:
        delta = pos[n_metal + q] - pos[n_metal + p]
        r = np.linalg.norm(delta)
        energy += 0.5 * k * (r - length) ** 2
        f = k * (r - length) * delta / r
        forces[n_metal + p] += f
        forces[n_metal + q] -= f
    return energy, forces


def md_frames(slab, facet: str, name: str, temperature: float, n_frames: int, rng):
    """``n_frames`` driver-MD geometries (ase.Atoms, no calculator) from the facet's common site."""
    from ase import units
    from ase.constraints import FixAtoms
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    atoms = place(slab, name, common_site(slab, facet), ADSORBATES[name].binding_distance)
    atoms.set_constraint(FixAtoms(mask=atoms.get_tags() == 1))
    atoms.calc = SlabDriver(len(slab), name)
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        dyn = Langevin(atoms, TIMESTEP_FS * units.fs, temperature_K=temperature, friction=0.02 / units.fs,
                       fixcm=False, rng=rng)
    dyn.run(EQUILIBRATION)
    frames = []
    for _ in range(n_frames):
        dyn.run(FRAME_EVERY)
        frame = atoms.copy()
        frame.set_constraint()
        frame.calc = None
        frames.append(frame)
    return frames


# ---- labels --------------------------------------------------------------------------------------------

def xtb_calculator(**overrides):
    """The reference method: GFN1-xTB in tblite with the data set's one setting."""
    from tblite.ase import TBLite

    return TBLite(**{**XTB_SETTINGS, **overrides}, verbosity=0)


def label(frame):
    """(energy eV, forces eV/A, wall seconds, retried) of ``frame`` by a fresh GFN1-xTB calculator; None when
    the SCF fails twice (the frame is then dropped and counted)."""
    from ase.calculators.calculator import CalculationFailed

    t0 = time.perf_counter()
    for retried, extra in ((False, {}), (True, XTB_RETRY)):
        atoms = frame.copy()
        atoms.calc = xtb_calculator(**extra)
        try:
            energy = atoms.get_potential_energy()
            forces = atoms.get_forces()
        except CalculationFailed:
            continue
        return float(energy), np.array(forces), time.perf_counter() - t0, retried
    return None


def binding_distance(frame) -> float:
    n_metal = int(frame.info["n_metal"])
    return _min_distance(frame.positions[n_metal], frame.positions[:n_metal], frame.cell.array)


# ---- tasks -------------------------------------------------------------------------------------------

def tasks(recipe: AdsorbateRecipe) -> list:
    """Every generation task of the recipe, in a fixed order (its index seeds its random stream)."""
    r, out = recipe, []

    def add(split, metal, name, facet, condition, n, **extra):
        if n > 0:
            out.append({"split": split, "metal": metal, "adsorbate": name, "facet": facet,
                        "condition": condition, "n_frames": n, **extra})

    for metal in r.metals:
        for name in r.adsorbates:
            for _ in range(r.common_trajectories):
                add("pool", metal, name, r.common_facet, r.common_temperature, r.common_frames, site="common")
            for facet in r.facets:
                if facet != r.common_facet:
                    add("pool", metal, name, facet, r.common_temperature, r.facet_frames)
                for temperature in r.hot_temperatures:
                    add("pool", metal, name, facet, temperature, r.hot_frames)
                add("pool", metal, name, facet, "random", r.random_site_frames)
                for condition in r.test_conditions:
                    add("test_id", metal, name, facet, condition, r.test_frames)
    for facet in r.facets:
        for condition in r.shift_conditions:
            for metal in r.metals:
                add("test_shift", metal, r.shift_adsorbate, facet, condition, r.shift_frames, shift="adsorbate")
            for name in r.adsorbates:
                add("test_shift", r.shift_metal, name, facet, condition, r.shift_metal_frames, shift="metal")
    return out


def run_task(task: dict, seed_sequence) -> tuple[list, dict]:
    """Geometries of one task, each labelled; returns (labelled frames, timing)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed_sequence)
    slab = make_slab(task["metal"], task["facet"])
    t0 = time.perf_counter()
    if task["condition"] == "random":
        geometries = []
        for _ in range(task["n_frames"]):
            moved = slab.copy()
            moved.positions += rng.normal(0.0, RATTLE, size=moved.positions.shape)
            geometries.append(_place_random(moved, task["adsorbate"], rng)[0])
    else:
        geometries = md_frames(slab, task["facet"], task["adsorbate"], task["condition"], task["n_frames"], rng)
    geometry_seconds = time.perf_counter() - t0
    frames, label_seconds, label_cpu, dropped, retried = [], [], [], 0, 0
    for geometry in geometries:
        cpu0 = time.process_time()  # this process's CPU: the cost on a shared machine, where wall time is not
        result = label(geometry)
        label_cpu.append(time.process_time() - cpu0)
        if result is None:
            dropped += 1
            continue
        energy, forces, seconds, was_retried = result
        retried += was_retried
        label_seconds.append(seconds)
        frame = geometry.copy()
        frame.info = _frame_info(task, len(slab), seconds)
        frame.info["binding_distance"] = round(binding_distance(frame), 4)
        frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
        frames.append(frame)
    return frames, {"geometry_seconds": geometry_seconds, "label_seconds": label_seconds,
                    "label_cpu_seconds": label_cpu, "dropped": dropped, "retried": retried}


def _frame_info(task, n_metal, seconds) -> dict:
    random_site = task["condition"] == "random"
    info = {"domain": "adsorbate", "system": f"{task['adsorbate']}@{task['facet']}",
            "adsorbate": task["adsorbate"], "metal": task["metal"], "facet": task["facet"],
            "temperature": 0 if random_site else int(task["condition"]),
            "origin": "random_site" if random_site else "md", "site": task.get("site", "random" if random_site
                                                                              else "common"),
            "split": task["split"], "n_metal": n_metal, "label_seconds": round(seconds, 3)}
    if "shift" in task:
        info["shift"] = task["shift"]
    return info


# ---- cache -------------------------------------------------------------------------------------------

def _task_path(chunk_dir, index) -> str:
    return os.path.join(chunk_dir, f"task_{index:04d}.extxyz")


def _run_and_save(args):
    """Worker entry: run task ``index`` and write its frames and timing atomically."""
    index, task, seed_sequence, chunk_dir = args
    from ase.io import write

    frames, timing = run_task(task, seed_sequence)
    path = _task_path(chunk_dir, index)
    with open(path + ".json.tmp", "w") as fh:
        json.dump({"task": task, **timing}, fh)
    if frames:
        write(path + ".tmp", frames, format="extxyz")
        os.replace(path + ".tmp", path)
    os.replace(path + ".json.tmp", path + ".json")  # written last: marks the task done
    return index, timing


def generate(recipe: AdsorbateRecipe, cache_dir: str, workers: int = 1, log=print) -> None:
    """Run the recipe's tasks that are not in the cache yet, then join them into one file."""
    key = recipe.key()
    chunk_dir = os.path.join(cache_dir, key)
    os.makedirs(chunk_dir, exist_ok=True)
    todo = tasks(recipe)
    seeds = np.random.SeedSequence([recipe.seed, 211]).spawn(len(todo))
    pending = [(i, t, seeds[i], chunk_dir) for i, t in enumerate(todo)
               if not os.path.exists(_task_path(chunk_dir, i) + ".json")]
    log(f"adsorbate data {key}: {len(todo)} tasks, {len(todo) - len(pending)} cached, {len(pending)} to run")
    if workers > 1 and len(pending) > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for done, (index, timing) in enumerate(pool.map(_run_and_save, pending), 1):
                _log_task(log, done, len(pending), todo[index], timing)
    else:
        for done, job in enumerate(pending, 1):
            index, timing = _run_and_save(job)
            _log_task(log, done, len(pending), todo[index], timing)
    _join(recipe, cache_dir, todo)


def _log_task(log, done, total, task, timing):
    secs = timing["label_seconds"]
    log(f"  [{done}/{total}] {task['split']:10s} {task['adsorbate']:>3s} on {task['metal']}({task['facet']}) "
        f"{task['condition']!s:>6}: {len(secs)} frames, xTB {sum(secs):.1f} s wall, "
        f"{sum(timing['label_cpu_seconds']):.1f} s CPU"
        + (f", {timing['dropped']} dropped" if timing["dropped"] else ""))


def _join(recipe, cache_dir, todo) -> None:
    from ase.io import read, write

    key = recipe.key()
    chunk_dir = os.path.join(cache_dir, key)
    frames, timings = [], []
    for i in range(len(todo)):
        with open(_task_path(chunk_dir, i) + ".json") as fh:
            timings.append(json.load(fh))
        if os.path.exists(_task_path(chunk_dir, i)):
            frames += read(_task_path(chunk_dir, i), index=":")
    summary = _summary(recipe, frames, timings)
    path = os.path.join(cache_dir, f"{key}.extxyz")
    write(path + ".tmp", frames, format="extxyz")
    with open(path[:-7] + ".json", "w") as fh:
        json.dump(summary, fh, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    shutil.rmtree(chunk_dir)


def _summary(recipe, frames, timings) -> dict:
    import tblite

    label_seconds = np.array([s for t in timings for s in t["label_seconds"]])
    label_cpu = np.array([s for t in timings for s in t.get("label_cpu_seconds", [])])
    counts = {}
    for f in frames:
        counts.setdefault(f.info["split"], {}).setdefault(f.info["system"], 0)
        counts[f.info["split"]][f.info["system"]] += 1
    return {"recipe": asdict(recipe), "xtb": XTB_SETTINGS, "tblite": getattr(tblite, "__version__", "?"),
            "frames": {s: sum(c.values()) for s, c in counts.items()}, "per_system": counts,
            "label_seconds_total": float(label_seconds.sum()),
            "label_seconds_per_frame": {"mean": float(label_seconds.mean()),
                                        "median": float(np.median(label_seconds)),
                                        "max": float(label_seconds.max())},
            "label_cpu_seconds_total": float(label_cpu.sum()),
            "label_cpu_seconds_per_frame": {"mean": float(label_cpu.mean()) if len(label_cpu) else None,
                                            "median": float(np.median(label_cpu)) if len(label_cpu) else None},
            "tasks_without_cpu_seconds": sum("label_cpu_seconds" not in t for t in timings),
            "geometry_seconds_total": float(sum(t["geometry_seconds"] for t in timings)),
            "dropped_frames": int(sum(t["dropped"] for t in timings)),
            "retried_frames": int(sum(t["retried"] for t in timings)),
            "seconds": float(label_seconds.sum() + sum(t["geometry_seconds"] for t in timings))}


def load_adsorbates(cache_dir: str, recipe: AdsorbateRecipe | None = None, workers: int = 1,
                    verbose: bool = True) -> AdsorbateDataset:
    """The data set of ``recipe``, read from the cache, generated (or its generation resumed) when absent."""
    from ase.io import read

    recipe = recipe or AdsorbateRecipe()
    make_cache_dir(cache_dir)
    path = os.path.join(cache_dir, f"{recipe.key()}.extxyz")
    if not os.path.exists(path):
        generate(recipe, cache_dir, workers, log=print if verbose else (lambda *_: None))
    with open(path[:-7] + ".json") as fh:
        summary = json.load(fh)
    frames = read(path, index=":")
    split = {s: [f for f in frames if f.info["split"] == s] for s in ("pool", "test_id", "test_shift")}
    return AdsorbateDataset(split["pool"], split["test_id"], split["test_shift"], recipe, summary["seconds"],
                            summary)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Generate (or resume, or read) the adsorbate data set.")
    p.add_argument("--smoke", action="store_true", help="the few-frame recipe of the CI test")
    p.add_argument("--cache", default=CACHE_DIR, help="labelled-data cache directory (the study's default)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (each one thread)")
    args = p.parse_args(argv)
    data = load_adsorbates(args.cache, SMOKE if args.smoke else AdsorbateRecipe(), args.workers)
    s = data.summary
    print(json.dumps({k: s[k] for k in ("frames", "label_seconds_total", "label_seconds_per_frame",
                                        "label_cpu_seconds_total", "label_cpu_seconds_per_frame",
                                        "geometry_seconds_total", "dropped_frames", "retried_frames")}, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before tblite loads: one thread per process
    raise SystemExit(main())
