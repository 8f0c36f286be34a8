"""The check pass of a screen: every structure read (parsed once), checked once, before any featurisation.

For each set (train, pool, target) it records what later phases need without reading the structures again:
the digest of every chunk (the feature store's key), the stratum of every structure, the training
structures' reference forces (calibration), and which pool structures repeat a training geometry (never
candidates). A structure the model cannot take is named by index: with ``on_error="stop"`` the screen
stops before anything is computed, with ``"skip"`` it is left out and listed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InvalidArgumentError, fail
from .feature_store import chunk_digest
from .progress import bar as progress_bar
from .same_geometry import GeometryIndex
from .strata import composition_key

__all__ = ["CheckPass", "CheckedSet"]


@dataclass
class CheckedSet:
    """What the check pass learned about one set of structures."""

    label: str
    digests: list = field(default_factory=list)  # structures digest of every chunk, in order
    keys: list = field(default_factory=list)  # stratum of every structure ("*" when not needed)
    forces: list = field(default_factory=list)  # train: reference forces of every structure (None: none)
    in_train: np.ndarray | None = None  # pool: repeats a training geometry


class CheckPass:
    """Checks sets one after another (train first: the pool's exclusions need its geometries).

    Parameters
    ----------
    featurizer : callable
        Its ``check(atoms, where=, arg=)`` is called when present.
    chunk_size : int
    strata : bool
        Record composition keys (else ``"*"``, unless calibration needs them).
    calibrate : {"off", "on", "auto"}
        ``"auto"`` is decided on the training set: on when every training structure carries forces.
    on_error, progress, where
        As in :func:`ntkal.screen`.
    """

    def __init__(self, featurizer, *, chunk_size: int, strata: bool, calibrate: str, on_error: str, progress: bool,
                 where: str):
        self.check = getattr(featurizer, "check", None)
        self.chunk_size, self.strata, self.calibrate = chunk_size, strata, calibrate
        self.on_error, self.progress, self.where = on_error, progress, where
        self.skipped: dict = {}  # (label, index) -> reason
        self.geometries = GeometryIndex(where=where)

    def run(self, src, label: str, arg: str | None = None) -> CheckedSet:
        """Read and check every structure of ``src`` once, recording what later phases need (errors name a
        structure ``{arg}[i]``, ``arg`` defaulting to ``label``)."""
        out = CheckedSet(label, in_train=np.zeros(len(src), dtype=bool) if label == "pool" else None)
        problems = []
        bar = progress_bar(len(src), self.progress, f"checking {label}")
        for start, structures in src.chunks(self.chunk_size):
            for i, atoms in enumerate(structures):
                problem = self._check(atoms, label, arg or label, start + i)
                if problem is not None:
                    problems.append(problem)
                self._record(out, atoms, start + i)
            out.digests.append(chunk_digest(structures))
            bar.update(len(structures))
        bar.close()
        if problems and self.on_error == "stop":
            more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
            fail(self.where, f"{len(problems)} {arg or label} structure(s) of {src.describe()} cannot be featurized "
                             "by this model; nothing was computed:\n  " + "\n  ".join(problems[:5]) + more)
        if label == "train" and self.calibrate == "auto":  # on when every training structure carries forces
            self.calibrate = "on" if all(f is not None for f in out.forces) else "off"
        return out

    def _check(self, atoms, label: str, arg: str, index: int) -> str | None:
        if self.check is None:
            return None
        try:
            self.check(atoms, where=self.where, arg=f"{arg}[{index}]")
        except InvalidArgumentError as exc:  # the model cannot take it
            self.skipped[(label, index)] = str(exc).split(": ", 1)[-1]
            return str(exc)
        return None

    def _record(self, out: CheckedSet, atoms, index: int) -> None:
        out.keys.append(composition_key(atoms) if self.strata or self.calibrate != "off" else "*")
        if out.label == "pool" and len(self.geometries) and atoms in self.geometries:
            out.in_train[index] = True  # already labelled (same geometry): never a candidate
        if out.label == "train":
            self.geometries.add(atoms)
            if self.calibrate == "on" or (self.calibrate == "auto" and has_forces(atoms)):
                out.forces.append(reference_forces(atoms, self.where, f"train[{index}]"))
            elif self.calibrate == "auto":
                out.forces.append(None)


def reference_forces(atoms, where: str, arg: str) -> np.ndarray:
    """Labelled forces of a training structure (extxyz / ASE db labels load as a calculator)."""
    try:
        forces = atoms.get_forces() if atoms.calc is not None else atoms.arrays.get("forces")
    except Exception as exc:  # noqa: BLE001 - a calculator without forces
        fail(where, f"{arg} has no reference forces ({type(exc).__name__}: {exc}); calibrate needs labelled "
                    "training structures", cause=exc)
    if forces is None:
        fail(where, f"{arg} has no reference forces; calibrate needs labelled training structures (extxyz forces or "
                    "an ASE db with forces)")
    return np.asarray(forces, dtype=np.float64)


def has_forces(atoms) -> bool:
    try:
        return (atoms.calc is not None and "forces" in getattr(atoms.calc, "results", {})) or "forces" in atoms.arrays
    except Exception:  # noqa: BLE001
        return False
