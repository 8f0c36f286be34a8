"""Recognising a labelled structure by geometry: reordered atoms, lattice shifts, file rounding, atoms on
a cell face; a genuine move is a different structure; the index finds exactly what a pairwise check finds."""
import numpy as np
import pytest
from _require import require
from _structures import cells

require("ase")

from ase import Atoms  # noqa: E402
from ase.build import add_adsorbate, bulk, fcc111, molecule  # noqa: E402

import ntkal  # noqa: E402
from ntkal.acquire import acquire  # noqa: E402
from ntkal.same_geometry import GeometryIndex, same_geometry  # noqa: E402


def skewed_cuau(seed=0):
    """A rattled 8-atom Cu-Au cell with a skewed (non-orthogonal) lattice."""
    a = bulk("Cu", "fcc", a=3.6).repeat((2, 2, 2))  # primitive fcc vectors: 60 degrees apart
    a.symbols[[1, 4, 6]] = "Au"
    a.rattle(0.05, seed=seed)
    return a


def grouped_by_element(atoms):
    """The same structure with atoms grouped by element, as VASP writes a POSCAR."""
    order = np.argsort(atoms.numbers, kind="stable")[::-1]
    return atoms[order]


def one_atom_shifted_by_a_lattice_vector(atoms, index=2, shift=(1, -1, 0)):
    b = atoms.copy()
    b.positions[index] += np.asarray(shift) @ b.cell
    return b


def rounded(atoms, decimals=6):
    b = atoms.copy()
    b.positions = np.round(b.positions, decimals)
    b.cell = np.round(np.asarray(b.cell), decimals)
    return b


def moved(atoms, index=3, distance=0.05):
    b = atoms.copy()
    b.positions[index] += distance * np.array([0.6, 0.0, 0.8])
    return b


@pytest.mark.parametrize("make", [skewed_cuau, lambda seed=0: molecule("CH3OH"), lambda seed=0: slab()])
def test_same_geometry_survives_what_files_do_and_sees_a_move(make):
    a = make()
    assert same_geometry(a, a.copy())
    assert same_geometry(a, grouped_by_element(a))
    assert same_geometry(a, rounded(a))
    assert same_geometry(a, rounded(grouped_by_element(a), 5))  # 1e-5 Å rounding: still within 1e-4 Å
    if a.pbc.any():  # (1, -1, 0): along periodic directions of the cell and of the slab
        assert same_geometry(a, one_atom_shifted_by_a_lattice_vector(a))
    assert not same_geometry(a, moved(a))
    other = int(np.flatnonzero(a.numbers != a.numbers[0])[0])
    b = a.copy()
    b.numbers[[0, other]] = b.numbers[[other, 0]]  # two atoms of different elements swapped: another structure
    assert not same_geometry(a, b)


def slab():
    s = fcc111("Cu", size=(2, 2, 2), vacuum=5.0)
    add_adsorbate(s, "O", 1.6, "fcc")
    s.rattle(0.03, seed=4)
    return s


def test_atoms_on_a_cell_face_wrap_either_way():
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.positions[0] = [1e-7, 0.3, 0.2]  # on the x = 0 face
    b = a.copy()
    b.positions[0, 0] = 3.6 - 1e-7  # the same atom written on the opposite face (wrapping after rounding)
    assert same_geometry(a, b) and same_geometry(b, a)
    index = GeometryIndex()
    index.add(a)
    assert b in index
    b.positions[0, 0] = 3.6 - 2e-4  # 2e-4 Å away from the face: another structure at tol 1e-4
    assert not same_geometry(a, b) and b not in index


def test_non_periodic_cell_vectors_do_not_matter_and_periodic_ones_do():
    m = molecule("H2O")
    boxed = m.copy()
    boxed.cell = [12.0, 12.0, 12.0]  # pbc False: a box that places no images
    assert same_geometry(m, boxed)
    a = skewed_cuau()
    b = a.copy()
    b.set_cell(np.asarray(a.cell) * 1.001)  # same positions, another lattice
    assert not same_geometry(a, b)
    c = a.copy()
    c.pbc = [True, True, False]
    assert not same_geometry(a, c)


