"""The ntkal command line (toy model for speed; one real-CHGNet demo marked slow)."""
import argparse
import subprocess
import sys

import numpy as np
import pytest
from _require import require

torch = require("torch")
require("ase")

import ase.io  # noqa: E402

import ntkal  # noqa: E402
from ntkal import cli  # noqa: E402
from ntkal.cli import main  # noqa: E402
from ntkal.demo_data import demo_structures  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    train, pool = demo_structures(n_pool=30, n_train=4, seed=1)
    ase.io.write(d / "train.extxyz", train)
    ase.io.write(d / "pool.extxyz", pool)
    return d, train, pool


TOY = ["--model", "toy", "--dim", "32", "--workers", "1", "--no-progress"]


def test_help_everywhere():
    for argv in ([], ["select"], ["score"], ["features"], ["demo"]):
        with pytest.raises(SystemExit) as exc:
            main(argv + ["--help"])
        assert exc.value.code == 0
    out = subprocess.run([sys.executable, "-m", "ntkal.cli", "select", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--pool" in out.stdout and "--force-rows" in out.stdout


def test_select_writes_batch_with_scores(files, capsys):
    d, train, pool = files
    out = d / "selected.extxyz"
    code = main(["select", "--train", str(d / "train.extxyz"), "--pool", str(d / "pool.extxyz"), "-n", "5",
                 "--kernel", "joint", "--force-rows", "3", "--out", str(out)] + TOY)
    assert code == 0
    chosen = ase.io.read(out, index=":")
    assert len(chosen) == 5
    idx = [a.info["ntkal_index"] for a in chosen]
    assert len(set(idx)) == 5 and all(0 <= i < 30 for i in idx)
    assert [a.info["ntkal_rank"] for a in chosen] == list(range(5))
    for a in chosen:
        np.testing.assert_allclose(a.positions, pool[a.info["ntkal_index"]].positions, atol=1e-6)
        assert a.info["ntkal_pv"] > 0
    # the PVs written are the posterior variances under the training set
    f = Featurizer(models.toy(), "joint", dim=32, force_rows=3)
    post = ntkal.Posterior(32).add(f(ase.io.read(d / "train.extxyz", index=":")))
    pv = post.variance(f([pool[i] for i in idx]))
    np.testing.assert_allclose([a.info["ntkal_pv"] for a in chosen], pv, rtol=1e-4)
    assert "selected 5 of 30" in capsys.readouterr().out


def test_features_dump_matches_featurizer(files):
    d, _, pool = files
    code = main(["features", "--structures", str(d / "pool.extxyz"), "--kernel", "force", "--force-rows", "exact",
                 "--out", str(d / "feats"), "--chunk-size", "7"] + TOY)
    assert code == 0
    from ntkal.feature_store import FeatureStore

    stored = FeatureStore(d / "feats").read("structures")
    rows, offsets = stored.rows, stored.offsets
    ref = Featurizer(models.toy(), "force", dim=32, force_rows="exact")(ase.io.read(d / "pool.extxyz", index=":"))
    np.testing.assert_array_equal(offsets, ref.offsets)
    np.testing.assert_allclose(rows, ref.rows, rtol=1e-6, atol=1e-6 * np.abs(ref.rows).max())
    assert offsets[-1] == 3 * sum(len(a) for a in pool)


def test_force_method_from_the_command_line(files):
    from ntkal.feature_store import FeatureStore

    d, _, _ = files
    structures = ase.io.read(d / "pool.extxyz", index=":")
    for method in ("autograd", "difference"):
        code = main(["features", "--structures", str(d / "pool.extxyz"), "--kernel", "joint", "--force-rows", "3",
                     "--force-method", method, "--out", str(d / f"feats_{method}")] + TOY)
        assert code == 0
        stored = FeatureStore(d / f"feats_{method}").read("structures")
        ref = Featurizer(models.toy(), "joint", dim=32, force_rows=3, force_method=method)(structures)
        np.testing.assert_allclose(stored.rows, ref.rows, rtol=1e-6, atol=1e-6 * np.abs(ref.rows).max())
    exact = FeatureStore(d / "feats_autograd").read("structures").rows
    assert not np.array_equal(exact, FeatureStore(d / "feats_difference").read("structures").rows)
    with pytest.raises(SystemExit):
        main(["features", "--structures", str(d / "pool.extxyz"), "--force-method", "jvp", "--out", str(d / "x")] + TOY)


def test_loss_matched_rows_from_the_command_line(files, capsys):
    from ntkal.feature_store import FeatureStore
    from ntkal.torch import Loss

    d, _, _ = files
    code = main(["features", "--structures", str(d / "pool.extxyz"), "--kernel", "joint", "--force-rows", "3",
                 "--loss", "2,10,per_atom,per_structure", "--out", str(d / "loss_feats")] + TOY)
    assert code == 0
    stored = FeatureStore(d / "loss_feats").read("structures")
    structures = ase.io.read(d / "pool.extxyz", index=":")
    ref = Featurizer(models.toy(), "joint", dim=32, force_rows=3, loss=Loss(2, 10, "per_atom", "per_structure"))(structures)
    plain = Featurizer(models.toy(), "joint", dim=32, force_rows=3)(structures)
    np.testing.assert_allclose(stored.rows, ref.rows, rtol=1e-6, atol=1e-6 * np.abs(ref.rows).max())
    assert not np.allclose(stored.rows, plain.rows)
    # the default terms are per_atom and per_component
    assert cli._loss("1,4") == (1.0, 4.0, "per_atom", "per_component")
    for bad in ("1", "1,x", "1,2,per_molecule", "1,2,total,per_atom", "1,2,3,4,5"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected W_E,W_F"):
            cli._loss(bad)
    code = main(["features", "--structures", str(d / "pool.extxyz"), "--loss", "0,1", "--out", str(d / "bad")] + TOY)
    assert code == 2 and "energy_weight must be a positive finite number" in capsys.readouterr().err


def test_demo_runs_on_toy_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["demo", "--pool-size", "25", "--train-size", "3", "-n", "4"] + TOY)
    assert code == 0
    out = capsys.readouterr().out
    assert "pool 25" in out and "wrote 4 structures" in out
    assert len(ase.io.read(tmp_path / "selected.extxyz", index=":")) == 4


@pytest.mark.parametrize("argv,needle", [
    (["select", "--pool", "{d}/pool.extxyz", "-n", "3", "--model", "mace9000"], "--model must be one of"),
    (["select", "--pool", "{d}/missing.extxyz", "-n", "3"] + TOY, "--pool file not found"),
    (["select", "--pool", "{d}/pool.extxyz", "-n", "31"] + TOY, "n must be in"),
    (["select", "--pool", "{d}/pool.extxyz", "-n", "3", "--kernel", "energy", "--force-rows", "4"] + TOY, "force_rows"),
    (["select", "--pool", "{d}/bad.extxyz", "-n", "1"] + TOY, "not an extended XYZ"),
    (["features", "--structures", "{d}/fe.extxyz", "--out", "{d}/x"] + TOY, "does not support: Fe"),
])
def test_bad_input_exits_with_clear_error(files, capsys, argv, needle):
    d, _, _ = files
    (d / "bad.extxyz").write_text("this is not\nan xyz file\n")
    from ase import Atoms

    ase.io.write(d / "fe.extxyz", Atoms("Fe2", positions=[[0, 0, 0], [0, 0, 2]]))
    code = main([a.format(d=d) for a in argv])
    assert code == 2
    assert needle in capsys.readouterr().err


@pytest.mark.slow
def test_demo_with_pretrained_chgnet(tmp_path, capsys, monkeypatch):
    require("chgnet")
    monkeypatch.chdir(tmp_path)
    code = main(["demo", "--pool-size", "12", "--train-size", "3", "-n", "3", "--dim", "64", "--force-rows", "2",
                 "--workers", "1", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "chgnet-0.3.0" in out and "wrote 3 structures" in out
    chosen = ase.io.read(tmp_path / "selected.extxyz", index=":")
    assert len(chosen) == 3 and all(a.info["ntkal_pv"] > 0 for a in chosen)


def test_defaults_a_user_can_afford():
    # exact 3N force rows at d 1024 cost ~20 s per 40-atom structure on 2 cores; k = 4 rows at d 512
    # rank PV like exact rows (bench/RESULTS.md section 2) at ~1 s: they are the defaults
    from ntkal.cli import build_parser

    for cmd in (["select", "--pool", "p.extxyz", "-n", "1"], ["features", "--structures", "p.extxyz", "--out", "o"],
                ["demo"]):
        args = build_parser().parse_args(cmd)
        assert args.force_rows == 4 and args.dim == 512 and args.kernel == "joint"


def test_score_writes_every_pv_with_metadata(files, tmp_path, capsys):
    import csv

    d, train, pool = files
    out, info_out = tmp_path / "scores.csv", tmp_path / "scored.extxyz"
    code = main(["score", "--train", str(d / "train.extxyz"), "--pool", str(d / "pool.extxyz"), "--out", str(out),
                 "--write-info", str(info_out), "--force-rows", "3"] + TOY)
    assert code == 0
    with open(out) as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["index"]) for r in rows] == list(range(30))
    assert {"formula", "n_atoms", "pv", "pv_per_row", "temperature_K"} <= set(rows[0])
    f = Featurizer(models.toy(), "joint", dim=32, force_rows=3)
    post = ntkal.Posterior(32).add(f(ase.io.read(d / "train.extxyz", index=":")))
    np.testing.assert_allclose([float(r["pv"]) for r in rows], post.variance(f(pool)), rtol=1e-4)
    assert [r["formula"] for r in rows] == [a.get_chemical_formula() for a in pool]
    scored = ase.io.read(info_out, index=":")
    np.testing.assert_allclose([a.info["ntkal_pv"] for a in scored], [float(r["pv"]) for r in rows])
    assert "scored 30 structures" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["select", "score"])
def test_plot_writes_a_png(files, tmp_path, command):
    require("matplotlib")
    d, _, _ = files
    png = tmp_path / f"{command}.png"
    argv = [command, "--train", str(d / "train.extxyz"), "--pool", str(d / "pool.extxyz"), "--plot", str(png),
            "--out", str(tmp_path / ("sel.extxyz" if command == "select" else "s.csv"))] + TOY
    if command == "select":
        argv += ["-n", "4"]
    assert main(argv) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_on_error_on_every_command_that_featurizes():
    from ntkal.cli import build_parser

    parser = build_parser()
    for cmd in (["select", "--pool", "p", "-n", "1"], ["score", "--pool", "p"], ["demo"],
                ["features", "--structures", "p", "--out", "o"]):
        assert parser.parse_args(cmd + ["--on-error", "skip"]).on_error == "skip"


@pytest.mark.parametrize("argv,option", [
    (["select", "-n", "2", "--out", "{missing}/sel.extxyz"], "--out"),
    (["select", "-n", "2", "--plot", "{missing}/screen.png"], "--plot"),
    (["select", "-n", "2", "--cache", "{file}/store"], "--cache"),
    (["score", "--out", "{missing}/scores.csv"], "--out"),
    (["score", "--write-info", "{missing}/scored.extxyz"], "--write-info"),
    (["score", "--plot", "{missing}/screen.png"], "--plot"),
    (["score", "--out", "{tmp}"], "--out"),
    (["features", "--out", "{file}"], "--out"),
    (["features", "--out", "{file}/sub/store"], "--out"),
    (["demo", "--out", "{missing}/sel.extxyz"], "--out"),
    (["select", "-n", "2", "--out", "{tmp}/sel.notaformat"], "--out"),
    (["select", "-n", "2", "--out", "{tmp}/POSCAR.vasp"], "--out"),  # one structure per file, 2 picked
])
def test_every_output_path_is_checked_before_any_work(files, tmp_path, capsys, monkeypatch, argv, option):
    d, _, _ = files
    (tmp_path / "a_file").write_text("not a directory\n")

    def no_work(args):
        raise AssertionError("the model was loaded before the output paths were checked")

    monkeypatch.setattr(cli, "_featurizer", no_work)
    monkeypatch.setattr("ntkal.demo_data.demo_structures", no_work)
    inputs = {"select": ["--pool", str(d / "pool.extxyz")], "score": ["--pool", str(d / "pool.extxyz")],
              "features": ["--structures", str(d / "pool.extxyz")], "demo": []}[argv[0]]
    names = {"missing": tmp_path / "no_such_dir", "file": tmp_path / "a_file", "tmp": tmp_path}
    code = main([a.format(**names) for a in argv] + inputs + TOY)
    err = capsys.readouterr().err
    assert code == 2
    assert f"ntkal {argv[0]}: error: argument {option}:" in err and "Traceback" not in err
    assert not (tmp_path / "no_such_dir").exists()


def test_output_checks_let_good_paths_through(tmp_path):
    from ntkal.cli import _check_outputs, build_parser

    parser = build_parser()
    store = tmp_path / "new" / "deeper" / "store"  # a feature store creates missing parents
    for argv in (["select", "--pool", "p", "-n", "1", "--out", str(tmp_path / "one.vasp")],
                 ["select", "--pool", "p", "-n", "3", "--out", str(tmp_path / "sel.xyz"), "--cache", str(store)],
                 ["score", "--pool", "p", "--out", str(tmp_path / "s.csv"), "--write-info", str(tmp_path / "s.traj")],
                 ["features", "--structures", "p", "--out", str(store)], ["demo"]):
        _check_outputs(parser.parse_args(argv))
