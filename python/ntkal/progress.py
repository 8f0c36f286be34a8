"""The one progress bar of the package: tqdm on stderr, or nothing.

Off when ``show`` is false or the environment sets ``NTKAL_NO_PROGRESS=1`` (the CLI's
``--no-progress``), so batch jobs and worker processes stay quiet.
"""
from __future__ import annotations

import os
import sys


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, show: bool, desc: str, unit: str = "struct"):
    """A progress bar with ``update(n)`` and ``close()``."""
    if not show or total <= 0 or os.environ.get("NTKAL_NO_PROGRESS") == "1":
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, unit=unit, dynamic_ncols=True)
