"""The zarr feature store: all-or-nothing chunks, damaged chunks never used, one featurizer per store."""
import json
import os
import pathlib
import shutil
import threading

import numpy as np
import pytest
from _require import require

require("zarr")

import ntkal  # noqa: E402
from ntkal.feature_store import FeatureStore, FeatureStoreError  # noqa: E402

FP = "f" * 32


def blocks(seed, sizes=(2, 0, 3, 1), dim=5):
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((sum(sizes), dim)).astype(np.float32)
    return ntkal.Blocks(rows, np.concatenate([[0], np.cumsum(sizes)]))


def data_files(store, label="pool"):
    return sorted(p for p in (store.path / label).rglob("*") if p.is_file() and "/c/" in str(p))


def test_round_trip_take_read_and_dask(tmp_path):
    st = FeatureStore(tmp_path / "s", FP, {"kernel": "joint"})
    a, b = blocks(0), blocks(1, sizes=(1, 4))
    st.save("pool", 0, 4, "d0", a)
    st.save("pool", 4, 6, "d1", b, skipped=[(1, "bad")])
    st.record_label("pool", [(4, 6, "d1"), (0, 4, "d0")])
    assert st.chunks("pool") == [(0, 4), (4, 6)] and st.labels() == ["pool"] and st.extent("pool") == 6
    np.testing.assert_array_equal(st.load("pool", 0, 4, "d0").rows, a.rows)
    assert st.meta("pool", 4, 6)["skipped"] == [[1, "bad"]]
    whole = ntkal.Blocks.concatenate([a, b])
    np.testing.assert_array_equal(st.read("pool").rows, whole.rows)
    np.testing.assert_array_equal(st.read("pool").offsets, whole.offsets)
    picked = st.take("pool", [5, 0, 2])
    np.testing.assert_array_equal(picked.rows, whole.take([5, 0, 2]).rows)
    rows, offsets = st.to_dask("pool")
    np.testing.assert_array_equal(rows.compute(), whole.rows)
    np.testing.assert_array_equal(offsets, whole.offsets)
    reopened = FeatureStore(tmp_path / "s")  # read-only open, whatever wrote it
    assert reopened.fingerprint == FP and reopened.config == {"kernel": "joint"}


def test_other_structures_under_the_same_range_are_not_used(tmp_path):
    st = FeatureStore(tmp_path, FP)
    st.save("pool", 0, 4, "d0", blocks(0))
    assert st.load("pool", 0, 4, "another digest") is None
    assert st.load("pool", 0, 4, "d0") is not None  # not damaged: kept


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "offsets", "meta"])
def test_damaged_chunk_is_detected_discarded_and_recomputed(tmp_path, damage):
    st = FeatureStore(tmp_path, FP)
    st.save("pool", 0, 4, "d0", blocks(0))
    rows_file = [p for p in data_files(st) if "/rows/" in str(p)][0]
    if damage == "flip":
        data = bytearray(rows_file.read_bytes())
        data[7] ^= 0x10
        rows_file.write_bytes(bytes(data))
    elif damage == "truncate":
        rows_file.write_bytes(rows_file.read_bytes()[:-9])
    elif damage == "delete":  # zarr alone would read a missing chunk as zeros
        rows_file.unlink()
    elif damage == "offsets":
        f = [p for p in data_files(st) if "/offsets/" in str(p)][0]
        f.write_bytes(b"\0" * len(f.read_bytes()))
    else:
        (st.path / "pool" / "c000000000-000000004" / "zarr.json").write_text("{not json")
    assert st.load("pool", 0, 4, "d0") is None
    assert st.chunks("pool") == []  # moved aside: a rerun recomputes it
    st.save("pool", 0, 4, "d0", blocks(0))
    np.testing.assert_array_equal(st.load("pool", 0, 4, "d0").rows, blocks(0).rows)


def test_half_written_chunk_does_not_count(tmp_path):
    st = FeatureStore(tmp_path, FP)
    st.save("pool", 0, 4, "d0", blocks(0))
    # what a killed writer leaves: a temporary directory, never renamed into place
    os.rename(st.path / "pool" / "c000000000-000000004", st.path / "pool" / ".tmp-c000000000-000000004-dead")
    assert st.chunks("pool") == [] and st.load("pool", 0, 4, "d0") is None


