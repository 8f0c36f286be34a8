"""Property-based fuzz of the public engine API (run by test_fuzz.py in a subprocess, so that an
interpreter crash is a test failure and not a dead test run).

Each property draws, about six times in ten, a valid input (float16/32/64 in any layout: C, Fortran,
reversed, strided; valid ragged offsets of any integer dtype; in-range counts) whose result is
checked against ``ntkal._reference`` for every method; otherwise a fuzzed one: random shapes, dtypes
(float16/32/64, integers, bool, complex, object), layouts, NaN/Inf, ragged and malformed offsets,
empty inputs, huge or negative counts and fake CUDA arrays. Every call must either return the
reference's result or raise ntkal.InvalidArgumentError whose message starts with the function's
name. Valid values are multiples of 1/4: exact in float16 and float32, so squared distances are
exact and LCMD / maxdist picks must equal the reference's, ties included. The last test checks that
at least half of every property's examples were valid inputs checked against the reference."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import ntkal
from ntkal import _reference as ref
from ntkal.backends import cpu
from ntkal.options import DISTANCE_METHODS

settings.register_profile("ci", max_examples=600, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
settings.load_profile("ci")

D = 5
DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.bool_, np.complex64, object]
VALID_SHARE = 0.6  # share of examples drawn from the valid-input strategies
SELECT_VALID_SHARE = 0.7  # the same for select's method and n, given valid rows and offsets
COUNTS: dict = {}  # property -> [valid examples checked against the reference, all examples]


def counted(valid: bool, *props: str) -> bool:
    """Count one example under each of ``props`` (a property, or a property and its method) and report
    it to hypothesis's statistics; returns ``valid``."""
    for prop in props:
        c = COUNTS.setdefault(prop, [0, 0])
        c[0] += bool(valid)
        c[1] += 1
    event(f"{props[-1]}: {'valid input, checked against _reference' if valid else 'invalid input, must be refused'}")
    return valid


class FakeCudaArray:
    """Claims to live on a CUDA device; no CPU call may dereference it."""

    def __init__(self, shape):
        self.__cuda_array_interface__ = {"shape": tuple(shape), "typestr": "<f4", "data": (0, False),
                                         "version": 3, "strides": None}


def _layout(draw, a: np.ndarray, base: np.ndarray):
    layout = draw(st.sampled_from(["c", "c", "f", "reversed", "strided"])) if a.ndim == 2 else "c"
    if layout == "f":
        a = np.asfortranarray(a)
    elif layout == "reversed":
        a, base = a[::-1], base[::-1]
    elif layout == "strided":
        a = np.repeat(a, 2, axis=1)[:, ::2]
    return a, base


@st.composite
def valid_arrays(draw, width=D, min_rows=0, max_rows=12):
    """(array, clean float64 copy): a valid float input, values multiples of 1/4 in [-10, 10]."""
    rows = draw(st.integers(min_rows, max_rows))
    values = draw(st.lists(st.integers(-40, 40), min_size=rows * width, max_size=rows * width))
    base = np.asarray(values, dtype=np.float64).reshape(rows, width) / 4
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64, np.float16]))
    return _layout(draw, base.astype(dtype), base)


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
    a, base = _layout(draw, a, base)
    valid = (np.dtype(dtype).kind == "f" and dtype is not object and not special and ndim == 2
             and (width is None or shape[1] == width) and shape[1] > 0)
    if valid and dtype == np.float16:
        base = base.astype(np.float16).astype(np.float64)
    elif valid:
        base = base.astype(np.float32).astype(np.float64)
    return a, (base if valid else None)


@st.composite
def valid_offsets(draw, n_rows):
    """None (one row per block) or a valid ragged partition of n_rows, in any integer dtype."""
    if draw(st.booleans()):
        return None
    cuts = sorted(draw(st.lists(st.integers(0, n_rows), max_size=6)))
    o = np.array([0, *cuts, n_rows], dtype=np.int64)
    return o.astype(draw(st.sampled_from([np.int64, np.int32, np.uint16])))


@st.composite
def offsets_for(draw, n_rows):
    """(offsets, valid): None, a valid ragged partition of n_rows, or a malformed one."""
    kind = draw(st.sampled_from(["none", "none", "valid", "valid", "valid", "bad"]))
    if kind == "none":
        return None, True
    if kind == "valid":
        o = draw(valid_offsets(n_rows))
        return (np.array([0, n_rows]) if o is None else o), True
    bad = draw(st.sampled_from(["start", "end", "order", "float", "2d", "empty", "negative"]))
    o = np.array([0, n_rows], dtype=np.int64)
    o = {"start": np.array([1, n_rows + 1]), "end": np.array([0, n_rows + 1]),
         "order": np.array([0, n_rows + 2, n_rows]), "float": o.astype(np.float64), "2d": o[None],
         "empty": np.array([], dtype=np.int64), "negative": np.array([0, -1, n_rows])}[bad]
    return o, False


