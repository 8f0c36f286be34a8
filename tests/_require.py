"""Optional test dependencies: skipped on a developer's machine without them, a failure in CI.

The test extra installs every one of them, so under ``CI=true`` a missing or broken package means
the checks that depend on it would silently not run: that is reported as a failure, never a skip."""

from __future__ import annotations

import importlib
import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(what: str, exc: BaseException) -> None:
    """Skip (developer machine) or fail (CI) because `what` cannot be used."""
    message = f"{what} not importable: {exc!r}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: the test extra installs it, so this is a failure, not a skip)",
                    pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(module: str):
    """Import `module`, or skip / fail as :func:`unavailable` says."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # ImportError or a broken install: either way the package is absent
        unavailable(module, exc)
