"""The collect file: frames appended to an extended XYZ file so that a crash leaves whole frames only."""
from __future__ import annotations

import io
import os
from pathlib import Path

from ..errors import fail
from ..structures import XYZ_SUFFIXES, _count_xyz

__all__ = ["FrameAppender"]


class FrameAppender:
    """Append structures to an extxyz file, one complete frame per ``write()`` call.

    Each frame is formatted in memory first and then written with a single ``write()`` on a file
    opened with ``O_APPEND`` and flushed to disk (``fsync``): a run killed between two frames, or an
    exception inside the dynamics, leaves a file that holds whole frames only. An existing file is
    checked (it must be a readable extxyz file of whole frames) and appended to.

    Parameters
    ----------
    path : str or os.PathLike
        ``.extxyz`` or ``.xyz`` file.
    where, arg : str
        Function and argument named in errors.

    Attributes
    ----------
    existing : int
        Frames the file held before this appender wrote any.
    written : int
        Frames this appender wrote.
    """

    def __init__(self, path, *, where: str, arg: str = "out"):
        self.path = Path(path)
        if self.path.suffix.lower() not in XYZ_SUFFIXES:
            fail(where, f"{arg} must be an extended XYZ file (.extxyz or .xyz), which frames "
                        f"are appended to; got {str(path)!r}")
        if self.path.is_dir():
            fail(where, f"{arg} {str(path)!r} is a directory; expected a file name")
        parent = self.path.resolve().parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            fail(where, f"{arg}: cannot write {str(path)!r}: {str(parent)!r} is not a "
                        "writable directory")
        self.existing = _checked_count(self.path, where, arg) if self.path.exists() else 0
        self.written = 0

    def append(self, atoms) -> None:
        """Append one structure with its ``info`` and ``arrays`` (no calculator results)."""
        import ase.io

        text = io.StringIO()
        ase.io.write(text, atoms, format="extxyz")
        data = text.getvalue().encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            done = os.write(fd, data)
            while done < len(data):  # a regular file takes it whole; only a full disk stops short
                done += os.write(fd, data[done:])
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, start)  # a failed write (full disk, I/O error) leaves no partial frame behind
            raise
        finally:
            os.close(fd)
        self.written += 1

    def __repr__(self) -> str:
        return f"FrameAppender({str(self.path)!r}, existing={self.existing}, written={self.written})"


def _checked_count(path: Path, where: str, arg: str) -> int:
    """Frames of an existing extxyz file, which must end in a whole frame (one more may follow it)."""
    import ase.io

    n = _count_xyz(str(path), where, arg)
    if n == 0:
        return 0
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        whole = fh.read(1) == b"\n"
    try:
        if whole:
            ase.io.read(str(path), index=-1, format="extxyz")
    except Exception:  # noqa: BLE001 - any parse failure of the last frame
        whole = False
    if not whole:
        fail(where, f"{arg} {str(path)!r} ends in a partial frame (frame {n - 1}); frames are "
                    "appended to it, so repair or move it first")
    return n
