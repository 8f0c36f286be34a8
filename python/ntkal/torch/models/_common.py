"""The adapter kit: what every model adapter needs besides its own model's code.

* :class:`Adapter` — a registry entry: the factory and the load options it takes, so that
  :func:`ntkal.torch.models.from_options` (and the CLI through it) builds any model with one call;
* :func:`functional_model` — the adapter's :class:`~ntkal.torch.FunctionalModel`, its batched evaluation
  (:class:`~ntkal.torch.batched.BatchedEnergy`) included, from one declaration;
* :class:`GraphCache` — one structure's graph kept for repeated calls on it (finite differences and
  ``torch.func`` transforms call the energy many times; a graph must not be built inside them);
* :func:`load_weights` — ``torch.load(weights_only=True)``: a checkpoint that needs arbitrary unpickling is
  refused rather than executed, with an error that names the file;
* :func:`parameters_of` — a module's differentiated parameters and its frozen tensors.

A new adapter is one module that defines its factory and ``ADAPTER = Adapter(...)``, and one line in the
registry of :mod:`ntkal.torch.models`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ...errors import fail
from ...structures import structure_digest
from ..batched import BatchedEnergy
from ..functional import FunctionalModel

__all__ = ["Adapter", "GraphCache", "LOAD_OPTIONS", "functional_model", "load_weights", "parameters_of"]

# the load options an adapter may take (the CLI's spelling of each: --checkpoint, --modal, --device,
# --allow-unsafe-load), with the value that means "not given"
LOAD_OPTIONS = {"checkpoint": None, "modal": None, "device": "cpu", "allow_unsafe_load": False}


@dataclass(frozen=True)
class Adapter:
    """A model adapter as the registry lists it.

    Attributes
    ----------
    factory : callable
        ``factory(**keywords) -> FunctionalModel``.
    options : dict of str -> str
        The load options (keys of :data:`LOAD_OPTIONS`) it takes, and the factory keyword each becomes.
    required : tuple of str
        Options it cannot do without (e.g. a MACE model file).
    names : dict of str -> dict
        Further model names it answers to, with the factory keywords each fixes (SevenNet's shipped
        checkpoints).
    summary : str
        What the model is, in one line (listings, errors).
    """

    factory: Callable
    options: Mapping[str, str] = field(default_factory=dict)
    required: tuple = ()
    names: Mapping[str, dict] = field(default_factory=dict)
    summary: str = ""

    def build(self, name: str, where: str, arg: str = "model", **options) -> FunctionalModel:
        """The model from load options (a value meaning "not given" is ignored); an option it does not take,
        or a required one missing, is an InvalidArgumentError naming both (options spelled as command-line
        flags when ``arg`` is one, e.g. ``--model``)."""
        spell = _flag if arg.startswith("--") else str
        given = {k: v for k, v in options.items() if v != LOAD_OPTIONS.get(k)}
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            fail(where, f"{spell(unknown[0])} is not an option of {arg} {name} (it takes "
                        f"{', '.join(spell(o) for o in self.options) or 'none'})")
        for option in self.required:
            if option not in given:
                fail(where, f"{arg} {name} needs {spell(option)}: {self.summary}")
        keywords = {self.options[k]: v for k, v in given.items()}
        return self.factory(**self.names.get(name, {}), **keywords)


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


class GraphCache:
    """``cache(atoms)``: ``build(atoms)``, kept for the last ``capacity`` structures (by content digest)."""

    def __init__(self, build: Callable, capacity: int = 1):
        self.build, self.capacity = build, int(capacity)
        self._graphs: dict = {}

    def __call__(self, atoms):
        key = structure_digest(atoms)
        if key not in self._graphs:
            if len(self._graphs) >= self.capacity:
                self._graphs.clear()
            self._graphs[key] = self.build(atoms)
        return self._graphs[key]


def load_weights(path, where: str, *, safe_globals: Sequence = ()):
    """``torch.load(path, weights_only=True)`` (``safe_globals`` allowed besides tensors); a missing file, a
    corrupt one or one that needs arbitrary unpickling is an InvalidArgumentError naming ``where`` and the file."""
    path = str(path)
    if not os.path.isfile(path):
        fail(where, f"checkpoint file not found: {path}")
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file or one that needs arbitrary unpickling
        fail(where, f"checkpoint {path} could not be loaded with weights_only=True: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200]}", cause=exc)


def parameters_of(net: torch.nn.Module) -> tuple[dict, dict]:
    """(trainable parameters, frozen tensors: parameters without gradients and buffers) of ``net``."""
    trainable = {k: v for k, v in net.named_parameters() if v.requires_grad}
    frozen = {k: v for k, v in net.named_parameters() if not v.requires_grad}
    frozen.update(dict(net.named_buffers()))
    return trainable, frozen


def functional_model(net: torch.nn.Module, energy: Callable, *, graph: Callable, batch_energies: Callable,
                     row_kinds, graph_size: Callable, params="all", **model) -> FunctionalModel:
    """An adapter's model from one declaration.

    Parameters
    ----------
    net : torch.nn.Module
        The network; its trainable parameters are differentiated, the rest frozen.
    energy : callable
        ``energy(params, positions, atoms) -> scalar`` (see :class:`FunctionalModel`).
    graph, batch_energies, row_kinds, graph_size
        The batched evaluation (:class:`~ntkal.torch.batched.BatchedEnergy`: ``graph``, ``energies``,
        ``row_kinds``, ``size``).
    params : "all", "readout" or list of str
        Differentiated subset (:meth:`FunctionalModel.select`).
    **model
        Further :class:`FunctionalModel` arguments (readout, embedding_fn, check_fn, name, ...).
    """
    trainable, frozen = parameters_of(net)
    batched = BatchedEnergy(net, graph, batch_energies, row_kinds, graph_size)
    return FunctionalModel(energy, trainable, frozen=frozen, batched=batched, **model).select(params)
