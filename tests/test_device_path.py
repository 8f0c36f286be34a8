"""The GPU path of the pipeline, checked where no GPU exists: with a CUDA model, Jacobian rows go
to ``Sketch.project`` as tensors on the model's device (no host copy) and the features come back
as device Blocks. Here a stand-in sketch on the CPU records what it is given; the real CUDA runs are
the per-area GPU classes (marker gpu: tests/_gpu.py) and bench/gpu_check.sh."""

from __future__ import annotations

import numpy as np
import pytest
from _require import require

torch = require("torch")
require("ase")

from ase.build import molecule  # noqa: E402

import ntkal  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402


class RecordingSketch:
    """Projects with a real ntkal.Sketch, but insists on receiving torch tensors (never NumPy)."""

    def __init__(self, real):
        self.real, self.calls = real, 0

    def project(self, J, *, col_offset=0, out=None):
        assert isinstance(J, torch.Tensor) and isinstance(out, torch.Tensor), "rows left the device path"
        assert J.device == out.device
        self.calls += 1
        out += torch.from_numpy(self.real.project(J.numpy(), col_offset=col_offset))
        return out


@pytest.mark.parametrize("kernel,rows", [("energy", "exact"), ("joint", 3)])
def test_device_path_projects_tensors_on_the_model_device(kernel, rows, monkeypatch):
    model = models.toy(seed=3, hidden=4, n_radial=3)
    atoms = [molecule("CH3OH"), molecule("H2O")]
    host = Featurizer(model, kernel, dim=16, force_rows=rows, progress=False)
    expect = host(atoms)

    dev = Featurizer(model, kernel, dim=16, force_rows=rows, progress=False)
    recorder = RecordingSketch(dev.sketch)
    dev._sketch = recorder
    monkeypatch.setattr(Featurizer, "_keeps_device", lambda self: True)
    blocks = dev(atoms)
    assert recorder.calls > 0  # every projection got tensors (CPU tensors here become host Blocks)
    np.testing.assert_allclose(np.asarray(blocks.rows), expect.rows, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(blocks.offsets, expect.offsets)


def test_blocks_take_and_to_host_keep_rows_and_offsets():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((9, 3)).astype(np.float32)
    b = ntkal.Blocks(rows, [0, 2, 2, 6, 9])
    t = b.take([3, 0, 2])
    np.testing.assert_array_equal(t.offsets, [0, 3, 5, 9])
    np.testing.assert_array_equal(t.rows, np.concatenate([rows[6:9], rows[0:2], rows[2:6]]))
    assert b.to_host() is b and b.on_host


@pytest.mark.gpu
@pytest.mark.skipif(__import__("ntkal.backends.cuda", fromlist=["x"]).device_count() == 0,
                    reason="no usable CUDA device: the real device path runs on a GPU machine (bench/gpu_check.sh)")
def test_cuda_featurizer_keeps_features_on_the_device():
    require("chgnet")
    from ase.build import bulk

    model = models.chgnet(device="cuda")
    feat = Featurizer(model, "joint", dim=64, force_rows=2, progress=False)
    cells = [bulk("Si", "diamond", a=5.43), bulk("Si", "diamond", a=5.50)]
    for c in cells:
        c.rattle(0.02, seed=1)
    blocks = feat(cells)
    assert isinstance(blocks.rows, torch.Tensor) and blocks.rows.is_cuda and not blocks.on_host
    post = ntkal.Posterior(64, noise_var=1e-2).add(blocks.take([0]))
    pv = post.variance(blocks)
    assert isinstance(pv, torch.Tensor) and pv.is_cuda
    sel = ntkal.select(blocks, None, 1, method="greedy_pv", posterior=post)
    assert sel.indices.is_cuda and int(sel.indices[0]) == 1
