"""Model adapters: one module per architecture, each returning a :class:`ntkal.torch.FunctionalModel`.

* :func:`chgnet` — pretrained CHGNet (embedded default);
* :func:`sevennet` — SevenNet-0 and the other checkpoints the sevenn wheel ships (extra ``[sevenn]``);
* :func:`mace` — a MACE model file or module (extra ``[mace]``; no weights ship offline);
* :func:`toy` — a tiny float64 pair model for tests and examples.
"""

from __future__ import annotations

from ...errors import InvalidArgumentError
from ..functional import FunctionalModel
from .chgnet import CHGNET_READOUT, chgnet
from .mace import MACE_READOUT, mace
from .sevennet import SEVENNET_READOUT, SEVENNET_SHIPPED, sevennet
from .toy import toy

__all__ = ["CHGNET_READOUT", "MACE_READOUT", "MODELS", "SEVENNET_READOUT", "SEVENNET_SHIPPED", "chgnet", "load", "mace", "names", "sevennet", "toy"]

MODELS = {"chgnet": chgnet, "mace": mace, "sevennet": sevennet, "toy": toy}


def names() -> list:
    """Every name :func:`load` takes: the factories and each SevenNet checkpoint the wheel ships."""
    return sorted(MODELS) + sorted(SEVENNET_SHIPPED)


def load(name: str, **kwargs) -> FunctionalModel:
    """A model by name: ``"chgnet"``, ``"sevennet"`` (SevenNet-0), ``"toy"``, or a shipped SevenNet
    checkpoint (``"7net-0"``, ``"7net-0_22may2024"``, ``"7net-l3i5"``, ``"7net-mf-0"``; pass ``modal``
    for the multi-fidelity one)."""
    key = name.lower() if isinstance(name, str) else name
    if key in SEVENNET_SHIPPED:
        return sevennet(key, **kwargs)
    if key not in MODELS:
        raise InvalidArgumentError(f"ntkal.torch.models.load: model must be one of {names()}; got {name!r}")
    return MODELS[key](**kwargs)
