"""The iteration: one pass over V per iteration, then the update of H from its small sums.

Per iteration (Frobenius loss)::

    for each row block i, in one task:            # one read of V_i
        W_i  <- update(W_i; H V_i^T, HHt)         # solver sweeps, O(r k^2) each
        WtV += W_i^T V_i ;  WtW += W_i^T W_i      # k x n and k x k partial sums
    with the last of those sums (h_step):
        H <- update(H; WtV, WtW)                  # O(n k^2) per sweep
        loss = ||V||^2 - 2 <WtV, H> + <WtW, H H^T>    # no extra pass
        HHt = H H^T                               # for the next pass

The executor decides where and when these run: in this process, or on a cluster, where
the update of H is a task and, with V resident on the workers, the next iteration is
started before this process has the previous one's loss (``lookahead``), so an iteration
waits on no round trip to the client. This module decides *what* runs and when to stop:
``tol`` on the relative decrease of the objective between iterations, with
:class:`~sklearn.exceptions.ConvergenceWarning` raised by the estimator at ``max_iter``.
An iteration started after the converged one is dropped: the result is that of a fit that
waited for every loss.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.utils import check_random_state

from bignmf.checkpoint import Checkpointer, FitState
from bignmf.init import Initial
from bignmf.losses import Penalty, beta_error
from bignmf.passes import HRule, Sums, beta_step, frobenius_step, h_step, masked_hals_step
from bignmf.scratch import Scratch, Spilling, loaded
from bignmf.solvers import get_solver, mu, sweep_rule

logger = logging.getLogger(__name__)

#: Consecutive recoveries from lost data before the fit gives up.
MAX_RECOVERIES = 3


@dataclass(frozen=True)
class IterationInfo:
    """What a progress display or a checkpoint callback learns after each iteration."""

    iteration: int
    max_iter: int
    objective: float
    reconstruction_err: float
    rel_decrease: float
    seconds: float
    elapsed: float


@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    W_blocks: list[Any]
    H: np.ndarray
    n_iter: int
    converged: bool
    reconstruction_err: float
    loss_history: list[float] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def nonzero_share(stats: Sums | None, shape: tuple[int, int]) -> float:
    """The share of V's entries that are non-zero, from the first pass's ``stats`` (1 before
    any pass has counted them).

    The products of a sparse V cost ``2 nnz k``, not ``2 m n k``, while a sweep costs the
    same, so the sweep rule scales its cost ratio by this share. It is counted from the
    values, not from the storage, so that the same matrix gives the same sweeps, and the same
    iterates, dense or sparse; a dense-stored V with many zeros then gets the fewer sweeps
    of its sparse form."""
    if not stats or "nnz" not in stats:
        return 1.0
    return max(1, int(stats["nnz"])) / (shape[0] * shape[1])


def fit(
    ex: Any,
    initial: Initial,
    *,
    shape: tuple[int, int],
    dtype: np.dtype,
    solver: str = "cd",
    penalty: Penalty | None = None,
    tol: float = 1e-4,
    max_iter: int = 200,
    inner_sweeps: int | str = "auto",
    shuffle: bool = False,
    random_state: Any = None,
    callback: Callable[[IterationInfo], None] | None = None,
    verbose: int = 0,
    resume: FitState | None = None,
    checkpointer: Checkpointer | None = None,
    beta: float = 2.0,
    missing: str | None = None,
    scratch: Scratch | None = None,
) -> FitResult:
    """Alternate W and H updates until ``tol`` or ``max_iter``; see the module docstring.

    Costs one pass over V per iteration (plus, in the first one, the checks of V when the
    initialization did not read it).

    ``resume`` continues from a checkpointed state (``initial`` is then unused): the
    iterates are those of an uninterrupted fit. ``checkpointer`` saves the state after
    initialization, after the iterations it says are due, and after the last one. When a
    pass fails because the cluster lost data (a worker died holding blocks of W), the fit
    goes back to the newest checkpoint and redoes the iterations since: the result is the
    same as without the failure.

    ``beta`` other than 2, or ``missing`` entries, take the multiplicative updates of
    :func:`bignmf.passes.beta_step` (``solver='mu'``): still one pass per iteration, whose
    loss is that of the iterate before it (the pass forms ``W H`` for the update anyway); one
    extra pass at the end gives the final loss. ``loss_history`` has the same meaning in
    both cases: the objective before the first iteration and after each.

    With a ``scratch`` (:mod:`bignmf.scratch`; it needs a ``checkpointer``), W lives in
    files between passes instead of in memory: each kernel reads its block and writes the
    new one, and the returned blocks read the final checkpoint's W. Generation ``t`` is
    deleted once iteration ``t + 2`` is taken.
    """
    m, n = shape
    k = initial.H.shape[0]
    penalty = penalty or Penalty()
    update, auto = get_solver(solver), sweep_rule(solver)
    # scikit-learn's shuffle=True: a new random order of the components for every update.
    rng = check_random_state(random_state) if shuffle else None
    if resume is not None and rng is not None and resume.rng_state is not None:
        rng.set_state(resume.rng_state)
    kind = update_kind(beta, missing, solver)
    sweep_tol = auto.stop(inner_sweeps)

    def sweeps(stats: Sums | None) -> tuple[int, int]:
        """Sweeps on W and on H; masks make the products cost more than the sweeps, not
        less (per-column Gram matrices): their ratio stays that of dense V."""
        share = nonzero_share(stats, shape) if kind == "frobenius" else 1.0
        return (auto.sweeps(inner_sweeps, share * n / k),
                auto.sweeps(inner_sweeps, share * m / k))

    gamma = mu.mm_exponent(beta)
    rule = HRule(kind, update, penalty, sweep_tol, missing, beta, gamma)
    W_blocks, H, stats = initial.W_blocks, initial.H, initial.stats
    # The fit owns the blocks from here: each is released once its successor exists, not
    # kept alive by the caller's ``initial`` for the whole fit.
    initial.W_blocks = []
    # H, H H^T and what the last pass learned, as one object: a tuple here, or on a
    # cluster the result of the task that updated H (kernels take its items in their tasks).
    Hs: Any = (H, rule.gram(H), None)
    del H
    history: list[float] = []
    loss_sq, converged = np.nan, False
    it = 1
    # Iterations started but not yet taken, in order: (the pass, the rng state after its
    # draws); the next one to start, and what it starts from.
    started: collections.deque[tuple[Any, Any]] = collections.deque()
    next_it, tail = it, (W_blocks, Hs)
    # The rng state after the draws of the last iteration taken (what a checkpoint holds:
    # the iteration started ahead has drawn since).
    rng_taken = _rng_state(rng)
    # Kernels with W on storage take a third per-block argument: where the new W goes.
    stored: Callable[[Any], Any] = Spilling if scratch is not None else (lambda kernel: kernel)

    def restore(state: FitState) -> None:
        nonlocal W_blocks, Hs, stats, history, loss_sq, converged, it, next_it, tail, rng_taken
        started.clear()  # (releases what they computed)
        if scratch is not None:
            scratch.reset()
        W_blocks = ex.split(state.W)
        H = np.asarray(state.H, dtype=dtype)
        Hs = (H, rule.gram(H), None)
        stats = Sums(state.stats) if state.stats else None
        history = list(state.history)
        loss_sq = float(state.extra.get("loss_sq", np.nan))
        converged = bool(state.extra.get("converged", False))
        if kind == "beta" and not converged:
            # A beta fit learns the loss of iterate t in pass t + 1; a checkpoint written at
            # the end of a fit (max_iter) also has the extra pass's value, which the next
            # pass recomputes.
            history = history[: state.iteration]
        it = next_it = state.iteration + 1
        tail = (W_blocks, Hs)
        if rng is not None and state.rng_state is not None:
            rng.set_state(state.rng_state)
        rng_taken = _rng_state(rng)

    def save(iteration: int) -> None:
        assert checkpointer is not None
        checkpointer.save(
            FitState(iteration, W_blocks, ex.value(ex.item(Hs, 0)), history,
                     dict(stats or {}), rng_taken,
                     {"loss_sq": loss_sq, "converged": converged}),
            ex.assemble(ex.map(loaded, W_blocks) if scratch is not None else W_blocks,
                        k, dtype))

    if resume is not None:
        restore(resume)
    elif checkpointer is not None:
        save(0)  # so that even a failure in the first interval can be recovered
    recoveries = 0

    def recover(err: Exception) -> None:
        """Go back to the newest checkpoint after the cluster lost data; else re-raise."""
        nonlocal recoveries
        saved = checkpointer.load() if checkpointer is not None else None
        if not ex.lost_data(err) or saved is None or recoveries >= MAX_RECOVERIES:
            raise err
        recoveries += 1
        logger.warning("iteration %d lost data on the cluster (%s); redoing from the "
                       "checkpoint of iteration %d", it, err, saved.iteration)
        restore(saved)

    beta_kw = dict(beta=beta, gamma=gamma, missing=missing)
    # The sums go to the update of H inside its tasks, with the kernels' whole results (no
    # task per block), when a block's W is no larger than its sums; else as tasks of their
    # own, so that large W blocks stay where they are.
    rows = max(b - a for a, b in ex.row_bounds)
    small_W = scratch is not None or rows * k * np.dtype(dtype).itemsize <= k * n * 8

    def sums_of(outs: list[Any]) -> list[Any]:
        return [ex.item(out, 1) for out in outs] if small_W else ex.take(outs, 1)

    def start(i: int, W_in: list[Any], Hs_in: Any) -> tuple[list[Any], Any]:
        """Start iteration ``i`` from ``W_in`` and ``Hs_in``: the pass over V, then the
        update of H in the task that adds up the pass's sums."""
        first = i == 1
        # With W in files, the next pass reads iteration i's W by name, not as a result of
        # this pass's tasks: it runs after the update of H, so after every kernel of this
        # pass, and the scheduler keeps no chain of tasks from one pass to the next.
        targets = [scratch.targets(i)] if scratch is not None else []
        order_W = rng.permutation(k) if rng is not None else None
        order_H = rng.permutation(k) if rng is not None else None
        # (a fit whose initialization read no V counts V's non-zeros in its first pass)
        sweeps_W, sweeps_H = sweeps(stats)
        H_in, HHt = ex.forward(Hs_in, 0, 1)
        if kind == "masked_hals":
            outs = ex.map(
                stored(masked_hals_step), ex.blocks(), W_in, *targets, H=H_in, HHt=HHt,
                missing=missing, l1=penalty.l1_W, l2=penalty.l2_W, max_sweeps=sweeps_W,
                sweep_tol=sweep_tol, order=order_W, initial_loss=first, stats=stats is None,
            )
        elif kind == "frobenius":
            outs = ex.map(
                stored(frobenius_step), ex.blocks(), W_in, *targets,
                H=H_in, HHt=HHt, update=update, l1=penalty.l1_W, l2=penalty.l2_W,
                max_sweeps=sweeps_W, sweep_tol=sweep_tol, order=order_W,
                initial_loss=first, stats=stats is None,
            )
        else:
            outs = ex.map(stored(beta_step), ex.blocks(), W_in, *targets, H=H_in,
                          l1=penalty.l1_W, l2=penalty.l2_W, stats=stats is None, **beta_kw)
        if targets:
            W_out = targets[0]
        elif ex.lookahead:
            # Passes started ahead (V resident): the next pass's kernels take W_i out of
            # this pass's results inside their own tasks, on the worker that has them. A
            # task per block to take it out ran, in some passes, only when the next kernel
            # asked for it: a scheduler round trip (~6 ms) before each kernel of the pass.
            # The results' k x n sums then live until the next pass's kernel: k / r of
            # the resident block of V.
            W_out = [ex.item(out, 0) for out in outs]
        else:
            W_out = ex.take(outs, 0)
        Hs_out = ex.reduce(sums_of(outs), h_step, H_in, rule, sweeps=sweeps_H,
                           sq_norm_V=None if stats is None else float(stats["sumsq"]),
                           first=first, order=order_H)
        pending = ex.start([*W_out, Hs_out], ex.take([Hs_out], 2)[0])
        started.append((pending, _rng_state(rng)))
        return pending.kept[:-1], pending.kept[-1]  # (the next pass starts from these)

    def beta_loss_pass() -> Sums:
        """The divergence of the current W, H: one pass (only at the end of a fit)."""
        outs = ex.map(stored(beta_step), ex.blocks(), W_blocks, H=ex.item(Hs, 0), update_W=False,
                      partials=False, **beta_kw)
        return ex.run([], ex.total(ex.take(outs, 1)))[1]

    start_time = t0 = time.perf_counter()
    while it <= max_iter and not converged:
        # Keep ``ex.lookahead`` iterations started beyond this one (on a cluster, the next
        # pass waits on nothing here), but none before the first pass has checked V.
        while next_it <= min(max_iter, it + (ex.lookahead if stats is not None else 0)):
            tail = start(next_it, *tail)
            next_it += 1
        # The previous iteration's W is needed only by the pass now running: without this
        # reference each of its blocks is freed once its kernel has run.
        W_blocks = []
        try:
            (*W_blocks, Hs), info = started[0][0].result()
        except Exception as err:
            recover(err)
            continue
        _, rng_taken = started.popleft()  # (no other reference to the previous W is left)
        if scratch is not None:
            scratch.release(it - 2)  # (iteration it - 1, if run again, reads it - 1's W)
        if stats is None:
            stats = Sums(info["stats"])
        history.extend(info["objectives"])
        loss_sq = info["loss_sq"]
        decrease, converged = stopping(history, tol)
        if converged:
            started.clear()  # the iteration started after a converged one is not taken
        if kind == "beta" and (converged or it == max_iter):
            try:
                last = beta_loss_pass()
            except Exception as err:
                recover(err)
                continue
            loss_sq = beta_error(last["div0"]) ** 2
            history.append(float(last["div0"]) + penalty.value(
                float(last["W_sum0"].sum()), last["W_sq0"], ex.value(ex.item(Hs, 0))))
            decrease = relative_decrease(history)
        report("iteration", it, max_iter, history[-1], loss_sq, decrease, t0, start_time,
               verbose, callback)
        t0 = time.perf_counter()
        if checkpointer is not None and (converged or it == max_iter or checkpointer.due(it)):
            try:
                save(it)
            except Exception as err:
                recover(err)
                continue
        recoveries = 0
        it += 1
    it -= 1
    if scratch is not None:
        # The last iteration always checkpoints: W is returned from there, and the
        # scratch folder can go.
        assert checkpointer is not None
        final = checkpointer.load()
        assert final is not None and final.iteration == it
        W_blocks = ex.split(final.W)
    return FitResult(
        W_blocks=W_blocks, H=ex.value(ex.item(Hs, 0)), n_iter=it, converged=converged,
        reconstruction_err=float(np.sqrt(loss_sq)), loss_history=history,
        stats=dict(stats or {}),
    )


