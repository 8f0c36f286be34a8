"""Streaming top-k of posterior variance over a pool too large to hold at once (the ranking: :mod:`ntkal.topk`)."""
from __future__ import annotations

import numpy as np

from . import backends
from ._device import to_numpy
from ._validation import as_int
from .blocks import Blocks
from .errors import fail
from .options import MATMULS, choice
from .posterior import Posterior
from .topk import top_k


def _is_array_like(x) -> bool:
    return isinstance(x, (np.ndarray, Blocks)) or hasattr(x, "__array__") or hasattr(x, "__cuda_array_interface__") \
        or hasattr(x, "__dlpack__")


def _chunk_parts(chunk, where: str):
    if isinstance(chunk, Blocks):
        return chunk.rows, chunk.offsets
    if isinstance(chunk, tuple) and len(chunk) == 2:
        return chunk
    fail(where, f"each chunk must be a (rows, offsets) tuple or Blocks; got {type(chunk).__name__}")


def shortlist(rows, offsets, posterior: Posterior, k: int, *, intensive: bool = False, progress=None,
              return_rows: bool = False, pv_out: np.ndarray | None = None, matmul: str = "float32"):
    """The k pool structures with the highest posterior variance.

    Parameters
    ----------
    rows : array_like (n_rows, dim), Blocks, or iterable of chunks
        Pool features. An iterable yields ``(rows, offsets)`` tuples (offsets may be None for one
        row per structure) or Blocks; chunks are scored one at a time, so memory stays
        O(chunk + dim^2 + k) whatever the pool size. Block indices count across chunks. CUDA
        arrays are scored and ranked on their device (host chunks of a device stream are uploaded).
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
    return_rows : bool
        Also return the kept structures' feature rows, as :class:`Blocks` in shortlist order (on
        the rows' device), so that selection can run on them without a second pass over the pool.
    pv_out : ndarray, shape (n,), float64, optional
        Filled with the PV of every pool structure (host memory; n floats).
    matmul : {"float32", "tf32", "bf16"}
        GPU scoring arithmetic (see :meth:`Posterior.variance`).

    Returns
    -------
    indices : array, shape (k,), int64
        Pool indices, highest PV first (ties: lower index first); on the rows' device.
    pv : array, shape (k,), float64
        Their posterior variances.
    blocks : Blocks
        Only with ``return_rows``: the kept structures' rows.
    """
    where = "shortlist"
    if not isinstance(posterior, Posterior):
        fail(where, f"posterior must be an ntkal.Posterior; got {type(posterior).__name__}")
    k = as_int(k, where, "k", low=0)
    choice(matmul, MATMULS, where, "matmul")
    if pv_out is not None and not (isinstance(pv_out, np.ndarray) and pv_out.dtype == np.float64
                                   and pv_out.ndim == 1 and pv_out.flags.writeable):
        fail(where, f"pv_out must be a writable 1-D float64 ndarray; got {type(pv_out).__name__}")
    if _is_array_like(rows):
        chunks, one_array = [(rows, offsets)], True
    else:
        if offsets is not None:
            fail(where, "offsets must be None when rows is an iterable of (rows, offsets) chunks")
        chunks, one_array = rows, False

    backend = first = None
    kept_idx = kept_pv = kept_rows = None
    base = 0
    for chunk in chunks:
        c_rows, c_off = chunk if one_array else _chunk_parts(chunk, where)
        if backend is None:
            backend = backends.for_array(c_rows, where)
        b = backend.blocks(c_rows, c_off, where, width=posterior.dim, like=first)
        first = first or b
        if one_array and k > b.n_blocks:
            fail(where, f"k must be <= the pool size {b.n_blocks}; got {k}")
        pv = backend.variance(posterior._p, b, intensive, matmul)
        if pv_out is not None:
            if base + b.n_blocks > pv_out.shape[0]:
                fail(where, f"pv_out has {pv_out.shape[0]} entries; the pool has more structures")
            pv_out[base:base + b.n_blocks] = to_numpy(pv)
        idx = backend.arange(base, base + b.n_blocks, b)
        if kept_pv is not None:  # kept entries first: the entries stay in index order (ties: lower index)
            pv, idx = backend.concatenate([kept_pv, pv]), backend.concatenate([kept_idx, idx])
        positions, kept_idx, kept_pv = top_k(idx, pv, k, backend=backend)
        if return_rows:
            here = Blocks._trusted(backend.array(b), b.offsets_host)
            candidates = here if kept_rows is None else Blocks.concatenate([kept_rows, here])
            kept_rows = candidates.take(to_numpy(positions))
        base += b.n_blocks
        if progress is not None:
            progress(base)
    if backend is None:  # an empty stream
        kept_idx, kept_pv = np.zeros(0, np.int64), np.zeros(0, np.float64)
        kept_rows = Blocks(np.zeros((0, posterior.dim), np.float32))
    if return_rows:
        return kept_idx, kept_pv, kept_rows
    return kept_idx, kept_pv
