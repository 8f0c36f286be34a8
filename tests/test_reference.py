"""Self-tests of the NumPy reference (ntkal._reference): Philox known-answer vectors, sketch
statistics, feature-space posterior vs the kernel-space GP formula, greedy/LCMD/MaxDist rules on
hand-made examples. None of these need the compiled engine."""

from __future__ import annotations

import math

import numpy as np
import pytest

# Random123 known-answer vectors for philox4x32_10 (kat_vectors: counter, key -> output).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _philox_scalar(c, k):
    """Philox-4x32-10 on Python ints, written out round by round (independent of the vectorised one)."""
    c, k = list(c), list(k)
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ k[1], p0 & 0xFFFFFFFF]
        k = [(k[0] + 0x9E3779B9) & 0xFFFFFFFF, (k[1] + 0xBB67AE85) & 0xFFFFFFFF]
    return c


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_known_answers(ref, counter, key, expected):
    out = ref.philox4x32_10(np.array([counter], dtype=np.uint32), *key)
    assert out.dtype == np.uint32 and out.shape == (1, 4)
    assert [int(x) for x in out[0]] == list(expected)
    assert _philox_scalar(counter, key) == list(expected)


def test_philox_vectorised_matches_scalar(ref):
    rng = np.random.default_rng(1)
    counters = rng.integers(0, 2**32, size=(64, 4), dtype=np.uint64).astype(np.uint32)
    key = (int(rng.integers(0, 2**32)), int(rng.integers(0, 2**32)))
    out = ref.philox4x32_10(counters, *key)
    expected = [_philox_scalar([int(x) for x in c], key) for c in counters]
    np.testing.assert_array_equal(out.astype(np.int64), np.array(expected, dtype=np.int64))