def rows_and_offsets(data, width=D, min_rows=0):
    """(rows, clean or None, offsets, offsets valid): valid about VALID_SHARE of the time, else fuzzed."""
    if data.draw(st.floats(0, 1)) < VALID_SHARE:
        rows, clean = data.draw(valid_arrays(width=width, min_rows=min_rows))
        return rows, clean, data.draw(valid_offsets(len(rows))), True
    rows, clean = data.draw(arrays(width=width))
    off, off_ok = data.draw(offsets_for(len(rows) if hasattr(rows, "__len__") and np.ndim(rows) else 0))
    return rows, clean, off, off_ok


def n_blocks_of(rows, off, off_ok) -> int:
    n_rows = len(rows) if np.ndim(rows) else 0
    return (len(off) - 1) if off is not None and off_ok and np.ndim(off) == 1 and len(off) else n_rows


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
        return fn()
    except ntkal.InvalidArgumentError as exc:
        assert str(exc).startswith(where), f"error does not name {where}: {exc}"
        return None


def _pv_reference(train, rows, offsets, noise_var, **kw):
    return ref.posterior_variance(train, None, rows, offsets, noise_var, **kw)


TRAIN = np.random.default_rng(0).standard_normal((9, D)).astype(np.float32)


@given(st.data())
def test_posterior_add_and_variance(data):
    rows, clean, off, off_ok = rows_and_offsets(data)
    precision = data.draw(st.sampled_from(["float32", "float64"]))
    scale, intensive = data.draw(st.booleans()), data.draw(st.booleans())
    post = ntkal.Posterior(D, noise_var=0.1, scale=scale, precision=precision)
    added = outcome("Posterior.add", lambda: post.add(rows, off))
    if not counted(clean is not None and off_ok, "posterior"):
        assert added is None
        return
    assert added is post
    pv = post.variance(rows, off, intensive=intensive)
    expect = _pv_reference(clean, clean, off, 0.1, scale=scale, intensive=intensive)
    np.testing.assert_allclose(pv, expect, rtol=2e-3, atol=1e-6)


@given(st.data())
def test_shortlist(data):
    rows, clean, off, off_ok = rows_and_offsets(data)
    n_blocks = n_blocks_of(rows, off, off_ok)
    if clean is not None and off_ok and data.draw(st.floats(0, 1)) < VALID_SHARE:
        k = data.draw(st.integers(0, n_blocks))
    else:
        k = data.draw(st.one_of(st.integers(0, 3), st.integers(-2, 20), st.just(2**62), st.just(True),
                                st.floats(0, 5)))
    post = ntkal.Posterior(D, noise_var=0.1).add(TRAIN)
    res = outcome("shortlist", lambda: ntkal.shortlist(rows, off, post, k))
    valid = (clean is not None and off_ok and isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= n_blocks)
    if not counted(valid, "shortlist"):
        assert res is None
        return
    idx, pv = res
    expect_pv = _pv_reference(TRAIN, clean, off, 0.1)
    assert len(idx) == k and len(set(idx.tolist())) == k
    np.testing.assert_allclose(pv, expect_pv[idx], rtol=2e-3, atol=1e-6)
    if k:  # nothing left out ranks clearly above the last one kept
        rest = np.setdiff1d(np.arange(len(expect_pv)), idx)
        assert not rest.size or expect_pv[rest].max() <= pv.min() * (1 + 5e-3) + 1e-6


def _check_greedy_pv(clean, off, sel):
    """Each pick has the largest reference PV given the picks before it (within float32 rounding), and
    its score is that PV."""
    o = ref._offsets_or_default(clean, off)
    picked = []
    for pick, score in zip(sel.indices.tolist(), sel.scores):
        train = np.concatenate([TRAIN.astype(np.float64)] + [clean[o[p]:o[p + 1]] for p in picked])
        pv = _pv_reference(train, clean, o, 0.1)
        rest = np.setdiff1d(np.arange(len(o) - 1), picked)
        np.testing.assert_allclose(score, pv[pick], rtol=2e-3, atol=1e-6)
        assert pv[pick] >= pv[rest].max() * (1 - 5e-3) - 1e-6
        picked.append(pick)


