"""A chunked on-disk feature store (zarr v3), so a screen of hours loses no finished work.

Layout under the store directory::

    zarr.json                          root group: format version, featurizer fingerprint and config
    <label>/zarr.json                  the label's record, written when its last chunk is finished: its number
                                       of structures and the range and structures digest of every chunk
    <label>/c000000000-000000064/      one zarr group per finished feature chunk (structures start..stop)
        rows/                          float32 (n_rows, dim), one zarr chunk, crc32c-checked
        offsets/                       int64 (n + 1,)
        zarr.json                      attributes: structure digest, n_rows, dim, skipped, and the crc32 of
                                       every other file of the chunk and of these attributes

A chunk is written under a temporary name and renamed into place when complete, so it either
exists whole or not at all: a killed worker or client leaves no half chunk that counts, and two
screens writing the same chunk at once both end with one complete copy (see ntkal/_store_chunk.py
for the checks).

Two kinds of reading. The writers (``acquire``, ``compute_features``: :meth:`FeatureStore.load`) hold
the structures: a chunk that fails any check is moved aside and recomputed, never used. The readers
(:meth:`~FeatureStore.read`, :meth:`~FeatureStore.iter_blocks`, :meth:`~FeatureStore.take`,
:meth:`~FeatureStore.to_dask`, :func:`ntkal.screen` of a store) cannot recompute: they read a label
through its record only, and a gap, a chunk of other structures or a failed check raises
:class:`FeatureStoreError` naming the label, the structures and the check. Readers never change the
store (it may be read-only, or being written by another screen). A label written by an ntkal without
records, or by a run that has not finished, has no record: readers refuse it, and the writers
recompute its chunks, whose attributes carry no checksum.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import NoReturn

import numpy as np

from ._device import to_numpy
from ._store_chunk import (ChunkDamaged, OtherStructures, add_checksums, checked_chunk, checked_header,
                           crc32c_codecs, json_crc, zarr_module)
from .blocks import Blocks
from .errors import InvalidArgumentError, fail

__all__ = ["FeatureStore", "FeatureStoreError", "chunk_digest", "STORE_FORMAT"]

STORE_FORMAT = 1

_REMEDY = ("recompute them with the writer that made this store (compute_features or acquire, with this store "
           "and the same structures): it keeps every good chunk and recomputes only the others")


def is_store(value) -> bool:
    """Whether ``value`` is a feature store: a :class:`FeatureStore` or the path of a store's directory."""
    return isinstance(value, FeatureStore) or (isinstance(value, (str, os.PathLike))
                                               and os.path.isfile(os.path.join(value, "zarr.json")))


