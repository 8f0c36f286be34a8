"""MACE through the FunctionalModel adapter, on a small MACE built from scratch (float64, tiny
irreps): energies and forces equal MACE's own, Jacobian rows equal finite differences, force rows
sum to zero, save -> load round trip, safe loading by default, and mace's own calculator agrees.

mace-torch pins e3nn 0.4.4 while sevenn needs a newer e3nn, so MACE cannot share the test extra's
environment: .ci/run installs ``.[mace]`` in an environment of its own, sets NTKAL_MACE_ENV=1 and
runs this file there (where a missing mace is a failure). Elsewhere the file skips, saying so."""

from __future__ import annotations

import os

import numpy as np
import pytest

try:
    import torch

    torch.serialization.add_safe_globals([slice])  # e3nn 0.4.4 loads its constants with torch.load
    import mace  # noqa: F401
except ImportError as exc:
    if os.environ.get("NTKAL_MACE_ENV") == "1":
        pytest.fail(f"mace-torch is not importable in the [mace] environment: {exc!r}", pytrace=False)
    pytest.skip("mace-torch is not in this environment (it pins e3nn 0.4.4, sevenn needs a newer one); .ci/run tests "
                "MACE in its own [mace] environment", allow_module_level=True)

from ase import Atoms  # noqa: E402
from ase.build import add_adsorbate, bulk, fcc111, molecule  # noqa: E402

import ntkal  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402

Z = [1, 6, 8, 29]


def small_mace(seed=0):
    from e3nn import o3
    from mace import modules

    torch.manual_seed(seed)
    net = modules.MACE(
        r_max=4.0, num_bessel=4, num_polynomial_cutoff=3, max_ell=1,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2, num_elements=len(Z), hidden_irreps=o3.Irreps("4x0e+4x1o"), MLP_irreps=o3.Irreps("4x0e"),
        atomic_energies=np.array([-1.0, -5.0, -4.0, -3.0]), avg_num_neighbors=6.0, atomic_numbers=Z, correlation=2,
        gate=torch.nn.functional.silu)
    return net.double()


@pytest.fixture(scope="module")
def net():
    return small_mace()


@pytest.fixture(scope="module")
def model(net):
    return models.mace(net)


def structures():
    mol = molecule("CH3OH")
    mol.rattle(0.05, seed=1)
    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    cell.rattle(0.05, seed=2)
    slab = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    return {"molecule": mol, "cell": cell, "slab": slab}


def native(net, atoms):
    from mace import data, tools
    from mace.tools import torch_geometric

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ad = data.AtomicData.from_config(data.config_from_atoms(atoms), z_table=tools.AtomicNumberTable(Z), cutoff=4.0)
    finally:
        torch.set_default_dtype(previous)
    batch = next(iter(torch_geometric.dataloader.DataLoader([ad], batch_size=1, shuffle=False))).to_dict()
    batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    out = net(batch, compute_force=True)
    return float(out["energy"]), out["forces"].detach().numpy()


def energy_and_forces(model, atoms):
    pos = model.positions(atoms, requires_grad=True)
    e = model.energy(atoms, None, pos)
    (g,) = torch.autograd.grad(e, pos)
    return float(e.detach()), -g.numpy()


