"""Small Cu / Au-Cu cells for the pipeline tests (a copy travels to Dask workers by value), and labelled
copies of structures."""
import numpy as np


def cells(n, seed, gold_every=3):
    """n rattled 4-atom fcc cells, every ``gold_every``-th with one Au."""
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("Cu", "fcc", a=3.6 + 0.05 * rng.standard_normal(), cubic=True)
        if i % gold_every == 0:
            a[int(rng.integers(4))].symbol = "Au"
        a.rattle(0.05 * (1 + 2 * rng.random()), seed=int(rng.integers(1 << 30)))
        out.append(a)
    return out


def labelled(structures, featurizer, shift):
    """Copies whose reference forces are the featurizer model's forces + shift[i] on every component."""
    from ase.calculators.singlepoint import SinglePointCalculator

    out = []
    for a, s in zip(structures, shift):
        b = a.copy()
        b.calc = SinglePointCalculator(b, energy=0.0, forces=featurizer.predict_forces(a) + s)
        out.append(b)
    return out
