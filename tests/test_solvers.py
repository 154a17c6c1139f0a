"""The factor-update rules (bignmf.solvers) on tiny arrays, against scikit-learn's own
coordinate-descent and multiplicative updates, and against the objective they minimize."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.decomposition._nmf import (
    _multiplicative_update_h,
    _multiplicative_update_w,
    _update_coordinate_descent,
)

from bignmf.solvers import SOLVER_NAMES, get_solver, hals, mu, sweep_rule

PENALTIES = [(0.0, 0.0), (0.5, 0.0), (0.0, 0.7), (0.3, 0.4)]


@pytest.fixture
def problem():
    """A small non-negative X (m x n) and non-negative factors W (m x k), H (k x n)."""
    rng = np.random.RandomState(42)
    m, n, k = 9, 7, 4
    X = np.abs(rng.standard_normal((m, n)))
    W = np.abs(rng.standard_normal((m, k)))
    H = np.abs(rng.standard_normal((k, n)))
    return X, W, H


def objective_F(X, F, B, l1, l2):
    """0.5 ||X - F^T B||^2 + l1 sum(F) + 0.5 l2 ||F||^2 for X (r x c), F (k x r), B (k x c)."""
    R = X - F.T @ B
    return 0.5 * float(np.vdot(R, R)) + l1 * float(F.sum()) + 0.5 * l2 * float(np.vdot(F, F))


def hals_W(X, W, H, l1=0.0, l2=0.0, sweeps=1, order=None):
    """bignmf's W update in its (F, P, G) form; returns the new W (m x k)."""
    F, done = hals.update(W.T.copy(), H @ X.T, H @ H.T, l1, l2, sweeps, 0.0, order)
    assert done == sweeps
    return F.T


# ---------------------------------------------------------------- non-negativity
@pytest.mark.parametrize("l1, l2", PENALTIES)
@pytest.mark.parametrize("update", [hals.update, mu.update], ids=["hals", "mu"])
def test_updates_are_non_negative(problem, update, l1, l2):
    X, W, H = problem
    F, _ = update(W.T.copy(), H @ X.T, H @ H.T, l1, l2, 3, 0.0)
    assert F.shape == W.T.shape
    assert np.all(np.isfinite(F))
    assert F.min() >= 0


def test_hals_clips_even_for_products_of_any_sign():
    # A large L1 penalty (or any P) can make the unconstrained step negative: it is clipped.
    rng = np.random.RandomState(0)
    F = np.abs(rng.standard_normal((3, 5)))
    P = rng.standard_normal((3, 5))
    B = rng.standard_normal((3, 8))
    F_new, _ = hals.update(F, P, B @ B.T, 2.0, 0.0, 2, 0.0)
    assert F_new.min() == 0  # some entries hit the bound
    assert F_new.min() >= 0


def test_mu_keeps_zeros_at_zero(problem):
    X, W, H = problem
    W = W.copy()
    W[2, 1] = W[5, 3] = 0.0
    F, _ = mu.update(W.T.copy(), H @ X.T, H @ H.T, 0.1, 0.1, 4, 0.0)
    assert F[1, 2] == 0 and F[3, 5] == 0
    assert np.all(F[W.T > 0] > 0)


# ---------------------------------------------------------------- reference: scikit-learn
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("l1, l2", PENALTIES)
def test_one_hals_sweep_equals_sklearn_coordinate_descent(problem, l1, l2, dtype, rtol):
    X, W, H = (a.astype(dtype) for a in problem)
    # W update: sklearn updates W in place from X, W, Ht.
    W_sk = W.copy()
    _update_coordinate_descent(X, W_sk, H.T.copy(), l1, l2, False, None)
    W_new = hals_W(X, W, H, l1, l2)
    assert W_new.dtype == dtype
    # atol: cancellation in a sum of terms of the size of the largest entries.
    assert_allclose(W_new, W_sk, rtol=rtol, atol=rtol * np.abs(W_sk).max())
    # H update, by symmetry: sklearn updates Ht from X.T, Ht, W.
    Ht_sk = H.T.copy()
    _update_coordinate_descent(X.T.copy(), Ht_sk, W_new, l1, l2, False, None)
    F, _ = hals.update(H.copy(), W_new.T @ X, W_new.T @ W_new, l1, l2, 1, 0.0)
    assert_allclose(F, Ht_sk.T, rtol=rtol, atol=rtol * np.abs(Ht_sk).max())


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_order_reproduces_sklearn_shuffle(problem, seed):
    X, W, H = problem
    W_sk = W.copy()
    _update_coordinate_descent(X, W_sk, H.T.copy(), 0.2, 0.1, True, np.random.RandomState(seed))
    order = np.random.RandomState(seed).permutation(W.shape[1])
    assert_allclose(hals_W(X, W, H, 0.2, 0.1, order=order), W_sk, rtol=1e-12)


