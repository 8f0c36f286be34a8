"""Is an array in CUDA device memory? (No backend needed to answer.)"""
from __future__ import annotations

_DLPACK_CUDA = (2, 13)  # kDLCUDA, kDLCUDAManaged


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


def to_numpy(x):
    """A host copy of a (small) device array — indices, scores — or the array itself on the host."""
    if not is_device_array(x):
        import numpy as np

        return np.asarray(x)
    if hasattr(x, "get") and not type(x).__module__.startswith("torch"):  # CuPy
        return x.get()
    return x.detach().cpu().numpy()
