"""Pretrained CHGNet (chgnet 0.4.2 wheel: CHGNet 0.3.0 weights) as a FunctionalModel.

Checkpoints are read with ``torch.load(..., weights_only=True)``; a checkpoint that needs arbitrary
unpickling is refused rather than executed.
"""

from __future__ import annotations

import contextlib
import io
import os

import torch

from ...errors import InvalidArgumentError
from ..cells import periodic_cell
from ..functional import FunctionalModel

__all__ = ["CHGNET_READOUT", "chgnet"]


_CHGNET_CHECKPOINTS = {
    "0.3.0": "pretrained/0.3.0/chgnet_0.3.0_e29f68s314m37.pth.tar",
    "0.2.0": "pretrained/0.2.0/chgnet_0.2.0_e30f77s348m32.pth.tar",
    "r2scan": "pretrained/r2scan/chgnet_r2scan_transfer_learning_e15f36s161m23.pth.tar",
}
# Readout: the layer norm before the readout MLP and the MLP itself (12.7k of 412k parameters).
CHGNET_READOUT = ("readout_norm.*", "mlp.*")


def _load_checkpoint(path: str, where: str):
    """``torch.load(weights_only=True)`` with a clear error for a missing or corrupt file."""
    if not os.path.isfile(path):
        raise InvalidArgumentError(f"{where}: checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file or one that needs arbitrary unpickling
        raise InvalidArgumentError(f"{where}: checkpoint {path} could not be loaded with weights_only=True: "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc


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
    try:
        import chgnet as chgnet_pkg
        from chgnet.model import CHGNet
    except ImportError as exc:
        raise InvalidArgumentError("ntkal.torch.models.chgnet: the chgnet package is not installed "
                      "(pip install 'torch==2.13.0' 'chgnet==0.4.2')") from exc
    name = f"chgnet-{version}" if checkpoint is None else f"chgnet:{os.path.basename(str(checkpoint))}"
    if checkpoint is None:
        if version not in _CHGNET_CHECKPOINTS:
            raise InvalidArgumentError(f"ntkal.torch.models.chgnet: version must be one of {sorted(_CHGNET_CHECKPOINTS)}; got {version!r}")
        checkpoint = os.path.join(os.path.dirname(chgnet_pkg.__file__), _CHGNET_CHECKPOINTS[version])
    state = _load_checkpoint(str(checkpoint), "ntkal.torch.models.chgnet")
    try:
        model_state = state["model"]
        # The shipped checkpoints leave these out of model_args; a model saved with CHGNet's own
        # as_dict() (its Trainer, a user's fine-tuned file) carries them, and they win.
        extra = {k: v for k, v in (("mlp_out_bias", version == "0.2.0"), ("version", version))
                 if k not in model_state.get("model_args", {})}
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
            net = CHGNet.from_dict(model_state, **extra)
    except Exception as exc:
        raise InvalidArgumentError(f"ntkal.torch.models.chgnet: checkpoint {checkpoint} is not a CHGNet checkpoint: "
                      f"{type(exc).__name__}: {exc}") from exc
    net = net.to(device).eval()
    from pymatgen.core import Lattice, Structure

    cutoff = float(net.model_args.get("atom_graph_cutoff", 6.0))
    trainable = {k: v for k, v in net.named_parameters() if v.requires_grad}
    frozen = {k: v for k, v in net.named_parameters() if not v.requires_grad}
    frozen.update(dict(net.named_buffers()))

    graph_cache: dict = {}

    def graph_of(atoms):
        # The graph depends on atoms only: reuse it for repeated calls on one structure
        # (finite differences, torch.func transforms, which must not build it inside).
        from ...structures import structure_digest

        key = structure_digest(atoms)
        if key not in graph_cache:
            graph_cache.clear()
            graph_cache[key] = build_graph(atoms)
        return graph_cache[key]

    def build_graph(atoms):
        cell = periodic_cell(atoms, cutoff, "ntkal.torch.models.chgnet")  # slabs, molecules, cells alike
        structure = Structure(Lattice(cell), atoms.get_chemical_symbols(), atoms.get_positions(),
                              coords_are_cartesian=True, to_unit_cell=False)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            graph = net.graph_converter(structure)
        return graph.to(str(device)) if str(device) != "cpu" else graph

    def with_positions(graph, positions):
        # Same graph topology and images; fractional coordinates follow `positions` (autograd).
        lattice = graph.lattice.detach().to(positions.dtype)
        graph.lattice = lattice  # a constant: no strain derivatives needed
        graph.atom_frac_coord = positions @ torch.linalg.inv(lattice)
        return graph

    def energy(p, positions, atoms):
        graph = with_positions(graph_of(atoms), positions)
        out = torch.func.functional_call(net, p, ([graph],), {"task": "e"})
        return out["e"].reshape(()) * len(atoms)  # CHGNet predicts energy per atom

    def embedding(p, positions, atoms):
        graph = with_positions(graph_of(atoms), positions)
        captured = {}
        hook = net.readout_norm.register_forward_hook(lambda mod, inp, out: captured.update(h=out))
        try:
            torch.func.functional_call(net, p, ([graph],), {"task": "e"})
        finally:
            hook.remove()
        return captured["h"]

    def placeable(atoms, where, arg):
        # CHGNet's graph needs a neighbour within its cutoff for every atom; its own converter stops on
        # an isolated atom ("CHGNet calculation will likely go wrong"), so say which one, before any work.
        from ase import Atoms
        from ase.neighborlist import neighbor_list

        box = Atoms(atoms.numbers, positions=atoms.get_positions(),
                    cell=periodic_cell(atoms, cutoff, "ntkal.torch.models.chgnet"), pbc=True)
        centres = neighbor_list("i", box, cutoff)
        lonely = sorted(set(range(len(atoms))) - set(centres.tolist()))
        if lonely:
            k = lonely[0]
            raise InvalidArgumentError(
                f"{where}: {arg} has {len(lonely)} atom(s) with no neighbour within CHGNet's {cutoff:g} A cutoff "
                f"(atom {k}, {atoms[k].symbol}): CHGNet cannot place them in its graph")

    model = FunctionalModel(energy, trainable, frozen=frozen, embedding_fn=embedding, readout=CHGNET_READOUT,
                            check_fn=placeable,
                            supported_numbers=range(1, 95), name=name, embedding_dim=int(net.atom_fea_dim))
    return model.select(params)
