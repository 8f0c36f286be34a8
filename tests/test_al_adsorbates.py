"""The adsorbate scenario (bench/al/adsorbates.py, the installed package ``al``) in its smoke mode: a few
frames labelled with GFN1-xTB, and one round of the study on them."""
import dataclasses
import json
import os

import numpy as np
import pytest
from _require import require

require("ase")
require("tblite")
require("al")  # the study: pip install ./bench/al (the test command of README.md installs it)

from al import adsorbates as A  # noqa: E402
from al import data as D  # noqa: E402

SLAB_ATOMS = {"fcc111": 12, "fcc100": 12, "fcc211": 18}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("ads_cache"))


@pytest.fixture(scope="module")
def smoke(cache):
    return A.load_adsorbates(cache, A.SMOKE, verbose=False)


def _all(data):
    return data.pool + data.test_id + data.test_shift


def test_smoke_splits_and_composition(smoke):
    assert (len(smoke.pool), len(smoke.test_id), len(smoke.test_shift)) == (4, 4, 2)
    for frame in _all(smoke):
        info = frame.info
        n_metal = SLAB_ATOMS[info["facet"]]
        assert info["n_metal"] == n_metal and info["domain"] == "adsorbate"
        assert frame.get_chemical_symbols()[:n_metal] == [info["metal"]] * n_metal
        assert tuple(frame.get_chemical_symbols()[n_metal:]) == A.ADSORBATES[info["adsorbate"]].symbols
        assert info["system"] == f"{info['adsorbate']}@{info['facet']}"
        assert frame.pbc.all() and frame.cell.volume > 0
    assert {f.info["facet"] for f in _all(smoke)} == {"fcc111", "fcc211"}
    assert {f.info["adsorbate"] for f in smoke.pool} == {"O", "CO"}
    assert {f.info["adsorbate"] for f in smoke.test_id} == {"O", "CO"}
    # the shifted test's adsorbate is absent from the pool
    assert {f.info["adsorbate"] for f in smoke.test_shift} == {"H"}
    assert {f.info["shift"] for f in smoke.test_shift} == {"adsorbate"}
    # pool: the common facet's MD frames and the other facet's, at the common temperature
    assert sorted((f.info["facet"], f.info["origin"], f.info["temperature"]) for f in smoke.pool) == [
        ("fcc111", "md", 300)] * 2 + [("fcc211", "md", 300)] * 2


def test_random_sites_lift_the_binding_atom_to_a_bond_length(smoke):
    random_sites = [f for f in _all(smoke) if f.info["origin"] == "random_site"]
    assert len(random_sites) == 6
    lo, hi = A.BINDING_RANGE
    for frame in random_sites:
        assert lo - 0.011 <= A.binding_distance(frame) <= hi + 1e-9
        n_metal = frame.info["n_metal"]
        # every atom of the adsorbate is above the slab's lowest atoms and the others clear the metal
        assert frame.positions[n_metal:, 2].min() > frame.positions[:n_metal, 2].min()


def test_labels_are_finite_gfn1_xtb(smoke):
    for frame in _all(smoke):
        energy, forces = frame.get_potential_energy(), frame.get_forces()
        assert np.isfinite(energy) and forces.shape == (len(frame), 3) and np.isfinite(forces).all()
        assert np.abs(forces).max() > 0
    # a stored label is what a fresh GFN1-xTB calculator gives for that frame
    frame = smoke.test_shift[0]
    energy, forces, _, _ = A.label(frame)
    assert energy == pytest.approx(frame.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(forces, frame.get_forces(), atol=1e-5)


def test_forces_match_finite_differences_of_the_energy(smoke):
    frame = next(f for f in smoke.pool if f.info["adsorbate"] == "O" and f.info["facet"] == "fcc111")
    n_metal = frame.info["n_metal"]
    top_metal = int(np.argmax(frame.positions[:n_metal, 2]))
    h = 2e-3
    for atom, axis in ((n_metal, 2), (n_metal, 0), (top_metal, 2), (top_metal, 1)):
        energies = []
        for sign in (1, -1):
            moved = frame.copy()
            moved.positions[atom, axis] += sign * h
            moved.calc = A.xtb_calculator()
            energies.append(moved.get_potential_energy())
        finite_difference = -(energies[0] - energies[1]) / (2 * h)
        assert finite_difference == pytest.approx(frame.get_forces()[atom, axis], abs=5e-3), (atom, axis)


def test_cache_round_trip_reads_without_labelling(smoke, cache, monkeypatch):
    def no_labels(*_):
        raise AssertionError("the cached data set was labelled again")

    monkeypatch.setattr(A, "label", no_labels)
    again = A.load_adsorbates(cache, A.SMOKE, verbose=False)
    # the study's loader reads the same cache through the recipe's own loader
    study_view = D.load_dataset(cache, A.SMOKE, verbose=False)
    assert isinstance(study_view, D.Dataset) and study_view.recipe == A.SMOKE
    assert [len(study_view.pool), len(study_view.test_id), len(study_view.test_shift)] == [4, 4, 2]
    assert os.path.exists(os.path.join(cache, ".gitignore"))
    assert again.seconds == pytest.approx(smoke.seconds) and again.seconds > 0
    assert again.summary["frames"] == {"pool": 4, "test_id": 4, "test_shift": 2}
    for a, b in zip(_all(smoke), _all(again)):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-8)
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-8)
        assert a.info == b.info


