"""Pretrained CHGNet (chgnet 0.4.2 wheel: CHGNet 0.3.0 weights) as a FunctionalModel.

Checkpoints are read with ``torch.load(..., weights_only=True)``; a checkpoint that needs arbitrary
unpickling is refused rather than executed.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os

import torch

from ...errors import fail
from ..cells import periodic_cell
from ..functional import FunctionalModel
from ._common import Adapter, GraphCache, functional_model, load_weights

__all__ = ["ADAPTER", "CHGNET_READOUT", "chgnet"]


_CHGNET_CHECKPOINTS = {
    "0.3.0": "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
    "0.2.0": "pretrained/0.2.0/chgnet_0.2.0_e30f77s348m32.pth.tar",
    "r2scan": "pretrained/r2scan/chgnet_r2scan_transfer_learning_e15f36s161m23.pth.tar",
}
# Readout: the layer norm before the readout MLP and the MLP itself (12.7k of 412k parameters).
CHGNET_READOUT = ("readout_norm.*", "mlp.*")


def chgnet(version: str = "0.3.0", *, checkpoint: str | None = None, params="all",
           device: str | torch.device = "cpu") -> FunctionalModel:
    """Pretrained CHGNet as a :class:`FunctionalModel` (float32, total energy in eV).

    The crystal graph is built once per structure from ``atoms`` (pymatgen neighbour list,
    coordinates not wrapped); ``energy_fn`` swaps in fractional coordinates computed from the
    differentiable ``positions`` and calls ``torch.func.functional_call``. Non-periodic
    structures are placed in a box larger than the 6 A cutoff plus their extent.

    Parameters
    ----------
    version : {"0.3.0", "0.2.0", "r2scan"}
        Checkpoint shipped inside the chgnet wheel.
    checkpoint : str, optional
        Path of a CHGNet checkpoint (``{"model": {"state_dict", "model_args"}}``) instead.
    params : "all", "readout" or list of str
        Differentiated parameters; "all" = every trainable parameter (the frozen composition
        model AtomRef is excluded), "readout" = ``readout_norm.*`` and ``mlp.*``.
    device : str or torch.device

    Returns
    -------
    FunctionalModel
        ``embedding_fn`` gives the 64 per-atom features entering the readout MLP.
    """
    net, name = _load_net(version, checkpoint)
    net = net.to(device).eval()
    cutoff = float(net.model_args.get("atom_graph_cutoff", 6.0))
    builder = _GraphBuilder(net.graph_converter, cutoff)
    graph_of = GraphCache(lambda atoms: builder(atoms).to(str(device)) if str(device) != "cpu" else builder(atoms))

    def energy(p, positions, atoms):
        graph = _with_positions(graph_of(atoms), positions)
        out = torch.func.functional_call(net, p, ([graph],), {"task": "e"})
        return out["e"].reshape(()) * len(atoms)  # CHGNet predicts energy per atom

    def embedding(p, positions, atoms):
        graph = _with_positions(graph_of(atoms), positions)
        captured = {}
        hook = net.readout_norm.register_forward_hook(lambda mod, inp, out: captured.update(h=out))
        try:
            torch.func.functional_call(net, p, ([graph],), {"task": "e"})
        finally:
            hook.remove()
        return captured["h"]

    return functional_model(net, energy, graph=builder, row_kinds=_row_kinds(net), graph_size=_graph_size,
                            batch_energies=lambda graphs, positions: _batch_energies(net, graphs, positions),
                            params=params, embedding_fn=embedding, readout=CHGNET_READOUT,
                            check_fn=functools.partial(_placeable, cutoff), supported_numbers=range(1, 95), name=name,
                            embedding_dim=int(net.atom_fea_dim))


def _load_net(version: str, checkpoint):
    """(CHGNet module, model name) of a shipped version or a checkpoint file, loaded weights-only."""
    where = "ntkal.torch.models.chgnet"
    try:
        import chgnet as chgnet_pkg
        from chgnet.model import CHGNet
    except ImportError as exc:
        fail(where, "the chgnet package is not installed (pip install 'torch==2.13.0' 'chgnet==0.4.2')", cause=exc)
    name = f"chgnet-{version}" if checkpoint is None else f"chgnet:{os.path.basename(str(checkpoint))}"
    if checkpoint is None:
        if version not in _CHGNET_CHECKPOINTS:
            fail(where, f"version must be one of {sorted(_CHGNET_CHECKPOINTS)}; got {version!r}")
        checkpoint = os.path.join(os.path.dirname(chgnet_pkg.__file__), _CHGNET_CHECKPOINTS[version])
    state = load_weights(checkpoint, where)
    try:
        model_state = state["model"]
        # The shipped checkpoints leave these out of model_args; a model saved with CHGNet's own
        # as_dict() (its Trainer, a user's fine-tuned file) carries them, and they win.
        extra = {k: v for k, v in (("mlp_out_bias", version == "0.2.0"), ("version", version))
                 if k not in model_state.get("model_args", {})}
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
            return CHGNet.from_dict(model_state, **extra), name
    except Exception as exc:
        fail(where, f"checkpoint {checkpoint} is not a CHGNet checkpoint: {type(exc).__name__}: {exc}", cause=exc)


def _with_positions(graph, positions):
    """The graph with the same topology and images; fractional coordinates follow ``positions`` (autograd)."""
    lattice = graph.lattice.detach().to(positions.dtype)
    graph.lattice = lattice  # a constant: no strain derivatives needed
    graph.atom_frac_coord = positions @ torch.linalg.inv(lattice)
    return graph


def _placeable(cutoff: float, atoms, where, arg) -> None:
    """CHGNet's graph needs a neighbour within its cutoff for every atom; its own converter stops on an isolated
    atom ("CHGNet calculation will likely go wrong"), so say which one, before any work."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    box = Atoms(atoms.numbers, positions=atoms.get_positions(),
                cell=periodic_cell(atoms, cutoff, "ntkal.torch.models.chgnet"), pbc=True)
    centres = neighbor_list("i", box, cutoff)
    lonely = sorted(set(range(len(atoms))) - set(centres.tolist()))
    if lonely:
        k = lonely[0]
        fail(where, f"{arg} has {len(lonely)} atom(s) with no neighbour within CHGNet's {cutoff:g} A cutoff "
                    f"(atom {k}, {atoms[k].symbol}): CHGNet cannot place them in its graph")


