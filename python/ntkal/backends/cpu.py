"""CPU backend: the C++ engine (``ntkal._core``) on validated host arrays (private)."""
from __future__ import annotations

import numpy as np

from .._loader import _core
from .._validation import as_float_array, as_offsets, as_rows
from ..blocks import unpack
from ..errors import fail
from ..options import DISTANCE_METHODS, PRECISIONS, code
from .common import BlockArgs

name = "cpu"


def blocks(rows, offsets, where: str, *, width: int | None = None, names=("rows", "offsets"), like=None) -> BlockArgs:
    """Validate rows (float32 C-contiguous, finite; never copied when already so) and offsets."""
    rows, offsets = unpack(rows, offsets, where, names)
    r = as_rows(rows, where, names[0], width)
    o = as_offsets(offsets, r.shape[0], where, names[1])
    return BlockArgs(r, o, o, r.shape[0] if o is None else o.shape[0] - 1, r.shape[1])


def array(b: BlockArgs) -> np.ndarray:
    """The validated rows as the array a user gets back."""
    return b.rows


def host_rows(b: BlockArgs) -> np.ndarray:
    return b.rows


def variance(post, b: BlockArgs, intensive: bool, matmul: str = "float32") -> np.ndarray:
    """PV of every block; ``post`` is the engine's posterior (``Posterior._p``). ``matmul`` only
    matters on a GPU: the CPU always scores in the posterior's precision."""
    return post.variance(b.rows, b.offsets, bool(intensive))


def top_k(values: np.ndarray, k: int):
    """(positions, values) of the k largest values, largest first, ties -> lower position."""
    top = _core.TopK(k)
    top.push(np.ascontiguousarray(values, dtype=np.float64), 0)
    return top.result()


def concatenate(parts: list) -> np.ndarray:
    return np.concatenate(parts)


def arange(start: int, stop: int, like=None) -> np.ndarray:
    return np.arange(start, stop, dtype=np.int64)


def take(values, positions):
    return np.asarray(values)[np.asarray(positions, dtype=np.int64)]


def from_host(a: np.ndarray, like=None) -> np.ndarray:
    return a


def full(n: int, value: float, like=None) -> np.ndarray:
    return np.full(n, value, dtype=np.float64)


def greedy_pv(post, b: BlockArgs, n: int):
    return _core.select_greedy_pv(post, b.rows, b.offsets, n)


def variance_reduction_scores(post, b: BlockArgs, target_gram: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Integrated-variance reduction of conditioning ``post`` (the engine's posterior) on each active
    block; -inf for inactive or empty blocks. Fixed-order kernels: the same bits on every machine."""
    return _core.variance_reduction_scores(post, b.rows, b.offsets, np.ascontiguousarray(target_gram, np.float64),
                                           np.ascontiguousarray(active, dtype=np.uint8))


def leave_one_out_variance(post, b: BlockArgs, intensive: bool) -> np.ndarray:
    """PV of each block under ``post`` without that block (NaN when empty or unresolvable)."""
    return _core.leave_one_out_variance(post, b.rows, b.offsets, bool(intensive))


def nearest_train(x: BlockArgs, train: BlockArgs, precision: str) -> tuple[np.ndarray, bool]:
    """(nearest training vector of each vector, whether the projected-bounds route decided it)."""
    return _core.nearest_train(x.rows, train.rows, code(precision, PRECISIONS))


def gram_sketch(b: BlockArgs, out_dim: int, seed: int) -> BlockArgs:
    z = _core.gram_sketch(b.rows, b.offsets, out_dim, seed)
    return BlockArgs(z, None, None, z.shape[0], z.shape[1])


def select_by_distance(method: str, x: BlockArgs, train: BlockArgs | None, n: int, precision: str):
    return _core.select_by_distance(code(method, DISTANCE_METHODS), x.rows, None if train is None else train.rows, n,
                                    code(precision, PRECISIONS))


def project(sketch, J, col_offset: int, out, where: str):
    """``out += J @ S[col_offset:...]``; ``sketch`` is the engine's Sketch (``Sketch._s``)."""
    J = as_float_array(J, where, "J", ndim=2, dtypes=(np.float32, np.float64))
    if col_offset + J.shape[1] > sketch.n_params:
        fail(where, f"col_offset + J.shape[1] must be <= n_params={sketch.n_params}; got {col_offset} + {J.shape[1]}")
    if out is None:
        out = np.zeros((J.shape[0], sketch.dim), dtype=np.float32)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.flags.c_contiguous
              and out.shape == (J.shape[0], sketch.dim)):
        got = f"{type(out).__name__} {getattr(out, 'shape', '')} {getattr(out, 'dtype', '')}"
        fail(where, f"out must be a C-contiguous float32 ndarray of shape ({J.shape[0]}, {sketch.dim}); got {got}")
    if J.dtype == np.float32:
        sketch.project_f32(J, col_offset, out)
    else:
        sketch.project_f64(J, col_offset, out)
    return out
