"""Feature chunks on disk, so an interrupted screen loses no finished work.

Each finished chunk's features are written atomically (temp file + ``os.replace``) with a JSON
record, written last, of the featurizer fingerprint and the chunk's structure digest; a chunk
counts as present only if its record matches, and a damaged chunk is recomputed, never used.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .blocks import Blocks
from .errors import InvalidArgumentError
from .structures import structure_digest

__all__ = ["FeatureCache", "chunk_digest"]


class FeatureCache:
    """Feature chunks on disk, keyed by featurizer fingerprint, chunk range and structure digest.

    Files per chunk: ``{label}-{fp}-{start}-{stop}.rows.npy``, ``.offsets.npy`` and a ``.json``
    record written last; a chunk counts as present only if its record matches.
    """

    def __init__(self, path, fingerprint: str, config: dict | None = None):
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArgumentError(f"acquire: cache directory {str(self.path)!r} cannot be created: {exc}") from exc
        self.fingerprint = fingerprint
        manifest = self.path / f"featurizer-{fingerprint[:16]}.json"
        if config is not None and not manifest.exists():
            _write_atomic(manifest, json.dumps({"fingerprint": fingerprint, "config": config}, indent=1).encode())

    def _stem(self, label: str, start: int, stop: int) -> Path:
        return self.path / f"{label}-{self.fingerprint[:16]}-{start:09d}-{stop:09d}"

    def load(self, label: str, start: int, stop: int, digest: str) -> Blocks | None:
        stem = self._stem(label, start, stop)
        record = stem.with_suffix(".json")
        if not record.exists():
            return None
        try:
            meta = json.loads(record.read_text())
            if meta.get("fingerprint") != self.fingerprint or meta.get("structures") != digest:
                return None
            rows = np.load(f"{stem}.rows.npy")
            offsets = np.load(f"{stem}.offsets.npy")
            if offsets.shape != (stop - start + 1,) or rows.shape[0] != offsets[-1]:
                return None
            return Blocks(rows, offsets)
        except (OSError, ValueError, json.JSONDecodeError):
            return None  # a damaged chunk is recomputed

    def save(self, label: str, start: int, stop: int, digest: str, blocks: Blocks) -> None:
        stem = self._stem(label, start, stop)
        _save_npy_atomic(Path(f"{stem}.rows.npy"), blocks.rows)
        _save_npy_atomic(Path(f"{stem}.offsets.npy"), blocks.offsets)
        meta = {"fingerprint": self.fingerprint, "structures": digest, "start": start, "stop": stop,
                "n_rows": int(blocks.n_rows), "dim": int(blocks.dim)}
        _write_atomic(stem.with_suffix(".json"), json.dumps(meta).encode())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def chunk_digest(structures) -> str:
    """Digest of a list of structures (numbers, positions, cell, pbc of each, in order)."""
    h = hashlib.blake2b(digest_size=16)
    for atoms in structures:
        h.update(structure_digest(atoms))
    return h.hexdigest()
