"""Featurizer: structures -> sketched NTK feature blocks (ntkal.Blocks)."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from .._validation import as_int, as_positive_float
from ..blocks import Blocks
from ..options import FORCE_METHODS, KERNELS, KERNELS_WITH_ENERGY_ROW, KERNELS_WITHOUT_FORCE_ROWS, SKETCH_KINDS, choice
from ..progress import bar as progress_bar
from ..sketch import Sketch
from ..errors import fail
from .batch_rows import BatchedRows, grouped
from .functional import FunctionalModel
from .graph_feed import GraphFeed
from .jacobian import RowSpec, chunk_plan, iter_row_batches
from .loss import Loss

__all__ = ["Featurizer", "KERNELS"]



class Featurizer:
    """Maps structures to blocks of sketched Jacobian rows (or pooled embeddings).

    Parameters
    ----------
    model : FunctionalModel
    kernel : {"energy", "force", "joint", "embedding", "last_layer"}
        ``energy``: 1 row dE/dtheta; ``force``: the force rows; ``joint``: energy row then force
        rows; ``last_layer``: joint rows over the model's readout parameters only;
        ``embedding``: 1 row, the mean over atoms of the model's per-atom features, not a
        Jacobian and not sketched (its width is the model's feature size, not ``dim``).
    dim : int
        Sketch width d (default 512, the study's).
    sketch : {"sparse_sign", "gaussian"}
        Kind of :class:`ntkal.Sketch`.
    seed : int
        Seed of the sketch and of the k-row force combinations.
    force_rows : "exact", int or None
        ``"exact"``: 3N force rows (3N reverse passes: unaffordable for large structures); k: k random
        +-1 combinations (see :func:`ntkal.torch.jacobian.force_combinations`; U depends on (seed,
        atomic numbers)). None (default): k = 4, the setting of the active-learning study
        (bench/RESULTS.md), for kernels with force rows.
    force_method : {"difference", "autograd"} or None
        How force rows are computed (:mod:`ntkal.torch.jacobian`): ``"difference"``, forward differences
        of energy gradients along each row's direction (one energy-gradient pass per row, shared by a
        whole batch of structures); ``"autograd"``, exact mixed second derivatives (one reverse pass
        per row over a create-graph backward, one structure at a time). None (default): "difference"
        for k rows, "autograd" for ``force_rows="exact"``.
    difference_step : float or None
        Step h in Angstrom per unit of a row's direction for ``force_method="difference"``. None: 3e-4 for a
        float32 model, 1e-6 for float64 (the rounding error grows as 1/h, the truncation error as h;
        bench/RESULTS.md §2).
    energy_weight, force_weight : float
        Multipliers of the energy row and of each force row.
    params : "all", "readout" or list of str, optional
        Parameter subset (fnmatch patterns); ``last_layer`` implies ``"readout"``.
    nnz : int
        Nonzeros per parameter of the sparse sign sketch.
    chunk_size : int
        Parameter columns per projection call.
    row_batch : int
        Jacobian rows held at once (memory: row_batch x P numbers of the model's dtype).
    loss : Loss, optional
        Match the rows to the fine-tuning loss (:class:`ntkal.torch.Loss`): the energy row becomes
        sqrt(w_E)/N dE/dtheta for a per-atom energy loss, the force rows carry sqrt(w_F) (a sum over
        components) or sqrt(w_F / 3N) (a per-structure mean), so the posterior is the uncertainty of the
        linearised model under the loss it is fine-tuned with. Applied on top of ``energy_weight`` and
        ``force_weight``. None: unit weights.
    batch_budget : int or None
        Rows of the model's batched graph (atoms + edges + angles ...; :class:`BatchedEnergy.size`) per pass
        for models that evaluate many structures at once (the model adapters). Working memory grows with it:
        CHGNet's joint features peaked about 1 GB above the starting level at the CPU default, about 30 kB
        per row (bench/RESULTS.md §2). None: 32,000 on a CPU, 500,000 on a GPU.
    batch_size : int or None
        Most structures per pass (also bounds the (B, P) gradient buffers: 2 B P numbers). None: 32 on a
        CPU, 512 on a GPU.
    graph_workers : int or None
        Processes that build the structures' graphs (neighbour lists) ahead of the batched passes
        (:class:`ntkal.torch.graph_feed.GraphFeed`). None: 0 for a model on the CPU (the cores run the
        passes), min(8, cores - 1) for a model on a GPU.
    threads : int or None
        torch intra-op threads while computing rows in this process (default 1: the rows are
        many small reverse passes, for which extra threads cost more in synchronisation than
        they gain — on a busy 2-core machine 2 threads ran 10-20x slower than 1). None keeps
        torch's setting. For parallelism run the screen on worker processes
        (``ntkal.acquire(..., workers=N)`` or a Dask ``client``).
    progress : bool
        Default for showing a tqdm bar on stderr in ``__call__``.
    """

    def __init__(self, model: FunctionalModel, kernel: str = "joint", dim: int = 512, *,
                 sketch: str = "sparse_sign", seed: int = 0, force_rows=None,
                 energy_weight: float = 1.0, force_weight: float = 1.0, params=None, nnz: int = 4,
                 chunk_size: int = 65536, row_batch: int = 8, threads: int | None = 1,
                 loss=None, progress: bool = False, force_method: str | None = None,
                 difference_step: float | None = None, batch_budget: int | None = None, batch_size: int | None = None,
                 graph_workers: int | None = None):
        where = "Featurizer"
        if not isinstance(model, FunctionalModel):
            fail(where, f"model must be an ntkal.torch.FunctionalModel; got {type(model).__name__}")
        choice(kernel, KERNELS, where, "kernel")
        choice(sketch, SKETCH_KINDS, where, "sketch")
        for name, value, low in (("dim", dim, 1), ("chunk_size", chunk_size, 1), ("row_batch", row_batch, 1),
                                 ("nnz", nnz, 1), ("seed", seed, 0)):
            as_int(value, where, name, low=low)
        for name, value, low in (("threads", threads, 1), ("batch_budget", batch_budget, 1),
                                 ("batch_size", batch_size, 1), ("graph_workers", graph_workers, 0)):
            as_int(value, where, name, low=low, optional=True)
        force_rows, force_method, difference_step = _force_settings(kernel, force_rows, force_method, difference_step,
                                                                    model.dtype, where)
        energy_weight = as_positive_float(energy_weight, where, "energy_weight")
        force_weight = as_positive_float(force_weight, where, "force_weight")
        params = _params(kernel, params, loss, model, where)
        self.base_model = model
        self.model = model.select("all" if params is None else params)
        self.kernel = kernel
        self.params = "all" if params is None else params
        self.sketch_kind = sketch
        self.seed = int(seed)
        self.nnz = int(nnz)
        self.force_rows = force_rows if force_rows == "exact" else int(force_rows)
        self.energy_weight = float(energy_weight)
        self.force_weight = float(force_weight)
        self.chunk_size = int(chunk_size)
        self.row_batch = int(row_batch)
        self.loss = loss
        self.threads = None if threads is None else int(threads)
        self.progress = bool(progress)
        self._dim = int(dim)
        self._sketch = None
        self._plan = None
        self.force_method = force_method
        self.difference_step = float(difference_step)
        self.batch_budget = None if batch_budget is None else int(batch_budget)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.graph_workers = None if graph_workers is None else int(graph_workers)
        self._feed = None
        self.rowspec = None if kernel == "embedding" else RowSpec(
            energy=kernel in KERNELS_WITH_ENERGY_ROW,
            force=None if kernel in KERNELS_WITHOUT_FORCE_ROWS else self.force_rows,
            energy_weight=self.energy_weight, force_weight=self.force_weight, seed=self.seed,
            method=self.force_method, step=self.difference_step)
        self._batch_rows = None

    def __getstate__(self) -> dict:
        """Pickled for worker processes without the sketch (a C++ object, rebuilt there from its seed:
        the same matrix) and the chunk plan."""
        state = dict(self.__dict__)
        state["_sketch"] = None
        state["_plan"] = None
        state["_batch_rows"] = None
        state["_feed"] = None
        return state

    # ---- layout -----------------------------------------------------------------------
    @property
    def n_params(self) -> int:
        """Number of Jacobian columns P (parameters differentiated)."""
        return self.model.n_params

    @property
    def dim(self) -> int:
        """Feature width: ``dim``, or the model's embedding width for the embedding kernel."""
        if self.kernel == "embedding":
            if self.model.embedding_dim is None:
                fail("Featurizer.dim", "the embedding width is unknown until a structure is featurized")
            return int(self.model.embedding_dim)
        return self._dim

    @property
    def sketch(self):
        """The :class:`ntkal.Sketch` (n_params x dim) the rows are projected with."""
        if self._sketch is None:
            self._sketch = Sketch(self.n_params, self._dim, kind=self.sketch_kind, seed=self.seed, nnz=self.nnz)
        return self._sketch

    def n_rows(self, atoms) -> int:
        """Rows in the block of ``atoms``."""
        return 1 if self.rowspec is None else self.rowspec.n_rows(len(atoms))

    def config(self) -> dict:
        """Everything that determines the features (JSON-serialisable)."""
        return {"model": self.model.name, "model_fingerprint": self.model.fingerprint(), "kernel": self.kernel,
                "params": self.params if isinstance(self.params, str) else list(self.params),
                "dim": self._dim, "sketch": self.sketch_kind, "seed": self.seed, "nnz": self.nnz,
                "force_rows": self.force_rows, "energy_weight": self.energy_weight,
                "force_weight": self.force_weight, "dtype": str(self.model.dtype),
                **({"loss": self.loss.config()} if self.loss is not None else {}),
                **({"force_method": "difference", "difference_step": self.difference_step}
                   if self.rowspec is not None and self.rowspec.force is not None
                   and self.force_method == "difference" else {})}

    def fingerprint(self) -> str:
        """Hex digest of :meth:`config`."""
        return hashlib.blake2b(json.dumps(self.config(), sort_keys=True).encode(), digest_size=16).hexdigest()

    def __repr__(self) -> str:
        return (f"Featurizer(model={self.model.name!r}, kernel={self.kernel!r}, dim={self._dim}, "
                f"sketch={self.sketch_kind!r}, force_rows={self.force_rows!r}, n_params={self.n_params})")

    # ---- one structure ----------------------------------------------------------------
    def check(self, atoms, *, where: str = "Featurizer.check", arg: str = "atoms") -> None:
        """Raise ``InvalidArgumentError`` (naming ``where`` and ``arg``) if the model cannot featurize
        ``atoms``: unsupported elements, non-finite positions, atoms it cannot place in its graph."""
        self.model.check(atoms, where=where, arg=arg)

    def _check(self, atoms, where, arg="atoms"):
        self.check(atoms, where=where, arg=arg)

    def _threads(self):
        return _TorchThreads(self.threads if self.model.device.type == "cpu" else None)

    def jacobian(self, atoms) -> np.ndarray:
        """Dense unprojected rows of one structure (tests, small models).

        Returns
        -------
        ndarray, shape (m, P), the model's dtype
            Energy row first, then the force rows, weights applied. For ``kernel="embedding"``
            the (1, F) pooled embedding (what :meth:`features` returns, unprojected).
        """
        self._check(atoms, "Featurizer.jacobian")
        if self.kernel == "embedding":
            return self._embedding_row(atoms)
        with self._threads():
            if self._batched() is not None:
                return self._loss_weighted(self._batched_jacobian(atoms), len(atoms))
            return self._loss_weighted(self._jacobian(atoms), len(atoms))

    def _jacobian(self, atoms) -> np.ndarray:
        m, P = self.n_rows(atoms), self.n_params
        out = np.zeros((m, P), dtype=torch.empty((), dtype=self.model.dtype).numpy().dtype)
        cols = self.model.column_offsets()
        for first, grads in iter_row_batches(self.model, atoms, self.rowspec, row_batch=self.row_batch):
            for t, g in enumerate(grads):
                if g is not None:
                    out[first:first + g.shape[0], cols[t]:cols[t + 1]] = g.reshape(g.shape[0], -1).cpu().numpy()
        return out

    def _batched(self):
        """The batched row source when the model evaluates many structures at once and the rows allow it."""
        if self.rowspec is None or self.model.batched is None:
            return None
        if self.rowspec.force is not None and self.force_method != "difference":
            return None  # exact mixed derivatives: one structure at a time
        if self._batch_rows is None:
            self._batch_rows = BatchedRows(self.model, self.rowspec)
        return self._batch_rows

    def _batched_jacobian(self, atoms) -> np.ndarray:
        source = self._batched()
        out = np.zeros((self.n_rows(atoms), self.n_params), dtype=torch.empty((), dtype=self.model.dtype).numpy().dtype)
        cols = self.model.column_offsets()
        for row, grads, _ in source.rows([atoms], source.graphs([atoms])):
            for t, name in enumerate(self.model.names):
                if name in grads:
                    out[row, cols[t]:cols[t + 1]] = grads[name][0].reshape(-1).cpu().numpy()
        return out

    def features(self, atoms):
        """Sketched rows of one structure, shape (m, dim), float32 (a tensor on the model's device
        when that is a GPU, else an ndarray).

        Rows stream into the sketch ``row_batch`` rows x ``chunk_size`` parameters at a time;
        no P x dim matrix and no m x P Jacobian is formed.
        """
        self._check(atoms, "Featurizer.features")
        with self._threads():
            return self._unchecked_features(atoms)

    def _unchecked_features(self, atoms):
        if self.kernel == "embedding":
            return self._embedding_row(atoms).astype(np.float32)
        if self._batched() is not None:
            return self._batched_features([atoms], self._batched().graphs([atoms]))[0]
        return self._loss_weighted(self._features(atoms), len(atoms))

    def _loss_weighted(self, rows, n_atoms: int):
        """Rows times the loss's per-structure weights (the projection is linear: weighting after it is exact)."""
        if self.loss is None:
            return rows
        return self.loss.weight_rows(rows, n_atoms, energy_row=self.rowspec.energy,
                                     force_rows=self.rowspec.force is not None)

    def predict_forces(self, atoms, *, checked: bool = False) -> np.ndarray:
        """The model's forces on ``atoms``, shape (N, 3), float64 (eV/A): residuals for calibration.
        ``checked``: the caller has run :meth:`check` on it already."""
        if not checked:
            self._check(atoms, "Featurizer.predict_forces")
        with self._threads():
            pos = self.base_model.positions(atoms, requires_grad=True)
            energy = self.base_model.energy(atoms, positions=pos)
            (grad,) = torch.autograd.grad(energy, pos)
        return -grad.detach().cpu().numpy().astype(np.float64)

    def _keeps_device(self) -> bool:
        """Jacobian rows on a GPU are projected there (``ntkal.Sketch`` on CUDA arrays): no host copy."""
        return self.model.device.type != "cpu"

    def _features(self, atoms):
        sketch = self.sketch
        if self._plan is None:
            self._plan = chunk_plan(self.model.sizes, self.chunk_size)
        shape = (self.n_rows(atoms), self._dim)
        out = (torch.zeros(shape, dtype=torch.float32, device=self.model.device) if self._keeps_device()
               else np.zeros(shape, dtype=np.float32))
        for first, grads in iter_row_batches(self.model, atoms, self.rowspec, row_batch=self.row_batch):
            b = next(g.shape[0] for g in grads if g is not None) if any(g is not None for g in grads) else 0
            if b == 0:
                continue
            target = out[first:first + b]
            flat = [None if g is None else g.reshape(b, -1) for g in grads]
            for col0, pieces in self._plan:
                _project_pieces(sketch, flat, col0, pieces, target)
        return out

    def _batched_features(self, structures, graphs) -> list:
        """Sketched, loss-weighted blocks of a batch of structures from 1 + k passes over one batched graph."""
        sketch = self.sketch
        if self._plan is None:
            self._plan = chunk_plan(self.model.sizes, self.chunk_size)
        n = len(structures)
        blocks = [self._zeros((self.n_rows(a), self._dim)) for a in structures]
        target = self._zeros((n, self._dim))
        for row, grads, present in self._batched().rows(structures, graphs):
            target[:] = 0
            flat = [grads[name].reshape(n, -1) if name in grads else None for name in self.model.names]
            for col0, pieces in self._plan:
                _project_pieces(sketch, flat, col0, pieces, target)
            for s in np.flatnonzero(present):
                blocks[s][row] = target[s]
        return [self._loss_weighted(b, len(a)) for b, a in zip(blocks, structures)]

    def _zeros(self, shape):
        if self._keeps_device():
            return torch.zeros(shape, dtype=torch.float32, device=self.model.device)
        return np.zeros(shape, dtype=np.float32)

    def _graph_feed(self) -> GraphFeed:
        if self._feed is None:
            workers = self.graph_workers
            if workers is None:
                workers = 0 if self.model.device.type == "cpu" else min(8, max((os.cpu_count() or 1) - 1, 0))
            self._feed = GraphFeed(self.model.batched.graph, workers)
        return self._feed

    def _batch_limits(self) -> tuple[int, int]:
        gpu = self.model.device.type != "cpu"
        budget = self.batch_budget or (500_000 if gpu else 32_000)
        return budget, self.batch_size or (512 if gpu else 32)

    def _embedding_row(self, atoms) -> np.ndarray:
        emb = self.model.embedding(atoms)
        row = emb.mean(dim=0, keepdim=True).detach().cpu().numpy()
        if self.model.embedding_dim is None:
            self.model.embedding_dim = int(row.shape[1])
        return row

    # ---- many structures --------------------------------------------------------------
    def __call__(self, structures, *, progress: bool | None = None, desc: str = "features", checked: bool = False):
        """Feature blocks of a list of structures.

        Parameters
        ----------
        structures : sequence of ase.Atoms
        progress : bool, optional
            tqdm bar on stderr (default: the featurizer's ``progress``).
        checked : bool
            The caller has run :meth:`check` on every structure already (a screen's check pass): not again
            (for CHGNet a check builds a neighbour list).

        Returns
        -------
        ntkal.Blocks
            Block i holds the (m_i, dim) float32 features of ``structures[i]``.
        """
        structures = list(structures)
        if not structures:
            fail("Featurizer", "structures must hold at least one ase.Atoms; got an empty list")
        if not checked:
            for i, atoms in enumerate(structures):
                self._check(atoms, "Featurizer", f"structures[{i}]")
        show = self.progress if progress is None else progress
        bar = progress_bar(len(structures), show, desc)
        blocks = []
        source = self._batched() if self.kernel != "embedding" else None
        if source is None:
            with self._threads():
                for atoms in structures:
                    blocks.append(self._unchecked_features(atoms))
                    bar.update(1)
        else:
            with self._threads():
                for group, graphs in grouped(self._graph_feed().graphs(structures), self.model.batched.size,
                                             *self._batch_limits()):
                    blocks.extend(self._batched_features([structures[i] for i in group], graphs))
                    bar.update(len(group))
        bar.close()
        return Blocks.from_list(blocks)


def _params(kernel: str, params, loss, model, where: str):
    """The differentiated parameters a kernel takes (``last_layer``: the readout), after checking the kernel,
    parameters and loss go together."""
    if loss is not None and not isinstance(loss, Loss):
        fail(where, f"loss must be an ntkal.torch.Loss or None; got {type(loss).__name__}")
    if loss is not None and kernel == "embedding":
        fail(where, "loss makes no sense with kernel='embedding' (no Jacobian rows)")
    if kernel == "embedding" and params not in (None, "all"):
        fail(where, f"params={params!r} makes no sense with kernel='embedding' (no Jacobian)")
    if kernel == "embedding" and model.embedding_fn is None:
        fail(where, f"kernel='embedding' needs a model with embedding_fn; {model.name!r} has none")
    if kernel == "last_layer":
        if params not in (None, "readout"):
            fail(where, f"kernel='last_layer' fixes params='readout'; got params={params!r}")
        return "readout"
    return params


def _force_settings(kernel: str, force_rows, force_method, step, dtype, where: str) -> tuple:
    """(force_rows, force_method, difference_step) with the defaults filled in and checked."""
    if force_rows is None:  # the studied default: k = 4 combinations where there are force rows
        force_rows = "exact" if kernel in KERNELS_WITHOUT_FORCE_ROWS else 4
    if force_rows != "exact":
        if isinstance(force_rows, bool) or not isinstance(force_rows, (int, np.integer)) or force_rows < 1:
            fail(where, f"force_rows must be 'exact' or an integer k >= 1; got {force_rows!r}")
        if kernel in KERNELS_WITHOUT_FORCE_ROWS:
            fail(where, f"force_rows={force_rows!r} makes no sense with kernel={kernel!r} "
                        "(it has no force rows); use kernel='force' or 'joint'")
    if force_method is None:
        force_method = "autograd" if force_rows == "exact" else "difference"
    choice(force_method, FORCE_METHODS, where, "force_method")
    if step is None:  # rounding error of a difference grows as 1/h, truncation as h (bench/RESULTS.md §2)
        step = 1e-6 if dtype == torch.float64 else 3e-4
    as_positive_float(step, where, "difference_step")
    return force_rows, force_method, step


def _project_pieces(sketch, flat, col0, pieces, target) -> None:
    """Project one parameter chunk of a row batch; runs of unused parameters are skipped."""
    run, run_start, col = [], col0, col0
    for t, start, stop in pieces:
        g = flat[t]
        if g is None:
            if run:
                _project_run(sketch, run, run_start, target)
            run, run_start = [], col + (stop - start)
        else:
            run.append(g[:, start:stop])
        col += stop - start
    if run:
        _project_run(sketch, run, run_start, target)


def _project_run(sketch, run, col_offset, target) -> None:
    J = (run[0] if len(run) == 1 else torch.cat(run, dim=1)).detach()
    if isinstance(target, np.ndarray):
        sketch.project(np.ascontiguousarray(J.cpu().numpy()), col_offset=col_offset, out=target)
    else:  # rows and accumulator on the model's device
        sketch.project(J, col_offset=col_offset, out=target)


class _TorchThreads:
    """Temporarily set torch's intra-op thread count (None: leave it)."""

    def __init__(self, n):
        self.n, self.saved = n, None

    def __enter__(self):
        if self.n is not None and torch.get_num_threads() != self.n:
            self.saved = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.saved is not None:
            torch.set_num_threads(self.saved)