class _GraphBuilder:
    """One structure's CHGNet graph on the host (CHGNet's converter on the cell :func:`periodic_cell` gives);
    picklable, so worker processes can build graphs ahead."""

    def __init__(self, converter, cutoff: float):
        self.converter, self.cutoff = converter, float(cutoff)

    def __call__(self, atoms):
        from pymatgen.core import Lattice, Structure

        cell = periodic_cell(atoms, self.cutoff, "ntkal.torch.models.chgnet")  # slabs, molecules, cells alike
        structure = Structure(Lattice(cell), atoms.get_chemical_symbols(), atoms.get_positions(),
                              coords_are_cartesian=True, to_unit_cell=False)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return self.converter(structure)


def _row_kinds(net) -> list:
    """The row each parameter-owning CHGNet module maps (see ``_batch_energies`` for the kinds)."""
    return [("atom_embedding.*", "atoms"), ("bond_basis_expansion.*", "bonds"), ("bond_embedding", "bonds"),
            ("bond_weights_*", "bonds"), ("angle_basis_expansion.*", "angles"), ("angle_embedding", "angles"),
            ("atom_conv_layers.*.twoBody_atom.*", "edges"), ("atom_conv_layers.*.mlp_out.*", "atoms"),
            ("bond_conv_layers.*.twoBody_bond.*", "angles"), ("bond_conv_layers.*.mlp_out.*", "bonds"),
            ("angle_layers.*", "angles"), ("site_wise", "atoms"), ("readout_norm", "atoms"),
            ("mlp.*", "atoms" if net.mlp_first else "structures")]


def _graph_size(graph) -> int:
    """Rows a CHGNet graph adds to a batch: atoms, directed edges, undirected bonds and angles."""
    return (int(graph.atomic_number.shape[0]) + int(graph.atom_graph.reshape(-1, 2).shape[0])
            + int(graph.undirected2directed.shape[0]) + int(graph.bond_graph.reshape(len(graph.bond_graph), -1).shape[0]))


class _Numbers:
    """What CHGNet's composition model reads of a graph."""

    def __init__(self, atomic_number):
        self.atomic_number = atomic_number


def _offsets(counts: list) -> list:
    out = [0]
    for c in counts:
        out.append(out[-1] + int(c))
    return out


