"""Property-based fuzz of the public engine API (run by test_fuzz.py in a subprocess, so that an
interpreter crash is a test failure and not a dead test run).

Every call gets random shapes, dtypes (float16/32/64, integers, bool, complex, object), layouts
(non-contiguous, negative strides, Fortran order), NaN/Inf, ragged and malformed offsets, empty
inputs, huge or negative counts and fake CUDA arrays. Each call must either return a correct result
(checked against ntkal._reference or by its defining property) or raise
ntkal.InvalidArgumentError whose message starts with the function's name."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import ntkal
from ntkal import _reference as ref

settings.register_profile("ci", max_examples=600, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
settings.load_profile("ci")

D = 5
DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.bool_, np.complex64, object]


class FakeCudaArray:
    """Claims to live on a CUDA device; no CPU call may dereference it."""

    def __init__(self, shape):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": "<f4", "data": (0, False),
                                         "version": 3, "strides": None}


@st.composite
def arrays(draw, ndim=None, width=None, max_rows=12, allow_bad=True):
    """(array, clean) where clean is the float64 copy when the array is a valid float input, else None."""
    if ndim is None:
        ndim = draw(st.sampled_from([2] * 9 + [1, 3, 0])) if allow_bad else 2
    rows = draw(st.integers(0, max_rows))
    cols = width if width is not None else D
    if allow_bad and draw(st.integers(0, 9)) == 0:
        cols = draw(st.integers(0, 7))
    shape = {0: (), 1: (rows,), 2: (rows, cols), 3: (2, rows, cols)}[ndim]
    values = draw(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=int(np.prod(shape)),
                           max_size=int(np.prod(shape))))
    base = np.asarray(values, dtype=np.float64).reshape(shape)
    special = allow_bad and base.size and draw(st.integers(0, 7)) == 0
    if special:
        base.flat[draw(st.integers(0, base.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    dtype = draw(st.sampled_from(DTYPES)) if allow_bad and draw(st.integers(0, 5)) == 0 else np.float32
    if allow_bad and draw(st.integers(0, 40)) == 0:
        return FakeCudaArray(shape), None
    with np.errstate(invalid="ignore"):  # NaN/Inf cast to integers is part of the fuzz
        a = base.astype(dtype)
    layout = draw(st.sampled_from(["c", "c", "f", "reversed", "strided"])) if ndim == 2 else "c"
    if layout == "f":
        a = np.asfortranarray(a)
    elif layout == "reversed":
        a = a[::-1]
        base = base[::-1]
    elif layout == "strided":
        a = np.repeat(a, 2, axis=1)[:, ::2]
    valid = (np.dtype(dtype).kind == "f" and dtype is not object and not special and ndim == 2
             and (width is None or shape[1] == width) and shape[1] > 0)
    if valid and dtype == np.float16:
        base = base.astype(np.float16).astype(np.float64)
    elif valid:
        base = base.astype(np.float32).astype(np.float64)
    return a, (base if valid else None)


@st.composite
def offsets_for(draw, n_rows):
    """(offsets, valid): None, a valid ragged partition of n_rows, or a malformed one."""
    kind = draw(st.sampled_from(["none", "none", "valid", "valid", "valid", "bad"]))
    if kind == "none":
        return None, True
    if kind == "valid":
        cuts = sorted(draw(st.lists(st.integers(0, n_rows), max_size=6)))
        o = np.array([0, *cuts, n_rows], dtype=np.int64)
        return o.astype(draw(st.sampled_from([np.int64, np.int32, np.uint16]))), True
    bad = draw(st.sampled_from(["start", "end", "order", "float", "2d", "empty", "negative"]))
    o = np.array([0, n_rows], dtype=np.int64)
    o = {"start": np.array([1, n_rows + 1]), "end": np.array([0, n_rows + 1]),
         "order": np.array([0, n_rows + 2, n_rows]), "float": o.astype(np.float64), "2d": o[None],
         "empty": np.array([], dtype=np.int64), "negative": np.array([0, -1, n_rows])}[bad]
    return o, False


def must_fail_cleanly(where, fn):
    try:
        fn()
    except ntkal.InvalidArgumentError as exc:
        assert str(exc).startswith(where), f"error does not name {where}: {exc}"
        return None
    raise AssertionError(f"{where} accepted input it should have refused")


def outcome(where, fn):
    """Run fn: return its result, or None after checking the error names `where`."""
    try:
        result = fn()
    except ntkal.InvalidArgumentError as exc:
        assert str(exc).startswith(where), f"error does not name {where}: {exc}"
        event(f"{where}: refused")
        return None
    event(f"{where}: accepted")
    return result


def _pv_reference(train, rows, offsets, noise_var):
    return ref.posterior_variance(train, None, rows, offsets, noise_var)


TRAIN = np.random.default_rng(0).standard_normal((9, D)).astype(np.float32)


@given(arrays(width=D), st.data())
def test_posterior_add_and_variance(pair, data):
    rows, clean = pair
    off, off_ok = data.draw(offsets_for(len(rows) if hasattr(rows, "__len__") and np.ndim(rows) else 0))
    post = ntkal.Posterior(D, noise_var=0.1)
    added = outcome("Posterior.add", lambda: post.add(rows, off))
    if clean is None or not off_ok:
        assert added is None
        return
    assert added is post
    pv = outcome("Posterior.variance", lambda: post.variance(rows, off))
    expect = _pv_reference(clean, clean, off, 0.1)
    np.testing.assert_allclose(pv, expect, rtol=2e-3, atol=1e-6)


@given(arrays(width=D), st.data())
def test_shortlist(pair, data):
    rows, clean = pair
    n_rows = len(rows) if np.ndim(rows) else 0
    off, off_ok = data.draw(offsets_for(n_rows))
    k = data.draw(st.one_of(st.integers(0, 3), st.integers(0, 3), st.integers(-2, 20), st.just(2**62), st.just(True),
                            st.floats(0, 5)))
    post = ntkal.Posterior(D, noise_var=0.1).add(TRAIN)
    res = outcome("shortlist", lambda: ntkal.shortlist(rows, off, post, k))
    n_blocks = (len(off) - 1) if off is not None and off_ok and np.ndim(off) == 1 and len(off) else n_rows
    valid = (clean is not None and off_ok and isinstance(k, int) and not isinstance(k, bool)
             and 0 <= k <= n_blocks)
    if not valid:
        assert res is None
        return
    idx, pv = res
    expect_pv = _pv_reference(TRAIN, clean, off, 0.1)
    assert len(idx) == k and len(set(idx.tolist())) == k
    np.testing.assert_allclose(pv, expect_pv[idx], rtol=2e-3, atol=1e-6)
    if k:  # nothing left out ranks clearly above the last one kept
        rest = np.setdiff1d(np.arange(len(expect_pv)), idx)
        assert not rest.size or expect_pv[rest].max() <= pv.min() * (1 + 5e-3) + 1e-6


@given(arrays(width=D), st.data())
def test_select(pair, data):
    rows, clean = pair
    n_rows = len(rows) if np.ndim(rows) else 0
    off, off_ok = data.draw(offsets_for(n_rows))
    method = data.draw(st.sampled_from([*ntkal.METHODS, "nope", 3]))
    n = data.draw(st.one_of(st.integers(0, 3), st.integers(0, 3), st.integers(-2, 14), st.just(2**62)))
    use_train = data.draw(st.booleans())
    post = ntkal.Posterior(D, noise_var=0.1).add(TRAIN)
    kwargs = {"posterior": post}  # rows must then have the posterior's width, whatever the method
    if use_train and method in ("lcmd", "maxdist"):
        kwargs["train_rows"] = TRAIN
    sel = outcome("select", lambda: ntkal.select(rows, off, n, method=method, **kwargs))
    n_blocks = (len(off) - 1) if off is not None and off_ok and np.ndim(off) == 1 and len(off) else n_rows
    valid = clean is not None and off_ok and method in ntkal.METHODS and 0 <= n <= n_blocks
    if not valid:
        assert sel is None
        return
    assert sel is not None
    idx = sel.indices
    assert len(idx) == n and len(set(idx.tolist())) == n and (idx.size == 0 or (0 <= idx.min() and idx.max() < n_blocks))
    if method == "topk":
        expect_pv = _pv_reference(TRAIN, clean, off, 0.1)
        np.testing.assert_allclose(sel.scores, expect_pv[idx], rtol=2e-3, atol=1e-6)


@given(arrays(allow_bad=True), st.data())
def test_sketch_project(pair, data):
    J, clean = pair
    kind = data.draw(st.sampled_from(["gaussian", "sparse_sign"]))
    n_params = data.draw(st.integers(1, 16))
    col_offset = data.draw(st.one_of(st.integers(0, 4), st.integers(0, 4), st.integers(-1, 16), st.just(2**62)))
    sk = ntkal.Sketch(n_params, 6, kind=kind, seed=3, nnz=2)
    phi = outcome("Sketch.project", lambda: sk.project(J, col_offset=col_offset))
    if clean is None and isinstance(J, np.ndarray) and J.ndim == 2 and J.shape[1] == 0 and J.dtype.kind == "f":
        clean = np.zeros(J.shape)  # no parameter columns: a valid (empty) chunk that projects to zeros
    if clean is None or not (0 <= col_offset and col_offset + clean.shape[1] <= n_params):
        assert phi is None
        return
    S = ref.sketch_matrix(n_params, 6, kind, seed=3, nnz=2)[col_offset:col_offset + clean.shape[1]]
    np.testing.assert_allclose(phi, clean @ S, rtol=1e-4, atol=1e-4)


@given(arrays(), st.data())
def test_blocks(pair, data):
    rows, clean = pair
    n_rows = len(rows) if np.ndim(rows) else 0
    off, off_ok = data.draw(offsets_for(n_rows))
    blocks = outcome("Blocks", lambda: ntkal.Blocks(rows, off))
    if clean is None or not off_ok:
        assert blocks is None
        return
    expect = np.diff(off) if off is not None else np.ones(n_rows, np.int64)
    np.testing.assert_array_equal(blocks.sizes, expect)
    np.testing.assert_array_equal(blocks.rows, clean.astype(np.float32))


@given(st.sampled_from([0, -1, 2**40, 1.5, "3", None, True]), st.sampled_from([0.0, -1.0, np.nan, np.inf, "x", None]))
def test_constructors_refuse_bad_scalars(dim, noise_var):
    must_fail_cleanly("Posterior", lambda: ntkal.Posterior(dim, noise_var=noise_var))
