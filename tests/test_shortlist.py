"""ntkal.shortlist: top-k by posterior variance, PV descending, ties -> lower index, over arrays
and over streams of chunks."""

from __future__ import annotations

import numpy as np
import pytest

import ntkal
from _gpu import _dev, _float64_twin, _host, assert_ranking_matches, on_gpu


def _posterior(gen, d, precision="float64", n_train=60):
    return ntkal.Posterior(d, noise_var=1e-2, precision=precision).add(gen.rows(n_train, d))


def _chunks(rows, offsets, cuts):
    """Split a ragged pool at block indices ``cuts`` into (rows, offsets) chunks."""
    for a, b in zip(cuts[:-1], cuts[1:]):
        yield rows[offsets[a]:offsets[b]], offsets[a:b + 1] - offsets[a]


@pytest.mark.parametrize("precision", ["float64", "float32"])
@pytest.mark.parametrize("intensive", [False, True])
def test_array_call_matches_reference_ranking(ref, gen, precision, intensive):
    d = 16
    post = _posterior(gen, d, precision)
    rows, offsets = gen.pool(300, d, 1, 30)
    idx, pv = ntkal.shortlist(rows, offsets, post, 40, intensive=intensive)
    all_pv = post.variance(rows, offsets, intensive=intensive)
    assert idx.dtype == np.int64 and pv.dtype == np.float64 and idx.shape == pv.shape == (40,)
    # ranking of the engine's own PVs is exact
    np.testing.assert_array_equal(idx, ref.shortlist(all_pv, 40))
    np.testing.assert_array_equal(pv, all_pv[idx])


def test_matches_reference_posterior(ref, gen):
    d = 12
    train = gen.rows(40, d)
    post = ntkal.Posterior(d, noise_var=1e-2, precision="float64").add(train)
    rows, offsets = gen.pool(200, d, 1, 40)
    idx, pv = ntkal.shortlist(rows, offsets, post, 25)
    ref_pv = ref.posterior_variance(train, None, rows, offsets, 1e-2)
    np.testing.assert_array_equal(idx, ref.shortlist(ref_pv, 25))
    np.testing.assert_allclose(pv, ref_pv[idx], rtol=1e-10)


def test_ties_lower_index_first(gen):
    d = 8
    post = _posterior(gen, d)
    base = gen.rows(6, d)
    rows = np.concatenate([base[[0, 1, 0, 2, 1, 0, 3, 4, 5]]])  # blocks 0/2/5 and 1/4 identical
    idx, pv = ntkal.shortlist(rows, None, post, 9)
    for dup in ([0, 2, 5], [1, 4]):
        pos = [int(np.flatnonzero(idx == i)[0]) for i in dup]
        assert pos == sorted(pos) and pos == list(range(pos[0], pos[0] + len(dup)))
    assert np.all(np.diff(pv) <= 0)
    # all-equal scores: shortlist is simply the first k indices
    same = np.tile(base[:1], (50, 1))
    idx, _ = ntkal.shortlist(same, None, post, 7)
    np.testing.assert_array_equal(idx, np.arange(7))


@pytest.mark.parametrize("k", [0, 1, 17, 400])
def test_stream_equals_array(gen, k):
    d = 10
    post = _posterior(gen, d, "float32")
    rows, offsets = gen.pool(400, d, 1, 12)
    expected = ntkal.shortlist(rows, offsets, post, k)
    cuts = [0, 1, 150, 151, 399, 400]
    got = ntkal.shortlist(_chunks(rows, offsets, cuts), None, post, k)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    # Blocks chunks and a list (not a generator) work the same
    blocks = [ntkal.Blocks(r, o) for r, o in _chunks(rows, offsets, cuts)]
    got = ntkal.shortlist(blocks, None, post, k)
    np.testing.assert_array_equal(got[0], expected[0])


def test_stream_of_single_row_chunks_with_none_offsets(gen):
    d = 6
    post = _posterior(gen, d)
    rows = gen.rows(3000, d)
    expected = ntkal.shortlist(rows, None, post, 11)
    got = ntkal.shortlist(((rows[i:i + 500], None) for i in range(0, 3000, 500)), None, post, 11)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_stream_shorter_than_k_returns_everything(gen):
    d = 4
    post = _posterior(gen, d)
    rows = gen.rows(9, d)
    idx, pv = ntkal.shortlist([(rows[:4], None), (rows[4:], None)], None, post, 50)
    assert idx.shape == (9,)
    np.testing.assert_array_equal(np.sort(idx), np.arange(9))
    np.testing.assert_array_equal(pv, post.variance(rows)[idx])


def test_array_k_equals_pool_size_is_full_sort(ref, gen):
    d = 5
    post = _posterior(gen, d)
    rows, offsets = gen.pool(77, d, 1, 5)
    idx, pv = ntkal.shortlist(rows, offsets, post, 77)
    np.testing.assert_array_equal(idx, ref.shortlist(post.variance(rows, offsets), 77))


def test_many_values_small_k_exercises_trimming(ref, gen):
    # the engine trims its buffer once 2k + 1024 values are held: feed far more than that,
    # with heavy ties (quantised PVs via duplicated rows)
    d = 4
    post = _posterior(gen, d)
    base = gen.rows(40, d)
    rows = base[gen.rng.integers(0, 40, size=20_000)]
    pv_all = post.variance(rows)
    for k in (1, 5, 300):
        idx, pv = ntkal.shortlist(rows, None, post, k)
        np.testing.assert_array_equal(idx, ref.shortlist(pv_all, k))
        got = ntkal.shortlist(((rows[i:i + 999], None) for i in range(0, 20_000, 999)), None, post, k)
        np.testing.assert_array_equal(got[0], idx)


