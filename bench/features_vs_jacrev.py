"""Seconds per structure for NTK features with pretrained CHGNet: ntkal vs naive jacrev + dense projection.

(Throughput of the default batched featurizer against the loop and the model itself: bench/features.py.)

Both sides run in this one process, one torch thread, on the same structures:

* naive: ``torch.func.jacrev`` of (E, F) (or E, or (E, U F)) with respect to all parameters,
  the dense (m, P) Jacobian, then ``J @ S`` with the sketch materialised as a dense P x d
  float32 matrix (built once; its cost is reported separately and not charged per structure);
* ntkal: :class:`ntkal.torch.Featurizer` (reverse passes over one retained force graph,
  parameter-chunk streaming into the implicit sketch).

Accuracy: relative Frobenius error of the row kernel ``Phi Phi^T`` against the exact
``J J^T`` (sketch error, exact rows), and posterior variances of Si 8 cells against the exact
kernel-space PV computed from dense Jacobians (relative error and Spearman rank correlation,
which is what acquisition consumes).

Usage: python bench/features_vs_jacrev.py [--dim 512] [--repeats 3] [--k 4 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))


def structures():
    from ase import Atoms
    from ase.build import bulk, molecule

    cells = []
    for seed in range(2):
        a = bulk("Si", "diamond", a=5.43, cubic=True)  # 8 atoms
        a.rattle(0.05, seed=seed)
        cells.append(a)
    mols = []
    for seed in range(2):  # trans-butane + methanol: 20 atoms, C/H/O, non-periodic
        b = molecule("trans-butane")
        m = molecule("CH3OH")
        m.translate([0.0, 4.0, 0.0])
        mol = Atoms(b) + Atoms(m)
        mol.rattle(0.03, seed=seed)
        mols.append(mol)
    return cells, mols


def naive_features(model, atoms, S, rows: str, U=None):
    """Per-structure jacrev of the row function, then a dense projection."""
    import torch

    params = dict(model.params)
    pos0 = model.positions(atoms)
    model.energy(atoms)  # builds the model's graph outside the transform

    def energy(p):
        return model.energy(atoms, p, pos0).reshape(1)

    def joint(p):
        g = torch.func.grad(lambda x: model.energy(atoms, p, x))(pos0)
        f = -g.reshape(-1)
        e = model.energy(atoms, p, pos0).reshape(1)
        return torch.cat([e, f if U is None else U @ f])

    jac = torch.func.jacrev(energy if rows == "energy" else joint)(params)
    J = torch.cat([jac[k].reshape(jac[k].shape[0], -1) for k in params], dim=1)
    return (J @ S).numpy()


class PeakRSS:
    """Peak resident memory above the level at entry (MiB), sampled every 2 ms by a thread.

    glibc is asked to hand freed heap pages back first (malloc_trim), so memory a previous
    measurement freed but kept does not hide this one's growth.
    """

    def __enter__(self):
        import ctypes
        import threading

        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc: the baseline may include cached pages
            pass
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _rss(self):
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _watch(self):
        while not self.stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self._rss())
        self.mib = (self.peak - self.start) / 2**20


def timed(fn, repeats):
    """(median seconds, output, peak working MiB over all calls including the warm-up)."""
    peak = 0.0
    with PeakRSS() as mem:
        fn()  # warm-up (graph build caches, allocator)
    peak = max(peak, mem.mib)
    times = []
    for _ in range(repeats):
        with PeakRSS() as mem:
            t = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t)
        peak = max(peak, mem.mib)
    return float(np.median(times)), out, peak


def exact_pv(J_train, J_test, noise_var):
    """tr[K(x,x) - K(x,T)(K(T,T) + s I)^-1 K(T,x)] from dense Jacobians (float64)."""
    JT = np.concatenate(J_train).astype(np.float64)
    KTT = JT @ JT.T + noise_var * np.eye(JT.shape[0])
    out = []
    for J in J_test:
        J = J.astype(np.float64)
        KxT = J @ JT.T
        out.append(np.trace(J @ J.T) - np.sum(KxT * np.linalg.solve(KTT, KxT.T).T))
    return np.array(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--noise-var", type=float, default=1e-3)
    args = ap.parse_args()

    import torch

    import ntkal
    from ntkal.torch import Featurizer, force_combinations, models

    torch.set_num_threads(1)
    ntkal.set_num_threads(1)
    from _common import code_version

    version = code_version()
    print(f"# bench/features_vs_jacrev.py: CHGNet 0.3.0, d={args.dim}, 1 torch thread, median of {args.repeats}; "
          f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; commit {version['commit']}"
          f"{' (with uncommitted changes)' if version['dirty'] else ''}")
    model = models.chgnet()
    P = model.n_params
    t = time.perf_counter()
    sk = ntkal.Sketch(P, args.dim, kind="sparse_sign", seed=0)
    S = np.empty((P, args.dim), dtype=np.float32)
    for p0 in range(0, P, 65536):
        S[p0:p0 + 65536] = sk.dense(p0, min(P, p0 + 65536))
    S = torch.from_numpy(S)
    print(f"naive one-time cost: dense P x d sketch ({P} x {args.dim}) {time.perf_counter() - t:.2f} s, "
          f"{S.numel() * 4 / 2**20:.0f} MiB")

    cells, mols = structures()
    feats = {"energy": Featurizer(model, "energy", args.dim), "joint exact": Featurizer(model, "joint", args.dim)}
    for k in args.k:
        # exact mixed derivatives, as jacrev computes them (the default k-row estimator differences gradients)
        feats[f"joint k={k}"] = Featurizer(model, "joint", args.dim, force_rows=k, force_method="autograd")

    print(f"\n{'structure':10s} {'features':13s} {'rows':>5s} {'naive s':>9s} {'ntkal s':>9s} {'speed-up':>9s} "
          f"{'ntkal str/s':>11s} {'naive MiB':>9s} {'ntkal MiB':>9s}")
    results = {}
    for label, atoms in (("Si 8", cells[0]), ("mol 20", mols[0])):
        for name, f in feats.items():
            rows = "energy" if name == "energy" else "joint"
            U = None
            if name.startswith("joint k="):
                U = torch.as_tensor(force_combinations(atoms, f.force_rows, f.seed), dtype=torch.float32)
            t_naive, phi_naive, mb_naive = timed(lambda: naive_features(model, atoms, S, rows, U), args.repeats)
            t_ours, phi, mb_ours = timed(lambda: f.features(atoms), args.repeats)
            # the naive dense projection and ntkal's implicit one are the same sketch: same features
            err = np.abs(phi - phi_naive).max() / np.abs(phi_naive).max()
            results[label, name] = (t_naive, t_ours)
            print(f"{label:10s} {name:13s} {phi.shape[0]:5d} {t_naive:9.3f} {t_ours:9.3f} {t_naive / t_ours:8.1f}x "
                  f"{1 / t_ours:11.2f} {mb_naive:9.0f} {mb_ours:9.0f}   (max rel. diff to naive features {err:.1e})")
        # like for like only: each row compares the same features computed both ways (a k-row
        # feature is cheaper than an exact one by construction; that is a choice of features, not speed)
        same = ", ".join(f"{n} {results[label, n][0] / results[label, n][1]:.1f}x"
                         for (lab, n) in results if lab == label)
        print(f"{label:10s} naive / ntkal on the same features: {same}")
    print("(str/s = structures per second; MiB = peak resident memory above the level before the call, "
          "warm-up included; the naive column excludes the one-time dense sketch above)")
    del S

    print("\nsketch accuracy: row kernel Phi Phi^T vs exact J J^T over all rows of 2 Si 8 cells + 2 molecules"
          " (k-row features: against the exact kernel of the same k force combinations)")
    allst = [cells[0], mols[0], cells[1], mols[1]]
    for name in feats:
        f = feats[name]
        J = np.concatenate([f.jacobian(a) for a in allst]).astype(np.float64)
        Phi = f(allst).rows.astype(np.float64)
        K = J @ J.T
        print(f"  {name:13s} relative Frobenius error {np.linalg.norm(Phi @ Phi.T - K) / np.linalg.norm(K):.3f}")
        del J

    n_train, n_cells = 3, 12
    pool = []
    for i in range(n_cells):  # Si 8 cells from gently to strongly rattled: PVs that differ
        a = cells[0].copy()
        a.rattle(0.01 + 0.2 * i / n_cells, seed=100 + i)
        pool.append(a)
    pool = [pool[i] for i in np.random.default_rng(0).permutation(n_cells)]
    print(f"\nPV accuracy: {n_cells} Si 8 cells (rattle 0.01-0.2 A), train = {n_train}, scored = {n_cells - n_train}; "
          f"target = exact kernel-space PV (noise_var {args.noise_var:g})")
    Jfull = [feats["joint exact"].jacobian(a) for a in pool]
    target = {"energy": exact_pv([j[:1] for j in Jfull[:n_train]], [j[:1] for j in Jfull[n_train:]], args.noise_var),
              "joint": exact_pv(Jfull[:n_train], Jfull[n_train:], args.noise_var)}
    del Jfull
    print(f"  {'features':13s} {'median |rel. err|':>18s} {'Spearman rho vs exact joint PV':>32s}")
    for name, f in feats.items():
        blocks = f(pool)
        post = ntkal.Posterior(f.dim, noise_var=args.noise_var, precision="float64")
        post.add(blocks.take(np.arange(n_train)))
        pv = post.variance(blocks.take(np.arange(n_train, n_cells)))
        ref = target["energy" if name == "energy" else "joint"]
        rel = np.median(np.abs(pv - ref) / ref)
        print(f"  {name:13s} {rel:18.3f} {spearman(pv, target['joint']):32.3f}")
    print("  (energy is compared with the exact energy-only PV; k-row PVs condition on k force combinations of each "
          "training structure instead of all 3N, so their scale is higher; acquisition uses the ranking)")


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])

if __name__ == "__main__":
    main()
