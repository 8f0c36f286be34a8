"""The one streaming top-k of the package: the k highest scores, highest first, ties to the lower index.

Every ranking goes through it: :func:`ntkal.shortlist` (chunks of a pool, on the host or a GPU), the best
candidates of one feature chunk (:mod:`ntkal.chunk_task`) and the merge of those chunks' candidates, which
arrive in any order from Dask workers (:mod:`ntkal.screen`). The ranking itself is the engine's
(``cpp/topk.cpp``, or the CUDA backend's on device arrays); entries are put in index order first, so
that "ties: lower position" is "ties: lower index" whatever order the entries came in.
"""
from __future__ import annotations

import numpy as np

from . import backends

__all__ = ["RunningTopK", "top_k"]


def top_k(indices, scores, k: int, *, backend=backends.cpu, ordered: bool = True):
    """``(positions, indices, scores)`` of the k best entries, best first (positions into the inputs).

    Parameters
    ----------
    indices : array (n,), int64
        Entry labels (unique), on the backend's device.
    scores : array (n,), float64
        Their scores (finite).
    k : int
        Entries to keep (at most n are returned).
    backend : module
        :mod:`ntkal.backends.cpu` or :mod:`ntkal.backends.cuda`.
    ordered : bool
        Entries of equal score already stand in index order (a stream in index order, or earlier best
        entries followed by later chunks): no sort needed. Only host arrays may come unordered.
    """
    k = min(int(k), int(scores.shape[0]))
    if ordered:
        positions, kept = backend.top_k(scores, k)
        return positions, backend.take(indices, positions), kept
    indices, scores = np.asarray(indices, dtype=np.int64), np.asarray(scores, dtype=np.float64)
    order = np.argsort(indices, kind="stable")
    positions, kept = backend.top_k(np.ascontiguousarray(scores[order]), k)
    positions = order[positions]
    return positions, indices[positions], kept


class RunningTopK:
    """The k best of everything pushed so far (entries may come in any order)."""

    def __init__(self, k: int):
        self.k = int(k)
        self.indices = np.zeros(0, np.int64)
        self.scores = np.zeros(0, np.float64)

    def push(self, indices, scores) -> None:
        idx = np.concatenate([self.indices, np.asarray(indices, dtype=np.int64)])
        sc = np.concatenate([self.scores, np.asarray(scores, dtype=np.float64)])
        _, self.indices, self.scores = top_k(idx, sc, self.k, ordered=False)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        return self.indices, self.scores
