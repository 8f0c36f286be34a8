"""Recognise a structure already labelled, however its file wrote it.

Two structures have the same geometry when they hold the same atomic numbers, the same ``pbc``
flags, periodic cell vectors equal within ``tol`` (Å, per component), and every atom of one lies
within ``tol`` of an atom of the other of the same element, fractional coordinates along the
periodic directions taken modulo 1 (so an atom shifted by a lattice vector, or wrapped onto the
opposite face of the cell, is the same atom). Atom order, wrapping and rounding below ``tol`` do
not matter; the cell vectors of non-periodic directions do not either (they place no images).

:class:`GeometryIndex` finds such matches in time linear in the number of queries: structures are
grouped by (composition, pbc) and, inside a group, sorted by a continuous summary that atom order
and lattice shifts leave unchanged (weighted sums over atoms of the cosine and sine of each
fractional coordinate along the periodic directions, and of the Cartesian part across them).
Equal geometries have summaries closer than a bound computed from ``tol``, so only structures inside
that window, in every summary component, are compared atom by atom.
"""
from __future__ import annotations


import numpy as np

from ._validation import as_positive_float


__all__ = ["DEFAULT_TOL", "GeometryIndex", "same_geometry"]

DEFAULT_TOL = 1e-4  # Å: far above file rounding (1e-6 Å), far below a thermal displacement (0.01 Å)
_SAFETY = 2.0  # the window is twice the bound: rounding, and the lattice of the match against the query's


def _group(atoms) -> tuple:
    """(composition as (Z, count) pairs, pbc): only structures of one group can match."""
    elements, counts = np.unique(np.asarray(atoms.numbers, dtype=np.int64), return_counts=True)
    return tuple(zip(elements.tolist(), counts.tolist())), tuple(bool(p) for p in atoms.pbc)


class _Geometry:
    """Fractional coordinates along the periodic directions (wrapped into [0, 1)) and the Cartesian part
    across them, atoms grouped by element; the summary and its search window."""

    __slots__ = ("group", "lattice", "by_element", "summary", "window")

    def __init__(self, atoms, tol: float):
        numbers = np.asarray(atoms.numbers, dtype=np.int64)
        pbc = tuple(bool(p) for p in atoms.pbc)
        cell = np.asarray(atoms.cell, dtype=np.float64).reshape(3, 3)
        self.lattice = cell[list(pbc)]
        if len(self.lattice) and np.linalg.matrix_rank(self.lattice, tol=1e-8) < len(self.lattice):
            raise ValueError("degenerate periodic cell")
        self.group = _group(atoms)
        elements = np.unique(numbers)
        dual = np.linalg.pinv(self.lattice) if len(self.lattice) else np.zeros((3, 0))  # x @ dual = fractions
        positions = np.asarray(atoms.get_positions(), dtype=np.float64)
        fractions = positions @ dual
        across = positions - fractions @ self.lattice  # the part no lattice shift changes
        fractions -= np.floor(fractions)
        self.by_element = {int(z): (fractions[numbers == z], across[numbers == z]) for z in elements}
        weights = 1.0 + np.modf(numbers * 0.6180339887)[0]  # per element, in [1, 2): swapped species differ
        angles = 2 * np.pi * fractions
        self.summary = weights @ np.hstack([np.cos(angles), np.sin(angles), across])  # (2 k + 3,)
        # an atom within tol moves each fraction by at most tol |dual| (so a cosine or sine by 2 pi times that)
        # and its Cartesian part by at most tol
        turn = 2 * np.pi * tol * float(np.linalg.norm(dual))
        per_atom = np.array([turn] * (2 * len(self.lattice)) + [tol] * 3)
        self.window = _SAFETY * float(weights.sum()) * per_atom

    def matches(self, other: "_Geometry", tol: float) -> bool:
        if self.group != other.group:
            return False
        if len(self.lattice) and np.max(np.abs(self.lattice - other.lattice)) > tol:
            return False
        return all(_paired(mine, other.by_element[z], self.lattice, tol) for z, mine in self.by_element.items())


