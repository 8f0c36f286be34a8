"""SevenNet-0 through the FunctionalModel adapter (second architecture; slow: e3nn model build)."""
import warnings

import numpy as np
import pytest
from _require import require

torch = require("torch")
require("sevenn")

from ase.build import bulk, molecule  # noqa: E402

import ntkal  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model():
    return models.sevennet()


@pytest.fixture(scope="module")
def calculator():
    from sevenn.calculator import SevenNetCalculator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SevenNetCalculator("7net-0", device="cpu")


def assert_matches_calculator(model, atoms, calculator):
    """The adapter's energy and forces (autograd) equal SevenNet's own ASE calculator on ``atoms``."""
    pos = model.positions(atoms, requires_grad=True)
    e = model.energy(atoms, None, pos)
    (g,) = torch.autograd.grad(e, pos)
    ref = atoms.copy()
    ref.calc = calculator
    assert float(e.detach()) == pytest.approx(ref.get_potential_energy(), rel=1e-5)
    np.testing.assert_allclose(-g.numpy(), ref.get_forces(), atol=1e-4)


@pytest.mark.parametrize("which", ["cell", "molecule"])
def test_adapter_matches_sevennet_calculator(model, calculator, which):
    if which == "cell":
        atoms = bulk("Si", "diamond", a=5.43)
        atoms.rattle(0.05, seed=0)
    else:
        atoms = molecule("CH3OH")
    assert_matches_calculator(model, atoms, calculator)


def test_features_and_rows(model):
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=1)
    assert model.n_params == 842440
    f = Featurizer(model, "last_layer", dim=64, force_rows=2)
    J = f.jacobian(atoms)
    assert J.shape == (3, f.n_params)
    ref = ntkal.Sketch(f.n_params, 64).project(J)
    np.testing.assert_allclose(f.features(atoms), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    F = Featurizer(model, "force", dim=8, params="readout", force_rows="exact").jacobian(atoms)
    assert np.abs(F.reshape(2, 3, -1).sum(axis=0)).max() < 1e-4 * np.abs(F).max()
    assert Featurizer(model, "embedding").features(atoms).shape == (1, 128)


def test_unsupported_element_and_bad_checkpoint(model, tmp_path):
    from ase import Atoms

    with pytest.raises(ntkal.InvalidArgumentError, match="does not support"):
        Featurizer(model, "energy", dim=8).features(Atoms("Fm2", positions=[[0, 0, 0], [0, 0, 2.5]]))
    bad = tmp_path / "x.pth"
    bad.write_bytes(b"garbage")
    with pytest.raises(ntkal.InvalidArgumentError, match="weights_only=True"):
        models.sevennet(checkpoint=bad)


def test_slab_with_adsorbate_matches_the_calculator(model, calculator):
    from ase.build import add_adsorbate, fcc111

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=8.0)  # pbc = (True, True, False)
    add_adsorbate(slab, "O", 1.8, "fcc")
    slab.rattle(0.02, seed=4)
    assert_matches_calculator(model, slab, calculator)


@pytest.mark.parametrize("name,modal", [("7net-0_22May2024", None), ("7net-l3i5", None), ("7net-mf-0", "PBE")])
def test_every_shipped_checkpoint_by_name_matches_its_calculator(name, modal):
    from ase.build import bulk
    from sevenn.calculator import SevenNetCalculator

    si = bulk("Si", "diamond", a=5.43)
    si.rattle(0.03, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = models.load(name, modal=modal)
        ref = si.copy()
        ref.calc = SevenNetCalculator(name, modal=modal, device="cpu")
        expect = ref.get_potential_energy()
    pos = m.positions(si, requires_grad=True)
    assert float(m.energy(si, None, pos).detach()) == pytest.approx(expect, rel=1e-5)
    assert name.lower() in m.name


def test_sevennet_names_and_modal_errors():
    with pytest.raises(ntkal.InvalidArgumentError, match="name must be one of the checkpoints the sevenn wheel ships"):
        models.sevennet("7net-omat")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ntkal.InvalidArgumentError, match="modal must be one of"):
            models.sevennet("7net-mf-0")
        with pytest.raises(ntkal.InvalidArgumentError, match="single fidelity"):
            models.sevennet("7net-0", modal="PBE")


@pytest.mark.parametrize("name,modal", [("7net-0", None), ("7net-0_22May2024", None), ("7net-l3i5", None),
                                        ("7net-mf-0", "PBE")])
def test_every_shipped_checkpoint_featurizes_many_structures_per_pass(name, modal):
    """Batched rows of a ragged batch (cell, molecule, slab) equal the per-structure loop; nothing falls back."""
    from _batched import batched_same_and_exact
    from ase.build import add_adsorbate, fcc111

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = models.load(name, modal=modal)
    si = bulk("Si", "diamond", a=5.43)
    si.rattle(0.03, seed=2)
    mol = molecule("CH3OH")
    mol.rattle(0.03, seed=3)
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=6.0)
    add_adsorbate(slab, "O", 1.9, "fcc")
    structures = [si, mol, slab]
    got, same, exact = batched_same_and_exact(m, structures, 64)
    rel = lambda a, b: float(np.linalg.norm(a - b) / np.linalg.norm(b))  # noqa: E731
    for i in range(len(structures)):
        assert rel(got[i][0], same[i][0]) < 1e-5, (name, i)  # energy rows: one pass for all vs one each
        assert rel(got[i][1:], same[i][1:]) < 0.02 and rel(got[i][1:], exact[i][1:]) < 0.05, (name, i)
