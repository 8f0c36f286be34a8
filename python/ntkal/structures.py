"""Structure streams (lists of ase.Atoms, extxyz files, ASE databases) and result files.

Files are read lazily in chunks so a pool of 10^6 structures never sits in memory; every
structure is checked (:func:`check_atoms`: an ase.Atoms with atoms, finite positions) with errors that
name the argument. A source can be *spooled* (:meth:`StructureSource.spooled`): its file is parsed once,
on the first full pass, and every later pass reads the parsed structures back from a scratch directory.
"""
from __future__ import annotations

import bisect
import hashlib
import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import fail

__all__ = ["StructureSource", "check_atoms", "check_structure_output", "structure_digest", "write_structures"]

DB_SUFFIXES = (".db", ".json", ".aselmdb")
XYZ_SUFFIXES = (".xyz", ".extxyz")


def structure_digest(atoms) -> bytes:
    """16-byte content hash of a structure (numbers, positions, cell, pbc)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.ascontiguousarray(atoms.numbers, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(atoms.get_positions(), dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(np.asarray(atoms.cell), dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(atoms.pbc, dtype=np.bool_).tobytes())
    return h.digest()


def check_atoms(atoms, *, where: str, arg: str = "atoms", supported_numbers=None) -> None:
    """The package's one structure check: an ``ase.Atoms`` with >= 1 atom, finite positions, and (given
    ``supported_numbers``) only elements a model knows.

    Raises
    ------
    ntkal.InvalidArgumentError
        Naming ``where`` and ``arg`` and what is wrong.
    """
    if not hasattr(atoms, "get_positions") or not hasattr(atoms, "numbers"):
        fail(where, f"{arg} must be an ase.Atoms; got {type(atoms).__name__}")
    if len(atoms) == 0:
        fail(where, f"{arg} must contain at least one atom; got an empty structure")
    pos = atoms.get_positions()
    if not np.all(np.isfinite(pos)):
        bad = int(np.flatnonzero(~np.isfinite(pos).all(axis=1))[0])
        fail(where, f"{arg} positions must be finite; atom {bad} has {pos[bad].tolist()}")
    if supported_numbers is not None:
        unknown = sorted(set(int(z) for z in atoms.numbers) - set(supported_numbers))
        if unknown:
            from ase.data import chemical_symbols

            names = ", ".join(chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z) for z in unknown)
            fail(where, f"{arg} contains elements the model does not support: {names}")


def _check(atoms, where: str, arg: str, index: int) -> None:
    check_atoms(atoms, where=where, arg=f"{arg}[{index}]")


class StructureSource:
    """A sequence of structures given as a list of ``ase.Atoms`` or a file path.

    Parameters
    ----------
    source : sequence of ase.Atoms, str or os.PathLike
        ``.xyz``/``.extxyz`` (extended XYZ, read with ASE) or ``.db``/``.json``/``.aselmdb``
        (ASE database, rows in id order). Other suffixes are tried with ASE's format guess.
    where, arg : str
        Function and argument names used in error messages.

    Attributes
    ----------
    path : str or None
    count : int
        Number of structures (files are scanned once, without building Atoms for extxyz).
    """

    def __init__(self, source, *, where: str = "ntkal.structures", arg: str = "structures"):
        self.where, self.arg = where, arg
        self.path = None
        self._atoms = None
        self._spool = None
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                fail(where, f"{arg} file not found: {str(path)!r}")
            self.path = str(path.resolve())
            self.kind = "db" if path.suffix.lower() in DB_SUFFIXES else "file"
            self.count = self._count()
        elif isinstance(source, Sequence) or hasattr(source, "__iter__"):
            self._atoms = list(source)
            for i, atoms in enumerate(self._atoms):
                _check(atoms, where, arg, i)
            self.kind = "list"
            self.count = len(self._atoms)
        else:
            fail(where, f"{arg} must be a list of ase.Atoms or a file path; got {type(source).__name__}")

    def __len__(self) -> int:
        return self.count

    def describe(self) -> str:
        return self.path if self.path is not None else f"<{self.count} structures in memory>"

    def spooled(self, directory) -> "StructureSource":
        """This source, parsed once: the first full pass over its file (:meth:`chunks`) pickles the parsed,
        checked structures chunk by chunk under ``directory``; every later read (:meth:`chunks`, :meth:`read`,
        :meth:`take`) loads them from there instead of parsing the file again. The directory then holds about
        the file's size. A source in memory, or one spooled already, is returned as it is."""
        if self.kind == "list" or self._spool is not None:
            return self
        spooled = StructureSource.__new__(StructureSource)
        spooled.__dict__.update(self.__dict__)
        spooled._spool = _Spool(Path(directory))
        return spooled

    # ---- reading ----------------------------------------------------------------------
    def _count(self) -> int:
        if self.kind == "db":
            try:
                import ase.db

                with ase.db.connect(self.path) as db:
                    return db.count()
            except Exception as exc:
                fail(self.where, f"{self.arg} {self.path!r} is not a readable ASE database: {exc}", cause=exc)
        if self.path.lower().endswith(XYZ_SUFFIXES):
            return _count_xyz(self.path, self.where, self.arg)
        n = 0
        for _ in self._iter_file(0, None):
            n += 1
        return n

    def _iter_file(self, start: int, stop: int | None) -> Iterator:
        import ase.io

        index = slice(start, stop)
        fmt = "extxyz" if self.path.lower().endswith(XYZ_SUFFIXES) else None
        position = start
        try:
            for atoms in ase.io.iread(self.path, index=index, format=fmt):
                yield atoms
                position += 1
        except Exception as exc:
            fail(self.where, f"{self.arg} {self.path!r} could not be read at structure {position}: "
                             f"{type(exc).__name__}: {exc}", cause=exc)

    def _iter_db(self, start: int, stop: int | None) -> Iterator:
        import ase.db

        try:
            with ase.db.connect(self.path) as db:
                limit = 0 if stop is None else stop - start
                for row in db.select(offset=start, limit=limit, sort="id"):
                    atoms = row.toatoms(add_additional_information=False)
                    yield atoms
        except Exception as exc:
            fail(self.where, f"{self.arg} {self.path!r} could not be read: {type(exc).__name__}: {exc}", cause=exc)

    def read(self, start: int = 0, stop: int | None = None) -> list:
        """Structures ``start:stop`` as a list of ase.Atoms (checked)."""
        stop = self.count if stop is None else min(stop, self.count)
        if self._spool is not None and self._spool.complete:
            return self._spool.read(start, stop)  # parsed and checked on the first pass
        if self.kind == "list":
            out = self._atoms[start:stop]
        elif self.kind == "db":
            out = list(self._iter_db(start, stop))
        else:
            out = list(self._iter_file(start, stop))
        if len(out) != stop - start:
            fail(self.where, f"{self.arg} {self.describe()!r} yielded {len(out)} structures for "
                             f"[{start}, {stop}); the file changed or is corrupt")
        for i, atoms in enumerate(out):
            _check(atoms, self.where, self.arg, start + i)
        return out

    def take(self, indices) -> list:
        """Structures at ``indices`` (any order), read in one pass."""
        idx = [int(i) for i in np.asarray(indices).reshape(-1)]
        if self.kind == "list":
            return [self._atoms[i] for i in idx]
        if self._spool is not None and self._spool.complete:
            return self._spool.take(idx)
        wanted = set(idx)
        found = {}
        for start, chunk in self.chunks(256):
            for j, atoms in enumerate(chunk):
                if start + j in wanted:
                    found[start + j] = atoms
            if len(found) == len(wanted):
                break
        return [found[i] for i in idx]

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, list]]:
        """Yield ``(start, structures[start:start + chunk_size])`` until the end."""
        if self.kind == "list" or (self._spool is not None and self._spool.complete):
            for start in range(0, self.count, chunk_size):
                yield start, self.read(start, start + chunk_size)
            return
        spool = self._spool
        for start, buf in self._parse_chunks(chunk_size):
            if spool is not None:
                spool.write(start, buf)
            yield start, buf
        if spool is not None:
            spool.complete = True

    def _parse_chunks(self, chunk_size: int) -> Iterator[tuple[int, list]]:
        # One open stream for the whole file (iread with a new slice per chunk would rescan).
        it = self._iter_db(0, None) if self.kind == "db" else self._iter_file(0, None)
        start, buf = 0, []
        for atoms in it:
            _check(atoms, self.where, self.arg, start + len(buf))
            buf.append(atoms)
            if len(buf) == chunk_size:
                yield start, buf
                start, buf = start + len(buf), []
        if buf:
            yield start, buf
        if start + len(buf) != self.count:
            fail(self.where, f"{self.arg} {self.describe()!r} yielded {start + len(buf)} structures, "
                             f"expected {self.count}; the file changed while reading")


