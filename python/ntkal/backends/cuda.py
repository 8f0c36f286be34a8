"""CUDA backend: the engine on arrays that already live on a GPU (private).

The public front end (:mod:`ntkal.sketch`, :mod:`ntkal.posterior`, :mod:`ntkal.shortlist`,
:mod:`ntkal.select`) calls these primitives when its main input is a CUDA array, so features are
scored and selected where they were computed, without a round trip to the host. What crosses to
the host is small: block offsets (n + 1 integers, validated there), the posterior's whitening
operator travels the other way (d x d, cached per posterior state), and greedy PV reads back one
index per pick.

Arrays
    PyTorch CUDA tensors and CuPy arrays are used in place; any other object exposing
    ``__cuda_array_interface__`` or ``__dlpack__`` (CUDA device) is wrapped zero-copy with PyTorch
    (or CuPy when PyTorch is absent). Outputs are allocated by the same library, on the input's
    device: a CuPy input gives CuPy outputs, a PyTorch input PyTorch outputs.
Streams
    Work is queued on the library's *current* stream of the input's device
    (``torch.cuda.current_stream()`` / ``cupy.cuda.get_current_stream()``), so results are ordered
    with the caller's other work without synchronising; a ``__cuda_array_interface__`` producer
    stream is waited for first. Validation of finiteness and greedy selection synchronise that stream.
"""
from __future__ import annotations

import weakref

import numpy as np

from .._device import is_device_array
from .._loader import _core
from .._validation import as_offsets
from ..blocks import unpack
from ..errors import fail
from ..options import DISTANCE_METHODS, MATMULS, PRECISIONS, code
from .common import BlockArgs

name = "cuda"


# ---- availability ---------------------------------------------------------------------------------

def compiled() -> bool:
    """True when this build of ntkal contains the CUDA backend."""
    return bool(getattr(_core, "cuda_compiled", False))


def device_count() -> int:
    """Number of usable CUDA devices; 0 without the backend, a driver or a GPU. Never raises."""
    try:
        return int(_core.cuda.device_count()) if compiled() else 0
    except Exception:
        return 0


def device_names() -> list:
    """Names of the usable CUDA devices (``"NVIDIA H100 80GB HBM3 (sm_90)"``); empty when none. Never raises."""
    try:
        return list(_core.cuda.device_names()) if compiled() else []
    except Exception:
        return []


# ---- array libraries --------------------------------------------------------------------------------

class _Torch:
    name = "torch"

    def __init__(self):
        import torch

        self.t = torch
        self._dtypes = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64,
                        "uint8": torch.uint8}

    def owns(self, x) -> bool:
        return isinstance(x, self.t.Tensor)

    def adopt(self, x):
        if isinstance(x, self.t.Tensor):
            return x.detach()
        if hasattr(x, "__dlpack__"):
            return self.t.from_dlpack(x)
        return self.t.as_tensor(x, device="cuda")

    def device(self, x) -> int:
        return int(x.device.index if x.device.index is not None else self.t.cuda.current_device())

    def guard(self, device: int):
        return self.t.cuda.device(device)

    def stream(self, device: int) -> int:
        return int(self.t.cuda.current_stream(device).cuda_stream)

    def dtype(self, x) -> str:
        return str(x.dtype).replace("torch.", "")

    def strides(self, x):
        return tuple(int(s) for s in x.stride())

    def ptr(self, x) -> int:
        return int(x.data_ptr())

    def empty(self, shape, dtype: str, device: int):
        return self.t.empty(shape, dtype=self._dtypes[dtype], device=f"cuda:{device}")

    def zeros(self, shape, dtype: str, device: int):
        return self.t.zeros(shape, dtype=self._dtypes[dtype], device=f"cuda:{device}")

    def full(self, shape, value, dtype: str, device: int):
        return self.t.full(shape, value, dtype=self._dtypes[dtype], device=f"cuda:{device}")

    def as_dtype_contiguous(self, x, dtype: str):
        return x.to(self._dtypes[dtype]).contiguous()

    def from_numpy(self, a: np.ndarray, device: int):
        return self.t.from_numpy(np.ascontiguousarray(a)).to(f"cuda:{device}")

    def to_numpy(self, x) -> np.ndarray:
        return x.detach().cpu().numpy()

    def concatenate(self, parts):
        return self.t.cat(parts)

    def arange(self, start: int, stop: int, device: int):
        return self.t.arange(start, stop, dtype=self.t.int64, device=f"cuda:{device}")

    def take(self, x, idx):
        return x[idx]


