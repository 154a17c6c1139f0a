"""How many sweeps an update makes per pass when ``inner_sweeps='auto'``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SweepRule:
    """Gillis & Glineur's rule for repeating an update's sweeps on the products of one pass.

    A sweep costs ``O(k^2 r)``; forming the products it reuses costs ``cost_ratio`` times
    that. ``'auto'`` then makes up to ``1 + cost_ratio / 2`` sweeps, at most ``cap``, and
    stops once a sweep changes the factor by less than ``tol`` times the first sweep's
    change. ``cost_ratio`` is ``n / k`` for W and ``m / k`` for H, times the share of V's
    entries that are non-zero (:func:`bignmf.fit.nonzero_share`).
    """

    cap: int
    tol: float

    def sweeps(self, inner_sweeps: int | str, cost_ratio: float) -> int:
        """Sweeps per update: as given, or for ``'auto'`` from ``cost_ratio``."""
        if inner_sweeps != "auto":
            return int(inner_sweeps)
        return int(min(self.cap, 1 + cost_ratio / 2))

    def stop(self, inner_sweeps: int | str) -> float:
        """The stopping fraction: ``tol`` for ``'auto'``; 0 (every sweep runs) otherwise."""
        return self.tol if inner_sweeps == "auto" else 0.0
