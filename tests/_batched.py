"""The batched featurizer against its one-at-a-time loop: shared by the per-model test files."""
from __future__ import annotations

import warnings


def batched_same_and_exact(model, structures, dim: int):
    """Joint features of ``structures`` three ways: many per pass (checking that the adapter splits every
    parameter and that the one-time check moves none to the loop), the loop with the same difference force
    rows, and the loop with exact mixed-derivative rows."""
    from ntkal.torch import Featurizer, FunctionalModel
    from ntkal.torch.batched import GradientPlan

    assert GradientPlan.build(model.batched, model.names).fallback == []
    loop = FunctionalModel(model.energy_fn, model.params, frozen=model.frozen, name=model.name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        got = Featurizer(model, "joint", dim=dim)(structures)
    same = Featurizer(loop, "joint", dim=dim)(structures)
    exact = Featurizer(loop, "joint", dim=dim, force_method="autograd")(structures)
    return got, same, exact
