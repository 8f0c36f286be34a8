"""One stored feature chunk on disk: its checksums, and reading it back with every check.

A chunk directory holds the zarr groups ``rows`` and ``offsets`` and a ``zarr.json`` whose attributes
record the structures digest, the range, the shapes, what was skipped, the crc32 of every other file
of the chunk (``files_crc32``: zarr alone reads a missing data file as fill values) and the crc32 of
the attributes themselves (``attributes_crc32``: an edited ``skipped`` or digest fails the read like
a flipped data byte does). Checks raise :class:`ChunkDamaged` (the reason) or
:class:`OtherStructures`; :mod:`ntkal.feature_store` decides what a failure means for its caller.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from .blocks import Blocks

__all__ = ["ChunkDamaged", "OtherStructures", "zarr_module", "crc32c_codecs", "json_crc", "add_checksums",
           "checked_chunk", "checked_header"]


class ChunkDamaged(Exception):
    """The chunk fails a check; the message says which."""


class OtherStructures(Exception):
    """The chunk is whole but was computed from other structures than the caller's digest."""


def zarr_module():
    try:
        import zarr
    except ImportError as exc:  # pragma: no cover - zarr is a core dependency
        raise ImportError("ntkal's feature store needs zarr>=3 (pip install 'zarr>=3')") from exc
    return zarr


def crc32c_codecs():
    from zarr.codecs import Crc32cCodec

    return [Crc32cCodec()]  # a checksum on every zarr chunk: a flipped or cut byte fails the read


def json_crc(value) -> int:
    """crc32 of a JSON value in one canonical spelling (sorted keys, no spaces)."""
    return zlib.crc32(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def _attributes_crc(attrs: dict) -> int:
    return json_crc({k: v for k, v in attrs.items() if k != "attributes_crc32"})


def add_checksums(path: Path) -> None:
    """Record in the chunk's zarr.json the crc32 of every other file of the chunk, then of the attributes."""
    sums = {str(f.relative_to(path)): zlib.crc32(f.read_bytes())
            for f in sorted(path.rglob("*")) if f.is_file() and f != path / "zarr.json"}
    meta_path = path / "zarr.json"
    meta = json.loads(meta_path.read_text())
    attrs = meta.setdefault("attributes", {})
    attrs["files_crc32"] = sums
    attrs["attributes_crc32"] = _attributes_crc(attrs)
    meta_path.write_text(json.dumps(meta))


def _checked_attributes(path: Path, start: int, stop: int, digest: str | None) -> dict:
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError) as exc:
        raise ChunkDamaged(f"its zarr.json cannot be read: {type(exc).__name__}: {exc}") from exc
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if not isinstance(attrs, dict) or "attributes_crc32" not in attrs:
        raise ChunkDamaged("its attributes carry no checksum (a chunk written by an ntkal before attributes were "
                           "checksummed)")
    if _attributes_crc(attrs) != attrs["attributes_crc32"]:
        raise ChunkDamaged("its attributes (zarr.json) fail their crc32")
    if attrs.get("start") != start or attrs.get("stop") != stop:
        raise ChunkDamaged(f"its attributes name structures {attrs.get('start')}..{attrs.get('stop')}")
    if not isinstance(attrs.get("files_crc32"), dict) or not attrs["files_crc32"]:
        raise ChunkDamaged("its attributes hold no file checksums")
    if digest is not None and attrs.get("structures") != digest:
        raise OtherStructures()
    return attrs


def _verify_files(path: Path, sums: dict, read=lambda name: True) -> None:
    """Every recorded file present; the crc32 of those ``read`` selects."""
    for name, crc in sums.items():
        f = path / name
        if not f.is_file():
            raise ChunkDamaged(f"its file {name} is missing")
        if read(name) and zlib.crc32(f.read_bytes()) != crc:
            raise ChunkDamaged(f"its file {name} fails its crc32")


def _checked_offsets(group, attrs: dict, start: int, stop: int) -> np.ndarray:
    offsets = np.asarray(group["offsets"][...])
    n_rows = int(attrs["n_rows"])
    if (offsets.dtype != np.int64 or offsets.shape != (stop - start + 1,) or offsets[0] != 0
            or offsets[-1] != n_rows or np.any(np.diff(offsets) < 0)):
        raise ChunkDamaged("its offsets do not match its attributes")
    return offsets


def checked_header(path: Path, start: int, stop: int, digest: str | None) -> tuple[dict, np.ndarray]:
    """The chunk's attributes and offsets, checked; its data files checked present (not yet read)."""
    try:
        attrs = _checked_attributes(path, start, stop, digest)
        _verify_files(path, attrs["files_crc32"], read=lambda name: not name.startswith("rows/"))
        return attrs, _checked_offsets(zarr_module().open_group(str(path), mode="r"), attrs, start, stop)
    except (ChunkDamaged, OtherStructures):
        raise
    except Exception as exc:  # noqa: BLE001 - anything else that fails to read back is damage too
        raise ChunkDamaged(f"it cannot be read: {type(exc).__name__}: {exc}") from exc


def checked_chunk(path: Path, start: int, stop: int, digest: str | None) -> tuple[Blocks, dict]:
    """The chunk's blocks and attributes after every check: attributes (crc32, range, digest), the crc32
    of every file, shapes, offsets and finite rows."""
    try:
        attrs = _checked_attributes(path, start, stop, digest)
        _verify_files(path, attrs["files_crc32"])
        group = zarr_module().open_group(str(path), mode="r")
        rows = np.asarray(group["rows"][...])
        if rows.dtype != np.float32 or rows.shape != (int(attrs["n_rows"]), int(attrs["dim"])):
            raise ChunkDamaged(f"its rows have shape {rows.shape} {rows.dtype}, its attributes say "
                               f"({attrs['n_rows']}, {attrs['dim']}) float32")
        offsets = _checked_offsets(group, attrs, start, stop)
        if not np.all(np.isfinite(rows)):
            raise ChunkDamaged("its rows hold non-finite values")
        return Blocks(rows, offsets), attrs
    except (ChunkDamaged, OtherStructures):
        raise
    except Exception as exc:  # noqa: BLE001 - anything else that fails to read back is damage too
        raise ChunkDamaged(f"it cannot be read: {type(exc).__name__}: {exc}") from exc