def test_order_changes_the_gauss_seidel_sequence(problem):
    X, W, H = problem
    k = W.shape[1]
    identity = hals_W(X, W, H, order=np.arange(k))
    assert_array_equal(identity, hals_W(X, W, H))  # the default order is 0..k-1
    reverse = hals_W(X, W, H, order=np.arange(k)[::-1])
    # The order matters (Gauss-Seidel): the last updated component sees all the others.
    assert not np.allclose(reverse, identity)
    # Updating in reverse order is the same as updating reversed components in order.
    flipped = hals_W(X, W[:, ::-1], H[::-1])
    assert_allclose(reverse, flipped[:, ::-1], rtol=1e-12)


@pytest.mark.parametrize("l1, l2", PENALTIES)
def test_mu_step_equals_sklearn_multiplicative_update(problem, l1, l2):
    X, W, H = problem
    # scikit-learn updates W and H in place (and returns them).
    W_sk, *_ = _multiplicative_update_w(X, W.copy(), H, 2, l1, l2, 1.0)
    F, _ = mu.update(W.T.copy(), H @ X.T, H @ H.T, l1, l2, 1, 0.0)
    assert_allclose(F.T, W_sk, rtol=1e-12)
    H_sk = _multiplicative_update_h(X, W_sk, H.copy(), 2, l1, l2, 1.0)
    F, _ = mu.update(H.copy(), W_sk.T @ X, W_sk.T @ W_sk, l1, l2, 1, 0.0)
    assert_allclose(F, H_sk, rtol=1e-12)


# ---------------------------------------------------------------- sweeps and the objective
@pytest.mark.parametrize("l1, l2", PENALTIES)
@pytest.mark.parametrize("update", [hals.update, mu.update], ids=["hals", "mu"])
def test_sweeps_never_increase_the_objective(update, l1, l2):
    rng = np.random.RandomState(3)
    m, n, k = 12, 10, 4
    X = np.abs(rng.standard_normal((m, n)))
    W = np.abs(rng.standard_normal((m, k)))
    H = np.abs(rng.standard_normal((k, n)))

    def total():
        return (objective_F(X, W.T, H, l1, l2)
                + l1 * float(H.sum()) + 0.5 * l2 * float(np.vdot(H, H)))

    values = [total()]
    for _ in range(15):  # alternate single sweeps on W and on H
        F, _ = update(W.T.copy(), H @ X.T, H @ H.T, l1, l2, 1, 0.0)
        W = F.T
        values.append(total())
        H, _ = update(H.copy(), W.T @ X, W.T @ W, l1, l2, 1, 0.0)
        values.append(total())
    steps = np.diff(values)
    assert np.all(steps <= 1e-12 * values[0]), steps
    assert values[-1] < values[0]


@pytest.mark.parametrize("l1, l2", PENALTIES)
def test_each_hals_sweep_of_one_factor_decreases_its_objective(problem, l1, l2):
    X, W, H = problem
    F, P, G = W.T.copy(), H @ X.T, H @ H.T
    values = [objective_F(X, F, H, l1, l2)]
    for _ in range(10):
        F, _ = hals.update(F, P, G, l1, l2, 1, 0.0)
        values.append(objective_F(X, F, H, l1, l2))
    assert np.all(np.diff(values) <= 1e-12 * values[0])


@pytest.mark.parametrize("update", [hals.update, mu.update], ids=["hals", "mu"])
def test_several_sweeps_equal_repeated_single_sweeps(problem, update):
    X, W, H = problem
    P, G = H @ X.T, H @ H.T
    F_many, done = update(W.T.copy(), P, G, 0.1, 0.2, 5, 0.0)
    assert done == 5  # sweep_tol=0 runs exactly max_sweeps
    F = W.T.copy()
    for _ in range(5):
        F, _ = update(F, P, G, 0.1, 0.2, 1, 0.0)
    assert_allclose(F_many, F, rtol=1e-12)


