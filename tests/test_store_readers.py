"""Reading a feature store back: every reader (read, iter_blocks, take, to_dask, screen of a store) reads a
label through the record its writer made when the label was complete, and a gap, a chunk of other
structures or a failed check raises FeatureStoreError naming the label, the structures and the check.
The writers (compute_features, acquire) still move a damaged chunk aside and recompute it."""
import json
import shutil

import numpy as np
import pytest
from _require import require
from _structures import cells

require("zarr")
require("ase")
require("dask")

import ntkal  # noqa: E402
from ntkal.acquire import acquire  # noqa: E402
from ntkal.feature_store import FeatureStore, FeatureStoreError  # noqa: E402
from ntkal.features import compute_features  # noqa: E402

LABEL = "structures"  # compute_features' default label


class Features:
    """A model-free featurizer: 1-3 rows of 6 columns per structure from its positions (no torch needed)."""

    dim = 6

    def __init__(self, fail_after=None):
        self.fail_after, self.calls, self.structures = fail_after, 0, 0

    def __call__(self, structures):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.structures += len(structures)
        parts = []
        for atoms in structures:
            pos = atoms.get_positions()
            parts.append(np.concatenate([pos, pos ** 2], axis=1)[: 1 + int(atoms.numbers.sum()) % 3])
        return ntkal.Blocks.from_list([p.astype(np.float32) for p in parts])

    def fingerprint(self):
        return "model-free-features-" + "0" * 12

    def config(self):
        return {"model_free": True}


@pytest.fixture
def stored(tmp_path):
    """A store of 40 structures in 5 chunks of 8, written by compute_features; and the features themselves."""
    pool = cells(40, 3)
    compute_features(Features(), pool, tmp_path / "s", chunk_size=8, progress=False)
    return FeatureStore(tmp_path / "s"), Features()(pool)


def chunk_dir(store, a, b, label=LABEL):
    return store.path / label / f"c{a:09d}-{b:09d}"


def rows_file(store, a, b):
    return chunk_dir(store, a, b) / "rows" / "c" / "0" / "0"


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[9] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_damaged_chunk_fails_every_read_not_only_the_first(stored):
    store, whole = stored
    np.testing.assert_array_equal(store.read(LABEL).rows, whole.rows)
    np.testing.assert_array_equal(store.read(LABEL).offsets, whole.offsets)
    flip_a_byte(rows_file(store, 24, 32))
    with pytest.raises(FeatureStoreError):
        store.read(LABEL)
    # before: the first read discarded the chunk and the next returned 32 of 40 blocks
    with pytest.raises(FeatureStoreError, match=r"FeatureStore.read: path .*: 'structures' structures 24\.\.32: "
                       r"the chunk fails a check: its file rows/c/0/0 fails its crc32; recompute them with the "
                       r"writer .*compute_features or acquire"):
        store.read(LABEL)
    with pytest.raises(FeatureStoreError, match=r"24\.\.32: the chunk fails a check"):
        list(store.iter_blocks(LABEL))
    assert chunk_dir(store, 24, 32).is_dir()  # readers never change the store
    counting = Features()  # the writer recomputes the damaged chunk only
    compute_features(counting, cells(40, 3), store.path, chunk_size=8, progress=False)
    assert counting.structures == 8
    np.testing.assert_array_equal(store.read(LABEL).rows, whole.rows)


