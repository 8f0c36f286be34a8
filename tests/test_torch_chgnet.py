"""Real pretrained CHGNet through the FunctionalModel adapter (small cells; a few seconds)."""
import contextlib
import io

import numpy as np
import pytest
from _require import require

torch = require("torch")
require("chgnet")

from ase import Atoms  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402

import ntkal  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return models.chgnet()


@pytest.fixture(scope="module")
def native():
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()):
        return CHGNet.load(verbose=False, use_device="cpu")


@pytest.fixture(scope="module")
def si():
    a = bulk("Si", "diamond", a=5.43)
    a.rattle(0.05, seed=0)
    return a


def native_prediction(native, atoms, cell=None):
    from pymatgen.core import Lattice, Structure

    cell = np.asarray(atoms.cell) if cell is None else cell
    s = Structure(Lattice(cell), atoms.get_chemical_symbols(), atoms.positions, coords_are_cartesian=True)
    return native.predict_structure(s, task="ef")


def energy_and_forces(model, atoms):
    pos = model.positions(atoms, requires_grad=True)
    e = model.energy(atoms, None, pos)
    (g,) = torch.autograd.grad(e, pos)
    return float(e.detach()), -g.numpy()


def test_adapter_matches_chgnet_energy_and_forces(model, native, si):
    assert model.n_params == 412431 and model.dtype == torch.float32
    e, f = energy_and_forces(model, si)
    ref = native_prediction(native, si)
    assert e == pytest.approx(ref["e"] * len(si), rel=1e-5)  # CHGNet predicts eV/atom
    np.testing.assert_allclose(f, ref["f"], atol=1e-4)


def test_molecule_is_boxed(model, native):
    mol = molecule("CH3OH")
    e, f = energy_and_forces(model, mol)
    from ntkal.torch.cells import molecule_box as _molecule_box

    ref = native_prediction(native, mol, cell=_molecule_box(mol, 6.0))
    assert e == pytest.approx(ref["e"] * len(mol), rel=1e-5)
    np.testing.assert_allclose(f, ref["f"], atol=1e-4)
    assert abs(f.sum(axis=0)).max() < 1e-3  # no spurious image forces


def test_features_equal_sketch_of_jacobian(model, si):
    for kernel, rows, kw in (("energy", 1, {}), ("last_layer", 3, {"force_rows": 2})):
        f = Featurizer(model, kernel, dim=128, seed=1, **kw)
        J = f.jacobian(si)
        assert J.shape == (rows, f.n_params)
        ref = ntkal.Sketch(f.n_params, 128, seed=1).project(J)
        np.testing.assert_allclose(f.features(si), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    assert Featurizer(model, "last_layer", force_rows="exact").n_params == 12673


def test_energy_row_matches_directional_difference(model, si):
    """g . v against (E(theta + h v) - E(theta - h v)) / 2h along the gradient's own direction."""
    g = Featurizer(model, "energy", dim=8).jacobian(si)[0].astype(np.float64)
    v = g / np.linalg.norm(g)
    h = 1e-3
    names, sizes = model.names, model.sizes
    vs = np.split(v, np.cumsum(sizes)[:-1])

    def shifted(sign):
        return {k: model.params[k] + sign * h * torch.as_tensor(x.reshape(model.params[k].shape), dtype=torch.float32)
                for k, x in zip(names, vs)}

    fd = (float(model.energy(si, shifted(1))) - float(model.energy(si, shifted(-1)))) / (2 * h)
    assert fd == pytest.approx(np.linalg.norm(g), rel=2e-2)


def test_exact_force_rows_sum_to_zero_over_atoms(model, si):
    J = Featurizer(model, "force", dim=8, params="readout", force_rows="exact").jacobian(si)
    assert J.shape == (6, 12673)
    assert np.abs(J.reshape(2, 3, -1).sum(axis=0)).max() < 1e-4 * np.abs(J).max()


def test_embedding_and_errors(model, si):
    row = Featurizer(model, "embedding").features(si)
    assert row.shape == (1, 64) and np.all(np.isfinite(row))
    f = Featurizer(model, "joint", dim=16, force_rows=2)
    with pytest.raises(ntkal.InvalidArgumentError, match="does not support: Fm"):
        f.features(Atoms("Fm2", positions=[[0, 0, 0], [0, 0, 2.5]], cell=[6, 6, 6], pbc=True))
    # a bulk cell marked non-periodic along z is a slab with almost no vacuum: accepted, with a warning
    slab = si.copy()
    slab.pbc = [True, True, False]
    with pytest.warns(UserWarning, match="shorter than the model's cutoff"):
        assert np.all(np.isfinite(f.features(slab)))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ntkal.InvalidArgumentError, match="checkpoint file not found"):
        models.chgnet(checkpoint=tmp_path / "none.pth.tar")
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ntkal.InvalidArgumentError, match="weights_only=True"):
        models.chgnet(checkpoint=bad)
    with pytest.raises(ntkal.InvalidArgumentError, match="version"):
        models.chgnet("9.9.9")


