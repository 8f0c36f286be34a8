"""Behaviour pinned bit for bit: the picks, PVs, scores, shortlists and quotas of the demo, of representative
``acquire`` calls (every strategy, strata on and off, calibration, variance reduction with a target, intensive
PV, a reused feature store, two Dask workers, on_error="skip", no training set), of the CLI's select and score
files, of store scoring, and of the engine's shortlist and select, as recorded in
tests/data/pinned_behaviour.json (tests/_pinned_cases.py says how the cases are built and how the file is
written). A change of any value is a change of behaviour, never a rounding detail to be tolerated.

The portable cases (exact-arithmetic features) must match bit for bit everywhere. The torch and demo cases
match bit for bit in the environment the file records (CPU vector kernels, torch, NumPy and ASE versions);
in another environment their integers (picks, quotas, ranks) must match exactly and their floats to 1e-9,
because torch's and NumPy's vector kernels legitimately round differently on other CPUs.
"""
from __future__ import annotations

import json
import math

import pytest
from _require import require

require("ase")

import _pinned_cases as cases  # noqa: E402

RECORD = json.loads(cases.RECORD.read_text())


def _compare(name: str, got, want, exact: bool, path: str = "") -> list:
    """Differences between two case values (floats as hex strings), as readable lines."""
    where = f"{name}{path}"
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return [f"{where}: keys {sorted(got) if isinstance(got, dict) else type(got).__name__} != {sorted(want)}"]
        return [d for k in want for d in _compare(name, got[k], want[k], exact, f"{path}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{where}: length {len(got) if isinstance(got, list) else type(got).__name__} != {len(want)}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in _compare(name, g, w, exact, f"{path}[{i}]")]
    if got == want:
        return []
    if not exact and isinstance(want, str) and isinstance(got, str) and _is_hex(want) and _is_hex(got):
        g, w = float.fromhex(got), float.fromhex(want)
        if math.isclose(g, w, rel_tol=1e-9, abs_tol=0.0):
            return []
    return [f"{where}: got {got!r}, pinned {want!r}"]


def _is_hex(text: str) -> bool:
    try:
        float.fromhex(text)
        return True
    except ValueError:
        return False


def _check(got: dict, want: dict, exact: bool) -> None:
    assert set(got) == set(want), f"cases {sorted(set(got) ^ set(want))} differ between the run and the record"
    problems = [d for name in want for d in _compare(name, got[name], want[name], exact)]
    assert not problems, f"{len(problems)} pinned value(s) changed:\n  " + "\n  ".join(problems[:40])


def test_portable_cases_are_bit_identical(tmp_path):
    _check(cases.portable_cases(tmp_path), RECORD["portable"], exact=True)


@pytest.mark.slow
def test_torch_cli_and_demo_cases_are_bit_identical(tmp_path):
    require("torch")
    require("distributed")
    require("chgnet")
    exact = cases.environment() == RECORD["environment"]
    want, got = RECORD["environment_dependent"], cases.environment_cases(tmp_path)
    if not exact:  # digests of files and feature rows have no tolerance: their parsed values are compared
        want, got = _without_digests(want), _without_digests(got)
    _check(got, want, exact)


def _without_digests(values: dict) -> dict:
    return {name: {k: v for k, v in value.items() if k not in ("sha256", "features")} for name, value in values.items()}


def test_the_record_covers_what_it_claims():
    portable, dependent = RECORD["portable"], RECORD["environment_dependent"]
    strategies = {v["strategy"] for v in portable.values() if "strategy" in v}
    assert strategies == {"pv_lcmd", "greedy_pv", "variance_reduction", "topk", "random"}
    assert any(len(v.get("quotas", {})) > 1 for v in portable.values()), "no case split the batch over strata"
    assert any(v.get("calibration") for v in portable.values()), "no calibrated case"
    assert any(v.get("skipped") for v in portable.values()), "no case with skipped structures"
    assert any(v.get("excluded") for v in portable.values()), "no case with a training duplicate in the pool"
    assert portable["arith_cache_second"]["computed"] == 0 and portable["arith_cache_second"]["cached"] > 0
    assert {"demo_toy", "demo_chgnet", "cli_select", "cli_score", "torch_workers_2"} <= set(dependent)
