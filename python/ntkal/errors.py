"""The package's errors. Both are raised by the C++ engine and by the Python layer alike.

``InvalidArgumentError`` (a ``ValueError``): the message names the function and the argument,
what was expected and what came. ``NumericalError``: a numerical step failed after bounded retries.
"""
from __future__ import annotations

from typing import NoReturn

from ._loader import _core

InvalidArgumentError = _core.InvalidArgumentError
NumericalError = _core.NumericalError


def fail(where: str, message: str, *, cause: BaseException | None = None, error: type | None = None) -> NoReturn:
    """Raise ``InvalidArgumentError("{where}: {message}")`` (or ``error``, a subclass), chained to ``cause``.

    The one way the package reports bad input: the message names the function (``where``), the
    argument, what was expected and what came."""
    raise (error or InvalidArgumentError)(f"{where}: {message}") from cause


__all__ = ["InvalidArgumentError", "NumericalError", "fail"]