class _CuPy:
    name = "cupy"

    def __init__(self):
        import cupy

        self.cp = cupy

    def owns(self, x) -> bool:
        return isinstance(x, self.cp.ndarray)

    def adopt(self, x):
        if isinstance(x, self.cp.ndarray):
            return x
        if hasattr(x, "__dlpack__"):
            return self.cp.from_dlpack(x)
        return self.cp.asarray(x)

    def device(self, x) -> int:
        return int(x.device.id)

    def guard(self, device: int):
        return self.cp.cuda.Device(device)

    def stream(self, device: int) -> int:
        with self.cp.cuda.Device(device):
            return int(self.cp.cuda.get_current_stream().ptr)

    def dtype(self, x) -> str:
        return str(x.dtype)

    def strides(self, x):
        return tuple(int(s) // x.itemsize for s in x.strides)

    def ptr(self, x) -> int:
        return int(x.data.ptr)

    def empty(self, shape, dtype: str, device: int):
        with self.cp.cuda.Device(device):
            return self.cp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype: str, device: int):
        with self.cp.cuda.Device(device):
            return self.cp.zeros(shape, dtype=dtype)

    def full(self, shape, value, dtype: str, device: int):
        with self.cp.cuda.Device(device):
            return self.cp.full(shape, value, dtype=dtype)

    def as_dtype_contiguous(self, x, dtype: str):
        with self.cp.cuda.Device(x.device.id):
            return self.cp.ascontiguousarray(x, dtype=dtype)

    def from_numpy(self, a: np.ndarray, device: int):
        with self.cp.cuda.Device(device):
            return self.cp.asarray(np.ascontiguousarray(a))

    def to_numpy(self, x) -> np.ndarray:
        return self.cp.asnumpy(x)

    def concatenate(self, parts):
        return self.cp.concatenate(parts)

    def arange(self, start: int, stop: int, device: int):
        with self.cp.cuda.Device(device):
            return self.cp.arange(start, stop, dtype=self.cp.int64)

    def take(self, x, idx):
        return x[idx]


_LIBS: dict = {}


def _lib(name: str):
    if name not in _LIBS:
        _LIBS[name] = _Torch() if name == "torch" else _CuPy()
    return _LIBS[name]


def _library_for(x, where: str, name: str):
    """The array library that will hold x and the outputs: x's own (PyTorch or CuPy), else
    PyTorch, else CuPy."""
    module = type(x).__module__
    if module.startswith("torch"):
        return _lib("torch")
    if module.startswith("cupy"):
        return _lib("cupy")
    for candidate in ("torch", "cupy"):
        try:
            return _lib(candidate)
        except ImportError:
            continue
    fail(where, f"{name} is a CUDA array of type {type(x).__name__}; wrapping it needs PyTorch or CuPy, "
                "neither is installed")


def require(where: str) -> None:
    """InvalidArgumentError naming ``where`` unless this build has the backend and a usable device."""
    if not compiled():
        fail(where, "got a CUDA array, but this ntkal build has no CUDA backend (nvcc was not found at build "
                    "time); move the data to the host or rebuild with the CUDA toolkit")
    if device_count() == 0:
        fail(where, "got a CUDA array, but no CUDA device is usable by ntkal (no driver or no GPU)")


def _wait_for_producer(x, lib, device: int) -> None:
    """Honour a __cuda_array_interface__ producer stream (v3) before using x on our stream."""
    if lib.owns(x) or not hasattr(x, "__cuda_array_interface__"):
        return
    try:
        stream = x.__cuda_array_interface__.get("stream")
    except Exception:
        return
    if stream not in (None, 0) and int(stream) != lib.stream(device):
        _core.cuda.synchronize(int(stream))


class _Dev:
    """A validated device matrix: the library array, its pointer, shape, leading dimension, device
    and the library's current stream on that device."""

    def __init__(self, lib, arr):
        self.lib, self.arr = lib, arr
        self.shape = tuple(int(s) for s in arr.shape)
        self.ptr = lib.ptr(arr)
        strides = lib.strides(arr)
        self.ld = strides[0] if len(strides) == 2 else 1
        self.dtype = lib.dtype(arr)
        self.device = lib.device(arr)
        self.stream = lib.stream(self.device)


