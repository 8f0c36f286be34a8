"""Build and runtime information."""
from __future__ import annotations

from ._validation import as_int
from ._loader import _core


def build_info() -> dict:
    """Version, BLAS provider, threads and CUDA availability. Never raises.

    Returns
    -------
    dict
        ``version``, ``blas``, ``kernels`` (the fixed-order kernel set in use: ``avx512``, ``avx2`` or
        ``scalar``; every set gives bitwise-identical results), ``num_threads``, ``cuda_compiled``
        (bool), ``cuda_devices`` (list of names).
    """
    info = {
        "version": _core.__version__,
        "blas": _core.blas_provider,
        "kernels": _kernel_set(),
        "num_threads": _core.get_num_threads(),
        "cuda_compiled": bool(getattr(_core, "cuda_compiled", False)),
        "cuda_devices": [],
    }
    if info["cuda_compiled"]:
        from .backends import cuda

        info["cuda_devices"] = cuda.device_names()  # never raises: empty without a driver or a GPU
    return info


def _kernel_set() -> str:
    try:
        return _core.kernel_set()
    except ValueError as exc:  # a bad NTKAL_KERNELS value: reported, not raised (build_info never raises)
        return f"unavailable: {exc}"


def set_num_threads(n: int) -> None:
    """Threads for the engine's OpenMP loops and BLAS calls."""
    _core.set_num_threads(as_int(n, "set_num_threads", "n", low=1))


def get_num_threads() -> int:
    """Threads the engine currently uses."""
    return _core.get_num_threads()
