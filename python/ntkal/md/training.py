"""The training set a monitor's posteriors are built from: structures (with or without forces) or a feature store."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..blocks import Blocks
from ..check_pass import has_forces, reference_forces
from ..chunk_task import checked_call
from ..errors import fail
from ..feature_store import FeatureStore, is_store
from ..strata import composition_key
from ..structures import StructureSource

__all__ = ["TrainingSet", "load_training"]

# labels a feature store holds training features under: acquire's, then compute_features' default
STORE_LABELS = ("train", "structures")


@dataclass
class TrainingSet:
    """What the monitor knows of its training set.

    Attributes
    ----------
    blocks : Blocks
        Structure-level features (the featurizer's rows), host.
    structures : list of ase.Atoms or None
        None when the features came from a feature store.
    forces : list of ndarray (N_i, 3) or None
        Reference forces (eV/A) of every structure, or None when some structure has none.
    keys : list of str
        Composition stratum of each structure (``"*"`` for a feature store).
    elements : frozenset of int or None
        Atomic numbers present (None for a feature store).
    source : str
        Where it came from, for messages.
    """

    blocks: Blocks
    structures: list | None
    forces: list | None
    keys: list
    elements: frozenset | None
    source: str

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def n_atoms(self) -> np.ndarray | None:
        """Atoms per structure (None for a feature store)."""
        return None if self.structures is None else np.array([len(a) for a in self.structures], dtype=np.float64)


def _from_store(featurizer, train, where: str) -> TrainingSet:
    store = train if isinstance(train, FeatureStore) else FeatureStore(train, where=where, arg="train")
    if hasattr(featurizer, "fingerprint") and store.fingerprint != featurizer.fingerprint():
        fail(where, f"train {str(store.path)!r} holds features of another featurizer "
                    f"(fingerprint {store.fingerprint[:16]}..., this one "
                    f"{featurizer.fingerprint()[:16]}...); featurize the training set with this one")
    labels = [label for label in STORE_LABELS if label in store.labels()]
    if not labels:
        fail(where, f"train {str(store.path)!r} holds no {' or '.join(map(repr, STORE_LABELS))} "
                    f"features (labels: {store.labels()})")
    blocks = store.read(labels[0]).to_host()
    return TrainingSet(blocks, None, None, ["*"] * len(blocks), None, f"{store.path} ({labels[0]!r})")


def load_training(featurizer, train, *, where: str, want_forces: str, progress: bool = False) -> TrainingSet:
    """Check and featurize the training set.

    Parameters
    ----------
    featurizer : callable
        ``featurizer(list of Atoms) -> Blocks``; ``check(atoms, where=, arg=)`` is called on every
        structure first when present (unsupported elements are named there).
    train : list of ase.Atoms, extxyz / ASE db path, FeatureStore or its directory
    want_forces : {"on", "off", "auto"}
        Read reference forces: ``on`` (every structure must have them), ``auto`` (when all have them).
    """
    if train is None:
        fail(where, "train must be training structures (list, extxyz or ASE db) or a "
                    "feature store; got None")
    if is_store(train):
        if want_forces == "on":
            fail(where, "calibrate='on' needs training structures with forces; a feature "
                        "store holds features only")
        return _from_store(featurizer, train, where)
    src = train if isinstance(train, StructureSource) else StructureSource(train, where=where, arg="train")
    if len(src) == 0:
        fail(where, f"train must hold at least one structure; got none ({src.describe()})")
    structures = src.read()
    forces = []
    for i, atoms in enumerate(structures):
        if hasattr(featurizer, "check"):
            featurizer.check(atoms, where=where, arg=f"train[{i}]")
        if want_forces == "on" or (want_forces == "auto" and has_forces(atoms)):
            forces.append(reference_forces(atoms, where, f"train[{i}]"))
        else:
            forces.append(None)
    if any(f is None for f in forces):
        forces = None
    call = checked_call(featurizer)  # checked just above, one structure at a time
    blocks = call(structures, progress=progress) if _takes_progress(featurizer) else call(structures)
    if not isinstance(blocks, Blocks) or len(blocks) != len(structures):
        fail(where, f"featurizer must return ntkal.Blocks with one block per structure; got "
                    f"{type(blocks).__name__}")
    host = blocks.to_host()
    elements = frozenset(int(z) for atoms in structures for z in np.unique(atoms.numbers))
    return TrainingSet(host, structures, forces, [composition_key(a) for a in structures], elements, src.describe())


def _takes_progress(featurizer) -> bool:
    import inspect

    try:
        return "progress" in inspect.signature(featurizer.__call__).parameters
    except (TypeError, ValueError):
        return False