class _Spool:
    """Parsed structures of one source, pickled per chunk of its first pass (see StructureSource.spooled)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.starts: list = []
        self.stops: list = []
        self.complete = False
        self._cached = (None, None)  # (start, structures) of the chunk read last

    def write(self, start: int, structures: list) -> None:
        if self.starts and start <= self.starts[-1]:  # a second, unfinished first pass: start over
            self.starts, self.stops = [], []
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"s{start:012d}.pkl", "wb") as fh:
            pickle.dump(structures, fh, protocol=pickle.HIGHEST_PROTOCOL)
        self.starts.append(start)
        self.stops.append(start + len(structures))

    def _chunk(self, position: int) -> list:
        start = self.starts[position]
        if self._cached[0] != start:
            with open(self.directory / f"s{start:012d}.pkl", "rb") as fh:
                self._cached = (start, pickle.load(fh))
        return self._cached[1]

    def read(self, start: int, stop: int) -> list:
        out = []
        position = bisect.bisect_right(self.starts, start) - 1
        while start < stop:
            chunk = self._chunk(position)
            a = self.starts[position]
            out += chunk[start - a:min(stop, self.stops[position]) - a]
            start, position = self.stops[position], position + 1
        return out

    def take(self, indices: list) -> list:
        found = {}
        for i in sorted(set(indices)):  # each chunk loaded once
            found[i] = self.read(i, i + 1)[0]
        return [found[i] for i in indices]


def _count_xyz(path: str, where: str, arg: str) -> int:
    """Count frames of an (ext)xyz file from its atom-count lines, without parsing atoms."""
    n = 0
    with open(path, "rb") as fh:
        line_no = 0
        while True:
            head = fh.readline()
            line_no += 1
            if not head:
                break
            if not head.strip():
                continue
            try:
                natoms = int(head.split()[0])
            except ValueError:
                fail(where, f"{arg} {path!r} is not an extended XYZ file: line {line_no} should "
                            f"hold an atom count; got {head[:60]!r}", cause=None)
            for _ in range(natoms + 1):
                if not fh.readline():
                    fail(where, f"{arg} {path!r} is truncated: frame {n} announces {natoms} atoms")
                line_no += 1
            n += 1
    return n


def check_structure_output(path, *, frames: int | None, where: str, arg: str) -> None:
    """Refuse, before any work, a path :func:`write_structures` could not write ``frames`` structures to.

    ``frames=None``: the count is not known yet, so a format that holds one structure only is refused.
    """
    from ase.io.formats import ioformats, filetype

    path = Path(path)
    if path.suffix.lower() in XYZ_SUFFIXES:
        return
    try:
        fmt = filetype(str(path), read=False)
    except Exception:
        fmt = None
    if fmt not in ioformats or not ioformats[fmt].can_write:
        fail(where, f"{arg}: ASE cannot write structures to {str(path)!r} (suffix "
                    f"{path.suffix!r}); use .extxyz or another ASE format that can be written")
    if ioformats[fmt].single and (frames is None or frames > 1):
        count = "one per pool structure" if frames is None else str(frames)
        fail(where, f"{arg}: the {fmt} format of {str(path)!r} holds one structure; "
                    f"{count} would be written: use .extxyz")


def write_structures(path, structures, *, info: Sequence[dict] | None = None) -> None:
    """Write structures to an extxyz file (or any ASE format by suffix), adding ``info`` per structure.

    The file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    import ase.io

    structures = [a.copy() for a in structures]
    if info is not None:
        for atoms, extra in zip(structures, info):
            atoms.info.update(extra)
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    fmt = "extxyz" if path.suffix.lower() in XYZ_SUFFIXES else None
    try:
        ase.io.write(str(tmp), structures, format=fmt)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
