"""Loss-matched rows: the rows of a Loss give the gradient of the weighted fine-tuning loss (finite
differences), and bad losses are refused."""
import numpy as np
import pytest
from _require import require

torch = require("torch")
require("ase")

from ase.build import bulk  # noqa: E402

import ntkal  # noqa: E402
from ntkal.torch import Featurizer, Loss, models  # noqa: E402

H = 1e-5


@pytest.mark.parametrize("loss", [Loss(), Loss(2.0, 0.5, "total", "per_structure"), Loss(1.0, 3.0, "per_atom",
                                                                                          "per_structure")])
def test_loss_matched_rows_give_the_weighted_loss_gradient(loss):
    """grad L = 2 J_w^T r_w, with J_w the featurizer's weighted rows: checked by central differences of L."""
    model = models.toy(seed=3, hidden=3, n_radial=3)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms[1].symbol = "Au"
    atoms.rattle(0.08, seed=2)
    n = len(atoms)
    rng = np.random.default_rng(0)
    e_ref, f_ref = 0.3, rng.standard_normal((n, 3)) * 0.1
    theta0 = torch.cat([v.reshape(-1) for v in model.params.values()])

    def unflatten(vec):
        out, start = {}, 0
        for k, v in model.params.items():
            out[k] = vec[start:start + v.numel()].reshape(v.shape)
            start += v.numel()
        return out

    def energy_forces(theta):
        pos = model.positions(atoms, requires_grad=True)
        e = model.energy(atoms, unflatten(theta), pos)
        (g,) = torch.autograd.grad(e, pos)
        return float(e.detach()), -g.detach().numpy()

    per_atom = 1.0 / n if loss.energy == "per_atom" else 1.0
    per_comp = 1.0 / (3 * n) if loss.forces == "per_structure" else 1.0

    def L(theta):
        e, f = energy_forces(theta)
        return loss.energy_weight * ((e - e_ref) * per_atom) ** 2 + loss.force_weight * per_comp * np.sum((f - f_ref) ** 2)

    grad_fd = np.zeros(theta0.numel())
    for p in range(theta0.numel()):
        t = theta0.clone()
        t[p] += H
        plus = L(t)
        t[p] -= 2 * H
        grad_fd[p] = (plus - L(t)) / (2 * H)
    J = Featurizer(model, "joint", dim=8, loss=loss, force_rows="exact").jacobian(atoms)
    e, f = energy_forces(theta0)
    r = np.concatenate([[np.sqrt(loss.energy_weight) * per_atom * (e - e_ref)],
                        np.sqrt(loss.force_weight * per_comp) * (f - f_ref).reshape(-1)])
    grad = 2 * J.T @ r
    np.testing.assert_allclose(grad, grad_fd, atol=1e-6 * np.abs(grad_fd).max(), rtol=0)
    # sketched features carry the same weights: rows = weighted Jacobian x sketch
    feat = Featurizer(model, "joint", dim=8, loss=loss, force_rows="exact")
    unweighted = Featurizer(model, "joint", dim=8, force_rows="exact")
    we, wf = loss.row_weights(n)
    np.testing.assert_allclose(feat.features(atoms)[0], we * unweighted.features(atoms)[0], rtol=1e-6)
    np.testing.assert_allclose(feat.features(atoms)[1:], wf * unweighted.features(atoms)[1:], rtol=1e-6)
    assert feat.fingerprint() != unweighted.fingerprint()


def test_loss_rejects_bad_values():
    for kwargs, needle in ((dict(energy_weight=0), "energy_weight"), (dict(forces="mean"), "forces"),
                           (dict(energy="eV"), "energy")):
        with pytest.raises(ntkal.InvalidArgumentError, match=needle):
            Loss(**kwargs)
    with pytest.raises(ntkal.InvalidArgumentError, match="loss"):
        Featurizer(models.toy(), "joint", dim=8, loss={"energy_weight": 1}, force_rows="exact")
