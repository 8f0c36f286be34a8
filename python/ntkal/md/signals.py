"""The two uncertainty signals of the MD monitor and their units.

Both are Bayesian linear models on features of the model, conditioned once on the training set, and
both are put on a force scale by :mod:`ntkal.calibration` (the one calibration of the package):
``expected squared error = scale * variance``, ``scale`` fitted per composition stratum on the
training structures' leave-one-out variances.

* :class:`StructureSignal` — the joint energy-force NTK posterior variance (PV) of the whole structure
  (the featurizer's rows: all parameters, energy row and k force combinations), divided by the
  structure's atom count. With labelled training forces its value is the **predicted RMS per-atom
  force error of the frame**, ``sqrt(mean_i |F_i - F_i^ref|^2)``, in eV/A. One number per frame.
* :class:`AtomSignal` — the last-layer (readout) posterior of each atom: a linear model of the
  atom's local energy on the per-atom features entering the model's readout (``embedding_fn``:
  CHGNet, SevenNet, the toy model). Its variance is the atom's local-energy uncertainty; with
  labelled training forces it is scaled to the **predicted force-error magnitude of that atom**,
  ``|F_i - F_i^ref|``, in eV/A. One number per atom; one forward pass per frame.

Without training forces (or ``calibrate="off"``) both are in **relative units**: the square root of
the variance over the mean leave-one-out variance of the training structures of the same
composition, so 1 is "as uncertain as a typical training structure left out of the training set",
and the eV/A value would be that number times the training set's RMS force residual.
"""
from __future__ import annotations

import numpy as np

from .._device import to_numpy
from ..blocks import Blocks
from ..calibration import calibrate, force_residual_sq, leave_one_out_variance
from ..errors import fail
from ..posterior import Posterior
from ..strata import composition_key

__all__ = ["StructureSignal", "AtomSignal", "atom_features", "has_atom_features", "UNIT_FORCE", "UNIT_RELATIVE"]

UNIT_FORCE = "eV/A"
UNIT_RELATIVE = "relative"


def _fit(residual_sq, loo, keys):
    """Calibration of ``loo`` against residuals (eV^2/A^2), or against 1 for relative units."""
    target = np.ones_like(loo) if residual_sq is None else residual_sq
    return calibrate(target, loo, keys)


def training_residual_sq(featurizer, training) -> np.ndarray | None:
    """Mean squared per-atom force-error norm ``mean_i |F_i - F_i^ref|^2`` of each labelled training
    structure under the featurizer's model (3x the per-component mean of :func:`force_residual_sq`)."""
    if training.forces is None:
        return None
    predicted = [featurizer.predict_forces(a) for a in training.structures]
    return 3.0 * force_residual_sq(predicted, training.forces)


class StructureSignal:
    """Structure-level joint-NTK posterior, calibrated per atom (see the module docstring).

    Parameters
    ----------
    featurizer : callable
        ``featurizer(list of Atoms) -> Blocks`` (e.g. :class:`ntkal.torch.Featurizer`, joint kernel).
    training : TrainingSet
    residual_sq : ndarray or None
        :func:`training_residual_sq` of the training set; None: relative units.
    noise_var : float
        Posterior noise variance.
    """

    def __init__(self, featurizer, training, residual_sq, noise_var: float):
        self.featurizer = featurizer
        self.posterior = Posterior(training.blocks.dim, noise_var=noise_var, precision="float64").add(training.blocks)
        loo = leave_one_out_variance(self.posterior, training.blocks)
        # per atom when the atom counts are known (a feature store does not record them)
        self.per_atom = training.n_atoms is not None
        if self.per_atom:
            loo = loo / training.n_atoms
        self.calibration = _fit(residual_sq, loo, training.keys)

    def variance(self, atoms) -> float:
        """Raw PV of the structure (trace over its feature rows, the featurizer's units)."""
        blocks = self.featurizer([atoms])
        return float(to_numpy(self.posterior.variance(blocks))[0])

    def __call__(self, atoms) -> float:
        """Predicted RMS per-atom force error of the frame (eV/A), or its relative value."""
        pv = self.variance(atoms) / (len(atoms) if self.per_atom else 1.0)
        key = composition_key(atoms) if self.per_atom else "*"
        return float(np.sqrt(max(self.calibration.scale_of(key) * pv, 0.0)))


def has_atom_features(featurizer) -> bool:
    """Whether the featurizer's model gives per-atom readout features (``embedding_fn``)."""
    model = getattr(featurizer, "base_model", None)
    return model is not None and getattr(model, "embedding_fn", None) is not None


def atom_features(featurizer, atoms) -> np.ndarray:
    """Per-atom features entering the model's readout, shape (N, F), float32."""
    features = featurizer.base_model.embedding(atoms)
    return np.ascontiguousarray(features.detach().cpu().numpy(), dtype=np.float32)


class AtomSignal:
    """Per-atom last-layer (readout) posterior, calibrated to per-atom force errors (see the module docstring).

    The training rows are the per-atom features of every training atom; a training structure's
    leave-one-out variance is the mean over its atoms with the whole structure left out
    (:func:`ntkal.calibration.leave_one_out_variance` with ``intensive=True``), matched by calibration to
    its mean squared per-atom force error.
    """

    def __init__(self, featurizer, training, residual_sq, noise_var: float):
        if training.structures is None:
            fail("Monitor", "the per-atom signal needs training structures (their per-atom "
                            "features); a feature store holds structure features only: use "
                            "signal='structure'")
        self.featurizer = featurizer
        blocks = Blocks.from_list([atom_features(featurizer, a) for a in training.structures])
        # scale=True: features normalised to a unit mean square, so noise_var means the same for every model
        self.posterior = Posterior(blocks.dim, noise_var=noise_var, scale=True, precision="float64").add(blocks)
        loo = leave_one_out_variance(self.posterior, blocks, intensive=True)
        self.calibration = _fit(residual_sq, loo, training.keys)

    def variance(self, atoms) -> np.ndarray:
        """Raw per-atom posterior variance, shape (N,)."""
        return np.asarray(to_numpy(self.posterior.variance(atom_features(self.featurizer, atoms))), dtype=np.float64)

    def __call__(self, atoms) -> np.ndarray:
        """Predicted force-error magnitude of each atom (eV/A), or its relative value, shape (N,)."""
        scale = self.calibration.scale_of(composition_key(atoms))
        return np.sqrt(np.maximum(scale * self.variance(atoms), 0.0))