def test_index_finds_exactly_the_pairwise_matches():
    rng = np.random.default_rng(0)
    train = [skewed_cuau(seed) for seed in range(40)] + [slab(), molecule("CH3OH")]
    index = GeometryIndex()
    for t in train:
        index.add(t)
    assert len(index) == len(train)
    queries = []
    for k, t in enumerate(train):
        for _ in range(3):
            b = grouped_by_element(t)
            step = rng.standard_normal(b.positions.shape)
            b.positions += 0.7e-4 * step / np.linalg.norm(step, axis=1, keepdims=True)  # every atom 0.7e-4 Å away
            if b.pbc.any():  # cell components within 5e-6 Å (Cartesian positions kept), atoms in other images
                cell = np.asarray(b.cell)
                cell[b.pbc] += rng.uniform(-5e-6, 5e-6, size=cell[b.pbc].shape)
                b.set_cell(cell, scale_atoms=False)
                b.positions += (rng.integers(-2, 3, size=(len(b), 3)) * b.pbc) @ cell
            queries.append((b, True))
        queries.append((moved(t, index=k % len(t)), False))
    for q, expected in queries:
        pairwise = any(same_geometry(t, q) for t in train)
        assert (q in index) == pairwise == expected


def test_index_groups_and_degenerate_cells():
    index = GeometryIndex()
    a = skewed_cuau()
    index.add(a)
    assert skewed_cuau(seed=1) not in index  # same composition, other geometry
    assert molecule("H2O") not in index  # a group the index has never seen
    flat = Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 1]], cell=[[2, 0, 0], [4, 0, 0], [0, 0, 2]], pbc=True)
    index.add(flat)  # linearly dependent periodic vectors: recognised only bit-identical
    assert flat.copy() in index
    assert flat[[1, 0]] not in index
    with pytest.raises(ntkal.InvalidArgumentError, match="tol must be a positive finite number"):
        GeometryIndex(tol=0.0)


# ---- through acquire: a pool structure that is a training structure is never a candidate --------------------
@pytest.fixture(scope="module")
def featurizer():
    require("torch")
    from ntkal.torch import Featurizer, models

    return Featurizer(models.toy(seed=0, hidden=4, n_radial=3), "joint", dim=24, force_rows=3)


def test_training_duplicates_are_never_picked(featurizer):
    train, pool = cells(6, 0), cells(20, 1)
    pool = pool[:5] + [t.copy() for t in train] + pool[5:]  # pool 5..10 are the training structures
    for strategy in ("topk", "pv_lcmd", "greedy_pv", "random"):
        res = acquire(featurizer, train, pool, 20, strategy=strategy, progress=False, seed=1)
        assert not set(res.indices.tolist()) & set(range(5, 11)), strategy
        np.testing.assert_array_equal(res.excluded, np.arange(5, 11))


def test_training_structures_as_files_rewrite_them_are_never_picked(featurizer):
    train, others = cells(6, 0), cells(6, 1)
    reordered = train[0][np.argsort(train[0].numbers, kind="stable")[::-1]]  # grouped by element, as in a POSCAR
    assert (reordered.numbers != train[0].numbers).any() or (reordered.positions != train[0].positions).any()
    shifted = train[1].copy()
    shifted.positions[2] += np.array([1, -1, 2]) @ shifted.cell  # one atom shifted by a lattice vector
    rounded = train[2].copy()
    rounded.positions = np.round(rounded.positions, 6)  # positions rounded to 1e-6 Å
    moved = train[3].copy()
    moved.positions[1] += [0.03, 0.0, 0.04]  # one atom moved 0.05 Å: a new structure
    pool = others[:3] + [reordered, shifted, rounded, moved] + others[3:]
    res = acquire(featurizer, train, pool, len(pool) - 3, strategy="topk", progress=False)
    np.testing.assert_array_equal(res.excluded, [3, 4, 5])
    assert sorted(res.indices.tolist()) == [0, 1, 2, 6, 7, 8, 9]
