"""Ragged feature blocks: structure i owns rows[offsets[i]:offsets[i+1]]."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ._arrays import as_offsets, as_rows, fail


class Blocks:
    """Feature rows of many structures stored ragged.

    Parameters
    ----------
    rows : array_like, shape (n_rows, dim)
        Feature rows, float32 (other float dtypes are converted; float32 C-contiguous input is not copied).
    offsets : array_like of int, shape (n_blocks + 1,), optional
        Row offsets; ``None`` means one row per structure.
    """

    def __init__(self, rows, offsets=None):
        self.rows = as_rows(rows, "Blocks", "rows")
        if offsets is None:
            offsets = np.arange(self.rows.shape[0] + 1, dtype=np.int64)
        self.offsets = as_offsets(offsets, self.rows.shape[0], "Blocks")

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    def __getitem__(self, i: int) -> np.ndarray:
        """Rows of structure ``i``, shape (m_i, dim) (a view)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"Blocks: index {i} out of range for {n} blocks")
        i %= n
        return self.rows[self.offsets[i]:self.offsets[i + 1]]

    def __repr__(self) -> str:
        return f"Blocks(n_blocks={len(self)}, n_rows={self.n_rows}, dim={self.dim})"

    @property
    def n_rows(self) -> int:
        return self.rows.shape[0]

    @property
    def dim(self) -> int:
        return self.rows.shape[1]

    @property
    def sizes(self) -> np.ndarray:
        """Rows per structure, shape (n_blocks,)."""
        return np.diff(self.offsets)

    def take(self, indices) -> "Blocks":
        """The structures ``indices`` (in that order) as a new Blocks."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            fail("Blocks.take", f"indices must be in [0, {len(self)}); got range [{idx.min()}, {idx.max()}]")
        idx %= max(len(self), 1)
        sizes = self.sizes[idx]
        offsets = np.zeros(idx.size + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        if idx.size == 0:
            return Blocks(np.zeros((0, self.dim), np.float32), offsets)
        rows = np.concatenate([self.rows[self.offsets[i]:self.offsets[i + 1]] for i in idx])
        return Blocks(rows, offsets)

    @staticmethod
    def from_list(arrays: Sequence) -> "Blocks":
        """Blocks from a list of (m_i, dim) arrays."""
        if len(arrays) == 0:
            fail("Blocks.from_list", "arrays must hold at least one (m_i, dim) array; got an empty list")
        mats = [as_rows(a, "Blocks.from_list", f"arrays[{i}]") for i, a in enumerate(arrays)]
        dims = {m.shape[1] for m in mats}
        if len(dims) != 1:
            fail("Blocks.from_list", f"all arrays must have the same width; got widths {sorted(dims)}")
        offsets = np.zeros(len(mats) + 1, dtype=np.int64)
        np.cumsum([m.shape[0] for m in mats], out=offsets[1:])
        return Blocks(np.concatenate(mats), offsets)

    @staticmethod
    def concatenate(parts: Iterable["Blocks"]) -> "Blocks":
        """Join several Blocks end to end."""
        parts = list(parts)
        if not parts:
            fail("Blocks.concatenate", "parts must hold at least one Blocks; got none")
        dims = {p.dim for p in parts}
        if len(dims) != 1:
            fail("Blocks.concatenate", f"all parts must have the same dim; got {sorted(dims)}")
        sizes = np.concatenate([p.sizes for p in parts])
        offsets = np.zeros(sizes.size + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return Blocks(np.concatenate([p.rows for p in parts]), offsets)

    def save(self, path) -> None:
        """Write rows and offsets to one ``.npz`` file."""
        np.savez(path, rows=self.rows, offsets=self.offsets)

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
