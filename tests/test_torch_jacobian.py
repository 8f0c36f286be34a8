"""Jacobian routes and the Featurizer against finite differences on a tiny float64 model."""
import numpy as np
import pytest
from _require import require

torch = require("torch")
require("ase")

from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402

import ntkal  # noqa: E402
from ntkal.torch import Featurizer, FunctionalModel, force_combinations, models  # noqa: E402

H = 1e-5  # central-difference step (float64)


@pytest.fixture(scope="module")
def toy():
    return models.toy(seed=3, hidden=4, n_radial=3)


@pytest.fixture(scope="module")
def methanol():
    a = molecule("CH3OH")
    a.rattle(0.05, seed=1)
    return a


@pytest.fixture(scope="module")
def cu_cell():
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a[1].symbol = "Au"
    a.rattle(0.08, seed=2)
    return a


def flat_params(model):
    return torch.cat([v.reshape(-1) for v in model.params.values()])


def unflatten(model, vec):
    out, start = {}, 0
    for k, v in model.params.items():
        out[k] = vec[start:start + v.numel()].reshape(v.shape)
        start += v.numel()
    return out


def energy_at(model, atoms, theta, positions=None):
    pos = model.positions(atoms) if positions is None else positions
    return float(model.energy(atoms, unflatten(model, theta), pos))


def forces_at(model, atoms, theta):
    pos = model.positions(atoms, requires_grad=True)
    e = model.energy(atoms, unflatten(model, theta), pos)
    (g,) = torch.autograd.grad(e, pos)
    return -g.reshape(-1).numpy()


def fd_energy_row(model, atoms):
    theta = flat_params(model)
    row = np.zeros(theta.numel())
    for p in range(theta.numel()):
        e = theta.clone()
        e[p] += H
        plus = energy_at(model, atoms, e)
        e[p] -= 2 * H
        row[p] = (plus - energy_at(model, atoms, e)) / (2 * H)
    return row


def fd_force_rows(model, atoms):
    """dF/dtheta by central differences in theta of the model's forces (3N x P)."""
    theta = flat_params(model)
    J = np.zeros((3 * len(atoms), theta.numel()))
    for p in range(theta.numel()):
        e = theta.clone()
        e[p] += H
        plus = forces_at(model, atoms, e)
        e[p] -= 2 * H
        J[:, p] = (plus - forces_at(model, atoms, e)) / (2 * H)
    return J


def assert_close(a, b, rtol=1e-6):
    scale = max(np.abs(b).max(), 1e-12)
    np.testing.assert_allclose(a, b, atol=rtol * scale, rtol=0)


@pytest.mark.parametrize("which", ["methanol", "cu_cell"])
def test_energy_row_matches_finite_differences(toy, which, request):
    atoms = request.getfixturevalue(which)
    J = Featurizer(toy, "energy", dim=8).jacobian(atoms)
    assert J.shape == (1, toy.n_params) and J.dtype == np.float64
    assert_close(J[0], fd_energy_row(toy, atoms))


@pytest.mark.parametrize("which", ["methanol", "cu_cell"])
def test_exact_force_rows_match_finite_differences(toy, which, request):
    atoms = request.getfixturevalue(which)
    J = Featurizer(toy, "force", dim=8, force_rows="exact").jacobian(atoms)
    assert J.shape == (3 * len(atoms), toy.n_params)
    assert_close(J, fd_force_rows(toy, atoms))


def test_force_rows_are_mixed_second_derivatives(toy, methanol):
    """u^T J_F v = -d2E/dR dtheta [u, v], by a 4-point difference in positions and parameters."""
    J = Featurizer(toy, "force", dim=8, force_rows="exact").jacobian(methanol)
    theta = flat_params(toy)
    pos0 = toy.positions(methanol)
    rng = np.random.default_rng(0)
    h = 1e-4
    for _ in range(4):
        u = torch.as_tensor(rng.standard_normal((len(methanol), 3)))
        v = torch.as_tensor(rng.standard_normal(theta.numel()))
        e = {(a, b): energy_at(toy, methanol, theta + a * h * v, pos0 + b * h * u) for a in (1, -1) for b in (1, -1)}
        mixed = (e[1, 1] - e[1, -1] - e[-1, 1] + e[-1, -1]) / (4 * h * h)
        got = u.reshape(-1).numpy() @ J @ v.numpy()
        assert got == pytest.approx(-mixed, rel=1e-5, abs=1e-7)


