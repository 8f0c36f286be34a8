"""Per-structure parameter gradients of many structures from one pass over one batched graph.

A model adapter that can evaluate a batch of structures at once describes it with a
:class:`BatchedEnergy`: how to build one structure's graph (neighbour lists: the expensive,
positions-independent part), how to evaluate the per-structure energies of a batch of graphs at
given positions, and which kind of row (atom, edge, angle, structure) each of its parameter-owning
modules maps. :func:`per_structure_gradients` then runs one forward and one backward pass over the
batch, records every call of those modules with forward hooks, and turns each call's inputs and
output gradient into per-structure parameter gradients (:mod:`ntkal.torch.segments`): B gradient
rows for the cost of about one gradient evaluation of the batch, where a loop costs B passes.

Parameters owned by no module with a row kind (or used outside their module's own call) cannot be
split this way; :class:`GradientPlan` names them, and the featurizer computes their columns with the
per-structure loop.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .segments import SegmentLayout, segment_gradients

__all__ = ["BatchedEnergy", "GradientPlan", "per_structure_gradients"]


@dataclass
class BatchedEnergy:
    """How an adapter evaluates many structures in one pass.

    Attributes
    ----------
    module : torch.nn.Module
        The network; the FunctionalModel's parameter names are its ``named_parameters()`` names and
        share their storage.
    graph : callable
        ``graph(atoms) -> G``: one structure's positions-independent graph (neighbour list, images).
    energies : callable
        ``energies(graphs, positions) -> (E, owners)``: ``positions`` a list of (N_i, 3) tensors (they
        may carry autograd), ``E`` the (B,) total energies in eV, ``owners`` a dict from row kind to a
        (rows,) int64 tensor giving the structure of each row of that kind (``"structures"`` is added).
    row_kinds : sequence of (pattern, kind)
        fnmatch patterns on module names (first match wins) and the row kind their calls map.
    size : callable
        ``size(G) -> int``: rows the structure adds to a batch (atoms + edges + ...), for the
        batch budget: activation memory grows with it.
    """

    module: torch.nn.Module
    graph: Callable
    energies: Callable
    row_kinds: Sequence[tuple[str, str]]
    size: Callable


@dataclass
class GradientPlan:
    """Which modules own the differentiated parameters, and which parameters cannot be split.

    Attributes
    ----------
    modules : dict
        module name -> (module, parameter attributes, row kind).
    fallback : list of str
        Differentiated parameters with no row-wise owner: their rows come from the per-structure loop.
    """

    modules: dict
    fallback: list
    copied: set = field(default_factory=set)  # modules whose inputs or output the model changes in place

    @classmethod
    def build(cls, batched: BatchedEnergy, names: Sequence[str]) -> "GradientPlan":
        owned: dict = {}
        for name in names:
            mname, attr = _calling_owner(batched.module, name)
            if mname not in owned:
                module = batched.module.get_submodule(mname) if mname else batched.module
                owned[mname] = (module, [], _kind(batched.row_kinds, mname))
            owned[mname][1].append(attr)
        modules = {m: v for m, v in owned.items() if v[2] is not None}
        covered = {f"{m}.{a}" if m else a for m, (_, attrs, _) in modules.items() for a in attrs}
        return cls(modules, [n for n in names if n not in covered])


def _calling_owner(root: torch.nn.Module, name: str) -> tuple[str, str]:
    """(module name, parameter path relative to it) of the module whose call uses parameter ``name``:
    its owner, or for parameter containers (ParameterList/Dict, which are never called) the first
    ancestor that is not one."""
    parts = name.split(".")
    depth = len(parts) - 1
    while depth > 0:
        module = root.get_submodule(".".join(parts[:depth]))
        if not isinstance(module, (torch.nn.ParameterList, torch.nn.ParameterDict)):
            break
        depth -= 1
    return ".".join(parts[:depth]), ".".join(parts[depth:])


def _kind(row_kinds, name: str):
    for pattern, kind in row_kinds:
        if fnmatch.fnmatchcase(name, pattern):
            return kind
    return None


def per_structure_gradients(batched: BatchedEnergy, plan: GradientPlan, graphs: list, positions: list,
                            layouts: dict | None = None) -> tuple[torch.Tensor, dict]:
    """Energies and per-structure gradients of the planned parameters for one batch.

    Parameters
    ----------
    batched : BatchedEnergy
    plan : GradientPlan
    graphs : list
        ``batched.graph(atoms)`` of each structure.
    positions : list of Tensor (N_i, 3)
    layouts : dict, optional
        Row layouts by kind from an earlier call on the same graphs (they depend on the graphs only);
        filled in when given empty.

    Returns
    -------
    energies : Tensor (B,), detached
    grads : dict of parameter name -> Tensor (B, *shape)
        Only parameters some recorded call touched; absent ones have zero gradient.
    """
    for _ in range(2):
        calls, energies, owners = _record_calls(batched, plan, graphs, positions)
        touched = {c.name for c in calls if c.modified()}
        if not touched - plan.copied:
            break
        plan.copied |= touched  # modified in place after the call: record copies and run again
    n = len(graphs)
    owners = dict(owners)
    owners.setdefault("structures", torch.arange(n, device=energies.device))
    layouts = {} if layouts is None else layouts
    deltas = torch.autograd.grad(energies.sum(), [c.output for c in calls], allow_unused=True) if calls else []
    grads: dict = {}
    for call, delta in zip(calls, deltas):
        if delta is None:  # the call does not reach the energy
            continue
        name, args, kwargs = call.name, call.args, call.kwargs
        module, attrs, kind = plan.modules[name]
        if kind not in layouts:
            layouts[kind] = SegmentLayout.of(owners[kind], n)
        layout = layouts[kind]
        if layout.owners.numel() != delta.shape[0]:
            raise RuntimeError(f"ntkal: module {name!r} has {delta.shape[0]} rows but the batch has "
                               f"{layout.owners.numel()} rows of kind {kind!r}")
        for attr, g in segment_gradients(module, attrs, args, kwargs, delta, layout).items():
            key = f"{name}.{attr}" if name else attr
            grads[key] = grads[key] + g if key in grads else g
    return energies.detach(), grads


@dataclass
class _Call:
    """One recorded call: its (detached) inputs, its output in the autograd graph, their versions."""

    name: str
    args: tuple
    kwargs: dict
    output: torch.Tensor
    versions: tuple

    def modified(self) -> bool:
        return self.versions != _versions(self.args, self.kwargs, self.output)


def _versions(args, kwargs, output) -> tuple:
    tensors = [a for a in (*args, *kwargs.values()) if torch.is_tensor(a)] + [output]
    return tuple(t._version for t in tensors)


def _detached(value, copy: bool):
    if not torch.is_tensor(value):
        return value
    return value.detach().clone() if copy else value.detach()


def _record_calls(batched: BatchedEnergy, plan: GradientPlan, graphs: list, positions: list):
    """Run the batch's energies with every planned module call recorded (forward hooks)."""
    calls: list = []

    def record(name):
        copy = name in plan.copied

        def hook(module, args, kwargs, output):
            if not torch.is_tensor(output):
                raise RuntimeError(f"ntkal: module {name!r} returned {type(output).__name__}, not a tensor; "
                                   "its parameters cannot be split per structure")
            args = tuple(_detached(a, copy) for a in args)
            kwargs = {k: _detached(v, copy) for k, v in kwargs.items()}
            kept = output if output.requires_grad else output.detach().requires_grad_(True)
            calls.append(_Call(name, args, kwargs, kept, _versions(args, kwargs, kept)))
            return kept.clone() if copy else kept
        return hook

    handles = [module.register_forward_hook(record(name), with_kwargs=True)
               for name, (module, _, _) in plan.modules.items()]
    try:
        with torch.enable_grad():
            energies, owners = batched.energies(graphs, positions)
    finally:
        for handle in handles:
            handle.remove()
    return calls, energies, owners