def _batch_energies(net, graphs: list, positions: list):
    """Total energies of many CHGNet graphs at the given Cartesian positions, in one pass.

    CHGNet's own ``BatchedGraph.from_graphs`` expands the bond and angle bases graph by graph; here every
    graph's bonds and angles are expanded in one call each, and Cartesian positions enter directly (no
    round trip through fractional coordinates). Row kinds: ``atoms``; ``edges`` (directed atom-graph
    edges); ``bonds`` (undirected bonds, the rows of the bond bases); ``angles`` (bond-graph entries).
    """
    from chgnet.model.model import BatchedGraph

    device = positions[0].device
    n_atoms = [g.atomic_number.shape[0] for g in graphs]
    edges = [g.atom_graph.reshape(-1, 2) for g in graphs]
    n_bonds = [g.undirected2directed.shape[0] for g in graphs]
    atom0, edge0, bond0 = _offsets(n_atoms), _offsets([e.shape[0] for e in edges]), _offsets(n_bonds)
    index = lambda ts: torch.cat(ts).to(device)  # noqa: E731
    structure_of = lambda counts: torch.repeat_interleave(  # noqa: E731
        torch.arange(len(graphs), device=device), torch.as_tensor(counts, device=device))
    cart = torch.cat(positions)
    atom_graph = index([e + atom0[i] for i, e in enumerate(edges)])
    lattices = torch.stack([g.lattice for g in graphs]).to(device=device, dtype=cart.dtype)
    images = index([g.neighbor_image.reshape(-1, 3) for g in graphs]).to(cart.dtype)
    shift = torch.einsum("ei,eij->ej", images, lattices[structure_of([e.shape[0] for e in edges])])
    vectors = cart[atom_graph[:, 0]] - (cart[atom_graph[:, 1]] + shift)
    lengths = torch.norm(vectors, dim=1)
    vectors = vectors / lengths[:, None]
    bond_lengths = lengths[index([g.undirected2directed + edge0[i] for i, g in enumerate(graphs)])]
    expansion = net.bond_basis_expansion
    bases_ag, bases_bg = expansion.rbf_expansion_ag(bond_lengths), expansion.rbf_expansion_bg(bond_lengths)
    with_angles = [(i, g.bond_graph) for i, g in enumerate(graphs) if len(g.bond_graph) != 0]
    if with_angles:
        bond_graph = index([b + torch.as_tensor([atom0[i], bond0[i], edge0[i], bond0[i], edge0[i]], dtype=b.dtype)
                            for i, b in with_angles])
        angle_bases = net.angle_basis_expansion(vectors[bond_graph[:, 2]], vectors[bond_graph[:, 4]])
        bond_graph = bond_graph[:, [0, 1, 3]]
    else:
        angle_bases, bond_graph = torch.tensor([], device=device), torch.tensor([], device=device)
    atom_owners = structure_of(n_atoms)
    batch = BatchedGraph(
        atomic_numbers=index([g.atomic_number for g in graphs]), bond_bases_ag=bases_ag, bond_bases_bg=bases_bg,
        angle_bases=angle_bases, batched_atom_graph=atom_graph, batched_bond_graph=bond_graph,
        atom_owners=atom_owners.to(torch.int32), directed2undirected=index(
            [g.directed2undirected + bond0[i] for i, g in enumerate(graphs)]),
        atom_positions=positions, strains=[None] * len(graphs), volumes=None)
    prediction = net._compute(batch)
    per_atom = prediction["e"]
    if net.composition_model is not None:  # AtomRef: a frozen per-element offset, evaluated where the model is
        per_atom = per_atom + net.composition_model([_Numbers(g.atomic_number.to(device)) for g in graphs])
    energies = per_atom * torch.as_tensor(n_atoms, dtype=per_atom.dtype, device=device)
    owners = {"atoms": atom_owners, "edges": atom_owners[atom_graph[:, 0]], "bonds": structure_of(n_bonds),
              "angles": atom_owners[bond_graph[:, 0]] if with_angles else atom_owners[:0]}
    return energies, owners


ADAPTER = Adapter(chgnet, options={"checkpoint": "checkpoint", "device": "device"},
                  summary="pretrained CHGNet 0.3.0 (the chgnet wheel's weights), or a CHGNet checkpoint file")
