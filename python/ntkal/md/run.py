"""Langevin dynamics under a monitor, with a linear temperature ramp (what ``ntkal md`` runs)."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from .._validation import as_int, as_positive_float
from ..errors import InvalidArgumentError, fail
from ..progress import bar as progress_bar
from .monitor import UncertaintyHalt

__all__ = ["LangevinRun", "parse_temperature", "run_langevin"]


@dataclass
class LangevinRun:
    """What :func:`run_langevin` did.

    Attributes
    ----------
    steps : int
        MD steps completed.
    seconds : float
        Wall time of the dynamics, monitor included.
    halted : UncertaintyHalt or None
    stopped : InvalidArgumentError or None
        Why the dynamics stopped early when the model could not go on (e.g. an atom left without
        neighbours); the frames measured and collected until then stand.
    final_temperature : float
        Target temperature at the last step (K).
    """

    steps: int
    seconds: float
    halted: UncertaintyHalt | None
    final_temperature: float
    stopped: InvalidArgumentError | None = None


def parse_temperature(text: str, where: str = "ntkal md", arg: str = "--temperature") -> tuple[float, float]:
    """``"300"`` -> (300, 300); ``"300:1500"`` -> a ramp from 300 K to 1500 K."""
    parts = str(text).split(":")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(np.isfinite(v) and v > 0 for v in values):
        fail(where, f"{arg} must be T or T_START:T_END in kelvin, positive; got {text!r}")
    return values[0], values[-1]


def run_langevin(atoms, calculator, monitor, *, steps: int, temperature=(300.0, 300.0), timestep_fs: float = 1.0,
                 friction_per_fs: float = 0.02, seed: int = 0, progress: bool = True) -> LangevinRun:
    """Langevin MD of ``atoms`` driven by ``calculator``, measured by ``monitor`` every step it is called.

    Momenta start from Maxwell-Boltzmann at the first temperature; the thermostat's target moves linearly
    to the second over the run. An :class:`UncertaintyHalt` stops the run and is returned, not raised.

    Parameters
    ----------
    atoms : ase.Atoms
        Start structure (moved in place).
    calculator : ase Calculator
        E.g. :class:`ntkal.torch.calculator.ModelCalculator`.
    monitor : Monitor
        Attached with interval 1; its ``every`` decides which steps it measures.
    steps : int
    temperature : (float, float)
        Start and end target temperature (K).
    timestep_fs, friction_per_fs : float
    seed : int
        Seed of the initial momenta and the thermostat's noise.
    progress : bool
        tqdm bar on stderr.
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    where = "run_langevin"
    steps = as_int(steps, where, "steps", low=1)
    t_start, t_end = (as_positive_float(t, where, "temperature") for t in temperature)
    timestep_fs = as_positive_float(timestep_fs, where, "timestep_fs")
    friction_per_fs = as_positive_float(friction_per_fs, where, "friction_per_fs")
    rng = np.random.default_rng(as_int(seed, where, "seed", low=0))
    atoms.calc = calculator
    thermalize_momenta(atoms, temperature_K=t_start, rng=rng)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ASE's notice about the fixcm default
        dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=t_start, friction=friction_per_fs / units.fs,
                       fixcm=False, rng=rng)
    target = {"T": t_start}

    def ramp():
        target["T"] = t_start + (t_end - t_start) * min(dyn.nsteps / steps, 1.0)
        dyn.set_temperature(temperature_K=target["T"])

    bar = progress_bar(steps, progress, "md", unit="step")
    dyn.attach(ramp, interval=1)
    monitor.attach(dyn, interval=1)
    dyn.attach(lambda: bar.update(1) if dyn.nsteps > 0 else None, interval=1)
    halted, stopped, t0 = None, None, time.perf_counter()
    try:
        dyn.run(steps)
    except UncertaintyHalt as exc:
        halted = exc
    except InvalidArgumentError as exc:  # the model cannot evaluate the structure the dynamics reached
        stopped = exc
    finally:
        bar.close()
    return LangevinRun(int(dyn.nsteps), time.perf_counter() - t0, halted, float(target["T"]), stopped)