def _check_variance_reduction(clean, off, sel):
    """Each pick lowers the integrated variance over the candidates (the default target) the most given the picks
    before it (reference scores, within float32 rounding of the rows), and its score is that reduction."""
    o = ref._offsets_or_default(clean, off)
    M = clean.T @ clean
    picked = []
    for pick, score in zip(sel.indices.tolist(), sel.scores):
        train = np.concatenate([TRAIN.astype(np.float64)] + [clean[o[p]:o[p + 1]] for p in picked])
        active = np.ones(len(o) - 1, dtype=bool)
        active[picked] = False
        gains = ref.variance_reduction_scores(clean, o, train, 0.1, M, active)
        np.testing.assert_allclose(score, gains[pick], rtol=2e-3, atol=1e-6)
        assert gains[pick] >= gains.max() * (1 - 5e-3) - 1e-6
        picked.append(pick)


def _check_distance_method(method, clean, off, use_train, sel):
    """The reference's picks and scores on the engine's own distance vectors (rows, or the Gram sketch
    of multi-row blocks; exact float64 distances of dyadic rows, so equal picks, ties included)."""
    o = None if off is None else np.asarray(off, dtype=np.int64)
    b = cpu.blocks(clean.astype(np.float32), o, "fuzz")
    multi = not b.one_row_each
    vecs = cpu.gram_sketch(b, D, 0).rows if multi else b.rows
    tvecs = None
    if use_train:
        t = cpu.blocks(TRAIN, None, "fuzz")
        tvecs = cpu.gram_sketch(t, D, 0).rows if multi else TRAIN
        tvecs = np.asarray(tvecs, dtype=np.float64)
    idx, scores = getattr(ref, method)(np.asarray(vecs, np.float64), len(sel.indices),  # named after the method
                                                                   tvecs)
    np.testing.assert_array_equal(sel.indices, idx)
    np.testing.assert_allclose(sel.scores, scores, rtol=1e-5, atol=1e-9)


@given(st.data())
def test_select(data):
    rows, clean, off, off_ok = rows_and_offsets(data)
    n_blocks = n_blocks_of(rows, off, off_ok)
    # six methods share select's examples: a larger share of valid (method, n) keeps each method's valid
    # examples above half (test_zz_every_property_checked_mostly_valid_inputs) with bad input still a third
    if clean is not None and off_ok and data.draw(st.floats(0, 1)) < SELECT_VALID_SHARE:
        method, n = data.draw(st.sampled_from(ntkal.METHODS)), data.draw(st.integers(0, n_blocks))
    else:
        method = data.draw(st.sampled_from([*ntkal.METHODS, "nope", 3]))
        n = data.draw(st.one_of(st.integers(0, 3), st.integers(-2, 14), st.just(2**62)))
    use_train = data.draw(st.booleans())
    post = ntkal.Posterior(D, noise_var=0.1).add(TRAIN)
    kwargs = {"posterior": post}  # rows must then have the posterior's width, whatever the method
    if use_train and method in DISTANCE_METHODS:
        kwargs["train_rows"] = TRAIN
    sel = outcome("select", lambda: ntkal.select(rows, off, n, method=method, **kwargs))
    valid = clean is not None and off_ok and method in ntkal.METHODS and 0 <= n <= n_blocks
    if valid and method == "variance_reduction" and off is not None:  # blocks without rows are never picked
        valid = n <= int(np.count_nonzero(np.diff(np.asarray(off))))
    if not counted(valid, "select", f"select[{method if method in ntkal.METHODS else 'bad method'}]"):
        assert sel is None
        return
    assert sel is not None
    idx = sel.indices
    assert len(idx) == n and len(set(idx.tolist())) == n
    assert idx.size == 0 or (0 <= idx.min() and idx.max() < n_blocks)
    expect_pv = _pv_reference(TRAIN, clean, off, 0.1)
    if method == "topk":
        np.testing.assert_allclose(sel.scores, expect_pv[idx], rtol=2e-3, atol=1e-6)
        rest = np.setdiff1d(np.arange(n_blocks), idx)
        assert not (n and rest.size) or expect_pv[rest].max() <= sel.scores.min() * (1 + 5e-3) + 1e-6
    elif method == "random":
        np.testing.assert_array_equal(idx, ref.random_selection(n_blocks, n, 0))
        np.testing.assert_allclose(sel.scores, expect_pv[idx], rtol=2e-3, atol=1e-6)
    elif method == "greedy_pv":
        _check_greedy_pv(clean, off, sel)
    elif method == "variance_reduction":
        _check_variance_reduction(clean, off, sel)
    else:
        _check_distance_method(method, clean, off, use_train and method in DISTANCE_METHODS, sel)


