"""Acquisition strategies: each picks ``n`` unlabelled pool structures per round.

Interface: ``strategy.select(state, n) -> indices into the dataset pool``; the loop times the
call, so everything a strategy needs to decide (training committee members, predicting the
pool, building the posterior) is charged to its acquisition seconds. Kernel strategies get
precomputed pool features (see ``features.py``); their one-time featurisation cost is
charged to their first acquisition. Every kernel strategy selects through the product,
``ntkal.acquire`` on the features looked up (``ntkal.features.Precomputed``): its strata,
quotas, shortlists and selection methods. :data:`REGISTRY` lists the strategies, one line each.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import model as M

ACQUIRE_KEYS = ("strategy", "strata", "calibrate", "noise_var", "scale", "intensive", "shortlist")


@dataclass
class RoundState:
    """What a strategy may look at when it selects."""

    seed: int
    round: int
    candidates: np.ndarray  # unlabelled dataset-pool indices it may pick from
    labelled: np.ndarray  # dataset-pool indices already labelled
    model: object  # the current fine-tuned CHGNet
    graphs: list  # crystal graphs of the dataset pool
    labels: M.Labels  # pool labels: only the labelled ones may be read (committee training)
    finetune_config: M.FinetuneConfig
    frames: list = None  # ase.Atoms of the dataset pool, labels attached (the product pipeline reads them)


class RandomStrategy:
    name = "random"

    def select(self, state: RoundState, n: int) -> np.ndarray:
        rng = np.random.default_rng([state.seed, state.round, 7])
        return rng.choice(state.candidates, size=n, replace=False)


class MaxForceStrategy:
    """Highest predicted max |F| of the current model: no kernel, no committee."""

    name = "max_force"

    def select(self, state: RoundState, n: int) -> np.ndarray:
        _, forces = M.predict(state.model, [state.graphs[i] for i in state.candidates])
        score = np.array([np.linalg.norm(f, axis=1).max() for f in forces])
        return state.candidates[np.argsort(-score, kind="stable")[:n]]


class CommitteeStrategy:
    """Query by committee: K fine-tuned models (the current model + K-1 with other seeds).

    Score = force variance across members, averaged over the structure's force components.
    Training the K-1 extra members and the K pool predictions are acquisition cost.
    """

    name = "committee"

    def __init__(self, size: int = 4):
        self.size = size

    def select(self, state: RoundState, n: int) -> np.ndarray:
        members = [state.model]
        for j in range(1, self.size):
            member, _ = M.finetune(state.graphs, state.labels, state.labelled, state.finetune_config,
                                   seed=1000 * (state.seed + 1) + 100 * state.round + j)
            members.append(member)
        cand_graphs = [state.graphs[i] for i in state.candidates]
        preds = [M.predict(m, cand_graphs)[1] for m in members]  # K lists of (N_i, 3)
        score = np.array([np.var(np.stack([p[i] for p in preds]), axis=0).mean()
                          for i in range(len(state.candidates))])
        return state.candidates[np.argsort(-score, kind="stable")[:n]]


class KernelStrategy:
    """The product's pipeline (:func:`ntkal.acquire`) on fixed pool features: a PV shortlist then LCMD with the
    training structures as centres, or greedy PV over every candidate, per composition stratum or not.

    The features are looked up, not computed (:class:`ntkal.features.Precomputed`); the settings below are the
    study's knobs on top of the product's defaults.

    Parameters
    ----------
    name : str
    features : PoolFeatures
        One block per featurized dataset-pool structure.
    feature_seconds : float
        Measured cost of computing ``features``; charged to the first selection.
    method : {"lcmd", "greedy_pv"}
    noise_var : float
        sigma^2 of the posterior (relative to the mean training row norm: scale=True).
    shortlist_factor : int
        LCMD: shortlist size = shortlist_factor * n (split over strata in proportion to their candidates).
    intensive : bool
        Rank by PV per row (per force component) so structure size alone does not rank.
    normalize : bool
        Scale every structure's block to unit mean squared row norm first, so PV measures
        how new a structure's directions are, not how large its gradients are.
    energy_weight : float
        Joint kernel only: multiply each structure's energy row (its first row) by this,
        on top of the weight the features were computed with.
    stratify : bool
        Split the batch over composition strata (the set of elements of a structure, known
        before labelling) in proportion to their share of the candidates, and select within
        each stratum against the whole training set (``ntkal.acquire(strata="composition")``). Measured
        reason: unstratified, every NTK variant spent 98-100 % of its labels on molecules (62 % of the pool).
    """

    def __init__(self, name, features, feature_seconds, *, method="lcmd", noise_var=1e-2,
                 shortlist_factor=4, intensive=True, normalize=False, energy_weight=1.0,
                 stratify=False):
        self.name = name
        self.features = features
        self.pending_seconds = float(feature_seconds)
        self.method = method
        self.noise_var = noise_var
        self.shortlist_factor = shortlist_factor
        self.intensive = intensive
        self.normalize = normalize
        self.energy_weight = energy_weight
        self.stratify = stratify
        self._lookup = None

    def _transformed(self):
        """The features with the study's transforms (energy-row weight, normalisation) applied."""
        import ntkal

        blocks = self.features.blocks
        if self.energy_weight != 1.0:
            rows = blocks.rows.copy()
            rows[blocks.offsets[:-1][blocks.sizes > 0]] *= self.energy_weight
            blocks = ntkal.Blocks(rows, blocks.offsets)
        if not self.normalize:
            return blocks
        sq = np.add.reduceat((blocks.rows.astype(np.float64) ** 2).sum(axis=1), blocks.offsets[:-1])
        scale = 1.0 / np.sqrt(np.maximum(sq / blocks.sizes, 1e-30))
        return ntkal.Blocks((blocks.rows * np.repeat(scale, blocks.sizes)[:, None]).astype(np.float32),
                            blocks.offsets)

    def select(self, state: RoundState, n: int) -> np.ndarray:
        from ntkal.features import Precomputed

        if self._lookup is None:
            self._lookup = Precomputed(self._transformed(), [state.frames[i] for i in self.features.index],
                                       name=f"study-{self.name}")
        k = len(state.candidates) if self.method == "greedy_pv" else \
            min(len(state.candidates), max(n, self.shortlist_factor * n))
        return _acquire_picks(self._lookup, state, n, {
            "strategy": self.method, "shortlist": k, "noise_var": self.noise_var, "scale": True,
            "intensive": self.intensive, "strata": "composition" if self.stratify else "none"})

    def charge_once(self) -> float:
        """Featurisation seconds not yet charged (returned once, then 0)."""
        seconds, self.pending_seconds = self.pending_seconds, 0.0
        return seconds


