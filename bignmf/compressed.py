"""Compressed NMF: HALS on a randomized sketch of V, then a few exact HALS passes.

``solver='compressed'`` (Frobenius loss) follows Erichson, Mendible, Wihlborn & Kutz (2018,
"Randomized nonnegative matrix factorization", Pattern Recognition Letters 104), with the
range finder of Halko, Martinsson & Tropp (2011, "Finding structure with randomness", SIAM
Review 53) computed block by block:

1. **Sketch** (``1 + power_iterations`` passes over V). A Gaussian ``Omega`` (n x l) and
   ``Z = V^T V Omega`` (one pass, which also validates V and gives ``||V||^2``); each
   further power iteration is one pass ``Z <- V^T V orth(Z)``; the last pass forms
   ``Y = V orth(Z)`` (m x l, kept on the workers in row blocks, like W), ``Y^T Y`` and
   ``V^T Y``. ``Q = Y T`` is orthonormalized from Gram matrices only (two rounds of
   ``T = G^(-1/2)``, the eigenvalue variant of CholeskyQR2, which also drops the null
   directions of an exactly low-rank V), and ``B = Q^T V = (V^T Y T)^T`` (l x n) comes
   from the same pass.
2. **Initialization** from the sketch, no pass: NNDSVD(a/ar) from the SVD of ``Q B`` (the
   SVD of the small B), as :mod:`bignmf.init` does from its own sketch; ``'random'`` and
   ``'custom'`` as there.
3. **Compressed iterations** (no pass over V): exact HALS block coordinate descent on
   ``min ||Q B - W H||^2`` — for W, per row block ``P_i = Q_i (B H^T)`` and ``H H^T``
   (non-negativity enforced in the full space, as Erichson et al.); for H, ``(Q^T W)^T B``
   and ``W^T W``. The objective ``||V||^2 - 2 <(Q^T W)^T B, H> + <W^T W, H H^T>`` (which is
   ``||Q B - W H||^2 + ||V||^2 - ||B||^2``) decreases monotonically and stops the phase on
   ``tol``, or at ``max_iter``.
4. **Polishing** (``polish_iter`` passes): exact HALS iterations of :func:`bignmf.fit.fit`
   from the compressed W, H; the first of them measures the exact objective.

Cost model (m x n matrix V, ``k`` components, sketch width ``l = min(max(2k, k + 10), m,
n)``, ``q`` power iterations, ``p`` polishing iterations):

* passes over V: ``1 + q + p`` (defaults 1 + 2 + 3 = 6), against one per iteration for
  the exact fit; each sketch pass does ``4 m n l`` flops (two GEMMs of width l, about
  ``l / k`` exact passes' compute), each polishing pass is one exact iteration;
* memory beside V's blocks: ``Q`` (``m x l`` float64 on the workers, beside W: ``2 l / n``
  of a float32 V's size) and ``B`` (``l x n``, here);
* per compressed iteration: ``O((m + n) l k + (m + n) k^2 sweeps)`` flops (no I/O): for
  dense V far cheaper than a pass (``4 m n k`` flops plus reading V). When ``Q`` and W
  take at most :data:`LOCAL_ITERATIONS_BYTES` (``m (l + k)`` floats) they are gathered
  once and the iterations run in this process, one block per core
  (:class:`~bignmf.executor.Eager`): a few milliseconds each instead of a scheduler
  round trip over every block (measured 19 ms -> 13 ms per iteration, 100000 x 1000, k=10,
  threaded scheduler); W then goes back to the workers for polishing. Otherwise one task
  per row block on the resident ``Q_i``, ``W_i``.

When accuracy suffers: the compressed problem is the exact one for ``Q Q^T V``, so it is
only as good as the sketch. With fast spectral decay (a low-rank signal plus modest noise:
``sigma_{k+1} << sigma_k``) the top-k subspace is captured to high accuracy: the sketch
phase alone ends within 0.1% of the exact HALS objective, and after polishing the fit is
as good as the exact one (often slightly better: it runs more, cheap, iterations). With
slow decay — flat singular values, noise-dominated data, ``n_components`` beyond the rank
of the signal — the top-l subspace is ill-determined and the compressed phase fits the
wrong subspace. Measured on uniform noise (3000 x 300, k=30): the sketch phase ends 1.9%
above the exact objective (5% without power iterations, 1.1% with 4), and 0.6% above
after the 3 polishing passes (see ``tests/test_compressed.py``). More power iterations
(one pass each) sharpen the decay (``sigma^(2q+1)``), a wider sketch helps too; else use
the exact solver. The objective of the compressed phase is itself estimated from the
sketch (its error is ``2 <(I - Q Q^T) V, W H>``); the polishing passes report exact values.
Only the Frobenius loss without missing entries is supported, and no checkpoints are
written (a worker lost during the fit fails it; W, Q live on the workers).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

from bignmf.executor import Eager
from bignmf.fit import (
    FitResult,
    IterationInfo,
    fit,
    report,
    stopping,
)
from bignmf.init import Initial, nndsvd_from_svd, power_basis, random_factors
from bignmf.losses import Penalty
from bignmf.passes import HRule, Sums, check_stats, h_step, project_block
from bignmf.solvers import SweepRule, hals, mu, small_blas, thread_budget

logger = logging.getLogger(__name__)

#: Power iterations of the range finder (one pass over V each).
POWER_ITERATIONS = 2
#: The sweep rule of the compressed iterations (``inner_sweeps='auto'``): at most 10 HALS
#: sweeps per update, stopping at 0.1 of the first sweep's change. The exact fit's rule
#: (:data:`bignmf.solvers.hals.AUTO_SWEEPS`, 20 and 0.01) ended this phase further from the
#: exact objective on low rank plus noise (0.2% above instead of 0.4% below). The
#: polishing passes are exact iterations and take the exact fit's rule.
SKETCH_SWEEPS = SweepRule(cap=10, tol=0.1)
#: Exact HALS iterations after the compressed ones (one pass over V each).
POLISH_ITER = 3
#: Sketch width ``l = max(2k, k + OVERSAMPLES)``, capped at ``min(m, n)``.
OVERSAMPLES = 10
#: The compressed iterations run in this process (blocks side by side in threads, see
#: :class:`bignmf.executor.Eager`) when Q and W (``m (l + k)`` floats) take at most this
#: many bytes: each iteration is then a few milliseconds of thin products rather than a
#: scheduler round trip over every block.
LOCAL_ITERATIONS_BYTES = 256 * 2**20
#: Eigenvalues of a Gram matrix ``Y^T Y`` below this fraction of the largest are null
#: directions (an exactly low-rank V): dropped from the basis.
GRAM_RTOL = 1e-12


@dataclass
class CompressedFitResult(FitResult):
    """:class:`bignmf.fit.FitResult` with what the compressed fit did.

    ``n_iter`` counts compressed and polishing iterations; ``loss_history`` holds the
    compressed objectives (from the sketch), then the exact objectives of the polishing
    passes, the first of which replaces the estimate for the same W, H.
    """

    passes: int = 0
    n_compressed_iter: int = 0
    sketch_width: int = 0


def sketch_width(n_components: int, shape: tuple[int, int]) -> int:
    """``l = max(2k, k + OVERSAMPLES)``, at most ``min(m, n)``."""
    return min(max(2 * n_components, n_components + OVERSAMPLES), *shape)


def fit_compressed(
    ex: Any,
    *,
    shape: tuple[int, int],
    dtype: np.dtype,
    n_components: int,
    init: str,
    W: Any = None,
    H: np.ndarray | None = None,
    random_state: Any = None,
    penalty: Penalty | None = None,
    tol: float = 1e-4,
    max_iter: int = 200,
    inner_sweeps: int | str = "auto",
    shuffle: bool = False,
    callback: Callable[[IterationInfo], None] | None = None,
    verbose: int = 0,
    power_iterations: int = POWER_ITERATIONS,
    polish_iter: int = POLISH_ITER,
    width: int | None = None,
) -> CompressedFitResult:
    """Fit ``V ~ W H`` by HALS on a sketch of V, then ``polish_iter`` exact iterations.

    See the module docstring for the algorithm and its costs: ``1 + power_iterations +
    polish_iter`` passes over V in all (fewer polishing passes if they meet ``tol``).

    Parameters
    ----------
    ex : Eager or DaskExecutor
    shape, dtype : V's
    n_components : int
    init : str
        A resolved init (:func:`bignmf.init.resolve_init`); ``'custom'`` takes ``W`` (as
        an array split by ``ex``) and ``H``.
    random_state
        Draws the sketch, then the random parts of the initialization.
    penalty, tol, max_iter, inner_sweeps, shuffle, callback, verbose
        As :func:`bignmf.fit.fit`; ``max_iter`` bounds the compressed iterations, ``tol``
        stops both phases. ``callback`` sees the compressed iterations (objectives from the
        sketch), then the polishing ones, numbered on.
    power_iterations : int
        ``q >= 0``; the sketch is ``(V V^T)^q V Omega``.
    polish_iter : int
        Exact iterations at the end (``0``: the compressed W, H are returned as they are).
    width : int, optional
        Sketch width ``l`` (default :func:`sketch_width`), at least ``n_components``.

    Returns
    -------
    CompressedFitResult
    """
    m, n = shape
    k = n_components
    penalty = penalty or Penalty()
    rng = check_random_state(random_state)
    l = min(width or sketch_width(k, shape), m, n)
    if l < min(k, m, n):
        raise ValueError(f"the sketch width ({l}) must be at least n_components ({k})")
    t_start = time.perf_counter()

    threads = thread_budget()  # read before the one-thread BLAS limit below
    Omega = rng.standard_normal(size=(n, l))
    Y_blocks, sums, stats = _range_finder(ex, Omega, power_iterations)
    sq_norm_V = float(stats["sumsq"])
    sweeps_W = SKETCH_SWEEPS.sweeps(inner_sweeps, n / k)
    sweeps_H = SKETCH_SWEEPS.sweeps(inner_sweeps, m / k)
    sweep_tol = SKETCH_SWEEPS.stop(inner_sweeps)
    order_rng = check_random_state(random_state) if shuffle else None
    total_iter = max_iter + polish_iter
    history: list[float] = []
    loss_sq, converged, it = np.nan, False, 0

    # From here to the polishing passes nothing reads V: only thin products (inner
    # dimension l or k) and sweeps, which one BLAS thread does fastest (and a limit set
    # once per phase, not per call, is nearly free).
    with small_blas():
        Q_blocks, B = _orthonormalize(ex, Y_blocks, sums)
        del Y_blocks
        logger.debug("compressed NMF: sketch of width %d (%d kept), %d passes, %.3fs, "
                     "||B||^2 / ||V||^2 = %.6g", l, B.shape[0], power_iterations + 1,
                     time.perf_counter() - t_start,
                     float(np.vdot(B, B)) / max(sq_norm_V, 1e-300))
        if init == "custom":
            W_blocks, H = ex.split(W), np.array(H, dtype=dtype)
        elif init == "random":
            W_blocks, H = random_factors(ex, shape, dtype, k, rng, stats)
        else:
            W_blocks, H = _nndsvd_start(ex, Q_blocks, B, k, init, rng, stats, shape, dtype)
        here = ex  # where the compressed iterations run
        if ex.lazy and m * (B.shape[0] + k) * 8 <= LOCAL_ITERATIONS_BYTES:
            Q, W_now = ex.compute(ex.assemble(Q_blocks, B.shape[0], np.float64),
                                  ex.assemble(W_blocks, k, dtype))
            here = Eager(Q, threads=threads)
            Q_blocks, W_blocks = here.blocks(), here.split(W_now)
            del Q, W_now

        # The update of H and the objective are those of an exact iteration
        # (:func:`~bignmf.passes.h_step`) on the sketch's sums: ``W^T V ~ (Q^T W)^T B``.
        rule = HRule("frobenius", hals.update, penalty, sweep_tol, None, 2.0,
                     mu.mm_exponent(2.0))
        HHt = rule.gram(H)
        while it < max_iter and not converged:
            it += 1
            t0 = time.perf_counter()
            first = not history
            H64 = H.astype(np.float64)
            order_W = order_rng.permutation(k) if order_rng is not None else None
            order_H = order_rng.permutation(k) if order_rng is not None else None
            outs = here.map(
                _compressed_W_step, Q_blocks, W_blocks, BHt=B @ H64.T,
                HHt=HHt, l1=penalty.l1_W, l2=penalty.l2_W, max_sweeps=sweeps_W,
                sweep_tol=sweep_tol, order=order_W, initial_loss=first,
            )
            W_blocks, sums = here.run(here.take(outs, 0), here.total(here.take(outs, 1)))
            step = Sums(WtV=sums["QtW"].T @ B, WtW=sums["WtW"], W_sum=sums["W_sum"])
            if first:
                step.update(cross0=float(np.vdot(sums["QtW0"].T @ B, H64)),
                            quad0=float(np.vdot(sums["WtW0"], HHt)), W_sum0=sums["W_sum0"],
                            W_sq0=float(np.trace(sums["WtW0"])))
            H, HHt, info = h_step(step, H, rule, sweeps=sweeps_H, sq_norm_V=sq_norm_V,
                                  first=first, order=order_H)
            history.extend(info["objectives"])
            loss_sq = info["loss_sq"]
            decrease, converged = stopping(history, tol)
            report("compressed iteration (objective from the sketch)", it, total_iter,
                   history[-1], loss_sq, decrease, t0, t_start, verbose, callback)
    del Q_blocks  # the polishing passes need only W (and V)
    if here is not ex:  # W back to the workers, in V's row blocks
        W_blocks = ex.split(here.assemble(W_blocks, k, dtype))

    passes = power_iterations + 1
    if polish_iter == 0:
        return CompressedFitResult(
            W_blocks=W_blocks, H=H, n_iter=it, converged=converged,
            reconstruction_err=float(np.sqrt(loss_sq)), loss_history=history,
            stats=dict(stats), passes=passes, n_compressed_iter=it, sketch_width=B.shape[0])

    def shifted(info: IterationInfo) -> None:
        assert callback is not None
        callback(dataclasses.replace(info, iteration=it + info.iteration, max_iter=total_iter,
                                     elapsed=time.perf_counter() - t_start))

    polished = fit(
        ex, Initial(W_blocks, H, stats, passes=0), shape=shape, dtype=dtype, solver="cd",
        penalty=penalty, tol=tol, max_iter=polish_iter, inner_sweeps=inner_sweeps,
        shuffle=shuffle, random_state=order_rng, verbose=verbose,
        callback=shifted if callback is not None else None,
    )
    return CompressedFitResult(
        W_blocks=polished.W_blocks, H=polished.H, n_iter=it + polished.n_iter,
        converged=converged or polished.converged,
        reconstruction_err=polished.reconstruction_err,
        loss_history=history[:-1] + polished.loss_history, stats=polished.stats,
        passes=passes + polished.n_iter, n_compressed_iter=it, sketch_width=B.shape[0],
    )


# --------------------------------------------------------------------------- the sketch
def _range_finder(ex: Any, Omega: np.ndarray, power_iterations: int
                  ) -> tuple[list[Any], Sums, Sums]:
    """``Y = V P`` (row blocks, float64, on the workers) for ``P`` an orthonormal basis of
    ``(V^T V)^q Omega``, the sums ``CtC = Y^T Y`` and ``VtC = V^T Y``, and V's
    :func:`~bignmf.passes.block_stats` (checked): ``1 + power_iterations`` passes."""
    P, stats = power_basis(ex, Omega, power_iterations)
    outs = ex.map(project_block, ex.blocks(), Q=P, stats=stats is None,
                  with_VtC=True)
    Y_blocks, sums = ex.run(ex.take(outs, 0), ex.total(ex.take(outs, 1)))
    if stats is None:
        check_stats(sums)
        stats = Sums({key: v for key, v in sums.items() if key not in ("VtC", "CtC")})
    return Y_blocks, sums, stats


def _orthonormalize(ex: Any, Y_blocks: list[Any], sums: Sums) -> tuple[list[Any], np.ndarray]:
    """Blocks of ``Q = Y T`` (orthonormal, m x l') and ``B = Q^T V = (V^T Y T)^T``.

    ``T`` solves ``T^T (Y^T Y) T = I`` in two rounds, the second correcting the rounding of
    the first (CholeskyQR2, Fukaya et al. 2014, with eigenvalues instead of Cholesky so
    that null directions are dropped), from Gram matrices only: no m x l array here.
    Two passes over the resident Y blocks (``O(m l^2)`` flops each), none over V.
    """
    T = _inverse_sqrt(sums["CtC"])
    _, second = ex.run([], ex.total(ex.map(_gram, Y_blocks, T=T)))
    T = T @ _inverse_sqrt(second["G"])
    Q_blocks, _ = ex.run(ex.map(_times, Y_blocks, T=T))
    return Q_blocks, np.ascontiguousarray((sums["VtC"] @ T).T)


def _inverse_sqrt(G: np.ndarray) -> np.ndarray:
    """``T`` (l x l') with ``T^T G T = I`` on the directions whose eigenvalue exceeds
    ``GRAM_RTOL`` times the largest (``l' >= 1``)."""
    evals, U = np.linalg.eigh(G)
    top = max(float(evals[-1]), np.finfo(np.float64).tiny)
    keep = evals > GRAM_RTOL * top
    keep[-1] = True
    keep = keep[::-1]  # largest first
    evals, U = evals[::-1][keep], U[:, ::-1][:, keep]
    return U / np.sqrt(np.maximum(evals, np.finfo(np.float64).tiny))


def _gram(Y: np.ndarray, T: np.ndarray) -> Sums:
    YT = Y @ T
    return Sums(G=YT.T @ YT)


def _times(Y: np.ndarray, T: np.ndarray) -> np.ndarray:
    return Y @ T


# --------------------------------------------------------------------------- initialization
def _nndsvd_start(ex: Any, Q_blocks: list[Any], B: np.ndarray, k: int, init: str, rng: Any,
                  stats: Sums, shape: tuple[int, int], dtype: np.dtype
                  ) -> tuple[list[Any], np.ndarray]:
    """NNDSVD (Boutsidis & Gallopoulos 2008, as scikit-learn) of ``Q B``: its SVD is
    ``(Q Ub) S Vt`` with ``B = Ub S Vt``; W is made on the workers from ``U = Q Ub``."""
    Ub, S, Vt = np.linalg.svd(B, full_matrices=False)
    if S.size < k:  # an exactly low-rank V: the missing singular values are zero
        pad = k - S.size
        Ub = np.pad(Ub, ((0, 0), (0, pad)))
        S, Vt = np.pad(S, (0, pad)), np.pad(Vt, ((0, pad), (0, 0)))
    Ub, S, Vt = Ub[:, :k], S[:k], Vt[:k]
    tiny = S[0] * 1e-7 < S if S[0] > 0 else np.zeros(k, dtype=bool)
    M = np.where(tiny, Ub, 0.0)  # U = Q M

    return nndsvd_from_svd(ex, Q_blocks, M, S, Vt, init, rng, stats, shape, dtype)


# --------------------------------------------------------------------------- iterations
def _compressed_W_step(
    Q: np.ndarray, W: np.ndarray, *, BHt: np.ndarray, HHt: np.ndarray, l1: float, l2: float,
    max_sweeps: int, sweep_tol: float, order: np.ndarray | None, initial_loss: bool,
) -> tuple[np.ndarray, Sums]:
    """HALS on a row block of W for ``min ||Q_i B - W_i H||``: ``P_i = (Q_i B H^T)^T``.

    Reads no V: ``Q_i`` and ``W_i`` are resident. Runs under the caller's one-thread BLAS
    limit (:func:`~bignmf.solvers.small_blas`; dask workers run one thread). Rows stop
    sweeping on their own (:func:`bignmf.solvers.hals.sweep_columns`), so the result does not
    depend on the blocks.
    Returns the new ``W_i`` and ``QtW`` (``Q_i^T W_i``, l x k), ``WtW``, ``W_sum`` (and the
    same of the incoming ``W_i`` with ``initial_loss``). ``O(r l k + r k^2 sweeps)`` flops.
    """
    out = Sums()
    if initial_loss:
        F64 = W.T.astype(np.float64)
        out.update(QtW0=(F64 @ Q).T, WtW0=F64 @ F64.T, W_sum0=F64.sum(axis=1))
    F = np.array(W.T, order="C")
    P = np.ascontiguousarray((Q @ BHt).T, dtype=F.dtype)
    F, sweeps = hals.update(F, P, HHt, l1, l2, max_sweeps, sweep_tol, order,
                            per_column=sweep_tol > 0)
    F64 = F.astype(np.float64)
    out.update(QtW=(F64 @ Q).T, WtW=F64 @ F64.T, W_sum=F64.sum(axis=1), max_sweeps=sweeps)
    return F.T, out
