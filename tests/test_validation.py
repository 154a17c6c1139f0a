"""Bad input: clear errors that name the problem, raised before anything is returned."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from bignmf import NMF, cluster, nmf, non_negative_factorization


@pytest.fixture(scope="module")
def X():
    return np.abs(np.random.RandomState(0).standard_normal((12, 6)))


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail if bignmf starts its embedded local cluster."""

    def refuse(*args, **kwargs):
        raise AssertionError("a local cluster was started")

    monkeypatch.setattr(cluster, "embedded_client", refuse)


@pytest.fixture
def sync(no_cluster):
    """The synchronous scheduler (and no cluster)."""
    with dask.config.set(scheduler="sync"):
        yield


def assert_not_fitted(est):
    for attr in ("components_", "n_components_", "reconstruction_err_", "n_iter_",
                 "loss_history_"):
        assert not hasattr(est, attr), attr


def fit_fails(X, exc, match, **params):
    est = NMF(**params)
    with pytest.raises(exc, match=match):
        est.fit(X)
    assert_not_fitted(est)
    return est


# ---------------------------------------------------------------- bad data in memory
def test_negative_values(X):
    bad = X.copy()
    bad[3, 4] = -0.5
    fit_fails(bad, ValueError, r"Negative values in data passed to NMF.*-0\.5", n_components=2)
    fit_fails(sp.csr_matrix(bad), ValueError, "Negative values", n_components=2)
    for init in ("nndsvda", "custom"):
        est = NMF(2, init=init)
        kwargs = dict(W=np.ones((12, 2)), H=np.ones((2, 6))) if init == "custom" else {}
        with pytest.raises(ValueError, match="Negative values"):
            est.fit(bad, **kwargs)
        assert_not_fitted(est)


@pytest.mark.parametrize("value, what", [(np.nan, "NaN"), (np.inf, "infinity"),
                                         (-np.inf, "infinity")])
def test_non_finite_values(X, value, what):
    bad = X.copy()
    bad[1, 1] = value
    fit_fails(bad, ValueError, what, n_components=2)


@pytest.mark.parametrize("bad, match", [
    (np.ones(5), "Expected 2D array, got 1D array"),
    (np.ones((2, 3, 4)), "Found array with dim 3"),
    (np.empty((0, 5)), "0 sample"),
    (np.empty((5, 0)), "0 feature"),
    (np.array([["a", "b"], ["c", "d"]]), "could not convert string to float"),
    (np.array([[1.0, "x"], [2.0, 3.0]], dtype=object), "could not convert string to float"),
    (np.ones((3, 3)) + 1j, "Complex data not supported"),
])
def test_malformed_arrays(bad, match):
    fit_fails(bad, ValueError, match, n_components=1)


