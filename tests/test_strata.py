"""Strata: composition keys, the split of a batch over strata (hand-computed), and acquire's per-stratum
selection."""
import numpy as np
import pytest
from _require import require
from _structures import cells

torch = require("torch")
require("ase")

from ase.build import bulk, molecule  # noqa: E402

import ntkal  # noqa: E402
from ntkal.acquire import acquire  # noqa: E402
from ntkal.strata import composition_key, quotas  # noqa: E402
from ntkal.torch import Featurizer, models  # noqa: E402


def test_quotas_hand_computed():
    # shares 3, 1.5, 0.5: floors 3, 1, 0; the last pick goes to the larger of the tied remainders (B)
    assert quotas({"A": 6, "B": 3, "C": 1}, 5) == {"A": 3, "B": 2, "C": 0}
    assert quotas({"A": 2, "B": 2}, 4) == {"A": 2, "B": 2}
    # a full stratum passes its share on
    assert quotas({"A": 1, "B": 9}, 4, weights={"A": 10.0, "B": 0.0}) == {"A": 1, "B": 3}
    assert sum(quotas({"x": 7, "y": 5, "z": 3}, 11).values()) == 11
    with pytest.raises(ntkal.InvalidArgumentError, match="larger than"):
        quotas({"A": 1}, 2)


def test_composition_key():
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    assert composition_key(a) == "Cu"
    a[0].symbol = "Au"
    assert composition_key(a) == "Au-Cu"
    assert composition_key(molecule("CH3OH")) == "C-H-O"


@pytest.fixture(scope="module")
def featurizer():
    return Featurizer(models.toy(seed=0, hidden=4, n_radial=3), "joint", dim=24, force_rows=3)


def test_strata_split_the_batch_in_proportion_to_candidates(featurizer):
    train, pool = cells(6, 0), cells(30, 1)  # pool: 10 Au-Cu, 20 Cu
    res = acquire(featurizer, train, pool, 6, strata="composition", progress=False, noise_var=1e-2)
    assert res.quotas == {"Au-Cu": 2, "Cu": 4}
    keys = [composition_key(pool[i]) for i in res.indices]
    assert keys.count("Au-Cu") == 2 and keys.count("Cu") == 4
    # within a stratum: the same LCMD the unstratified pipeline runs on that stratum's candidates alone
    cu = [i for i in range(30) if composition_key(pool[i]) == "Cu"]
    # (shortlist: the stratum's share of min(pool, 100) = 20, its whole size here)
    alone = acquire(featurizer, train, [pool[i] for i in cu], 4, progress=False, noise_var=1e-2, shortlist=20)
    np.testing.assert_array_equal(sorted(np.array(cu)[alone.indices]),
                                  sorted(i for i in res.indices if composition_key(pool[i]) == "Cu"))