@pytest.mark.parametrize("update", [hals.update, mu.update], ids=["hals", "mu"])
def test_sweep_tol_stops_early_and_never_exceeds_max_sweeps(problem, update):
    X, W, H = problem
    P, G = H @ X.T, H @ H.T
    _, done = update(W.T.copy(), P, G, 0.0, 0.0, 50, 0.5)
    assert 2 <= done < 50
    _, done = update(W.T.copy(), P, G, 0.0, 0.0, 3, 1e-30)
    assert done == 3


def test_hals_skips_a_component_with_zero_gram_diagonal(problem):
    # A component whose row of the other factor is all zero has no curvature: left as is.
    X, W, H = problem
    H = H.copy()
    H[2] = 0.0
    F, _ = hals.update(W.T.copy(), H @ X.T, H @ H.T, 0.0, 0.0, 2, 0.0)
    assert np.all(np.isfinite(F))
    assert_array_equal(F[2], W.T[2])


@pytest.mark.parametrize("update", [hals.update, mu.update])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_per_column_stopping_does_not_depend_on_the_other_columns(update, dtype):
    """With ``per_column`` each column stops on its own: solved with any other columns, or
    alone, it ends with the same values, up to the rounding of BLAS, whose kernels depend
    on the width (a row of W does not depend on its row block).
    The columns here stop after different numbers of sweeps, so the stopped ones must keep
    their values while the others sweep on, both while most columns still sweep and after
    the rest are copied out."""
    rng = np.random.default_rng(3)
    k, r = 6, 400
    G = rng.random((k, 40)) @ rng.random((40, k)) + np.eye(k)
    # Columns far from and close to their solution: their sweeps differ.
    target = rng.random((k, r)) * rng.choice([0.01, 1.0, 100.0], size=r)
    P = (G @ target).astype(dtype)
    F0 = (target * rng.choice([0.9, 0.2, 5.0], size=r)).astype(dtype)
    whole, sweeps = update(F0.copy(), P, G, 0.0, 0.0, 15, 0.05, per_column=True)
    assert 1 < sweeps <= 15
    for cols in (np.arange(0, r, 3), np.arange(50, 250), np.array([7]), np.array([0, 399])):
        part, _ = update(np.ascontiguousarray(F0[:, cols]), np.ascontiguousarray(P[:, cols]),
                         G, 0.0, 0.0, 15, 0.05, per_column=True)
        assert_allclose(part, whole[:, cols], rtol=1e-3 if dtype == np.float32 else 1e-9,
                        atol=0)


# ---------------------------------------------------------------- registry
def test_registry_names():
    assert get_solver("cd") is hals.update
    assert get_solver("hals") is hals.update
    assert get_solver("mu") is mu.update
    assert set(SOLVER_NAMES) == {"cd", "hals", "mu"}


def test_each_rule_has_its_auto_sweeps():
    """``inner_sweeps='auto'`` per rule: HALS up to 20 sweeps stopping at 0.01 of the first
    change, MU up to 20 stopping at 0.1; ``1 + ratio / 2`` below the cap; a number as given
    (every sweep runs)."""
    for name in SOLVER_NAMES:
        rule = sweep_rule(name)
        assert rule.sweeps("auto", 1e6) == rule.cap
        assert rule.sweeps("auto", 6.0) == 4
        assert rule.sweeps("auto", 0.1) == 1
        assert (rule.sweeps(3, 1e6), rule.stop(3)) == (3, 0.0)
    assert (sweep_rule("cd").cap, sweep_rule("cd").stop("auto")) == (20, 0.01)
    assert sweep_rule("hals") == sweep_rule("cd")
    assert (sweep_rule("mu").cap, sweep_rule("mu").stop("auto")) == (20, 0.1)
    with pytest.raises(ValueError, match="Invalid solver 'newton'"):
        sweep_rule("newton")


def test_registry_error_lists_valid_names():
    with pytest.raises(ValueError, match="Invalid solver 'newton'") as info:
        get_solver("newton")
    for name in SOLVER_NAMES:
        assert repr(name) in str(info.value)