class AcquireStrategy(KernelStrategy):
    """ntkal.acquire with its own defaults (or ``acquire_kwargs``) on the candidates, the labelled structures
    (labels attached) as training set, the precomputed pool features looked up, and the pretrained model's
    forces for calibration."""

    def __init__(self, name, features, feature_seconds, **acquire_kwargs):
        super().__init__(name, features, feature_seconds)
        self.kwargs = acquire_kwargs

    def select(self, state: RoundState, n: int) -> np.ndarray:
        from ntkal.features import Precomputed

        if self._lookup is None:
            frames = [state.frames[i] for i in self.features.index]
            self._lookup = Precomputed(self.features.blocks, frames, name=f"study-{self.name}",
                                       predict_forces=_PretrainedForces(frames))
        return _acquire_picks(self._lookup, state, n, self.kwargs)


class _PretrainedForces:
    """The pretrained model's forces on the featurized frames (the model the features come from), computed once."""

    def __init__(self, frames):
        from ntkal.structures import structure_digest

        self.frames = frames
        self.index = {structure_digest(f): i for i, f in enumerate(frames)}
        self._forces = None

    def __call__(self, atoms, checked: bool = False):
        from ntkal.structures import structure_digest

        if self._forces is None:
            net = M.pretrained()
            _, self._forces = M.predict(net, M.to_graphs(net, self.frames))
        return np.asarray(self._forces[self.index[structure_digest(atoms)]], dtype=np.float64)


