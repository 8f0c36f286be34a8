"""ntkal.Blocks: ragged feature blocks, and their one-file form (save / load)."""
import numpy as np
import pytest

import ntkal


def test_save_and_load_round_trip_the_rows_and_offsets(tmp_path):
    rng = np.random.default_rng(0)
    blocks = ntkal.Blocks(rng.standard_normal((9, 4)).astype(np.float32), np.array([0, 2, 2, 7, 9]))
    blocks.save(tmp_path / "b.npz")
    back = ntkal.Blocks.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(back.rows, blocks.rows)
    np.testing.assert_array_equal(back.offsets, blocks.offsets)
    assert back.rows.dtype == np.float32 and len(back) == 4


def test_load_refuses_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Blocks.load: path"):
        ntkal.Blocks.load(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ntkal.InvalidArgumentError, match="must hold arrays 'rows' and 'offsets'"):
        ntkal.Blocks.load(tmp_path / "other.npz")
