"""The MD monitor: an ASE observer that measures the model's uncertainty on the running structure,
collects uncertain frames and halts the dynamics when the model is out of its depth."""
from __future__ import annotations

import numpy as np

from .._validation import as_int, as_positive_float
from ..errors import fail
from ..options import CALIBRATE, MD_SIGNALS, choice
from .collect import FrameAppender
from .signals import (UNIT_FORCE, UNIT_RELATIVE, AtomSignal, StructureSignal, has_atom_features,
                      training_residual_sq)
from .training import load_training

__all__ = ["Monitor", "UncertaintyHalt"]


class UncertaintyHalt(RuntimeError):
    """Raised by :class:`Monitor` from inside ``dyn.run`` when a frame's uncertainty reaches ``halt``.

    Attributes
    ----------
    step : int
        MD step of the frame (``dyn.nsteps`` when the monitor was attached with :meth:`Monitor.attach`,
        else the index of the monitor call).
    value : float
        The frame's uncertainty (the monitor's unit).
    atom : int or None
        Index of the most uncertain atom (None with ``signal="structure"`` and no per-atom signal).
    symbol : str or None
        Its element.
    threshold : float
    unit : str
    atoms : ase.Atoms
        A copy of the frame, with the monitor's keys.
    """

    def __init__(self, step, value, atom, symbol, threshold, unit, atoms):
        self.step, self.value, self.atom, self.symbol = step, value, atom, symbol
        self.threshold, self.unit, self.atoms = threshold, unit, atoms
        where = "" if atom is None else f", most uncertain atom {atom} ({symbol})"
        super().__init__(f"uncertainty {value:.4g} {unit} at step {step}{where} reached halt={threshold:g} {unit}")


def _threshold(value, where, name):
    return None if value is None else as_positive_float(value, where, name)


