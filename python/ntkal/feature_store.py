"""A chunked on-disk feature store (zarr v3), so a screen of hours loses no finished work.

Layout under the store directory::

    zarr.json                          root group: format version, featurizer fingerprint and config
    <label>/c000000000-000000064/      one zarr group per finished feature chunk (structures start..stop)
        rows/                          float32 (n_rows, dim), one zarr chunk, crc32c-checked
        offsets/                       int64 (n + 1,)
        zarr.json                      attributes: structure digest, n_rows, dim, skipped

A chunk is written under a temporary name and renamed into place when complete, so it either
exists whole or not at all: a killed worker or client leaves no half chunk that counts, and two
screens writing the same chunk at once both end with one complete copy. Reads verify the digest
of the structures the chunk was computed from, the shapes, and the crc32c of every zarr chunk; a
chunk that fails any check is moved aside and recomputed, never used.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from ._device import to_numpy
from .blocks import Blocks
from .errors import InvalidArgumentError

__all__ = ["FeatureStore", "chunk_digest", "STORE_FORMAT"]

STORE_FORMAT = 1


def _zarr():
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - zarr is a core dependency
        raise ImportError("ntkal's feature store needs zarr>=3 (pip install 'zarr>=3')") from exc
    return zarr


def _crc32c():
    from zarr.codecs import Crc32cCodec

    return [Crc32cCodec()]  # a checksum on every zarr chunk: a flipped or cut byte fails the read


def chunk_digest(structures) -> str:
    """Digest of a list of structures (numbers, positions, cell, pbc of each, in order)."""
    import hashlib

    from .structures import structure_digest

    h = hashlib.blake2b(digest_size=16)
    for atoms in structures:
        h.update(structure_digest(atoms))
    return h.hexdigest()


def _chunk_name(start: int, stop: int) -> str:
    return f"c{start:09d}-{stop:09d}"


class FeatureStore:
    """Feature chunks of one featurizer on disk.

    Parameters
    ----------
    path : str or os.PathLike
        Store directory (created if missing).
    fingerprint : str, optional
        The featurizer's fingerprint. A new store records it; an existing store written by another
        featurizer is refused. None opens an existing store for reading whatever wrote it.
    config : dict, optional
        The featurizer's config (JSON), recorded for people reading the store.
    where, arg : str
        Function and argument named in errors.
    """

    def __init__(self, path, fingerprint: str | None = None, config: dict | None = None, *,
                 where: str = "FeatureStore", arg: str = "path"):
        self.path = Path(path)
        self.where, self.arg = where, arg
        root = self.path / "zarr.json"
        if fingerprint is None:
            if not root.is_file():
                raise InvalidArgumentError(f"{where}: {arg} {str(self.path)!r} is not an ntkal feature store "
                                           "(no zarr.json)")
            self.fingerprint = self._attrs()["fingerprint"]
            return
        self.fingerprint = fingerprint
        if root.is_file():
            found = self._attrs().get("fingerprint")
            if found != fingerprint:
                raise InvalidArgumentError(
                    f"{where}: {arg} {str(self.path)!r} holds features of another featurizer (fingerprint "
                    f"{str(found)[:16]}..., this one {fingerprint[:16]}...); use a new directory for these features")
            if not os.access(self.path, os.W_OK):
                raise InvalidArgumentError(f"{where}: {arg} {str(self.path)!r} is not writable")
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if any(p.name != ".gitignore" for p in self.path.iterdir()):
                raise InvalidArgumentError(
                    f"{where}: {arg} {str(self.path)!r} exists and is not an ntkal feature store (it holds other "
                    "files and no zarr.json); give a new or empty directory")
            # the root record is written whole under a temporary name, then renamed into place
            meta = {"zarr_format": 3, "node_type": "group",
                    "attributes": {"ntkal_feature_store": STORE_FORMAT, "fingerprint": fingerprint,
                                   "config": json.loads(json.dumps(config)) if config is not None else None}}
            tmp = self.path / f".zarr.json.tmp-{uuid.uuid4().hex}"
            tmp.write_text(json.dumps(meta, indent=1))
            os.replace(tmp, root)
        except OSError as exc:
            raise InvalidArgumentError(f"{where}: {arg} {str(self.path)!r} cannot be written: {exc}") from exc

    def _attrs(self) -> dict:
        try:
            meta = json.loads((self.path / "zarr.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidArgumentError(f"{self.where}: {self.arg} {str(self.path)!r}: unreadable store root: {exc}") from exc
        attrs = meta.get("attributes", {})
        if attrs.get("ntkal_feature_store") != STORE_FORMAT:
            raise InvalidArgumentError(f"{self.where}: {self.arg} {str(self.path)!r} is not an ntkal feature store "
                                       f"(format {attrs.get('ntkal_feature_store')!r}, expected {STORE_FORMAT})")
        return attrs

    @property
    def config(self) -> dict | None:
        """The featurizer config recorded when the store was created."""
        return self._attrs().get("config")

    def __repr__(self) -> str:
        labels = {label: len(self.chunks(label)) for label in self.labels()}
        return f"FeatureStore({str(self.path)!r}, fingerprint={self.fingerprint[:16]}..., chunks={labels})"

    # ---- chunks -------------------------------------------------------------------------
    def labels(self) -> list:
        """Labels with at least one chunk (e.g. "train", "pool")."""
        return sorted(p.name for p in self.path.iterdir() if p.is_dir() and not p.name.startswith("."))

    def chunks(self, label: str) -> list:
        """``[(start, stop)]`` of the complete chunks of ``label``, in order."""
        d = self.path / label
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            if p.name.startswith("c") and "-" in p.name and (p / "zarr.json").is_file():
                a, b = p.name[1:].split("-", 1)
                if a.isdigit() and b.isdigit():
                    out.append((int(a), int(b)))
        return sorted(out)

    def load(self, label: str, start: int, stop: int, digest: str | None = None) -> Blocks | None:
        """The chunk's blocks, or None when it is missing, was computed from other structures (digest),
        or fails a check (it is then moved aside, to be recomputed)."""
        path = self.path / label / _chunk_name(start, stop)
        if not (path / "zarr.json").is_file():
            return None
        try:
            zarr = _zarr()
            group = zarr.open_group(str(path), mode="r")
            attrs = dict(group.attrs)
            if digest is not None and attrs.get("structures") != digest:
                return None  # other structures under the same range: not ours, not damaged
            _verify_checksums(path, attrs.get("files_crc32"))
            rows = np.asarray(group["rows"][...])
            offsets = np.asarray(group["offsets"][...])
            n_rows, dim = int(attrs["n_rows"]), int(attrs["dim"])
            if (rows.dtype != np.float32 or rows.shape != (n_rows, dim) or offsets.shape != (stop - start + 1,)
                    or offsets[0] != 0 or offsets[-1] != n_rows or np.any(np.diff(offsets) < 0)
                    or not np.all(np.isfinite(rows))):
                raise ValueError("shape, offsets or values do not match the chunk's record")
            return Blocks(rows, offsets)
        except Exception:  # noqa: BLE001 - any failure to read back means: damaged, recompute
            self._discard(path)
            return None

    def meta(self, label: str, start: int, stop: int) -> dict:
        """The chunk's recorded attributes (structures digest, n_rows, dim, skipped)."""
        return dict(_zarr().open_group(str(self.path / label / _chunk_name(start, stop)), mode="r").attrs)

    def save(self, label: str, start: int, stop: int, digest: str, blocks: Blocks, *, skipped=None) -> None:
        """Write the chunk under a temporary name, then rename it into place (all or nothing)."""
        zarr = _zarr()
        rows = np.ascontiguousarray(to_numpy(blocks.rows), dtype=np.float32)  # device rows come to the host
        offsets = np.ascontiguousarray(to_numpy(blocks.offsets), dtype=np.int64)
        parent = self.path / label
        final = parent / _chunk_name(start, stop)
        tmp = parent / f".tmp-{_chunk_name(start, stop)}-{uuid.uuid4().hex}"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            r = group.create_array("rows", shape=rows.shape, dtype="float32",
                                   chunks=(max(1, rows.shape[0]), max(1, rows.shape[1])), compressors=_crc32c())
            r[...] = rows
            o = group.create_array("offsets", shape=offsets.shape, dtype="int64", chunks=offsets.shape,
                                   compressors=_crc32c())
            o[...] = offsets
            group.attrs.update({"structures": digest, "n_rows": int(rows.shape[0]), "dim": int(rows.shape[1]),
                                "start": int(start), "stop": int(stop), "skipped": list(skipped or [])})
            _add_checksums(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if (final / "zarr.json").is_file() and self.load(label, start, stop, digest) is not None:
                    shutil.rmtree(tmp, ignore_errors=True)  # another screen finished the same chunk first
                    return
                self._discard(final)  # computed from other structures: replaced
                os.rename(tmp, final)
            # chunks of other ranges over the same structures are stale (e.g. a training file that grew
            # since): a label's chunks stay a partition of its structures
            for a, b in self.chunks(label):
                if (a, b) != (start, stop) and a < stop and start < b:
                    self._discard(parent / _chunk_name(a, b))
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise InvalidArgumentError(f"{self.where}: {self.arg} {str(self.path)!r}: cannot write a feature chunk: "
                                       f"{exc}") from exc

    def _discard(self, path: Path) -> None:
        aside = path.with_name(f".bad-{path.name}-{uuid.uuid4().hex}")
        try:
            os.rename(path, aside)
        except OSError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    # ---- reading a whole label ------------------------------------------------------------
    def iter_blocks(self, label: str):
        """``(start, Blocks)`` of every complete chunk of ``label``, in order, one chunk in memory at a time."""
        for start, stop in self.chunks(label):
            blocks = self.load(label, start, stop)
            if blocks is None:
                raise InvalidArgumentError(f"{self.where}: {label} chunk {start}..{stop} of {str(self.path)!r} "
                                           "failed its checks and was discarded; rerun to recompute it")
            yield start, blocks

    def take(self, label: str, indices) -> Blocks:
        """Blocks of the structures ``indices`` of ``label`` (in that order), reading only the chunks
        that hold them."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        ranges = self.chunks(label)
        starts = np.array([a for a, _ in ranges], dtype=np.int64)
        parts = {}
        for pos in np.unique(np.searchsorted(starts, indices, side="right") - 1):
            if pos < 0:
                raise InvalidArgumentError(f"{self.where}: {label} structures {indices.tolist()[:5]} are not in the store")
            a, b = ranges[pos]
            blocks = self.load(label, a, b)
            if blocks is None:
                raise InvalidArgumentError(f"{self.where}: {label} chunk {a}..{b} failed its checks; rerun to recompute it")
            parts[a] = (b, blocks)
        out = []
        for i in indices:
            a = int(starts[np.searchsorted(starts, i, side="right") - 1])
            b, blocks = parts[a]
            if i >= b:
                raise InvalidArgumentError(f"{self.where}: {label} structure {int(i)} is not in the store")
            out.append(blocks[int(i - a)])
        return Blocks.from_list(out)

    def read(self, label: str) -> Blocks:
        """All blocks of ``label`` (for stores that fit in memory; see :meth:`iter_blocks`)."""
        parts = [b for _, b in self.iter_blocks(label)]
        if not parts:
            raise InvalidArgumentError(f"{self.where}: {str(self.path)!r} holds no {label!r} features")
        return Blocks.concatenate(parts)

    def to_dask(self, label: str):
        """``(rows, offsets)``: the rows of ``label`` as a lazy dask array (one dask chunk per feature
        chunk) and the global offsets (read now: 8 bytes per structure)."""
        import dask.array as da

        zarr = _zarr()
        rows, offsets, base = [], [np.zeros(1, np.int64)], 0
        for start, stop in self.chunks(label):
            group = zarr.open_group(str(self.path / label / _chunk_name(start, stop)), mode="r")
            rows.append(da.from_zarr(group["rows"]))
            off = np.asarray(group["offsets"][...])
            offsets.append(off[1:] + base)
            base += int(off[-1])
        if not rows:
            raise InvalidArgumentError(f"{self.where}: {str(self.path)!r} holds no {label!r} features")
        return da.concatenate(rows, axis=0), np.concatenate(offsets)


def _add_checksums(path: Path) -> None:
    """crc32 of every file of the chunk, recorded in the chunk's zarr.json attributes: zarr reads a
    missing data file as fill values, so presence and content of each file are checked on load."""
    import zlib

    sums = {str(f.relative_to(path)): zlib.crc32(f.read_bytes())
            for f in sorted(path.rglob("*")) if f.is_file() and f != path / "zarr.json"}
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta.setdefault("attributes", {})["files_crc32"] = sums
    meta_path.write_text(json.dumps(meta))


def _verify_checksums(path: Path, sums) -> None:
    import zlib

    if not isinstance(sums, dict) or not sums:
        raise ValueError("no checksum record")
    for name, crc in sums.items():
        if zlib.crc32((path / name).read_bytes()) != crc:
            raise ValueError(f"checksum mismatch in {name}")
