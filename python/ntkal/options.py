"""Every vocabulary of the package, in one place: the names users pass, checked one way, and the
engine value each name stands for (the enums of cpp/options.hpp; no binding parses a string)."""
from __future__ import annotations

from ._loader import _core
from .errors import fail

_SKETCH_KIND = {"sparse_sign": _core.SketchKind.SparseSign, "gaussian": _core.SketchKind.Gaussian}
_PRECISION = {"float32": _core.Precision.Float32, "float64": _core.Precision.Float64}
_DISTANCE_METHOD = {"lcmd": _core.DistanceMethod.Lcmd, "maxdist": _core.DistanceMethod.MaxDist}
_MATMUL = {"float32": _core.Matmul.Float32, "tf32": _core.Matmul.TF32, "bf16": _core.Matmul.BF16}

SKETCH_KINDS = tuple(_SKETCH_KIND)
PRECISIONS = tuple(_PRECISION)
DISTANCE_METHODS = tuple(_DISTANCE_METHOD)  # the METHODS that select on distances between structures
# METHODS that rank by PV or its reduction (they need a posterior)
POSTERIOR_METHODS = ("greedy_pv", "topk", "variance_reduction")
METHODS = (*DISTANCE_METHODS, *POSTERIOR_METHODS, "random")  # ntkal.select
# ntkal.acquire: a strategy is a PV shortlist (per stratum) and one of the METHODS on it ("random": no shortlist,
# uniform over the pool); "pv_lcmd", its default, is the historical name of "lcmd" there
STRATEGY_ALIASES = {"pv_lcmd": "lcmd"}
STRATEGIES = (*STRATEGY_ALIASES, *METHODS)
STRATA = ("none", "composition")  # ntkal.acquire: how the batch is split over groups of the pool
CALIBRATE = ("off", "on", "auto")  # ntkal.acquire: output scale of the posterior from labelled residuals
LOSS_ENERGY_TERMS = ("per_atom", "total")  # ntkal.torch.Loss: energy residual per atom or total
LOSS_FORCE_TERMS = ("per_component", "per_structure")  # ntkal.torch.Loss: force residuals summed or per-structure mean
ON_ERROR = ("stop", "skip")  # ntkal.acquire: a structure the model cannot take
KERNELS = ("energy", "force", "joint", "embedding", "last_layer")  # ntkal.torch.Featurizer
FORCE_METHODS = ("difference", "autograd")  # ntkal.torch.Featurizer: how force rows are computed
MATMULS = tuple(_MATMUL)  # GEMM arithmetic of GPU scoring
MD_SIGNALS = ("atom", "structure")  # ntkal.md.Monitor: what a frame's uncertainty (and its thresholds) use
KERNELS_WITH_ENERGY_ROW = ("energy", "joint", "last_layer")
KERNELS_WITHOUT_FORCE_ROWS = ("energy", "embedding")

_CODES = {SKETCH_KINDS: _SKETCH_KIND, PRECISIONS: _PRECISION, DISTANCE_METHODS: _DISTANCE_METHOD, MATMULS: _MATMUL}


def choice(value, choices: tuple, where: str, name: str) -> str:
    """``value`` if it is one of ``choices``, else InvalidArgumentError naming ``where`` and ``name``."""
    if not isinstance(value, str) or value not in choices:
        fail(where, f"{name} must be one of {choices}; got {value!r}")
    return value


def method_of(strategy: str) -> str:
    """The select() method of an (already checked) acquire strategy."""
    return STRATEGY_ALIASES.get(strategy, strategy)


def code(value: str, choices: tuple):
    """The engine enum value of an already-checked name of ``choices``."""
    return _CODES[choices][value]


def name(engine_value, choices: tuple) -> str:
    """The name of an engine enum value (inverse of :func:`code`)."""
    return next(k for k, v in _CODES[choices].items() if v == engine_value)


__all__ = ["CALIBRATE", "DISTANCE_METHODS", "FORCE_METHODS", "KERNELS", "KERNELS_WITHOUT_FORCE_ROWS",
           "KERNELS_WITH_ENERGY_ROW", "LOSS_ENERGY_TERMS", "LOSS_FORCE_TERMS", "MATMULS", "MD_SIGNALS",
           "METHODS", "ON_ERROR", "POSTERIOR_METHODS", "PRECISIONS", "SKETCH_KINDS", "STRATA", "STRATEGIES",
           "STRATEGY_ALIASES", "choice", "code", "method_of", "name"]
