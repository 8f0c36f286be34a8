"""Periodic cells for graph builders that need one (CHGNet): whatever periodicity a structure has.

* fully periodic: its own cell (it must have non-zero volume);
* not periodic (molecules, ``pbc=False``): a cubic box wide enough that no image is within the cutoff;
* partly periodic (slabs, ``pbc=(True, True, False)`` as ``ase.build.fcc111(..., vacuum=...)`` makes
  them): periodic in the directions marked periodic, and along the others with the vacuum the cell
  has — with a warning when that vacuum is shorter than the model's cutoff (atoms would then see
  their periodic images across it). A non-periodic direction without a cell vector gets one.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import fail


def molecule_box(atoms, cutoff: float) -> np.ndarray:
    """Cubic box wide enough that no periodic image lies within the cutoff."""
    pos = atoms.get_positions()
    extent = float(np.max(np.ptp(pos, axis=0))) if len(atoms) > 1 else 0.0
    return np.eye(3) * (extent + 2.0 * cutoff + 1.0)


def periodic_cell(atoms, cutoff: float, where: str) -> np.ndarray:
    """The (3, 3) cell a periodic graph builder should use for ``atoms`` (rows are cell vectors)."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return molecule_box(atoms, cutoff)
    cell = np.array(atoms.cell, dtype=np.float64)
    pos = atoms.get_positions()
    for axis in np.flatnonzero(pbc):
        if np.linalg.norm(cell[axis]) < 1e-9:
            fail(where, f"atoms.pbc marks cell vector {axis} periodic, but it is zero")
    for axis in np.flatnonzero(~pbc):
        others = [cell[a] for a in range(3) if a != axis]
        normal = np.cross(others[0], others[1])
        if np.linalg.norm(normal) < 1e-9:
            fail(where, f"the periodic cell vectors of a partly periodic structure must not be "
                        f"parallel; got {cell.tolist()}")
        normal /= np.linalg.norm(normal)
        heights = pos @ normal
        extent = float(np.ptp(heights)) if len(atoms) > 1 else 0.0
        if np.linalg.norm(cell[axis]) < 1e-9:  # no vector given: open the direction with a full cutoff of vacuum
            cell[axis] = normal * (extent + 2.0 * cutoff + 1.0)
            continue
        vacuum = abs(float(cell[axis] @ normal)) - extent
        if vacuum < cutoff:
            warnings.warn(f"{where}: the vacuum along non-periodic cell vector {axis} is {vacuum:.2f} A, shorter than the "
                          f"model's cutoff {cutoff:.2f} A: atoms see their periodic images across it (give the slab more "
                          f"vacuum, e.g. ase.build.fcc111(..., vacuum={cutoff:.0f}))", stacklevel=3)
    if abs(np.linalg.det(cell)) < 1e-9:
        fail(where, f"the cell has zero volume; got {cell.tolist()}")
    return cell
