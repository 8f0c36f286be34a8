"""What both backends hand back to the front end."""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class BlockArgs(NamedTuple):
    """Validated ragged blocks on one backend.

    rows: the backend's matrix (ndarray on the CPU; a device-matrix handle on CUDA).
    offsets: what the backend's kernels take (ndarray or None on the CPU; a device copy on CUDA).
    offsets_host: int64 ndarray (n_blocks + 1,) or None (one row per block), always on the host.
    n_blocks, dim: sizes.
    """

    rows: Any
    offsets: Any
    offsets_host: np.ndarray | None
    n_blocks: int
    dim: int

    @property
    def one_row_each(self) -> bool:
        return self.offsets_host is None or bool(np.all(np.diff(self.offsets_host) == 1))