class FeatureStoreError(InvalidArgumentError):
    """A stored label cannot be read whole: a gap, a chunk of other structures, or a failed check.

    The message names the store, the label, the structures concerned and what failed, and how to
    recompute them. A ``ValueError`` (an :class:`ntkal.InvalidArgumentError`)."""


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
                fail(where, f"{arg} {str(self.path)!r} is not an ntkal feature store "
                            "(no zarr.json)")
            self.fingerprint = self._attrs()["fingerprint"]
            return
        self.fingerprint = fingerprint
        if root.is_file():
            found = self._attrs().get("fingerprint")
            if found != fingerprint:
                fail(where, f"{arg} {str(self.path)!r} holds features of another featurizer (fingerprint "
                            f"{str(found)[:16]}..., this one {fingerprint[:16]}...); use a new directory for these features")
            if not os.access(self.path, os.W_OK):
                fail(where, f"{arg} {str(self.path)!r} is not writable")
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            if any(p.name != ".gitignore" for p in self.path.iterdir()):
                fail(where, f"{arg} {str(self.path)!r} exists and is not an ntkal feature store (it holds other "
                            "files and no zarr.json); give a new or empty directory")
            # the root record is written whole under a temporary name, then renamed into place
            meta = {"zarr_format": 3, "node_type": "group",
                    "attributes": {"ntkal_feature_store": STORE_FORMAT, "fingerprint": fingerprint,
                                   "config": json.loads(json.dumps(config)) if config is not None else None}}
            tmp = self.path / f".zarr.json.tmp-{uuid.uuid4().hex}"
            tmp.write_text(json.dumps(meta, indent=1))
            os.replace(tmp, root)
        except OSError as exc:
            fail(where, f"{arg} {str(self.path)!r} cannot be written: {exc}", cause=exc)

    def _attrs(self) -> dict:
        try:
            meta = json.loads((self.path / "zarr.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            fail(self.where, f"{self.arg} {str(self.path)!r}: unreadable store root: {exc}", cause=exc)
        attrs = meta.get("attributes", {})
        if attrs.get("ntkal_feature_store") != STORE_FORMAT:
            fail(self.where, f"{self.arg} {str(self.path)!r} is not an ntkal feature store "
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
        or fails a check (it is then moved aside, to be recomputed). For the writers, which can
        recompute; readers use :meth:`read_chunk`."""
        found = self.load_chunk(label, start, stop, digest)
        return None if found is None else found[0]

    def load_chunk(self, label: str, start: int, stop: int, digest: str | None = None) -> tuple[Blocks, dict] | None:
        """As :meth:`load`, with the chunk's checked attributes: ``(blocks, attributes)`` or None."""
        path = self.path / label / _chunk_name(start, stop)
        if not (path / "zarr.json").is_file():
            return None
        try:
            return checked_chunk(path, start, stop, digest)
        except OtherStructures:
            return None  # other structures under the same range: not ours, not damaged
        except ChunkDamaged:
            self._discard(path)
            return None

    def read_chunk(self, label: str, start: int, stop: int, digest: str | None = None, *,
                   method: str = "read_chunk") -> tuple[Blocks, dict]:
        """``(blocks, attributes)`` of one chunk after every check; a missing chunk, one of other
        structures (``digest``) or a failed check raises :class:`FeatureStoreError`. Never changes the store."""
        path = self.path / label / _chunk_name(start, stop)
        if not (path / "zarr.json").is_file():
            self._fail(method, label, [(start, stop)], "missing (the chunk was removed, moved aside as damaged, or "
                       "replaced by a run over other structures)")
        try:
            return checked_chunk(path, start, stop, digest)
        except OtherStructures:
            self._fail(method, label, [(start, stop)], "the chunk holds features of other structures than the "
                       "label's record (a later run over other structures has not finished)")
        except ChunkDamaged as exc:
            self._fail(method, label, [(start, stop)], f"the chunk fails a check: {exc}")

    def meta(self, label: str, start: int, stop: int) -> dict:
        """The chunk's recorded attributes (structures digest, n_rows, dim, skipped), checked as in
        :meth:`read_chunk`."""
        return self.read_chunk(label, start, stop, method="meta")[1]

    def save(self, label: str, start: int, stop: int, digest: str, blocks: Blocks, *, skipped=None) -> None:
        """Write the chunk under a temporary name, then rename it into place (all or nothing)."""
        zarr = zarr_module()
        rows = np.ascontiguousarray(to_numpy(blocks.rows), dtype=np.float32)  # device rows come to the host
        offsets = np.ascontiguousarray(to_numpy(blocks.offsets), dtype=np.int64)
        parent = self.path / label
        final = parent / _chunk_name(start, stop)
        tmp = parent / f".tmp-{_chunk_name(start, stop)}-{uuid.uuid4().hex}"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            r = group.create_array("rows", shape=rows.shape, dtype="float32",
                                   chunks=(max(1, rows.shape[0]), max(1, rows.shape[1])), compressors=crc32c_codecs())
            r[...] = rows
            o = group.create_array("offsets", shape=offsets.shape, dtype="int64", chunks=offsets.shape,
                                   compressors=crc32c_codecs())
            o[...] = offsets
            group.attrs.update({"structures": digest, "n_rows": int(rows.shape[0]), "dim": int(rows.shape[1]),
                                "start": int(start), "stop": int(stop), "skipped": list(skipped or [])})
            add_checksums(tmp)
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
            fail(self.where, f"{self.arg} {str(self.path)!r}: cannot write a feature chunk: "
                             f"{exc}", cause=exc)

    def _discard(self, path: Path) -> None:
        aside = path.with_name(f".bad-{path.name}-{uuid.uuid4().hex}")
        try:
            os.rename(path, aside)
        except OSError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    # ---- a label's record ----------------------------------------------------------------
    def record_label(self, label: str, chunks) -> None:
        """Record that ``label`` is complete: ``chunks``, ``[(start, stop, structures digest)]``, partition its
        structures 0..n. The writers call it when the last chunk of a label is finished; readers read a
        label through this record only."""
        chunks = sorted((int(a), int(b), str(d)) for a, b, d in chunks)
        n = 0
        for a, b, _ in chunks:
            if a != n or b <= a:
                fail(self.where, f"the chunks of {label!r} must partition its structures "
                                 f"from 0; got {a}..{b} after {n}")
            n = b
        record = {"n_structures": n, "chunks": [list(c) for c in chunks]}
        meta = {"zarr_format": 3, "node_type": "group",
                "attributes": {"ntkal_label": record, "ntkal_label_crc32": json_crc(record)}}
        tmp = self.path / label / f".zarr.json.tmp-{uuid.uuid4().hex}"
        try:
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, self.path / label / "zarr.json")  # whole or not at all; two equal writers agree
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            fail(self.where, f"{self.arg} {str(self.path)!r}: cannot record {label!r}: "
                             f"{exc}", cause=exc)

    def extent(self, label: str) -> int:
        """Number of structures of ``label``, as recorded when it was complete."""
        return self.recorded_chunks(label, check_present=False, method="extent")[-1][1]

    def recorded_chunks(self, label: str, *, check_present: bool = True, method: str = "recorded_chunks") -> list:
        """``[(start, stop, digest)]`` of ``label`` as recorded when it was complete; with ``check_present``
        every chunk is checked to exist (a gap raises :class:`FeatureStoreError` before any data is read)."""
        where = self._where(method)
        path = self.path / label / "zarr.json"
        if not path.is_file():
            if not (self.path / label).is_dir():
                fail(where, f"{self.arg} {str(self.path)!r} holds no {label!r} features "
                            f"(labels: {self.labels()})", error=FeatureStoreError)
            fail(where, f"{self.arg} {str(self.path)!r}: {label!r} has no record of its extent ("
                        f"{len(self.chunks(label))} chunks found): the run writing it has not finished, or an ntkal that "
                        "kept no such records wrote it; finish it by running the writer that made this store again "
                        "(compute_features or acquire, with this store and the same structures)", error=FeatureStoreError)
        try:
            attrs = json.loads(path.read_text())["attributes"]
            record = attrs["ntkal_label"]
            if json_crc(record) != attrs["ntkal_label_crc32"]:
                raise ValueError("crc32 mismatch")
            chunks = [(int(a), int(b), str(d)) for a, b, d in record["chunks"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            fail(where, f"{self.arg} {str(self.path)!r}: the record of {label!r} "
                        f"({label}/zarr.json) fails its check ({exc}); {_REMEDY}", cause=exc, error=FeatureStoreError)
        if check_present:
            gaps = [(a, b) for a, b, _ in chunks if not (self.path / label / _chunk_name(a, b) / "zarr.json").is_file()]
            if gaps:
                self._fail(method, label, gaps, "missing (removed, moved aside as damaged, or replaced by a run over "
                           "other structures)")
        return chunks

    def _where(self, method: str) -> str:
        return f"FeatureStore.{method}" if self.where == "FeatureStore" else self.where

    def _fail(self, method: str, label: str, ranges: list, problem: str) -> NoReturn:
        ranges = _merged(ranges)
        shown = ", ".join(f"{a}..{b}" for a, b in ranges[:10]) + (", ..." if len(ranges) > 10 else "")
        fail(self._where(method), f"{self.arg} {str(self.path)!r}: {label!r} structures {shown}: "
                                  f"{problem}; {_REMEDY}", error=FeatureStoreError)

    # ---- reading a whole label ------------------------------------------------------------
    def iter_blocks(self, label: str):
        """``(start, Blocks)`` of every chunk of ``label``, in order, one chunk in memory at a time.
        A gap or a failed check raises :class:`FeatureStoreError` (gaps before the first chunk is read)."""
        return self._checked_blocks(label, "iter_blocks")

    def read(self, label: str) -> Blocks:
        """All blocks of ``label`` (for stores that fit in memory; see :meth:`iter_blocks`), checked as there."""
        return Blocks.concatenate([b for _, b in self._checked_blocks(label, "read")])

    def _checked_blocks(self, label: str, method: str):
        chunks = self.recorded_chunks(label, method=method)
        dim = None
        for a, b, digest in chunks:
            blocks, _ = self.read_chunk(label, a, b, digest, method=method)
            if dim is not None and blocks.dim != dim:
                self._fail(method, label, [(a, b)], f"the chunk has width {blocks.dim}, the label {dim}")
            dim = blocks.dim
            yield a, blocks

    def take(self, label: str, indices) -> Blocks:
        """Blocks of the structures ``indices`` of ``label`` (in that order), reading only the chunks
        that hold them."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        chunks = self.recorded_chunks(label, check_present=False, method="take")
        n = chunks[-1][1]
        if indices.size == 0 or indices.min() < 0 or indices.max() >= n:
            fail(self._where('take'), f"indices must be one or more of {label!r}'s "
                                      f"structures 0..{n - 1}; got {indices.tolist()[:5]}")
        starts = np.array([a for a, _, _ in chunks], dtype=np.int64)
        pos = np.searchsorted(starts, indices, side="right") - 1
        parts = {int(p): self.read_chunk(label, *chunks[p], method="take")[0] for p in np.unique(pos)}
        return Blocks.from_list([parts[int(p)][int(i - starts[p])] for i, p in zip(indices, pos)])

    def to_dask(self, label: str):
        """``(rows, offsets)``: the rows of ``label`` as a lazy dask array (one dask chunk per feature
        chunk) and the global offsets (read now: 8 bytes per structure).

        Checked now, without reading rows: the label's record, every chunk present with checksummed
        attributes of the recorded structures, every file it lists present, its offsets. Each chunk's rows
        are checked (the crc32 of every file, shapes, finite values) when dask reads them, so a
        computation over the array never sees an unchecked row; a failure raises :class:`FeatureStoreError`."""
        import dask
        import dask.array as da

        chunks = self.recorded_chunks(label, method="to_dask")
        rows, offsets, base, dim = [], [np.zeros(1, np.int64)], 0, None
        for a, b, digest in chunks:
            try:
                attrs, off = checked_header(self.path / label / _chunk_name(a, b), a, b, digest)
            except OtherStructures:
                self._fail("to_dask", label, [(a, b)], "the chunk holds features of other structures than the "
                           "label's record (a later run over other structures has not finished)")
            except ChunkDamaged as exc:
                self._fail("to_dask", label, [(a, b)], f"the chunk fails a check: {exc}")
            if dim is not None and int(attrs["dim"]) != dim:
                self._fail("to_dask", label, [(a, b)], f"the chunk has width {attrs['dim']}, the label {dim}")
            dim = int(attrs["dim"])
            shape = (int(attrs["n_rows"]), dim)
            part = dask.delayed(_checked_rows, pure=True)(str(self.path), self.where, self.arg, label, a, b, digest,
                                                          shape)
            rows.append(da.from_delayed(part, shape=shape, dtype=np.float32))
            offsets.append(off[1:] + base)
            base += shape[0]
        return da.concatenate(rows, axis=0), np.concatenate(offsets)


def _checked_rows(path: str, where: str, arg: str, label: str, start: int, stop: int, digest: str, shape) -> np.ndarray:
    """One chunk's rows for to_dask, after every check of :meth:`FeatureStore.read_chunk` (runs where dask runs)."""
    store = FeatureStore(path, where=where, arg=arg)
    blocks, _ = store.read_chunk(label, start, stop, digest, method="to_dask")
    if blocks.rows.shape != tuple(shape):
        store._fail("to_dask", label, [(start, stop)], f"the chunk's rows changed shape to {blocks.rows.shape} after "
                    f"to_dask read its record {tuple(shape)}")
    return blocks.rows


def _merged(ranges: list) -> list:
    """Adjacent ranges joined: [(0, 8), (8, 16), (24, 32)] -> [(0, 16), (24, 32)]."""
    out = []
    for a, b in sorted(ranges):
        if out and out[-1][1] == a:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out
