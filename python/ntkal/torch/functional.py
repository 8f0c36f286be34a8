"""A model as a pure function of its parameters: the adapter every Jacobian route uses."""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..errors import fail
from ..structures import check_atoms  # the package's one structure check (re-exported here)

__all__ = ["FunctionalModel", "check_atoms"]

EnergyFn = Callable[[dict, torch.Tensor, object], torch.Tensor]
EmbeddingFn = Callable[[dict, torch.Tensor, object], torch.Tensor]


class FunctionalModel:
    """An MLIP energy as a pure function ``E(params, positions, atoms)``.

    Parameters
    ----------
    energy_fn : callable
        ``energy_fn(params: dict[str, Tensor], positions: Tensor (N, 3), atoms: ase.Atoms) -> Tensor``
        returning the scalar total energy (eV). ``params`` holds every tensor of ``params`` and
        ``frozen`` (merged); ``positions`` equals ``atoms.positions`` in value but carries the
        autograd graph, so forces are ``-dE/dpositions``.
    params : Mapping[str, Tensor]
        The differentiated parameters. Their order (the mapping's order, each tensor flattened
        row-major) defines the column order of every Jacobian row.
    frozen : Mapping[str, Tensor], optional
        Tensors passed to ``energy_fn`` but not differentiated (buffers, frozen weights).
    embedding_fn : callable, optional
        ``embedding_fn(params, positions, atoms) -> Tensor (N, F)`` per-atom features of the
        model, used by the ``"embedding"`` kernel.
    readout : sequence of str, optional
        fnmatch patterns naming the readout parameters (``select("readout")``, ``"last_layer"``).
    supported_numbers : iterable of int, optional
        Atomic numbers the model accepts; others raise ``InvalidArgumentError``.
    name : str, optional
        Identifies the model in cache fingerprints and messages.
    embedding_dim : int, optional
        Width F of ``embedding_fn``'s output (found on first use when omitted).
    check_fn : callable, optional
        ``check_fn(atoms, where, arg)`` raising ``InvalidArgumentError`` for structures the model
        cannot handle (called by :meth:`check`, before any featurisation).
    batched : ntkal.torch.batched.BatchedEnergy, optional
        How to evaluate many structures in one pass (the model adapters provide it); the featurizer
        then computes per-structure rows for a batch of structures at once. Without it, structures
        are featurized one at a time through ``energy_fn``.
    """

    def __init__(
        self,
        energy_fn: EnergyFn,
        params: Mapping[str, torch.Tensor],
        *,
        frozen: Mapping[str, torch.Tensor] | None = None,
        embedding_fn: EmbeddingFn | None = None,
        readout: Sequence[str] | None = None,
        supported_numbers: Iterable[int] | None = None,
        name: str = "functional",
        embedding_dim: int | None = None,
        check_fn: Callable | None = None,
        batched=None,
    ) -> None:
        if not callable(energy_fn):
            fail("FunctionalModel", f"energy_fn must be callable; got {type(energy_fn).__name__}")
        if not isinstance(params, Mapping) or len(params) == 0:
            fail("FunctionalModel", "params must be a non-empty mapping of name -> Tensor; "
                                    f"got {type(params).__name__} of length {len(params) if hasattr(params, '__len__') else '?'}")
        for key, value in params.items():
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                fail("FunctionalModel", f"params[{key!r}] must be a floating-point Tensor; got {type(value).__name__}"
                                        + (f" of dtype {value.dtype}" if isinstance(value, torch.Tensor) else ""))
        dtypes = {v.dtype for v in params.values()}
        if len(dtypes) != 1:
            fail("FunctionalModel", f"params must share one dtype; got {sorted(map(str, dtypes))}")
        self.energy_fn = energy_fn
        self.embedding_fn = embedding_fn
        self.params = {k: v.detach() for k, v in params.items()}
        self.frozen = {k: v.detach() for k, v in (frozen or {}).items()}
        self.readout = tuple(readout) if readout is not None else None
        self.supported_numbers = frozenset(int(z) for z in supported_numbers) if supported_numbers is not None else None
        self.name = str(name)
        self.embedding_dim = None if embedding_dim is None else int(embedding_dim)
        self.check_fn = check_fn
        self.batched = batched
        first = next(iter(self.params.values()))
        self.dtype = first.dtype
        self.device = first.device

    # ---- parameter layout -------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Differentiated parameter names, in column order."""
        return list(self.params)

    @property
    def sizes(self) -> list[int]:
        """Number of scalars per differentiated parameter tensor."""
        return [v.numel() for v in self.params.values()]

    @property
    def n_params(self) -> int:
        """P, the number of Jacobian columns."""
        return int(sum(self.sizes))

    def column_offsets(self) -> np.ndarray:
        """(n_tensors + 1,) int64: tensor i owns columns ``[off[i], off[i+1])``."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    def all_params(self) -> dict[str, torch.Tensor]:
        """Differentiated and frozen tensors merged (what ``energy_fn`` receives)."""
        return {**self.frozen, **self.params}

    # ---- parameter selection ----------------------------------------------------------
    def select(self, spec: str | Sequence[str] | None = "all") -> "FunctionalModel":
        """A model differentiating only a subset of the parameters (the rest become frozen).

        Parameters
        ----------
        spec : "all", "readout", or sequence of str
            ``"all"``: every differentiated parameter; ``"readout"``: the model's readout
            patterns; a sequence: fnmatch patterns on parameter names (e.g. ``["mlp.*"]``).

        Returns
        -------
        FunctionalModel
            Shares tensors with ``self``; column order is ``self``'s order restricted.
        """
        if spec is None or (isinstance(spec, str) and spec == "all"):
            return self
        if isinstance(spec, str) and spec == "readout":
            if self.readout is None:
                fail("FunctionalModel.select", f"params='readout' needs readout patterns; "
                                               f"model {self.name!r} was built without readout=")
            patterns = self.readout
        elif isinstance(spec, str):
            fail("FunctionalModel.select", f"params must be 'all', 'readout' or a list of name patterns; got {spec!r}")
        else:
            patterns = tuple(str(p) for p in spec)
            if not patterns:
                fail("FunctionalModel.select", "params pattern list must be non-empty; got []")
        chosen = {k: v for k, v in self.params.items() if any(fnmatch.fnmatchcase(k, p) for p in patterns)}
        if not chosen:
            fail("FunctionalModel.select", f"params patterns {list(patterns)} match no parameter of "
                                           f"model {self.name!r} (names look like {self.names[:3]})")
        frozen = {**self.frozen, **{k: v for k, v in self.params.items() if k not in chosen}}
        sub = FunctionalModel(self.energy_fn, chosen, frozen=frozen, embedding_fn=self.embedding_fn,
                              readout=self.readout, supported_numbers=self.supported_numbers, name=self.name,
                              embedding_dim=self.embedding_dim, check_fn=self.check_fn, batched=self.batched)
        return sub

    # ---- evaluation -------------------------------------------------------------------
    def check(self, atoms, *, where: str = "FunctionalModel", arg: str = "atoms") -> None:
        """Raise ``InvalidArgumentError`` if ``atoms`` cannot be fed to this model (elements, finite
        positions, and the model's own ``check_fn``, e.g. atoms it cannot place in its graph)."""
        check_atoms(atoms, where=where, arg=arg, supported_numbers=self.supported_numbers)
        if self.check_fn is not None:
            self.check_fn(atoms, where, arg)

    def positions(self, atoms, *, requires_grad: bool = False) -> torch.Tensor:
        """(N, 3) positions tensor in the model's dtype and device."""
        pos = torch.as_tensor(np.asarray(atoms.get_positions()), dtype=self.dtype, device=self.device)
        return pos.requires_grad_(True) if requires_grad else pos

    def energy(self, atoms, params: Mapping[str, torch.Tensor] | None = None,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar total energy; ``params`` overrides differentiated tensors (others as stored)."""
        merged = self.all_params()
        if params is not None:
            merged.update(params)
        pos = self.positions(atoms) if positions is None else positions
        energy = self.energy_fn(merged, pos, atoms)
        if not isinstance(energy, torch.Tensor) or energy.numel() != 1:
            fail("FunctionalModel.energy", f"energy_fn must return a scalar Tensor; got "
                                           f"{type(energy).__name__} with shape {getattr(energy, 'shape', None)}")
        return energy.reshape(())

    def embedding(self, atoms) -> torch.Tensor:
        """(N, F) per-atom features from ``embedding_fn``."""
        if self.embedding_fn is None:
            fail("FunctionalModel.embedding", f"model {self.name!r} has no embedding_fn; "
                                              "the 'embedding' kernel needs one")
        with torch.no_grad():
            return self.embedding_fn(self.all_params(), self.positions(atoms), atoms)

    def fingerprint(self) -> str:
        """Hex digest of name, parameter names/shapes/values (cache keys)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.name.encode())
        for group in (self.params, self.frozen):
            h.update(b"|")
            for key, value in group.items():
                h.update(key.encode())
                h.update(str(tuple(value.shape)).encode())
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        return (f"FunctionalModel(name={self.name!r}, n_params={self.n_params}, tensors={len(self.params)}, "
                f"dtype={self.dtype}, device={self.device})")
