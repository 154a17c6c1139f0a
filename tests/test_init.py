"""Initialization (bignmf.init): random draws identical to scikit-learn's, NNDSVD from a
two-pass randomized SVD, and the documented number of passes over V."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.decomposition._nmf import _initialize_nmf

from bignmf import NMF
from bignmf.executor import DaskExecutor, Eager
from bignmf.init import OVERSAMPLES, initialize, resolve_init
from bignmf.passes import project_block, sketch_block

NNDSVD = ["nndsvd", "nndsvda", "nndsvdar"]


@pytest.fixture(scope="module")
def X():
    rng = np.random.RandomState(0)
    return np.abs(rng.standard_normal((45, 23)))


@pytest.fixture(scope="module")
def low_rank():
    """Exactly rank-3 non-negative data, 40 x 26."""
    rng = np.random.RandomState(1)
    return np.abs(rng.standard_normal((40, 3))) @ np.abs(rng.standard_normal((3, 26)))


@pytest.fixture
def sync():
    with dask.config.set(scheduler="sync"):
        yield


def run_init(V, k, init, random_state=0, chunk_rows=None):
    """Initial W (NumPy) and H, and the Initial record, from the Eager executor or, with
    ``chunk_rows``, from a DaskExecutor over row blocks of that many rows."""
    if chunk_rows is None:
        ex = Eager(V)
        initial = initialize(ex, V.shape, V.dtype, k, init, random_state)
        return ex.assemble(initial.W_blocks, k, V.dtype), initial.H, initial
    ex = DaskExecutor(da.from_array(V, chunks=(chunk_rows, V.shape[1])))
    initial = initialize(ex, V.shape, V.dtype, k, init, random_state)
    W = ex.assemble(initial.W_blocks, k, V.dtype).compute()
    return W, initial.H, initial


# ---------------------------------------------------------------- random
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 4, 30])
def test_random_init_is_sklearns(X, k, dtype):
    V = X.astype(dtype)
    W_sk, H_sk = _initialize_nmf(V, k, init="random", random_state=0)
    W, H, initial = run_init(V, k, "random")
    assert W.dtype == H.dtype == dtype
    # Same stream (H then W); the scale sqrt(mean / k) may differ in the last bit only.
    rtol = 1e-14 if dtype == np.float64 else 1e-6
    assert_allclose(W, W_sk, rtol=rtol)
    assert_allclose(H, H_sk, rtol=rtol)
    assert initial.passes == 1


@pytest.mark.parametrize("chunk_rows", [7, 1, 45])
@pytest.mark.usefixtures("sync")
def test_random_init_is_sklearns_across_row_blocks(X, chunk_rows):
    W_sk, H_sk = _initialize_nmf(X, 5, init="random", random_state=0)
    W, H, _ = run_init(X, 5, "random", chunk_rows=chunk_rows)
    assert_allclose(W, W_sk, rtol=1e-14)
    assert_allclose(H, H_sk, rtol=1e-14)


def test_random_init_accepts_a_random_state_instance(X):
    W_sk, H_sk = _initialize_nmf(X, 3, init="random", random_state=np.random.RandomState(9))
    W, H, _ = run_init(X, 3, "random", random_state=np.random.RandomState(9))
    assert_allclose(W, W_sk, rtol=1e-14)
    assert_allclose(H, H_sk, rtol=1e-14)


def test_random_init_of_sparse_data_is_sklearns(X):
    V = X * (X > 1.0)
    W_sk, H_sk = _initialize_nmf(sp.csr_matrix(V), 4, init="random", random_state=0)
    W, H, _ = run_init(sp.csr_matrix(V), 4, "random")
    assert_allclose(W, W_sk, rtol=1e-14)
    assert_allclose(H, H_sk, rtol=1e-14)


# ---------------------------------------------------------------- NNDSVD family
@pytest.mark.parametrize("init", NNDSVD)
@pytest.mark.parametrize("chunk_rows", [None, 7])
@pytest.mark.usefixtures("sync")
def test_nndsvd_shapes_and_signs(X, init, chunk_rows):
    k = 6
    W, H, initial = run_init(X, k, init, chunk_rows=chunk_rows)
    assert W.shape == (X.shape[0], k) and H.shape == (k, X.shape[1])
    assert W.dtype == H.dtype == X.dtype
    assert np.all(np.isfinite(W)) and np.all(np.isfinite(H))
    assert W.min() >= 0 and H.min() >= 0
    assert initial.passes == 2
    if init == "nndsvd":
        # The positive/negative split of singular vectors leaves zeros.
        assert (W == 0).any() and (H == 0).any()
    else:
        # nndsvda fills zeros with the mean of X, nndsvdar with small random values.
        assert (W > 0).all() and (H > 0).all()


@pytest.mark.parametrize("init", ["nndsvd", "nndsvda"])
@pytest.mark.parametrize("chunk_rows", [None, 7])
@pytest.mark.usefixtures("sync")
def test_nndsvd_on_exactly_low_rank_data_is_sklearns(low_rank, init, chunk_rows):
    # The randomized SVD is exact when V has rank <= k: NNDSVD is then scikit-learn's
    # (NNDSVD does not depend on the signs of the singular pairs).
    k = 3
    W_sk, H_sk = _initialize_nmf(low_rank, k, init=init, random_state=0)
    W, H, _ = run_init(low_rank, k, init, chunk_rows=chunk_rows)
    scale = np.abs(low_rank).max()
    assert_allclose(W @ H, W_sk @ H_sk, atol=1e-10 * scale)
    assert_allclose(W, W_sk, atol=1e-10 * np.abs(W_sk).max())
    assert_allclose(H, H_sk, atol=1e-10 * np.abs(H_sk).max())
    if init == "nndsvd":
        assert_array_equal(W == 0, W_sk == 0)
        assert_array_equal(H == 0, H_sk == 0)


@pytest.mark.parametrize("chunk_rows", [None, 7])
@pytest.mark.usefixtures("sync")
def test_nndsvda_and_nndsvdar_fill_exactly_the_zeros_of_nndsvd(X, chunk_rows):
    # Same random_state -> same sketch: the variants differ from nndsvd only where it is 0.
    W, H, _ = run_init(X, 6, "nndsvd", chunk_rows=chunk_rows)
    mean = X.mean()
    W_a, H_a, _ = run_init(X, 6, "nndsvda", chunk_rows=chunk_rows)
    assert_allclose(W_a, np.where(W == 0, mean, W), rtol=1e-12)
    assert_allclose(H_a, np.where(H == 0, mean, H), rtol=1e-12)
    W_ar, H_ar, _ = run_init(X, 6, "nndsvdar", chunk_rows=chunk_rows)
    for A, A_ar in ((W, W_ar), (H, H_ar)):
        assert_allclose(A_ar[A > 0], A[A > 0], rtol=1e-12)
        filled = A_ar[A == 0]
        assert np.all(filled > 0) and np.all(filled < mean / 10)  # |mean * N(0,1) / 100|


def test_nndsvd_rank_one_is_the_leading_singular_pair(low_rank):
    # With one component NNDSVD is sqrt(s1) |u1| and sqrt(s1) |v1|: W H = s1 |u1| |v1|^T.
    W, H, _ = run_init(low_rank, 1, "nndsvd")
    U, S, Vt = np.linalg.svd(low_rank, full_matrices=False)
    assert_allclose(W @ H, S[0] * np.outer(np.abs(U[:, 0]), np.abs(Vt[0])), rtol=1e-9)


@pytest.mark.parametrize("chunk_rows", [None, 7])
@pytest.mark.usefixtures("sync")
def test_sketch_singular_values_match_lapack_on_low_rank_data(low_rank, chunk_rows):
    # The two passes of the init's randomized SVD (sketch_block, project_block), summed over
    # row blocks, recover the top singular values of exactly low-rank data.
    k = 3
    V = low_rank
    ex = Eager(V) if chunk_rows is None else DaskExecutor(
        da.from_array(V, chunks=(chunk_rows, V.shape[1])))
    Omega = np.random.RandomState(0).standard_normal((V.shape[1], min(k + OVERSAMPLES, *V.shape)))
    _, sums = ex.run([], ex.total(ex.map(sketch_block, ex.blocks(), Omega=Omega)))
    assert_allclose(sums["Z"], V.T @ (V @ Omega), rtol=1e-10)
    Q, _ = np.linalg.qr(sums["Z"])
    outs = ex.map(project_block, ex.blocks(), Q=Q)
    _, total = ex.run([], ex.total(ex.take(outs, 1)))
    evals = np.sort(np.linalg.eigvalsh(total["CtC"]))[::-1]
    S = np.sqrt(np.maximum(evals[:k], 0))
    S_ref = np.linalg.svd(V, compute_uv=False)[:k]
    assert_allclose(S, S_ref, rtol=1e-10)
    # ... and nothing beyond rank k.
    assert np.all(np.sqrt(np.maximum(evals[k:], 0)) < 1e-6 * S_ref[0])


def test_nndsvdar_is_reproducible_and_seeded(X):
    W1, H1, _ = run_init(X, 4, "nndsvdar", random_state=3)
    W2, H2, _ = run_init(X, 4, "nndsvdar", random_state=3)
    assert_array_equal(W1, W2)
    assert_array_equal(H1, H2)
    W3, H3, _ = run_init(X, 4, "nndsvdar", random_state=4)
    assert not np.array_equal(H1, H3) or not np.array_equal(W1, W3)


# ---------------------------------------------------------------- default and passes
def test_default_init_follows_sklearn():
    assert resolve_init(None, 3, (10, 5)) == "nndsvda"
    assert resolve_init(None, 5, (10, 5)) == "nndsvda"
    assert resolve_init(None, 6, (10, 5)) == "random"
    for init in ("random", "custom", *NNDSVD):
        assert resolve_init(init, 2, (10, 5)) == init


class CountingArray:
    """An array-like that counts how often each of its row ranges is read."""

    def __init__(self, data):
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads: dict[int, int] = {}

    def __getitem__(self, key):
        out = self.data[key]
        if out.size:  # dask reads an empty slice once for the array's metadata
            rows = key[0] if isinstance(key, tuple) else key
            start = rows.start or 0
            self.reads[start] = self.reads.get(start, 0) + 1
        return out


@pytest.mark.parametrize("init, passes", [("random", 1), ("nndsvd", 2), ("nndsvda", 2),
                                          ("nndsvdar", 2)])
@pytest.mark.usefixtures("sync")
def test_init_reads_each_block_of_V_the_documented_number_of_times(X, init, passes):
    source = CountingArray(X)
    V = da.from_array(source, chunks=(7, X.shape[1]), asarray=True)
    n_blocks = len(V.chunks[0])
    ex = DaskExecutor(V)
    initial = initialize(ex, V.shape, V.dtype, 4, init, 0)
    ex.assemble(initial.W_blocks, 4, V.dtype).compute()  # W blocks are already computed
    assert initial.passes == passes
    assert sorted(source.reads) == [7 * i for i in range(n_blocks)]
    assert set(source.reads.values()) == {passes}, source.reads


@pytest.mark.parametrize("init, passes", [("random", 1), ("nndsvda", 2)])
def test_eager_init_passes(X, init, passes):
    class CountingEager(Eager):
        calls = 0

        def blocks(self):
            CountingEager.calls += 1
            return super().blocks()

    ex = CountingEager(X)
    initial = initialize(ex, X.shape, X.dtype, 3, init, 0)
    assert initial.passes == passes == CountingEager.calls
    # The first pass also gives ||V||^2 (for the loss) and the checks of V.
    assert_allclose(initial.stats["sumsq"], np.vdot(X, X), rtol=1e-12)
    assert initial.stats["min"] == X.min() and initial.stats["nonfinite"] == 0


def test_estimator_uses_the_same_initialization(X):
    # max_iter=1 with tol=0: the loss history starts at the objective of the sklearn init.
    W_sk, H_sk = _initialize_nmf(X, 4, init="random", random_state=0)
    est = NMF(4, init="random", random_state=0, max_iter=1, tol=0).fit(X)
    assert_allclose(est.loss_history_[0], 0.5 * np.linalg.norm(X - W_sk @ H_sk) ** 2,
                    rtol=1e-10)


def test_nndsvdar_fill_does_not_depend_on_the_blocks(X):
    """The random fill of nndsvdar is drawn at each row's place in one stream: the same
    however V is split into row blocks (in memory one block per core, out of core by the
    workers' memory)."""
    W1, H1, _ = run_init(X, 6, "nndsvdar", random_state=3)
    for chunk_rows in (7, 13, 50):
        W, H, _ = run_init(X, 6, "nndsvdar", random_state=3, chunk_rows=chunk_rows)
        # (the blocks' sums of the sketch differ in the last bits, so the SVD does too)
        assert_allclose(W, W1, rtol=1e-8)
        assert_allclose(H, H1, rtol=1e-8)
    assert (W1 > 0).all()