def test_transform_checks_its_input(X):
    est = NMF(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="Negative values"):
        est.transform(X - 1)
    with pytest.raises(ValueError, match="X has 3 features, but NMF is expecting 6"):
        est.transform(X[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        est.transform(np.full((2, 6), np.nan))


def test_transform_before_fit(X):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        NMF(2).transform(X)
    with pytest.raises(NotFittedError):
        NMF(2).inverse_transform(X[:, :2])


# ---------------------------------------------------------------- bad parameters
@pytest.mark.parametrize("param, value", [
    ("n_components", 0),
    ("n_components", -3),
    ("n_components", 1.5),
    ("n_components", "two"),
    ("n_components", True),
    ("solver", "newton"),
    ("init", "svd"),
    ("beta_loss", "euclid"),
    ("tol", -1e-4),
    ("tol", "small"),
    ("max_iter", 0),
    ("max_iter", 2.5),
    ("random_state", "seed"),
    ("alpha_W", -0.1),
    ("alpha_H", -0.1),
    ("alpha_H", "different"),
    ("l1_ratio", 1.5),
    ("l1_ratio", -0.1),
    ("shuffle", "yes"),
    ("verbose", "loud"),
    ("inner_sweeps", 0),
    ("inner_sweeps", "many"),
    ("block_rows", 0),
])
def test_invalid_parameter_is_named(X, param, value):
    # Like scikit-learn's InvalidParameterError: both a ValueError and a TypeError.
    est = fit_fails(X, ValueError, f"'{param}' parameter of NMF must be", **{param: value})
    with pytest.raises(TypeError, match=f"'{param}' parameter"):
        est.fit(X)


def test_parameters_are_checked_before_any_input(tmp_path):
    # An invalid parameter is reported even when the input does not exist.
    with pytest.raises(ValueError, match="'solver' parameter"):
        NMF(solver="newton").fit(str(tmp_path / "missing.zarr"))


@pytest.mark.parametrize("beta_loss", ["kullback-leibler", "itakura-saito", 1.0, 0.5])
def test_beta_loss_other_than_frobenius_needs_mu(X, beta_loss):
    fit_fails(X, ValueError, "does not handle beta_loss", n_components=2, beta_loss=beta_loss)
    est = NMF(n_components=2, beta_loss=beta_loss, solver="mu", max_iter=5, tol=0,
              init="random", random_state=0).fit(X + 0.1)
    assert est.n_iter_ == 5


@pytest.mark.parametrize("init", ["nndsvd", "nndsvda", "nndsvdar"])
def test_nndsvd_needs_n_components_at_most_min_shape(X, init):
    fit_fails(X, ValueError, rf"init = '{init}' can only be used when n_components <= "
              r"min\(n_samples, n_features\)", n_components=7, init=init)


def test_default_init_with_too_many_components_falls_back_to_random(X):
    assert NMF(7, random_state=0, max_iter=5, tol=0).fit(X).components_.shape == (7, 6)


# ---------------------------------------------------------------- custom init
@pytest.mark.parametrize("W_shape, H_shape, which", [((12, 3), (2, 6), "W"),
                                                      ((12, 2), (2, 5), "H"),
                                                      ((6, 2), (2, 12), "H")])
def test_custom_init_wrong_shape(X, W_shape, H_shape, which):
    est = NMF(2, init="custom")
    with pytest.raises(ValueError, match=rf"wrong shape passed to NMF \(input {which}\)"):
        est.fit(X, W=np.ones(W_shape), H=np.ones(H_shape))
    assert_not_fitted(est)


def test_custom_init_wrong_dtype(X):
    est = NMF(2, init="custom")
    with pytest.raises(TypeError, match="W should have the same dtype as X"):
        est.fit(X, W=np.ones((12, 2), dtype=np.float32), H=np.ones((2, 6)))
    with pytest.raises(TypeError, match="H should have the same dtype as X"):
        est.fit(X.astype(np.float32), W=np.ones((12, 2), dtype=np.float32),
                H=np.ones((2, 6)))
    assert_not_fitted(est)


@pytest.mark.parametrize("W, H, match", [
    (None, np.ones((2, 6)), r"input W\) is None"),
    (np.ones((12, 2)), None, r"input H\) is None"),
    (-np.ones((12, 2)), np.ones((2, 6)), r"Negative values in data passed to NMF \(input W\)"),
    (np.ones((12, 2)), np.full((2, 6), np.nan), r"input H\) contains NaN"),
    (np.zeros((12, 2)), np.ones((2, 6)), r"input W\) is full of zeros"),
])
def test_custom_init_bad_values(X, W, H, match):
    est = NMF(2, init="custom")
    with pytest.raises(ValueError, match=match):
        est.fit(X, W=W, H=H)
    assert_not_fitted(est)


def test_fixed_H_is_checked(X):
    with pytest.raises(ValueError, match=r"wrong shape passed to NMF \(input H\)"):
        non_negative_factorization(X, H=np.ones((3, 6)), n_components=2, update_H=False)
    with pytest.raises(ValueError, match=r"input H\) is None"):
        non_negative_factorization(X, n_components=2, update_H=False)


def test_functions_raise_the_same_errors(X):
    with pytest.raises(ValueError, match="Negative values"):
        non_negative_factorization(X - 10, n_components=2)
    with pytest.raises(ValueError, match="Negative values"):
        nmf(X - 10, 2)
    with pytest.raises(ValueError, match="'tol' parameter"):
        nmf(X, 2, tol=-1)


# ---------------------------------------------------------------- out-of-core inputs
# Errors found in metadata come before any cluster is started (no_cluster, no scheduler set).
def test_missing_store(tmp_path, no_cluster):
    est = NMF(2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        est.fit(str(tmp_path / "nope.zarr"))
    with pytest.raises(FileNotFoundError):
        est.fit(tmp_path / "nope.zarr")  # a pathlib.Path too
    assert_not_fitted(est)


def test_group_instead_of_array(tmp_path, X, sync):
    path = str(tmp_path / "data.zarr")
    group = zarr.open_group(path, mode="w")
    group.create_array("counts", shape=X.shape, dtype="f8")[:] = X
    group.create_array("obs", shape=(12,), dtype="f8")
    est = NMF(2)
    # Metadata only: found without a scheduler, and no cluster is started.
    with dask.config.set(scheduler=None), pytest.raises(
            ValueError, match="Zarr group, not an array; its arrays: counts, obs"):
        est.fit(path)
    assert_not_fitted(est)
    # The message's suggestion works, and a 1-D array in the group is refused by shape.
    est.set_params(init="random", random_state=0, max_iter=5, tol=0).fit(f"{path}/counts")
    assert est.components_.shape == (2, 6)
    with pytest.raises(ValueError, match="must be a 2-D matrix; got 1 dimension"):
        NMF(2).fit(f"{path}/obs")


def test_empty_group(tmp_path, no_cluster):
    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(ValueError, match=r"Zarr group, not an array.*no arrays"):
        NMF(2).fit(str(tmp_path / "empty.zarr"))


@pytest.mark.parametrize("dtype, exc, match", [
    ("c16", ValueError, "Complex data not supported"),
    ("U4", TypeError, "needs numeric"),
])
def test_zarr_dtype_checked_from_metadata(tmp_path, dtype, exc, match, no_cluster):
    path = str(tmp_path / "bad.zarr")
    with warnings.catch_warnings():  # zarr: fixed-length strings have no v3 spec yet
        warnings.simplefilter("ignore", zarr.errors.UnstableSpecificationWarning)
        zarr.create_array(path, shape=(12, 6), chunks=(4, 6), dtype=dtype)
    est = NMF(2)
    with pytest.raises(exc, match=match):
        est.fit(path)
    assert_not_fitted(est)


def test_empty_zarr_array(tmp_path, no_cluster):
    path = str(tmp_path / "empty.zarr")
    zarr.create_array(path, shape=(0, 6), chunks=(4, 6), dtype="f8")
    with pytest.raises(ValueError, match="is empty"):
        NMF(2).fit(path)


def _store(tmp_path, X, bad_value, row):
    path = str(tmp_path / "V.zarr")
    z = zarr.create_array(path, shape=X.shape, chunks=(4, X.shape[1]), dtype="f8")
    bad = X.copy()
    bad[row, 2] = bad_value
    z[:] = bad
    return path


class CountingPasses:
    """Counts the iterations of a fit (the callback runs after each)."""

    def __init__(self):
        self.iterations = 0

    def __call__(self, info):
        self.iterations += 1


@pytest.mark.parametrize("init", ["random", "nndsvda", "custom"])
@pytest.mark.parametrize("bad_value, match", [(-1.0, r"Negative values.*minimum is -1"),
                                              (np.nan, "NaN or infinity"),
                                              (np.inf, "NaN or infinity")])
def test_bad_values_in_a_store_fail_in_the_first_pass(tmp_path, X, sync, init, bad_value, match):
    path = _store(tmp_path, X, bad_value, row=9)  # in the last of 3 row blocks
    est = NMF(2, init=init, random_state=0, block_rows=4)
    kwargs = dict(W=np.ones((12, 2)), H=np.ones((2, 6))) if init == "custom" else {}
    counter = CountingPasses()
    with pytest.raises(ValueError, match=match):
        est.fit_transform(path, callback=counter, **kwargs)
    # The first pass over V (the init's, or with init='custom' the first iteration's)
    # found it: no iteration completed, nothing was returned.
    assert counter.iterations == 0
    assert_not_fitted(est)


def test_bad_values_in_a_dask_array(X, sync):
    bad = X.copy()
    bad[10, 0] = -3.0
    est = NMF(2, random_state=0)
    with pytest.raises(ValueError, match="Negative values"):
        est.fit(da.from_array(bad, chunks=(5, 6)))
    assert_not_fitted(est)
    fitted = NMF(2, random_state=0, init="random").fit(da.from_array(X, chunks=(5, 6)))
    with pytest.raises(ValueError, match=r"Negative values in data passed to NMF\.transform"):
        fitted.transform(da.from_array(bad, chunks=(5, 6))).compute()


def test_out_of_core_feature_mismatch(tmp_path, X, sync):
    est = NMF(2, random_state=0, init="random").fit(X)
    path = str(tmp_path / "narrow.zarr")
    zarr.create_array(path, shape=(12, 5), chunks=(4, 5), dtype="f8")[:] = X[:, :5]
    with pytest.raises(ValueError, match="X has 5 features, but NMF is expecting 6"):
        est.transform(path)


def test_one_dimensional_dask_array(no_cluster):
    with pytest.raises(ValueError, match="must be a 2-D matrix"):
        NMF(2).fit(da.ones(10, chunks=5))


def test_unknown_input_type():
    with pytest.raises((TypeError, ValueError)):
        NMF(2).fit({"not": "a matrix"})
