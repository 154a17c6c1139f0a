"""The estimator against scikit-learn's NMF: its estimator checks, its iterates, its final
errors on synthetic and real data, and the invariants a drop-in must keep."""

from __future__ import annotations

import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from scipy.optimize import nnls
from sklearn.datasets import load_digits
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition import non_negative_factorization as sk_nnf
from sklearn.decomposition._nmf import _initialize_nmf
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from bignmf import NMF, NMFResult, nmf, non_negative_factorization

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ALL_AML = DATA / "genomics" / "ALL_AML" / "ALL_AML_data.txt"
SWIMMER = DATA / "images" / "swimmer.mat"


# ---------------------------------------------------------------- helpers
def sk_fit(X, **params):
    """scikit-learn's NMF fitted on X; its ConvergenceWarning is not under test here."""
    est = SkNMF(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = est.fit_transform(X)
    return W, est


def sk_objective(X, W, H, alpha_W=0.0, alpha_H="same", l1_ratio=0.0):
    """scikit-learn's NMF objective for (W, H), its penalties scaled by scikit-learn itself."""
    l1_W, l1_H, l2_W, l2_H = SkNMF(
        alpha_W=alpha_W, alpha_H=alpha_H, l1_ratio=l1_ratio)._compute_regularization(X)
    R = X - W @ H
    return (0.5 * float(np.vdot(R, R)) + l1_W * W.sum() + l1_H * H.sum()
            + 0.5 * l2_W * float(np.vdot(W, W)) + 0.5 * l2_H * float(np.vdot(H, H)))


def rel_error(X, W, H):
    return np.linalg.norm(X - W @ H) / np.linalg.norm(X)


@pytest.fixture(scope="module")
def X():
    return np.abs(np.random.RandomState(0).standard_normal((40, 30)))


@pytest.fixture(scope="module")
def all_aml():
    if not ALL_AML.exists():
        pytest.skip(f"real data not available: {ALL_AML}")
    A = np.loadtxt(ALL_AML)
    assert A.shape == (5000, 38)
    return A


@pytest.fixture(scope="module")
def swimmer():
    if not SWIMMER.exists():
        pytest.skip(f"real data not available: {SWIMMER}")
    V = scipy.io.loadmat(SWIMMER)["V"]  # 1024 pixels x 256 images, uint8
    assert V.shape == (1024, 256)
    return V.astype(np.float64)


# ---------------------------------------------------------------- scikit-learn's checks
# max_iter=500 as in scikit-learn's own test suite for its NMF: with the default 200 the
# degenerate data of check_transformer_general has not converged far enough for that
# check's atol=0.01 between fit_transform and fit().transform (scikit-learn's NMF fails it
# the same way). ConvergenceWarning is not an error here: several checks fit tiny degenerate
# data that no NMF fits to tol (scikit-learn's own NMF warns in 9 of these checks).
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks([NMF(max_iter=500)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ---------------------------------------------------------------- iterates = sklearn's
@pytest.mark.parametrize("solver", ["cd", "mu"])
@pytest.mark.parametrize("init", ["random", "custom"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_iterates_equal_sklearn(X, solver, init, dtype):
    V = X.astype(dtype)
    k, params = 5, dict(solver=solver, tol=0, max_iter=40, random_state=0)
    fit_args = {}
    if init == "custom":
        W0, H0 = _initialize_nmf(V, k, init="random", random_state=7)
        fit_args = dict(W=W0, H=H0)
    est = NMF(k, init=init, inner_sweeps=1, **params)
    W = est.fit_transform(V, **fit_args)
    sk = SkNMF(k, init=init, **params)
    W_sk = sk.fit_transform(V, **fit_args)
    assert W.dtype == est.components_.dtype == dtype
    rtol = 1e-9 if dtype == np.float64 else 2e-3
    assert_allclose(W, W_sk, rtol=rtol, atol=rtol * np.abs(W_sk).max())
    assert_allclose(est.components_, sk.components_, rtol=rtol,
                    atol=rtol * np.abs(sk.components_).max())
    assert est.n_iter_ == sk.n_iter_ == 40
    assert_allclose(est.reconstruction_err_, sk.reconstruction_err_, rtol=max(rtol, 1e-7))


@pytest.mark.parametrize("solver, init", [("cd", "nndsvd"), ("cd", "nndsvda"),
                                          ("mu", "nndsvda"), ("mu", "nndsvdar")])
def test_nndsvd_family_final_error_matches_sklearn(X, solver, init):
    # The SVD is randomized differently (two-pass sketch vs. scikit-learn's randomized_svd),
    # so the iterates differ: the final errors agree within 1%.
    params = dict(n_components=5, init=init, solver=solver, tol=0, max_iter=100,
                  random_state=0)
    est = NMF(inner_sweeps=1, **params).fit(X)
    _, sk = sk_fit(X, **params)
    assert est.reconstruction_err_ <= 1.01 * sk.reconstruction_err_
    assert est.reconstruction_err_ >= 0.99 * sk.reconstruction_err_


def test_mu_with_nndsvd_warns_like_sklearn(X):
    with pytest.warns(UserWarning, match="nndsvda"):
        est = NMF(5, init="nndsvd", solver="mu", max_iter=100, tol=0, random_state=0).fit(X)
    with pytest.warns(UserWarning, match="nndsvda"):
        _, sk = sk_fit(X, n_components=5, init="nndsvd", solver="mu", max_iter=100, tol=0,
                       random_state=0)
    assert est.reconstruction_err_ <= 1.01 * sk.reconstruction_err_


# ---------------------------------------------------------------- default settings
@pytest.mark.parametrize("init", [None, "random"])
@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_default_settings_error_no_worse_than_sklearn(X, init, solver):
    for k in (2, 5, 12):
        params = dict(n_components=k, init=init, solver=solver, random_state=0)
        if solver == "mu" and init is None:
            params["init"] = "nndsvda"
        est = NMF(**params)
        with warnings.catch_warnings():
            if solver == "mu":  # MU is slow: like scikit-learn's, it may stop at max_iter
                warnings.simplefilter("ignore", ConvergenceWarning)
            W = est.fit_transform(X)
        _, sk = sk_fit(X, **params)
        assert np.linalg.norm(X - W @ est.components_) <= 1.01 * sk.reconstruction_err_, k


@pytest.mark.parametrize("init", [None, "random"])
@pytest.mark.parametrize("k", [3, 5])
def test_all_aml_error_no_worse_than_sklearn(all_aml, k, init):
    # The Brunet et al. (2004) leukaemia data: 5000 genes x 38 samples.
    est = NMF(k, init=init, random_state=0)
    W = est.fit_transform(all_aml)
    _, sk = sk_fit(all_aml, n_components=k, init=init, random_state=0)
    assert np.linalg.norm(all_aml - W @ est.components_) <= 1.01 * sk.reconstruction_err_
    assert_allclose(est.reconstruction_err_, np.linalg.norm(all_aml - W @ est.components_),
                    rtol=1e-6)


def test_swimmer_error_no_worse_than_sklearn(swimmer):
    # 256 images of 32 x 32 pixels, one per column; 16 limb positions make 16 parts.
    V = swimmer
    est = NMF(16, random_state=0)
    W = est.fit_transform(V)
    _, sk = sk_fit(V, n_components=16, random_state=0)
    assert np.linalg.norm(V - W @ est.components_) <= 1.01 * sk.reconstruction_err_


PENALTY_CASES = [
    dict(alpha_W=0.01),
    dict(alpha_W=0.01, l1_ratio=1.0),
    dict(alpha_W=0.02, alpha_H=0.005, l1_ratio=0.5),
    dict(alpha_W=0.0, alpha_H=0.03, l1_ratio=0.3),
]


@pytest.mark.parametrize("penalty", PENALTY_CASES)
def test_penalized_iterates_equal_sklearn(X, penalty):
    params = dict(n_components=4, init="random", tol=0, max_iter=30, random_state=0, **penalty)
    est = NMF(inner_sweeps=1, **params)
    W = est.fit_transform(X)
    W_sk, sk = sk_fit(X, **params)
    assert_allclose(W, W_sk, rtol=1e-9, atol=1e-12)
    assert_allclose(est.components_, sk.components_, rtol=1e-9, atol=1e-12)
    # loss_history_ holds the same objective scikit-learn minimizes.
    assert_allclose(est.loss_history_[-1], sk_objective(X, W, est.components_, **penalty),
                    rtol=1e-9)


@pytest.mark.parametrize("penalty", PENALTY_CASES)
@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_penalized_default_settings_objective_matches_sklearn(X, penalty, solver):
    params = dict(n_components=4, init="random", solver=solver, random_state=0, **penalty)
    est = NMF(**params)
    W = est.fit_transform(X)
    W_sk, sk = sk_fit(X, **params)
    obj = sk_objective(X, W, est.components_, **penalty)
    obj_sk = sk_objective(X, W_sk, sk.components_, **penalty)
    assert obj <= 1.01 * obj_sk
    assert_allclose(est.loss_history_[-1], obj, rtol=1e-8)
    if penalty.get("l1_ratio") == 1.0 and solver == "cd":
        # An L1 penalty on W gives zeros in W, as in scikit-learn.
        assert (W == 0).any() and (W_sk == 0).any()


# ---------------------------------------------------------------- the issue's examples
def test_issue_example_small_matrix():
    X = np.array([[1, 2], [2, 2], [3, 1.2], [4, 1], [5, 0.8], [6, 1]])
    model = NMF(n_components=2, init="random", random_state=0)
    W = model.fit_transform(X)
    H = model.components_
    assert W.shape == (6, 2) and H.shape == (2, 2)
    assert W.min() >= 0 and H.min() >= 0
    _, sk = sk_fit(X, n_components=2, init="random", random_state=0)
    assert np.linalg.norm(X - W @ H) <= 1.01 * sk.reconstruction_err_ + 1e-8 * np.linalg.norm(X)


def _digits_image():
    # 16 digits of 8 x 8 tiled into a 32 x 32 grayscale image.
    digits = load_digits().images[:16]
    return np.block([[digits[4 * i + j] for j in range(4)] for i in range(4)])


def _swimmer_image():
    if not SWIMMER.exists():
        pytest.skip(f"real data not available: {SWIMMER}")
    return scipy.io.loadmat(SWIMMER)["V"][:, 7].reshape(32, 32).astype(np.float64)


@pytest.mark.parametrize("image", [_digits_image, _swimmer_image], ids=["digits", "swimmer"])
def test_issue_example_image(tmp_path, image):
    np.savetxt(tmp_path / "image.txt", image())
    X = np.loadtxt(tmp_path / "image.txt")
    model = NMF(n_components=5, init="random", random_state=0)
    W = model.fit_transform(X)
    H = model.components_
    assert W.shape == (X.shape[0], 5) and H.shape == (5, X.shape[1])
    assert W.min() >= 0 and H.min() >= 0
    _, sk = sk_fit(X, n_components=5, init="random", random_state=0)
    assert np.linalg.norm(X - W @ H) <= 1.01 * sk.reconstruction_err_ + 1e-8 * np.linalg.norm(X)


# ---------------------------------------------------------------- invariants
def _sweeps_asked(monkeypatch: pytest.MonkeyPatch, X, **params) -> dict[str, set[int]]:
    """The most sweeps each HALS update of a fit was allowed: on W's blocks and on H."""
    from bignmf import solvers
    from bignmf.solvers import hals

    asked: dict[str, set[int]] = {"W": set(), "H": set()}

    def update(F, P, G, l1=0.0, l2=0.0, max_sweeps=1, *args, **kwargs):
        asked["H" if F.shape[1] == X.shape[1] else "W"].add(max_sweeps)
        return hals.update(F, P, G, l1, l2, max_sweeps, *args, **kwargs)

    monkeypatch.setitem(solvers._SOLVERS, "cd", solvers._SOLVERS["cd"]._replace(update=update))
    NMF(5, init="nndsvda", random_state=0, max_iter=3, tol=0, **params).fit(X)
    return asked


def test_auto_sweeps_follow_the_cost_of_the_products(monkeypatch):
    """``inner_sweeps='auto'``: up to ``1 + rho / 2`` sweeps, rho the products' cost over a
    sweep's (``n / k`` for W, ``m / k`` for H, times V's non-zero share), at most 20. A 1%
    non-zero V gets one sweep each; the same values stored dense get the same sweeps (the
    share is counted from the values, so both give the same iterates); a full V gets 20."""
    rng = np.random.default_rng(0)
    X = sp.random(400, 300, density=0.01, random_state=rng, format="csr", dtype=np.float64)
    X.data += 0.5  # (no stored zeros)
    assert _sweeps_asked(monkeypatch, X) == {"W": {1}, "H": {1}}
    assert _sweeps_asked(monkeypatch, X.toarray()) == {"W": {1}, "H": {1}}
    full = rng.random((400, 300)) + 0.1
    assert _sweeps_asked(monkeypatch, full) == {"W": {20}, "H": {20}}
    assert _sweeps_asked(monkeypatch, full, inner_sweeps=3) == {"W": {3}, "H": {3}}


@pytest.mark.parametrize("inner_sweeps", ["auto", 1, 3])
@pytest.mark.parametrize("solver", ["cd", "mu"])
@pytest.mark.parametrize("penalty", [{}, dict(alpha_W=0.01, l1_ratio=0.5)])
def test_objective_never_increases(X, solver, inner_sweeps, penalty):
    est = NMF(6, init="nndsvda", solver=solver, inner_sweeps=inner_sweeps, tol=0,
              max_iter=60, random_state=0, **penalty).fit(X)
    history = np.asarray(est.loss_history_)
    assert len(history) == est.n_iter_ + 1 == 61
    # The loss is formed from products: allow cancellation at the level of eps * ||X||^2.
    slack = 1e-12 * float(np.vdot(X, X))
    assert np.all(np.diff(history) <= slack), np.diff(history).max()
    assert history[-1] < history[0]


@pytest.mark.parametrize("init", ["random", "nndsvda"])
def test_exact_recovery_of_low_rank_data(init):
    rng = np.random.RandomState(5)
    L = np.abs(rng.standard_normal((50, 3))) @ np.abs(rng.standard_normal((3, 40)))
    est = NMF(3, init=init, tol=1e-12, max_iter=3000, random_state=0)
    W = est.fit_transform(L)
    assert rel_error(L, W, est.components_) < 1e-6


def test_callback_sees_every_iteration(X):
    seen = []
    est = NMF(4, init="random", random_state=0, max_iter=20, tol=0)
    est.fit_transform(X, callback=seen.append)
    assert [info.iteration for info in seen] == list(range(1, 21))
    assert_allclose([info.objective for info in seen], est.loss_history_[1:])
    assert seen[-1].reconstruction_err == est.reconstruction_err_


@pytest.mark.parametrize("dtype, expected", [(np.float64, np.float64), (np.float32, np.float32),
                                             (np.int64, np.float64), (np.int32, np.float64)])
def test_output_dtype(dtype, expected):
    X = np.random.RandomState(0).randint(0, 10, size=(20, 8)).astype(dtype)
    est = NMF(3, random_state=0, max_iter=50, tol=1e-3)
    W = est.fit_transform(X)
    assert W.dtype == expected
    assert est.components_.dtype == expected
    assert est.transform(X).dtype == expected
    assert est.inverse_transform(W).dtype == expected


@pytest.mark.parametrize("init", ["random", "nndsvd", "nndsvda", "nndsvdar"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_deterministic_given_random_state(X, init, shuffle):
    def run(seed):
        est = NMF(5, init=init, shuffle=shuffle, random_state=seed, max_iter=50, tol=0)
        return est.fit_transform(X), est.components_

    W1, H1 = run(3)
    W2, H2 = run(3)
    assert_array_equal(W1, W2)
    assert_array_equal(H1, H2)
    if init != "nndsvd" or shuffle:
        W3, _ = run(4)
        assert not np.array_equal(W1, W3)


@pytest.mark.parametrize("init", ["random", "nndsvda"])
@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_dense_and_sparse_give_the_same_factorization(init, solver):
    rng = np.random.RandomState(2)
    X = np.abs(rng.standard_normal((35, 25)))
    X[X < 0.8] = 0  # about 60% zeros
    params = dict(n_components=4, init=init, solver=solver, random_state=0, max_iter=60, tol=0)
    dense = NMF(**params)
    W = dense.fit_transform(X)
    for fmt in (sp.csr_matrix, sp.csc_matrix):
        sparse = NMF(**params)
        W_s = sparse.fit_transform(fmt(X))
        assert isinstance(W_s, np.ndarray)
        assert_allclose(W_s, W, rtol=1e-7, atol=1e-10)
        assert_allclose(sparse.components_, dense.components_, rtol=1e-7, atol=1e-10)
        assert_allclose(sparse.transform(fmt(X)), dense.transform(X), rtol=1e-7, atol=1e-10)


def test_transform_is_row_subset_invariant(X):
    est = NMF(5, random_state=0).fit(X)
    W_all = est.transform(X)
    rows = np.array([3, 17, 0, 39, 22])
    # Each row stops on its own; only BLAS rounding (matrix sizes differ) may differ.
    atol = 1e-12 * np.abs(W_all).max()
    assert_allclose(est.transform(X[rows]), W_all[rows], rtol=1e-10, atol=atol)
    assert_allclose(est.transform(X[5:6]), W_all[5:6], rtol=1e-10, atol=atol)
    assert_allclose(est.transform(X[::-1]), W_all[::-1], rtol=1e-10, atol=atol)


def test_transform_solves_the_non_negative_least_squares_problem(X):
    est = NMF(5, random_state=0).fit(X)
    est.set_params(tol=1e-12, max_iter=5000)
    W = est.transform(X)
    H = est.components_
    for i in range(0, X.shape[0], 7):
        w_ref, _ = nnls(H.T, X[i])
        assert_allclose(W[i], w_ref, rtol=1e-6, atol=1e-9)


def test_transform_close_to_fit_transform(X):
    est = NMF(5, random_state=0, tol=1e-6, max_iter=1000)
    W = est.fit_transform(X)
    W_t = est.transform(X)
    assert W_t.min() >= 0
    # Both reconstruct X about equally well; transform's W is optimal for the final H.
    H = est.components_
    assert np.linalg.norm(X - W_t @ H) <= np.linalg.norm(X - W @ H) * (1 + 1e-6)
    assert_allclose(W_t, W, atol=1e-2 * np.abs(W).max())


def test_inverse_transform(X):
    est = NMF(5, random_state=0)
    W = est.fit_transform(X)
    assert_allclose(est.inverse_transform(W), W @ est.components_)
    Wd = da.from_array(W, chunks=(7, 5))
    out = est.inverse_transform(Wd)
    assert isinstance(out, da.Array)
    with dask.config.set(scheduler="sync"):
        assert_allclose(out.compute(), W @ est.components_)


@pytest.mark.parametrize("solver", ["cd", "mu"])
@pytest.mark.parametrize("init", ["random", "nndsvda"])
def test_non_negative_factorization_and_nmf_agree_with_NMF(X, solver, init):
    params = dict(init=init, solver=solver, random_state=0, max_iter=300, tol=1e-5)
    est = NMF(4, **params)
    W = est.fit_transform(X)
    W_f, H_f, n_iter = non_negative_factorization(X, n_components=4, **params)
    assert_array_equal(W_f, W)
    assert_array_equal(H_f, est.components_)
    assert n_iter == est.n_iter_
    result = nmf(X, 4, **params)
    assert isinstance(result, NMFResult)
    assert_array_equal(result.W, W)
    assert_array_equal(result.H, est.components_)
    assert result.n_iter == est.n_iter_
    assert result.reconstruction_err == est.reconstruction_err_
    assert result.loss_history == est.loss_history_
    assert result.converged


def test_non_negative_factorization_with_fixed_H(X):
    est = NMF(4, random_state=0).fit(X)
    H = est.components_.copy()
    W, H_out, n_iter = non_negative_factorization(X, H=H, n_components=4, update_H=False)
    assert_array_equal(H_out, H)
    assert 1 <= n_iter <= 200
    assert_array_equal(W, est.transform(X))
    # scikit-learn solves the same convex problem (by coordinate descent to its tol).
    W_sk, _, _ = sk_nnf(X, H=H, n_components=4, update_H=False, tol=1e-10, max_iter=2000)
    assert_allclose(W, W_sk, atol=1e-3 * np.abs(W_sk).max())


def test_non_negative_factorization_matches_sklearn_iterates(X):
    W0, H0 = _initialize_nmf(X, 3, init="random", random_state=1)
    args = dict(n_components=3, init="custom", tol=0, max_iter=25)
    W, H, n = non_negative_factorization(X, W0.copy(), H0.copy(), **args)
    W_sk, H_sk, n_sk = sk_nnf(X, W0.copy(), H0.copy(), **args)
    assert n == n_sk == 25
    # default inner_sweeps='auto' does more work per pass than sklearn: compare objectives
    assert np.linalg.norm(X - W @ H) <= 1.01 * np.linalg.norm(X - W_sk @ H_sk)


def test_nmf_reports_non_convergence_without_warning(X):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = nmf(X, 5, init="random", random_state=0, max_iter=2, tol=1e-12)
    assert not result.converged
    assert result.n_iter == 2


def test_convergence_warning_at_max_iter(X):
    est = NMF(5, init="random", random_state=0, max_iter=3, tol=1e-12)
    with pytest.warns(ConvergenceWarning, match="Maximum number of iterations 3"):
        est.fit(X)
    assert est.n_iter_ == 3
    # tol=0 asks for max_iter iterations: no warning (as scikit-learn).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NMF(5, init="random", random_state=0, max_iter=3, tol=0).fit(X)


def test_converges_before_max_iter_with_default_tol(X):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = NMF(5, random_state=0).fit(X)
    assert est.n_iter_ < est.max_iter
    history = est.loss_history_
    assert (history[-2] - history[-1]) / history[-2] < est.tol


def test_n_components_auto_and_none(X):
    assert NMF(None, random_state=0, max_iter=20, tol=0).fit(X).components_.shape == (30, 30)
    W0, H0 = _initialize_nmf(X, 6, init="random", random_state=0)
    est = NMF("auto", init="custom", max_iter=5, tol=0).fit(X, W=W0, H=H0)
    assert est.n_components_ == 6


# ---------------------------------------------------------------- dask input
@pytest.mark.parametrize("scheduler", ["sync", "threads"])
@pytest.mark.parametrize("init", ["random", "nndsvda"])
def test_dask_input_gives_numpy_result(X, scheduler, init):
    params = dict(n_components=5, init=init, random_state=0, tol=0, max_iter=30, inner_sweeps=1)
    ref = NMF(**params)
    W_ref = ref.fit_transform(X)
    Xd = da.from_array(X, chunks=(7, X.shape[1]))  # 6 blocks, the last of 5 rows
    with dask.config.set(scheduler=scheduler):
        est = NMF(**params)
        W = est.fit_transform(Xd)
        assert isinstance(W, da.Array) and isinstance(est.components_, np.ndarray)
        assert_allclose(est.components_, ref.components_, rtol=1e-9, atol=1e-12)
        assert_allclose(W.compute(), W_ref, rtol=1e-9, atol=1e-12)
        assert_allclose(est.reconstruction_err_, ref.reconstruction_err_, rtol=1e-9)
        assert_allclose(est.transform(Xd).compute(), ref.transform(X), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solver", ["cd", "mu"])
@pytest.mark.parametrize("chunk_rows", [7, 13])
def test_dask_input_with_automatic_sweeps_gives_numpy_result(X, solver, chunk_rows):
    # inner_sweeps='auto' stops the sweeps of each row of W on its own, so the result does
    # not depend on how V is split into row blocks.
    params = dict(n_components=5, solver=solver, random_state=0, tol=0, max_iter=60)
    ref = NMF(**params).fit(X)
    with dask.config.set(scheduler="sync"):
        est = NMF(**params)
        W = est.fit_transform(da.from_array(X, chunks=(chunk_rows, X.shape[1]))).compute()
    assert_allclose(est.components_, ref.components_, rtol=1e-8, atol=1e-11)
    assert_allclose(W, NMF(**params).fit_transform(X), rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_dask_input_default_settings(X, scheduler):
    ref = NMF(5, random_state=0).fit(X)
    with dask.config.set(scheduler=scheduler):
        est = NMF(5, random_state=0)
        W = est.fit_transform(da.from_array(X, chunks=(7, X.shape[1]))).compute()
    assert est.n_iter_ == ref.n_iter_
    assert_allclose(est.components_, ref.components_, rtol=1e-8, atol=1e-11)
    assert np.linalg.norm(X - W @ est.components_) <= 1.01 * ref.reconstruction_err_
    assert W.min() >= 0 and est.components_.min() >= 0


def test_dask_float32_stays_float32(X):
    with dask.config.set(scheduler="sync"):
        est = NMF(3, init="random", random_state=0, max_iter=20, tol=0)
        W = est.fit_transform(da.from_array(X.astype(np.float32), chunks=(10, X.shape[1])))
        assert W.dtype == np.float32 and W.compute().dtype == np.float32
        assert est.components_.dtype == np.float32
