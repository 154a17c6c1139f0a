"""Objective values from small products, never from a reconstruction of V.

``||V - W H||_F^2 = ||V||^2 - 2 <W^T V, H> + <W^T W, H H^T>``: every term is a sum over row
blocks of ``k x n`` or ``k x k`` products that the iteration forms anyway, so the loss of each
iteration costs no pass over V (the approach of tensorly's ``hals_nnls`` and of
scikit-learn's sparse Frobenius loss). The sums are accumulated in float64.

Other beta-divergences (Kullback-Leibler, Itakura-Saito, any float beta) have no such
expansion: their value is summed by the block kernels from ``W H`` evaluated where V is
(:func:`bignmf.passes.beta_step`), in the same pass that updates W.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ``beta_loss`` names and their beta, as scikit-learn.
BETA_LOSSES = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}


def beta_to_float(beta_loss: str | float) -> float:
    """The beta of a ``beta_loss`` name or number."""
    if isinstance(beta_loss, str):
        return BETA_LOSSES[beta_loss]
    return float(beta_loss)


@dataclass(frozen=True)
class Penalty:
    """scikit-learn's scaled regularization terms (``NMF._compute_regularization``)."""

    l1_W: float = 0.0
    l1_H: float = 0.0
    l2_W: float = 0.0
    l2_H: float = 0.0

    @classmethod
    def from_alphas(
        cls, shape: tuple[int, int], alpha_W: float, alpha_H: float | str, l1_ratio: float
    ) -> Penalty:
        """Scale ``alpha_W``, ``alpha_H`` and ``l1_ratio`` exactly as scikit-learn does."""
        n_samples, n_features = shape
        a_H = alpha_W if alpha_H == "same" else float(alpha_H)
        return cls(
            l1_W=n_features * alpha_W * l1_ratio,
            l1_H=n_samples * a_H * l1_ratio,
            l2_W=n_features * alpha_W * (1.0 - l1_ratio),
            l2_H=n_samples * a_H * (1.0 - l1_ratio),
        )

    def value(self, W_sum: float, W_sq: float, H: np.ndarray) -> float:
        """Penalty part of the objective, from ``sum(W)``, ``||W||^2`` and ``H``."""
        H64 = np.asarray(H, dtype=np.float64)
        return (
            self.l1_W * W_sum
            + 0.5 * self.l2_W * W_sq
            + self.l1_H * float(H64.sum())
            + 0.5 * self.l2_H * float(np.vdot(H64, H64))
        )


def expanded_sq(sq_norm_V: float, cross: float, quad: float) -> float:
    """``||V - W H||^2 = ||V||^2 - 2 cross + quad``, with ``cross = <W^T V, H>`` and
    ``quad = ||W H||^2`` (over the observed entries when some are missing), clipped at zero
    (cancellation limits the absolute accuracy to about ``eps * ||V||^2``)."""
    return max(sq_norm_V - 2.0 * cross + quad, 0.0)


def objective(loss_sq: float, penalty: Penalty, W_sum: float, W_sq: float, H: np.ndarray) -> float:
    """scikit-learn's NMF objective: ``0.5 ||V - WH||^2`` plus the penalties."""
    return 0.5 * loss_sq + penalty.value(W_sum, W_sq, H)


def beta_error(divergence: float) -> float:
    """scikit-learn's ``reconstruction_err_`` for a beta-divergence: ``sqrt(2 D)``
    (for beta = 2 this is ``||V - W H||_F``)."""
    return float(np.sqrt(2.0 * max(divergence, 0.0)))