def test_two_writers_of_one_chunk_leave_one_complete_copy(tmp_path):
    st1, st2 = FeatureStore(tmp_path, FP), FeatureStore(tmp_path, FP)
    errors = []

    def write(st, seed):
        try:
            for _ in range(20):
                st.save("pool", 0, 4, "d0", blocks(0))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in enumerate((st1, st2))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    np.testing.assert_array_equal(st1.load("pool", 0, 4, "d0").rows, blocks(0).rows)
    assert [p.name for p in (tmp_path / "pool").iterdir()] == ["c000000000-000000004"]


def test_bad_stores_are_refused_naming_the_argument(tmp_path):
    FeatureStore(tmp_path / "s", FP)
    with pytest.raises(ntkal.InvalidArgumentError, match="cache .* holds features of another featurizer"):
        FeatureStore(tmp_path / "s", "0" * 32, where="acquire", arg="cache")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ntkal.InvalidArgumentError, match="not an ntkal feature store"):
        FeatureStore(tmp_path / "other", FP)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ntkal.InvalidArgumentError, match="cache .* cannot be written"):
        FeatureStore(tmp_path / "file" / "store", FP, where="acquire", arg="cache")
    with pytest.raises(ntkal.InvalidArgumentError, match="not an ntkal feature store"):
        FeatureStore(tmp_path / "missing")


# Runs in a fresh interpreter: as root (CI), it drops to uid/gid 65534 (nobody) once everything it needs is
# imported and warmed up, so the kernel refuses the writes for it as for any user. (chattr +i needs a file
# system and a capability that containers often lack; fork() after torch and zarr started threads may hang.)
READ_ONLY_SCRIPT = """
import json, os, shutil, sys
import numpy as np
import ntkal
from ntkal.feature_store import FeatureStore

path, fp = sys.argv[1], sys.argv[2]
posterior = ntkal.Posterior(5, noise_var=1e-2)

def reads(where):
    store = FeatureStore(where)  # opened for reading
    return {"read": store.read("pool").rows.tolist(), "take": store.take("pool", [5, 1]).rows.tolist(),
            "meta": store.meta("pool", 4, 6)["skipped"],
            "shortlist": ntkal.screen(where, posterior, "pool", shortlist=2, progress=False).shortlists["*"][0].tolist()}

# every lazy import done before privileges drop, on a copy (nothing cached for the store itself)
before = reads(shutil.copytree(path, path + "-warm-up"))
if os.geteuid() == 0:
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
try:
    open(os.path.join(path, "probe"), "w").close()
    sys.exit("the store directory is writable for this process: the test would check nothing")
except PermissionError:
    pass
out = {"uid": os.geteuid(), "reads_unchanged": reads(path) == before}
for what, write in (("open", lambda: FeatureStore(path, fp)),
                    ("save", lambda: FeatureStore(path).save("pool", 6, 8, "d2", ntkal.Blocks(
                        np.ones((2, 5), np.float32), np.array([0, 1, 2]))))):
    try:
        write()
        out[what] = "no error"
    except ntkal.InvalidArgumentError as exc:
        out[what] = str(exc)
print(json.dumps(out))
"""


def world_traversable_dir() -> str:
    """A temporary directory that uid 65534 can reach (pytest's tmp_path is private to root)."""
    import stat
    import tempfile

    for base in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        parts = pathlib.Path(base).resolve()
        if parts.is_dir() and all(p.stat().st_mode & stat.S_IXOTH for p in [parts, *parts.parents]):
            d = tempfile.mkdtemp(prefix="ntkal-read-only-", dir=base)
            os.chmod(d, 0o755)
            return d
    pytest.fail("no temporary directory that an unprivileged user can reach")


