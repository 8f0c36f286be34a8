"""Jacobian routes: energy rows, exact force rows and k random force combinations.

Every route works on one structure and yields its Jacobian rows in *row batches*: lists of
per-parameter gradient tensors of shape (b, *param.shape) (``None`` where a parameter does not
affect the row). One reverse pass produces one row over all P parameters, so a batch holds
b x P numbers; b is capped by a memory budget (``row_batch``), never the whole structure.
(Many structures at once: :mod:`ntkal.torch.batched`.)

Row order inside a structure's block: the energy row first (if any), then the force rows —
exact: 3N rows atom-major (atom 0 x, y, z, atom 1 x, y, z, ...); k-row route: k rows
``U J_F`` with U in {+-1}^{k x 3N} / sqrt(k) (see :func:`force_combinations`).
Forces are F = -dE/dR, so force rows are dF/dtheta = -d2E/dR dtheta, computed one of two ways
(``RowSpec.method``):

* ``"autograd"``: mixed second derivatives, one reverse pass per row over the retained graph of
  the force (a create-graph backward): exact, and several times the cost of an energy gradient;
* ``"difference"``: forward differences of energy gradients along the row's direction,
  ``-(dE/dtheta(R + h u) - dE/dtheta(R)) / h`` with u the row of U (:func:`force_difference_rows`):
  one energy-gradient pass per row, the same passes a batch of structures shares
  (:mod:`ntkal.torch.batched`), with an O(h) truncation error plus float rounding / h.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .functional import FunctionalModel

__all__ = ["RowSpec", "force_combinations", "iter_row_batches", "chunk_plan", "displaced"]


@dataclass(frozen=True)
class RowSpec:
    """Which rows a structure's block has.

    Attributes
    ----------
    energy : bool
        Whether the block starts with the energy row dE/dtheta.
    force : None, "exact" or int
        No force rows, 3N exact rows, or k random +-1 combinations.
    energy_weight, force_weight : float
        Multipliers of the energy row and of every force row.
    seed : int
        Seed of the k-row combinations (mixed with the structure digest).
    method : {"autograd", "difference"}
        How force rows are computed (see the module docstring).
    step : float
        Step h (Angstrom per unit of the row's direction) of the ``"difference"`` method.
    """

    energy: bool
    force: object
    energy_weight: float = 1.0
    force_weight: float = 1.0
    seed: int = 0
    method: str = "autograd"
    step: float = 3e-4

    def directions(self, atoms) -> np.ndarray:
        """(n_force_rows, 3N) float64: the direction of each force row (unit rows for ``"exact"``)."""
        if self.force == "exact":
            return np.eye(3 * len(atoms))
        return force_combinations(atoms, int(self.force), self.seed)

    def n_rows(self, n_atoms: int) -> int:
        """Rows in the block of a structure with ``n_atoms`` atoms."""
        force = 0 if self.force is None else (3 * n_atoms if self.force == "exact" else int(self.force))
        return int(self.energy) + force


def force_combinations(atoms, k: int, seed: int) -> np.ndarray:
    """The k x 3N matrix U of the k-row force route, entries +-1/sqrt(k), float64.

    U is a deterministic function of (``seed``, the structure's atomic-number sequence): frames
    of one system (an MD run, a rattled cell) share U, so their rows are the same projection of
    the force components and compare consistently; positions do not enter, so a structure read
    back from a file (rounded coordinates) keeps its U. Each structure's rows are still an
    unbiased estimate: E[Uᵀ U] = I, so E[(U J_F)ᵀ (U J_F)] = J_Fᵀ J_F.
    """
    numbers = np.ascontiguousarray(atoms.numbers, dtype=np.int64)
    mix = hashlib.blake2b(int(seed).to_bytes(8, "little", signed=False) + numbers.tobytes(), digest_size=16)
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(mix.digest(), "little")))
    signs = rng.integers(0, 2, size=(int(k), 3 * len(atoms)), dtype=np.int8)
    return (2.0 * signs - 1.0) / np.sqrt(k)


def chunk_plan(sizes: list[int], chunk_size: int) -> list[tuple[int, list[tuple[int, int, int]]]]:
    """Split the flattened parameter vector into column chunks of at most ``chunk_size``.

    Returns
    -------
    list of (col_offset, pieces)
        ``pieces``: (tensor index, start, stop) ranges of flattened tensors, in column order.
    """
    plan, pieces, col, chunk_start, used = [], [], 0, 0, 0
    for t, size in enumerate(sizes):
        start = 0
        while start < size:
            take = min(size - start, chunk_size - used)
            pieces.append((t, start, start + take))
            start += take
            used += take
            col += take
            if used == chunk_size:
                plan.append((chunk_start, pieces))
                pieces, chunk_start, used = [], col, 0
    if pieces:
        plan.append((chunk_start, pieces))
    return plan


def _stack(rows: list[tuple]) -> list:
    """Per-parameter stacks of b gradient tuples; None where no row touched the parameter."""
    out = []
    for per_param in zip(*rows):
        if all(g is None for g in per_param):
            out.append(None)
        else:
            ref = next(g for g in per_param if g is not None)
            out.append(torch.stack([torch.zeros_like(ref) if g is None else g for g in per_param]))
    return out


def iter_row_batches(model: FunctionalModel, atoms, spec: RowSpec, *, row_batch: int = 8) -> Iterator[tuple[int, list]]:
    """Yield ``(first_row, grads)`` for one structure's Jacobian rows, ``row_batch`` rows at a time.

    Parameters
    ----------
    model : FunctionalModel
    atoms : ase.Atoms
    spec : RowSpec
    row_batch : int
        Rows per yielded batch (memory: row_batch x P numbers).

    Yields
    ------
    first_row : int
        Index of the batch's first row inside the block.
    grads : list of (Tensor (b, *shape) or None)
        One entry per differentiated parameter, in ``model.names`` order, weights applied.
    """
    if spec.force is not None and spec.method == "difference":
        yield from _difference_row_batches(model, atoms, spec, row_batch)
        return
    need_force = spec.force is not None
    params = {k: v.detach().requires_grad_(True) for k, v in model.params.items()}
    inputs = tuple(params.values())
    positions = model.positions(atoms, requires_grad=need_force)
    with torch.enable_grad():
        energy = model.energy(atoms, params, positions)
        if need_force:
            (dE_dR,) = torch.autograd.grad(energy, positions, create_graph=True)
            forces = -dE_dR.reshape(-1)
            if spec.force == "exact":
                combos = None
                n_force = forces.numel()
            else:
                combos = torch.as_tensor(force_combinations(atoms, int(spec.force), spec.seed),
                                         dtype=forces.dtype, device=forces.device)
                n_force = combos.shape[0]
        else:
            n_force = 0
        n_rows = int(spec.energy) + n_force

        pending, first = [], 0
        for r in range(n_rows):
            last = r == n_rows - 1
            if spec.energy and r == 0:
                target = energy * spec.energy_weight
                grad = torch.autograd.grad(target, inputs, retain_graph=not last, allow_unused=True)
            else:
                j = r - int(spec.energy)
                if combos is None:
                    weights = torch.zeros_like(forces)
                    weights[j] = spec.force_weight
                else:
                    weights = combos[j] * spec.force_weight
                grad = torch.autograd.grad(forces, inputs, grad_outputs=weights, retain_graph=not last,
                                           allow_unused=True)
            pending.append(tuple(None if g is None else g.detach() for g in grad))
            if len(pending) == row_batch or last:
                yield first, _stack(pending)
                first += len(pending)
                pending = []


def displaced(positions: np.ndarray, direction: np.ndarray, step: float) -> np.ndarray:
    """(N, 3) float64 positions moved by ``step`` along a 3N ``direction`` (atom-major)."""
    return np.asarray(positions, dtype=np.float64) + step * np.asarray(direction, dtype=np.float64).reshape(-1, 3)


def _energy_gradient(model: FunctionalModel, atoms, inputs: dict, positions: np.ndarray) -> tuple:
    pos = torch.as_tensor(positions, dtype=model.dtype, device=model.device)
    with torch.enable_grad():
        energy = model.energy(atoms, inputs, pos)
        grads = torch.autograd.grad(energy, tuple(inputs.values()), allow_unused=True)
    return tuple(None if g is None else g.detach() for g in grads)


def _difference_row_batches(model: FunctionalModel, atoms, spec: RowSpec, row_batch: int):
    """Rows of one structure with force rows by forward differences of energy gradients."""
    inputs = {k: v.detach().requires_grad_(True) for k, v in model.params.items()}
    r0 = np.asarray(atoms.get_positions(), dtype=np.float64)
    base = _energy_gradient(model, atoms, inputs, r0)
    rows = [tuple(None if g is None else g * spec.energy_weight for g in base)] if spec.energy else []
    scale = -spec.force_weight / spec.step
    pending, first = rows, 0
    for u in spec.directions(atoms):
        moved = _energy_gradient(model, atoms, inputs, displaced(r0, u, spec.step))
        pending.append(tuple(_scaled_difference(a, b, scale) for a, b in zip(moved, base)))
        if len(pending) == row_batch:
            yield first, _stack(pending)
            first += len(pending)
            pending = []
    if pending:
        yield first, _stack(pending)


def _scaled_difference(moved, base, scale: float):
    """scale * (moved - base), None where neither pass touched the parameter."""
    if moved is None and base is None:
        return None
    if moved is None:
        return -scale * base
    return scale * (moved if base is None else moved - base)
