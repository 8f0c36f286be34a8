"""A MACE model (mace-torch) as a FunctionalModel: a file as mace-torch saves it, or a module in memory.

Loading is safe by default: ``torch.load(weights_only=True)`` with only the mace, e3nn and torch.nn
*classes* a model is built from allow-listed, never functions, and only when the file rebuilds them
from their saved state without calling them (:mod:`ntkal.torch.models._safe_load` says which and
why). A standard MACE file also names ``torch.fx``'s graph-module rebuilder, which *executes code
stored in the file*, and e3nn's generated modules, which load TorchScript stored in the file; such a
file is refused unless the caller passes ``allow_unsafe_load=True`` for a file they trust.

Importing mace sets ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which would turn every later
``torch.load`` of the process without ``weights_only`` into a full unpickling: the variable is put
back as it was.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ...errors import fail
from ..functional import FunctionalModel
from ._common import Adapter, GraphCache, functional_model
from ._safe_load import called_globals, check_global

__all__ = ["ADAPTER", "MACE_READOUT", "mace"]

MACE_READOUT = ("readouts.*",)
# Rows of the parameter-owning modules in a batch: the radial basis and the radial networks that weight the
# convolutions act on edges; embeddings, linears, skip and symmetric contractions, readouts on atoms.
MACE_ROW_KINDS = (("radial_embedding.*", "edges"), ("interactions.*.conv_tp_weights.*", "edges"), ("*", "atoms"))
_SAFE_PREFIXES = ("mace.", "e3nn.", "torch.nn.")
_TORCH_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def _import_mace(where: str):
    # e3nn 0.4.4 (pinned by mace-torch) loads its constants with torch.load: allow that one builtin
    torch.serialization.add_safe_globals([slice])
    before = os.environ.get(_TORCH_ENV)
    try:
        from mace import data, tools
        from mace.tools import torch_geometric

        import e3nn.nn  # noqa: F401  the classes a safe load may allow-list are looked up here, never imported
        import mace.modules  # noqa: F401
    except ImportError as exc:
        fail(where, "mace-torch is not installed (pip install 'ntkal[mace]')", cause=exc)
    finally:  # mace's __init__ sets it for the whole process
        if before is None:
            os.environ.pop(_TORCH_ENV, None)
        else:
            os.environ[_TORCH_ENV] = before
    return data, tools, torch_geometric


def _refusals(path: str, where: str) -> tuple[list, dict[str, list[str]]]:
    """The classes to allow-list for ``path``, and its other globals by the reason they cannot be."""
    try:
        needed = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(path)))
        called = called_globals(path)
    except Exception as exc:
        fail(where, f"{path} is not a model file saved with torch.save: "
                    f"{type(exc).__name__}: {exc}", cause=exc)
    classes, refused = [], {}
    for name in needed:
        cls, reason = check_global(name, _SAFE_PREFIXES)
        if cls is not None and name in called:
            reason = "module classes the file calls with its own arguments (a saved model is rebuilt from state)"
        if reason is None:
            classes.append(cls)
        else:
            refused.setdefault(reason, []).append(name)
    if "<computed>" in called:
        refused.setdefault("calls of objects the file builds itself", []).append("<computed>")
    return classes, refused


def _load(path: str, where: str, allow_unsafe_load: bool):
    if not os.path.isfile(path):
        fail(where, f"model file not found: {path}")
    classes, refused = _refusals(path, where)
    if refused and not allow_unsafe_load:
        named = "; ".join(f"{reason}: {', '.join(names[:4])}{f' and {len(names) - 4} more' if len(names) > 4 else ''}"
                          for reason, names in refused.items())
        fail(where, f"{path} cannot be loaded safely: the safe load rebuilds only the mace/e3nn/torch.nn module "
                    f"classes a model is made of, and the file names {named}. A standard MACE file is refused: it embeds "
                    "e3nn's generated modules, whose code runs while the file loads. Pass allow_unsafe_load=True "
                    "(CLI: --allow-unsafe-load) only for a file you trust")
    try:
        if refused:
            net = torch.load(path, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals(classes):
                net = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        fail(where, f"{path} is not a MACE model file: {type(exc).__name__}: {exc}", cause=exc)
    return _checked_model(net, where, path)


def _checked_model(net, where: str, what: str):
    """``net`` when it is a MACE module; a named error saying what to pass instead otherwise."""
    if isinstance(net, Mapping) and net and all(torch.is_tensor(v) for v in net.values()):
        fail(where, f"{what} holds a state dict ({len(net)} tensors), not a model: pass a model file saved with "
                    "torch.save(model), or build the MACE module, call its load_state_dict() and pass the module")
    if not isinstance(net, torch.nn.Module):
        keys = f" with keys {sorted(map(str, net))[:6]}" if isinstance(net, Mapping) else ""
        fail(where, f"{what} holds a {type(net).__name__}{keys}, not a MACE model: pass a "
                    "model file saved with torch.save(model) or a MACE module")
    if not (hasattr(net, "r_max") and hasattr(net, "atomic_numbers")):
        fail(where, f"{what} is a {type(net).__name__} module without r_max and "
                    "atomic_numbers, not a MACE model")
    return net


def mace(model, *, params="all", device: str | torch.device = "cpu", head: str | None = None,
         allow_unsafe_load: bool = False) -> FunctionalModel:
    """A MACE model as a :class:`FunctionalModel` (total energy in eV, the model's dtype).

    The graph (neighbour list with cell shifts, from mace's own ``AtomicData``) is built once per
    structure; ``energy_fn`` swaps in the differentiable positions, so MACE recomputes edge vectors
    and the energy through ``torch.func.functional_call``. Periodic cells, slabs and molecules are
    handled by mace's neighbour list as the ``pbc`` flags say.

    Parameters
    ----------
    model : str, os.PathLike or torch.nn.Module
        A model file as mace-torch saves it (foundation or fine-tuned), or a MACE module.
    params : "all", "readout" or list of str
        Differentiated parameters: all, the readout(s), or fnmatch patterns (e.g. ``"interactions.1.*"``
        and ``"products.1.*"`` for the last interaction of a two-layer model).
    device : str or torch.device
    head : str, optional
        Head of a multi-head model (default: its first head).
    allow_unsafe_load : bool
        Let a model file run the code it stores while loading (see the module docstring).
    """
    where = "ntkal.torch.models.mace"
    data, tools, torch_geometric = _import_mace(where)
    if isinstance(model, (torch.nn.Module, Mapping)):
        net, name = _checked_model(model, where, "model"), "mace:module"
    else:
        net, name = _load(str(model), where, allow_unsafe_load), f"mace:{os.path.basename(str(model))}"
    net = net.to(device).eval()
    dtype = next(net.parameters()).dtype
    r_max = float(net.r_max)
    z_table = tools.AtomicNumberTable([int(z) for z in net.atomic_numbers])
    heads = list(getattr(net, "heads", None) or ["Default"])
    if head is not None and head not in heads:
        fail(where, f"head must be one of {heads}; got {head!r}")
    head_index = heads.index(head) if head is not None else 0

    builder = _GraphBuilder(z_table.zs, r_max, heads, head_index, dtype)
    graph_of = GraphCache(lambda atoms: _collate([builder(atoms)], dtype, device))

    def energy(p, positions, atoms):
        batch = dict(graph_of(atoms))
        batch["positions"] = positions
        out = torch.func.functional_call(net, p, (batch,), {"compute_force": False, "training": False})
        return out["energy"].reshape(-1)[0]

    return functional_model(net, energy, graph=builder, row_kinds=MACE_ROW_KINDS, graph_size=_graph_size,
                            batch_energies=lambda graphs, positions: _batch_energies(net, graphs, positions, dtype,
                                                                                     device),
                            params=params, readout=MACE_READOUT, supported_numbers=z_table.zs, name=name)


class _GraphBuilder:
    """One structure's ``AtomicData`` (mace's neighbour list with cell shifts); picklable for worker processes."""

    def __init__(self, zs, r_max: float, heads: list, head_index: int, dtype):
        self.zs, self.r_max, self.heads, self.head_index, self.dtype = list(zs), float(r_max), list(heads), head_index, dtype

    def __call__(self, atoms):
        data, tools, _ = _import_mace("ntkal.torch.models.mace")
        config = data.config_from_atoms(atoms)
        config.head = self.heads[self.head_index]
        kwargs = {"heads": self.heads} if len(self.heads) > 1 else {}
        previous = torch.get_default_dtype()  # mace builds AtomicData in the default dtype: make it the
        torch.set_default_dtype(self.dtype)   # model's, or float32 rounding of the cell shifts edge vectors
        try:
            return data.AtomicData.from_config(config, z_table=tools.AtomicNumberTable(self.zs), cutoff=self.r_max,
                                               **kwargs)
        finally:
            torch.set_default_dtype(previous)


def _graph_size(graph) -> int:
    """Rows a structure adds to a batch: atoms and directed edges."""
    return int(graph.positions.shape[0]) + int(graph.edge_index.shape[1])


def _collate(graphs: list, dtype, device) -> dict:
    """Many structures' AtomicData as one batch dict (mace's collation), floats in the model's dtype."""
    from mace.tools import torch_geometric

    batch = torch_geometric.batch.Batch.from_data_list(graphs)
    return {k: (v.to(device=device, dtype=dtype) if torch.is_tensor(v) and v.is_floating_point()
                else v.to(device) if torch.is_tensor(v) else v) for k, v in batch.to_dict().items()}


def _batch_energies(net, graphs: list, positions: list, dtype, device):
    """Total energies of many structures in one MACE pass. Row kinds: ``atoms`` and ``edges`` (directed)."""
    batch = _collate(graphs, dtype, device)
    batch["positions"] = torch.cat(positions)
    out = net(batch, compute_force=False, training=False)
    owners = batch["batch"]
    return out["energy"].reshape(-1), {"atoms": owners, "edges": owners[batch["edge_index"][0]]}


ADAPTER = Adapter(mace, options={"checkpoint": "model", "device": "device", "allow_unsafe_load": "allow_unsafe_load"},
                  required=("checkpoint",), summary="a MACE model file as mace-torch saves it (extra [mace])")