def test_progress_callback_counts_structures(gen):
    d = 3
    post = _posterior(gen, d)
    seen = []
    rows, offsets = gen.pool(30, d, 1, 4)
    ntkal.shortlist(_chunks(rows, offsets, [0, 10, 25, 30]), None, post, 5, progress=seen.append)
    assert seen == [10, 25, 30]


# ------------------------------------------------------------------------------ kept rows, all PV

def test_return_rows_gives_the_kept_blocks_and_pv_out_every_pv(gen):
    d = 8
    train = gen.rows(50, d)
    rows, offsets = gen.pool(90, d, 1, 5)
    post = ntkal.Posterior(d, noise_var=0.05).add(train)
    pv_all = post.variance(rows, offsets)
    pool = ntkal.Blocks(rows, offsets)
    for source in ((rows, offsets), [(pool.take(range(i, min(i + 17, 90))), None) for i in range(0, 90, 17)]):
        pv_out = np.full(90, np.nan)
        if isinstance(source, tuple):
            idx, pv, kept = ntkal.shortlist(*source, post, 12, return_rows=True, pv_out=pv_out)
        else:
            chunks = [blocks for blocks, _ in source]
            idx, pv, kept = ntkal.shortlist(iter(chunks), None, post, 12, return_rows=True, pv_out=pv_out)
        np.testing.assert_array_equal(pv_out, pv_all)
        expect = pool.take(idx)
        np.testing.assert_array_equal(kept.rows, expect.rows)
        np.testing.assert_array_equal(kept.offsets, expect.offsets)
        np.testing.assert_array_equal(pv, pv_all[idx])


def test_pv_out_must_be_a_float64_array(gen):
    post = ntkal.Posterior(4).add(gen.rows(5, 4))
    with pytest.raises(ntkal.InvalidArgumentError, match="shortlist: pv_out"):
        ntkal.shortlist(gen.rows(6, 4), None, post, 2, pv_out=np.zeros(6, np.float32))


# ---- every backend (the device fixture of conftest.py: the CPU, and CUDA arrays on a GPU) ----------------

def test_shortlist_stream_with_rows(device, gen):
    d = 10
    post = ntkal.Posterior(d, noise_var=0.05).add(gen.rows(80, d))
    rows, offsets = gen.pool(70, d, 1, 4)
    pool = ntkal.Blocks(rows, offsets)
    chunks = [ntkal.Blocks(device.put(pool.take(range(i, min(i + 20, 70))).rows),
                           pool.take(range(i, min(i + 20, 70))).offsets) for i in range(0, 70, 20)]
    idx, pv, kept = ntkal.shortlist(iter(chunks), None, post, 15, return_rows=True)
    idx_host, pv_host = ntkal.shortlist(rows, offsets, post, 15)
    np.testing.assert_array_equal(device.get(idx), idx_host)
    np.testing.assert_allclose(device.get(pv), pv_host, rtol=1e-5)
    np.testing.assert_array_equal(device.get(kept.rows), pool.take(idx_host).rows)


# ---- on a GPU: the same inputs through the CPU engine and the CUDA backend ---------------------------------

@on_gpu
class TestOnGpu:
    """The shortlist on CUDA arrays against the CPU engine (tests/_gpu.py)."""

    @pytest.mark.parametrize("intensive", [False, True])
    def test_shortlist_matches_cpu(self, gen, intensive):
        d = 96
        post = _posterior(gen, d, noise_var=0.1)
        offsets = gen.offsets(3000, 1, 6)
        rows = gen.rows(int(offsets[-1]), d)
        k = 60
        idx, pv = ntkal.shortlist(_dev(rows), offsets, post, k, intensive=intensive)
        cpu_idx, cpu_pv = ntkal.shortlist(rows, offsets, post, k, intensive=intensive)
        np.testing.assert_allclose(_host(pv), cpu_pv, rtol=1e-4)
        exact = _float64_twin(post).variance(rows, offsets, intensive=intensive)  # decides near-ties
        assert_ranking_matches(_host(idx), exact, k)
        assert_ranking_matches(cpu_idx, exact, k)

    def test_shortlist_stream_of_chunks(self, gen):
        d = 64
        post = _posterior(gen, d)
        chunks, host = [], []
        for n_blocks in (500, 1, 0, 800):
            offsets = gen.offsets(n_blocks, 1, 4) if n_blocks else np.zeros(1, np.int64)
            rows = gen.rows(int(offsets[-1]), d)
            chunks.append((_dev(rows), offsets))
            host.append(ntkal.Blocks(rows, offsets))
        done = []
        idx, pv = ntkal.shortlist(iter(chunks), None, post, 40, progress=done.append)
        assert done == [500, 501, 501, 1301]
        allb = ntkal.Blocks.concatenate(host)
        exact = _float64_twin(post).variance(allb)
        assert_ranking_matches(_host(idx), exact, 40)
        np.testing.assert_allclose(_host(pv), exact[_host(idx)], rtol=1e-4)