READERS = {
    "read": lambda store: store.read(LABEL),
    "iter_blocks": lambda store: next(store.iter_blocks(LABEL)),  # the gap is found before any chunk is handed out
    "to_dask": lambda store: store.to_dask(LABEL)[0].compute(),
    "take": lambda store: store.take(LABEL, [30]),
    "screen": lambda store: ntkal.screen(store.path, ntkal.Posterior(Features.dim, noise_var=1e-2), LABEL,
                                         shortlist=3, progress=False),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_missing_chunk_is_a_gap_for_every_reader(stored, reader):
    """Before: read put structure 32 at block 24, store scoring gave NaN PVs, all without an error."""
    store, whole = stored
    shutil.rmtree(chunk_dir(store, 24, 32))
    where = "screen: store" if reader == "screen" else f"FeatureStore.{reader}: path"
    with pytest.raises(FeatureStoreError, match=rf"{where} .*'structures' structures 24\.\.32: missing"):
        READERS[reader](store)
    if reader == "take":  # chunks that are there still serve take
        np.testing.assert_array_equal(store.take(LABEL, [35, 3]).rows, whole.take([35, 3]).rows)


def test_to_dask_never_reads_a_deleted_file_as_zeros(stored):
    store, whole = stored
    rows, offsets = store.to_dask(LABEL)
    np.testing.assert_array_equal(rows.compute(), whole.rows)
    np.testing.assert_array_equal(offsets, whole.offsets)
    rows_file(store, 8, 16).unlink()
    with pytest.raises(FeatureStoreError, match=r"FeatureStore.to_dask: .*'structures' structures 8\.\.16: the chunk "
                       r"fails a check: its file rows/c/0/0 is missing"):
        store.to_dask(LABEL)


def test_to_dask_checks_each_chunk_when_dask_reads_it(stored):
    store, whole = stored
    rows, offsets = store.to_dask(LABEL)  # checked up front: records, offsets, files present
    flip_a_byte(rows_file(store, 16, 24))
    np.testing.assert_array_equal(rows[: offsets[16]].compute(), whole.rows[: whole.offsets[16]])
    with pytest.raises(FeatureStoreError, match=r"'structures' structures 16\.\.24: the chunk fails a check: its file "
                       r"rows/c/0/0 fails its crc32"):
        rows.compute()


def test_screen_of_a_store_scores_the_stored_pool_and_refuses_damage(stored):
    store, whole = stored
    train = Features()(cells(6, 4))
    post = ntkal.Posterior(Features.dim, noise_var=1e-2).add(train.rows, train.offsets)
    expect = np.asarray(post.variance(whole.rows, whole.offsets), dtype=np.float64)
    found = ntkal.screen(store.path, post, LABEL, shortlist=5, progress=False)
    (idx, pv), all_pv = found.shortlists["*"], found.pool_pv
    np.testing.assert_allclose(all_pv, expect, rtol=1e-12)
    order = np.lexsort((np.arange(40), -expect))[:5]  # highest PV first, ties: lower index
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(pv, expect[order], rtol=1e-12)
    flip_a_byte(rows_file(store, 8, 16))  # found by the chunk's task when it reads the rows
    with pytest.raises(FeatureStoreError, match=r"'structures' structures 8\.\.16: the chunk fails a check: its file "
                       r"rows/c/0/0 fails its crc32"):
        ntkal.screen(store.path, post, LABEL, shortlist=5, progress=False)
    assert chunk_dir(store, 8, 16).is_dir()


def test_an_edited_skipped_list_is_recomputed_not_believed(tmp_path):
    """A healthy structure listed as skipped in a chunk's attributes: acquire recomputes the chunk."""
    train, pool = cells(6, 10), cells(16, 11)
    first = acquire(Features(), train, pool, 3, chunk_size=8, cache=tmp_path / "c", progress=False)
    path = tmp_path / "c" / "pool" / "c000000000-000000008" / "zarr.json"
    meta = json.loads(path.read_text())
    meta["attributes"]["skipped"] = [[3, "edited"]]
    path.write_text(json.dumps(meta))
    again = acquire(Features(), train, pool, 3, chunk_size=8, cache=tmp_path / "c", progress=False)
    assert again.skipped == [] and np.isfinite(again.pool_pv[3])  # before: pool[3] reported as skipped
    assert (again.computed_chunks, again.cached_chunks) == (1, 2)
    np.testing.assert_array_equal(again.indices, first.indices)
    np.testing.assert_array_equal(again.pool_pv, first.pool_pv)


def test_acquire_records_what_it_wrote(tmp_path):
    train, pool = cells(6, 10), cells(20, 11)
    acquire(Features(), train, pool, 3, chunk_size=8, cache=tmp_path / "c", progress=False)
    store = FeatureStore(tmp_path / "c")
    assert store.extent("pool") == 20 and store.extent("train") == 6
    np.testing.assert_array_equal(store.read("pool").rows, Features()(pool).rows)


def test_an_unfinished_run_is_refused_and_a_rerun_completes_it(tmp_path):
    pool = cells(40, 3)
    with pytest.raises(KeyboardInterrupt):
        compute_features(Features(fail_after=2), pool, tmp_path / "s", chunk_size=8, progress=False)
    store = FeatureStore(tmp_path / "s")
    assert store.chunks(LABEL) == [(0, 8), (8, 16)]
    with pytest.raises(FeatureStoreError, match="'structures' has no record of its extent \\(2 chunks found\\): the "
                       "run writing it has not finished"):  # before: 16 of 40 structures, no error
        store.read(LABEL)
    rerun = Features()
    compute_features(rerun, pool, tmp_path / "s", chunk_size=8, progress=False)
    assert rerun.structures == 24
    np.testing.assert_array_equal(store.read(LABEL).rows, Features()(pool).rows)
    assert store.extent(LABEL) == 40


def test_chunks_of_an_unfinished_run_over_other_structures_are_not_mixed_in(stored):
    store, _ = stored
    other = cells(40, 5)
    with pytest.raises(KeyboardInterrupt):
        compute_features(Features(fail_after=2), other, store.path, chunk_size=8, progress=False)
    with pytest.raises(FeatureStoreError, match=r"'structures' structures 0\.\.8: the chunk holds features of other "
                       r"structures than the label's record"):  # before: 2 chunks of one pool, 3 of another
        store.read(LABEL)
    compute_features(Features(), other, store.path, chunk_size=8, progress=False)
    np.testing.assert_array_equal(store.read(LABEL).rows, Features()(other).rows)


def test_a_store_written_before_records_and_attribute_checksums(tmp_path):
    """What 64d594f wrote: no label record, chunk attributes without their crc32. Readers refuse it;
    acquire and compute_features keep working on it, recomputing its chunks once."""
    train, pool = cells(6, 10), cells(16, 11)
    fresh = acquire(Features(), train, pool, 3, chunk_size=8, progress=False)
    acquire(Features(), train, pool, 3, chunk_size=8, cache=tmp_path / "c", progress=False)
    for label in ("train", "pool"):
        (tmp_path / "c" / label / "zarr.json").unlink(missing_ok=True)
        for meta_path in (tmp_path / "c" / label).glob("c*/zarr.json"):
            meta = json.loads(meta_path.read_text())
            meta["attributes"].pop("attributes_crc32", None)
            meta_path.write_text(json.dumps(meta))
    store = FeatureStore(tmp_path / "c")
    with pytest.raises(FeatureStoreError, match="'pool' has no record of its extent .* or an ntkal that kept no such "
                       "records wrote it"):
        store.read("pool")
    with pytest.raises(FeatureStoreError, match="its attributes carry no checksum"):
        store.meta("pool", 0, 8)
    counting = Features()
    old = acquire(counting, train, pool, 3, chunk_size=8, cache=tmp_path / "c", progress=False)
    assert counting.structures == 6 + 16 and old.computed_chunks == 3
    np.testing.assert_array_equal(old.indices, fresh.indices)
    np.testing.assert_array_equal(store.read("pool").rows, Features()(pool).rows)
