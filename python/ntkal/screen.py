"""``screen()``: everything a selection needs, up to the per-stratum shortlists.

Check every structure, featurize the training set and build the posterior (optionally calibrated on
labelled residuals), featurize and score the pool, and keep the best candidates per stratum with their
feature rows (:mod:`ntkal.screening` runs these phases). The input is a featurizer with structures, or a
feature store that holds the pool already (:mod:`ntkal.store_screen`). :func:`ntkal.acquire` is a screen,
quotas per stratum and one :func:`ntkal.select` per stratum; ``ntkal score`` is a screen.
"""
from __future__ import annotations

from .feature_store import is_store
from .screen_result import Screen
from .screening import ScreenOptions, Screening
from .store_screen import screen_store

__all__ = ["Screen", "screen"]


def screen(featurizer_or_store, train, pool, *, shortlist: int = 100, noise_var: float = 1e-3, chunk_size: int = 64,
           cache=None, progress: bool = True, intensive: bool = False, scale: bool = False, precision: str = "float32",
           strata: str = "composition", calibrate: str = "off", target=None, target_gram: bool = False,
           score_pool: bool = True, client=None, workers: int = 1, on_features=None,
           on_error: str = "stop") -> Screen:
    """Score a pool against a training set: PV of every structure and the best candidates per stratum.

    Parameters
    ----------
    featurizer_or_store : callable, or FeatureStore / path of one
        ``featurizer(list of ase.Atoms) -> ntkal.Blocks`` (e.g. :class:`ntkal.torch.Featurizer`, or
        :class:`ntkal.features.Precomputed` for features computed before); ``fingerprint()`` keys the feature
        store, ``check(atoms)`` and ``predict_forces(atoms)`` are used when present. Or a feature store that
        holds the pool's features already: ``pool`` and ``train`` then name stored labels.
    train : list of ase.Atoms, path, or None
        Labelled structures (extxyz / ASE db path or list); None or empty: the prior. With a store: None,
        a stored label, training features (Blocks) or a :class:`Posterior` conditioned already.
    pool : list of ase.Atoms or path (a stored label with a store)
        Candidate structures, streamed in chunks of ``chunk_size``.
    shortlist : int
        Best candidates kept per stratum, ``k >= 1`` (at most the pool size).
    noise_var, intensive, scale, precision
        Passed to :class:`ntkal.Posterior` / :meth:`ntkal.Posterior.variance`.
    chunk_size, cache, progress, client, workers, on_features, on_error
        As in :func:`ntkal.acquire`.
    strata : {"composition", "none"}
        Shortlists per element set, or one for the whole pool.
    calibrate : {"off", "on", "auto"}
        Scale PV per composition stratum by the model's residuals on the labelled training forces
        (see :func:`ntkal.acquire`).
    target : list of ase.Atoms or path, optional
        Structures whose Gram to accumulate (``Screen.target_gram``, variance reduction).
    target_gram : bool
        Accumulate the Gram of ``target`` (default: of the pool) into ``Screen.target_gram``.
    score_pool : bool
        False: check everything and build the posterior, but leave the pool unfeaturized.

    Returns
    -------
    Screen
    """
    if is_store(featurizer_or_store):
        return screen_store(featurizer_or_store, train, pool, k=shortlist, noise_var=noise_var, progress=progress,
                            intensive=intensive, scale=scale, precision=precision, workers=workers, client=client)
    opts = ScreenOptions.checked("screen", k=shortlist, noise_var=noise_var, chunk_size=chunk_size, cache=cache,
                                 progress=progress, intensive=intensive, scale=scale, precision=precision,
                                 strata=strata, calibrate=calibrate, target_gram=target_gram or target is not None,
                                 score_pool=score_pool, on_error=on_error, workers=workers, client=client,
                                 on_features=on_features)
    with Screening(featurizer_or_store, train, pool, opts, target=target, where="screen") as run:
        return run.screen()


