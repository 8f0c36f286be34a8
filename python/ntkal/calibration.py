"""Label-aware calibration of the posterior's output scale from residuals of the current model.

PV measures how new a structure is to the linearised model, in the model's own units; it says
nothing about where the model is actually wrong. When the training structures carry reference
labels, the model's residuals on them tell: for structures the posterior has not seen, the
expected squared residual is ``scale * PV``. The scale is fitted per composition stratum by
empirical Bayes, ``scale_s = sum_i r_i^2 / sum_i PV_loo_i`` over the stratum's training
structures, where ``PV_loo_i`` is the structure's leave-one-out posterior variance (the
posterior without it: an out-of-sample variance for an in-sample residual would be biased
low). Strata with fewer than ``min_count`` labelled structures use the pooled scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import backends
from .blocks import Blocks
from .errors import fail

__all__ = ["Calibration", "calibrate", "leave_one_out_variance", "force_residual_sq"]


def leave_one_out_variance(posterior, blocks: Blocks, *, intensive: bool = False) -> np.ndarray:
    """PV of each training block under the posterior conditioned on all training blocks but itself.

    With ``S = X A^{-1} X^T`` (X the block's scaled rows), removing the block from A gives
    ``X A_{-x}^{-1} X^T = S (I - S)^{-1}``, so ``PV_loo = noise_var * tr(S (I - S)^{-1})``, computed by
    the engine (``cpp/block_traces.cpp``) as ``noise_var ||F^{-1} W||_F^2`` with ``F F^T = I - S``
    on its fixed-order kernels: the same bits under every BLAS build, core type and thread count.
    The float64 reference is ``ntkal._reference.leave_one_out_variance``.

    Parameters
    ----------
    posterior : Posterior
        Conditioned on ``blocks`` (and possibly more).
    blocks : Blocks
        Training blocks, host rows.
    intensive : bool
        Divide each block's value by its row count.

    Returns
    -------
    ndarray, shape (len(blocks),), float64
        NaN for an empty block, and for a block whose own rows explain it to within rounding
        (``I - S`` not positive definite in float64): its value is too large to resolve, and
        :func:`calibrate` leaves it out.
    """
    b = backends.cpu.blocks(blocks, None, "leave_one_out_variance", width=posterior.dim)
    return backends.cpu.leave_one_out_variance(posterior._p, b, intensive)


def force_residual_sq(predicted, reference) -> np.ndarray:
    """Mean squared force-component residual of each structure.

    Parameters
    ----------
    predicted, reference : list of ndarray, shape (N_i, 3)

    Returns
    -------
    ndarray, shape (n,), float64
    """
    if len(predicted) != len(reference):
        fail("force_residual_sq", f"{len(predicted)} predictions for {len(reference)} references")
    out = np.empty(len(predicted))
    for i, (p, r) in enumerate(zip(predicted, reference)):
        p, r = np.asarray(p, np.float64), np.asarray(r, np.float64)
        if p.shape != r.shape:
            fail("force_residual_sq", f"structure {i}: predicted forces {p.shape} vs reference "
                                      f"{r.shape}")
        out[i] = math.fsum(((p - r) ** 2).ravel()) / p.size  # exactly rounded: no summation order
    if not np.all(np.isfinite(out)):
        fail("force_residual_sq", "forces must be finite")
    return out


@dataclass
class Calibration:
    """Output scale of the posterior per stratum: expected squared residual = scale * PV.

    Attributes
    ----------
    scales : dict of str -> float
        Scale of each stratum with at least ``min_count`` labelled structures.
    pooled : float
        Scale fitted on all labelled structures (used for every other stratum).
    counts : dict of str -> int
        Labelled structures per stratum.
    mean_residual_sq : dict of str -> float
        Mean squared force residual per stratum (eV^2/A^2).
    """

    scales: dict
    pooled: float
    counts: dict = field(default_factory=dict)
    mean_residual_sq: dict = field(default_factory=dict)

    def scale_of(self, key: str) -> float:
        return float(self.scales.get(key, self.pooled))

    def summary(self) -> str:
        parts = [f"{k}: {self.scale_of(k):.4g} (n={self.counts.get(k, 0)}, mean r^2 "
                 f"{self.mean_residual_sq.get(k, float('nan')):.3g})" for k in sorted(self.counts)]
        return f"calibration: pooled scale {self.pooled:.4g}; " + "; ".join(parts)


def calibrate(residual_sq, loo_pv, keys, *, min_count: int = 3) -> Calibration:
    """Fit ``scale_s = sum r^2 / sum PV_loo`` per stratum (pooled for strata under ``min_count``).

    Parameters
    ----------
    residual_sq : array_like, shape (n,)
        Squared residual of each labelled structure (e.g. :func:`force_residual_sq`).
    loo_pv : array_like, shape (n,)
        Its leave-one-out PV (:func:`leave_one_out_variance`).
    keys : sequence of str, length n
        Its stratum.
    min_count : int
        Fewest labelled structures for a stratum's own scale.

    Returns
    -------
    Calibration
    """
    r = np.asarray(residual_sq, dtype=np.float64).reshape(-1)
    v = np.asarray(loo_pv, dtype=np.float64).reshape(-1)
    keys = list(keys)
    if not (r.shape == v.shape and len(keys) == r.shape[0]):
        fail("calibrate", f"residual_sq {r.shape}, loo_pv {v.shape} and keys ({len(keys)}) "
                          "must have one entry per labelled structure")
    ok = np.isfinite(r) & np.isfinite(v) & (v > 0)
    if not ok.any():
        fail("calibrate", "no labelled structure with a finite residual and a positive PV")
    # math.fsum: exactly rounded sums, so the scales do not depend on a summation order
    pooled = math.fsum(r[ok]) / math.fsum(v[ok])
    scales, counts, mean_r = {}, {}, {}
    for key in sorted(set(keys)):
        m = ok & np.array([k == key for k in keys])
        counts[key] = int(m.sum())
        mean_r[key] = math.fsum(r[m]) / counts[key] if m.any() else float("nan")
        if m.sum() >= min_count:
            scales[key] = math.fsum(r[m]) / math.fsum(v[m])
    return Calibration(scales, pooled, counts, mean_r)
