"""CUDA backend: the engine on arrays that already live on a GPU (private module).

The public functions (:meth:`ntkal.Sketch.project`, :meth:`ntkal.Posterior.variance`,
:func:`ntkal.shortlist`, :func:`ntkal.select`) call into this module when their main input is a
CUDA array, so features are scored and selected where they were computed, without a round trip
to the host. What crosses to the host is small: block offsets (n + 1 integers, validated there),
the posterior's whitening operator travels the other way (d x d, cached per posterior state), and
greedy PV reads back one index per pick.

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

from ._arrays import as_int, as_offsets, as_positive_float, fail
from ._loader import _core

MATMULS = ("float32", "tf32", "bf16")
_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


# ---- availability ---------------------------------------------------------------------------------

def compiled() -> bool:
    """True when this build of ntkal contains the CUDA backend."""
    return bool(getattr(_core, "cuda_compiled", False))


def device_count() -> int:
    """Number of usable CUDA devices; 0 without the backend, a driver or a GPU. Never raises."""
    try:
        return int(_core.cuda_device_count()) if compiled() else 0
    except Exception:
        return 0


def device_names() -> list:
    """Names of the usable CUDA devices (``"NVIDIA H100 80GB HBM3 (sm_90)"``); empty when none. Never raises."""
    try:
        return list(_core.cuda_device_names()) if compiled() else []
    except Exception:
        return []


def is_device_array(x) -> bool:
    """True for arrays in CUDA device memory: PyTorch CUDA tensors, CuPy arrays, and any object with
    ``__cuda_array_interface__`` or a CUDA ``__dlpack_device__``. Never raises."""
    try:
        if type(x).__module__.startswith("torch"):
            return bool(getattr(x, "is_cuda", False))
        if hasattr(x, "__cuda_array_interface__"):
            return True
        dev = getattr(x, "__dlpack_device__", None)
        return dev is not None and int(dev()[0]) in _DLPACK_CUDA
    except Exception:
        return False


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


def _require_backend(where: str):
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
        _core.cuda_synchronize(int(stream))


class _Dev:
    """A validated device matrix: the library array, its pointer, shape and leading dimension."""

    def __init__(self, lib, arr):
        self.lib, self.arr = lib, arr
        self.shape = tuple(int(s) for s in arr.shape)
        self.ptr = lib.ptr(arr)
        strides = lib.strides(arr)
        self.ld = strides[0] if len(strides) == 2 else 1
        self.dtype = lib.dtype(arr)


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


def _check_finite(m: _Dev, stream: int, where: str, name: str) -> None:
    rows, cols = m.shape
    ld = m.ld if rows > 1 else max(cols, 1)
    if rows * cols and _core.cuda_count_nonfinite(m.ptr, rows, cols, ld, m.dtype, stream):
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


def _ptr(lib, arr) -> int:
    return 0 if arr is None else lib.ptr(arr)


# ---- posterior whitening operator -------------------------------------------------------------------

_WHITENING = weakref.WeakKeyDictionary()


def _whitening(posterior, lib, device: int, dtype: str):
    """M = sqrt(c) L^{-1} on the device, float32 (scoring) or float64 (greedy); L is factored on the
    host in float64 (cheap at d <= a few thousand, shared with the CPU path, no GPU solver needed).
    Cached per posterior until it is conditioned on more data."""
    core = posterior._p
    key = (int(core.n_rows), int(core.n_blocks), lib.name, device, dtype)
    entry = _WHITENING.get(posterior)
    if entry is not None and entry[0] == key:
        return entry[1]
    m = _core.cuda_whitening_operator(core)
    arr = lib.from_numpy(m if dtype == "float64" else m.astype(np.float32), device)
    try:
        _WHITENING[posterior] = (key, arr)
    except TypeError:  # not weak-referenceable: no cache
        pass
    return arr


def _check_posterior(posterior, dim: int, where: str):
    from .posterior import Posterior

    if not isinstance(posterior, Posterior):
        fail(where, f"posterior must be an ntkal.Posterior; got {type(posterior).__name__}")
    if posterior.dim != dim:
        fail(where, f"posterior.dim must equal the feature width {dim}; got {posterior.dim}")


# ---- operations -------------------------------------------------------------------------------------------

def project(sketch, J, col_offset, out=None):
    """``out += J @ S[col_offset : col_offset + P_chunk]`` on J's device.

    Parameters
    ----------
    sketch : ntkal.Sketch
    J : CUDA array, shape (m, P_chunk), float32 or float64
        Jacobian rows (other float dtypes are converted to float32). Rows may be strided (a row
        slice of a wider array is not copied); columns must be contiguous or J is copied.
    col_offset : int
        Index of J's first column among the sketch's n_params parameters.
    out : CUDA array, shape (m, dim), float32, optional
        Accumulator on J's device, updated in place and returned.

    Returns
    -------
    CUDA array, shape (m, dim), float32
        ``out``, or a new array of J's library.
    """
    where = "Sketch.project"
    _require_backend(where)
    lib = _library_for(J, where, "J")
    j = _matrix(J, lib, where, "J", dtypes=("float32", "float64"))
    device = lib.device(j.arr)
    col_offset = as_int(col_offset, where, "col_offset", low=0)
    m, p_chunk = j.shape
    if col_offset + p_chunk > sketch.n_params:
        fail(where, f"col_offset + J.shape[1] must be <= n_params={sketch.n_params}; got {col_offset} + {p_chunk}")
    with lib.guard(device):
        stream = lib.stream(device)
        _check_finite(j, stream, where, "J")
        if out is None:
            result = lib.zeros((m, sketch.dim), "float32", device)
            o = _Dev(lib, result)
        else:
            if not is_device_array(out):
                fail(where, f"out must be a CUDA float32 array of shape ({m}, {sketch.dim}) on cuda:{device}; "
                            f"got {type(out).__name__}")
            result = out
            o = _Dev(lib, lib.adopt(out))
            bad_layout = o.shape[0] > 1 and o.ld < sketch.dim
            if (o.dtype != "float32" or o.shape != (m, sketch.dim) or lib.device(o.arr) != device
                    or (sketch.dim > 1 and lib.strides(o.arr)[1] != 1) or bad_layout):
                fail(where, f"out must be a float32 CUDA array of shape ({m}, {sketch.dim}) with contiguous rows "
                            f"on cuda:{device}; got {o.dtype} {o.shape} on cuda:{lib.device(o.arr)}")
        if m and p_chunk:
            _core.cuda_sketch_project(sketch.kind, int(sketch.seed), int(sketch.nnz), int(sketch.n_params),
                                      int(sketch.dim), j.ptr, j.dtype, m, p_chunk, max(j.ld, p_chunk), col_offset,
                                      o.ptr, max(o.ld, sketch.dim), stream)
    return result


def sketch_dense(sketch, p_begin: int, p_end: int, device: int = 0, library: str = "torch"):
    """Rows ``S[p_begin:p_end]`` generated on the GPU, float64 (tests: parity with the CPU sketch).

    Returns
    -------
    CUDA array, shape (p_end - p_begin, dim), float64
    """
    where = "Sketch.dense"
    _require_backend(where)
    lib = _lib(library)
    p_begin = as_int(p_begin, where, "p_begin", low=0)
    p_end = as_int(p_end, where, "p_end", low=p_begin, high=sketch.n_params)
    with lib.guard(device):
        out = lib.empty((p_end - p_begin, sketch.dim), "float64", device)
        _core.cuda_sketch_dense(sketch.kind, int(sketch.seed), int(sketch.nnz), int(sketch.n_params),
                                int(sketch.dim), p_begin, p_end, lib.ptr(out), lib.stream(device))
    return out


def _variance_on(posterior, rows: _Dev, offsets_dev, n_blocks: int, intensive: bool, matmul: str,
                 device: int, stream: int, where: str):
    """PV of validated device rows; checks the result for NaN/Inf (non-finite rows)."""
    lib = rows.lib
    if matmul not in MATMULS:
        fail(where, f"matmul must be one of {MATMULS}; got {matmul!r}")
    precision = getattr(posterior, "precision", "float32")
    if precision == "float64" and matmul != "float32":
        fail(where, f"matmul={matmul!r} needs a precision='float32' posterior; this one is float64")
    out = lib.empty((n_blocks,), "float64", device)
    if n_blocks == 0:
        return out
    wdtype = "float64" if precision == "float64" else "float32"
    whiten = _whitening(posterior, lib, device, wdtype)
    _core.cuda_block_variance(rows.ptr, rows.shape[0], rows.shape[1], lib.ptr(whiten), wdtype,
                              _ptr(lib, offsets_dev), n_blocks, float(posterior.noise_var), bool(intensive),
                              matmul, lib.ptr(out), stream)
    if _core.cuda_count_nonfinite(lib.ptr(out), 1, n_blocks, n_blocks, "float64", stream):
        fail(where, "rows contains NaN or Inf")
    return out


def variance(posterior, rows, offsets=None, intensive=False, *, matmul: str = "float32"):
    """Posterior variance of each block, computed on the rows' device.

    Parameters
    ----------
    posterior : ntkal.Posterior
        Conditioned posterior; its Cholesky factor stays on the host, the whitening operator
        ``sqrt(c) L^{-1}`` is uploaded once per posterior state.
    rows : CUDA array, shape (n_rows, dim)
        Feature rows (float32; other float dtypes are converted).
    offsets : array_like of int, shape (n + 1,), optional
        Block offsets, on the host or the device; ``None`` scores every row on its own.
    intensive : bool
        Divide each block's PV by its row count.
    matmul : {"float32", "tf32", "bf16"}
        Arithmetic of the whitening GEMM: FP32 (default, matches the CPU within float32 rounding),
        or tensor cores with TF32 / BF16 inputs and FP32 accumulation (faster, ~1e-3 / ~1e-2
        relative error). Only for ``precision="float32"`` posteriors; float64 posteriors use FP64.

    Returns
    -------
    CUDA array, shape (n,), float64
        On the rows' device, same library as ``rows``.
    """
    where = "Posterior.variance"
    _require_backend(where)
    lib = _library_for(rows, where, "rows")
    r = _contiguous(_matrix(rows, lib, where, "rows", width=posterior.dim))
    device = lib.device(r.arr)
    with lib.guard(device):
        stream = lib.stream(device)
        _, off_dev, n_blocks = _offsets(offsets, r.shape[0], lib, device, where)
        return _variance_on(posterior, r, off_dev, n_blocks, intensive, matmul, device, stream, where)


def _top_k(lib, values, indices, base: int, k: int, device: int, stream: int):
    """(indices int64 (k,), values float64 (k,)) of the k largest values, ties -> lower index."""
    n = int(values.shape[0])
    out_v = lib.empty((k,), "float64", device)
    out_i = lib.empty((k,), "int64", device)
    if k:
        _core.cuda_top_k(lib.ptr(values), _ptr(lib, indices), n, base, k, lib.ptr(out_v), lib.ptr(out_i), stream)
    return out_i, out_v


def shortlist(rows, offsets, posterior, k, intensive=False, *, matmul: str = "float32", progress=None):
    """The k blocks with the highest posterior variance, scored and ranked on the GPU.

    Parameters
    ----------
    rows : CUDA array (n_rows, dim), or iterable of chunks
        Pool features, or an iterable of ``(rows, offsets)`` tuples / :class:`ntkal.Blocks` whose
        rows are CUDA arrays (host chunks are uploaded to the first chunk's device). Block indices
        count across chunks; only k candidates are kept between chunks.
    offsets : array_like of int, shape (n + 1,), or None
        Block offsets of ``rows`` (None for an iterable).
    posterior : ntkal.Posterior
    k : int
        Shortlist size (``k <= n`` for an array; a stream returns at most its length).
    intensive : bool
        Rank by PV per row.
    matmul : {"float32", "tf32", "bf16"}
        See :func:`variance`.
    progress : callable, optional
        ``progress(n_done)`` after each chunk.

    Returns
    -------
    indices : CUDA array, shape (k,), int64
        Highest PV first, ties -> lower index first.
    pv : CUDA array, shape (k,), float64
    """
    where = "shortlist"
    _require_backend(where)
    k = as_int(k, where, "k", low=0)
    if is_device_array(rows):
        lib = _library_for(rows, where, "rows")
        r = _contiguous(_matrix(rows, lib, where, "rows", width=posterior.dim))
        device = lib.device(r.arr)
        with lib.guard(device):
            stream = lib.stream(device)
            _, off_dev, n_blocks = _offsets(offsets, r.shape[0], lib, device, where)
            if k > n_blocks:
                fail(where, f"k must be <= the pool size {n_blocks}; got {k}")
            pv = _variance_on(posterior, r, off_dev, n_blocks, intensive, matmul, device, stream, where)
            return _top_k(lib, pv, None, 0, k, device, stream)
    if offsets is not None:
        fail(where, "offsets must be None when rows is an iterable of (rows, offsets) chunks")
    return _shortlist_stream(rows, posterior, k, intensive, matmul, progress, where)


def _shortlist_stream(chunks, posterior, k, intensive, matmul, progress, where):
    from .blocks import Blocks

    lib = device = stream = None
    kept_i = kept_v = None
    base = 0
    for chunk in chunks:
        if isinstance(chunk, Blocks):
            c_rows, c_off = chunk.rows, chunk.offsets
        elif isinstance(chunk, tuple) and len(chunk) == 2:
            c_rows, c_off = chunk
        else:
            fail(where, f"each chunk must be a (rows, offsets) tuple or Blocks; got {type(chunk).__name__}")
        if lib is None:
            if not is_device_array(c_rows):
                fail(where, "the first chunk's rows must be a CUDA array for the GPU path")
            lib = _library_for(c_rows, where, "rows")
        r = _contiguous(_matrix(c_rows, lib, where, "rows", width=posterior.dim, device=device))
        if device is None:
            device = lib.device(r.arr)
            stream = lib.stream(device)
        with lib.guard(device):
            _, off_dev, n_blocks = _offsets(c_off, r.shape[0], lib, device, where)
            pv = _variance_on(posterior, r, off_dev, n_blocks, intensive, matmul, device, stream, where)
            idx = lib.arange(base, base + n_blocks, device)
            if kept_v is not None:  # kept entries first: on equal PV they have the lower indices
                pv, idx = lib.concatenate([kept_v, pv]), lib.concatenate([kept_i, idx])
            kept_i, kept_v = _top_k(lib, pv, idx, 0, min(k, int(pv.shape[0])), device, stream)
        base += n_blocks
        if progress is not None:
            progress(base)
    if lib is None:
        fail(where, "the chunk iterable was empty; nothing to rank on the GPU")
    return kept_i, kept_v


def _gram_vectors(lib, rows: _Dev, off_host, off_dev, n_blocks: int, out_dim: int, seed: int, device, stream):
    out = lib.empty((n_blocks, out_dim), "float32", device)
    if n_blocks:
        _core.cuda_gram_sketch(rows.ptr, rows.shape[0], rows.shape[1], off_host, _ptr(lib, off_dev), n_blocks,
                               out_dim, seed, lib.ptr(out), stream)
    return _Dev(lib, out)


def distance_vectors(rows, offsets=None, *, dim=None, seed: int = 0):
    """GPU version of :func:`ntkal.distance_vectors`: rows themselves for one-row blocks, else the
    Gram sketch ``z(x)`` (same generator streams as the CPU).

    Returns
    -------
    CUDA array, shape (n, d or dim), float32
    """
    where = "distance_vectors"
    _require_backend(where)
    lib = _library_for(rows, where, "rows")
    r = _contiguous(_matrix(rows, lib, where, "rows"))
    device = lib.device(r.arr)
    with lib.guard(device):
        stream = lib.stream(device)
        _check_finite(r, stream, where, "rows")
        off_host, off_dev, n_blocks = _offsets(offsets, r.shape[0], lib, device, where)
        if off_host is None or np.all(np.diff(off_host) == 1):
            return r.arr
        out_dim = r.shape[1] if dim is None else as_int(dim, where, "dim", low=1)
        seed = as_int(seed, where, "seed", low=0, high=2**64 - 1)
        return _gram_vectors(lib, r, off_host, off_dev, n_blocks, out_dim, seed, device, stream).arr


def select(rows, offsets, n, method="lcmd", posterior=None, train_rows=None, train_offsets=None, seed=0, *,
           noise_var: float = 1e-3, precision: str = "float32", matmul: str = "float32"):
    """:func:`ntkal.select` on the rows' device; same methods, semantics and tie rules as the CPU.

    Parameters
    ----------
    rows : CUDA array, shape (n_rows, d)
        Candidate feature rows.
    offsets : array_like of int, shape (n_pool + 1,), or None
        Candidate block offsets (host or device).
    n : int
        Batch size, ``0 <= n <= n_pool``.
    method : {"lcmd", "greedy_pv", "maxdist", "topk", "random"}
    posterior : ntkal.Posterior, optional
        For greedy_pv / topk (built from ``train_rows`` with ``noise_var`` when omitted).
    train_rows, train_offsets : array_like, optional
        Training features (host or device): initial centres for lcmd / maxdist.
    seed : int
        Seed of ``random`` (NumPy generator, as on the CPU) and of the Gram sketch.
    noise_var : float
        Noise variance of a posterior built here.
    precision : {"float32", "float64"}
        Distance-initialisation GEMM arithmetic (lcmd, maxdist) and precision of a posterior built here.
    matmul : {"float32", "tf32", "bf16"}
        Scoring arithmetic for topk / random scores (see :func:`variance`).

    Returns
    -------
    ntkal.Selection
        ``indices`` (n,) int64 and ``scores`` (n,) float64 as CUDA arrays of the rows' library.
        greedy_pv runs in float64 and synchronises once per pick; lcmd / maxdist never synchronise.
    """
    from .posterior import PRECISIONS, Posterior
    from .select import METHODS, Selection

    where = "select"
    _require_backend(where)
    if method not in METHODS:
        fail(where, f"method must be one of {METHODS}; got {method!r}")
    if precision not in PRECISIONS:
        fail(where, f"precision must be one of {PRECISIONS}; got {precision!r}")
    seed = as_int(seed, where, "seed", low=0, high=2**64 - 1)
    lib = _library_for(rows, where, "rows")
    r = _contiguous(_matrix(rows, lib, where, "rows"))
    device = lib.device(r.arr)
    dim = r.shape[1]
    with lib.guard(device):
        stream = lib.stream(device)
        _check_finite(r, stream, where, "rows")
        off_host, off_dev, n_pool = _offsets(offsets, r.shape[0], lib, device, where)
        n = as_int(n, where, "n", low=0, high=n_pool)
        has_train = train_rows is not None
        t = t_off_host = t_off_dev = None
        if has_train:
            t = _contiguous(_matrix(train_rows, lib, where, "train_rows", width=dim, device=device))
            _check_finite(t, stream, where, "train_rows")
            t_off_host, t_off_dev, _ = _offsets(train_offsets, t.shape[0], lib, device, where, "train_offsets")
        elif train_offsets is not None:
            fail(where, "train_offsets given without train_rows")

        if posterior is not None:
            _check_posterior(posterior, dim, where)
        elif method in ("greedy_pv", "topk"):
            posterior = Posterior(dim, noise_var=as_positive_float(noise_var, where, "noise_var"),
                                  precision=precision)
            if has_train:  # A is accumulated on the host in float64 (train sets are small)
                posterior.add(lib.to_numpy(t.arr), t_off_host)

        idx = lib.empty((n,), "int64", device)
        scores = lib.empty((n,), "float64", device)
        if method == "greedy_pv":
            if n:
                whiten = _whitening(posterior, lib, device, "float64")
                _core.cuda_select_greedy_pv(r.ptr, r.shape[0], dim, off_host, _ptr(lib, off_dev), n_pool,
                                            lib.ptr(whiten), float(posterior.noise_var), n, lib.ptr(idx),
                                            lib.ptr(scores), stream)
        elif method == "topk":
            pv = _variance_on(posterior, r, off_dev, n_pool, False, matmul, device, stream, where)
            idx, scores = _top_k(lib, pv, None, 0, n, device, stream)
        elif method == "random":
            host_idx = np.random.default_rng(seed).choice(n_pool, size=n, replace=False).astype(np.int64)
            idx = lib.from_numpy(host_idx, device)
            if posterior is not None:
                pv = _variance_on(posterior, r, off_dev, n_pool, False, matmul, device, stream, where)
                scores = lib.take(pv, idx)
            else:
                scores = lib.full((n,), float("nan"), "float64", device)
        else:
            multi = (off_host is not None and np.any(np.diff(off_host) != 1)) or (
                has_train and t_off_host is not None and np.any(np.diff(t_off_host) != 1))
            if multi:  # one Gram-sketch vector per structure, same sketch for pool and train
                vecs = _gram_vectors(lib, r, off_host, off_dev, n_pool, dim, seed, device, stream)
                tvecs = None
                if has_train:
                    n_train_blocks = t.shape[0] if t_off_host is None else t_off_host.shape[0] - 1
                    tvecs = _gram_vectors(lib, t, t_off_host, t_off_dev, n_train_blocks, dim, seed, device, stream)
            else:
                vecs, tvecs = r, t
            if tvecs is not None and tvecs.shape[0] == 0:
                tvecs = None
            if n:
                _core.cuda_select_by_distance(method, vecs.ptr, vecs.shape[0], 0 if tvecs is None else tvecs.ptr,
                                              0 if tvecs is None else tvecs.shape[0], vecs.shape[1], n,
                                              precision == "float64", lib.ptr(idx), lib.ptr(scores), stream)
    return Selection(idx, scores, method)


def to_host(x, where: str, name: str) -> np.ndarray:
    """A NumPy copy of a CUDA array (helper for callers that need small results on the host)."""
    if isinstance(x, np.ndarray):
        return x
    _require_backend(where)
    lib = _library_for(x, where, name)
    return lib.to_numpy(lib.adopt(x))


__all__ = [
    "MATMULS", "compiled", "device_count", "device_names", "distance_vectors", "is_device_array", "project",
    "select", "shortlist", "sketch_dense", "to_host", "variance",
]
