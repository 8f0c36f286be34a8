"""A NumPy model of the GPU's lazy greedy-PV selection (cuda/greedy_pv.cu, cuda/greedy_slots.cuh).

It follows the device's bookkeeping step for step -- activation of blocks in bound order in doubling
batches, per-slot (value, projected, stamp), the two pick stages, the check against the first
inactive bound, U = V M so that terms come from the raw rows -- with NumPy float64 arithmetic in
place of the kernels. Tests compare its picks with ``ntkal._reference.greedy_pv`` (plain greedy that
recomputes every PV after every pick), which checks the control logic of the device algorithm on a
machine without a GPU; the kernels' arithmetic is checked by the GPU tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ModelStats:
    activations: list = field(default_factory=list)  # active slot count after each activation
    refreshes: int = 0  # (slot, pick) terms computed in refreshes
    eager_terms: int = 0  # what updating every block after every pick would compute


def _ranks_before(va, ia, vb, ib) -> bool:
    if ib < 0:
        return ia >= 0
    if ia < 0:
        return False
    return va > vb or (va == vb and ia < ib)


class LazyGreedyModel:
    def __init__(self, rows, offsets, whiten, noise_var: float, first_activation: int = 4096):
        self.rows = np.asarray(rows, np.float32)
        self.d = self.rows.shape[1]
        n_rows = self.rows.shape[0]
        self.offsets = np.arange(n_rows + 1) if offsets is None else np.asarray(offsets, np.int64)
        self.n_blocks = len(self.offsets) - 1
        self.m = np.asarray(whiten, np.float64)
        self.noise_var = float(noise_var)
        self.first_activation = first_activation
        psi = self.rows.astype(np.float64) @ self.m.T  # only for the base norms (the device never stores it)
        row_norm = np.sum(psi * psi, axis=1)
        self.base = np.array([row_norm[a:b].sum() for a, b in zip(self.offsets[:-1], self.offsets[1:])])
        bound = self.noise_var * self.base
        self.order = np.lexsort((np.arange(self.n_blocks), -bound))  # stable: ties -> lower block
        self.sorted_bound = bound[self.order]
        nb = self.n_blocks
        self.value, self.projected = np.zeros(nb), np.zeros(nb)
        self.stamp, self.selected = np.zeros(nb, np.int64), np.zeros(nb, bool)
        self.v = np.zeros((0, self.d))
        self.u = np.zeros((0, self.d))
        self.pick_cols = [0]
        self.active, self.now = 0, 0
        self.stats = ModelStats()

    def _block_rows(self, b):
        return self.rows[self.offsets[b]:self.offsets[b + 1]].astype(np.float64)

    def _refresh(self, s: int) -> None:
        b = self.order[s]
        phi = self._block_rows(b)
        proj = self.projected[s]
        for k in range(self.stamp[s], self.now):
            coef = phi @ self.u[self.pick_cols[k]:self.pick_cols[k + 1]].T
            proj = proj + float(np.sum(coef * coef))
            self.stats.refreshes += 1
        self.projected[s], self.stamp[s] = proj, self.now
        self.value[s] = self.noise_var * (self.base[b] - proj)

    def _candidates(self, fresh_only: bool):
        best = (-np.inf, -1, -1)
        for s in range(self.active):
            if self.selected[s] or (fresh_only and self.stamp[s] != self.now):
                continue
            if _ranks_before(self.value[s], self.order[s], best[0], best[1]):
                best = (self.value[s], int(self.order[s]), s)
        return best

    def _try_pick(self):
        # stage 1: the best stored value, refreshed if stale, against the best fresh slot
        any_, fresh = self._candidates(False), self._candidates(True)
        if any_[2] >= 0 and self.stamp[any_[2]] != self.now:
            self._refresh(any_[2])
            any_ = (self.value[any_[2]], any_[1], any_[2])
            if _ranks_before(any_[0], any_[1], fresh[0], fresh[1]):
                fresh = any_
        f = fresh
        # stage 2: every stale slot whose stored value ranks before F is refreshed, then the best fresh one
        if f[2] >= 0:
            for s in range(self.active):
                if (not self.selected[s] and self.stamp[s] != self.now
                        and _ranks_before(self.value[s], self.order[s], f[0], f[1])):
                    self._refresh(s)
        best = self._candidates(True)
        ok = best[2] >= 0
        if ok and self.active < self.n_blocks:
            ok = _ranks_before(best[0], best[1], self.sorted_bound[self.active], self.order[self.active])
        return best, ok

    def _activate_more(self) -> None:
        assert self.active < self.n_blocks, "no pick with every block active"
        nxt = min(self.n_blocks, self.active + max(self.first_activation, self.active))
        self.value[self.active:nxt] = self.sorted_bound[self.active:nxt]
        self.projected[self.active:nxt] = 0.0
        self.stamp[self.active:nxt] = 0
        self.selected[self.active:nxt] = False
        self.active = nxt
        self.stats.activations.append(nxt)

    def _condition_on(self, b: int) -> None:
        phi = self._block_rows(b)
        psi = phi @ self.m.T
        cpsi = psi - (psi @ self.v.T) @ self.v
        r = np.linalg.cholesky(np.eye(len(phi)) + psi @ cpsi.T)
        vb = np.linalg.solve(r, cpsi)
        self.v = np.vstack([self.v, vb])
        self.u = np.vstack([self.u, vb @ self.m])
        self.now += 1
        self.pick_cols.append(len(self.v))

    def select(self, n: int):
        indices, scores = [], []
        while len(indices) < n:
            if self.active == 0:
                self._activate_more()
                continue
            (value, block, slot), ok = self._try_pick()
            if not ok:
                self._activate_more()
                continue
            indices.append(block)
            scores.append(value)
            self.selected[slot] = True
            self._check_bounds()
            if len(indices) < n and self.offsets[block + 1] > self.offsets[block]:
                self._condition_on(block)
                self.stats.eager_terms += self.n_blocks - len(indices)
        return np.asarray(indices, np.int64), np.asarray(scores), self.stats

    def _check_bounds(self) -> None:
        """Stale stored values must stay upper bounds of the current values (what laziness relies on)."""
        for s in range(self.active):
            if self.stamp[s] != self.now and not self.selected[s]:
                b = self.order[s]
                phi = self._block_rows(b)
                coef = phi @ self.u.T if len(self.u) else np.zeros((len(phi), 0))
                exact = self.noise_var * (self.base[b] - float(np.sum(coef * coef)))
                assert self.value[s] >= exact - 1e-12 * abs(self.base[b] * self.noise_var)
