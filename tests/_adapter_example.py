"""A complete model adapter in one file, as a new one is written (tests/test_model_registry.py registers it
with one line): a smooth pair potential E = sum over pairs (i, j) of  g(r_ij) . w + b  times a cosine cutoff,
g a Gaussian basis of the distance, (w, b) a torch.nn.Linear; periodic images from ASE's neighbour list."""
from __future__ import annotations

import numpy as np
import torch

from ntkal.torch.models._common import Adapter, GraphCache, functional_model

CUTOFF = 4.0


class _PairNet(torch.nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.basis = torch.nn.Linear(4, 1, dtype=torch.float64)
        with torch.no_grad():
            self.basis.weight.copy_(torch.randn(1, 4, generator=gen, dtype=torch.float64))
            self.basis.bias.copy_(torch.randn(1, generator=gen, dtype=torch.float64))
        self.register_buffer("centres", torch.linspace(1.5, CUTOFF, 4, dtype=torch.float64))

    def forward(self, r):
        """(pairs,) energy of each pair."""
        g = torch.exp(-((r[:, None] - self.centres) ** 2))
        return self.basis(g).reshape(-1) * 0.5 * (torch.cos(torch.pi * r / CUTOFF) + 1.0)


def _pairs(atoms):
    from ase.neighborlist import neighbor_list

    i, j, shift = neighbor_list("ijS", atoms, CUTOFF)
    return torch.as_tensor(i), torch.as_tensor(j), torch.as_tensor(shift @ np.asarray(atoms.cell))


def _distances(positions, i, j, shift):
    return (positions[j] - positions[i] + shift.to(positions.dtype)).norm(dim=1)


def _batch_energies(net, graphs, positions):
    first = np.concatenate([[0], np.cumsum([len(p) for p in positions])[:-1]]).astype(np.int64)
    i = torch.cat([g[0] + int(f) for g, f in zip(graphs, first)])
    j = torch.cat([g[1] + int(f) for g, f in zip(graphs, first)])
    shift = torch.cat([g[2] for g in graphs])
    owners = torch.repeat_interleave(torch.arange(len(graphs)), torch.as_tensor([len(g[0]) for g in graphs]))
    pair = net(_distances(torch.cat(positions), i, j, shift))
    energies = torch.zeros(len(graphs), dtype=pair.dtype).index_add(0, owners, pair)
    return energies, {"pairs": owners}


def pair_model(*, seed: int = 0, params="all"):
    """The example pair potential as a FunctionalModel."""
    net = _PairNet(seed)
    graph_of = GraphCache(_pairs)

    def energy(p, positions, atoms):
        return torch.func.functional_call(net, p, (_distances(positions, *graph_of(atoms)),)).sum()

    return functional_model(net, energy, graph=_pairs, batch_energies=lambda g, pos: _batch_energies(net, g, pos),
                            row_kinds=(("basis", "pairs"),), graph_size=lambda g: int(g[0].shape[0]) + 1,
                            params=params, name=f"pair-{seed}", supported_numbers=(29, 79))


ADAPTER = Adapter(pair_model, summary="an example pair potential (tests)")
