"""Model factories returning :class:`FunctionalModel`: CHGNet, SevenNet-0 and a tiny test model.

Checkpoints are read with ``torch.load(..., weights_only=True)``; a checkpoint that needs
arbitrary unpickling is refused rather than executed.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import torch

from ..errors import InvalidArgumentError
from .functional import FunctionalModel

__all__ = ["MODELS", "load", "chgnet", "sevennet", "toy"]


# ---------------------------------------------------------------------------------------
# Tiny pair model (float64): the reference model of the finite-difference tests and examples
# ---------------------------------------------------------------------------------------
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

        from ..structures import structure_digest

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


# ---------------------------------------------------------------------------------------
# CHGNet 0.3.0 (weights ship inside the chgnet wheel)
# ---------------------------------------------------------------------------------------
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


def _molecule_box(atoms, cutoff: float):
    """Non-periodic structures get a cubic box wide enough that no image lies within the cutoff."""
    pos = atoms.get_positions()
    extent = float(np.max(np.ptp(pos, axis=0))) if len(atoms) > 1 else 0.0
    return np.eye(3) * (extent + 2.0 * cutoff + 1.0)


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
        with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
            net = CHGNet.from_dict(model_state, mlp_out_bias=version == "0.2.0", version=version)
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
        from ..structures import structure_digest

        key = structure_digest(atoms)
        if key not in graph_cache:
            graph_cache.clear()
            graph_cache[key] = build_graph(atoms)
        return graph_cache[key]

    def build_graph(atoms):
        if all(atoms.pbc):
            cell = np.asarray(atoms.cell)
        elif not any(atoms.pbc):
            cell = _molecule_box(atoms, cutoff)
        else:
            raise InvalidArgumentError(f"ntkal.torch.models.chgnet: atoms.pbc must be all True or all False; got {atoms.pbc.tolist()}")
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

    model = FunctionalModel(energy, trainable, frozen=frozen, embedding_fn=embedding, readout=CHGNET_READOUT,
                            supported_numbers=range(1, 95), name=name, embedding_dim=int(net.atom_fea_dim))
    return model.select(params)


# ---------------------------------------------------------------------------------------
# SevenNet-0 (weights ship inside the sevenn wheel)
# ---------------------------------------------------------------------------------------
_SEVENNET_CHECKPOINT = "pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth"
# Readout: the two linear maps from node features to atomic energies (and the species rescale).
SEVENNET_READOUT = ("reduce_input_to_hidden.*", "reduce_hidden_to_energy.*", "rescale_atomic_energy.*")


def _sevennet_safe_globals():
    """The plain-data globals SevenNet checkpoints pickle (numpy arrays in the config)."""
    import _codecs
    from collections import OrderedDict

    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    return [(reconstruct, "numpy.core.multiarray._reconstruct"), reconstruct, np.ndarray, np.dtype,
            _codecs.encode, OrderedDict, torch.device] + [type(np.dtype(t)) for t in
                                                           ("float64", "float32", "int64", "int32", "bool")]


def sevennet(*, checkpoint: str | None = None, params="all", device: str | torch.device = "cpu") -> FunctionalModel:
    """Pretrained SevenNet-0 (11Jul2024, P = 842k, float32) as a :class:`FunctionalModel`.

    The neighbour list (sevenn's graph builder, with cell shifts) is built once per structure;
    ``energy_fn`` recomputes the edge vectors ``pos[dst] - pos[src] + shift @ cell`` from the
    differentiable positions and runs every module but SevenNet's own force head through
    ``torch.func.functional_call``. The checkpoint is read with ``weights_only=True``, allowing
    only numpy array reconstruction besides tensors.

    Parameters
    ----------
    checkpoint : str, optional
        Path of a SevenNet checkpoint (default: SevenNet-0 inside the sevenn wheel).
    params : "all", "readout" or list of str
    device : str or torch.device
    """
    where = "ntkal.torch.models.sevennet"
    try:
        import sevenn
        import sevenn._keys as KEY
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.checkpoint import SevenNetCheckpoint
        from sevenn.train.dataload import unlabeled_atoms_to_graph
    except ImportError as exc:
        raise InvalidArgumentError(f"{where}: the sevenn package is not installed (pip install 'torch==2.13.0' 'sevenn==0.13.0')") from exc
    name = "sevennet-0" if checkpoint is None else f"sevennet:{os.path.basename(str(checkpoint))}"
    if checkpoint is None:
        checkpoint = os.path.join(os.path.dirname(sevenn.__file__), _SEVENNET_CHECKPOINT)
    checkpoint = str(checkpoint)
    if not os.path.isfile(checkpoint):
        raise InvalidArgumentError(f"{where}: checkpoint file not found: {checkpoint}")
    try:
        with torch.serialization.safe_globals(_sevennet_safe_globals()):
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidArgumentError(f"{where}: checkpoint {checkpoint} could not be loaded with weights_only=True: "
                      f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from exc
    try:
        import warnings

        from sevenn.checkpoint import _config_cp_routine

        cp = SevenNetCheckpoint(checkpoint)
        # Hand the safely loaded dict to sevenn instead of letting it unpickle the file itself.
        cp._config_original = state.get("config", {})
        cp._model_state_dict = state.get("model_state_dict", {})
        cp._optimizer_state_dict, cp._scheduler_state_dict = {}, {}
        cp._epoch, cp._time, cp._hash = state.get("epoch"), state.get("time", ""), state.get("hash", "")
        cp._config = _config_cp_routine(cp._config_original)
        cp._loaded = True
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            net = cp.build_model()
    except Exception as exc:
        raise InvalidArgumentError(f"{where}: checkpoint {checkpoint} is not a SevenNet checkpoint: {type(exc).__name__}: {exc}") from exc
    net.set_is_batch_data(False)
    net.delete_module_by_key("force_output")  # we differentiate the energy ourselves
    net = net.to(device).eval()
    cutoff = float(cp.config[KEY.CUTOFF])
    type_map = dict(cp.config[KEY.TYPE_MAP])
    graph_cache: dict = {}

    def graph_of(atoms):
        from ..structures import structure_digest

        key = structure_digest(atoms)
        if key not in graph_cache:
            graph_cache.clear()
            graph_cache[key] = unlabeled_atoms_to_graph(atoms, cutoff, with_shift=True)
        return graph_cache[key]

    def run(p, positions, atoms, capture=None):
        raw = graph_of(atoms)
        data = AtomGraphData.from_numpy_dict({k: (v.copy() if isinstance(v, np.ndarray) else v)
                                              for k, v in raw.items() if k != KEY.INFO})
        data = data.to(positions.device)
        src, dst = data[KEY.EDGE_IDX][0], data[KEY.EDGE_IDX][1]
        cell = torch.as_tensor(raw[KEY.CELL], dtype=positions.dtype, device=positions.device).reshape(3, 3)
        shift = torch.as_tensor(raw[KEY.CELL_SHIFT], dtype=positions.dtype, device=positions.device)
        data[KEY.POS] = positions
        data[KEY.EDGE_VEC] = positions[dst] - positions[src] + shift @ cell
        hook = None
        if capture is not None:
            hook = net._modules["reduce_input_to_hidden"].register_forward_pre_hook(
                lambda mod, args: capture.update(h=args[0][KEY.NODE_FEATURE]))
        try:
            out = torch.func.functional_call(net, p, (data,))
        finally:
            if hook is not None:
                hook.remove()
        return out

    def energy(p, positions, atoms):
        return run(p, positions, atoms)[KEY.PRED_TOTAL_ENERGY].reshape(())

    def embedding(p, positions, atoms):
        captured = {}
        run(p, positions, atoms, captured)
        return captured["h"]

    trainable = {k: v for k, v in net.named_parameters() if v.requires_grad}
    frozen = {k: v for k, v in net.named_parameters() if not v.requires_grad}
    frozen.update(dict(net.named_buffers()))
    model = FunctionalModel(energy, trainable, frozen=frozen, embedding_fn=embedding, readout=SEVENNET_READOUT,
                            supported_numbers=type_map.keys(), name=name)
    return model.select(params)


# ---------------------------------------------------------------------------------------
# Registry used by the CLI and ntkal.torch.models.load
# ---------------------------------------------------------------------------------------
MODELS = {"chgnet": chgnet, "sevennet": sevennet, "toy": toy}


def load(name: str, **kwargs) -> FunctionalModel:
    """A model by name (``"chgnet"``, ``"sevennet"``, ``"toy"``)."""
    if name not in MODELS:
        raise InvalidArgumentError(f"ntkal.torch.models.load: model must be one of {sorted(MODELS)}; got {name!r}")
    return MODELS[name](**kwargs)
