"""An ASE calculator over a :class:`FunctionalModel`: energy, and forces by autograd of that energy."""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from ..errors import fail
from .functional import FunctionalModel

__all__ = ["ModelCalculator"]


class ModelCalculator(Calculator):
    """Drive ASE (molecular dynamics, relaxations) with an ntkal model.

    ``energy`` is the model's total energy (eV); ``forces`` are ``-dE/dpositions`` by one reverse pass
    (eV/Å), so they are the forces of exactly the energy the featurizer differentiates.

    Parameters
    ----------
    model : FunctionalModel
        E.g. ``ntkal.torch.models.chgnet()``; a parameter subset (``model.select(...)``) gives the same
        energy.
    threads : int or None
        torch intra-op threads during a call (None: torch's setting).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, model: FunctionalModel, *, threads: int | None = None, **kwargs):
        if not isinstance(model, FunctionalModel):
            fail("ModelCalculator", f"model must be an ntkal.torch.FunctionalModel; got "
                                    f"{type(model).__name__}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            fail("ModelCalculator", f"threads must be None or an integer >= 1; got {threads!r}")
        super().__init__(**kwargs)
        self.model = model
        self.threads = threads

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.model.check(self.atoms, where="ModelCalculator", arg="atoms")
        saved = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            positions = self.model.positions(self.atoms, requires_grad=True)
            energy = self.model.energy(self.atoms, positions=positions)
            (grad,) = torch.autograd.grad(energy, positions)
        finally:
            if self.threads is not None:
                torch.set_num_threads(saved)
        value = float(energy.detach().cpu())
        self.results = {"energy": value, "free_energy": value,
                        "forces": -grad.detach().cpu().numpy().astype(np.float64)}

    def __repr__(self) -> str:
        return f"ModelCalculator(model={self.model.name!r})"