def _gaussian_entry_scalar(seed, p, j, dim):
    r = _philox_scalar((j // 4, p & 0xFFFFFFFF, p >> 32, 0x6A09E667), (seed & 0xFFFFFFFF, seed >> 32))
    h = (j % 4) // 2
    u1, u2 = (r[2 * h] + 0.5) * 2.0**-32, (r[2 * h + 1] + 0.5) * 2.0**-32
    rad, ang = math.sqrt(-2.0 * math.log(u1)), 2.0 * math.pi * u2
    return (rad * math.cos(ang) if j % 2 == 0 else rad * math.sin(ang)) / math.sqrt(dim)


def _sparse_row_scalar(seed, p, dim, nnz):
    row = np.zeros(dim)
    for t in range(nnz):
        r = _philox_scalar((t, p & 0xFFFFFFFF, p >> 32, 0x3C6EF372), (seed & 0xFFFFFFFF, seed >> 32))
        row[(r[0] * dim) >> 32] += (1.0 if r[1] & 1 else -1.0) / math.sqrt(nnz)
    return row


@pytest.mark.parametrize("seed", [0, 12345, 2**40 + 17])
def test_gaussian_sketch_entries_match_definition(ref, seed):
    dim = 11  # not a multiple of 4: the last quad is partly used
    params = [0, 1, 5, 2**32 - 1, 2**32, 2**32 + 3]
    for p in params:
        row = ref.sketch_matrix(2**33, dim, "gaussian", seed, p_begin=p, p_end=p + 1)[0]
        expected = [_gaussian_entry_scalar(seed, p, j, dim) for j in range(dim)]
        np.testing.assert_allclose(row, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 99, 2**63 + 5])
@pytest.mark.parametrize("nnz", [1, 3, 8])
def test_sparse_sign_sketch_entries_match_definition(ref, seed, nnz):
    dim = 16
    for p in [0, 7, 2**32 + 1]:
        row = ref.sketch_matrix(2**33, dim, "sparse_sign", seed, nnz=nnz, p_begin=p, p_end=p + 1)[0]
        np.testing.assert_allclose(row, _sparse_row_scalar(seed, p, dim, nnz), rtol=1e-15, atol=0)


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
def test_sketch_rows_are_chunk_independent_and_seeded(ref, kind):
    full = ref.sketch_matrix(300, 24, kind, seed=5, nnz=4)
    np.testing.assert_array_equal(ref.sketch_matrix(300, 24, kind, seed=5, nnz=4, p_begin=123, p_end=211),
                                  full[123:211])
    other = ref.sketch_matrix(300, 24, kind, seed=6, nnz=4)
    assert np.mean(full == other) < 0.9  # a different seed is a different sketch


def test_sketch_high_parameter_word_is_used(ref):
    # p and p + 2**32 share the low counter word; they must still get different rows
    lo = ref.sketch_matrix(2**33, 32, "gaussian", 3, p_begin=10, p_end=11)
    hi = ref.sketch_matrix(2**33, 32, "gaussian", 3, p_begin=2**32 + 10, p_end=2**32 + 11)
    assert not np.allclose(lo, hi)


def test_gaussian_sketch_statistics(ref):
    dim = 64
    s = ref.sketch_matrix(4000, dim, "gaussian", seed=11)
    z = s * np.sqrt(dim)
    assert abs(z.mean()) < 0.01
    assert abs(z.var() - 1.0) < 0.01
    # the four Box-Muller outputs of one counter are uncorrelated
    quads = z[:, :4]
    corr = np.corrcoef(quads.T)
    assert np.max(np.abs(corr - np.eye(4))) < 0.06


@pytest.mark.parametrize("nnz", [1, 4, 8])
def test_sparse_sign_sketch_structure(ref, nnz):
    dim = 128
    s = ref.sketch_matrix(8000, dim, "sparse_sign", seed=2, nnz=nnz)
    # each parameter: at most nnz nonzeros, entries integer multiples of 1/sqrt(nnz)
    assert np.all((s != 0).sum(axis=1) <= nnz)
    np.testing.assert_allclose(s * np.sqrt(nnz), np.round(s * np.sqrt(nnz)), atol=1e-12)
    # without bucket collisions a row has unit norm; collisions are rare for dim >> nnz
    unit = np.isclose((s**2).sum(axis=1), 1.0, rtol=1e-12)
    assert unit.mean() >= 1 - nnz * (nnz - 1) / dim  # P(collision) <= C(nnz,2)/dim
    # buckets roughly uniform, signs balanced
    counts = (s != 0).sum(axis=0)
    assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.5 * counts.mean()
    assert abs(np.sign(s[s != 0]).mean()) < 0.05


@pytest.mark.parametrize("kind", ["gaussian", "sparse_sign"])
def test_sketch_preserves_kernel_approximately(ref, kind):
    rng = np.random.default_rng(3)
    jac = rng.standard_normal((20, 2000))
    feats = ref.project(jac, ref.sketch_matrix(2000, 512, kind, seed=1))
    norms = np.linalg.norm(jac, axis=1)
    err = (feats @ feats.T - jac @ jac.T) / np.outer(norms, norms)
    # unbiased, entry error std ~ sqrt((1 + cos^2) / dim) ~ 0.044 here
    assert np.sqrt(np.mean(err**2)) < 2.0 / np.sqrt(512)
    assert abs(np.mean(np.diag(err))) < 0.05


def test_gram_sketch_estimates_block_kernel_and_is_invariant(ref):
    rng = np.random.default_rng(6)
    blocks = [rng.standard_normal((m, 6)) for m in (1, 4, 9)]
    rows = np.concatenate(blocks)
    offsets = np.array([0, 1, 5, 14])
    z = ref.gram_sketch(rows, offsets, 8192, seed=3)
    exact = np.array([[np.sum((a @ b.T) ** 2) for b in blocks] for a in blocks])
    np.testing.assert_allclose(z @ z.T, exact, rtol=0.1)
    # G = Phi^T Phi is unchanged by an orthogonal mix of a block's rows
    q, _ = np.linalg.qr(rng.standard_normal((9, 9)))
    moved = np.concatenate([blocks[0], blocks[1][::-1], q @ blocks[2]])
    np.testing.assert_allclose(ref.gram_sketch(moved, offsets, 64, 3), ref.gram_sketch(rows, offsets, 64, 3),
                               rtol=1e-10, atol=1e-12)
    # one-row blocks in distance_vectors are the rows themselves
    np.testing.assert_array_equal(ref.distance_vectors(rows[:3], None), rows[:3])
    assert ref.distance_vectors(rows, offsets, dim=5).shape == (3, 5)


# ------------------------------------------------------------------------------ posterior

def _pool_and_train(gen, n_blocks=12, d=8, hi=5, n_train=30):
    rows, offsets = gen.pool(n_blocks, d, 1, hi)
    return gen.rows(n_train, d), rows, offsets


@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("intensive", [False, True])
@pytest.mark.parametrize("noise_var", [1e-3, 0.5])
def test_feature_space_pv_equals_kernel_space_gp(ref, gen, scale, intensive, noise_var):
    train, rows, offsets = _pool_and_train(gen)
    fs = ref.posterior_variance(train, None, rows, offsets, noise_var, scale=scale, intensive=intensive)
    ks = ref.posterior_variance_kernel(train, None, rows, offsets, noise_var, scale=scale, intensive=intensive)
    assert fs.shape == (len(offsets) - 1,)
    np.testing.assert_allclose(fs, ks, rtol=1e-8, atol=1e-12 * ks.max())


def test_pv_more_train_rows_than_dim_and_fewer(ref, gen):
    d = 16
    for n_train in (3, 200):
        train = gen.rows(n_train, d)
        rows, offsets = gen.pool(20, d, 1, 4)
        fs = ref.posterior_variance(train, None, rows, offsets, 1e-2)
        ks = ref.posterior_variance_kernel(train, None, rows, offsets, 1e-2)
        np.testing.assert_allclose(fs, ks, rtol=1e-8)


def test_pv_without_train_is_prior_trace(ref, gen):
    rows, offsets = gen.pool(10, 6, 1, 7)
    for train in (None, np.zeros((0, 6), np.float32)):
        pv = ref.posterior_variance(train, None, rows, offsets, 0.25, scale=True)
        # A = sigma^2 I, c = 1: PV = ||Phi||_F^2
        prior = np.add.reduceat((rows.astype(np.float64) ** 2).sum(axis=1), offsets[:-1])
        np.testing.assert_allclose(pv, prior, rtol=1e-13)


def test_pv_bounds_and_monotone_in_train(ref, gen):
    d = 10
    rows, offsets = gen.pool(15, d, 1, 6)
    t1 = gen.rows(5, d)
    t2 = np.concatenate([t1, gen.rows(20, d)])
    prior = ref.posterior_variance(None, None, rows, offsets, 1e-2)
    pv1 = ref.posterior_variance(t1, None, rows, offsets, 1e-2)
    pv2 = ref.posterior_variance(t2, None, rows, offsets, 1e-2)
    assert np.all(pv1 > 0)
    assert np.all(pv1 <= prior * (1 + 1e-12))
    assert np.all(pv2 <= pv1 * (1 + 1e-12))
    assert np.all(pv2 < 0.5 * prior)  # 25 train rows in 10 dims shrink the variance a lot


def test_pv_scale_uses_mean_train_row_norm(ref, gen):
    d = 5
    train = gen.rows(8, d, scale=3.0)
    rows = gen.rows(4, d)
    c = 1.0 / np.mean((train.astype(np.float64) ** 2).sum(axis=1))
    assert ref.feature_scale(train, True) == pytest.approx(c, rel=1e-14)
    # scaling every feature by sqrt(c) by hand gives the same PV as scale=True
    by_hand = ref.posterior_variance(train * np.sqrt(c), None, rows * np.sqrt(c), None, 0.1)
    np.testing.assert_allclose(ref.posterior_variance(train, None, rows, None, 0.1, scale=True), by_hand, rtol=1e-10)


def test_pv_intensive_divides_by_rows(ref, gen):
    train, rows, offsets = _pool_and_train(gen, hi=9)
    ext = ref.posterior_variance(train, None, rows, offsets, 1e-2)
    inten = ref.posterior_variance(train, None, rows, offsets, 1e-2, intensive=True)
    np.testing.assert_allclose(inten, ext / np.diff(offsets), rtol=1e-15)


def test_pv_ill_conditioned_feature_vs_kernel(ref, gen):
    # cond(A) ~ 5e7: the extended-precision reference must still agree with a float64 solve
    train = gen.ill_conditioned(200, 12)
    noise = 1e-4
    a = ref.precision_matrix(train, noise, 1.0, 12).astype(np.float64)
    assert np.linalg.cond(a) > 1e7
    rows = gen.rows(30, 12)
    fs = ref.posterior_variance(train, None, rows, None, noise)
    inv = np.linalg.inv(a)
    direct = noise * np.einsum("ij,jk,ik->i", rows.astype(np.float64), inv, rows.astype(np.float64))
    np.testing.assert_allclose(fs, direct, rtol=1e-6)


# ------------------------------------------------------------------------------ shortlist

def test_shortlist_order_and_ties(ref):
    pv = np.array([1.0, 3.0, 2.0, 3.0, 0.5, 2.0, 3.0])
    np.testing.assert_array_equal(ref.shortlist(pv, 4), [1, 3, 6, 2])
    np.testing.assert_array_equal(ref.shortlist(pv, 0), np.zeros(0, np.int64))
    np.testing.assert_array_equal(ref.shortlist(pv, 100), [1, 3, 6, 2, 5, 0, 4])


def test_shortlist_matches_sort(ref):
    rng = np.random.default_rng(0)
    pv = rng.integers(0, 20, size=500).astype(float)  # many ties
    got = ref.shortlist(pv, 60)
    expected = sorted(range(500), key=lambda i: (-pv[i], i))[:60]
    np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------------------------ greedy PV

@pytest.mark.parametrize("scale", [False, True])
def test_greedy_pv_matches_kernel_space_conditioning(ref, gen, scale):
    d, noise = 6, 0.05
    rows, offsets = gen.pool(14, d, 1, 4)
    train = gen.rows(4, d)
    idx, scores = ref.greedy_pv(rows, offsets, 6, train, None, noise, scale=scale)
    assert len(set(idx.tolist())) == 6
    c = ref.feature_scale(train, scale)
    chosen_rows = []
    for step, (i, s) in enumerate(zip(idx, scores)):
        # condition on train + the blocks chosen so far, in kernel space with the train c fixed
        cond = np.concatenate([train.astype(np.float64)] + chosen_rows) * np.sqrt(c)
        pv = ref.posterior_variance_kernel(cond, None, rows * np.sqrt(c), offsets, noise)
        pv[idx[:step]] = -np.inf
        assert i == int(np.argmax(pv))
        assert s == pytest.approx(pv[i], rel=1e-8)
        chosen_rows.append(rows[offsets[i]:offsets[i + 1]].astype(np.float64))


def test_greedy_pv_woodbury_update_formula(ref, gen):
    # the rank-m update of ARCHITECTURE.md (The math): new PV = old PV - s2 ||(I + Psi*^T Psi*)^{-1/2} Psi*^T Psi_c||_F^2
    d, noise = 7, 0.1
    rows, offsets = gen.pool(6, d, 2, 5)
    train = gen.rows(3, d).astype(np.float64)
    a = noise * np.eye(d) + train.T @ train
    low = np.linalg.cholesky(a)
    psi = np.linalg.solve(low, rows.T.astype(np.float64))  # whitened, (d, M)
    star = slice(offsets[2], offsets[3])
    ps = psi[:, star]
    evals, evecs = np.linalg.eigh(np.eye(ps.shape[1]) + ps.T @ ps)
    inv_sqrt = evecs @ np.diag(evals**-0.5) @ evecs.T
    old = ref.posterior_variance(train, None, rows, offsets, noise)
    new = ref.posterior_variance(np.concatenate([train, rows[star]]), None, rows, offsets, noise)
    for b in range(6):
        pc = psi[:, offsets[b]:offsets[b + 1]]
        drop = noise * np.sum((inv_sqrt @ ps.T @ pc) ** 2)
        assert new[b] == pytest.approx(old[b] - drop, rel=1e-9, abs=1e-12)


def test_greedy_pv_duplicate_blocks_tie_to_lower_index(ref):
    phi = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 2.0], [1.0, 0.0]])
    idx, scores = ref.greedy_pv(phi, None, 4, None, None, 1.0)
    # prior PV = ||phi||^2 -> 4, 4, 1, 1: first pick 1 (tie with 2); conditioning on 1 shrinks 2's
    # PV to 4 * 1/(1+4) = 0.8 < 1, so next is 0 (tie with 3), then 3's PV is 0.5 < 0.8 -> 2, then 3
    np.testing.assert_array_equal(idx, [1, 0, 2, 3])
    np.testing.assert_allclose(scores, [4.0, 1.0, 0.8, 0.5], rtol=1e-14)


