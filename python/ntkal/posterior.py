"""Feature-space Gaussian-process posterior (Bayesian linear model on sketched features)."""
from __future__ import annotations

import numpy as np

from . import backends
from ._loader import _core
from ._validation import as_int, as_positive_float
from .errors import fail
from .options import MATMULS, PRECISIONS, choice, code, name


class Posterior:
    """Posterior of a linear model on features, conditioned on training blocks.

    ``A = noise_var * I + c * sum_train Phi^T Phi`` is accumulated and factored in float64
    (``L = chol(A)``); a block's posterior variance is ``noise_var * c * ||L^{-1} Phi^T||_F^2``, which
    equals the kernel-space GP variance ``tr[K(x,x) - K(x,T)(K(T,T) + noise_var I)^{-1} K(T,x)]``.

    Parameters
    ----------
    dim : int
        Feature dimension d.
    noise_var : float
        Observation noise variance sigma^2 > 0 (also the prior-to-noise ratio: prior w ~ N(0, I)).
    scale : bool
        If True, features are multiplied by ``sqrt(c)``, ``c = 1 / mean_train ||phi_row||^2`` (mean
        kernel diagonal over training rows becomes 1); PVs are then in the scaled units.
    precision : {"float32", "float64"}
        Scoring precision: ``float32`` whitens with one float32 GEMM per chunk (fast; relative
        error grows with the conditioning of A), ``float64`` solves with L in float64 (exact).
    """

    def __init__(self, dim: int, *, noise_var: float = 1e-3, scale: bool = False, precision: str = "float32"):
        dim = as_int(dim, "Posterior", "dim", low=1)
        noise_var = as_positive_float(noise_var, "Posterior", "noise_var")
        choice(precision, PRECISIONS, "Posterior", "precision")
        self._p = _core.Posterior(dim, noise_var, bool(scale), code(precision, PRECISIONS))

    dim = property(lambda self: self._p.dim, doc="Feature dimension d.")
    noise_var = property(lambda self: self._p.noise_var, doc="Noise variance sigma^2.")
    precision = property(lambda self: name(self._p.precision, PRECISIONS), doc="Scoring precision.")
    n_rows = property(lambda self: self._p.n_rows, doc="Training rows added so far.")
    n_blocks = property(lambda self: self._p.n_blocks, doc="Training structures added so far.")
    feature_scale = property(lambda self: self._p.feature_scale, doc="Feature scale c (1 unless scale=True).")
    jitter = property(lambda self: self._p.jitter, doc="Diagonal jitter the Cholesky needed (normally 0).")
    cholesky = property(lambda self: self._p.cholesky, doc="L with A = L L^T, shape (dim, dim), float64.")

    def __repr__(self) -> str:
        return (f"Posterior(dim={self.dim}, noise_var={self.noise_var:g}, n_blocks={self.n_blocks}, "
                f"n_rows={self.n_rows}, precision={self.precision!r})")

    def __getstate__(self) -> dict:
        """Picklable state (parameters and the accumulated Gram): a posterior travels to worker processes
        and is rebuilt there with the same bits (the factorisation is deterministic)."""
        return {"dim": self.dim, "noise_var": self.noise_var, "scale": bool(self._p.scale),
                "precision": self.precision, "gram": self.gram, "n_rows": self.n_rows, "n_blocks": self.n_blocks}

    def __setstate__(self, state: dict) -> None:
        self._p = _core.Posterior(state["dim"], state["noise_var"], state["scale"],
                                  code(state["precision"], PRECISIONS))
        if state["n_rows"] or state["n_blocks"]:
            self._p.add_gram(state["gram"], state["n_rows"], state["n_blocks"])

    @property
    def gram(self) -> np.ndarray:
        """The accumulated ``sum_train Phi^T Phi``, float64 (dim, dim), symmetric (unscaled)."""
        return self._p.gram

    def add_gram(self, gram, n_rows: int, n_blocks: int) -> "Posterior":
        """Condition on a precomputed partial Gram, e.g. one per feature chunk from :func:`training_gram`.

        Partial Grams added in a fixed order give the same posterior bits wherever they were computed
        (one process or many); :meth:`add` of all rows at once may differ from that in the last bits.

        Parameters
        ----------
        gram : array_like, shape (dim, dim), float64
            ``sum Phi^T Phi`` of some training rows (the lower triangle is read).
        n_rows, n_blocks : int
            Rows and structures it sums over.

        Returns
        -------
        Posterior
            ``self``.
        """
        where = "Posterior.add_gram"
        g = np.asarray(gram)
        if g.shape != (self.dim, self.dim):
            fail(where, f"gram must have shape ({self.dim}, {self.dim}); got {g.shape}")
        if not np.issubdtype(g.dtype, np.floating) or not np.all(np.isfinite(g)):
            fail(where, "gram must be finite floating-point numbers")
        n_rows = as_int(n_rows, where, "n_rows", low=0)
        n_blocks = as_int(n_blocks, where, "n_blocks", low=0)
        self._p.add_gram(np.ascontiguousarray(g, dtype=np.float64), n_rows, n_blocks)
        return self

    def copy(self) -> "Posterior":
        """An independent copy (same training statistics)."""
        new = Posterior.__new__(Posterior)
        new._p = self._p.copy()
        return new

    def add(self, rows, offsets=None) -> "Posterior":
        """Condition on training structures.

        Parameters
        ----------
        rows : array_like, shape (n_rows, dim), or Blocks
            Training feature rows.
        offsets : array_like of int, shape (n_blocks + 1,), optional
            Block offsets (only counted; every row is an observation).

        Returns
        -------
        Posterior
            ``self``, for chaining.
        """
        where = "Posterior.add"
        backend = backends.for_array(rows, where)
        b = backend.blocks(rows, offsets, where, width=self.dim)
        self._p.add(backend.host_rows(b), b.n_blocks)  # A is accumulated on the host in float64 (d x d)
        return self

    def variance(self, rows, offsets=None, *, intensive: bool = False, matmul: str = "float32"):
        """Posterior variance (trace of the predictive covariance) of each block.

        Parameters
        ----------
        rows : array_like, shape (n_rows, dim), or Blocks
            Feature rows to score; a CUDA array (or Blocks on a device) is scored on its device.
        offsets : array_like of int, shape (n + 1,), optional
            Block offsets; ``None`` scores every row on its own.
        intensive : bool
            Divide each block's PV by its row count (per-component variance), so structures of
            different sizes are not ranked by size alone.
        matmul : {"float32", "tf32", "bf16"}
            GPU only: arithmetic of the whitening GEMM (tensor cores for tf32 / bf16, ~1e-3 / 1e-2
            relative error; float32 posteriors only). The CPU always uses float32 / float64.

        Returns
        -------
        ndarray or CUDA array, shape (n,), float64
            On the rows' device.
        """
        where = "Posterior.variance"
        choice(matmul, MATMULS, where, "matmul")
        if matmul != "float32" and self.precision == "float64":
            fail(where, f"matmul={matmul!r} needs a precision='float32' posterior; this one is float64")
        backend = backends.for_array(rows, where)
        b = backend.blocks(rows, offsets, where, width=self.dim)
        if backend is backends.cpu:
            return backends.cpu.variance(self._p, b, intensive)
        return backend.variance(self._p, b, intensive, matmul)

    def whiten(self, rows) -> np.ndarray:
        """Whitened rows ``sqrt(c) L^{-1} phi`` in float64, shape (n_rows, dim) (host rows)."""
        b = backends.cpu.blocks(rows, None, "Posterior.whiten", width=self.dim)
        return self._p.whiten(b.rows)


def training_gram(rows) -> np.ndarray:
    """``sum_r phi_r^T phi_r`` of host rows in float64, shape (dim, dim), symmetric.

    The partial Gram of one feature chunk, for :meth:`Posterior.add_gram` (fixed-order kernel: the same
    bits on every machine, thread count and instruction set).

    Parameters
    ----------
    rows : array_like, shape (n_rows, dim), float32, or Blocks
    """
    b = backends.cpu.blocks(rows, None, "training_gram")
    return _core.training_gram(b.rows)
