"""Multiplicative updates for the Frobenius loss (Lee & Seung 2001), as scikit-learn's
``solver='mu'`` with ``beta_loss='frobenius'``.

``F <- F * P / (G F + l1 + l2 F)``; zeros in the denominator become float32's epsilon, as
in scikit-learn, and zeros in ``F`` stay zero (use ``init='nndsvda'`` rather than
``'nndsvd'`` with this rule).
"""

from __future__ import annotations

import numpy as np

from bignmf.solvers import hals
from bignmf.solvers.rules import SweepRule

EPSILON = float(np.finfo(np.float32).eps)
#: ``inner_sweeps='auto'``: at most 20 sweeps, stopping at 0.1 of the first sweep's change.
#: Against 10 and 0.1 (HALS's first rule, this one's until 2026-12-01), ``python
#: benchmarks/bench_sweeps.py --rules --solver mu`` (six matrices, 3 seeds, two runs): dense
#: V 20x closer to the best error at the time budget, the 10x counts ahead, the other four
#: level; 20 and 0.01 was behind on dense V and the spectrogram.
AUTO_SWEEPS = SweepRule(cap=20, tol=0.1)


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
    """Multiplicative updates of ``F`` (``k x r``); same arguments as :func:`hals.update`
    (``order`` has no meaning for a simultaneous update and is ignored)."""
    G = np.asarray(G, dtype=F.dtype)

    def sweep(Fw: np.ndarray, Pw: np.ndarray) -> None:
        denominator = G @ Fw
        if l1:
            denominator += l1
        if l2:
            denominator += l2 * Fw
        denominator[denominator == 0] = EPSILON
        np.divide(Pw, denominator, out=denominator)
        Fw *= denominator

    return hals.repeat_sweeps(sweep, F, P, max_sweeps, sweep_tol, per_column)


def beta_update(
    A: np.ndarray,
    numerator: np.ndarray,
    denominator: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    gamma: float = 1.0,
) -> np.ndarray:
    """One multiplicative update for a beta-divergence (Févotte & Idier 2011), as
    scikit-learn's ``_multiplicative_update_w`` / ``_multiplicative_update_h``.

    ``A <- A * (numerator / (denominator + l1 + l2 A)) ** gamma``, with the products of
    the data already formed (by :mod:`bignmf.passes`): for ``W``, ``numerator =
    (V * (WH)^(beta-2)) H^T`` and ``denominator = (WH)^(beta-1) H^T`` (both ``r x k``); for
    ``H`` the transposed sums ``W^T (...)`` (``k x n``). ``gamma`` is the exponent that
    makes the update a majorization-minimization step (:func:`mm_exponent`). Zeros in the
    denominator become float32's epsilon; ``denominator`` may broadcast against ``A``
    (Kullback-Leibler's row or column sums). Returns a new array.
    """
    denominator = np.asarray(denominator, dtype=A.dtype)
    if l1:
        denominator = denominator + l1
    if l2:
        denominator = denominator + l2 * A
    denominator = np.array(np.broadcast_to(denominator, A.shape), dtype=A.dtype)
    denominator[denominator == 0] = EPSILON
    delta = np.asarray(numerator, dtype=A.dtype) / denominator
    if gamma != 1:
        delta **= gamma
    return A * delta


def mm_exponent(beta: float) -> float:
    """scikit-learn's ``gamma``: 1/(2-beta) for beta < 1, 1/(beta-1) for beta > 2, else 1."""
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta > 2:
        return 1.0 / (beta - 1.0)
    return 1.0
