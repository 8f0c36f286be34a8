"""ntkal.md: the MD monitor (units, per-atom and structure signals, every, collect, halt), the model as an
ASE calculator, and ``ntkal md`` (toy model: fast and float64)."""
import numpy as np
import pytest
from _require import require

torch = require("torch")
require("ase")

import ase.io  # noqa: E402
from ase import units  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from ase.md.velocitydistribution import thermalize_momenta  # noqa: E402

import ntkal  # noqa: E402
from ntkal.cli import main  # noqa: E402
from ntkal.md import Monitor, UncertaintyHalt  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402
from ntkal.torch.calculator import ModelCalculator  # noqa: E402


@pytest.fixture(scope="module")
def featurizer():
    return Featurizer(models.toy(), dim=48, force_rows=3)


def cell(seed, symbols="Cu8", rattle=0.05):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.symbols = symbols
    atoms.rattle(rattle, seed=seed)
    return atoms


def labelled(featurizer, n, sigma, seed, symbols="Cu8"):
    """Cells labelled with the model's own forces plus Gaussian noise of std ``sigma`` per component:
    the model's residual on them is known (per-atom |dF|^2 has mean 3 sigma^2)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = cell(1000 * seed + i, symbols)
        forces = featurizer.predict_forces(atoms) + sigma * rng.standard_normal((len(atoms), 3))
        atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=forces)
        out.append(atoms)
    return out


def dynamics(atoms, seed=0, temperature=600):
    atoms.calc = ModelCalculator(models.toy())
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    return Langevin(atoms, 1.0 * units.fs, temperature_K=temperature, friction=0.02 / units.fs, fixcm=False, rng=rng)


# ---- units ------------------------------------------------------------------------------------
def test_known_residuals_give_the_expected_force_scale(featurizer):
    """Training residuals of RMS sqrt(3) sigma per atom: held-out structures of the same kind are predicted at that
    scale in eV/A by both signals, and doubling the residuals doubles every number (a scale, not a rank)."""
    held_out = [cell(500 + i) for i in range(20)]
    results = {}
    for sigma in (0.1, 0.2):
        monitor = Monitor(featurizer, labelled(featurizer, 30, sigma, seed=0))
        assert monitor.unit == "eV/A" and "unit='eV/A'" in repr(monitor)
        frames = [a.copy() for a in held_out]
        values = np.array([monitor(a) for a in frames])
        per_atom = np.concatenate([a.arrays["ntkal_atom_uncertainty"] for a in frames])
        whole = np.array([a.info["ntkal_structure_uncertainty"] for a in frames])
        expected = np.sqrt(3) * sigma
        assert 0.7 * expected < np.sqrt(np.mean(per_atom ** 2)) < 1.4 * expected
        assert 0.7 * expected < np.sqrt(np.mean(whole ** 2)) < 1.4 * expected
        # the frame's value is its most uncertain atom
        np.testing.assert_allclose(values, [a.arrays["ntkal_atom_uncertainty"].max() for a in frames])
        assert [a.info["ntkal_atom"] for a in frames] == [int(np.argmax(a.arrays["ntkal_atom_uncertainty"]))
                                                          for a in frames]
        results[sigma] = (per_atom, whole)
    np.testing.assert_allclose(results[0.2][0], 2 * results[0.1][0], rtol=1e-6)
    np.testing.assert_allclose(results[0.2][1], 2 * results[0.1][1], rtol=1e-6)


def test_without_forces_the_unit_is_relative_and_says_so(featurizer):
    train = [cell(i) for i in range(20)]
    monitor = Monitor(featurizer, train)
    assert monitor.unit == "relative" and "unit='relative'" in repr(monitor)
    whole = []
    for i in range(15):
        atoms = cell(900 + i)
        monitor(atoms)
        assert atoms.info["ntkal_unit"] == "relative"
        whole.append(atoms.info["ntkal_structure_uncertainty"])
    # 1 = a typical training structure left out of the training set
    assert 0.5 < np.sqrt(np.mean(np.square(whole))) < 2.0
    far = cell(7, rattle=0.4)  # much hotter than anything in the training set
    monitor(far)
    assert far.info["ntkal_structure_uncertainty"] > 2 * max(whole)
    with pytest.raises(ntkal.InvalidArgumentError, match=r"Monitor: train\[0\] has no reference forces"):
        Monitor(featurizer, train, calibrate="on")
    labelled_monitor = Monitor(featurizer, labelled(featurizer, 10, 0.1, seed=3), calibrate="off")
    assert labelled_monitor.unit == "relative"


def test_feature_store_train_gives_the_structure_signal(featurizer, tmp_path):
    from ntkal.features import compute_features

    train = [cell(i) for i in range(12)]
    compute_features(featurizer, train, tmp_path / "store", label="train", progress=False)
    from_store = Monitor(featurizer, str(tmp_path / "store"), signal="structure")
    from_atoms = Monitor(featurizer, train, signal="structure")
    assert from_store.unit == "relative" and from_store.atom_signal is None
    for i in range(5):
        a, b = cell(300 + i), cell(300 + i)
        # same-size training structures: per-atom normalisation cancels, the two agree
        np.testing.assert_allclose(from_store(a), from_atoms(b), rtol=1e-5)
    with pytest.raises(ntkal.InvalidArgumentError, match="signal='atom' needs training structures"):
        Monitor(featurizer, str(tmp_path / "store"), signal="atom")
    other = Featurizer(models.toy(seed=1), dim=48, force_rows=3)
    with pytest.raises(ntkal.InvalidArgumentError, match="holds features of another featurizer"):
        Monitor(other, str(tmp_path / "store"), signal="structure")


# ---- every, collect, halt -------------------------------------------------------------------
def test_every_skips_calls(featurizer):
    calls = []

    class Counting:
        def __init__(self, inner):
            self.inner, self.base_model = inner, inner.base_model

        def __call__(self, structures, **kw):
            calls.append(len(structures))
            return self.inner(structures, **kw)

        def predict_forces(self, atoms):
            return self.inner.predict_forces(atoms)

    monitor = Monitor(Counting(featurizer), labelled(featurizer, 8, 0.1, seed=1), every=3)
    calls.clear()
    frames = [cell(40 + i) for i in range(7)]
    returned = [monitor(a) for a in frames]
    measured = [i for i, v in enumerate(returned) if v is not None]
    assert measured == [0, 3, 6]
    assert len(calls) == 3 and len(monitor.records) == 3
    assert [r["step"] for r in monitor.records] == [0, 3, 6]
    assert all("ntkal_uncertainty" not in frames[i].info for i in (1, 2, 4, 5))
    assert all("ntkal_uncertainty" in frames[i].info for i in measured)


def test_collect_file_round_trip_with_keys(featurizer, tmp_path):
    out = tmp_path / "flagged.extxyz"
    train = labelled(featurizer, 10, 0.1, seed=2)
    monitor = Monitor(featurizer, train, every=2, collect=1e-9, out=out)
    dyn = dynamics(cell(1))
    monitor.attach(dyn)
    dyn.run(9)  # observers at steps 0..9: measured at 0, 2, 4, 6, 8
    frames = ase.io.read(out, index=":")
    assert [f.info["ntkal_step"] for f in frames] == [0, 2, 4, 6, 8] == [r["step"] for r in monitor.records]
    for frame, record in zip(frames, monitor.records):
        assert frame.info["ntkal_uncertainty"] == pytest.approx(record["value"], rel=1e-12)
        assert frame.info["ntkal_structure_uncertainty"] == pytest.approx(record["structure"], rel=1e-12)
        assert frame.info["ntkal_atom"] == record["atom"] and frame.info["ntkal_unit"] == "eV/A"
        assert frame.arrays["ntkal_atom_uncertainty"].shape == (8,)
        assert frame.info["ntkal_uncertainty"] == pytest.approx(frame.arrays["ntkal_atom_uncertainty"].max())
        assert frame.calc is None  # no model forces written where labels would be read
    np.testing.assert_allclose(frames[0].positions, cell(1).positions, atol=1e-6)  # step 0: before any move
    # a second run appends; the collected frames are a pool ntkal select reads
    again = Monitor(featurizer, train, collect=1e-9, out=out)
    assert again.out_frames == 5
    again(cell(2))
    assert len(ase.io.read(out, index=":")) == 6 and again.out_frames == 6
    picked = ntkal.acquire(featurizer, train, str(out), 2, progress=False)
    assert len(picked) == 2
    # a file cut short (by a writer that is not this one) is refused, not appended to
    text = out.read_text()
    for cut in (40, len(text.splitlines()[-1]) + 1 + 40):
        out.write_text(text[: len(text) - cut])
        with pytest.raises(ntkal.InvalidArgumentError, match="Monitor: out .* (is truncated|ends in a partial frame)"):
            Monitor(featurizer, train, collect=1e-9, out=out)


def test_collect_without_out_keeps_frames_in_memory(featurizer):
    monitor = Monitor(featurizer, labelled(featurizer, 8, 0.1, seed=4), collect=1e-9)
    for i in range(3):
        monitor(cell(60 + i))
    assert len(monitor.frames) == 3 and monitor.n_collected == 3
    assert all(f.calc is None and "ntkal_uncertainty" in f.info for f in monitor.frames)


def _trajectory_values(featurizer, train, steps):
    monitor = Monitor(featurizer, train)
    dyn = dynamics(cell(3), seed=5, temperature=1500)
    monitor.attach(dyn)
    dyn.run(steps)
    return [(r["step"], r["value"], r["atom"]) for r in monitor.records]


def test_halt_raises_with_step_and_atom_and_stops_the_run(featurizer, tmp_path):
    train = labelled(featurizer, 10, 0.1, seed=2)
    values = _trajectory_values(featurizer, train, 12)
    # the first step whose value exceeds every earlier one: halt there
    k = next(i for i in range(1, len(values)) if values[i][1] > max(v for _, v, _ in values[:i]))
    step, value, atom = values[k]
    out = tmp_path / "halt.extxyz"
    monitor = Monitor(featurizer, train, collect=values[k][1] * 0.999999, halt=value, out=out)
    dyn = dynamics(cell(3), seed=5, temperature=1500)
    monitor.attach(dyn)
    with pytest.raises(UncertaintyHalt) as exc:
        dyn.run(12)
    assert (exc.value.step, exc.value.atom) == (step, atom) and exc.value.value == pytest.approx(value, rel=1e-12)
    assert dyn.nsteps == step  # the dynamics stopped at the frame
    assert f"step {step}" in str(exc.value) and f"atom {atom} (Cu)" in str(exc.value)
    assert exc.value.unit == "eV/A" and exc.value.atoms.info["ntkal_step"] == step
    frames = ase.io.read(out, index=":")  # the halting frame was collected, the file is whole
    assert frames[-1].info["ntkal_step"] == step
    assert monitor.halted is exc.value and "halted" in monitor.summary()
    # run_langevin turns the halt into a result
    from ntkal.md import run_langevin

    monitor = Monitor(featurizer, train, halt=value)
    atoms = cell(3)
    result = run_langevin(atoms, ModelCalculator(models.toy()), monitor, steps=50, temperature=(1500, 1500), seed=5,
                          progress=False)
    assert result.halted is not None and result.steps == result.halted.step < 50


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"collect": -0.1}, "collect must be a positive finite number"),
    ({"collect": float("nan")}, "collect must be a positive finite number"),
    ({"halt": 0}, "halt must be a positive finite number"),
    ({"collect": "high"}, "collect must be a positive finite number"),
    ({"collect": 0.5, "halt": 0.2}, "halt must be >= collect"),
    ({"every": 0}, "every must be >= 1"),
    ({"every": 2.5}, "every must be an integer"),
    ({"out": "x.extxyz"}, "out needs collect"),
    ({"collect": 0.1, "out": "x.traj"}, "out must be an extended XYZ file"),
    ({"signal": "max"}, "signal must be one of"),
    ({"calibrate": "yes"}, "calibrate must be one of"),
    ({"signal": "structure", "structure": False}, "signal='structure' needs structure=True"),
])
def test_bad_arguments_are_named(featurizer, kwargs, message):
    with pytest.raises(ntkal.InvalidArgumentError, match=f"Monitor: .*{message}"):
        Monitor(featurizer, [cell(0)], **kwargs)


def test_elements_the_model_or_the_training_set_lacks_are_named(featurizer):
    train = [cell(0), cell(1, "Cu7Fe")]  # the toy model knows H, C, O, Cu, Au
    with pytest.raises(ntkal.InvalidArgumentError, match=r"Monitor: train\[1\] contains elements the model does "
                                                         "not support: Fe"):
        Monitor(featurizer, train)
    monitor = Monitor(featurizer, [cell(i) for i in range(4)])
    with pytest.raises(ntkal.InvalidArgumentError, match="Monitor: atoms contain Au, which no training structure has"):
        monitor(cell(5, "Cu6Au2"))
    with pytest.raises(ntkal.InvalidArgumentError, match="Monitor: train must hold at least one structure"):
        Monitor(featurizer, [])


# ---- the calculator and the command ------------------------------------------------------------------
def test_calculator_forces_are_the_energy_gradient():
    model = models.toy()
    atoms = cell(8)
    atoms.calc = ModelCalculator(model)
    forces = atoms.get_forces()
    h, numeric = 1e-5, np.zeros_like(forces)
    for i in range(len(atoms)):
        for c in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, c] += h
            minus.positions[i, c] -= h
            numeric[i, c] = -(float(model.energy(plus)) - float(model.energy(minus))) / (2 * h)
    np.testing.assert_allclose(forces, numeric, atol=1e-7)
    assert atoms.get_potential_energy() == pytest.approx(float(model.energy(atoms)))
    with pytest.raises(ntkal.InvalidArgumentError, match="ModelCalculator: model must be"):
        ModelCalculator("toy")


def test_cli_md_collects_then_selects(tmp_path, capsys, featurizer):
    ase.io.write(tmp_path / "train.extxyz", labelled(Featurizer(models.toy(), dim=32), 10, 0.05, seed=6))
    ase.io.write(tmp_path / "start.extxyz", cell(9))
    base = ["md", "--model", "toy", "--dim", "32", "--no-progress", "--train", str(tmp_path / "train.extxyz"),
            "--structure", str(tmp_path / "start.extxyz"), "--temperature", "300:900", "--steps", "20",
            "--every", "5", "--collect", "1e-9", "--seed", "1"]
    assert main(base + ["--out", str(tmp_path / "a.extxyz")]) == 0
    printed = capsys.readouterr().out
    assert "unit='eV/A'" in printed and "5 frames measured" in printed
    # the command repeats this run's model and feature options, none of md's own
    assert (f"next: label a batch of the collected frames: ntkal select --model toy --dim 32 --no-progress --seed 1 "
            f"--train {tmp_path / 'train.extxyz'} --pool {tmp_path / 'a.extxyz'} -n N --out selected.extxyz") in printed
    assert [f.info["ntkal_step"] for f in ase.io.read(tmp_path / "a.extxyz", index=":")] == [0, 5, 10, 15, 20]
    assert main(base + ["--out", str(tmp_path / "b.extxyz"), "-n", "2", "--select-out",
                        str(tmp_path / "sel.extxyz")]) == 0
    chosen = ase.io.read(tmp_path / "sel.extxyz", index=":")
    assert len(chosen) == 2 and all("ntkal_uncertainty" in a.info and "ntkal_pv" in a.info for a in chosen)
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "c.extxyz"), "--halt", "1e-9"]) == 0
    assert "halted: uncertainty" in capsys.readouterr().out
    assert main(base + ["--out", str(tmp_path / "d.extxyz"), "--temperature", "hot"]) == 2
    assert "ntkal md: error: --temperature must be T or T_START:T_END" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "e.extxyz"), "--collect", "-1"]) == 2
    assert "collect must be a positive finite number" in capsys.readouterr().err


def test_cli_md_refuses_a_bad_signal_and_out_before_loading_the_model(tmp_path, capsys, monkeypatch):
    import ntkal.cli as cli

    monkeypatch.setattr(cli, "_featurizer", lambda args: pytest.fail("the model was loaded"))
    base = ["md", "--model", "toy", "--no-progress", "--train", "t.extxyz", "--structure", "s.extxyz", "--steps", "5"]
    with pytest.raises(SystemExit) as exc:
        main(base + ["--signal", "max"])
    assert exc.value.code == 2 and "invalid choice: 'max'" in capsys.readouterr().err
    ase.io.write(tmp_path / "s.extxyz", cell(0))
    base[base.index("s.extxyz")] = str(tmp_path / "s.extxyz")
    assert main(base + ["--collect", "0.1", "--out", str(tmp_path / "x.traj")]) == 2
    assert "--out must be an extended XYZ file" in capsys.readouterr().err
    assert main(base + ["--timestep", "0"]) == 2
    assert "--timestep must be a positive finite number" in capsys.readouterr().err


def test_a_failed_write_leaves_no_partial_frame(tmp_path, monkeypatch):
    import os

    from ntkal.md.collect import FrameAppender

    path = tmp_path / "flagged.extxyz"
    appender = FrameAppender(path, where="test")
    appender.append(cell(0))
    size = path.stat().st_size
    real_write = os.write

    def half_then_full_disk(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        appender.append(cell(1))
    monkeypatch.undo()
    assert path.stat().st_size == size  # the half frame was cut off again
    assert FrameAppender(path, where="test").existing == 1  # and the file is accepted for appending


def test_run_stops_cleanly_when_the_model_cannot_go_on(featurizer):
    from ntkal.md import run_langevin

    class FailsAtStep(ModelCalculator):
        calls = 0

        def calculate(self, *args, **kwargs):
            FailsAtStep.calls += 1
            if FailsAtStep.calls > 12:
                raise ntkal.InvalidArgumentError("toy: atom 3 has no neighbour")
            super().calculate(*args, **kwargs)

    monitor = Monitor(featurizer, labelled(featurizer, 8, 0.1, seed=2), every=5)
    result = run_langevin(cell(3), FailsAtStep(models.toy()), monitor, steps=50, temperature=(600, 600), seed=1,
                          progress=False)
    assert result.stopped is not None and "no neighbour" in str(result.stopped)
    assert result.halted is None
    assert result.steps == 11 and [r["step"] for r in monitor.records] == [0, 5, 10]  # what was measured stands