def test_read_only_store_is_refused_for_writing_and_read_as_usual():
    """A store its user cannot write (root included: the check drops to an unprivileged user in a fresh
    interpreter) is refused for writing with a named error and read as usual."""
    import subprocess
    import sys

    top = world_traversable_dir()
    path = pathlib.Path(top) / "s"
    try:
        st = FeatureStore(path, FP)
        st.save("pool", 0, 4, "d0", blocks(0))
        st.save("pool", 4, 6, "d1", blocks(1, sizes=(1, 4)), skipped=[(1, "bad")])
        st.record_label("pool", [(0, 4, "d0"), (4, 6, "d1")])
        for p in [path, *path.rglob("*")]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        pkg_dir = os.path.dirname(os.path.dirname(ntkal.__file__))  # the ntkal this test imported
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([pkg_dir, os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run([sys.executable, "-c", READ_ONLY_SCRIPT, str(path), FP], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["uid"] != 0 and out["reads_unchanged"]
        assert out["open"].endswith(f"FeatureStore: path {str(path)!r} is not writable"), out["open"]
        assert "cannot write a feature chunk" in out["save"] and "Permission denied" in out["save"], out["save"]
        assert st.chunks("pool") == [(0, 4), (4, 6)] and sorted(p.name for p in path.iterdir()) == ["pool",
                                                                                                   "zarr.json"]
    finally:
        for p in pathlib.Path(top).rglob("*"):  # the store and the child's warm-up copy
            os.chmod(p, 0o755)
        shutil.rmtree(top, ignore_errors=True)


def test_stale_chunks_over_the_same_structures_are_replaced(tmp_path):
    """A training file that grew: chunk 0..4 becomes 0..6; the old range goes, the label stays a partition."""
    st = FeatureStore(tmp_path, FP)
    st.save("train", 0, 4, "old", blocks(0))
    st.save("train", 4, 6, "tail", blocks(1, sizes=(1, 1)))
    st.save("train", 0, 6, "new", blocks(2, sizes=(1, 1, 1, 1, 1, 1)))
    assert st.chunks("train") == [(0, 6)]
    st.record_label("train", [(0, 6, "new")])
    np.testing.assert_array_equal(st.read("train").rows, blocks(2, sizes=(1, 1, 1, 1, 1, 1)).rows)


def edit_attributes(store, label, start, stop, **changes):
    path = store.path / label / f"c{start:09d}-{stop:09d}" / "zarr.json"
    meta = json.loads(path.read_text())
    meta["attributes"].update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("edit", [{"skipped": [[2, "edited"]]}, {"structures": "d9"}, {"n_rows": 7}])
def test_a_chunk_with_edited_attributes_fails_its_checks(tmp_path, edit):
    """The attributes are checksummed like the data: an edited skipped list, digest or shape is damage."""
    st = FeatureStore(tmp_path, FP)
    st.save("pool", 0, 4, "d0", blocks(0))
    assert st.meta("pool", 0, 4)["skipped"] == []
    edit_attributes(st, "pool", 0, 4, **edit)
    with pytest.raises(FeatureStoreError, match=r"FeatureStore.meta: path .*'pool' structures 0\.\.4: the chunk fails "
                       r"a check: its attributes \(zarr.json\) fail their crc32"):
        st.meta("pool", 0, 4)
    st.record_label("pool", [(0, 4, "d0")])
    with pytest.raises(FeatureStoreError, match="attributes .* fail their crc32"):
        st.read("pool")
    assert st.chunks("pool") == [(0, 4)]  # a reader never moves a chunk
    assert st.load("pool", 0, 4, "d0") is None  # the writer's path: moved aside, to be recomputed
    assert st.chunks("pool") == []


def test_a_label_is_read_through_its_record(tmp_path):
    st = FeatureStore(tmp_path, FP)
    for a in range(0, 12, 4):
        st.save("pool", a, a + 4, f"d{a}", blocks(a))
    with pytest.raises(FeatureStoreError, match="'pool' has no record of its extent \\(3 chunks found\\): the run "
                       "writing it has not finished"):
        st.read("pool")
    with pytest.raises(FeatureStoreError, match="holds no 'train' features"):
        st.read("train")
    with pytest.raises(ntkal.InvalidArgumentError, match="must partition its structures from 0; got 8..12 after 4"):
        st.record_label("pool", [(0, 4, "d0"), (8, 12, "d8")])
    st.record_label("pool", [(a, a + 4, f"d{a}") for a in range(0, 12, 4)])
    assert st.extent("pool") == 12 and len(st.read("pool")) == 12
    np.testing.assert_array_equal(st.take("pool", [11, 0]).rows, st.read("pool").take([11, 0]).rows)
    with pytest.raises(ntkal.InvalidArgumentError, match="indices must be one or more of 'pool'"):
        st.take("pool", [12])
    record = st.path / "pool" / "zarr.json"
    record.write_text(record.read_text().replace('"n_structures": 12', '"n_structures": 8'))
    with pytest.raises(FeatureStoreError, match="the record of 'pool' \\(pool/zarr.json\\) fails its check"):
        st.read("pool")