def test_fine_tuned_checkpoint_saved_by_chgnet(native, si, tmp_path):
    """A fine-tuned model saved as CHGNet's Trainer saves one ({"model": as_dict()}, whose model_args carry
    version and mlp_out_bias) loads, and the adapter predicts what that model predicts."""
    import copy

    tuned = copy.deepcopy(native)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if name.startswith("mlp."):
                p.mul_(1.05)
    path = tmp_path / "tuned.pth.tar"
    torch.save({"model": tuned.as_dict()}, path)
    adapter = models.chgnet(checkpoint=path)
    e, f = energy_and_forces(adapter, si)
    ref = native_prediction(tuned, si)
    assert abs(e - native_prediction(native, si)["e"] * len(si)) > 1e-3  # the change is visible
    assert e == pytest.approx(ref["e"] * len(si), rel=1e-5)
    np.testing.assert_allclose(f, ref["f"], atol=1e-4)


def _slab(vacuum=8.0):
    from ase.build import add_adsorbate, fcc111

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=vacuum)  # pbc = (True, True, False), as users build them
    add_adsorbate(slab, "O", 1.8, "fcc")
    slab.rattle(0.02, seed=3)
    return slab


def test_slab_with_adsorbate_matches_chgnet_on_the_same_cell(model, native):
    slab = _slab()
    assert slab.pbc.tolist() == [True, True, False]
    e, f = energy_and_forces(model, slab)
    ref = native_prediction(native, slab)  # CHGNet itself treats the cell as periodic, vacuum included
    assert e == pytest.approx(ref["e"] * len(slab), rel=1e-5)
    np.testing.assert_allclose(f, ref["f"], atol=1e-4)


def test_thin_vacuum_warns_and_features_still_come(model):
    slab = _slab(vacuum=2.0)
    with pytest.warns(UserWarning, match="vacuum along non-periodic cell vector 2 is .* shorter than the model's cutoff"):
        rows = Featurizer(model, "joint", dim=32, force_rows=2, progress=False).features(slab)
    assert rows.shape == (3, 32) and np.all(np.isfinite(rows))


def test_slab_force_rows_sum_to_zero_and_mixed_pool(model, si):
    slab, mol = _slab(), molecule("H2O")
    feat = Featurizer(model, "force", dim=16, progress=False, force_rows="exact")
    J = feat.jacobian(slab)
    np.testing.assert_allclose(J.reshape(len(slab), 3, -1).sum(axis=0), 0.0, atol=2e-4 * np.abs(J).max())
    blocks = Featurizer(model, "joint", dim=16, force_rows=2, progress=False)([si, slab, mol])
    assert len(blocks) == 3 and np.all(np.isfinite(blocks.rows))


def test_isolated_atom_is_refused_up_front_with_its_index(model, si):
    from ntkal.acquire import acquire

    lone = Atoms("CuO", positions=[[0, 0, 0], [0, 0, 9.0]], pbc=False)  # 9 A apart: O has no neighbour
    feat = Featurizer(model, "energy", dim=8, progress=False)
    with pytest.raises(ntkal.InvalidArgumentError, match=r"pool\[1\] has 2 atom\(s\) with no neighbour within CHGNet's 6 A"):
        acquire(feat, [si], [si, lone], 1, progress=False)