@pytest.mark.parametrize("which", ["molecule", "cell", "slab"])
def test_energy_and_forces_equal_mace(model, net, which):
    atoms = structures()[which]
    e, f = energy_and_forces(model, atoms)
    e_ref, f_ref = native(net, atoms)
    assert e == pytest.approx(e_ref, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(f, f_ref, atol=1e-10)


def test_jacobian_rows_equal_finite_differences(model):
    atoms = structures()["cell"]
    J = Featurizer(model, "joint", dim=8, progress=False, force_rows="exact").jacobian(atoms)  # energy row + 3N force rows
    assert J.shape == (1 + 3 * len(atoms), model.n_params)
    rng = np.random.default_rng(0)
    flat = torch.cat([p.reshape(-1) for p in model.params.values()])
    h = 1e-5
    for j in rng.choice(model.n_params, size=12, replace=False):
        vals = []
        for sign in (1, -1):
            theta = flat.clone()
            theta[j] += sign * h
            params, off = {}, 0
            for k, p in model.params.items():
                params[k] = theta[off:off + p.numel()].reshape(p.shape)
                off += p.numel()
            pos = model.positions(atoms, requires_grad=True)
            e = model.energy(atoms, params, pos)
            (g,) = torch.autograd.grad(e, pos)
            vals.append(np.concatenate([[float(e.detach())], -g.numpy().reshape(-1)]))
        fd = (vals[0] - vals[1]) / (2 * h)
        np.testing.assert_allclose(J[:, j], fd, rtol=1e-5, atol=1e-7)


def test_many_structures_per_pass_equal_the_loop(model):
    """Batched rows (symmetric contractions, e3nn linears, radial networks split per structure) against the
    loop: energy rows to float64 rounding, difference force rows against exact mixed derivatives."""
    from _batched import batched_same_and_exact

    batch = list(structures().values())
    got, same, exact = batched_same_and_exact(model, batch, 32)
    for i in range(len(batch)):
        np.testing.assert_allclose(got[i][0], same[i][0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got[i][1:], same[i][1:], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(got[i][1:], exact[i][1:], rtol=1e-4, atol=1e-5 * np.abs(exact[i]).max())


def test_force_rows_sum_to_zero_over_atoms(model):
    atoms = structures()["molecule"]
    J = Featurizer(model, "force", dim=8, progress=False, force_rows="exact").jacobian(atoms)
    np.testing.assert_allclose(J.reshape(len(atoms), 3, -1).sum(axis=0), 0.0, atol=1e-10)


def test_save_load_round_trip_is_safe_by_default(net, model, tmp_path):
    path = tmp_path / "small.model"
    torch.save(net, path)
    with pytest.raises(ntkal.InvalidArgumentError, match="cannot be loaded safely.*allow_unsafe_load=True"):
        models.mace(path)
    loaded = models.mace(path, allow_unsafe_load=True)
    atoms = structures()["slab"]
    f1 = Featurizer(model, "joint", dim=16, force_rows=2, progress=False).features(atoms)
    f2 = Featurizer(loaded, "joint", dim=16, force_rows=2, progress=False).features(atoms)
    np.testing.assert_array_equal(f1, f2)
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=str(path), device="cpu", default_dtype="float64")
    ref = atoms.copy()
    ref.calc = calc
    e, f = energy_and_forces(loaded, atoms)
    assert e == pytest.approx(ref.get_potential_energy(), rel=1e-10)
    np.testing.assert_allclose(f, ref.get_forces(), atol=1e-8)


def test_parameter_subsets_and_bad_input(model):
    readout = models.mace(small_mace(), params="readout")
    assert 0 < readout.n_params < model.n_params and all(k.startswith("readouts.") for k in readout.params)
    last = models.mace(small_mace(), params=["interactions.1.*", "products.1.*"])
    assert 0 < last.n_params < model.n_params
    with pytest.raises(ntkal.InvalidArgumentError, match="does not support: Fe"):
        model.check(Atoms("Fe2", positions=[[0, 0, 0], [0, 0, 2.0]]), where="t")
    with pytest.raises(ntkal.InvalidArgumentError, match="model file not found"):
        models.mace("/nonexistent/model.file")


def test_cli_selects_with_a_mace_file_only_with_the_opt_in(net, tmp_path, capsys):
    import ase.io

    from ntkal.cli import main

    path = tmp_path / "small.model"
    torch.save(net, path)
    pool = [structures()[k] for k in ("molecule", "cell", "slab")] * 2
    ase.io.write(tmp_path / "pool.extxyz", pool)
    argv = ["select", "--pool", str(tmp_path / "pool.extxyz"), "-n", "2", "--model", "mace", "--checkpoint", str(path),
            "--workers", "1", "--no-progress", "--dim", "16", "--out", str(tmp_path / "sel.extxyz")]
    assert main(argv) == 2
    assert "--allow-unsafe-load" in capsys.readouterr().err  # refused by default, and says how to opt in
    assert main(argv + ["--allow-unsafe-load"]) == 0
    assert len(ase.io.read(tmp_path / "sel.extxyz", index=":")) == 2


class _Call:
    """Pickles as ``function(*args)``: what a crafted file makes the unpickler call."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def test_a_file_whose_global_is_a_mace_function_runs_nothing(tmp_path, monkeypatch):
    from mace.tools.scripts_utils import extract_load

    marker = tmp_path / "payload_ran"
    inner = tmp_path / "inner.pt"
    torch.save(_Call(os.makedirs, str(marker)), inner)  # unpickled in full, it creates the marker directory
    outer = tmp_path / "outer.model"
    torch.save(_Call(extract_load, str(inner)), outer)  # extract_load(inner) would torch.load it
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(outer)) == ["mace.tools.scripts_utils.extract_load"]
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # as a later import of mace.calculators leaves it
    with pytest.raises(ntkal.InvalidArgumentError,
                       match=r"cannot be loaded safely.*not classes.*: mace\.tools\.scripts_utils\.extract_load\."):
        models.mace(outer)
    assert not marker.exists()
    torch.load(inner, weights_only=False)  # the payload is real: loaded in full, it runs
    assert marker.is_dir()


def test_a_file_that_calls_an_allowed_module_class_is_refused(tmp_path):
    # a module class is allow-listed to be rebuilt from its state; calling its constructor with the file's
    # arguments (mace's MaceTorchSimModel(path) torch.loads another file in full) is never allowed
    path = tmp_path / "calls_linear.model"
    torch.save(_Call(torch.nn.Linear, 2, 3), path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == ["torch.nn.modules.linear.Linear"]
    with pytest.raises(ntkal.InvalidArgumentError,
                       match=r"classes the file calls with its own arguments.*: torch\.nn\.modules\.linear\.Linear\."):
        models.mace(path)
    saved = tmp_path / "linear.model"  # the same class saved as a module: rebuilt safely, then not a MACE model
    torch.save(torch.nn.Linear(2, 3), saved)
    with pytest.raises(ntkal.InvalidArgumentError, match="Linear module without r_max and atomic_numbers"):
        models.mace(saved)


def test_the_refusal_of_a_mace_file_names_each_global_and_why(net, tmp_path):
    path = tmp_path / "small.model"
    torch.save(net, path)
    with pytest.raises(ntkal.InvalidArgumentError) as err:
        models.mace(path)
    message = str(err.value)
    assert "outside mace, e3nn, torch.nn: torch.fx." in message
    assert "not classes (the file could call them with its arguments): torch.nn.functional.silu" in message
    assert "__setstate__ is not torch.nn.Module's" in message and "e3nn.o3._linear.Linear" in message


def test_a_state_dict_file_gets_a_named_error(net, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)
    with pytest.raises(ntkal.InvalidArgumentError, match=r"holds a state dict \(\d+ tensors\), not a model.*"
                                                         r"torch\.save\(model\).*load_state_dict"):
        models.mace(path)
    with pytest.raises(ntkal.InvalidArgumentError, match="holds a state dict"):
        models.mace(net.state_dict())
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": net.state_dict(), "epoch": 3}, checkpoint)
    with pytest.raises(ntkal.InvalidArgumentError, match=r"holds a dict with keys \['epoch', 'model'\], not a MACE"):
        models.mace(checkpoint)


@pytest.mark.parametrize("before", [None, "0"])
def test_loading_mace_puts_torch_force_no_weights_only_load_back(before):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    if before is not None:
        env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = before
    script = ("import os, sys\nfrom ntkal.torch import models\n"
              "try:\n    models.mace('/nonexistent/model.file')\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
              "print('mace' in sys.modules, os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'))\n")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split()[-3:] == ["InvalidArgumentError", "True", str(before)]
    control = "import os, mace\nprint(os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'))\n"  # mace itself sets it
    assert subprocess.run([sys.executable, "-c", control], env=env, capture_output=True, text=True,
                          check=True).stdout.split()[-1] == "1"
