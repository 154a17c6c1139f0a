"""Update rules for one factor, given the small products of the data with the other factor.

Every rule here is a pure function on in-memory arrays and never sees the data matrix V.
The factor being updated is held *transposed*, ``F`` of shape ``(k, r)``, so that each
component is a contiguous row. For the update of ``W`` (rows of a block of V)::

    F = W_i.T        P = H @ V_i.T        G = H @ H.T

and for the update of ``H`` (all columns)::

    F = H            P = W.T @ V          G = W.T @ W

so one function serves both factors. Penalties follow scikit-learn: ``l1`` and ``l2`` are the
already-scaled ``l1_reg_*`` / ``l2_reg_*`` of ``sklearn.decomposition.NMF``.

A rule is looked up by name with :func:`get_solver`, and what ``inner_sweeps='auto'`` gives
it with :func:`sweep_rule`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple, Protocol

import numpy as np
from threadpoolctl import ThreadpoolController

from bignmf.solvers import hals, mu
from bignmf.solvers.rules import SweepRule

__all__ = ["SOLVER_NAMES", "FactorUpdate", "SweepRule", "get_solver", "small_blas",
           "sweep_rule", "thread_budget"]


class FactorUpdate(Protocol):
    """``update(F, P, G, l1, l2, max_sweeps, sweep_tol, order, per_column)
    -> (F_new, sweeps_done)``; ``F`` is updated in place."""

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
        per_column: bool = False,
    ) -> tuple[np.ndarray, int]: ...


class Solver(NamedTuple):
    """A registered update rule and what ``inner_sweeps='auto'`` gives it (its module says
    why those values)."""

    update: Callable[..., tuple[np.ndarray, int]]
    auto_sweeps: SweepRule


_SOLVERS: dict[str, Solver] = {
    "cd": Solver(hals.update, hals.AUTO_SWEEPS),
    "hals": Solver(hals.update, hals.AUTO_SWEEPS),
    "mu": Solver(mu.update, mu.AUTO_SWEEPS),
}

SOLVER_NAMES = tuple(_SOLVERS)


_controller: ThreadpoolController | None = None


def small_blas() -> AbstractContextManager[Any]:
    """Context for solver sweeps and other loops of small BLAS calls: one BLAS thread.

    A sweep makes one ``k x k`` by ``k x r`` product per component. Spread over several
    threads, each costs far more than it saves when the other cores are busy (ten sweeps on
    a 32 x 20000 factor: about 0.5 s with 2 OpenBLAS threads, 0.045 s with 1, on a loaded
    machine; on idle cores 2 threads were 1.6x faster, which the in-memory executor gets
    safely by running row blocks side by side, one BLAS thread each). One thread also makes
    results independent of how many BLAS threads the process has (dask workers run with
    one).
    """
    global _controller
    if _controller is None:  # scanning the loaded libraries costs ~4 ms: do it once
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def _registered(name: str) -> Solver:
    try:
        return _SOLVERS[name]
    except KeyError:
        raise ValueError(
            f"Invalid solver {name!r}: choose one of {', '.join(repr(s) for s in _SOLVERS)}"
        ) from None


def get_solver(name: str) -> FactorUpdate:
    """Return the update rule registered as ``name`` (``'cd'`` is an alias of ``'hals'``)."""
    return _registered(name).update


def sweep_rule(name: str) -> SweepRule:
    """The sweeps ``inner_sweeps='auto'`` gives the update rule ``name`` (see
    :func:`get_solver`)."""
    return _registered(name).auto_sweeps


def thread_budget() -> int:
    """Threads this process may keep busy: its cores, or fewer when its BLAS is limited
    (inside a dask or joblib worker, with ``OPENBLAS_NUM_THREADS``, under
    :func:`small_blas`), so that in-memory fits run inside parallel jobs do not
    oversubscribe the machine."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    blas = [lib.num_threads for lib in _controller.select(user_api="blas").lib_controllers]
    return max(1, min([cores, *blas]))
