"""Beta-divergence losses and missing entries (multiplicative updates, ``solver='mu'``).

References: scikit-learn's ``solver='mu'`` iterates and ``_beta_divergence``; invariants
(objective non-increasing, exact low-rank recovery of hidden entries, sparse == dense,
masked with nothing missing == unmasked, eager == block-wise == real cluster).
"""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from conftest import assert_same_fit
from sklearn.decomposition import NMF as SkNMF
from sklearn.decomposition._nmf import _beta_divergence
from sklearn.exceptions import ConvergenceWarning

from bignmf import NMF
from bignmf.estimator import InvalidParameterError

BETAS = ["kullback-leibler", "itakura-saito", 0.5, 1.5, 3.0]


def _data(shape=(60, 40), seed=0, shift=0.0):
    rng = np.random.RandomState(seed)
    X = np.abs(rng.randn(*shape))
    X[X < 0.5] = 0  # zeros, as count data has
    return X + shift


def _positive_for(beta):
    """beta <= 0 cannot take zeros (scikit-learn raises); shift the data for those."""
    return 0.1 if beta in ("itakura-saito", 0.5) else 0.0


def _penalty(X, W, H, alpha_W, alpha_H, l1_ratio):
    n_samples, n_features = X.shape
    l1_W, l2_W = n_features * alpha_W * l1_ratio, n_features * alpha_W * (1 - l1_ratio)
    l1_H, l2_H = n_samples * alpha_H * l1_ratio, n_samples * alpha_H * (1 - l1_ratio)
    return (l1_W * W.sum() + 0.5 * l2_W * (W**2).sum()
            + l1_H * H.sum() + 0.5 * l2_H * (H**2).sum())


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("alphas", [(0.0, 0.0, 0.0), (0.02, 0.01, 0.3)])
def test_iterates_equal_scikit_learn_mu(beta, alphas):
    """Same random init -> the same iterates as scikit-learn's solver='mu', for every loss
    and with regularization on both factors."""
    alpha_W, alpha_H, l1_ratio = alphas
    X = _data(shift=_positive_for(beta))
    kw = dict(n_components=5, solver="mu", beta_loss=beta, init="random", random_state=0,
              max_iter=60, tol=0, alpha_W=alpha_W, alpha_H=alpha_H, l1_ratio=l1_ratio)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkNMF(**kw)
        W_ref = ref.fit_transform(X)
    est = NMF(**kw)
    W = est.fit_transform(X)
    np.testing.assert_allclose(W, W_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(est.components_, ref.components_, rtol=1e-9, atol=1e-12)
    assert est.n_iter_ == 60
    assert est.reconstruction_err_ == pytest.approx(ref.reconstruction_err_, rel=1e-10)
    # The last objective is the divergence of the returned factors plus the penalties.
    expected = _beta_divergence(X, W, est.components_, beta) + _penalty(
        X, W, est.components_, alpha_W, alpha_H, l1_ratio)
    assert est.loss_history_[-1] == pytest.approx(expected, rel=1e-10)
    assert len(est.loss_history_) == est.n_iter_ + 1


@pytest.mark.parametrize("beta", ["kullback-leibler", "itakura-saito"])
def test_objective_within_1pct_of_scikit_learn_with_defaults(beta):
    """Default init and stopping rule: bignmf's final divergence is within 1% of
    scikit-learn's (or lower), on real-sized small data."""
    X = _data((120, 70), seed=3, shift=_positive_for(beta))
    kw = dict(n_components=6, solver="mu", beta_loss=beta, random_state=0, max_iter=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkNMF(**kw)
        W_ref = ref.fit_transform(X)
        est = NMF(**kw)
        W = est.fit_transform(X)
    d_ref = _beta_divergence(X, W_ref, ref.components_, beta)
    d = _beta_divergence(X, W, est.components_, beta)
    assert d <= 1.01 * d_ref


@pytest.mark.parametrize("beta", BETAS)
def test_objective_never_increases(beta):
    X = _data(shift=_positive_for(beta))
    est = NMF(5, solver="mu", beta_loss=beta, init="nndsvda", max_iter=80, tol=0,
              alpha_W=0.01, l1_ratio=0.5, random_state=0)
    est.fit(X)
    history = np.asarray(est.loss_history_)
    assert np.all(np.diff(history) <= 1e-10 * history[:-1])
    assert history[-1] < history[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("solver", "beta"), [("mu", "kullback-leibler"), ("mu", "frobenius"),
                                              ("cd", "frobenius")])
def test_sparse_equals_dense(beta, solver, dtype):
    """The same problem stored sparse and dense gives the same factors from the same init."""
    X = _data((80, 50), seed=1).astype(dtype)
    kw = dict(n_components=4, solver=solver, beta_loss=beta, init="nndsvda", random_state=0,
              max_iter=40, tol=0)
    W_dense = NMF(**kw).fit_transform(X)
    est = NMF(**kw)
    W_sparse = est.fit_transform(sp.csr_matrix(X))
    assert W_sparse.dtype == dtype
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(W_sparse, W_dense, rtol=rtol, atol=rtol * W_dense.max())


def test_sparse_itakura_saito_is_made_dense_per_block_and_equals_dense():
    X = _data((80, 50), seed=2, shift=0.2)
    kw = dict(n_components=4, solver="mu", beta_loss="itakura-saito", init="random",
              random_state=0, max_iter=30, tol=0)
    W_dense = NMF(**kw).fit_transform(X)
    W_sparse = NMF(**kw).fit_transform(sp.csr_matrix(X))
    np.testing.assert_allclose(W_sparse, W_dense, rtol=1e-10)


@pytest.mark.parametrize("beta", ["kullback-leibler", "itakura-saito", "frobenius"])
def test_blockwise_equals_in_memory(beta):
    """Dask row blocks (unequal sizes) give the in-memory result: same loss history, H."""
    X = _data((300, 50), seed=4, shift=_positive_for(beta))
    kw = dict(n_components=4, solver="mu", beta_loss=beta, init="nndsvda", random_state=0,
              max_iter=25, tol=0, inner_sweeps=1)
    ref = NMF(**kw).fit(X)
    with dask.config.set(scheduler="threads"):
        est = NMF(**kw)
        W = est.fit_transform(da.from_array(X, chunks=(70, 50))).compute()
    assert_same_fit(est.components_, ref.components_)
    np.testing.assert_allclose(est.loss_history_, ref.loss_history_, rtol=1e-12)
    assert_same_fit(W, ref.fit_transform(X))


# ------------------------------------------------------------------------ missing entries
@pytest.fixture(scope="module")
def low_rank():
    rng = np.random.RandomState(0)
    X = rng.rand(200, 4) @ rng.rand(4, 80)
    hidden = rng.rand(*X.shape) < 0.3
    return X, hidden


@pytest.mark.parametrize("beta", ["frobenius", "kullback-leibler"])
def test_masked_fit_recovers_hidden_entries_of_low_rank_data(low_rank, beta):
    """Exactly rank-4 data with 30% of the entries hidden: the fit of the observed entries
    predicts the hidden ones (relative error < 1%), and equals the sparse 'unstored' fit."""
    X, hidden = low_rank
    X_nan = np.where(hidden, np.nan, X)
    kw = dict(n_components=4, solver="mu", beta_loss=beta, init="random", random_state=0,
              max_iter=1500, tol=0)
    est = NMF(missing="nan", **kw)
    W = est.fit_transform(X_nan)
    predicted = W @ est.components_
    err = np.linalg.norm((predicted - X)[hidden]) / np.linalg.norm(X[hidden])
    assert err < 0.01
    # The zero-filled problem (what scikit-learn would fit) is far worse on hidden entries.
    rows, cols = np.nonzero(~hidden)
    S = sp.csr_matrix((X[~hidden], (rows, cols)), shape=X.shape)
    est_s = NMF(missing="unstored", **kw)
    W_s = est_s.fit_transform(S)
    np.testing.assert_allclose(W_s, W, rtol=1e-8, atol=1e-10)
    assert est_s.reconstruction_err_ == pytest.approx(est.reconstruction_err_, rel=1e-8)
    # transform of the same rows predicts the hidden entries too.
    T = est.transform(X_nan)
    err_t = np.linalg.norm((T @ est.components_ - X)[hidden]) / np.linalg.norm(X[hidden])
    assert err_t < 0.02


@pytest.mark.parametrize("beta", ["frobenius", "kullback-leibler", "itakura-saito"])
def test_masked_with_nothing_missing_equals_unmasked(beta):
    X = _data((70, 30), seed=5, shift=0.05)
    kw = dict(n_components=4, solver="mu", beta_loss=beta, init="random", random_state=0,
              max_iter=30, tol=0, inner_sweeps=1)
    plain = NMF(**kw).fit_transform(X)
    np.testing.assert_allclose(NMF(missing="nan", **kw).fit_transform(X), plain, rtol=1e-10)
    np.testing.assert_allclose(NMF(missing="unstored", **kw).fit_transform(sp.csr_matrix(X)),
                               plain, rtol=1e-10)


@pytest.mark.parametrize("missing", ["nan", "unstored"])
def test_masked_hals_with_nothing_missing_is_hals(missing):
    """Per-row Gram matrices that all equal H H^T: masked HALS gives HALS's iterates."""
    X = _data((70, 30), seed=8, shift=0.05)
    kw = dict(n_components=4, init="nndsvda", random_state=0, max_iter=30, tol=0,
              inner_sweeps=1, alpha_W=0.01, l1_ratio=0.5)
    plain = NMF(**kw).fit(X)
    est = NMF(missing=missing, **kw)
    W = est.fit_transform(X if missing == "nan" else sp.csr_matrix(X))
    np.testing.assert_allclose(W, NMF(**kw).fit_transform(X),
                               rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.loss_history_, plain.loss_history_, rtol=1e-9)


def test_masked_hals_recovers_hidden_entries_far_sooner_than_mu(low_rank):
    """HALS with per-row and per-column Grams (solver='cd', the default) on exactly rank-4
    data with 30% hidden: hidden entries predicted to 1e-4 in fewer iterations than MU
    needs for 1e-2; the objective never increases; NaN == unstored; blocks == in memory."""
    X, hidden = low_rank
    X_nan = np.where(hidden, np.nan, X)
    kw = dict(n_components=4, init="random", random_state=0, tol=0)
    est = NMF(missing="nan", max_iter=1500, **kw)
    W = est.fit_transform(X_nan)
    err = np.linalg.norm((W @ est.components_ - X)[hidden]) / np.linalg.norm(X[hidden])
    assert err < 1e-4
    history = np.asarray(est.loss_history_)
    assert np.all(np.diff(history) <= 1e-9 * history[0])
    T = est.transform(X_nan)
    assert np.linalg.norm((T @ est.components_ - X)[hidden]) < 1e-3 * np.linalg.norm(X[hidden])
    mu = NMF(missing="nan", solver="mu", max_iter=1500, **kw)
    W_mu = mu.fit_transform(X_nan)
    err_mu = np.linalg.norm((W_mu @ mu.components_ - X)[hidden]) / np.linalg.norm(X[hidden])
    assert err < err_mu / 10

    rows, cols = np.nonzero(~hidden)
    S = sp.csr_matrix((X[~hidden], (rows, cols)), shape=X.shape)
    short = dict(kw, max_iter=40)
    W_nan = NMF(missing="nan", **short).fit_transform(X_nan)
    np.testing.assert_allclose(NMF(missing="unstored", **short).fit_transform(S), W_nan,
                               rtol=1e-9, atol=1e-12)
    with dask.config.set(scheduler="threads"):
        W_blocks = NMF(missing="nan", **short).fit_transform(
            da.from_array(X_nan, chunks=(45, 80))).compute()
    assert_same_fit(W_blocks, W_nan)


def test_masked_fit_from_zarr_on_a_real_cluster_equals_in_memory(low_rank, tmp_path,
                                                                 real_cluster):
    """NaN-marked missing entries in a Zarr store, fitted by worker processes that read
    their own rows: the same fit as in memory."""
    X, hidden = low_rank
    X_nan = np.where(hidden, np.nan, X)
    path = str(tmp_path / "ratings.zarr")
    zarr.create_array(path, shape=X.shape, chunks=(48, 80), dtype="f8")[...] = X_nan
    kw = dict(n_components=4, solver="mu", beta_loss="kullback-leibler", missing="nan",
              init="nndsvda", random_state=0, max_iter=20, tol=0)
    ref = NMF(**kw)
    W_ref = ref.fit_transform(X_nan)
    with real_cluster.client.as_current():
        est = NMF(**kw, block_rows=48)
        W = est.fit_transform(path).compute()
    assert_same_fit(W, W_ref)
    assert_same_fit(est.components_, ref.components_)
    np.testing.assert_allclose(est.loss_history_, ref.loss_history_, rtol=1e-12)


def test_checkpoint_resume_of_a_kl_fit_equals_uninterrupted(tmp_path):
    X = _data((90, 40), seed=6)
    kw = dict(n_components=4, solver="mu", beta_loss="kullback-leibler", init="random",
              random_state=0, tol=0)
    full = NMF(max_iter=20, **kw)
    W_full = full.fit_transform(X)
    store = tmp_path / "ck.zarr"
    NMF(max_iter=9, checkpoint=store, checkpoint_every=4, **kw).fit(X)
    resumed = NMF(max_iter=20, checkpoint=store, checkpoint_every=4, **kw)
    W = resumed.fit_transform(X, resume=True)
    assert_same_fit(W, W_full)
    assert_same_fit(resumed.loss_history_, full.loss_history_)


# ------------------------------------------------------------------------------- errors
def test_errors_name_the_problem():
    X = _data()
    with pytest.raises(InvalidParameterError, match="solver 'cd' does not handle beta_loss"):
        NMF(2, beta_loss="kullback-leibler").fit(X)
    with pytest.raises(InvalidParameterError,
                       match="solver 'compressed' does not handle missing"):
        NMF(2, solver="compressed", missing="nan").fit(X)
    with pytest.raises(ValueError, match="Gram matrix per column"):
        NMF(60, init="random", missing="nan").fit(np.ones((5, 10000)))
    with pytest.raises(InvalidParameterError, match="'missing' parameter"):
        NMF(2, solver="mu", missing="zeros").fit(X)
    with pytest.raises(ValueError, match="beta_loss <= 0 and X contains zeros"):
        NMF(2, solver="mu", beta_loss="itakura-saito").fit(X)
    with pytest.raises(ValueError, match="missing='unstored' applies to sparse input"):
        NMF(2, solver="mu", missing="unstored").fit(X)
    with pytest.raises(ValueError, match="missing='nan' applies to dense input"):
        NMF(2, solver="mu", missing="nan").fit(sp.csr_matrix(X))
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        NMF(2, solver="mu").fit(X_nan)
    with pytest.raises(ValueError, match="no observed entries"):
        NMF(2, solver="mu", missing="nan", init="random").fit(np.full((5, 4), np.nan))
    X_inf = X.copy()
    X_inf[1, 1] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        NMF(2, solver="mu", missing="nan").fit(X_inf)
    X_neg = X_nan.copy()
    X_neg[2, 2] = -1
    with pytest.raises(ValueError, match="Negative values"):
        NMF(2, solver="mu", missing="nan").fit(X_neg)


def test_out_of_core_zeros_under_itakura_saito_raise_in_the_first_pass(tmp_path):
    X = _data((100, 20), seed=7)
    path = str(tmp_path / "V.zarr")
    zarr.create_array(path, shape=X.shape, chunks=(25, 20), dtype="f8")[...] = X
    with dask.config.set(scheduler="synchronous"), pytest.raises(ValueError, match="zeros"):
        NMF(2, solver="mu", beta_loss="itakura-saito").fit(path)
