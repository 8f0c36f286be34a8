"""Bad input: every case raises ntkal.InvalidArgumentError (a ValueError) whose message names the
function and the argument. A crash of the interpreter would take the whole run down with it."""

from __future__ import annotations

import re

import numpy as np
import pytest

import ntkal

D = 4
rng = np.random.default_rng(0)
GOOD = rng.standard_normal((6, D)).astype(np.float32)
GOOD_OFF = np.array([0, 2, 5, 6])


def _post():
    return ntkal.Posterior(D, noise_var=0.1).add(GOOD)


def _with(value, row=1, col=2):
    bad = GOOD.copy()
    bad[row, col] = value
    return bad


# Arrays that are wrong for a (n_rows, D) float32 feature argument, and what the message must say.
BAD_ROWS = [
    ("nan", _with(np.nan), "NaN or Inf"),
    ("inf", _with(np.inf), "NaN or Inf"),
    ("neg_inf", _with(-np.inf), "NaN or Inf"),
    ("nan_float64", _with(np.nan).astype(np.float64), "NaN or Inf"),
    ("1d", GOOD[0], "2-D"),
    ("3d", GOOD[None], "2-D"),
    ("width", GOOD[:, :3], "columns|width|dim"),
    ("int", GOOD.astype(np.int64), "dtype"),
    ("uint8", GOOD.astype(np.uint8), "dtype"),
    ("bool", GOOD > 0, "dtype"),
    ("complex", GOOD.astype(np.complex64), "dtype"),
    ("object", GOOD.astype(object), "dtype"),
    ("strings", np.full((6, D), "a"), "dtype"),
]

# Offsets that are wrong for the 6 rows of GOOD.
BAD_OFFSETS = [
    ("not_monotone", np.array([0, 3, 2, 6]), "non-decreasing|monotone"),
    ("not_start_0", np.array([1, 3, 6]), "start at 0"),
    ("end_short", np.array([0, 2, 5]), "end at"),
    ("end_long", np.array([0, 2, 7]), "end at"),
    ("empty", np.array([], dtype=np.int64), "at least one|1-D"),
    ("2d", GOOD_OFF[None], "1-D"),
    ("float", GOOD_OFF.astype(np.float64), "integer"),
]


def _raises(fn, *patterns):
    with pytest.raises(ntkal.InvalidArgumentError) as info:
        fn()
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    for p in patterns:
        assert re.search(p, message), f"{p!r} not in message {message!r}"
    return message


# ------------------------------------------------------------------------ rows / offsets everywhere

ROW_TAKERS = [
    ("Posterior.add", lambda r, o: ntkal.Posterior(D).add(r, o), "rows"),
    ("Posterior.variance", lambda r, o: _post().variance(r, o), "rows"),
    ("shortlist", lambda r, o: ntkal.shortlist(r, o, _post(), 1), "rows"),
    ("select", lambda r, o: ntkal.select(r, o, 1, method="lcmd"), "rows"),
    ("select", lambda r, o: ntkal.select(r, o, 1, method="greedy_pv"), "rows"),
    ("select", lambda r, o: ntkal.select(GOOD, GOOD_OFF, 1, train_rows=r, train_offsets=o), "train_rows"),
    ("distance_vectors", lambda r, o: ntkal.distance_vectors(r, o), "rows"),
    ("Blocks", lambda r, o: ntkal.Blocks(r, o), "rows"),
]


def _row_cases():
    for i, (where, call, arg) in enumerate(ROW_TAKERS):
        for case, rows, expect in BAD_ROWS:
            # any width is valid where only the pool itself fixes it
            if case == "width" and (where in ("distance_vectors", "Blocks") or (where == "select" and arg == "rows")):
                continue
            yield pytest.param(where, call, arg, rows, expect, id=f"{case}-{where}-{arg}-{i}")


@pytest.mark.parametrize("where,call,arg,rows,expect", list(_row_cases()))
def test_bad_rows(where, call, arg, rows, expect):
    _raises(lambda: call(rows, None), where.replace(".", r"\."), arg, expect)


