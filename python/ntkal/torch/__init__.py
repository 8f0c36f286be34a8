"""PyTorch front end: MLIPs as pure functions of their parameters, Jacobian rows, sketched features.

Importing :mod:`ntkal` does not import torch; ``import ntkal.torch`` does.

* :class:`FunctionalModel` — ``energy_fn(params, positions, atoms)`` adapter.
* :mod:`ntkal.torch.models` — ``chgnet()``, ``sevennet()``, ``toy()`` factories.
* :class:`Featurizer` — structures -> :class:`ntkal.Blocks` of sketched NTK rows.
* :class:`Loss` — the fine-tuning loss the rows are weighted to match.
"""
try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("ntkal.torch needs PyTorch: pip install 'ntkal[torch]' (torch==2.13.0, ase, tqdm)") from exc

from . import models
from .featurizer import KERNELS, Featurizer
from .functional import FunctionalModel
from .jacobian import force_combinations
from .loss import Loss

__all__ = ["KERNELS", "Featurizer", "FunctionalModel", "Loss", "force_combinations", "models"]
