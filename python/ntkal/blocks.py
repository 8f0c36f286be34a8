"""Ragged feature blocks: structure i owns rows[offsets[i]:offsets[i+1]]."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ._device import is_device_array, to_numpy
from ._validation import as_offsets, as_rows
from .errors import fail


def _device_rows(rows, where: str, name: str):
    """A CUDA array (PyTorch or CuPy) kept where it is; shape and dtype checked here, finiteness by
    the operation that reads it."""
    shape = tuple(int(s) for s in getattr(rows, "shape", ()))
    if len(shape) != 2:
        fail(where, f"{name} must be 2-D (n_rows, dim); got shape {shape}")
    if shape[1] == 0:
        fail(where, f"{name} must have at least one feature column; got shape {shape}")
    if "float" not in str(getattr(rows, "dtype", "")):
        fail(where, f"{name} must hold floating-point numbers; got dtype {getattr(rows, 'dtype', None)}")
    return rows


def _host_offsets(offsets):
    """Offsets given on a device come to the host: they are n + 1 integers, validated there."""
    return to_numpy(offsets) if is_device_array(offsets) else offsets


def _gather(rows, row_index: np.ndarray):
    """rows[row_index] on the rows' own library and device."""
    if isinstance(rows, np.ndarray):
        return rows[row_index]
    if type(rows).__module__.startswith("torch"):
        import torch

        return rows[torch.as_tensor(row_index, device=rows.device)]
    import cupy

    with cupy.cuda.Device(rows.device.id):
        return rows[cupy.asarray(row_index)]


def _concatenate(parts: list):
    if all(isinstance(p, np.ndarray) for p in parts):
        return np.concatenate(parts)
    if type(parts[0]).__module__.startswith("torch"):
        import torch

        return torch.cat(parts)
    import cupy

    return cupy.concatenate(parts)


class Blocks:
    """Feature rows of many structures stored ragged.

    Parameters
    ----------
    rows : array_like, shape (n_rows, dim)
        Feature rows. Host input becomes float32 (other float dtypes are converted; float32
        C-contiguous input is not copied). A CUDA array (PyTorch tensor or CuPy array) stays on its
        device: every ntkal operation on these Blocks then runs there.
    offsets : array_like of int, shape (n_blocks + 1,), optional
        Row offsets (kept on the host); ``None`` means one row per structure.
    """

    def __init__(self, rows, offsets=None):
        if is_device_array(rows):
            self.rows = _device_rows(rows, "Blocks", "rows")
        else:
            self.rows = as_rows(rows, "Blocks", "rows")
        n_rows = int(self.rows.shape[0])
        if offsets is None:
            offsets = np.arange(n_rows + 1, dtype=np.int64)
        self.offsets = as_offsets(_host_offsets(offsets), n_rows, "Blocks")

    @classmethod
    def _trusted(cls, rows, offsets) -> "Blocks":
        """Blocks of rows and host offsets that a backend has already validated (no second check)."""
        new = cls.__new__(cls)
        new.rows = rows
        new.offsets = np.arange(int(rows.shape[0]) + 1, dtype=np.int64) if offsets is None else offsets
        return new

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    def __getitem__(self, i: int):
        """Rows of structure ``i``, shape (m_i, dim) (a view)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"Blocks: index {i} out of range for {n} blocks")
        i %= n
        return self.rows[self.offsets[i]:self.offsets[i + 1]]

    def __repr__(self) -> str:
        where = "" if self.on_host else f", on {getattr(self.rows, 'device', 'cuda')}"
        return f"Blocks(n_blocks={len(self)}, n_rows={self.n_rows}, dim={self.dim}{where})"

    @property
    def on_host(self) -> bool:
        """False when the rows live on a CUDA device."""
        return isinstance(self.rows, np.ndarray)

    @property
    def n_rows(self) -> int:
        return int(self.rows.shape[0])

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])

    @property
    def sizes(self) -> np.ndarray:
        """Rows per structure, shape (n_blocks,)."""
        return np.diff(self.offsets)

    def take(self, indices) -> "Blocks":
        """The structures ``indices`` (in that order) as a new Blocks on the same device."""
        idx = np.asarray(_host_offsets(indices), dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            fail("Blocks.take", f"indices must be in [0, {len(self)}); got range [{idx.min()}, {idx.max()}]")
        idx %= max(len(self), 1)
        sizes = self.sizes[idx]
        offsets = np.zeros(idx.size + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        starts = self.offsets[idx]
        row_index = np.repeat(starts - offsets[:-1], sizes) + np.arange(offsets[-1], dtype=np.int64)
        return Blocks(_gather(self.rows, row_index), offsets)

    def to_host(self) -> "Blocks":
        """These blocks with their rows on the host (a copy only when they are on a device)."""
        if self.on_host:
            return self
        return Blocks(to_numpy(self.rows), self.offsets)

    @staticmethod
    def from_list(arrays: Sequence) -> "Blocks":
        """Blocks from a list of (m_i, dim) arrays."""
        if len(arrays) == 0:
            fail("Blocks.from_list", "arrays must hold at least one (m_i, dim) array; got an empty list")
        mats = [a if is_device_array(a) else as_rows(a, "Blocks.from_list", f"arrays[{i}]")
                for i, a in enumerate(arrays)]
        dims = {int(m.shape[1]) for m in mats}
        if len(dims) != 1:
            fail("Blocks.from_list", f"all arrays must have the same width; got widths {sorted(dims)}")
        offsets = np.zeros(len(mats) + 1, dtype=np.int64)
        np.cumsum([int(m.shape[0]) for m in mats], out=offsets[1:])
        return Blocks(_concatenate(mats), offsets)

    @staticmethod
    def concatenate(parts: Iterable["Blocks"]) -> "Blocks":
        """Join several Blocks end to end (all on the host, or all on one device)."""
        parts = list(parts)
        if not parts:
            fail("Blocks.concatenate", "parts must hold at least one Blocks; got none")
        dims = {p.dim for p in parts}
        if len(dims) != 1:
            fail("Blocks.concatenate", f"all parts must have the same dim; got {sorted(dims)}")
        if len({p.on_host for p in parts}) != 1:
            fail("Blocks.concatenate", "parts must all be on the host or all on a CUDA device; got a mix")
        sizes = np.concatenate([p.sizes for p in parts])
        offsets = np.zeros(sizes.size + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return Blocks(_concatenate([p.rows for p in parts]), offsets)

    def save(self, path) -> None:
        """Write rows and offsets to one ``.npz`` file (device rows are copied to the host)."""
        host = self.to_host()
        np.savez(path, rows=host.rows, offsets=host.offsets)

    @staticmethod
    def load(path) -> "Blocks":
        """Read a file written by :meth:`save`."""
        import os

        if not os.path.exists(path):
            raise FileNotFoundError(f"Blocks.load: path {path!r} does not exist")
        with np.load(path) as f:
            if "rows" not in f or "offsets" not in f:
                fail("Blocks.load", f"path {path!r} must hold arrays 'rows' and 'offsets'; got {list(f.keys())}")
            return Blocks(f["rows"], f["offsets"])


def unpack(rows, offsets, where: str, names=("rows", "offsets")):
    """``(rows, offsets)`` from either of the two spellings every operation accepts: a rows array
    with its offsets, or a Blocks in place of rows (offsets then None)."""
    if isinstance(rows, Blocks):
        if offsets is not None:
            fail(where, f"pass either a Blocks object or ({names[0]}, {names[1]}), not both")
        return rows.rows, rows.offsets
    return rows, offsets
