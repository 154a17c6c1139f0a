"""Hierarchical alternating least squares (HALS), the coordinate-descent rule of
scikit-learn's ``solver='cd'``.

Each sweep updates the components one after another, each by an exact non-negative
least-squares step on one column of the factor (Cichocki & Phan 2009; the Gauss-Seidel
order of ``sklearn.decomposition._cdnmf_fast``). The products ``P`` and ``G`` are fixed
during a sweep, so further sweeps cost only ``O(k^2 r)`` and no pass over V: Gillis &
Glineur (2012, "Accelerated multiplicative updates and hierarchical ALS algorithms for
nonnegative matrix factorization", Neural Computation 24) show that repeating them until
the change falls below a fraction of the first change speeds up convergence per pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bignmf.solvers.rules import SweepRule

#: ``inner_sweeps='auto'``: at most 20 sweeps per update, stopping at 0.01 of the first
#: sweep's change. More sweeps per pass keep paying off past 10 on dense V (``python
#: benchmarks/bench_sweeps.py --rules``); out of core they are nearly free beside the read
#: of V, and each iteration they save is a pass. (A stop at 0.1 stopped many rows early: on
#: dense V the fit took 33 iterations to an error that 10 sweeps each reached in 22.)
AUTO_SWEEPS = SweepRule(cap=20, tol=0.01)


def update(
    F: np.ndarray,
    P: np.ndarray,
    G: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    max_sweeps: int = 1,
    sweep_tol: float = 0.0,
    order: np.ndarray | None = None,
    per_column: bool = False,
) -> tuple[np.ndarray, int]:
    """HALS sweeps on ``F`` (``k x r``, transposed factor) for ``min 0.5||X - F^T B||^2``.

    Parameters
    ----------
    F : ndarray of shape (k, r)
        Current factor, transposed; updated in place and returned.
    P : ndarray of shape (k, r)
        ``B @ X.T`` — the data times the other factor.
    G : ndarray of shape (k, k)
        ``B @ B.T`` — the Gram matrix of the other factor.
    l1, l2 : float
        L1 and L2 penalties (scikit-learn's scaled ``l1_reg``/``l2_reg``): L2 is added to
        the diagonal of ``G``, L1 subtracted from ``P``.
    max_sweeps : int
        Upper bound on the number of sweeps over the components.
    sweep_tol : float
        Stop once a sweep changes ``F`` by less than ``sweep_tol`` times the change of the
        first sweep (Frobenius norms); 0 runs exactly ``max_sweeps``.
    order : ndarray of int, optional
        Order in which components are updated (scikit-learn's ``shuffle``); default
        ``0, ..., k-1``.
    per_column : bool
        Apply the stopping rule to each column of ``F`` on its own (a column that stopped
        keeps its value). Columns are independent problems (rows of W given H), so the
        result then does not depend on which columns are solved together — on how V is
        split into row blocks. Also stops a column whose sweep changed nothing when
        ``sweep_tol`` is 0.

    Returns
    -------
    F : ndarray of shape (k, r)
    sweeps : int
        Sweeps performed (per column: the most any column needed).
    """
    k = F.shape[0]
    G = np.array(G, dtype=np.float64)
    if l2:
        G.flat[:: k + 1] += l2
    diag = G.diagonal().copy()
    scale = np.where(diag > 0, diag, 1.0)[:, None]
    # Row j of the new factor is max(0, (P[j] - l1 - sum_{t != j} G[j, t] F[t]) / G[j, j]):
    # with G and P divided by the diagonal once, each component costs one k x r product
    # and two in-place passes. A component with G[j, j] = 0 (unused) keeps its value.
    Gs = (G / scale).astype(F.dtype)
    Gs.flat[:: k + 1] = 0
    Ps = (np.subtract(P, l1, dtype=F.dtype) if l1 else P) / scale.astype(F.dtype)
    Ps = Ps.astype(F.dtype, copy=False)
    components = [j for j in (range(k) if order is None else order) if diag[j] > 0]

    def sweep(Fw: np.ndarray, Pw: np.ndarray) -> None:
        for j in components:
            row = Gs[j] @ Fw
            np.subtract(Pw[j], row, out=row)
            np.maximum(row, 0, out=Fw[j])

    return repeat_sweeps(sweep, F, Ps, max_sweeps, sweep_tol, per_column)


def repeat_sweeps(
    sweep: Callable[[np.ndarray, Any], None], F: np.ndarray, P: Any,
    max_sweeps: int, sweep_tol: float, per_column: bool,
) -> tuple[np.ndarray, int]:
    """Up to ``max_sweeps`` calls of ``sweep(F, P)`` (one in-place sweep of an update rule),
    stopping once a sweep changes ``F`` by at most ``sweep_tol`` times the first sweep's
    change: the whole of ``F``, or each column on its own (:func:`sweep_columns`)."""
    if per_column and max_sweeps > 1:
        return sweep_columns(sweep, F, P, max_sweeps, sweep_tol)
    if max_sweeps == 1 or sweep_tol <= 0:  # a fixed number of sweeps: nothing to track
        for _ in range(max_sweeps):
            sweep(F, P)
        return F, max_sweeps
    before = np.empty_like(F)  # one buffer for every sweep's copy (see sweep_columns)
    first = 0.0
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        np.copyto(before, F)
        sweep(F, P)
        np.subtract(F, before, out=before)
        change = float(np.vdot(before, before))
        if sweeps == 1:
            first = change
        elif change <= sweep_tol * sweep_tol * first:
            break
    return F, sweeps


def sweep_columns(
    sweep: Callable[[np.ndarray, Any], None], F: np.ndarray, P: Any,
    max_sweeps: int, sweep_tol: float,
) -> tuple[np.ndarray, int]:
    """Up to ``max_sweeps`` calls of ``sweep(F, P)`` (one in-place sweep on the columns it
    is given), each column of ``F`` stopping on its own once a sweep changes it by at most
    ``sweep_tol`` times its first change. ``P`` is the columns' data: an array, or a tuple
    of arrays, with the columns on the last axis.

    A stopping rule on the change of the whole block would make each row of W depend on
    which other rows share its block, i.e. on ``block_rows`` (and so on the workers'
    memory limit): the same ``random_state`` would give different factors on different
    clusters, and from the in-memory fit. Per column, the answer is the same however V is
    split. Once fewer than half the columns still sweep, they are copied out and swept
    alone (copying costs less than sweeping stopped columns).

    Each sweep's copy of the working columns goes into one buffer, not a new array: dask's
    nanny starts workers with ``MALLOC_TRIM_THRESHOLD_`` set, which turns off glibc's
    adaptive mmap threshold, so every array above 128 KiB is a fresh ``mmap`` whose pages
    fault in on first use. Measured on the update of H (20000 x 5000, k = 32, ten sweeps):
    3.5 ms without that setting, 7.9 ms with it and a copy per sweep, 5.6 ms with the buffer.
    """
    Fw, Pw = F, P  # the working columns: all of them until many have stopped
    cols: np.ndarray | None = None  # which columns of F the working arrays hold (None: all)
    live: np.ndarray | None = None  # working columns still sweeping (None: all)
    first: np.ndarray | None = None
    done = 0
    tol_sq = sweep_tol * sweep_tol
    buffer = np.empty(F.size, dtype=F.dtype)
    kept_buffer: np.ndarray | None = None  # (allocated once a column has stopped)
    for done in range(1, max_sweeps + 1):  # noqa: B007 - the count is returned
        before = buffer[: Fw.size].reshape(Fw.shape)  # (contiguous, as a copy would be)
        np.copyto(before, Fw)
        sweep(Fw, Pw)
        if live is not None:  # stopped columns keep their values
            if kept_buffer is None:
                kept_buffer = np.empty(F.size, dtype=F.dtype)
            kept = kept_buffer[: Fw.size].reshape(Fw.shape)
            _select(Fw, before, live, kept)
        d = np.subtract(Fw, before, out=before)
        change = np.einsum("ij,ij->j", d, d)
        if first is None:
            first = change
            continue
        going = change > tol_sq * first
        if live is not None:
            going &= live
        n_going = int(np.count_nonzero(going))
        if not n_going:
            break
        if n_going >= going.size // 2:
            live = None if n_going == going.size else going
            continue
        keep = np.flatnonzero(going)
        _write_columns(F, cols, Fw)
        cols = keep if cols is None else cols[keep]
        Fw, Pw, first, live = Fw[:, keep], _columns(Pw, keep), first[keep], None
    _write_columns(F, cols, Fw)
    return F, done


def _select(F: np.ndarray, old: np.ndarray, live: np.ndarray, scratch: np.ndarray) -> None:
    """``F[:, ~live] = old[:, ~live]``, in place, without branching on the mask.

    ``F * live + old * (1 - live)`` with 0/1 factors is exact for finite values (a product
    by 1 is the value, by 0 is zero, and adding a zero changes nothing). A masked
    ``np.copyto`` branches per entry on a mask that is random here: on a 10 x 50000 factor
    with half the columns stopped it took 1.3-1.7 ms, these three passes about 0.1 ms.
    """
    factor = live.astype(F.dtype)
    np.multiply(F, factor, out=F)
    np.subtract(1, factor, out=factor)
    np.multiply(old, factor, out=scratch)
    np.add(F, scratch, out=F)


def _columns(P: Any, keep: np.ndarray) -> Any:
    """The columns ``keep`` of an array, or of each array of a tuple (last axis)."""
    if isinstance(P, tuple):
        return tuple(a[..., keep] for a in P)
    return P[..., keep]


def _write_columns(F: np.ndarray, cols: np.ndarray | None, Fw: np.ndarray) -> None:
    """Store the working columns ``Fw`` back into ``F`` (``cols``: which; None: all)."""
    if cols is not None:
        F[:, cols] = Fw
    elif Fw is not F:
        F[...] = Fw


def update_rows(
    F: np.ndarray,
    P: np.ndarray,
    G: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    max_sweeps: int = 1,
    sweep_tol: float = 0.0,
    order: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """HALS sweeps where every column of ``F`` has its own Gram matrix: masked NMF.

    With missing entries, row ``i`` of W solves ``min 0.5||x_o - w H_o||^2`` over its
    observed columns ``o``: the Gram matrix ``H_o H_o^T`` differs from row to row. Same
    rule and arguments as :func:`update`, except ``G`` of shape ``(r, k, k)`` (one Gram per
    column of ``F``). Each column stops on its own once a sweep changes it by at most
    ``sweep_tol`` times its first change, so the result does not depend on which columns
    are solved together. Costs ``O(r k^2)`` per sweep.
    """
    k = F.shape[0]
    G = np.array(G, dtype=F.dtype)
    if l2:
        G[:, np.arange(k), np.arange(k)] += l2
    if l1:
        P = P - np.asarray(l1, dtype=F.dtype)
    diag = np.ascontiguousarray(G[:, np.arange(k), np.arange(k)].T)  # (k, r)
    safe = np.where(diag > 0, diag, 1)
    Gt = np.ascontiguousarray(G.transpose(1, 2, 0))  # (k, k, r): row t of every Gram

    def sweep(Fw: np.ndarray, columns: tuple[np.ndarray, ...]) -> None:
        Pw, Gw, dw, sw = columns
        for t in range(k) if order is None else order:
            row = Fw[t] + (Pw[t] - np.einsum("kr,kr->r", Gw[t], Fw)) / sw[t]
            np.maximum(row, 0, out=row)
            unseen = dw[t] <= 0  # a component no observed entry sees keeps its value
            row[unseen] = Fw[t][unseen]
            Fw[t] = row

    return repeat_sweeps(sweep, F, (P, Gt, diag, safe), max_sweeps, sweep_tol,
                         per_column=True)
