"""Streaming top-k of posterior variance over a pool too large to hold at once."""
from __future__ import annotations

import itertools

import numpy as np

from ._arrays import as_int, fail, is_device_array, rows_and_offsets
from ._loader import _core
from .blocks import Blocks
from .posterior import Posterior


def _is_array_like(x) -> bool:
    return isinstance(x, (np.ndarray, Blocks)) or hasattr(x, "__array__") or hasattr(x, "__cuda_array_interface__")


def _score(rows, offsets, posterior: Posterior, intensive: bool) -> np.ndarray:
    rows, offsets = rows_and_offsets(rows, offsets, "shortlist", posterior.dim)
    return posterior._p.variance(rows, offsets, bool(intensive))


def shortlist(rows, offsets, posterior: Posterior, k: int, *, intensive: bool = False,
              progress=None) -> tuple[np.ndarray, np.ndarray]:
    """The k pool structures with the highest posterior variance.

    Parameters
    ----------
    rows : array_like (n_rows, dim), Blocks, or iterable of chunks
        Pool features. An iterable yields ``(rows, offsets)`` tuples (offsets may be None for one
        row per structure) or Blocks; chunks are scored one at a time, so memory stays
        O(chunk + dim^2 + k) whatever the pool size. Block indices count across chunks.
    offsets : array_like of int, shape (n + 1,), or None
        Block offsets of ``rows`` (must be None for an iterable).
    posterior : Posterior
        Posterior conditioned on the training set.
    k : int
        Shortlist size. For arrays ``0 <= k <= n``; for a stream, at most the stream's length is returned.
    intensive : bool
        Rank by PV per row (see :meth:`Posterior.variance`).
    progress : callable, optional
        Called as ``progress(n_done)`` after each chunk with the number of structures scored so far.

    Returns
    -------
    indices : ndarray, shape (k,), int64
        Pool indices, highest PV first (ties: lower index first).
    pv : ndarray, shape (k,), float64
        Their posterior variances.
    """
    if not isinstance(posterior, Posterior):
        fail("shortlist", f"posterior must be an ntkal.Posterior; got {type(posterior).__name__}")
    k = as_int(k, "shortlist", "k", low=0)
    if _is_array_like(rows):
        if is_device_array(rows):
            from . import _cuda_backend

            return _cuda_backend.shortlist(rows, offsets, posterior, k, intensive)
        pv = _score(rows, offsets, posterior, intensive)
        if k > pv.shape[0]:
            fail("shortlist", f"k must be <= the pool size {pv.shape[0]}; got {k}")
        top = _core.TopK(k)
        top.push(pv, 0)
        return top.result()
    if offsets is not None:
        fail("shortlist", "offsets must be None when rows is an iterable of (rows, offsets) chunks")
    chunks = iter(rows)
    first = next(chunks, None)
    if first is not None:
        first_rows = first.rows if isinstance(first, Blocks) else (first[0] if isinstance(first, tuple) else first)
        if is_device_array(first_rows):
            from . import _cuda_backend

            return _cuda_backend.shortlist(itertools.chain([first], chunks), None, posterior, k, intensive,
                                           progress=progress)
        chunks = itertools.chain([first], chunks)
    top = _core.TopK(k)
    base = 0
    for chunk in chunks:
        if isinstance(chunk, Blocks):
            pv = _score(chunk, None, posterior, intensive)
        elif isinstance(chunk, tuple) and len(chunk) == 2:
            pv = _score(chunk[0], chunk[1], posterior, intensive)
        else:
            fail("shortlist", f"each chunk must be a (rows, offsets) tuple or Blocks; got {type(chunk).__name__}")
        top.push(pv, base)
        base += pv.shape[0]
        if progress is not None:
            progress(base)
    return top.result()