def _matrix(x, lib, where: str, name: str, *, dtypes=("float32",), width=None, device=None) -> _Dev:
    """x as a 2-D device matrix of one of `dtypes` (first = conversion target) whose rows are
    contiguous (unit column stride, leading dimension >= width); copies only when it must."""
    if x is None:
        fail(where, f"{name} must be an array; got None")
    if not is_device_array(x):
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.dtype.kind != "f":
            fail(where, f"{name} must be floating point (float32 preferred); got dtype {x.dtype}")
        if device is None:
            fail(where, f"{name} must be a CUDA array here")
        arr = lib.from_numpy(x, device)
    else:
        arr = lib.adopt(x)
        if device is not None and lib.device(arr) != device:
            fail(where, f"{name} must be on cuda:{device} like the other inputs; got cuda:{lib.device(arr)}")
        _wait_for_producer(x, lib, lib.device(arr))
    shape = tuple(arr.shape)
    if len(shape) != 2:
        fail(where, f"{name} must be 2-D (n_rows, dim); got shape {shape}")
    if width is not None and shape[1] != width:
        fail(where, f"{name} must be 2-D (n_rows, {width}); got shape {shape}")
    dtype = lib.dtype(arr)
    if not dtype.startswith(("float", "bfloat")):
        fail(where, f"{name} must hold floating-point numbers (float32 preferred); got dtype {dtype}")
    strides = lib.strides(arr)
    rows_ok = shape[0] <= 1 or strides[0] >= max(shape[1], 1)
    if dtype not in dtypes or (shape[1] > 1 and strides[1] != 1) or not rows_ok:
        arr = lib.as_dtype_contiguous(arr, dtype if dtype in dtypes else dtypes[0])
    return _Dev(lib, arr)


def _contiguous(m: _Dev) -> _Dev:
    """The engine's row kernels want packed rows (leading dimension == width)."""
    if m.shape[0] > 1 and m.ld != m.shape[1]:
        return _Dev(m.lib, m.lib.as_dtype_contiguous(m.arr, m.dtype))
    return m


def _view(lib, arr, stream: int, ld: int | None = None):
    """The DeviceMatrix of a library array (a 1-D array is n x 1): what the kernels receive."""
    v = _core.cuda.DeviceMatrix()
    shape = tuple(int(x) for x in arr.shape)
    v.ptr, v.rows = lib.ptr(arr), shape[0] if shape else 1
    v.cols = shape[1] if len(shape) == 2 else 1
    v.ld = ld if ld is not None else (lib.strides(arr)[0] if len(shape) == 2 else 1)
    v.dtype, v.stream = lib.dtype(arr), stream
    return v


def _none_view(stream: int):
    """A DeviceMatrix standing for 'no array' (null pointer, no rows)."""
    v = _core.cuda.DeviceMatrix()
    v.stream = stream
    return v


def _check_finite(m: _Dev, stream: int, where: str, name: str) -> None:
    rows, cols = m.shape
    ld = m.ld if rows > 1 else max(cols, 1)
    if rows * cols and _core.cuda.count_nonfinite(_view(m.lib, m.arr, stream, ld)):
        fail(where, f"{name} contains NaN or Inf")


def _offsets(offsets, n_rows: int, lib, device: int, where: str, name: str = "offsets"):
    """(host int64 offsets or None, device copy or None, n_blocks); validated on the host."""
    if offsets is None:
        return None, None, n_rows
    if is_device_array(offsets):
        host = lib.to_numpy(lib.adopt(offsets))
    else:
        host = np.asarray(offsets)
    host = as_offsets(host, n_rows, where, name)
    return host, lib.from_numpy(host, device), host.shape[0] - 1


def _offsets_view(lib, offsets_dev, stream: int):
    """Device offsets (n_blocks + 1 int64), or the null view for one row per block."""
    return _none_view(stream) if offsets_dev is None else _view(lib, offsets_dev, stream)


_WHITENING = weakref.WeakKeyDictionary()


def _whitening(post, lib, device: int, dtype: str):
    """M = sqrt(c) L^{-1} on the device, float32 (scoring) or float64 (greedy): the engine's own
    operator (``Posterior::whitening_operator``), so CPU and GPU whiten with the same matrix and no
    GPU solver is needed. ``post`` is the engine posterior; cached until it sees more data."""
    key = (int(post.n_rows), int(post.n_blocks), lib.name, device, dtype)
    entry = _WHITENING.get(post)
    if entry is not None and entry[0] == key:
        return entry[1]
    m = post.whitening_operator()
    arr = lib.from_numpy(m if dtype == "float64" else m.astype(np.float32), device)
    try:
        _WHITENING[post] = (key, arr)
    except TypeError:  # not weak-referenceable: no cache
        pass
    return arr