OFFSET_TAKERS = [
    ("Posterior.add", lambda o: ntkal.Posterior(D).add(GOOD, o), "offsets"),
    ("Posterior.variance", lambda o: _post().variance(GOOD, o), "offsets"),
    ("shortlist", lambda o: ntkal.shortlist(GOOD, o, _post(), 1), "offsets"),
    ("select", lambda o: ntkal.select(GOOD, o, 1), "offsets"),
    ("select", lambda o: ntkal.select(GOOD, None, 1, train_rows=GOOD, train_offsets=o), "train_offsets"),
    ("distance_vectors", lambda o: ntkal.distance_vectors(GOOD, o), "offsets"),
    ("Blocks", lambda o: ntkal.Blocks(GOOD, o), "offsets"),
]


@pytest.mark.parametrize("where,call,arg", OFFSET_TAKERS,
                         ids=[f"{w}-{a}-{i}" for i, (w, _, a) in enumerate(OFFSET_TAKERS)])
@pytest.mark.parametrize("case,offsets,expect", BAD_OFFSETS, ids=[c for c, _, _ in BAD_OFFSETS])
def test_bad_offsets(where, call, arg, case, offsets, expect):
    _raises(lambda: call(offsets), where.replace(".", r"\."), arg, expect)


# ------------------------------------------------------------------------ Sketch

@pytest.mark.parametrize("kwargs,arg", [
    (dict(n_params=0, dim=8), "n_params"),
    (dict(n_params=-5, dim=8), "n_params"),
    (dict(n_params=10, dim=0), "dim"),
    (dict(n_params=10, dim=-1), "dim"),
    (dict(n_params=10, dim=2.5), "dim"),
    (dict(n_params=10, dim=8, kind="dense"), "kind"),
    (dict(n_params=10, dim=8, kind=None), "kind"),
    (dict(n_params=10, dim=8, nnz=0), "nnz"),
    (dict(n_params=10, dim=8, nnz=9), "nnz"),
    (dict(n_params=10, dim=8, nnz=-1), "nnz"),
    (dict(n_params=10, dim=8, seed=-1), "seed"),
    (dict(n_params=10, dim=8, seed=2**64), "seed"),
    (dict(n_params=10, dim=8, seed=1.5), "seed"),
])
def test_sketch_constructor(kwargs, arg):
    _raises(lambda: ntkal.Sketch(**kwargs), "Sketch", arg)


SK = ntkal.Sketch(10, D, kind="gaussian")
J_OK = rng.standard_normal((3, 10)).astype(np.float32)


@pytest.mark.parametrize("J,expect", [
    (J_OK[0], "2-D"),
    (J_OK[None], "2-D"),
    (J_OK.astype(np.int32), "dtype"),
    (J_OK.astype(np.complex128), "dtype"),
    (J_OK.astype(object), "dtype"),
    (np.where(np.arange(10) == 3, np.nan, J_OK).astype(np.float32), "NaN or Inf"),
    (np.where(np.arange(10) == 3, np.inf, J_OK).astype(np.float64), "NaN or Inf"),
    (None, "None|array"),
], ids=["1d", "3d", "int", "complex", "object", "nan", "inf64", "none"])
def test_project_bad_J(J, expect):
    _raises(lambda: SK.project(J), r"Sketch\.project", "J", expect)


@pytest.mark.parametrize("col_offset", [-1, 1, 11, 2.0])
def test_project_bad_col_offset(col_offset):
    _raises(lambda: SK.project(J_OK, col_offset=col_offset), r"Sketch\.project", "col_offset")


@pytest.mark.parametrize("out", [
    np.zeros((3, D + 1), np.float32),
    np.zeros((2, D), np.float32),
    np.zeros((3, D), np.float64),
    np.zeros((D, 3), np.float32).T,  # right shape, not C-contiguous
    [[0.0] * D] * 3,
], ids=["width", "rows", "float64", "fortran", "list"])
def test_project_bad_out(out):
    _raises(lambda: SK.project(J_OK, out=out), r"Sketch\.project", "out")


@pytest.mark.parametrize("p_begin,p_end", [(-1, 3), (5, 2), (0, 11), (11, 12)])
def test_dense_bad_range(p_begin, p_end):
    _raises(lambda: SK.dense(p_begin, p_end), r"Sketch\.dense", "p_begin|p_end")