@given(st.data())
def test_sketch_project(data):
    kind = data.draw(st.sampled_from(["gaussian", "sparse_sign"]))
    n_params = data.draw(st.integers(1, 16))
    if data.draw(st.floats(0, 1)) < VALID_SHARE:
        width = data.draw(st.integers(1, n_params))
        J, clean = data.draw(valid_arrays(width=width))
        col_offset = data.draw(st.integers(0, n_params - width))
    else:
        J, clean = data.draw(arrays(allow_bad=True))
        col_offset = data.draw(st.one_of(st.integers(0, 4), st.integers(-1, 16), st.just(2**62)))
    sk = ntkal.Sketch(n_params, 6, kind=kind, seed=3, nnz=2)
    phi = outcome("Sketch.project", lambda: sk.project(J, col_offset=col_offset))
    if clean is None and isinstance(J, np.ndarray) and J.ndim == 2 and J.shape[1] == 0 and J.dtype.kind == "f":
        clean = np.zeros(J.shape)  # no parameter columns: a valid (empty) chunk that projects to zeros
    valid = clean is not None and 0 <= col_offset and col_offset + clean.shape[1] <= n_params
    if not counted(valid, "Sketch.project"):
        assert phi is None
        return
    S = ref.sketch_matrix(n_params, 6, kind, seed=3, nnz=2)[col_offset:col_offset + clean.shape[1]]
    np.testing.assert_allclose(phi, ref.project(clean, S), rtol=1e-4, atol=1e-4)


@given(st.data())
def test_blocks(data):
    if data.draw(st.floats(0, 1)) < VALID_SHARE:
        rows, clean = data.draw(valid_arrays(width=data.draw(st.integers(1, 7))))
        off, off_ok = data.draw(valid_offsets(len(rows))), True
    else:
        rows, clean = data.draw(arrays())
        off, off_ok = data.draw(offsets_for(len(rows) if np.ndim(rows) else 0))
    blocks = outcome("Blocks", lambda: ntkal.Blocks(rows, off))
    if not counted(clean is not None and off_ok, "Blocks"):
        assert blocks is None
        return
    np.testing.assert_array_equal(blocks.sizes, ref.block_sizes(clean, off))
    np.testing.assert_array_equal(blocks.rows, clean.astype(np.float32))


@given(st.data())
def test_posterior_constructor(data):
    good = data.draw(st.floats(0, 1)) < VALID_SHARE
    dim = data.draw(st.integers(1, 8) if good else st.sampled_from([0, -1, 2**40, 1.5, "3", None, True, 4]))
    noise_var = data.draw(st.floats(1e-6, 10.0) if good else st.sampled_from([0.0, -1.0, np.nan, np.inf, "x", None,
                                                                               0.5]))
    post = outcome("Posterior", lambda: ntkal.Posterior(dim, noise_var=noise_var))
    valid = (isinstance(dim, int) and not isinstance(dim, bool) and 1 <= dim <= 2**31
             and isinstance(noise_var, float) and np.isfinite(noise_var) and noise_var > 0)
    if not counted(valid, "Posterior"):
        assert post is None
        return
    x = np.linspace(-1, 1, 3 * dim).reshape(3, dim).astype(np.float32)  # prior PV = noise_var ||x||^2
    np.testing.assert_allclose(post.variance(x), _pv_reference(np.zeros((0, dim)), x, None, noise_var), rtol=1e-6)


def test_posterior_refuses_a_dim_whose_matrices_cannot_exist():
    """Found by test_posterior_constructor: dim = 2**40 with a valid noise_var was accepted (dim * dim
    wrapped to 0 in 64 bits, leaving an empty Gram)."""
    for dim in (2**40, 2**32, 3037000500):
        must_fail_cleanly("Posterior", lambda: ntkal.Posterior(dim, noise_var=0.5))


def test_zz_every_property_checked_mostly_valid_inputs():
    """Runs after the properties above (file order): at least half of every property's examples were
    valid inputs whose results were checked against the reference."""
    assert COUNTS, "no property ran"
    shares = {prop: valid / total for prop, (valid, total) in COUNTS.items()}
    print("valid share per property: " + ", ".join(f"{p} {v}/{t} ({v / t:.0%})" for p, (v, t) in
                                                   sorted(COUNTS.items())))
    low = {p: s for p, s in shares.items() if s < 0.5 and p != "select[bad method]"}
    assert not low, f"properties with fewer than half valid examples: {low}"