def _rng_state(rng: Any) -> Any:
    return rng.get_state() if rng is not None else None


def stopping(history: list[float], tol: float) -> tuple[float, bool]:
    """The relative decrease of the objective over the last iteration, and whether the fit
    has converged: the decrease is below ``tol`` (when ``tol > 0``) or the objective is 0."""
    decrease = relative_decrease(history)
    return decrease, history[-1] <= 0 or (tol > 0 and decrease < tol)


def report(what: str, it: int, max_iter: int, objective: float, loss_sq: float,
           decrease: float, t0: float, start: float, verbose: int,
           callback: Callable[[IterationInfo], None] | None) -> None:
    """Log iteration ``it`` (begun at ``t0``, the fit at ``start``) and hand it to
    ``callback``."""
    now = time.perf_counter()
    info = IterationInfo(it, max_iter, objective, float(np.sqrt(loss_sq)), decrease,
                         now - t0, now - start)
    logger.log(logging.INFO if verbose else logging.DEBUG,
               "%s %d: objective %.6g, relative decrease %.3g, %.3fs",
               what, it, objective, decrease, info.seconds)
    if callback is not None:
        callback(info)


def relative_decrease(history: list[float]) -> float:
    """Relative decrease of the objective over the last iteration (inf before there are
    two values: a beta-divergence fit learns its first loss with its first pass)."""
    if len(history) < 2:
        return np.inf
    before, after = history[-2], history[-1]
    return (before - after) / before if before > 0 else 0.0


def update_kind(beta: float, missing: str | None, solver: str) -> str:
    """The fused kernel a fit runs: ``'frobenius'`` (:func:`~bignmf.passes.frobenius_step`,
    HALS or MU on the Frobenius loss), ``'masked_hals'`` (missing entries with HALS,
    :func:`~bignmf.passes.masked_hals_step`) or ``'beta'`` (multiplicative updates for any
    beta and masks, :func:`~bignmf.passes.beta_step`)."""
    if beta != 2 or (missing is not None and solver == "mu"):
        return "beta"
    return "frobenius" if missing is None else "masked_hals"
