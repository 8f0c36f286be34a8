"""Pretrained SevenNet-0 (sevenn 0.13.0 wheel) as a FunctionalModel.

Checkpoints are read with ``torch.load(..., weights_only=True)`` and an allow-list of the classes
they hold; anything else is refused rather than executed.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import torch

from ...errors import fail
from ..functional import FunctionalModel
from ._common import Adapter, GraphCache, functional_model, load_weights

__all__ = ["ADAPTER", "SEVENNET_READOUT", "SEVENNET_SHIPPED", "sevennet"]


# The checkpoints inside the sevenn 0.13 wheel (no download needed).
SEVENNET_SHIPPED = {
    "7net-0": "pretrained_potentials/SevenNet_0__11Jul2024/checkpoint_sevennet_0.pth",
    "7net-0_22may2024": "pretrained_potentials/SevenNet_0__22May2024/checkpoint_sevennet_0.pth",
    "7net-l3i5": "pretrained_potentials/SevenNet_l3i5/checkpoint_l3i5.pth",
    "7net-mf-0": "pretrained_potentials/SevenNet_MF_0/checkpoint_sevennet_mf_0.pth",
}
# Rows of the parameter-owning modules in a batch: the radial basis and the convolutions' radial networks
# act on edges, every other module (e3nn linears, self-connections, readout) on atoms.
SEVENNET_ROW_KINDS = (("edge_embedding.*", "edges"), ("*_convolution.weight_nn.*", "edges"), ("*", "atoms"))
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


def sevennet(name: str = "7net-0", *, checkpoint: str | None = None, modal: str | None = None, params="all",
             device: str | torch.device = "cpu") -> FunctionalModel:
    """A pretrained SevenNet (default SevenNet-0 of 11Jul2024, P = 842k, float32) as a :class:`FunctionalModel`.

    The neighbour list (sevenn's graph builder, with cell shifts) is built once per structure;
    ``energy_fn`` recomputes the edge vectors ``pos[dst] - pos[src] + shift @ cell`` from the
    differentiable positions and runs every module but SevenNet's own force head through
    ``torch.func.functional_call``. The checkpoint is read with ``weights_only=True``, allowing
    only numpy array reconstruction besides tensors.

    Parameters
    ----------
    name : str
        A checkpoint the sevenn wheel ships: ``"7net-0"`` (SevenNet-0, 11Jul2024), ``"7net-0_22May2024"``,
        ``"7net-l3i5"`` or ``"7net-mf-0"`` (multi-fidelity: pass ``modal``). Ignored with ``checkpoint``.
    checkpoint : str, optional
        Path of a SevenNet checkpoint file instead of a shipped one.
    modal : str, optional
        Fidelity of a multi-fidelity model (for SevenNet-MF-0 one of its ``modal_map`` keys, e.g. "PBE").
    params : "all", "readout" or list of str
    device : str or torch.device
    """
    import sevenn._keys as KEY

    net, config, label = _load_net(name, checkpoint, modal)
    net = net.to(device).eval()
    cutoff = float(config[KEY.CUTOFF])
    builder = _GraphBuilder(cutoff)
    graph_of = GraphCache(builder)

    def run(p, positions, atoms, capture=None):
        data = _graph_data(graph_of(atoms), positions, modal)
        hook = None
        if capture is not None:
            hook = net._modules["reduce_input_to_hidden"].register_forward_pre_hook(
                lambda mod, args: capture.update(h=args[0][KEY.NODE_FEATURE]))
        try:
            return torch.func.functional_call(net, p, (data,))
        finally:
            if hook is not None:
                hook.remove()

    def energy(p, positions, atoms):
        return run(p, positions, atoms)[KEY.PRED_TOTAL_ENERGY].reshape(())

    def embedding(p, positions, atoms):
        captured = {}
        run(p, positions, atoms, captured)
        return captured["h"]

    return functional_model(net, energy, graph=builder, row_kinds=SEVENNET_ROW_KINDS, graph_size=_graph_size,
                            batch_energies=lambda graphs, positions: _batch_energies(net, graphs, positions, modal),
                            params=params, embedding_fn=embedding, readout=SEVENNET_READOUT,
                            supported_numbers=dict(config[KEY.TYPE_MAP]).keys(), name=label)


def _graph_data(raw: dict, positions, modal):
    """sevenn's AtomGraphData of one structure with edge vectors from the differentiable ``positions``."""
    import sevenn._keys as KEY
    from sevenn.atom_graph_data import AtomGraphData

    data = AtomGraphData.from_numpy_dict({k: (v.copy() if isinstance(v, np.ndarray) else v)
                                          for k, v in raw.items() if k != KEY.INFO})
    data = data.to(positions.device)
    src, dst = data[KEY.EDGE_IDX][0], data[KEY.EDGE_IDX][1]
    cell = torch.as_tensor(raw[KEY.CELL], dtype=positions.dtype, device=positions.device).reshape(3, 3)
    shift = torch.as_tensor(raw[KEY.CELL_SHIFT], dtype=positions.dtype, device=positions.device)
    data[KEY.POS] = positions
    if modal is not None:
        data[KEY.DATA_MODALITY] = modal
    data[KEY.EDGE_VEC] = positions[dst] - positions[src] + shift @ cell
    return data


def _load_net(name: str, checkpoint, modal):
    """(SevenNet module without its force head, its config, model label) of a shipped or given checkpoint."""
    where = "ntkal.torch.models.sevennet"
    try:
        import sevenn
    except ImportError as exc:
        fail(where, "the sevenn package is not installed (pip install 'torch==2.13.0' 'sevenn==0.13.0')", cause=exc)
    if checkpoint is None:
        if not isinstance(name, str) or name.lower() not in SEVENNET_SHIPPED:
            fail(where, f"name must be one of the checkpoints the sevenn wheel ships, {sorted(SEVENNET_SHIPPED)}; "
                        f"got {name!r} (or pass checkpoint=PATH)")
        checkpoint = os.path.join(os.path.dirname(sevenn.__file__), SEVENNET_SHIPPED[name.lower()])
        label = f"sevennet:{name.lower()}"
    else:
        label = f"sevennet:{os.path.basename(str(checkpoint))}"
    if modal is not None:
        label += f"[{modal}]"
    state = load_weights(checkpoint, where, safe_globals=_sevennet_safe_globals())
    net, config = _build(state, str(checkpoint), where)
    net.set_is_batch_data(False)
    net.delete_module_by_key("force_output")  # we differentiate the energy ourselves
    modal_map = getattr(net, "modal_map", None) or {}
    if modal_map and modal not in modal_map:
        fail(where, f"this model has several fidelities: modal must be one of {sorted(modal_map)}; got {modal!r}")
    if not modal_map and modal is not None:
        fail(where, f"modal={modal!r} given, but this model has a single fidelity")
    return net, config, label


def _build(state: dict, checkpoint: str, where: str):
    """sevenn's model from a weights-only loaded checkpoint dict (sevenn never unpickles the file itself)."""
    try:
        import warnings

        from sevenn.checkpoint import SevenNetCheckpoint, _config_cp_routine

        cp = SevenNetCheckpoint(checkpoint)
        cp._config_original = state.get("config", {})
        cp._model_state_dict = state.get("model_state_dict", {})
        cp._optimizer_state_dict, cp._scheduler_state_dict = {}, {}
        cp._epoch, cp._time, cp._hash = state.get("epoch"), state.get("time", ""), state.get("hash", "")
        cp._config = _config_cp_routine(cp._config_original)
        cp._loaded = True
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return cp.build_model(), cp.config
    except Exception as exc:
        fail(where, f"checkpoint {checkpoint} is not a SevenNet checkpoint: {type(exc).__name__}: {exc}", cause=exc)


class _GraphBuilder:
    """One structure's neighbour list with cell shifts (sevenn's builder); picklable for worker processes."""

    def __init__(self, cutoff: float):
        self.cutoff = float(cutoff)

    def __call__(self, atoms):
        from sevenn.train.dataload import unlabeled_atoms_to_graph

        return unlabeled_atoms_to_graph(atoms, self.cutoff, with_shift=True)


def _graph_size(graph) -> int:
    """Rows a structure adds to a batch: atoms and directed edges."""
    import sevenn._keys as KEY

    return int(len(graph[KEY.ATOMIC_NUMBERS])) + int(graph[KEY.EDGE_IDX].shape[1])


def _batch_energies(net, graphs: list, positions: list, modal):
    """Total energies of many structures in one pass of SevenNet in its batch mode.

    Row kinds: ``atoms`` and ``edges`` (directed, as sevenn's neighbour list gives them).
    """
    import sevenn._keys as KEY
    from sevenn.atom_graph_data import AtomGraphData

    device, dtype = positions[0].device, positions[0].dtype
    n_atoms = [len(g[KEY.ATOMIC_NUMBERS]) for g in graphs]
    first = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    edges = torch.as_tensor(np.concatenate([g[KEY.EDGE_IDX] + f for g, f in zip(graphs, first)], axis=1),
                            dtype=torch.long, device=device)
    batch = torch.repeat_interleave(torch.arange(len(graphs), device=device), torch.as_tensor(n_atoms, device=device))
    cells = torch.as_tensor(np.stack([np.asarray(g[KEY.CELL], dtype=np.float64).reshape(3, 3) for g in graphs]),
                            dtype=dtype, device=device)
    shifts = torch.as_tensor(np.concatenate([g[KEY.CELL_SHIFT] for g in graphs]), dtype=dtype, device=device)
    pos = torch.cat(positions)
    src, dst = edges[0], edges[1]
    numbers = torch.as_tensor(np.concatenate([g[KEY.ATOMIC_NUMBERS] for g in graphs]), dtype=torch.long, device=device)
    data = AtomGraphData(x=numbers.clone(), edge_index=edges, pos=pos, **{
        KEY.ATOMIC_NUMBERS: numbers, KEY.BATCH: batch,
        KEY.EDGE_VEC: pos[dst] - pos[src] + torch.einsum("ni,nij->nj", shifts, cells[batch[src]]),
        KEY.NUM_ATOMS: torch.as_tensor(n_atoms, device=device)})
    if modal is not None:
        data[KEY.DATA_MODALITY] = [modal] * len(graphs)
    net.set_is_batch_data(True)
    try:
        out = net(data)
    finally:
        net.set_is_batch_data(False)
    return out[KEY.PRED_TOTAL_ENERGY].reshape(-1), {"atoms": batch, "edges": batch[src]}


ADAPTER = Adapter(sevennet, options={"checkpoint": "checkpoint", "modal": "modal", "device": "device"},
                  names={name: {"name": name} for name in SEVENNET_SHIPPED},
                  summary="SevenNet-0 or another checkpoint the sevenn wheel ships, or a SevenNet checkpoint file")
