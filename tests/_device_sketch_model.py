"""A NumPy model of the GPU's sparse-sign projection (cuda/sketch.cu): passes of whole parameters,
sub-tiles of entries sorted by (column, entry) into per-column lists with the kernel's list offsets,
then one float64 chain per output in list order (multiply, then add, as two roundings).

Tests compare it bit for bit with the CPU engine's ``Sketch.project``: that checks the index
arithmetic of the device path (sub-tile and pass boundaries, list offsets) and the claim that its
summation order is the CPU's, on a machine without a GPU.
"""
from __future__ import annotations

import math

import numpy as np

# the constants of cuda/sketch.cu
SUB_ENTRIES = 2048  # kSubEntries = kSortThreads * kSortItems
ENTRY_BITS = 11
SUB_PARAMS = 512
TABLE_BYTES = 1 << 24


def entries_per_subtile(nnz: int) -> int:
    return nnz * min(SUB_PARAMS, SUB_ENTRIES // nnz) if nnz <= SUB_ENTRIES else SUB_ENTRIES


def pass_params(nnz: int, dim: int) -> int:
    e_sub = entries_per_subtile(nnz)
    subtiles = max(1, TABLE_BYTES // (4 * (e_sub + dim + 1)))
    return max(1, subtiles * e_sub // nnz)


def column_lists(bucket: np.ndarray, sign: np.ndarray, dim: int, e0: int, nnz: int):
    """One sub-tile (entries e0, e0 + 1, ... of its pass): (entries, seg) as sparse_lists_kernel writes them."""
    n_items = len(bucket)
    keys = (bucket.astype(np.uint64) << np.uint64(ENTRY_BITS)) | np.arange(n_items, dtype=np.uint64)
    keys = np.sort(keys)
    cols = (keys >> np.uint64(ENTRY_BITS)).astype(np.int64)
    el = (keys & np.uint64(SUB_ENTRIES - 1)).astype(np.int64)
    p_local = (e0 + el) // nnz - e0 // nnz
    assert np.all(p_local < SUB_PARAMS)
    entries = (p_local << 1) | (sign[el] > 0)
    seg = np.full(dim + 1, -1, np.int64)
    for rank in range(n_items):  # columns (prev_col, col] start at this rank
        prev = cols[rank - 1] if rank > 0 else -1
        assert np.all(seg[prev + 1:cols[rank] + 1] == -1), "a list offset written twice"
        seg[prev + 1:cols[rank] + 1] = rank
    seg[cols[-1] + 1:] = n_items
    assert np.all(seg >= 0), "a list offset never written"
    return entries, seg


def cpu_order_sums(J, col_offset: int, dim: int, seed: int, nnz: int, sign_entries) -> np.ndarray:
    """The float64 accumulator of the CPU loop (cpp/sketch.cpp project_sparse): per row, parameters in
    order, nonzeros in order, acc[bucket] = acc[bucket] + value * x."""
    J = np.asarray(J)
    value = float(np.float32(1.0 / math.sqrt(nnz)))
    bucket, sign = sign_entries(np.arange(col_offset, col_offset + J.shape[1], dtype=np.uint64), dim, seed, nnz)
    acc = np.zeros((J.shape[0], dim))
    for p in range(J.shape[1]):
        x = J[:, p].astype(np.float64)
        for t in range(nnz):
            acc[:, bucket[p, t]] = acc[:, bucket[p, t]] + (value if sign[p, t] > 0 else -value) * x
    return acc


def sparse_project(J, col_offset: int, out, dim: int, seed: int, nnz: int, sign_entries):
    """(out + float32(acc), acc): J S[col_offset:] the way the GPU computes it, and its float64
    accumulator. sign_entries: the reference's ``sparse_sign_entries``."""
    J = np.asarray(J)
    m, p_chunk = J.shape
    e_sub = entries_per_subtile(nnz)
    value = float(np.float32(1.0 / math.sqrt(nnz)))
    acc = np.zeros((m, dim))
    step = pass_params(nnz, dim)
    for p0 in range(0, p_chunk, step):
        n_entries = min(step, p_chunk - p0) * nnz
        params = np.arange(col_offset + p0, col_offset + p0 + n_entries // nnz, dtype=np.uint64)
        bucket, sign = (a.ravel() for a in sign_entries(params, dim, seed, nnz))
        for e0 in range(0, n_entries, e_sub):
            e1 = min(e0 + e_sub, n_entries)
            p_first = e0 // nnz
            n_p = (e1 - 1) // nnz - p_first + 1
            assert n_p <= SUB_PARAMS
            tile = J[:, p0 + p_first:p0 + p_first + n_p].astype(np.float64)
            entries, seg = column_lists(bucket[e0:e1], sign[e0:e1], dim, e0, nnz)
            for c in np.flatnonzero(np.diff(seg)):
                for k in range(seg[c], seg[c + 1]):
                    w = int(entries[k])
                    p = w >> 1
                    assert p < n_p
                    v = value if w & 1 else -value
                    acc[:, c] = acc[:, c] + v * tile[:, p]
    return (np.asarray(out, np.float32) + acc.astype(np.float32)).astype(np.float32), acc
