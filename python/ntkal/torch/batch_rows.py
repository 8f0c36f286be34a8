"""Jacobian rows of a batch of structures from a constant number of passes over one batched graph.

One pass of :func:`ntkal.torch.batched.per_structure_gradients` gives every structure's energy
gradient dE/dtheta. A block's rows are built from such passes:

* the energy row: the pass at the structures' own positions (weighted by ``energy_weight``);
* force row j of every structure: one more pass with each structure moved by ``step`` along its own
  direction u_j (a row of U), and ``-force_weight (dE/dtheta(R + h u_j) - dE/dtheta(R)) / h``.

So a batch costs 1 + k passes for k force rows, whatever its number of structures. Parameters the
batched pass cannot split (:attr:`GradientPlan.fallback`) get their columns from the per-structure
loop (:func:`ntkal.torch.jacobian.iter_row_batches`), with the same estimator. The first batch is
checked once: the per-structure gradients of every parameter must sum to the batch's gradient from
plain autograd; a parameter that fails (used outside its module's call, a module that is not
row-wise) moves to the loop, with a warning naming it.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from .batched import GradientPlan, per_structure_gradients
from .functional import FunctionalModel
from .jacobian import RowSpec, displaced, iter_row_batches

__all__ = ["BatchedRows", "grouped"]


def grouped(graphs: Iterable, size, budget: int, max_structures: int) -> Iterator[tuple[list[int], list]]:
    """Consecutive groups ``(indices, graphs)`` of at most ``max_structures`` graphs and at most ``budget`` rows
    in all (``size(graph)`` each; a graph larger than the budget forms a group of its own), as the graphs
    arrive: a group is handed on while later graphs are still being built."""
    indices, members, used = [], [], 0
    for i, graph in enumerate(graphs):
        rows = int(size(graph))
        if members and (used + rows > budget or len(members) == max_structures):
            yield indices, members
            indices, members, used = [], [], 0
        indices.append(i)
        members.append(graph)
        used += rows
    if members:
        yield indices, members


class BatchedRows:
    """Per-structure Jacobian rows of a model with a :class:`ntkal.torch.batched.BatchedEnergy`.

    Parameters
    ----------
    model : FunctionalModel
        ``model.batched`` is set.
    spec : RowSpec
        Force rows must use ``method="difference"`` (mixed second derivatives are not split per structure).
    """

    def __init__(self, model: FunctionalModel, spec: RowSpec):
        if model.batched is None:
            raise ValueError("BatchedRows: the model has no batched evaluation")
        self.model, self.spec = model, spec
        self.plan = GradientPlan.build(model.batched, model.names)
        self.loop_model = model.select(list(self.plan.fallback)) if self.plan.fallback else None
        self.checked = False

    def graphs(self, structures) -> list:
        """The positions-independent graph of each structure."""
        return [self.model.batched.graph(a) for a in structures]

    def rows(self, structures, graphs) -> Iterator[tuple[int, dict, np.ndarray]]:
        """Yield ``(row, grads, present)`` for each row position of the batch's blocks.

        ``grads`` maps parameter names to (B, *shape) tensors (row ``row`` of every structure's block;
        absent names are zero); ``present`` (B,) bool marks the structures whose block has that row.
        """
        spec, b = self.spec, self.model.batched
        layouts: dict = {}
        r0 = [np.asarray(a.get_positions(), dtype=np.float64) for a in structures]
        _, base = per_structure_gradients(b, self.plan, graphs, self._tensors(r0), layouts)
        if not self.checked:
            self._check_sums(graphs, r0, base)
        looped = self._looped(structures)
        n = len(structures)
        row = 0
        if spec.energy:
            yield 0, self._with_looped({k: g * spec.energy_weight for k, g in base.items()}, looped, 0), np.ones(n, bool)
            row = 1
        if spec.force is None:
            return
        directions = [spec.directions(a) for a in structures]
        scale = -spec.force_weight / spec.step
        for j in range(max(len(d) for d in directions)):
            present = np.array([j < len(d) for d in directions])
            moved = [displaced(r0[s], directions[s][j], spec.step) if present[s] else r0[s] for s in range(n)]
            _, grads = per_structure_gradients(b, self.plan, graphs, self._tensors(moved), layouts)
            diff = {k: scale * (grads[k] - base[k]) if k in base else scale * grads[k] for k in grads}
            diff.update({k: -scale * g for k, g in base.items() if k not in grads})
            yield row + j, self._with_looped(diff, looped, row + j), present

    def _check_sums(self, graphs, positions, base: dict) -> None:
        """Move parameters whose per-structure gradients do not sum to autograd's batch gradient to the loop."""
        b = self.model.batched
        named = dict(b.module.named_parameters())
        names = [n for n in self.model.names if n not in self.plan.fallback]
        with torch.enable_grad():
            energies, _ = b.energies(graphs, self._tensors(positions))
            full = torch.autograd.grad(energies.sum(), [named[n] for n in names], allow_unused=True)
        tol = 1e-3 if self.model.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-8
        wrong = []
        for name, reference in zip(names, full):
            total = base[name].sum(dim=0) if name in base else None
            if reference is None and total is None:
                continue
            reference = torch.zeros_like(total) if reference is None else reference
            total = torch.zeros_like(reference) if total is None else total
            if float((total - reference).norm()) > tol * float(reference.norm()) + 1e-30:
                wrong.append(name)
        self.checked = True
        if wrong:
            warnings.warn(f"ntkal: {len(wrong)} parameter tensor(s) of {self.model.name!r} are not split per structure "
                          f"correctly by the batched pass (e.g. {wrong[:3]}); their rows come from the per-structure "
                          "loop (slower)", RuntimeWarning, stacklevel=4)
            kept = {m: (mod, [a for a in attrs if (f"{m}.{a}" if m else a) not in wrong], kind)
                    for m, (mod, attrs, kind) in self.plan.modules.items()}
            self.plan = GradientPlan({m: v for m, v in kept.items() if v[1]}, list(self.plan.fallback) + wrong,
                                     self.plan.copied)
            self.loop_model = self.model.select(list(self.plan.fallback))
            for name in wrong:
                base.pop(name, None)

    def _tensors(self, positions: list) -> list:
        return [torch.as_tensor(p, dtype=self.model.dtype, device=self.model.device) for p in positions]

    def _looped(self, structures) -> dict:
        """Rows of the fallback parameters, structure by structure: name -> (B, max rows, *shape)."""
        if self.loop_model is None:
            return {}
        spec = self.spec
        m = max(spec.n_rows(len(a)) for a in structures)
        out = {k: torch.zeros((len(structures), m) + tuple(v.shape), dtype=v.dtype, device=v.device)
               for k, v in self.loop_model.params.items()}
        names = self.loop_model.names
        for s, atoms in enumerate(structures):
            for first, grads in iter_row_batches(self.loop_model, atoms, spec, row_batch=8):
                for name, g in zip(names, grads):
                    if g is not None:
                        out[name][s, first:first + g.shape[0]] = g
        return out

    @staticmethod
    def _with_looped(grads: dict, looped: dict, row: int) -> dict:
        for name, rows in looped.items():
            if row < rows.shape[1]:
                grads[name] = rows[:, row]
        return grads
