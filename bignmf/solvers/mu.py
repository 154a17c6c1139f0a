"""Multiplicative updates for the Frobenius loss (Lee & Seung 2001), as scikit-learn's
``solver='mu'`` with ``beta_loss='frobenius'``.

``F <- F * P / (G F + l1 + l2 F)``; zeros in the denominator become float32's epsilon, as
in scikit-learn, and zeros in ``F`` stay zero (use ``init='nndsvda'`` rather than
``'nndsvd'`` with this rule).
"""

from __future__ import annotations

import numpy as np

EPSILON = float(np.finfo(np.float32).eps)


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
    """Multiplicative updates of ``F`` (``k x r``); same arguments as :func:`hals.update`
    (``order`` has no meaning for a simultaneous update and is ignored)."""
    G = np.asarray(G, dtype=F.dtype)
    first = 0.0
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):
        denominator = G @ F
        if l1:
            denominator += l1
        if l2:
            denominator += l2 * F
        denominator[denominator == 0] = EPSILON
        new = F * (P / denominator)
        if max_sweeps > 1:
            d = new - F
            change = float(np.vdot(d, d))
            if sweeps == 1:
                first = change
            elif change <= sweep_tol * sweep_tol * first:
                F = new
                break
        F = new
    return F, sweeps