def test_a_task_is_deterministic_in_its_seed():
    task = A.tasks(A.SMOKE)[0]
    seed = np.random.SeedSequence([A.SMOKE.seed, 211]).spawn(1)[0]
    (first,), _ = A.run_task(task, seed)
    (second,), _ = A.run_task(task, seed)
    np.testing.assert_array_equal(first.positions, second.positions)  # the geometry: bit for bit
    # the xTB label: to SCF rounding (tblite's threaded reductions differ in the last bits run to run, as CI saw)
    assert first.get_potential_energy() == pytest.approx(second.get_potential_energy(), rel=1e-12, abs=1e-9)
    np.testing.assert_allclose(first.get_forces(), second.get_forces(), rtol=0, atol=1e-8)


def test_md_driver_forces_are_its_energy_gradient():
    slab = A.make_slab("Cu", "fcc211")
    atoms = A.place(slab, "OH", A.common_site(slab, "fcc211"), 1.9, A._rotation(0.4, 1.0, 0.3))
    atoms.positions += np.random.default_rng(0).normal(0.0, 0.05, atoms.positions.shape)
    atoms.calc = A.SlabDriver(len(slab), "OH")
    forces = atoms.get_forces()
    h = 1e-5
    for atom in (len(slab), len(slab) + 1, 0, len(slab) - 1):
        for axis in range(3):
            energies = []
            for sign in (1, -1):
                moved = atoms.copy()
                moved.calc = A.SlabDriver(len(slab), "OH")
                moved.positions[atom, axis] += sign * h
                energies.append(moved.get_potential_energy())
            assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(forces[atom, axis], abs=1e-6)


def test_recipe_counts_and_bias():
    recipe = A.AdsorbateRecipe()
    counts = {}
    for task in A.tasks(recipe):
        key = (task["split"], task.get("site") == "common")
        counts[key] = counts.get(key, 0) + task["n_frames"]
    pool = counts[("pool", True)] + counts[("pool", False)]
    assert pool >= 600
    assert counts[("pool", True)] / pool > 0.4  # the redundant 300 K frames of the common site dominate
    shifted = {t["adsorbate"] for t in A.tasks(recipe) if t["split"] == "test_shift"} | {
        t["metal"] for t in A.tasks(recipe) if t["split"] == "test_shift"}
    in_pool = {t["adsorbate"] for t in A.tasks(recipe) if t["split"] == "pool"} | {
        t["metal"] for t in A.tasks(recipe) if t["split"] == "pool"}
    assert {"CH3", "Ag"} <= shifted and not {"CH3", "Ag"} & in_pool


def test_the_study_registers_the_full_recipe():
    from al import scenarios

    recipe = scenarios.recipe("adsorbates", seed=3)
    assert recipe == A.AdsorbateRecipe(seed=3) and recipe.key() != A.AdsorbateRecipe().key()
    assert recipe.key() != A.SMOKE.key()


def _run_study(cache, out, monkeypatch) -> dict:
    """One round of ``python -m al --scenario adsorbates`` on the smoke data: 2 initial labels, 2 acquired."""
    import torch

    from al import scenarios, study

    monkeypatch.setitem(scenarios.SCENARIOS, "adsorbates", lambda seed=0: dataclasses.replace(A.SMOKE, seed=seed))
    # the study sets OMP_NUM_THREADS and (one worker: in this process) torch's threads: restored afterwards
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    threads = torch.get_num_threads()
    argv = ["--scenario", "adsorbates", "--cache", cache, "--out", str(out), "--seeds", "0",
            "--strategies", "random", "acq_joint", "--n-initial", "2", "--batch", "2", "--rounds", "1",
            "--steps", "2", "--epochs", "1", "--committee-size", "2", "--dim", "32", "--force-rows", "2",
            "--no-pool-shift", "--workers", "1"]
    try:
        assert study.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    with open(out) as fh:
        return json.load(fh)


def test_one_round_of_the_study_on_the_smoke_data(smoke, cache, tmp_path, monkeypatch):
    require("torch")
    require("chgnet")
    from al import loop

    payload = _run_study(cache, tmp_path / "ads.json", monkeypatch)
    cfg = payload["config"]
    assert (cfg["dataset_pool"], cfg["pool_size"], cfg["test_id"], cfg["test_shift"]) == (4, 4, 4, 2)
    assert cfg["data_recipe"]["adsorbates"] == ["O", "CO"]
    systems_id = {f.info["system"] for f in smoke.test_id}
    systems_shift = {f.info["system"] for f in smoke.test_shift}
    assert systems_id == {"O@fcc111", "O@fcc211", "CO@fcc111", "CO@fcc211"}
    curves = payload["strategies"]
    assert set(curves) == {"random", "acq_joint"}
    for name, curve in curves.items():
        assert curve["n_labels"] == [2, 4], name
        for key in ("force_mae", "energy_mae", "force_p95", "shift_force_mae", "shift_energy_mae"):
            assert len(curve[key]) == 2 and np.all(np.isfinite(curve[key])) and min(curve[key]) > 0, (name, key)
        # errors per adsorbate@facet, on both test sets
        for system in systems_id:
            assert np.all(np.isfinite(curve[f"force_mae_sys_{system}"])), (name, system)
        for system in systems_shift:
            assert np.all(np.isfinite(curve[f"shift_force_mae_sys_{system}"])), (name, system)
        (picked,) = curve["per_seed"]["0"]["selected"]
        initial = set(loop.initial_set(np.arange(4), 2, 0).tolist())
        assert len(set(picked)) == 2 and set(picked) <= set(range(4)) - initial
    # round 0 is one model shared by every strategy; the acquired labels change round 1
    assert curves["random"]["force_mae"][0] == curves["acq_joint"]["force_mae"][0]
    assert curves["acq_joint"]["acq_seconds"][1] > 0
    assert os.path.exists(tmp_path / "ads_curves.png")
