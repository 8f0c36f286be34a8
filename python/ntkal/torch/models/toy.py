"""Tiny pair model (float64): the reference model of the finite-difference tests and examples."""

from __future__ import annotations

import numpy as np
import torch

from ..functional import FunctionalModel
from ._common import Adapter, GraphCache, functional_model

__all__ = ["ADAPTER", "toy"]


class _Radial(torch.nn.Module):
    """Radial basis (E, n_radial) -> edge weights (E, hidden): ``basis @ weight`` (a row-wise module without
    a dedicated per-structure rule: the batched pass splits it through the generic one)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward(self, basis: torch.Tensor) -> torch.Tensor:
        return basis @ self.weight


class _ToyNet(torch.nn.Module):
    """E = sum_i readout(h_i), h_i = e[z_i] + sum_{j in cutoff} (B(r_ij) W) * e[z_j], for a batch of structures."""

    def __init__(self, params: dict, centres: torch.Tensor, width: float, cutoff: float):
        super().__init__()
        species, hidden = params["embedding.weight"].shape
        self.embedding = torch.nn.Embedding(species, hidden, _weight=params["embedding.weight"])
        self.radial = _Radial(params["radial.weight"])
        self.readout = torch.nn.ModuleList([torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, 1)])
        for k in range(2):
            self.readout[k].weight = torch.nn.Parameter(params[f"readout.{k}.weight"])
            self.readout[k].bias = torch.nn.Parameter(params[f"readout.{k}.bias"])
        self.register_buffer("centres", centres)
        self.width, self.cutoff = width, cutoff

    def features(self, positions, species, i, j, shift):
        """(N, hidden) per-atom features entering the last linear map."""
        r = (positions[j] - positions[i] + shift.to(positions.dtype)).norm(dim=1)
        smooth = 0.5 * (torch.cos(torch.pi * r / self.cutoff) + 1.0)
        basis = torch.exp(-(((r[:, None] - self.centres) / self.width) ** 2)) * smooth[:, None]
        emb = self.embedding(species)
        message = self.radial(basis) * emb[j]
        h = emb + torch.zeros_like(emb).index_add(0, i, message)
        return torch.tanh(self.readout[0](h))

    def forward(self, positions, species, i, j, shift, owners=None, n: int = 1, features_only: bool = False):
        """(n,) energies of the structures the atoms belong to (``owners``); or the per-atom features."""
        if features_only:
            return self.features(positions, species, i, j, shift)
        atomic = self.readout[1](self.features(positions, species, i, j, shift)).reshape(-1)
        return torch.zeros(n, dtype=atomic.dtype, device=atomic.device).index_add(0, owners, atomic)


def toy(*, species=(1, 6, 8, 29, 79), hidden: int = 6, n_radial: int = 5, cutoff: float = 4.0,
        dtype=torch.float64, seed: int = 0) -> FunctionalModel:
    """A small smooth, translation- and rotation-invariant many-body model.

    E = sum_i readout(h_i), h_i = e[z_i] + sum_{j in cutoff} (B(r_ij) W) * e[z_j], with a
    Gaussian radial basis B times a cosine cutoff, readout = Linear -> tanh -> Linear.
    Periodic cells use ASE's neighbour list (images as fixed shifts). The model evaluates a batch of
    structures in one pass too (its :class:`BatchedEnergy`: rows are atoms and directed pairs).

    Parameters
    ----------
    species : sequence of int
        Supported atomic numbers.
    hidden, n_radial : int
        Feature width and radial basis size (P = |species| h + n_radial h + h^2 + 2h + 1).
    cutoff : float
        Cutoff radius (Angstrom).
    dtype : torch.dtype
    seed : int
        Seed of the random weights.
    """
    gen = torch.Generator().manual_seed(int(seed))
    species = tuple(int(z) for z in species)
    index = np.full(max(species) + 1, -1, dtype=np.int64)
    index[list(species)] = np.arange(len(species))

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype)

    params = {
        "embedding.weight": rand(len(species), hidden, scale=0.8),
        "radial.weight": rand(n_radial, hidden, scale=0.8),
        "readout.0.weight": rand(hidden, hidden, scale=1.0 / np.sqrt(hidden)),
        "readout.0.bias": rand(hidden, scale=0.1),
        "readout.1.weight": rand(1, hidden, scale=1.0 / np.sqrt(hidden)),
        "readout.1.bias": rand(1, scale=0.1),
    }
    net = _ToyNet(params, torch.linspace(0.5, cutoff, n_radial, dtype=dtype), float(cutoff / n_radial), float(cutoff))
    graph = _Pairs(cutoff, index)
    pairs = GraphCache(graph, capacity=256)  # finite differences call E many times on one structure

    def inputs(positions, atoms):
        z, i, j, shift = pairs(atoms)
        return positions, z, i, j, shift

    own = set(params) | {"centres"}

    def call(p, args, kwargs=None):
        # tensors of the net's own names only: a FunctionalModel built on energy_fn may carry others
        return torch.func.functional_call(net, {k: v for k, v in p.items() if k in own}, args, kwargs)

    def features(p, positions, atoms):
        return call(p, inputs(positions, atoms), {"features_only": True})

    def energy(p, positions, atoms):
        owners = torch.zeros(len(atoms), dtype=torch.long)
        return call(p, (*inputs(positions, atoms), owners, 1)).reshape(())

    return functional_model(net, energy, graph=graph, row_kinds=(("radial", "pairs"), ("*", "atoms")),
                            graph_size=_pairs_size,
                            batch_energies=lambda graphs, positions: _batch_energies(net, graphs, positions),
                            embedding_fn=features, readout=("readout.*",), supported_numbers=species,
                            name=f"toy-{seed}", embedding_dim=hidden)


class _Pairs:
    """A structure's species indices and neighbour pairs with image shifts (ASE's neighbour list)."""

    def __init__(self, cutoff: float, index: np.ndarray):
        self.cutoff, self.index = float(cutoff), index

    def __call__(self, atoms):
        from ase.neighborlist import neighbor_list

        i, j, shift = neighbor_list("ijS", atoms, self.cutoff)
        return (torch.as_tensor(self.index[atoms.numbers]), torch.as_tensor(i), torch.as_tensor(j),
                torch.as_tensor(shift @ np.asarray(atoms.cell)))


def _pairs_size(graph) -> int:
    return int(graph[0].shape[0]) + int(graph[1].shape[0])


def _batch_energies(net, graphs: list, positions: list):
    """Energies of many structures in one pass; row kinds ``atoms`` and ``pairs``."""
    first = np.concatenate([[0], np.cumsum([len(g[0]) for g in graphs])[:-1]]).astype(np.int64)
    z = torch.cat([g[0] for g in graphs])
    i = torch.cat([g[1] + int(f) for g, f in zip(graphs, first)])
    j = torch.cat([g[2] + int(f) for g, f in zip(graphs, first)])
    shift = torch.cat([g[3] for g in graphs])
    owners = torch.repeat_interleave(torch.arange(len(graphs)), torch.as_tensor([len(g[0]) for g in graphs]))
    energies = net(torch.cat(positions), z, i, j, shift, owners, len(graphs))
    return energies, {"atoms": owners, "pairs": owners[i]}


ADAPTER = Adapter(toy, summary="a tiny float64 pair model (tests and examples)")
