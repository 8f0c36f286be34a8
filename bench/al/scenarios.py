"""The study's scenarios: a name -> the recipe class of its labelled data, one line each.

A recipe is a frozen dataclass (its fields are the scenario's settings, with the full study's defaults)
with ``key() -> str`` (names its cache file: a hash of the fields) and ``generate() -> data.Dataset``
(pool, test_id and test_shift frames, each an ase.Atoms with reference energy and forces and
``info["domain"]``, ``info["system"]``, ``info["temperature"]``; test_shift frames also ``info["shift"]``).
A recipe may also define ``load(cache_dir, verbose) -> data.Dataset`` when it keeps its own cache
(``adsorbates``: one file per generation task, so an interrupted generation resumes).
``python -m al --scenario NAME`` runs the study on it. bench/al/README.md says how to add one.
"""
from __future__ import annotations

from .adsorbates import AdsorbateRecipe
from .copper import CopperRecipe
from .data import DataRecipe

SCENARIOS = {
    "mixed": DataRecipe,  # molecules (GFN2-xTB) and Cu / Cu-Au cells (EMT)
    "copper": CopperRecipe,  # single domain: 70 % redundant 300 K bulk frames plus rarer conditions (EMT)
    "adsorbates": AdsorbateRecipe,  # H, O, OH, CO on Cu and Pd (111), (100), (211) slabs (GFN1-xTB)
}


def recipe(name: str, seed: int = 0):
    """The recipe of scenario ``name`` with the study's defaults and data seed ``seed``."""
    if name not in SCENARIOS:
        raise ValueError(f"scenarios.recipe: unknown scenario {name!r}; expected one of {sorted(SCENARIOS)}")
    return SCENARIOS[name](seed=seed)
