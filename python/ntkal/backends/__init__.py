"""Kernel sets behind the one public front end (private).

:mod:`.cpu` runs the C++ engine on host arrays, :mod:`.cuda` the CUDA kernels on arrays that live
on a GPU. Both offer the same primitives on *validated* inputs (``blocks`` validates and returns a
:class:`BlockArgs`; every other primitive trusts it), so each public function validates once, picks
a backend once with :func:`for_array`, and contains its method logic once. Backends import no
public module.
"""
from __future__ import annotations

from .._device import is_device_array
from ..blocks import Blocks
from . import cpu
from .common import BlockArgs


def for_array(x, where: str):
    """The backend that holds ``x`` (an array or Blocks): :mod:`.cuda` for CUDA arrays, else :mod:`.cpu`."""
    rows = x.rows if isinstance(x, Blocks) else x
    if is_device_array(rows):
        from . import cuda

        cuda.require(where)
        return cuda
    return cpu


__all__ = ["BlockArgs", "cpu", "for_array"]