def test_forces_are_minus_energy_gradient(toy, cu_cell):
    theta = flat_params(toy)
    F = forces_at(toy, cu_cell, theta)
    pos = toy.positions(cu_cell)
    for c in range(F.size):
        d = torch.zeros_like(pos).reshape(-1)
        d[c] = H
        d = d.reshape(pos.shape)
        fd = (energy_at(toy, cu_cell, theta, pos + d) - energy_at(toy, cu_cell, theta, pos - d)) / (2 * H)
        assert F[c] == pytest.approx(-fd, rel=1e-6, abs=1e-8)


def test_joint_rows_order_and_weights(toy, methanol):
    E = Featurizer(toy, "energy", dim=8).jacobian(methanol)
    Fr = Featurizer(toy, "force", dim=8, force_rows="exact").jacobian(methanol)
    J = Featurizer(toy, "joint", dim=8, energy_weight=2.0, force_weight=0.5, force_rows="exact").jacobian(methanol)
    assert J.shape == (1 + 3 * len(methanol), toy.n_params)
    np.testing.assert_allclose(J[0], 2.0 * E[0], rtol=1e-12)
    np.testing.assert_allclose(J[1:], 0.5 * Fr, rtol=1e-12, atol=1e-14)


def test_k_force_rows_are_random_combinations(toy, methanol):
    k = 5
    exact = Featurizer(toy, "force", dim=8, force_rows="exact").jacobian(methanol)
    J = Featurizer(toy, "joint", dim=8, force_rows=k, seed=7, force_method="autograd").jacobian(methanol)
    U = force_combinations(methanol, k, 7)
    assert U.shape == (k, 3 * len(methanol))
    assert np.all(np.abs(np.abs(U) * np.sqrt(k) - 1) < 1e-12)
    np.testing.assert_allclose(J[1:], U @ exact, rtol=1e-10, atol=1e-12)
    # the default estimator: forward differences of energy gradients along each row of U (O(h) error)
    def rows(**kw):
        D = Featurizer(toy, "joint", dim=8, force_rows=k, seed=7, **kw).jacobian(methanol)
        np.testing.assert_allclose(D[0], J[0], rtol=1e-12, atol=1e-15)  # the batched pass: the same energy row
        return np.linalg.norm(D[1:] - U @ exact, axis=1) / np.linalg.norm(U @ exact, axis=1)

    assert rows().max() < 1e-4  # float64: h = 1e-6
    coarse, finer = rows(difference_step=1e-3), rows(difference_step=1e-4)
    assert coarse.max() < 0.1 and np.all(finer < coarse / 5), (finer, coarse)  # first order in h
    # U follows (seed, atomic numbers): moved atoms keep it; another seed or composition changes it
    moved = methanol.copy()
    moved.rattle(0.1, seed=9)
    np.testing.assert_array_equal(U, force_combinations(moved, k, 7))
    assert not np.array_equal(U, force_combinations(methanol, k, 8))
    swapped = methanol.copy()
    swapped.numbers[[0, 1]] = swapped.numbers[[1, 0]]
    assert not np.array_equal(U, force_combinations(swapped, k, 7))
    # each k-row is d(u.F)/dtheta: check one row against finite differences
    theta = flat_params(toy)
    p = int(np.argmax(np.abs(J[2])))
    e = theta.clone()
    e[p] += H
    plus = U[1] @ forces_at(toy, methanol, e)
    e[p] -= 2 * H
    assert J[2, p] == pytest.approx((plus - U[1] @ forces_at(toy, methanol, e)) / (2 * H), rel=1e-6)


def test_k_row_gram_is_unbiased(methanol):
    """E[U^T U] = I, so the k-row Gram estimates J_F^T J_F without bias."""
    n = 3 * len(methanol)
    mean = np.mean([force_combinations(methanol, 4, s).T @ force_combinations(methanol, 4, s)
                    for s in range(2000)], axis=0)
    assert np.abs(np.diag(mean) - 1).max() < 1e-12
    assert np.abs(mean - np.eye(n)).max() < 0.1  # off-diagonals average to 0 (std ~ 1/sqrt(8000))


@pytest.mark.parametrize("which", ["methanol", "cu_cell"])
def test_force_rows_sum_to_zero_over_atoms(toy, which, request):
    atoms = request.getfixturevalue(which)
    J = Featurizer(toy, "force", dim=8, force_rows="exact").jacobian(atoms)
    total = J.reshape(len(atoms), 3, -1).sum(axis=0)
    assert np.abs(total).max() < 1e-12 * max(1.0, np.abs(J).max())
    assert np.abs(J).max() > 1e-3  # the rows themselves are not zero