class Monitor:
    """Uncertainty of a model along a trajectory, as an ASE observer.

    ``monitor(atoms)`` featurizes the structure, returns its uncertainty (a float; None on the calls
    ``every`` skips) and writes it into the structure:

    * ``atoms.info["ntkal_uncertainty"]`` — **the frame's value**, the one the thresholds see: with
      ``signal="atom"`` the largest per-atom value (the most uncertain atom flags the frame), with
      ``signal="structure"`` the structure-level value;
    * ``atoms.arrays["ntkal_atom_uncertainty"]`` — per-atom values from the cheap last-layer (readout)
      posterior: each atom's predicted force-error magnitude ``|F_i - F_i^ref|`` (eV/A);
    * ``atoms.info["ntkal_structure_uncertainty"]`` — the structure-level joint energy-force NTK PV of the
      frame (all parameters), as its predicted RMS per-atom force error (eV/A);
    * ``atoms.info["ntkal_atom"]`` (index of the most uncertain atom), ``["ntkal_step"]``, ``["ntkal_unit"]``.

    Units (``unit``): ``"eV/A"`` when the training structures carry forces — each posterior's variance
    is scaled by the model's own residuals on the training forces (:mod:`ntkal.calibration`: squared
    error = scale x leave-one-out variance, per composition), so the numbers are predicted force errors
    and thresholds such as DP-GEN's 0.05 / 0.15 eV/A read as they do there. Without forces
    ``"relative"``: sqrt(variance / mean leave-one-out variance of the training structures), 1 meaning
    "as uncertain as a typical training structure"; see :mod:`ntkal.md.signals`.

    Parameters
    ----------
    featurizer : ntkal.torch.Featurizer or callable
        Structure features (joint kernel by default); the per-atom signal reads the model's readout
        features through ``featurizer.base_model.embedding``, calibration its ``predict_forces``.
    train : list of ase.Atoms, extxyz / ASE db path, or a feature store (``FeatureStore`` or its directory)
        The training structures; the posteriors are built from them once, here. A feature store (label
        ``train`` or ``structures``, written by this featurizer) gives the structure signal only, in
        relative units, not normalised per atom (it records no atom counts).
    every : int
        Measure on every ``every``-th call (the first call measures); the others return None at once.
    collect : float, optional
        Frames whose value is >= ``collect`` are kept: appended to ``out``, or to :attr:`frames`
        without ``out``.
    halt : float, optional
        A frame whose value is >= ``halt`` raises :class:`UncertaintyHalt` (after it is collected),
        which stops ``dyn.run``.
    out : str or os.PathLike, optional
        Extended XYZ file the collected frames are appended to, each with the keys above, one frame per
        write, flushed (a crash leaves a valid file): ready for ``ntkal select --pool OUT``.
    calibrate : {"auto", "on", "off"}
        ``auto``: eV/A when every training structure has forces, else relative; ``on``: eV/A (training
        forces required); ``off``: relative.
    signal : {"atom", "structure"} or None
        What the frame's value (and the thresholds) use; None: ``"atom"`` when the model has per-atom
        readout features, else ``"structure"``.
    structure : bool
        Compute the structure-level joint-NTK value every measured frame (the costly part: 1 + k
        gradient passes). Needed for ``signal="structure"``.
    noise_var : float
        Noise variance of both posteriors (the structure one in the featurizer's units, the per-atom one
        relative to the features' mean square).
    progress : bool
        Progress bar while the training set is featurized.
    """

    def __init__(self, featurizer, train, *, every: int = 1, collect=None, halt=None, out=None,
                 calibrate: str = "auto", signal: str | None = None, structure: bool = True,
                 noise_var: float = 1e-3, progress: bool = False):
        where = "Monitor"
        if not callable(featurizer):
            fail(where, f"featurizer must be callable (list of Atoms -> Blocks); got "
                        f"{type(featurizer).__name__}")
        self.every = as_int(every, where, "every", low=1)
        self.collect = _threshold(collect, where, "collect")
        self.halt = _threshold(halt, where, "halt")
        if self.collect is not None and self.halt is not None and self.halt < self.collect:
            fail(where, f"halt must be >= collect (frames are collected, then the run "
                        f"halts); got collect={self.collect:g}, halt={self.halt:g}")
        if out is not None and self.collect is None:
            fail(where, f"out needs collect, the threshold above which frames are written "
                        f"to it; got out={str(out)!r} and collect=None")
        choice(calibrate, CALIBRATE, where, "calibrate")
        if signal is None:
            signal = "atom" if has_atom_features(featurizer) else "structure"
        choice(signal, MD_SIGNALS, where, "signal")
        if signal == "atom" and not has_atom_features(featurizer):
            fail(where, "signal='atom' needs a model with per-atom readout features "
                        "(embedding_fn); this featurizer's model has none: use signal='structure'")
        if signal == "structure" and not structure:
            fail(where, "signal='structure' needs structure=True")
        if calibrate == "on" and not hasattr(featurizer, "predict_forces"):
            fail(where, "calibrate='on' needs a featurizer with predict_forces(atoms)")
        noise_var = as_positive_float(noise_var, where, "noise_var")
        self._appender = None if out is None else FrameAppender(out, where=where, arg="out")
        self.out = None if out is None else str(out)
        self.signal = signal
        self.featurizer = featurizer

        want = "off" if calibrate == "off" or not hasattr(featurizer, "predict_forces") else calibrate
        self.training = load_training(featurizer, train, where=where, want_forces=want, progress=progress)
        residual_sq = training_residual_sq(featurizer, self.training) if want != "off" else None
        self.unit = UNIT_FORCE if residual_sq is not None else UNIT_RELATIVE
        self.structure_signal = StructureSignal(featurizer, self.training, residual_sq, noise_var) if structure \
            else None
        self.atom_signal = AtomSignal(featurizer, self.training, residual_sq, noise_var) \
            if has_atom_features(featurizer) and self.training.structures is not None else None
        if signal == "atom" and self.atom_signal is None:
            fail(where, f"signal='atom' needs training structures (per-atom features); "
                        f"train {self.training.source} is a feature store")
        self.dynamics = None
        self.calls = 0
        self.records: list = []  # one dict per measured frame
        self.frames: list = []  # collected frames, without out
        self.halted: UncertaintyHalt | None = None

    # ---- ASE observer -------------------------------------------------------------------
    def attach(self, dynamics, interval: int = 1) -> "Monitor":
        """``dynamics.attach(self, interval, dynamics.atoms)``, remembering ``dynamics`` so that steps are
        its ``nsteps``."""
        self.dynamics = dynamics
        dynamics.attach(self, interval=as_int(interval, "Monitor.attach", "interval", low=1), atoms=dynamics.atoms)
        return self

    def __call__(self, atoms=None):
        """Measure ``atoms`` (default: the attached dynamics' atoms) on every ``every``-th call.

        Returns
        -------
        float or None
            The frame's uncertainty in :attr:`unit`; None when this call is skipped.

        Raises
        ------
        UncertaintyHalt
            When the value reaches ``halt``.
        """
        self.calls += 1
        if (self.calls - 1) % self.every:
            return None
        if atoms is None:
            if self.dynamics is None:
                fail("Monitor", "call it with atoms, or attach it with monitor.attach(dyn)")
            atoms = self.dynamics.atoms
        self._check_elements(atoms)
        step = int(self.dynamics.nsteps) if self.dynamics is not None else self.calls - 1
        per_atom = self.atom_signal(atoms) if self.atom_signal is not None else None
        whole = self.structure_signal(atoms) if self.structure_signal is not None else None
        atom = int(np.argmax(per_atom)) if per_atom is not None else None
        value = float(per_atom[atom]) if self.signal == "atom" else float(whole)
        self._annotate(atoms, step, value, whole, per_atom, atom)
        kept = self.collect is not None and value >= self.collect
        self.records.append({"step": step, "value": value, "structure": whole, "atom": atom, "collected": kept})
        if kept:
            self._keep(atoms)
        if self.halt is not None and value >= self.halt:
            frame = _plain_copy(atoms)
            symbol = None if atom is None else atoms.get_chemical_symbols()[atom]
            self.halted = UncertaintyHalt(step, value, atom, symbol, self.halt, self.unit, frame)
            raise self.halted
        return value

    def _check_elements(self, atoms) -> None:
        if self.training.elements is None:
            return
        missing = sorted(set(int(z) for z in np.unique(atoms.numbers)) - self.training.elements)
        if missing:
            from ase.data import chemical_symbols

            names = ", ".join(chemical_symbols[z] for z in missing)
            fail("Monitor", f"atoms contain {names}, which no training structure has "
                            f"(train {self.training.source}): the posterior knows nothing of "
                            f"{'it' if len(missing) == 1 else 'them'}; add labelled structures with "
                            f"{names} to the training set")

    def _annotate(self, atoms, step, value, whole, per_atom, atom) -> None:
        atoms.info["ntkal_uncertainty"] = value
        atoms.info["ntkal_step"] = step
        atoms.info["ntkal_unit"] = self.unit
        if whole is not None:
            atoms.info["ntkal_structure_uncertainty"] = float(whole)
        if per_atom is not None:
            atoms.info["ntkal_atom"] = atom
            atoms.arrays["ntkal_atom_uncertainty"] = np.asarray(per_atom, dtype=np.float64)

    def _keep(self, atoms) -> None:
        frame = _plain_copy(atoms)
        if self._appender is not None:
            self._appender.append(frame)
        else:
            self.frames.append(frame)

    # ---- reading the run --------------------------------------------------------------------
    @property
    def n_collected(self) -> int:
        """Frames collected in this run."""
        return sum(1 for r in self.records if r["collected"])

    @property
    def out_frames(self) -> int:
        """Frames in ``out`` now (those it held before this monitor and those collected since); 0 without out."""
        return 0 if self._appender is None else self._appender.existing + self._appender.written

    def summary(self) -> str:
        """A few lines: frames measured, the largest value, frames collected and where, the halt."""
        if not self.records:
            return f"ntkal monitor: no frame measured yet (unit {self.unit}, signal {self.signal})"
        values = np.array([r["value"] for r in self.records])
        top = self.records[int(np.argmax(values))]
        where = f", atom {top['atom']}" if top["atom"] is not None else ""
        lines = [f"ntkal monitor: {len(self.records)} frames measured (every {self.every} calls), signal "
                 f"{self.signal}, unit {self.unit}",
                 f"  uncertainty: median {np.median(values):.4g}, max {values.max():.4g} at step {top['step']}{where}"]
        if self.collect is not None:
            steps = [r["step"] for r in self.records if r["collected"]]
            dest = f" -> {self.out} (now {self.out_frames} frames)" \
                if self._appender is not None else " (monitor.frames)"
            first = f", first at step {steps[0]}" if steps else ""
            lines.append(f"  collected {len(steps)} frames >= {self.collect:g} {self.unit}{first}{dest}")
        if self.halted is not None:
            lines.append(f"  halted: {self.halted}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        model = getattr(getattr(self.featurizer, "model", None), "name", type(self.featurizer).__name__)
        return (f"Monitor(model={model!r}, train={len(self.training)} structures, unit={self.unit!r}, "
                f"signal={self.signal!r}, every={self.every}, collect={self.collect}, halt={self.halt}, "
                f"out={self.out!r}, measured={len(self.records)}, collected={self.n_collected})")


def _plain_copy(atoms):
    """The frame without its calculator (a collected frame carries no model forces that look like labels)."""
    frame = atoms.copy()
    frame.calc = None
    return frame
