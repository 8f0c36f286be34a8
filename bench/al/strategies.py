"""Acquisition strategies: each picks ``n`` unlabelled pool structures per round.

Interface: ``strategy.select(state, n) -> indices into the dataset pool``; the loop times the
call, so everything a strategy needs to decide (training committee members, predicting the
pool, building the posterior) is charged to its acquisition seconds. Kernel strategies get
precomputed pool features (see ``features.py``); their one-time featurisation cost is
charged to their first acquisition.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import model as M

STRATEGIES = ("random", "committee", "max_force", "embedding", "energy_ntk", "force_ntk",
              "joint_ntk", "joint_ntk_greedy", "acq_embedding", "acq_energy", "acq_force", "acq_joint",
              "acq_joint_loss", "acq_joint_current")
KERNEL_OF = {"embedding": "embedding", "energy_ntk": "energy", "force_ntk": "force",
             "joint_ntk": "joint", "joint_ntk_greedy": "joint", "acq_embedding": "embedding",
             "acq_energy": "energy", "acq_force": "force", "acq_joint": "joint", "acq_joint_loss": "joint_loss"}
# acq_*: the product pipeline itself, ntkal.acquire with its defaults, on the precomputed pool features;
# acq_joint_current featurizes with each round's fine-tuned model instead, so it has no precomputed kernel
PRODUCT_STRATEGIES = tuple(name for name in STRATEGIES if name.startswith("acq_"))
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
    """Posterior variance on fixed pool features: PV shortlist + LCMD, or greedy PV.

    Parameters
    ----------
    name : str
    features : ntkal.Blocks
        One block per dataset-pool structure.
    feature_seconds : float
        Measured cost of computing ``features``; charged to the first selection.
    method : {"lcmd", "greedy_pv"}
    noise_var : float
        sigma^2 of the posterior (relative to the mean training row norm: scale=True).
    shortlist_factor : int
        Shortlist size = shortlist_factor * n for LCMD.
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
        each stratum against the whole training set. Measured reason: unstratified, every NTK
        variant spent 98-100 % of its labels on molecules (62 % of the pool).
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

    def _take(self, indices):
        import ntkal

        blocks = self.features.take(indices)
        if self.energy_weight != 1.0:
            rows = blocks.rows.copy()
            rows[blocks.offsets[:-1]] *= self.energy_weight
            blocks = ntkal.Blocks(rows, blocks.offsets)
        if not self.normalize:
            return blocks
        sq = np.add.reduceat((blocks.rows.astype(np.float64) ** 2).sum(axis=1), blocks.offsets[:-1])
        scale = 1.0 / np.sqrt(np.maximum(sq / blocks.sizes, 1e-30))
        return ntkal.Blocks((blocks.rows * np.repeat(scale, blocks.sizes)[:, None]).astype(np.float32),
                            blocks.offsets)

    def select(self, state: RoundState, n: int) -> np.ndarray:
        import ntkal

        train = self._take(state.labelled)
        post = ntkal.Posterior(train.dim, noise_var=self.noise_var, scale=True).add(train)
        if not self.stratify:
            return self._pick(state.candidates, train, post, n, state.seed)
        return np.concatenate([self._pick(members, train, post.copy(), quota, state.seed)
                               for members, quota in composition_strata(state.candidates, state.graphs, n)
                               if quota > 0])

    def _pick(self, candidates, train, post, n, seed):
        import ntkal

        cand = self._take(candidates)
        if self.method == "greedy_pv":
            picked, _ = ntkal.select(cand, None, n, method="greedy_pv", posterior=post)
            return candidates[picked]
        k = min(len(candidates), max(n, self.shortlist_factor * n))
        short, _ = ntkal.shortlist(cand, None, post, k, intensive=self.intensive)
        picked, _ = ntkal.select(cand.take(short), None, n, method="lcmd", train_rows=train, seed=seed)
        return candidates[short[picked]]

    def charge_once(self) -> float:
        """Featurisation seconds not yet charged (returned once, then 0)."""
        seconds, self.pending_seconds = self.pending_seconds, 0.0
        return seconds


