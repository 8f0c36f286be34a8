"""Model adapters: one module per architecture, each returning a :class:`ntkal.torch.FunctionalModel`.

* :func:`chgnet` — pretrained CHGNet (embedded default);
* :func:`sevennet` — SevenNet-0 (extra ``[sevenn]``);
* :func:`toy` — a tiny float64 pair model for tests and examples.
"""

from __future__ import annotations

from ...errors import InvalidArgumentError
from ..functional import FunctionalModel
from .chgnet import CHGNET_READOUT, chgnet
from .sevennet import SEVENNET_READOUT, sevennet
from .toy import toy

__all__ = ["CHGNET_READOUT", "MODELS", "SEVENNET_READOUT", "chgnet", "load", "sevennet", "toy"]

MODELS = {"chgnet": chgnet, "sevennet": sevennet, "toy": toy}


def load(name: str, **kwargs) -> FunctionalModel:
    """A model by name (``"chgnet"``, ``"sevennet"``, ``"toy"``)."""
    if name not in MODELS:
        raise InvalidArgumentError(f"ntkal.torch.models.load: model must be one of {sorted(MODELS)}; got {name!r}")
    return MODELS[name](**kwargs)
