"""scikit-learn compatible :class:`NMF`, :func:`non_negative_factorization` and :func:`nmf`.

All three share one code path: the functions build an estimator and call
``NMF._fit_transform``. The estimator validates parameters once (``_CONSTRAINTS``), turns the
input into an executor (:mod:`bignmf.executor`) and dispatches to :mod:`bignmf.init` and
:mod:`bignmf.fit`.

* NumPy arrays and SciPy sparse matrices are factorized in this process (NumPy in, NumPy out).
* Paths to Zarr stores, ``zarr.Array`` and dask arrays are processed block by block with
  dask; ``W`` comes back as a dask array that stays on the workers and can be written
  to Zarr, ``H`` (``components_``) as NumPy.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data

from bignmf import checkpoint, cluster, io
from bignmf.checkpoint import Checkpointer, FitState
from bignmf.compressed import fit_compressed
from bignmf.executor import DaskExecutor, Eager
from bignmf.fit import FitResult, IterationInfo, fit, update_kind
from bignmf.init import Initial, initialize, resolve_init
from bignmf.losses import BETA_LOSSES, Penalty, beta_to_float
from bignmf.passes import (
    beta_transform_block,
    check_missing,
    masked_transform_block,
    transform_block,
)
from bignmf.progress import Progress
from bignmf.scratch import Scratch
from bignmf.solvers import SOLVER_NAMES, hals, mu

logger = logging.getLogger(__name__)


def _is_int(v: Any) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


# name: (test, what is allowed) — checked once per fit, messages name the parameter.
#: Every ``solver``: the update rules of :mod:`bignmf.solvers`, and compressed NMF.
SOLVERS = (*SOLVER_NAMES, "compressed")

_CONSTRAINTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_components": (lambda v: v is None or v == "auto" or (_is_int(v) and v >= 1),
                     "an int >= 1, 'auto' or None"),
    "init": (lambda v: v in (None, "random", "nndsvd", "nndsvda", "nndsvdar", "custom"),
             "one of None, 'random', 'nndsvd', 'nndsvda', 'nndsvdar', 'custom'"),
    "solver": (lambda v: v in SOLVERS, f"one of {', '.join(map(repr, SOLVERS))}"),
    "beta_loss": (lambda v: (isinstance(v, str) and v in BETA_LOSSES) or _is_real(v),
                  "'frobenius', 'kullback-leibler', 'itakura-saito' or a float"),
    "tol": (lambda v: _is_real(v) and v >= 0, "a float >= 0"),
    "max_iter": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "random_state": (lambda v: v is None or _is_int(v) or isinstance(v, np.random.RandomState),
                     "None, an int or a numpy.random.RandomState"),
    "alpha_W": (lambda v: _is_real(v) and v >= 0, "a float >= 0"),
    "alpha_H": (lambda v: v == "same" or (_is_real(v) and v >= 0), "a float >= 0 or 'same'"),
    "l1_ratio": (lambda v: _is_real(v) and 0 <= v <= 1, "a float in [0, 1]"),
    "verbose": (lambda v: _is_int(v) or isinstance(v, bool), "an int or a bool"),
    "shuffle": (lambda v: isinstance(v, bool | np.bool_), "a bool"),
    "inner_sweeps": (lambda v: v == "auto" or (_is_int(v) and v >= 1), "an int >= 1 or 'auto'"),
    "missing": (lambda v: v in (None, "nan", "unstored"), "None, 'nan' or 'unstored'"),
    "resident": (lambda v: v == "auto" or isinstance(v, bool | np.bool_), "'auto' or a bool"),
    "block_rows": (lambda v: v is None or (_is_int(v) and v >= 1), "an int >= 1 or None"),
    "store_W": (lambda v: v == "auto" or isinstance(v, bool | np.bool_), "'auto' or a bool"),
    "checkpoint": (lambda v: v is None or isinstance(v, (str, os.PathLike)),
                   "None or a path to a Zarr group"),
    "checkpoint_every": (lambda v: v is None or (_is_int(v) and v >= 1), "an int >= 1 or None"),
    "checkpoint_seconds": (lambda v: v is None or (_is_real(v) and v > 0), "a float > 0 or None"),
}

# Parameters that define the problem: a checkpoint resumes only a fit with the same ones.
_PROBLEM_PARAMS = ("init", "solver", "beta_loss", "alpha_W", "alpha_H", "l1_ratio", "shuffle",
                   "inner_sweeps", "random_state", "missing")


#: Masked HALS (``missing`` with ``solver='cd'``) holds ``n x k x k`` per-column Gram sums
#: (float64) beside each block and where H is updated; above this, ``solver='mu'`` is
#: required.
MASKED_GRAM_BYTES = 2**28

#: ``resident='auto'`` keeps V in the workers' memory when it takes at most this fraction of
#: their total memory limit (the rest is for W, the kernels' temporaries and dask).
RESIDENT_FRACTION = 0.3

#: ``store_W='auto'`` keeps W in files between passes (:mod:`bignmf.scratch`) when V is not
#: resident and W's share of a worker, ``m k itemsize / workers``, would be over this
#: fraction of the smallest worker memory limit.
W_FRACTION = 0.1


class InvalidParameterError(ValueError, TypeError):
    """A constructor parameter has a value NMF does not accept (as scikit-learn's)."""


class NMF(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Non-negative matrix factorization ``V ~ W H`` — out of core, a drop-in for
    :class:`sklearn.decomposition.NMF`.

    Minimizes scikit-learn's objective::

        0.5 ||V - W H||_F^2
        + alpha_W * l1_ratio * n_features * ||W||_1
        + 0.5 * alpha_W * (1 - l1_ratio) * n_features * ||W||_F^2
        + alpha_H * l1_ratio * n_samples * ||H||_1
        + 0.5 * alpha_H * (1 - l1_ratio) * n_samples * ||H||_F^2

    Each iteration reads V once (see :mod:`bignmf.fit`); initialization reads it once
    (``random``) or twice (NNDSVD family), see :mod:`bignmf.init`.

    Parameters
    ----------
    n_components, init, solver, beta_loss, tol, max_iter, random_state, alpha_W, alpha_H, \
l1_ratio, verbose, shuffle
        As in scikit-learn (``verbose`` prints a progress line per iteration: objective,
        relative decrease, seconds per iteration, time left). ``solver='cd'``
        (coordinate descent, i.e. HALS; also spelled
        ``'hals'``), ``'mu'`` (multiplicative updates) or ``'compressed'`` (HALS on a
        randomized sketch of V, then exact HALS passes: Frobenius loss, at most 6 passes
        over V in all, for data with fast spectral decay; see :mod:`bignmf.compressed`,
        where ``max_iter`` bounds the sketch iterations). ``tol`` applies to the relative
        decrease of the objective between two iterations. ``beta_loss``:
        ``'frobenius'`` (any solver), ``'kullback-leibler'``, ``'itakura-saito'`` or a float
        beta (``solver='mu'``, scikit-learn's multiplicative updates, one pass per
        iteration plus one at the end for the final loss). For sparse V, Frobenius and
        Kullback-Leibler only touch the stored entries (``O(nnz k)`` per pass); other betas
        need ``W H`` at every entry, so each sparse row block is made dense in its own task
        (blocks are sized for that).
    inner_sweeps : int or 'auto', default='auto'
        Solver sweeps per update of each factor. Sweeps reuse the products of a pass and
        cost no I/O; ``'auto'`` repeats them while they still help (Gillis & Glineur 2012):
        at most 20, fewer where V is sparse (its products cost less beside a sweep). MU
        sweeps only for the Frobenius loss without missing entries (other losses need
        ``W H`` anew for each update: one per pass). ``1`` gives scikit-learn's iterates
        exactly.
    missing : None, 'nan' or 'unstored', default=None
        Which entries of V are missing — not zeros, not fitted. ``None``: every entry is
        data (NaN is an error). ``'nan'``: NaN entries of dense V are missing.
        ``'unstored'``: for sparse V, only the stored entries are observed (the recommender
        convention; a stored zero is an observed zero). The fit minimizes the loss over the
        observed entries only (masked NMF): Frobenius with ``solver='cd'`` (HALS with each
        row's and column's own Gram matrix, ``n k^2`` floats of sums per block) or
        ``'mu'``, other losses with ``'mu'``;
        ``reconstruction_err_`` is over them too, and ``W @ H`` predicts the missing ones.
    resident : 'auto' or bool, default='auto'
        Out-of-core inputs only: read V once into the workers' memory and iterate from
        there (no I/O per iteration). ``'auto'``: when V (as computed, dense or CSR) takes at
        most :data:`RESIDENT_FRACTION` of the cluster's total worker memory limit; ``True``
        forces it, ``False`` reads V from storage in every pass.
    block_rows : int, optional
        Rows per block of V for out-of-core inputs (default: ~128 MiB blocks, fewer when the
        workers' memory limit is small).
    store_W : 'auto' or bool, default='auto'
        Out-of-core inputs only: keep W in files between passes instead of in the workers'
        memory (:mod:`bignmf.scratch`), so that a worker's memory does not grow with the
        number of rows; each pass then also reads and writes W, ``2 k / n`` of a pass over
        dense V. The files go in ``checkpoint`` (a folder every worker must see) or, on the
        embedded cluster, in a temporary folder, and the fit's returned W is read from its
        final checkpoint (until a later fit checkpoints into the same place). ``'auto'``:
        when V is not resident and W's share of a worker would be over
        :data:`W_FRACTION` of its memory limit and there is such a folder.
    checkpoint : str or path, optional
        A Zarr group (created if needed) where the fit keeps its newest checkpoint — W, H,
        the iteration, the loss history, ``||V||^2`` and the RNG state — written atomically
        (:mod:`bignmf.checkpoint`). ``fit(X, resume=True)`` continues from it.
    checkpoint_every : int, optional
        Checkpoint every this many iterations (default 10 when ``checkpoint`` is set and
        ``checkpoint_seconds`` is not).
    checkpoint_seconds : float, optional
        Checkpoint when this many seconds have passed since the last one.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        H.
    n_components_ : int
    reconstruction_err_ : float
        ``||V - W H||_F`` at the end of the fit (from the iteration's products).
    n_iter_ : int
    n_features_in_ : int
    loss_history_ : list of float
        The objective before the first iteration and after each one.
    """

    def __init__(
        self,
        n_components: int | str | None = "auto",
        *,
        init: str | None = None,
        solver: str = "cd",
        beta_loss: str | float = "frobenius",
        tol: float = 1e-4,
        max_iter: int = 200,
        random_state: int | np.random.RandomState | None = None,
        alpha_W: float = 0.0,
        alpha_H: float | str = "same",
        l1_ratio: float = 0.0,
        verbose: int = 0,
        shuffle: bool = False,
        inner_sweeps: int | str = "auto",
        missing: str | None = None,
        resident: bool | str = "auto",
        block_rows: int | None = None,
        store_W: bool | str = "auto",
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int | None = None,
        checkpoint_seconds: float | None = None,
    ) -> None:
        self.n_components = n_components
        self.init = init
        self.solver = solver
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.verbose = verbose
        self.shuffle = shuffle
        self.inner_sweeps = inner_sweeps
        self.missing = missing
        self.resident = resident
        self.block_rows = block_rows
        self.store_W = store_W
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds

    # ------------------------------------------------------------------ validation
    def _validate_params(self) -> None:
        for name, (ok, allowed) in _CONSTRAINTS.items():
            value = getattr(self, name)
            if not ok(value):
                raise InvalidParameterError(
                    f"The {name!r} parameter of {type(self).__name__} must be {allowed}. "
                    f"Got {value!r} instead."
                )
        if beta_to_float(self.beta_loss) != 2 and self.solver != "mu":
            raise InvalidParameterError(
                f"Invalid beta_loss parameter: solver {self.solver!r} does not handle "
                f"beta_loss = {self.beta_loss!r}"
            )
        if self.missing is not None and self.solver == "compressed":
            raise InvalidParameterError(
                f"Invalid missing parameter: solver {self.solver!r} does not handle "
                f"missing = {self.missing!r}; use solver='cd' or 'mu'"
            )
        if self.solver == "compressed" and self.store_W is True:
            raise InvalidParameterError(
                "Invalid store_W parameter: solver 'compressed' keeps its own small factors "
                "(W of the sketch); use store_W='auto' or False")
        if self.solver == "compressed" and self.checkpoint is not None:
            raise InvalidParameterError(
                "Invalid checkpoint parameter: solver 'compressed' writes no checkpoints "
                "(it reads V at most 6 times); use solver='cd' to checkpoint a long fit")
        if self.solver == "mu" and self.init == "nndsvd":
            warnings.warn(
                "The multiplicative update ('mu') solver cannot update zeros present in the "
                "initialization, and so leads to poorer results when used jointly with "
                "init='nndsvd'. You may try init='nndsvda' or init='nndsvdar' instead.",
                UserWarning, stacklevel=3,
            )

    def _prepare(self, X: Any, *, reset: bool) -> tuple[Any, tuple[int, int], np.dtype]:
        """Validate X's metadata and wrap it in an executor (reads no data of V)."""
        if io.is_out_of_core(X):
            # Metadata errors (missing store, a group, bad shape or dtype) before any
            # cluster is started.
            source = io.open_source(X)  # a path or group: zarr.Array or CSRStore
            io.check_shape_dtype(source.shape, source.dtype)
            client, embedded = cluster.resolve()
            block_bytes, densify = self._block_budget(
                source, cluster.worker_memory_limit(client))
            V = io.open_matrix(source, block_rows=self.block_rows, block_bytes=block_bytes,
                               densify=densify, parts=cluster.n_workers(client))
            if reset:
                self.n_features_in_ = V.shape[1]
                if hasattr(self, "feature_names_in_"):
                    del self.feature_names_in_
            elif V.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {V.shape[1]} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input."
                )
            zarr_source = source if isinstance(source, (zarr.Array, io.CSRStore)) else None
            ex = DaskExecutor(V, client, zarr_source, local=embedded)
            return ex, V.shape, V.dtype
        X = validate_data(
            self, X, accept_sparse=("csr", "csc"), dtype=[np.float64, np.float32], reset=reset,
            ensure_all_finite="allow-nan" if self.missing == "nan" else True,
        )
        if sp.issparse(X):
            X = sp.csr_matrix(X)
        return Eager(X), X.shape, X.dtype

    def _keep_resident(self, ex: Any) -> bool:
        """Whether to hold V in the workers' memory for this fit (see ``resident``)."""
        if not isinstance(ex, DaskExecutor) or self.resident is False:
            return False
        if self.resident is True:
            return True
        total = cluster.total_memory_limit(ex.client)
        size = io.computed_nbytes(ex.source if ex.source is not None else ex.V)
        return bool(total and size is not None and size <= RESIDENT_FRACTION * total)

    def _block_budget(self, source: Any, limit: int | None) -> tuple[int, bool]:
        """Bytes of V per row block, and whether sparse blocks are made dense in their task.

        A task holds its block, Zarr's decode buffers and the kernel's temporaries:
        Frobenius on dense blocks about 3x the block (limit / 8 per block); the
        multiplicative updates of other losses and masks add ``W_i H`` and two ratios of
        the block's size (limit / 16); sparse blocks, whose budget counts CSR bytes, about
        five arrays per stored entry besides decoding (limit / 32). Without a known worker
        limit (threads), as if it were 1 GiB. Sparse V with a beta other than 1 or 2 and
        no mask needs ``W_i H`` everywhere: its blocks are sized as dense ones.
        """
        beta = beta_to_float(self.beta_loss)
        updates = update_kind(beta, self.missing, self.solver) != "frobenius"
        sparse = isinstance(source, io.CSRStore) or (
            isinstance(source, da.Array) and sp.issparse(source._meta))
        densify = sparse and self.missing is None and beta not in (1, 2)
        divisor = 32 if sparse and not densify else 16 if updates or densify else 8
        return min(io.DEFAULT_BLOCK_BYTES, (limit or 2**30) // divisor), densify

    def _resolve_n_components(self, n_features: int, H: Any) -> int:
        if self.n_components in (None, "auto"):
            if self.n_components == "auto" and H is not None:
                return int(np.shape(H)[0])
            return n_features
        return int(self.n_components)

    # ------------------------------------------------------------------ fitting
    def fit(self, X: Any, y: Any = None, **params: Any) -> NMF:
        """Learn the factorization of X; see :meth:`fit_transform`."""
        self.fit_transform(X, **params)
        return self

    def fit_transform(
        self, X: Any, y: Any = None, W: Any = None, H: Any = None,
        callback: Callable[[IterationInfo], None] | None = None, resume: bool = False,
    ) -> Any:
        """Learn the factorization of X and return W.

        Parameters
        ----------
        X : array-like, sparse matrix, dask array, zarr.Array or path to a Zarr array
            Non-negative data of shape (n_samples, n_features).
        W, H : array-like, optional
            Initial factors when ``init='custom'``.
        callback : callable, optional
            Called with an :class:`bignmf.fit.IterationInfo` after every iteration.
        resume : bool, default=False
            Continue from the newest checkpoint in ``checkpoint`` if there is one (else start
            afresh, so a batch job can always pass ``resume=True``). The checkpoint must
            come from the same problem: same data shape and problem parameters.

        Returns
        -------
        W : ndarray (in-memory X) or dask array (out-of-core X) of shape (n_samples, k)
        """
        self._validate_params()
        progress = None
        if callback is None and self.verbose:
            callback = progress = Progress(stream=sys.stdout, log_every=0, use_logging=False)
        try:
            W_out, H_out, n_iter, result = self._fit_transform(
                X, W=W, H=H, callback=callback, resume=resume)
        finally:
            if progress is not None:
                progress.close()
        assert result is not None
        self.reconstruction_err_ = result.reconstruction_err
        self.n_components_ = H_out.shape[0]
        self.components_ = H_out
        self.n_iter_ = n_iter
        self.loss_history_ = result.loss_history
        self._data_sq_norm = float(result.stats["sumsq"])  # ||V||^2, from the first pass
        self._converged = result.converged
        return W_out

    def _fit_transform(
        self, X: Any, W: Any = None, H: Any = None, update_H: bool = True,
        callback: Callable[[IterationInfo], None] | None = None, resume: bool = False,
    ) -> tuple[Any, np.ndarray, int, FitResult | None]:
        ex, shape, dtype = self._prepare(X, reset=update_H)
        check_missing(ex.meta, self.missing)
        k = self._resolve_n_components(shape[1], H if (self.init == "custom" or not update_H)
                                       else None)
        if not update_H:
            if W is not None:
                warnings.warn("When update_H=False, the provided initial W is not used.",
                              RuntimeWarning, stacklevel=3)
            H = _check_factor(H, (k, shape[1]), dtype, "NMF (input H)")
            W_out, n_iter = self._solve_W(ex, H, shape, dtype, compute=True)
            return W_out, H, n_iter, None
        init = resolve_init(self.init, k, shape)
        if (self.missing is not None and self.solver != "mu"
                and shape[1] * k * k * 8 > MASKED_GRAM_BYTES):
            raise ValueError(
                f"missing={self.missing!r} with solver={self.solver!r} sums a {k} x {k} Gram "
                f"matrix per column of X ({shape[1] * k * k * 8 / 2**20:.0f} MiB for "
                f"{shape[1]} columns); use solver='mu', whose memory does not grow so")
        compressed = self.solver == "compressed"
        if compressed and resume:
            raise ValueError("resume=True: solver 'compressed' writes no checkpoints")
        checkpointer, state = (None, None) if compressed else self._checkpointing(
            shape, dtype, k, resume, ex)
        if state is None and init == "custom":
            H = _check_factor(H, (k, shape[1]), dtype, "NMF (input H)")
            W = _check_factor(W, (shape[0], k), dtype, "NMF (input W)")
        elif state is None and (W is not None or H is not None):
            warnings.warn(
                "When init!='custom', provided W or H are ignored. Set "
                " init='custom' to use them as initialization.",
                RuntimeWarning, stacklevel=3,
            )
        resident = self._keep_resident(ex)
        scratch = None if compressed else self._scratch(ex, shape, dtype, k, checkpointer,
                                                        resident)
        # Every check that reads no data is done: now V may be read into memory.
        if resident:
            ex.make_resident()
        try:
            result = self._run(ex, shape, dtype, k, init, W, H, compressed, checkpointer,
                               state, scratch, callback)
        finally:
            if scratch is not None:
                scratch.close()
        if not result.converged and self.tol > 0:
            warnings.warn(
                f"Maximum number of iterations {self.max_iter} reached. Increase it to "
                "improve convergence.", ConvergenceWarning, stacklevel=3,
            )
        return ex.assemble(result.W_blocks, k, dtype), result.H, result.n_iter, result

    def _run(self, ex: Any, shape: tuple[int, int], dtype: np.dtype, k: int, init: str,
             W: Any, H: Any, compressed: bool, checkpointer: Checkpointer | None,
             state: FitState | None, scratch: Scratch | None,
             callback: Callable[[IterationInfo], None] | None) -> FitResult:
        """Initialize (unless resuming) and fit: the parameters are checked."""
        penalty = Penalty.from_alphas(shape, self.alpha_W, self.alpha_H, self.l1_ratio)
        beta = beta_to_float(self.beta_loss)
        if compressed:
            result: FitResult = fit_compressed(
                ex, shape=shape, dtype=dtype, n_components=k, init=init, W=W, H=H,
                random_state=self.random_state, penalty=penalty, tol=self.tol,
                max_iter=self.max_iter, inner_sweeps=self.inner_sweeps, shuffle=self.shuffle,
                callback=callback, verbose=self.verbose,
            )
        else:
            if state is not None:
                initial = Initial([], state.H, None, passes=0)
            elif init == "custom":
                initial = Initial(ex.split(W), H.copy(), None, passes=0)
            else:
                initial = initialize(ex, shape, dtype, k, init, self.random_state,
                                     beta=beta, missing=self.missing, scratch=scratch)
            result = fit(
                ex, initial, shape=shape, dtype=dtype, solver=self.solver, penalty=penalty,
                tol=self.tol, max_iter=self.max_iter, inner_sweeps=self.inner_sweeps,
                shuffle=self.shuffle, random_state=self.random_state, callback=callback,
                verbose=self.verbose, resume=state, checkpointer=checkpointer, beta=beta,
                missing=self.missing, scratch=scratch,
            )
        return result

    def _scratch(self, ex: Any, shape: tuple[int, int], dtype: np.dtype, k: int,
                 checkpointer: Checkpointer | None, resident: bool) -> Scratch | None:
        """Where W is kept between passes, if not in the workers' memory (``store_W``;
        ``resident``: V will be held in the workers' memory)."""
        if self.store_W is False:
            return None
        if self.store_W is True:
            if not isinstance(ex, DaskExecutor):
                raise ValueError(
                    "store_W=True applies to out-of-core X (a Zarr store, zarr.Array or dask "
                    "array); an in-memory X keeps W in this process")
            if checkpointer is None:
                raise ValueError(
                    "store_W=True needs checkpoint=PATH, a folder every worker sees (on the "
                    "embedded cluster a temporary folder is used; on the command line, "
                    "--checkpoint-every N checkpoints into the output store)")
        else:
            if not isinstance(ex, DaskExecutor) or resident:
                return None
            limit = cluster.worker_memory_limit(ex.client)
            share = shape[0] * k * np.dtype(dtype).itemsize / cluster.n_workers(ex.client)
            if not limit or share <= W_FRACTION * limit:
                return None
            if checkpointer is None:
                logger.warning(
                    "W takes %.0f MiB of each worker's %.0f MiB; pass checkpoint=PATH (a folder "
                    "every worker sees) to keep it in files between passes instead (store_W)",
                    share / 2**20, limit / 2**20)
                return None
        return Scratch(os.path.join(checkpointer.root, "scratch"), len(ex.row_bounds))

    def _checkpointing(
        self, shape: tuple[int, int], dtype: np.dtype, k: int, resume: bool, ex: Any
    ) -> tuple[Checkpointer | None, FitState | None]:
        """The fit's checkpointer and the state to resume from.

        Without ``checkpoint``, a fit on the embedded cluster still checkpoints (every 10
        iterations, into a temporary folder removed at exit) so that a worker dying mid-fit
        costs only the iterations since; on other clusters that needs ``checkpoint=`` on a
        filesystem the workers share.
        """
        if self.checkpoint is None:
            if resume:
                raise ValueError("resume=True needs checkpoint=PATH, the Zarr group to resume from")
            if isinstance(ex, DaskExecutor) and ex.local:
                return Checkpointer(_recovery_dir(), {}, every=10), None
            return None, None
        params = {name: getattr(self, name) for name in _PROBLEM_PARAMS}
        params = {key: v if v is None or isinstance(v, (str, int, float, bool)) else repr(v)
                  for key, v in params.items()}
        params.update(n_components=k, shape=list(shape), dtype=str(dtype))
        state = None
        if resume:
            loaded = checkpoint.load(self.checkpoint)
            if loaded is not None:
                state, saved = loaded
                differ = sorted(key for key in params if saved.get(key) != params[key])
                if differ:
                    raise ValueError(
                        f"The checkpoint in {os.fspath(self.checkpoint)!r} is for another "
                        "problem; these differ: " + ", ".join(
                            f"{key}={saved.get(key)!r} (now {params[key]!r})" for key in differ))
        every = self.checkpoint_every
        if every is None and self.checkpoint_seconds is None:
            every = 10
        return Checkpointer(self.checkpoint, params, every, self.checkpoint_seconds), state

    def _solve_W(
        self, ex: Any, H: np.ndarray, shape: tuple[int, int], dtype: np.dtype, compute: bool
    ) -> tuple[Any, int]:
        """W for fixed H: one pass over V, each row solved to ``tol`` (at most ``max_iter``
        HALS sweeps). Lazy for dask inputs unless ``compute``."""
        H = H.astype(dtype, copy=False)
        H64 = H.astype(np.float64)
        penalty = Penalty.from_alphas(shape, self.alpha_W, self.alpha_H, self.l1_ratio)
        beta = beta_to_float(self.beta_loss)
        kind = update_kind(beta, self.missing, self.solver)
        if kind == "masked_hals":
            outs = ex.map(
                masked_transform_block, ex.blocks(), H=H, HHt=H64 @ H64.T,
                missing=self.missing, l1=penalty.l1_W, l2=penalty.l2_W,
                max_iter=self.max_iter, tol=self.tol,
            )
        elif kind == "frobenius":
            outs = ex.map(
                transform_block, ex.blocks(), H=H, HHt=H64 @ H64.T,
                update=hals.update, l1=penalty.l1_W, l2=penalty.l2_W, max_iter=self.max_iter,
                tol=self.tol,
            )
        else:
            outs = ex.map(
                beta_transform_block, ex.blocks(), H=H, beta=beta,
                gamma=mu.mm_exponent(beta), l1=penalty.l1_W, l2=penalty.l2_W,
                missing=self.missing, max_iter=self.max_iter, tol=self.tol,
            )
        blocks = ex.take(outs, 0)
        n_iter = self.max_iter
        if compute:
            blocks, sums = ex.run(blocks, ex.total(ex.take(outs, 1)))
            n_iter = int(sums["max_iter_done"])
        return ex.assemble(blocks, H.shape[0], dtype), n_iter

    def transform(self, X: Any) -> Any:
        """W for new data with the learned H (one pass over X; lazy for dask inputs).

        Frobenius loss: each row is a non-negative least-squares problem solved by HALS to
        ``tol``, whatever the ``solver`` used for fitting (the problem is convex, so the
        answer is the same; HALS gets there in fewer sweeps); with missing entries each row
        has its own Gram matrix (:func:`bignmf.passes.masked_transform_block`). Other
        beta-divergences, and masked fits made with ``solver='mu'``: multiplicative updates
        of W with H fixed, as scikit-learn's ``transform`` with ``solver='mu'`` (W starts at
        ``sqrt(mean(X_i) / k)`` for each row block ``X_i``, and stops on ``tol`` per block;
        see :func:`bignmf.passes.beta_transform_block`). With ``missing``, only the observed
        entries of X are used; ``transform(X) @ components_`` predicts the missing ones.
        """
        check_is_fitted(self)
        if not io.is_out_of_core(X):
            validate_data(self, X, accept_sparse=("csr", "csc"),
                          dtype=[np.float64, np.float32], reset=False, ensure_non_negative=True,
                          ensure_all_finite="allow-nan" if self.missing == "nan" else True)
        ex, shape, dtype = self._prepare(X, reset=False)
        check_missing(ex.meta, self.missing)
        W, _ = self._solve_W(ex, self.components_, shape, dtype, compute=False)
        return W

    def inverse_transform(self, X: Any) -> Any:
        """``X @ components_``: the data reconstructed from W (dask in, dask out)."""
        check_is_fitted(self)
        return X @ self.components_

    @property
    def _n_features_out(self) -> int:
        return int(self.components_.shape[0])

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _recovery_dir() -> str:
    """A fresh temporary folder for recovery checkpoints, removed when Python exits."""
    path = tempfile.mkdtemp(prefix="bignmf-recovery-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _check_factor(A: Any, shape: tuple[int, int], dtype: np.dtype, whom: str) -> Any:
    """scikit-learn's ``_check_init`` plus its dtype rule, for NumPy or dask factors."""
    if A is None:
        raise ValueError(f"Array passed to {whom} is None; init='custom' needs both W and H")
    if not isinstance(A, da.Array):
        A = np.asarray(A)
    if tuple(A.shape) != shape:
        raise ValueError(f"Array with wrong shape passed to {whom}. Expected {shape}, "
                         f"but got {tuple(A.shape)} ")
    if A.dtype != dtype:
        raise TypeError(f"{whom.split('(input ')[-1].rstrip(')')} should have the same dtype "
                        f"as X. Got {A.dtype}, expected {dtype}.")
    if not isinstance(A, da.Array):
        if not np.all(np.isfinite(A)):
            raise ValueError(f"Array passed to {whom} contains NaN or infinity")
        if A.size and A.min() < 0:
            raise ValueError(f"Negative values in data passed to {whom}")
        if np.max(A) == 0:
            raise ValueError(f"Array passed to {whom} is full of zeros.")
    return A


def non_negative_factorization(
    X: Any, W: Any = None, H: Any = None, n_components: int | str | None = "auto", *,
    init: str | None = None, update_H: bool = True, solver: str = "cd",
    beta_loss: str | float = "frobenius", tol: float = 1e-4, max_iter: int = 200,
    alpha_W: float = 0.0, alpha_H: float | str = "same", l1_ratio: float = 0.0,
    random_state: Any = None, verbose: int = 0, shuffle: bool = False,
) -> tuple[Any, np.ndarray, int]:
    """scikit-learn's :func:`~sklearn.decomposition.non_negative_factorization`, out of core.

    Returns ``(W, H, n_iter)``. With ``update_H=False``, H is fixed and W is solved in one
    pass over X.
    """
    est = NMF(
        n_components=n_components, init=init, solver=solver, beta_loss=beta_loss, tol=tol,
        max_iter=max_iter, random_state=random_state, alpha_W=alpha_W, alpha_H=alpha_H,
        l1_ratio=l1_ratio, verbose=verbose, shuffle=shuffle,
    )
    est._validate_params()
    W_out, H_out, n_iter, _ = est._fit_transform(X, W=W, H=H, update_H=update_H)
    return W_out, H_out, n_iter


@dataclass
class NMFResult:
    """What :func:`nmf` returns."""

    W: Any
    H: np.ndarray
    n_iter: int
    reconstruction_err: float
    converged: bool
    loss_history: list[float] = field(default_factory=list)


def nmf(X: Any, n_components: int | str | None = "auto", **params: Any) -> NMFResult:
    """Factorize X and return an :class:`NMFResult` (``W``, ``H``, ``n_iter``,
    ``reconstruction_err``, ``converged``, ``loss_history``).

    ``params`` are :class:`NMF`'s constructor parameters, plus ``W``, ``H`` (with
    ``init='custom'``) and ``callback``.
    """
    fit_args = {key: params.pop(key) for key in ("W", "H", "callback") if key in params}
    est = NMF(n_components=n_components, **params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        W = est.fit_transform(X, **fit_args)
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return NMFResult(W, est.components_, est.n_iter_, est.reconstruction_err_, converged,
                     est.loss_history_)


def load(path: str | os.PathLike[str]) -> NMF:
    """A fitted :class:`NMF` from a result store written by ``bignmf fit`` (or
    :func:`bignmf.io.write_result`), ready for ``transform``/``inverse_transform``.

    ``W`` of the fit stays in the store; open it lazily with
    ``dask.array.from_zarr(path, component="W")``.
    """
    group, attrs = io.read_result(path)
    if attrs.get("status") != "complete":
        raise ValueError(f"{os.fspath(path)!r} holds no complete result (status "
                         f"{attrs.get('status')!r}); finish it with `bignmf resume`")
    saved = attrs.get("params", {})
    params = {key: value for key, value in saved.items()
              if key in NMF().get_params() and not key.startswith("checkpoint")}
    model = NMF(**params)
    H = np.asarray(group["H"][...])  # type: ignore[index]
    model.components_ = H
    model.n_components_ = H.shape[0]
    model.n_features_in_ = H.shape[1]
    model.n_iter_ = int(attrs["n_iter"])
    model.reconstruction_err_ = float(attrs["reconstruction_err"])
    model.loss_history_ = [float(x) for x in np.asarray(group["loss_history"][...])]  # type: ignore[index]
    return model