def composition_strata(candidates, graphs, n: int):
    """[(candidate indices, quota)] per element set; quotas sum to ``n`` (largest remainder)."""
    keys = [tuple(np.unique(graphs[i].atomic_number.numpy()).tolist()) for i in candidates]
    groups = {}
    for i, key in zip(candidates, keys):
        groups.setdefault(key, []).append(i)
    order = sorted(groups)  # deterministic
    share = np.array([n * len(groups[k]) / len(candidates) for k in order])
    quota = np.minimum(np.floor(share).astype(int), [len(groups[k]) for k in order])
    # the remaining picks go to the largest fractional parts (ties: the larger stratum, then key order)
    for j in sorted(range(len(order)), key=lambda j: (-(share[j] - quota[j]), -len(groups[order[j]]), j)):
        if quota.sum() == n:
            break
        if quota[j] < len(groups[order[j]]):
            quota[j] += 1
    return [(np.array(groups[k]), int(q)) for k, q in zip(order, quota)]


class LookupFeaturizer:
    """A featurizer for ntkal.acquire that looks the precomputed pool features up by structure digest, and
    predicts forces with the pretrained model (the model the features were computed with)."""

    def __init__(self, name, features, frames):
        from ntkal.structures import structure_digest

        self.features = features
        self.name = name
        self.index = {structure_digest(f): i for i, f in enumerate(frames)}
        self.frames = frames
        self._forces = None

    def fingerprint(self) -> str:
        return f"lookup-{self.name}"

    def _position(self, atoms) -> int:
        from ntkal.structures import structure_digest

        return self.index[structure_digest(atoms)]

    def __call__(self, structures):
        return self.features.take([self._position(a) for a in structures])

    def predict_forces(self, atoms):
        if self._forces is None:  # the pretrained model's forces on the whole dataset pool, once
            net = M.pretrained()
            _, forces = M.predict(net, M.to_graphs(net, self.frames))
            self._forces = forces
        return np.asarray(self._forces[self._position(atoms)], dtype=np.float64)


class AcquireStrategy:
    """ntkal.acquire on the candidates, with the labelled structures (labels attached) as training set."""

    def __init__(self, name, features, feature_seconds, **acquire_kwargs):
        self.name = name
        self.features = features
        self.pending_seconds = float(feature_seconds)
        self.kwargs = acquire_kwargs
        self._featurizer = None

    def select(self, state: RoundState, n: int) -> np.ndarray:
        if self._featurizer is None:
            self._featurizer = LookupFeaturizer(self.name, self.features, state.frames)
        return _acquire_picks(self._featurizer, state, n, self.kwargs)

    def charge_once(self) -> float:
        seconds, self.pending_seconds = self.pending_seconds, 0.0
        return seconds


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


def make(name: str, features=None, *, committee_size=4, noise_var=1e-2, shortlist_factor=4,
         intensive=True, normalize=False, energy_weight=1.0, stratify=False, acquire=None,
         feature=None):
    """Strategy ``name``; kernel strategies need ``features`` = (Blocks, seconds); ``acq_joint_current``
    needs ``feature`` = {"dim", "force_rows", "feature_seed"} (the pretrained features' settings)."""
    if name == "acq_joint_current":
        return CurrentModelStrategy(name, **feature, **(acquire or {}))
    if name == "random":
        return RandomStrategy()
    if name == "max_force":
        return MaxForceStrategy()
    if name == "committee":
        return CommitteeStrategy(committee_size)
    if name.startswith("acq_"):
        blocks, seconds = features
        return AcquireStrategy(name, blocks, seconds, **(acquire or {}))
    if name in KERNEL_OF:
        if energy_weight != 1.0 and KERNEL_OF[name] != "joint":
            raise ValueError(f"strategies.make: energy_weight applies to joint-kernel strategies, not {name!r}")
        blocks, seconds = features
        method = "greedy_pv" if name.endswith("_greedy") else "lcmd"
        return KernelStrategy(name, blocks, seconds, method=method, noise_var=noise_var,
                              shortlist_factor=shortlist_factor, intensive=intensive,
                              normalize=normalize, energy_weight=energy_weight, stratify=stratify)
    raise ValueError(f"strategies.make: unknown strategy {name!r}; expected one of {STRATEGIES}")
