"""Host-array validation shared by the public API: every check of a NumPy/CPU input lives here, so
errors are uniform ("function: argument must be ...; got ...")."""
from __future__ import annotations

import numbers

import numpy as np

from ._device import is_device_array
from ._loader import _core
from .errors import fail


def _to_numpy(x, where: str, name: str):
    if isinstance(x, np.ndarray):
        return x
    if is_device_array(x):
        fail(where, f"{name} is a CUDA array; this call runs on the CPU (move it with .cpu()/.get(), "
                    "or use a CUDA-enabled build)")
    if type(x).__module__.startswith("torch"):
        return x.detach().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists, objects
        fail(where, f"{name} must be an array; got {type(x).__name__} ({exc})")


def as_float_array(x, where: str, name: str, *, ndim: int, width: int | None = None,
                   dtypes=(np.float32,), check_finite: bool = True) -> np.ndarray:
    """Return x as a C-contiguous array of one of `dtypes` (first is the conversion target) with
    `ndim` dims; no copy when it already is one."""
    if x is None:
        fail(where, f"{name} must be an array; got None")
    a = _to_numpy(x, where, name)
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        fail(where, f"{name} must hold real floating-point numbers; got dtype {a.dtype}")
    if a.dtype.kind in "iu":
        fail(where, f"{name} must be floating point (float32 preferred); got integer dtype {a.dtype}")
    if a.ndim != ndim:
        shape = "(n_rows, dim)" if ndim == 2 else f"{ndim}-D"
        fail(where, f"{name} must be {ndim}-D {shape}; got shape {a.shape}")
    if width is not None and a.shape[-1] != width:
        fail(where, f"{name} must have {width} columns; got shape {a.shape}")
    if a.dtype not in dtypes or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=a.dtype if a.dtype in dtypes else dtypes[0])
    if check_finite and a.size:
        ok = _core.all_finite_f32(a) if a.dtype == np.float32 else _core.all_finite_f64(a)
        if not ok:
            fail(where, f"{name} contains NaN or Inf")
    return a


def as_rows(x, where: str, name: str = "rows", width: int | None = None) -> np.ndarray:
    """(n_rows, dim) float32 C-contiguous feature rows, finite, dim >= 1."""
    a = as_float_array(x, where, name, ndim=2, width=width)
    if a.shape[1] == 0:
        fail(where, f"{name} must have at least one feature column; got shape {a.shape}")
    return a


def as_offsets(offsets, n_rows: int, where: str, name: str = "offsets") -> np.ndarray | None:
    """None, or (n_blocks + 1,) int64 offsets starting at 0, non-decreasing, ending at n_rows."""
    if offsets is None:
        return None
    o = _to_numpy(offsets, where, name)
    if o.ndim != 1 or o.shape[0] < 1:
        fail(where, f"{name} must be 1-D with at least one entry (n_blocks + 1,); got shape {o.shape}")
    if o.dtype.kind not in "iu":
        fail(where, f"{name} must be an integer array; got dtype {o.dtype}")
    o = np.ascontiguousarray(o, dtype=np.int64)
    if o[0] != 0:
        fail(where, f"{name} must start at 0; got {o[0]}")
    steps = np.diff(o)
    if steps.size and steps.min() < 0:
        i = int(np.argmax(steps < 0))
        fail(where, f"{name} must be non-decreasing; got offsets[{i + 1}] = {o[i + 1]} < offsets[{i}] = {o[i]}")
    if o[-1] != n_rows:
        fail(where, f"{name} must end at the row count {n_rows}; got {o[-1]}")
    return o


def as_int(x, where: str, name: str, *, low: int | None = None, high: int | None = None,
           optional: bool = False) -> int | None:
    """``x`` as an int in [low, high] (a bool is no integer); None passes when ``optional``."""
    if optional and x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        fail(where, f"{name} must be {'None or ' if optional else ''}an integer; got {x!r}")
    x = int(x)
    if (low is not None and x < low) or (high is not None and x > high):
        if low is not None and high is not None:
            fail(where, f"{name} must be in [{low}, {high}]; got {x}")
        fail(where, f"{name} must be {'>= ' + str(low) if low is not None else '<= ' + str(high)}; got {x}")
    return x


def as_positive_float(x, where: str, name: str, unit: str = "") -> float:
    """``x`` as a finite float > 0 (a real number, not a bool or a string), ``unit`` named in the error."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not np.isfinite(float(x)) or float(x) <= 0:
        fail(where, f"{name} must be a positive finite number{f' ({unit})' if unit else ''}; got {x!r}")
    return float(x)
