"""The in-memory executor: row blocks side by side in threads give the fit of one block."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose

from bignmf import NMF, executor
from bignmf.executor import Eager
from bignmf.passes import load_block


@pytest.fixture
def three_blocks(monkeypatch):
    """In-memory fits split V into 3 row blocks, whatever this machine's core count."""
    monkeypatch.setattr(executor, "thread_budget", lambda: 3)
    monkeypatch.setattr(executor, "MIN_EAGER_ROWS", 8)


def _data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.random((120, 6)) @ rng.random((6, 40))
    X[rng.random(X.shape) < 0.5] = 0  # sparse enough to make CSR blocks uneven
    return X


def test_blocks_are_views_balanced_in_stored_entries():
    D = (np.random.default_rng(0).random((1000, 50)) < 0.05).astype(float)
    D[:100] = 1.0  # the first rows hold most entries
    X = sp.csr_matrix(D)
    ex = Eager(X, n_blocks=4)
    blocks = ex.blocks()
    assert len(blocks) == len(ex.row_bounds) >= 2
    assert [b.shape[0] for b in blocks] == [b - a for a, b in ex.row_bounds]
    assert all(np.shares_memory(b.data, X.data) for b in blocks)
    # and the kernels compute on them as they are (no copy per pass)
    assert all(load_block(b) is b for b in blocks)
    nnz = [b.nnz for b in blocks]
    assert max(nnz) < 0.5 * X.nnz  # rows split by stored entries, not by count
    assert sum(nnz) == X.nnz
    for b, (a, e) in zip(blocks, ex.row_bounds, strict=True):
        assert (b != X[a:e]).nnz == 0
    dense = Eager(D, n_blocks=4).blocks()
    assert all(np.shares_memory(b, D) for b in dense)


def test_small_matrix_is_one_block():
    assert len(Eager(np.ones((100, 5))).blocks()) == 1


@pytest.mark.parametrize("solver", ["cd", "mu"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_blocks_in_threads_give_the_one_block_fit(solver, sparse, monkeypatch):
    X = _data()
    Xin = sp.csr_matrix(X) if sparse else X
    params = dict(n_components=5, solver=solver, init="nndsvda", max_iter=40,
                  random_state=0, tol=0)
    monkeypatch.setattr(executor, "MIN_EAGER_ROWS", 10**9)
    one = NMF(**params)
    W1 = one.fit_transform(Xin)
    monkeypatch.setattr(executor, "thread_budget", lambda: 3)
    monkeypatch.setattr(executor, "MIN_EAGER_ROWS", 8)
    three = NMF(**params)
    W3 = three.fit_transform(Xin)
    assert three.n_iter_ == one.n_iter_
    # Rows stop sweeping on their own, so only the order of the block sums differs.
    assert_allclose(W3, W1, rtol=1e-7, atol=1e-10)
    assert_allclose(three.components_, one.components_, rtol=1e-7, atol=1e-10)
    assert_allclose(three.reconstruction_err_, one.reconstruction_err_, rtol=1e-9)
    assert_allclose(three.transform(Xin), one.transform(Xin), rtol=1e-7, atol=1e-10)
    # The blocks are views of the user's matrix: it is left as it was.
    assert_allclose(Xin.toarray() if sparse else Xin, X, rtol=0, atol=0)


def test_blocks_in_threads_kl_and_missing(three_blocks):
    X = _data(1)
    kl = NMF(5, solver="mu", beta_loss="kullback-leibler", init="nndsvda", max_iter=50,
             random_state=0, tol=0).fit(sp.csr_matrix(X))
    dense = NMF(5, solver="mu", beta_loss="kullback-leibler", init="nndsvda", max_iter=50,
                random_state=0, tol=0).fit(X)
    assert_allclose(kl.components_, dense.components_, rtol=1e-6, atol=1e-9)
    Xm = X.copy()
    Xm[::7, ::3] = np.nan
    masked = NMF(5, missing="nan", init="nndsvda", max_iter=50, random_state=0,
                  tol=0).fit(Xm)
    assert np.isfinite(masked.reconstruction_err_) and (masked.components_ >= 0).all()


def test_blocks_follow_the_blas_thread_budget():
    """One block per BLAS thread the process may use: none extra inside a worker whose
    BLAS is limited to one thread (a dask or joblib worker)."""
    from threadpoolctl import threadpool_limits

    V = np.ones((100_000, 3))
    assert len(Eager(V, threads=2).blocks()) == 2
    with threadpool_limits(limits=1, user_api="blas"):
        assert len(Eager(V).blocks()) == 1