class CurrentModelStrategy:
    """ntkal.acquire with the joint kernel of the round's fine-tuned model, as a user runs it: the model is
    saved as a CHGNet checkpoint file and loaded with ``ntkal.torch.models.chgnet(checkpoint=...)``; the
    training set and the candidates are featurized again every round (no store: the model changed), and
    all of it is acquisition cost."""

    def __init__(self, name, *, dim, force_rows, feature_seed, **acquire_kwargs):
        self.name = name
        self.dim, self.force_rows, self.feature_seed = dim, force_rows, feature_seed
        self.kwargs = acquire_kwargs

    def select(self, state: RoundState, n: int) -> np.ndarray:
        import tempfile

        import torch

        from ntkal.torch import Featurizer, models

        with tempfile.TemporaryDirectory(prefix="al-current-") as tmp:
            path = f"{tmp}/round{state.round}.pth.tar"
            torch.save({"model": state.model.as_dict()}, path)
            featurizer = Featurizer(models.chgnet(checkpoint=path), kernel="joint", dim=self.dim,
                                    seed=self.feature_seed, force_rows=self.force_rows)
        return _acquire_picks(featurizer, state, n, self.kwargs)


def _acquire_picks(featurizer, state: RoundState, n: int, kwargs: dict) -> np.ndarray:
    """ntkal.acquire on the candidates, with the labelled structures (labels attached) as training set."""
    import ntkal

    train = [state.frames[i] for i in state.labelled]
    pool = [state.frames[i] for i in state.candidates]
    res = ntkal.acquire(featurizer, train, pool, n, seed=state.seed, progress=False, **kwargs)
    return state.candidates[res.indices]


def _kernel(method):
    def build(name, features, args):
        if args["energy_weight"] != 1.0 and KERNEL_OF[name] != "joint":
            raise ValueError(f"strategies.make: energy_weight applies to joint-kernel strategies, not {name!r}")
        blocks, seconds = features
        return KernelStrategy(name, blocks, seconds, method=method, noise_var=args["noise_var"],
                              shortlist_factor=args["shortlist_factor"], intensive=args["intensive"],
                              normalize=args["normalize"], energy_weight=args["energy_weight"],
                              stratify=args["stratify"])
    return build


def _product(name, features, args):
    blocks, seconds = features
    return AcquireStrategy(name, blocks, seconds, **(args["acquire"] or {}))


def _current_model(name, features, args):
    return CurrentModelStrategy(name, **args["feature"], **(args["acquire"] or {}))


# The study's strategies, one line each: name -> (the pool features it needs, or None; how to build it from
# (name, (features, seconds), the arguments of make)). acq_*: the product pipeline itself, ntkal.acquire with its
# defaults, on the precomputed pool features; acq_joint_current featurizes with each round's fine-tuned model.
REGISTRY = {
    "random": (None, lambda name, features, args: RandomStrategy()),
    "committee": (None, lambda name, features, args: CommitteeStrategy(args["committee_size"])),
    "max_force": (None, lambda name, features, args: MaxForceStrategy()),
    "embedding": ("embedding", _kernel("lcmd")),
    "energy_ntk": ("energy", _kernel("lcmd")),
    "force_ntk": ("force", _kernel("lcmd")),
    "joint_ntk": ("joint", _kernel("lcmd")),
    "joint_ntk_greedy": ("joint", _kernel("greedy_pv")),
    "acq_embedding": ("embedding", _product),
    "acq_energy": ("energy", _product),
    "acq_force": ("force", _product),
    "acq_joint": ("joint", _product),
    "acq_joint_loss": ("joint_loss", _product),
    "acq_joint_current": (None, _current_model),
}
STRATEGIES = tuple(REGISTRY)
KERNEL_OF = {name: kernel for name, (kernel, _) in REGISTRY.items() if kernel is not None}
PRODUCT_STRATEGIES = tuple(name for name in STRATEGIES if name.startswith("acq_"))


def make(name: str, features=None, *, committee_size=4, noise_var=1e-2, shortlist_factor=4,
         intensive=True, normalize=False, energy_weight=1.0, stratify=False, acquire=None,
         feature=None):
    """Strategy ``name``; kernel strategies need ``features`` = (PoolFeatures, seconds); ``acq_joint_current``
    needs ``feature`` = {"dim", "force_rows", "feature_seed"} (the pretrained features' settings)."""
    if name not in REGISTRY:
        raise ValueError(f"strategies.make: unknown strategy {name!r}; expected one of {STRATEGIES}")
    args = dict(committee_size=committee_size, noise_var=noise_var, shortlist_factor=shortlist_factor,
                intensive=intensive, normalize=normalize, energy_weight=energy_weight, stratify=stratify,
                acquire=acquire, feature=feature)
    return REGISTRY[name][1](name, features, args)
