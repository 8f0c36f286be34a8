"""Uncertainty during molecular dynamics: an ASE observer that measures, collects and halts.

* :class:`Monitor` — ``dyn.attach(monitor, interval, atoms)`` (or ``monitor.attach(dyn)``); each
  measured frame gets a per-atom readout-posterior value and a structure-level joint-NTK value, in
  eV/A when the training structures carry forces (calibrated on the model's residuals), else in a
  relative unit (:mod:`ntkal.md.signals`).
* :class:`UncertaintyHalt` — raised from ``dyn.run`` when a frame reaches ``halt``; names step, value, atom.
* :func:`run_langevin` — Langevin MD with a temperature ramp under a monitor (``ntkal md``).

The model as an ASE calculator is :class:`ntkal.torch.calculator.ModelCalculator`.
"""
from .monitor import Monitor, UncertaintyHalt
from .run import LangevinRun, parse_temperature, run_langevin
from .signals import UNIT_FORCE, UNIT_RELATIVE

__all__ = ["LangevinRun", "Monitor", "UNIT_FORCE", "UNIT_RELATIVE", "UncertaintyHalt", "parse_temperature",
           "run_langevin"]