def test_last_layer_and_patterns_select_columns(toy, methanol):
    full = Featurizer(toy, "joint", dim=8, force_rows="exact").jacobian(methanol)
    cols = toy.column_offsets()
    names = toy.names
    readout = np.concatenate([np.arange(cols[i], cols[i + 1]) for i, n in enumerate(names) if n.startswith("readout.")])
    last = Featurizer(toy, "last_layer", dim=8, force_rows="exact").jacobian(methanol)
    np.testing.assert_array_equal(last, full[:, readout])
    radial = np.arange(cols[names.index("radial.weight")], cols[names.index("radial.weight") + 1])
    sub = Featurizer(toy, "force", dim=8, params=["radial.*"], force_rows="exact").jacobian(methanol)
    np.testing.assert_array_equal(sub, full[1:, radial])


def test_unused_parameters_give_zero_columns(methanol):
    base = models.toy(seed=1)
    params = dict(base.params)
    params["unused.scale"] = torch.ones(3, dtype=torch.float64)
    model = FunctionalModel(base.energy_fn, params, supported_numbers=base.supported_numbers)
    f = Featurizer(model, "joint", dim=16, chunk_size=5, force_rows="exact")
    J = f.jacobian(methanol)
    assert np.all(J[:, -3:] == 0)
    np.testing.assert_allclose(f.features(methanol), f.sketch.project(J), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel,force_rows", [("energy", "exact"), ("force", "exact"), ("joint", "exact"),
                                                ("joint", 3), ("force", 2), ("last_layer", "exact")])
@pytest.mark.parametrize("sketch", ["sparse_sign", "gaussian"])
def test_projected_rows_equal_sketch_of_jacobian(toy, cu_cell, kernel, force_rows, sketch):
    f = Featurizer(toy, kernel, dim=32, sketch=sketch, seed=5, force_rows=force_rows, chunk_size=11, row_batch=3)
    J = f.jacobian(cu_cell)
    ref = ntkal.Sketch(f.n_params, 32, kind=sketch, seed=5).project(J)
    got = f.features(cu_cell)
    assert got.shape == (f.n_rows(cu_cell), 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_chunked_projection_equals_whole(toy, methanol):
    whole = Featurizer(toy, "joint", dim=64, chunk_size=10**6, row_batch=100, force_rows="exact").features(methanol)
    for chunk, batch in ((1, 1), (7, 2), (50, 5)):
        part = Featurizer(toy, "joint", dim=64, chunk_size=chunk, row_batch=batch, force_rows="exact").features(methanol)
        np.testing.assert_allclose(part, whole, rtol=1e-5, atol=1e-5 * np.abs(whole).max())


def test_embedding_kernel_is_pooled_features(toy, cu_cell):
    f = Featurizer(toy, "embedding")
    row = f.features(cu_cell)
    per_atom = toy.embedding(cu_cell).numpy()
    assert row.shape == (1, per_atom.shape[1]) == (1, f.dim)
    np.testing.assert_allclose(row[0], per_atom.mean(axis=0), rtol=1e-6)


def test_call_returns_blocks(toy, methanol, cu_cell):
    structures = [methanol, cu_cell, molecule("H2O")]
    f1 = Featurizer(toy, "joint", dim=16, force_rows=2)
    blocks = f1(structures)
    assert isinstance(blocks, ntkal.Blocks)
    assert blocks.sizes.tolist() == [3, 3, 3]
    np.testing.assert_array_equal(blocks[1], f1.features(cu_cell))


@pytest.mark.parametrize("kwargs,needle", [
    (dict(kernel="ntk"), "kernel"),
    (dict(kernel="energy", force_rows=4), "force_rows"),
    (dict(kernel="joint", force_rows=0), "force_rows"),
    (dict(kernel="joint", sketch="dense"), "sketch"),
    (dict(kernel="joint", dim=0), "dim"),
    (dict(kernel="embedding", params="readout"), "params"),
    (dict(kernel="last_layer", params=["embedding.*"]), "params"),
    (dict(kernel="joint", params=["nothing.*"]), "params"),
    (dict(kernel="joint", energy_weight=-1.0), "energy_weight"),
])
def test_bad_featurizer_arguments(toy, kwargs, needle):
    with pytest.raises(ntkal.InvalidArgumentError, match=needle):
        Featurizer(toy, **kwargs)


def test_bad_structures(toy, methanol):
    f = Featurizer(toy, "joint", dim=8, force_rows="exact")
    nan = methanol.copy()
    nan.positions[2, 1] = np.nan
    with pytest.raises(ntkal.InvalidArgumentError, match="structures\\[1\\] positions must be finite"):
        f([methanol, nan])
    with pytest.raises(ntkal.InvalidArgumentError, match="does not support: Fe"):
        f.features(Atoms("Fe2", positions=[[0, 0, 0], [0, 0, 2]]))
    with pytest.raises(ntkal.InvalidArgumentError, match="empty"):
        f([])
    with pytest.raises(ntkal.InvalidArgumentError, match="ase.Atoms"):
        f.features("H2O")
