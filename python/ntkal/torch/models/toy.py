"""Tiny pair model (float64): the reference model of the finite-difference tests and examples."""

from __future__ import annotations

import numpy as np
import torch

from ..functional import FunctionalModel

__all__ = ["toy"]


def toy(*, species=(1, 6, 8, 29, 79), hidden: int = 6, n_radial: int = 5, cutoff: float = 4.0,
        dtype=torch.float64, seed: int = 0) -> FunctionalModel:
    """A small smooth, translation- and rotation-invariant many-body model.

    E = sum_i readout(h_i), h_i = e[z_i] + sum_{j in cutoff} (B(r_ij) W) * e[z_j], with a
    Gaussian radial basis B times a cosine cutoff, readout = Linear -> tanh -> Linear.
    Periodic cells use ASE's neighbour list (images as fixed shifts).

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
    centres = torch.linspace(0.5, cutoff, n_radial, dtype=dtype)
    width = float(cutoff / n_radial)

    pairs_cache: dict = {}

    def pairs(atoms):
        # The neighbour list depends on atoms only; cache it (finite differences call E many times).
        from ase.neighborlist import neighbor_list

        from ...structures import structure_digest

        key = structure_digest(atoms)
        if key not in pairs_cache:
            if len(pairs_cache) > 256:
                pairs_cache.clear()
            i, j, shift = neighbor_list("ijS", atoms, cutoff)
            pairs_cache[key] = (torch.as_tensor(i), torch.as_tensor(j), shift @ np.asarray(atoms.cell))
        return pairs_cache[key]

    def features(p, positions, atoms):
        i, j, shift = pairs(atoms)
        shift = torch.as_tensor(shift, dtype=positions.dtype)
        r = (positions[j] - positions[i] + shift).norm(dim=1)
        smooth = 0.5 * (torch.cos(torch.pi * r / cutoff) + 1.0)
        basis = torch.exp(-(((r[:, None] - centres) / width) ** 2)) * smooth[:, None]
        z = torch.as_tensor(index[atoms.numbers])
        emb = p["embedding.weight"][z]
        message = (basis @ p["radial.weight"]) * emb[j]
        h = emb + torch.zeros_like(emb).index_add(0, i, message)
        return torch.tanh(h @ p["readout.0.weight"].T + p["readout.0.bias"])

    def energy(p, positions, atoms):
        a = features(p, positions, atoms)
        return (a @ p["readout.1.weight"].T + p["readout.1.bias"]).sum()

    return FunctionalModel(energy, params, embedding_fn=features, readout=("readout.*",),
                           supported_numbers=species, name=f"toy-{seed}", embedding_dim=hidden)
