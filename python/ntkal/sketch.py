"""Implicit random sketch S (n_params x dim) that maps Jacobian rows to features."""
from __future__ import annotations

import numpy as np

from . import backends
from ._loader import _core
from ._validation import as_int
from .options import SKETCH_KINDS, choice, code


class Sketch:
    """Random projection of parameter space, never stored.

    Every entry of S is a pure function of (seed, parameter index, column) — Philox-4x32-10 — so a
    chunk of parameters can be projected on its own, chunk projections sum to the whole, and the
    CPU and GPU backends produce the same S.

    Parameters
    ----------
    n_params : int
        Number of model parameters P (rows of S).
    dim : int
        Feature dimension d (columns of S).
    kind : {"sparse_sign", "gaussian"}
        ``sparse_sign``: ``nnz`` entries of +-1/sqrt(nnz) per parameter in hashed columns (fast);
        ``gaussian``: N(0, 1/d) entries generated in tiles.
    seed : int
        Seed of the counter-based generator (0 <= seed < 2**64).
    nnz : int
        Nonzeros per parameter for ``sparse_sign`` (1 <= nnz <= dim).
    """

    def __init__(self, n_params: int, dim: int, *, kind: str = "sparse_sign", seed: int = 0, nnz: int = 4):
        n_params = as_int(n_params, "Sketch", "n_params", low=1)
        dim = as_int(dim, "Sketch", "dim", low=1)
        choice(kind, SKETCH_KINDS, "Sketch", "kind")
        seed = as_int(seed, "Sketch", "seed", low=0, high=2**64 - 1)
        nnz = as_int(nnz, "Sketch", "nnz", low=1, high=dim) if kind == "sparse_sign" else int(nnz)
        self.kind = kind
        self._s = _core.Sketch(n_params, dim, code(kind, SKETCH_KINDS), seed, nnz)

    n_params = property(lambda self: self._s.n_params, doc="Number of parameters P.")
    dim = property(lambda self: self._s.dim, doc="Feature dimension d.")
    seed = property(lambda self: self._s.seed, doc="Generator seed.")
    nnz = property(lambda self: self._s.nnz, doc="Nonzeros per parameter (sparse_sign).")

    def __repr__(self) -> str:
        return f"Sketch(n_params={self.n_params}, dim={self.dim}, kind={self.kind!r}, seed={self.seed}, nnz={self.nnz})"

    def project(self, J, *, col_offset: int = 0, out=None) -> np.ndarray:
        """Project Jacobian rows: ``out += J @ S[col_offset : col_offset + P_chunk]``.

        Parameters
        ----------
        J : array_like, shape (m, P_chunk)
            Jacobian rows over parameters ``col_offset .. col_offset + P_chunk``; float32 or float64
            (float64 is accumulated in float64 and rounded once).
        col_offset : int
            Index of J's first column among the n_params parameters.
        out : ndarray, shape (m, dim), float32, optional
            Accumulator; when given, the projection is added to it in place and it is returned.

        Returns
        -------
        ndarray, shape (m, dim), float32
        """
        where = "Sketch.project"
        col_offset = as_int(col_offset, where, "col_offset", low=0)
        backend = backends.for_array(J, where)
        return backend.project(self._s, J, col_offset, out, where)

    def dense(self, p_begin: int = 0, p_end: int | None = None) -> np.ndarray:
        """Explicit rows ``S[p_begin:p_end]``, shape (p_end - p_begin, dim), float64 (tests, small models)."""
        p_end = self.n_params if p_end is None else p_end
        p_begin = as_int(p_begin, "Sketch.dense", "p_begin", low=0)
        p_end = as_int(p_end, "Sketch.dense", "p_end", low=p_begin, high=self.n_params)
        return self._s.dense(p_begin, p_end)
