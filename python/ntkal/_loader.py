"""Load the compiled engine. The scipy-openblas32 wheel's shared library is loaded first so the
extension's BLAS symbols resolve wherever pip put the wheel."""
import ctypes
import os

# The engine alternates OpenMP loops with threaded BLAS calls. Spinning idle threads of one pool
# steal cores from the other (measured: 62% of LCMD time was libgomp spin-waiting on 2 cores), so
# idle threads sleep unless the user chose otherwise. Read when the libraries load, hence here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _preload_openblas():
    try:
        import scipy_openblas32
    except ImportError:  # built with NTKAL_BLAS=system
        return
    lib_dir = scipy_openblas32.get_lib_dir()
    path = os.path.join(lib_dir, "libscipy_openblas.so")
    if os.path.exists(path):
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


_preload_openblas()

from . import _core  # noqa: E402

__all__ = ["_core"]
