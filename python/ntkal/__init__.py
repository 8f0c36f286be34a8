"""ntkal: choose which atomic structures to label next, scored with the model's own neural tangent kernel.

Public API: :class:`Sketch`, :class:`Posterior`, :func:`shortlist`, :func:`select`, :class:`Selection`,
:class:`Blocks`, :func:`screen`, :class:`Screen`, :func:`acquire`, :func:`build_info`. PyTorch Jacobian
export lives in :mod:`ntkal.torch` (optional). ARCHITECTURE.md in the repository maps the modules.
"""
from ._loader import _core
from .acquire import AcquisitionResult, acquire
from .blocks import Blocks
from .errors import InvalidArgumentError, NumericalError
from .info import build_info, get_num_threads, set_num_threads
from .options import METHODS, STRATEGIES
from .posterior import Posterior
from .screen import Screen, screen
from .select import Selection, distance_vectors, select
from .shortlist import shortlist
from .sketch import Sketch
from .structures import StructureSource, write_structures

__version__ = _core.__version__


def __getattr__(name):
    # ntkal.torch needs torch; import it only when asked for
    if name == "torch":
        import importlib

        return importlib.import_module("ntkal.torch")
    raise AttributeError(f"module 'ntkal' has no attribute {name!r}")


__all__ = [
    "AcquisitionResult", "Blocks", "InvalidArgumentError", "METHODS", "NumericalError", "Posterior", "STRATEGIES",
    "Screen", "Selection", "Sketch", "StructureSource", "acquire", "build_info", "distance_vectors", "get_num_threads",
    "screen", "select", "set_num_threads", "shortlist", "write_structures",
]