# ---- validation: once per public call ---------------------------------------------------------------------

def blocks(rows, offsets, where: str, *, width: int | None = None, names=("rows", "offsets"), like=None) -> BlockArgs:
    """Rows as a finite float32 device matrix with contiguous rows (copied only when they are not),
    offsets validated on the host and copied to the device. ``like``: a BlockArgs whose library and
    device these rows must share (host rows are uploaded there)."""
    rows, offsets = unpack(rows, offsets, where, names)
    if like is None:
        lib, device = _library_for(rows, where, names[0]), None
    else:
        lib, device = like.rows.lib, like.rows.device
    m = _contiguous(_matrix(rows, lib, where, names[0], width=width, device=device))
    with lib.guard(m.device):
        _check_finite(m, m.stream, where, names[0])
        off_host, off_dev, n_blocks = _offsets(offsets, m.shape[0], lib, m.device, where, names[1])
    return BlockArgs(m, off_dev, off_host, n_blocks, m.shape[1])


# ---- array helpers on the arrays' own library and device -------------------------------------------------

def array(b: BlockArgs):
    """The validated rows as the array a user gets back (the library's own array)."""
    return b.rows.arr


def host_rows(b: BlockArgs) -> np.ndarray:
    return b.rows.lib.to_numpy(b.rows.arr)


def _lib_device(x):
    if isinstance(x, BlockArgs):
        return x.rows.lib, x.rows.device
    lib = _library_for(x, "ntkal", "array")
    return lib, lib.device(x)


def concatenate(parts: list):
    return _library_for(parts[0], "ntkal", "array").concatenate(parts)


def arange(start: int, stop: int, like):
    lib, device = _lib_device(like)
    return lib.arange(start, stop, device)


def take(values, positions):
    lib, _ = _lib_device(values)
    return lib.take(values, positions)


def from_host(a: np.ndarray, like):
    lib, device = _lib_device(like)
    return lib.from_numpy(a, device)


def full(n: int, value: float, like):
    lib, device = _lib_device(like)
    return lib.full((n,), value, "float64", device)


# ---- operations on validated inputs ---------------------------------------------------------------------

def project(sketch, J, col_offset: int, out, where: str):
    """``out += J @ S[col_offset : col_offset + P_chunk]`` on J's device (same S as the CPU).

    J: CUDA array (m, P_chunk), float32 or float64 (other float dtypes become float32); rows may be
    strided, columns must be contiguous or J is copied. out: float32 CUDA array (m, dim) on J's
    device, updated in place, or None for a new one of J's library.
    """
    lib = _library_for(J, where, "J")
    j = _matrix(J, lib, where, "J", dtypes=("float32", "float64"))
    m, p_chunk = j.shape
    if col_offset + p_chunk > sketch.n_params:
        fail(where, f"col_offset + J.shape[1] must be <= n_params={sketch.n_params}; got {col_offset} + {p_chunk}")
    with lib.guard(j.device):
        _check_finite(j, j.stream, where, "J")
        if out is None:
            result = lib.zeros((m, sketch.dim), "float32", j.device)
            o = _Dev(lib, result)
        else:
            if not is_device_array(out):
                fail(where, f"out must be a CUDA float32 array of shape ({m}, {sketch.dim}) on cuda:{j.device}; "
                            f"got {type(out).__name__}")
            result = out
            o = _Dev(lib, lib.adopt(out))
            bad_layout = o.shape[0] > 1 and o.ld < sketch.dim
            if (o.dtype != "float32" or o.shape != (m, sketch.dim) or o.device != j.device
                    or (sketch.dim > 1 and lib.strides(o.arr)[1] != 1) or bad_layout):
                fail(where, f"out must be a float32 CUDA array of shape ({m}, {sketch.dim}) with contiguous rows "
                            f"on cuda:{j.device}; got {o.dtype} {o.shape} on cuda:{o.device}")
        if m and p_chunk:
            _core.cuda.sketch_project(sketch.kind, int(sketch.seed), int(sketch.nnz), int(sketch.n_params),
                                      int(sketch.dim), _view(lib, j.arr, j.stream, max(j.ld, p_chunk)), col_offset,
                                      _view(lib, o.arr, j.stream, max(o.ld, sketch.dim)))
    return result


