"""The package's error type, imported lazily so ``ntkal.torch`` loads after ``ntkal``."""

from __future__ import annotations


def invalid(message: str) -> Exception:
    """An ``ntkal.InvalidArgumentError`` (a ``ValueError``) carrying ``message``."""
    from ntkal import InvalidArgumentError

    return InvalidArgumentError(message)
