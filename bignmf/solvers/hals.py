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

import numpy as np


def update(
    F: np.ndarray,
    P: np.ndarray,
    G: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    max_sweeps: int = 1,
    sweep_tol: float = 0.0,
    order: np.ndarray | None = None,
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

    Returns
    -------
    F : ndarray of shape (k, r)
    sweeps : int
        Sweeps performed.
    """
    k = F.shape[0]
    G = np.array(G, dtype=F.dtype)
    if l2:
        G.flat[:: k + 1] += l2
    if l1:
        P = P - np.asarray(l1, dtype=F.dtype)
    diag = G.diagonal().copy()
    first = 0.0
    tol_sq = sweep_tol * sweep_tol
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        change = 0.0
        for j in range(k) if order is None else order:
            if diag[j] == 0:
                continue
            # F[j] + (P[j] - G[j] F) / G[j, j], clipped at 0, with one temporary.
            row = G[j] @ F
            np.subtract(P[j], row, out=row)
            row /= diag[j]
            row += F[j]
            np.maximum(row, 0, out=row)
            if max_sweeps > 1:
                d = row - F[j]
                change += float(d @ d)
            F[j] = row
        if sweeps == 1:
            first = change
        elif change <= tol_sq * first:
            break
    return F, sweeps


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
    k, r = F.shape
    G = np.array(G, dtype=F.dtype)
    if l2:
        G[:, np.arange(k), np.arange(k)] += l2
    if l1:
        P = P - np.asarray(l1, dtype=F.dtype)
    diag = np.ascontiguousarray(G[:, np.arange(k), np.arange(k)].T)  # (k, r)
    safe = np.where(diag > 0, diag, 1)
    Gt = np.ascontiguousarray(G.transpose(1, 0, 2))  # (k, r, k): row t of every Gram
    first: np.ndarray | None = None
    live = np.ones(r, dtype=bool)
    tol_sq = sweep_tol * sweep_tol
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007 - the count is returned
        before = F.copy() if max_sweeps > 1 else F
        for t in range(k) if order is None else order:
            grad = P[t] - np.einsum("rk,kr->r", Gt[t], F)
            row = F[t] + grad / safe[t]
            np.maximum(row, 0, out=row)
            row[diag[t] <= 0] = F[t][diag[t] <= 0]  # a component no observed entry sees
            F[t] = np.where(live, row, F[t])
        if max_sweeps == 1:
            break
        d = F - before
        change = np.einsum("ij,ij->j", d, d)
        if first is None:
            first = change
            continue
        live &= change > tol_sq * first
        if not live.any():
            break
    return F, sweeps