def test_greedy_pv_n_zero_and_full(ref, gen):
    rows, offsets = gen.pool(5, 3, 1, 3)
    idx, sc = ref.greedy_pv(rows, offsets, 0, None, None, 0.1)
    assert idx.shape == (0,) and sc.shape == (0,)
    idx, sc = ref.greedy_pv(rows, offsets, 5, None, None, 0.1)
    np.testing.assert_array_equal(np.sort(idx), np.arange(5))
    # conditioning only lowers PVs, so the best remaining PV never increases
    assert np.all(np.diff(sc) <= 1e-12 * sc[0])


# ------------------------------------------------------------------------------ LCMD / MaxDist

def test_maxdist_hand_example(ref):
    x = np.array([[0.0], [1.0], [10.0], [4.0], [-3.0]])
    idx, sc = ref.maxdist(x, 3, train_vectors=np.array([[0.5]]))
    # distances to 0.5: .25, .25, 90.25, 12.25, 12.25 -> 2; then 4 (12.25, tie with 3 -> lower index 3)
    np.testing.assert_array_equal(idx, [2, 3, 4])
    np.testing.assert_allclose(sc, [90.25, 12.25, 12.25])
    idx, sc = ref.maxdist(x, 2)  # cold start: largest norm first
    np.testing.assert_array_equal(idx, [2, 4])
    np.testing.assert_allclose(sc, [100.0, 169.0])