def sketch_dense(sketch, p_begin: int, p_end: int, device: int = 0, library: str = "torch"):
    """Rows ``S[p_begin:p_end]`` generated on the GPU, float64 (tests: parity with the CPU sketch)."""
    lib = _lib(library)
    with lib.guard(device):
        out = lib.empty((p_end - p_begin, sketch.dim), "float64", device)
        _core.cuda.sketch_dense(sketch.kind, int(sketch.seed), int(sketch.nnz), int(sketch.n_params),
                                int(sketch.dim), p_begin, _view(lib, out, lib.stream(device)))
    return out


def variance(post, b: BlockArgs, intensive: bool, matmul: str = "float32"):
    """PV of every block on the rows' device, float64, same library as the rows. ``post`` is the
    engine's posterior (``Posterior._p``); ``matmul`` was checked by the caller."""
    rows = b.rows
    lib = rows.lib
    out = lib.empty((b.n_blocks,), "float64", rows.device)
    if b.n_blocks == 0:
        return out
    wdtype = "float64" if post.precision == code("float64", PRECISIONS) else "float32"
    with lib.guard(rows.device):
        whiten = _whitening(post, lib, rows.device, wdtype)
        _core.cuda.block_variance(_view(lib, rows.arr, rows.stream), _view(lib, whiten, rows.stream),
                                  _offsets_view(lib, b.offsets, rows.stream), b.n_blocks, float(post.noise_var),
                                  bool(intensive), code(matmul, MATMULS), _view(lib, out, rows.stream))
    return out


def top_k(values, k: int):
    """(positions int64 (k,), values float64 (k,)) of the k largest values, ties -> lower position."""
    lib, device = _lib_device(values)
    out_v = lib.empty((k,), "float64", device)
    out_i = lib.empty((k,), "int64", device)
    if k:
        with lib.guard(device):
            stream = lib.stream(device)
            _core.cuda.top_k(_view(lib, values, stream), _view(lib, out_v, stream), _view(lib, out_i, stream))
    return out_i, out_v


def _selection_outputs(rows: _Dev, n: int):
    """Device arrays for n picks: indices (int64) and scores (float64), on the rows' library."""
    return rows.lib.empty((n,), "int64", rows.device), rows.lib.empty((n,), "float64", rows.device)


def greedy_pv(post, b: BlockArgs, n: int):
    """Greedy PV in float64 on the device, lazy like the CPU's (same picks); device memory grows with the
    block count and the picked rows, not with the pool's rows x dim. Synchronises once per pick."""
    rows = b.rows
    lib = rows.lib
    idx, scores = _selection_outputs(rows, n)
    if n:
        with lib.guard(rows.device):
            whiten = _whitening(post, lib, rows.device, "float64")
            _core.cuda.select_greedy_pv(_view(lib, rows.arr, rows.stream), b.offsets_host,
                                        _offsets_view(lib, b.offsets, rows.stream), b.n_blocks,
                                        _view(lib, whiten, rows.stream), float(post.noise_var),
                                        _view(lib, idx, rows.stream), _view(lib, scores, rows.stream))
    return idx, scores


def gram_sketch(b: BlockArgs, out_dim: int, seed: int) -> BlockArgs:
    """One Gram-sketch vector per block (same definition and generator streams as the CPU)."""
    rows = b.rows
    lib = rows.lib
    out = lib.empty((b.n_blocks, out_dim), "float32", rows.device)
    if b.n_blocks:
        with lib.guard(rows.device):
            _core.cuda.gram_sketch(_view(lib, rows.arr, rows.stream), b.offsets_host,
                                   _offsets_view(lib, b.offsets, rows.stream), b.n_blocks, seed,
                                   _view(lib, out, rows.stream))
    return BlockArgs(_Dev(lib, out), None, None, b.n_blocks, out_dim)


def select_by_distance(method: str, x: BlockArgs, train: BlockArgs | None, n: int, precision: str):
    """LCMD / MaxDist on the device, fully asynchronous (the picks stay there)."""
    rows = x.rows
    lib = rows.lib
    idx, scores = _selection_outputs(rows, n)
    if n:
        with lib.guard(rows.device):
            train_view = (_none_view(rows.stream) if train is None
                          else _view(lib, train.rows.arr, rows.stream))
            _core.cuda.select_by_distance(code(method, DISTANCE_METHODS), _view(lib, rows.arr, rows.stream),
                                          train_view, code(precision, PRECISIONS), _view(lib, idx, rows.stream),
                                          _view(lib, scores, rows.stream))
    return idx, scores
