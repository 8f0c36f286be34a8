"""Model adapters: one module per architecture, each returning a :class:`ntkal.torch.FunctionalModel`.

* :func:`chgnet` — pretrained CHGNet (embedded default);
* :func:`sevennet` — SevenNet-0 and the other checkpoints the sevenn wheel ships (extra ``[sevenn]``);
* :func:`mace` — a MACE model file or module (extra ``[mace]``; no weights ship offline);
* :func:`toy` — a tiny float64 pair model for tests and examples.

Each adapter module defines its factory and ``ADAPTER`` (:class:`._common.Adapter`: the load options it
takes); :data:`REGISTRY` lists them, one line each. :func:`load` calls a factory by name with its own
keywords; :func:`from_options` builds any model from the generic load options (the CLI's one call).
"""

from __future__ import annotations

import importlib

from ...errors import fail
from ..functional import FunctionalModel
from ._common import LOAD_OPTIONS, Adapter
from .chgnet import CHGNET_READOUT, chgnet
from .mace import MACE_READOUT, mace
from .sevennet import SEVENNET_READOUT, SEVENNET_SHIPPED, sevennet
from .toy import toy

__all__ = ["CHGNET_READOUT", "LOAD_OPTIONS", "MACE_READOUT", "MODELS", "REGISTRY", "SEVENNET_READOUT",
           "SEVENNET_SHIPPED", "adapter", "chgnet", "from_options", "load", "mace", "names", "sevennet", "toy"]

# model name -> module of its adapter (relative to this package, or an absolute module path); one line each
REGISTRY = {
    "chgnet": ".chgnet",
    "mace": ".mace",
    "sevennet": ".sevennet",
    "toy": ".toy",
}


def _adapters() -> dict:
    return {key: importlib.import_module(module, __name__).ADAPTER for key, module in REGISTRY.items()}


MODELS = {key: a.factory for key, a in _adapters().items()}  # name -> factory of the adapters shipped here


def names() -> list:
    """Every name :func:`load` takes: the registered models and the further names their adapters answer to."""
    adapters = _adapters()
    return sorted(adapters) + sorted(n for a in adapters.values() for n in a.names)


def adapter(name: str, where: str = "ntkal.torch.models.load", arg: str = "model") -> tuple[str, Adapter]:
    """(canonical name, Adapter) of a model name (case-insensitive)."""
    key = name.lower() if isinstance(name, str) else name
    for registered, a in _adapters().items():
        if key == registered or key in a.names:
            return key, a
    fail(where, f"{arg} must be one of {', '.join(names())}; got {name!r}")


def load(name: str, **kwargs) -> FunctionalModel:
    """A model by name: ``"chgnet"``, ``"sevennet"`` (SevenNet-0), ``"mace"``, ``"toy"``, or a shipped SevenNet
    checkpoint (``"7net-0"``, ``"7net-0_22may2024"``, ``"7net-l3i5"``, ``"7net-mf-0"``; pass ``modal``
    for the multi-fidelity one); ``kwargs`` go to its factory."""
    key, a = adapter(name)
    return a.factory(**a.names.get(key, {}), **kwargs)


def from_options(name: str, *, where: str = "ntkal.torch.models.from_options", arg: str = "model",
                 **options) -> FunctionalModel:
    """A model by name from the generic load options (:data:`LOAD_OPTIONS`: ``checkpoint``, ``modal``, ``device``,
    ``allow_unsafe_load``; a value meaning "not given" is ignored): an option the model does not take, or one it
    needs and lacks, is an InvalidArgumentError naming both (``arg``: how the caller spells the model argument,
    e.g. ``--model``)."""
    key, a = adapter(name, where, arg)
    return a.build(key, where, arg, **options)