def _paired(a: tuple, b: tuple, lattice: np.ndarray, tol: float) -> bool:
    """Whether atoms ``a`` and ``b`` (one element, same count; fractions and Cartesian part) pair one to one
    within ``tol``: fractional differences taken modulo 1 (an atom on one face of the cell and its copy on
    the opposite face are one atom), then measured in Å with ``lattice``."""
    (fa, ca), (fb, cb) = a, b
    partner = np.full(len(fa), -1, dtype=np.int64)
    for start in range(0, len(fa), 256):  # rows of the pair table at a time: memory O(256 N)
        stop = start + 256
        shift = fa[start:stop, None, :] - fb[None, :, :]
        diff = (shift - np.rint(shift)) @ lattice + (ca[start:stop, None, :] - cb[None, :, :])
        close = np.einsum("ijk,ijk->ij", diff, diff) <= tol * tol
        if not close.any(axis=1).all():
            return False
        partner[start:stop] = np.argmax(close, axis=1)
    return np.unique(partner).size == len(fb)  # atoms closer than 2 tol to each other: refused, never guessed


def same_geometry(a, b, *, tol: float = DEFAULT_TOL) -> bool:
    """Whether two ``ase.Atoms`` have the same geometry (see the module docstring)."""
    return _Geometry(a, tol).matches(_Geometry(b, tol), tol)


class GeometryIndex:
    """Structures to recognise later by geometry: ``index.add(atoms)``, then ``atoms in index``.

    Parameters
    ----------
    tol : float
        Position and cell tolerance in Å (default 1e-4).
    where : str
        Function name used in error messages.

    Notes
    -----
    Keeps every added structure's wrapped coordinates (48 bytes per atom). A structure whose periodic
    cell vectors are linearly dependent has no lattice to wrap by: it is recognised only when
    bit-identical (numbers, positions, cell, pbc).
    """

    def __init__(self, *, tol: float = DEFAULT_TOL, where: str = "ntkal.same_geometry"):
        as_positive_float(tol, where, "tol", "Å")
        self.tol = float(tol)
        self._groups: dict = {}  # (composition, pbc) -> list of geometries, sorted by summary[0] before a lookup
        self._sorted: dict = {}  # (composition, pbc) -> their summaries as rows in that order, dropped by add
        self._degenerate: set = set()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, atoms) -> None:
        self._count += 1
        try:
            geometry = _Geometry(atoms, self.tol)
        except ValueError:
            self._degenerate.add(_exact_key(atoms))
            return
        self._groups.setdefault(geometry.group, []).append(geometry)
        self._sorted.pop(geometry.group, None)

    def __contains__(self, atoms) -> bool:
        if _group(atoms) not in self._groups and not self._degenerate:  # no structure of this composition and pbc
            return False
        try:
            query = _Geometry(atoms, self.tol)
        except ValueError:
            return _exact_key(atoms) in self._degenerate
        geometries = self._groups.get(query.group)
        if not geometries:
            return False
        summaries = self._sorted.get(query.group)
        if summaries is None:
            geometries.sort(key=lambda g: g.summary[0])
            summaries = self._sorted[query.group] = np.array([g.summary for g in geometries])
        lo = int(np.searchsorted(summaries[:, 0], query.summary[0] - query.window[0], side="left"))
        hi = int(np.searchsorted(summaries[:, 0], query.summary[0] + query.window[0], side="right"))
        near = np.flatnonzero(np.all(np.abs(summaries[lo:hi] - query.summary) <= query.window, axis=1)) + lo
        return any(geometries[i].matches(query, self.tol) for i in near)


def _exact_key(atoms) -> bytes:
    from .structures import structure_digest

    return structure_digest(atoms)
