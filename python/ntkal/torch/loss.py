"""The fine-tuning loss that feature rows are matched to.

The posterior over a linearised model is the model's uncertainty only if each Jacobian row carries
the weight its residual has in the loss. For

    L = sum_structures [ w_E (dE / N)^2 + w_F * sum_c dF_c^2 * (1 / 3N if per structure) ],

the Gauss-Newton matrix is J_w^T J_w with the energy row sqrt(w_E)/N dE/dtheta (per-atom energy) or
sqrt(w_E) dE/dtheta (total energy), and each force row sqrt(w_F) dF_c/dtheta (a sum over components,
which is the usual mean over all components of a batch up to a constant: set w_F = force loss weight /
(3 * mean atoms per structure) to keep its ratio to a per-structure energy mean), or
sqrt(w_F / 3N) dF_c/dtheta (a mean over each structure's components).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .._validation import as_positive_float
from ..options import LOSS_ENERGY_TERMS, LOSS_FORCE_TERMS, choice

__all__ = ["Loss"]


@dataclass(frozen=True)
class Loss:
    """Weights of a fine-tuning loss, for :class:`ntkal.torch.Featurizer`'s ``loss``.

    Parameters
    ----------
    energy_weight, force_weight : float
        w_E and w_F (> 0).
    energy : {"per_atom", "total"}
        Energy residual per atom (E/N; CHGNet's, MACE's default) or total.
    forces : {"per_component", "per_structure"}
        Force residuals summed over components (a batch mean over all components, up to a constant)
        or averaged over each structure's 3N components.
    """

    energy_weight: float = 1.0
    force_weight: float = 1.0
    energy: str = "per_atom"
    forces: str = "per_component"

    def __post_init__(self):
        for name in ("energy_weight", "force_weight"):
            as_positive_float(getattr(self, name), "Loss", name)
        choice(self.energy, LOSS_ENERGY_TERMS, "Loss", "energy")
        choice(self.forces, LOSS_FORCE_TERMS, "Loss", "forces")

    def row_weights(self, n_atoms: int) -> tuple[float, float]:
        """(energy row weight, force row weight) of a structure with ``n_atoms`` atoms."""
        n = float(n_atoms)
        energy = np.sqrt(self.energy_weight) / (n if self.energy == "per_atom" else 1.0)
        force = np.sqrt(self.force_weight / (3.0 * n if self.forces == "per_structure" else 1.0))
        return float(energy), float(force)

    def weight_rows(self, rows, n_atoms: int, *, energy_row: bool, force_rows: bool):
        """``rows`` (one structure's block: its energy row first when ``energy_row``, then its force rows when
        ``force_rows``) multiplied in place by :meth:`row_weights`; returned. Weighting sketched rows is exact
        (the sketch is linear)."""
        energy, force = self.row_weights(n_atoms)
        first = 0
        if energy_row:
            rows[:1] *= energy
            first = 1
        if force_rows:
            rows[first:] *= force
        return rows

    def config(self) -> dict:
        return asdict(self)