# ------------------------------------------------------------------------ Posterior

@pytest.mark.parametrize("noise_var", [0.0, -1.0, np.nan, np.inf, -np.inf, "abc", None])
def test_posterior_bad_noise_var(noise_var):
    _raises(lambda: ntkal.Posterior(D, noise_var=noise_var), "Posterior", "noise_var")


@pytest.mark.parametrize("dim", [0, -3, 2.5, "4"])
def test_posterior_bad_dim(dim):
    _raises(lambda: ntkal.Posterior(dim), "Posterior", "dim")


def test_posterior_bad_precision():
    _raises(lambda: ntkal.Posterior(D, precision="float16"), "Posterior", "precision")


def test_posterior_width_mismatch():
    _raises(lambda: _post().variance(GOOD[:, :3]), r"Posterior\.variance", "rows", "4")
    _raises(lambda: ntkal.Posterior(D).add(GOOD[:, :3]), r"Posterior\.add", "rows", "4")


# ------------------------------------------------------------------------ shortlist

def test_shortlist_bad_arguments():
    post = _post()
    _raises(lambda: ntkal.shortlist(GOOD, None, post, -1), "shortlist", "k")
    _raises(lambda: ntkal.shortlist(GOOD, None, post, 7), "shortlist", "k")
    _raises(lambda: ntkal.shortlist(GOOD, None, post, 1.5), "shortlist", "k")
    _raises(lambda: ntkal.shortlist(GOOD, None, "post", 1), "shortlist", "posterior")
    _raises(lambda: ntkal.shortlist([(GOOD, None)], GOOD_OFF, post, 1), "shortlist", "offsets")
    _raises(lambda: ntkal.shortlist([GOOD], None, post, 1), "shortlist", "chunk")
    _raises(lambda: ntkal.shortlist([(_with(np.nan), None)], None, post, 1), "rows", "NaN or Inf")


# ------------------------------------------------------------------------ select

@pytest.mark.parametrize("n", [-1, 4, 1.5])
@pytest.mark.parametrize("method", ["lcmd", "greedy_pv", "maxdist", "topk", "random"])
def test_select_bad_n(n, method):
    _raises(lambda: ntkal.select(GOOD, GOOD_OFF, n, method=method), "select", r"\bn\b")


def test_select_bad_arguments():
    _raises(lambda: ntkal.select(GOOD, None, 1, method="kmeans"), "select", "method")
    _raises(lambda: ntkal.select(GOOD, None, 1, method=None), "select", "method")
    _raises(lambda: ntkal.select(GOOD, None, 1, precision="half"), "select", "precision")
    _raises(lambda: ntkal.select(GOOD, None, 1, method="greedy_pv", noise_var=0.0), "select", "noise_var")
    _raises(lambda: ntkal.select(GOOD, None, 1, method="topk", noise_var=np.nan), "select", "noise_var")
    _raises(lambda: ntkal.select(GOOD, None, 1, seed=-1), "select", "seed")
    _raises(lambda: ntkal.select(GOOD, None, 1, method="greedy_pv", posterior=ntkal.Posterior(D + 1)),
            "select", "posterior")
    _raises(lambda: ntkal.select(GOOD, None, 1, method="greedy_pv", posterior="p"), "select", "posterior")
    _raises(lambda: ntkal.select(GOOD, None, 1, train_rows=GOOD[:, :3]), "select", "train_rows")
    _raises(lambda: ntkal.select(GOOD, None, 1, train_offsets=GOOD_OFF), "select", "train_offsets")


def test_distance_vectors_bad_dim_and_seed():
    _raises(lambda: ntkal.distance_vectors(GOOD, GOOD_OFF, dim=0), "distance_vectors", "dim")
    _raises(lambda: ntkal.distance_vectors(GOOD, GOOD_OFF, seed=-2), "distance_vectors", "seed")


def test_engine_still_works_after_errors():
    # errors must leave no broken state behind (e.g. a half-updated posterior)
    post = _post()
    before = post.variance(GOOD)
    with pytest.raises(ntkal.InvalidArgumentError):
        post.add(_with(np.nan))
    assert post.n_rows == 6
    np.testing.assert_array_equal(post.variance(GOOD), before)