def test_lcmd_hand_example(ref):
    # two training centres at 0 and 100; cluster of 0 holds points 1, 2, 3 (sum 1+4+9=14),
    # cluster of 100 holds 104 (16): largest cluster is 100's although 3 is not the farthest overall
    x = np.array([[1.0], [2.0], [3.0], [104.0], [50.0]])
    # 50 is 2500 from 0 and 2500 from 100: tie keeps the older centre (0) -> cluster 0 weighs 2514
    idx, sc = ref.lcmd(x, 3, train_vectors=np.array([[0.0], [100.0]]))
    assert idx[0] == 4 and sc[0] == 2500.0
    # now clusters: {1,2,3} around 0 (14), {104} around 100 (16), {50} itself (0) -> pick 104
    assert idx[1] == 3 and sc[1] == 16.0
    # then cluster 0 (14) is largest -> farthest member 3 (distance^2 9)
    assert idx[2] == 2 and sc[2] == 9.0


def test_lcmd_cluster_tie_takes_union(ref):
    # clusters of (0,0) = {0, 1} and of (10,0) = {2} both weigh exactly 8: candidates come from
    # both, and the farthest overall (index 2, 8) beats the first cluster's best (index 0, 4)
    x = np.array([[2.0, 0.0], [-2.0, 0.0], [12.0, 2.0]])
    train = np.array([[0.0, 0.0], [10.0, 0.0]])
    idx, sc = ref.lcmd(x, 1, train)
    assert idx[0] == 2 and sc[0] == 8.0


def test_lcmd_and_maxdist_duplicates_of_centres(ref):
    # every pool point duplicates a centre: all distances are 0, ties -> lowest unselected index
    train = np.array([[1.0, 2.0], [3.0, 4.0]])
    x = np.array([[3.0, 4.0], [1.0, 2.0], [3.0, 4.0]])
    for fn in (ref.lcmd, ref.maxdist):
        idx, sc = fn(x, 3, train)
        np.testing.assert_array_equal(idx, [0, 1, 2])
        np.testing.assert_array_equal(sc, [0.0, 0.0, 0.0])


def test_random_selection_definition(ref):
    got = ref.random_selection(50, 10, seed=4)
    np.testing.assert_array_equal(got, np.random.default_rng(4).choice(50, 10, replace=False))
    assert len(set(got.tolist())) == 10
