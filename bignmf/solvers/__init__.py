"""Update rules for one factor, given the small products of the data with the other factor.

Every rule here is a pure function on in-memory arrays and never sees the data matrix V.
The factor being updated is held *transposed*, ``F`` of shape ``(k, r)``, so that each
component is a contiguous row. For the update of ``W`` (rows of a block of V)::

    F = W_i.T        P = H @ V_i.T        G = H @ H.T

and for the update of ``H`` (all columns)::

    F = H            P = W.T @ V          G = W.T @ W

so one function serves both factors. Penalties follow scikit-learn: ``l1`` and ``l2`` are the
already-scaled ``l1_reg_*`` / ``l2_reg_*`` of ``sklearn.decomposition.NMF``.

A rule is looked up by name with :func:`get_solver`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from bignmf.solvers import hals, mu


class FactorUpdate(Protocol):
    """``update(F, P, G, l1, l2, max_sweeps, sweep_tol, order) -> (F_new, sweeps_done)``."""

    def __call__(
        self,
        F: np.ndarray,
        P: np.ndarray,
        G: np.ndarray,
        l1: float,
        l2: float,
        max_sweeps: int,
        sweep_tol: float,
        order: np.ndarray | None = None,
    ) -> tuple[np.ndarray, int]: ...


_SOLVERS: dict[str, Callable[..., tuple[np.ndarray, int]]] = {
    "cd": hals.update,
    "hals": hals.update,
    "mu": mu.update,
}

SOLVER_NAMES = tuple(_SOLVERS)


def get_solver(name: str) -> FactorUpdate:
    """Return the update rule registered as ``name`` (``'cd'`` is an alias of ``'hals'``)."""
    try:
        return _SOLVERS[name]
    except KeyError:
        raise ValueError(
            f"Invalid solver {name!r}: choose one of {', '.join(repr(s) for s in _SOLVERS)}"
        ) from None
