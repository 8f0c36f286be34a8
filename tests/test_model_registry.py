"""The model registry and the adapter kit: every adapter builds from the generic load options, the CLI builds any
model with one call, and a new adapter is one file (tests/_adapter_example.py) plus one registry line."""
import numpy as np
import pytest
from _require import require

torch = require("torch")
require("ase")

import ntkal  # noqa: E402
from ntkal.cli import main  # noqa: E402
from ntkal.demo_data import demo_structures  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402
from ntkal.torch.models._common import GraphCache, load_weights  # noqa: E402


@pytest.fixture
def example(monkeypatch):
    monkeypatch.setitem(models.REGISTRY, "example", "_adapter_example")  # the one registry line
    return models.load("example")


def test_a_new_adapter_is_one_file_and_one_registry_line(example, tmp_path, capsys):
    import ase.io

    assert "example" in models.names() and example.batched is not None
    train, pool = demo_structures(n_pool=16, n_train=3, seed=4)
    batched = Featurizer(example, "joint", dim=12, force_rows=2)
    loop = Featurizer(models.load("example"), "joint", dim=12, force_rows=2)
    loop.model.batched = None  # the per-structure route through energy_fn alone
    np.testing.assert_allclose(batched(pool[:5]).rows, loop(pool[:5]).rows, rtol=1e-6, atol=1e-9)
    ase.io.write(tmp_path / "pool.extxyz", pool)
    ase.io.write(tmp_path / "train.extxyz", train)
    assert main(["select", "--model", "example", "--pool", str(tmp_path / "pool.extxyz"), "--train",
                 str(tmp_path / "train.extxyz"), "-n", "3", "--dim", "12", "--workers", "1", "--no-progress",
                 "--out", str(tmp_path / "picked.extxyz")]) == 0
    assert len(ase.io.read(tmp_path / "picked.extxyz", index=":")) == 3
    assert main(["select", "--model", "example", "--pool", str(tmp_path / "pool.extxyz"), "-n", "3",
                 "--checkpoint", "x.pt", "--workers", "1"]) == 2
    assert "--checkpoint is not an option of --model example (it takes none)" in capsys.readouterr().err


def test_every_registered_adapter_declares_its_options():
    for name in models.REGISTRY:
        _, a = models.adapter(name)
        assert set(a.options) <= set(models.LOAD_OPTIONS) and set(a.required) <= set(a.options) and a.summary
    assert models.from_options("toy", device="cpu").name == "toy-0"  # the default of an option is "not given"
    with pytest.raises(ntkal.InvalidArgumentError, match="model mace needs checkpoint"):
        models.from_options("mace")
    with pytest.raises(ntkal.InvalidArgumentError, match="modal is not an option of model chgnet"):
        models.from_options("chgnet", modal="PBE")
    with pytest.raises(ntkal.InvalidArgumentError, match="model must be one of"):
        models.load("mace9000")


def test_graph_cache_builds_once_per_structure():
    atoms = demo_structures(n_pool=2, n_train=1, seed=1)[1]
    built = []
    cache = GraphCache(lambda a: built.append(len(a)) or len(built), capacity=1)
    assert cache(atoms[0]) == cache(atoms[0]) == 1
    assert cache(atoms[1]) == 2 and cache(atoms[0]) == 3  # one slot: the other structure replaced it


class Custom:
    """Not a tensor nor plain data: unpickling it would run a constructor of the file's choice."""


def test_load_weights_refuses_what_needs_unpickling(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"x": Custom()}, path)
    with pytest.raises(ntkal.InvalidArgumentError, match="could not be loaded with weights_only=True"):
        load_weights(path, "here")
    with pytest.raises(ntkal.InvalidArgumentError, match="here: checkpoint file not found"):
        load_weights(tmp_path / "none.pt", "here")
    torch.save({"w": torch.ones(2)}, path)
    assert torch.equal(load_weights(path, "here")["w"], torch.ones(2))
