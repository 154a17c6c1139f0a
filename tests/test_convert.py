"""``bignmf.convert``: each source format to a Zarr store, exactly, in blocks.

Every conversion is checked entry for entry against the source as SciPy / NumPy / anndata
read it, with the default block budget and with a tiny one (many row blocks, spill files
for Matrix Market and CSC sources). A malformed source raises before the target exists,
and leaves no temporary files; converting a Matrix Market file holds a small fraction of
the matrix in memory (tracemalloc).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tracemalloc
import warnings

import anndata as ad
import dask
import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp
import zarr

import bignmf
from bignmf import io

SMALL = 600  # bytes per block: tens of row blocks for the matrices below


def sparse_matrix(m=120, n=30, density=0.2, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = sp.random(m, n, density=density, format="csr", random_state=rng, dtype=np.float64)
    X.data = np.round(X.data * 100, 3) + 0.5
    X = X.astype(dtype).tolil()
    X[7] = 0  # an empty row
    X = sp.csr_matrix(X)
    X.eliminate_zeros()
    return X


def read_csr(path):
    store = io.open_zarr_array(path)
    assert isinstance(store, io.CSRStore)
    return store, store[:]


def assert_same_csr(actual, desired):
    """Same shape, dtype, and entries (values compared exactly)."""
    assert actual.shape == desired.shape and actual.dtype == desired.dtype
    assert sp.isspmatrix_csr(actual)
    assert (actual != desired).nnz == 0
    np.testing.assert_array_equal(actual.toarray(), desired.toarray())


def files(path):
    return sorted(os.listdir(path))


# --------------------------------------------------------------------------- Matrix Market
def write_mtx_by_hand(path, m, n, entries, field="real", symmetry="general"):
    """A coordinate file with entries in the given order (unsorted, duplicates allowed)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as f:
        f.write(f"%%MatrixMarket matrix coordinate {field} {symmetry}\n% a comment\n%\n")
        f.write(f"{m} {n} {len(entries)}\n")
        for entry in entries:
            f.write(" ".join(str(x) for x in entry) + "\n")
    return str(path)


@pytest.mark.parametrize("block_bytes", [None, SMALL])
@pytest.mark.parametrize("name", ["X.mtx", "X.mtx.gz"])
def test_mtx_unsorted_with_duplicates(tmp_path, block_bytes, name):
    X = sparse_matrix()
    coo = X.tocoo()
    rng = np.random.default_rng(1)
    order = rng.permutation(coo.nnz)
    entries = [(coo.row[i] + 1, coo.col[i] + 1, coo.data[i]) for i in order]
    entries += [(3, 4, 1.25), (3, 4, 2.5), (120, 30, 7.0)]  # duplicates are summed
    src = write_mtx_by_hand(tmp_path / name, 120, 30, entries)
    out = bignmf.convert(src, tmp_path / "X.zarr", block_bytes=block_bytes)
    store, Y = read_csr(out)
    assert_same_csr(Y, scipy.io.mmread(src).tocsr())
    assert Y.has_sorted_indices
    if block_bytes:
        assert len(io.csr_block_rows(store.indptr, store.shape, store.dtype, SMALL)) > 10
    assert files(tmp_path) == sorted([name, "X.zarr"])  # no spill or partial left


@pytest.mark.parametrize("field, symmetry", [("integer", "general"), ("pattern", "general"),
                                             ("real", "symmetric"), ("integer", "symmetric"),
                                             ("real", "skew-symmetric")])
@pytest.mark.parametrize("block_bytes", [None, SMALL])
def test_mtx_fields_and_symmetries_match_scipy(tmp_path, field, symmetry, block_bytes):
    X = sparse_matrix(m=60, n=60)
    if symmetry != "general":
        X = sp.csr_matrix(sp.tril(X, k=-1 if symmetry == "skew-symmetric" else 0))
    if field == "integer":
        X = X.astype(np.int64)
    src = str(tmp_path / "X.mtx")
    scipy.io.mmwrite(src, X, field=field, symmetry=symmetry)
    _, Y = read_csr(bignmf.convert(src, tmp_path / "X.zarr", block_bytes=block_bytes))
    assert_same_csr(Y, sp.csr_matrix(scipy.io.mmread(src)))


def test_mtx_dtype_and_fit(tmp_path):
    X = sparse_matrix(m=200, n=25)
    src = str(tmp_path / "X.mtx")
    scipy.io.mmwrite(src, X)
    out = bignmf.convert(src, tmp_path / "X.zarr", dtype="float32", block_bytes=SMALL)
    _, Y = read_csr(out)
    assert_same_csr(Y, X.astype(np.float32))
    with dask.config.set(scheduler="synchronous"):
        est = bignmf.NMF(n_components=3, init="nndsvda", random_state=0, max_iter=20, tol=0)
        est.fit(out)
    ref = bignmf.NMF(n_components=3, init="nndsvda", random_state=0, max_iter=20, tol=0)
    ref.fit(X.astype(np.float32))
    np.testing.assert_allclose(est.components_, ref.components_, rtol=1e-3,
                               atol=1e-5 * float(ref.components_.max()))


MALFORMED_MTX = {
    "banner": ("%%MatrixMarket tensor coordinate real general\n2 2 1\n1 1 1\n",
               "not a Matrix Market file"),
    "dense": ("%%MatrixMarket matrix array real general\n2 2\n1\n2\n3\n4\n", "dense"),
    "complex": ("%%MatrixMarket matrix coordinate complex general\n2 2 1\n1 1 1 0\n",
                "'complex' values"),
    "size line": ("%%MatrixMarket matrix coordinate real general\n2 2\n1 1 1\n",
                  "size line"),
    "row out of range": ("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1\n3 1 1\n",
                         "entry 2 has row 3, outside 1..2"),
    "column out of range": ("%%MatrixMarket matrix coordinate real general\n2 2 1\n1 0 1\n",
                            "entry 1 has column 0, outside 1..2"),
    "too few entries": ("%%MatrixMarket matrix coordinate real general\n2 2 3\n1 1 1\n2 2 1\n",
                        "declares 3 entries but holds 2"),
    "bad number": ("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1 1\n2 2 x\n",
                   "malformed entry"),
    "missing value": ("%%MatrixMarket matrix coordinate real general\n2 2 1\n1 1\n",
                      "have 3 fields"),
}


@pytest.mark.parametrize("case", list(MALFORMED_MTX))
def test_malformed_mtx_raises_and_leaves_nothing(tmp_path, case):
    text, message = MALFORMED_MTX[case]
    src = tmp_path / "X.mtx"
    src.write_text(text)
    with pytest.raises(ValueError, match=message):
        bignmf.convert(src, tmp_path / "X.zarr", block_bytes=64)
    assert files(tmp_path) == ["X.mtx"]


def test_mtx_conversion_memory_is_a_fraction_of_the_matrix(tmp_path):
    """tracemalloc peak while converting ~8 MB of unsorted .mtx text with a 128 KiB block
    budget: within the documented few blocks, and well below the matrix in CSR form
    (3.6 MB) and dense (16 MB)."""
    m, n, nnz = 4000, 500, 300_000
    rng = np.random.default_rng(0)
    flat = rng.choice(m * n, size=nnz, replace=False)
    rows, cols = np.divmod(flat, n)  # random order, as many tools write
    values = rng.random(nnz)
    src = tmp_path / "X.mtx"
    with open(src, "w") as f:
        f.write(f"%%MatrixMarket matrix coordinate real general\n{m} {n} {nnz}\n")
        np.savetxt(f, np.column_stack((rows + 1, cols + 1, values)), fmt="%d %d %.17g")
    del flat, rows, cols, values
    # A first conversion imports the codecs and fills zarr's caches, which are not data.
    scipy.io.mmwrite(tmp_path / "tiny.mtx", sparse_matrix())
    bignmf.convert(tmp_path / "tiny.mtx", tmp_path / "tiny.zarr", block_bytes=SMALL)
    block_bytes = 128 * 2**10
    csr_bytes, dense_bytes = nnz * 12 + (m + 1) * 8, m * n * 8
    tracemalloc.start()
    try:
        bignmf.convert(src, tmp_path / "X.zarr", block_bytes=block_bytes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * block_bytes, peak
    assert peak < csr_bytes / 3 and peak < dense_bytes / 10, (peak, csr_bytes)
    _, Y = read_csr(tmp_path / "X.zarr")
    assert_same_csr(Y, scipy.io.mmread(src).tocsr())


# --------------------------------------------------------------------------- NumPy files
@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
@pytest.mark.parametrize("block_bytes", [None, SMALL])
def test_npz_sparse(tmp_path, fmt, block_bytes):
    X = sparse_matrix(dtype=np.float32)
    sp.save_npz(tmp_path / "X.npz", X.asformat(fmt))
    _, Y = read_csr(bignmf.convert(tmp_path / "X.npz", tmp_path / "X.zarr",
                                   block_bytes=block_bytes))
    assert_same_csr(Y, X)


@pytest.mark.parametrize("block_bytes", [None, SMALL])
def test_npy_and_npz_dense_chunked_for_the_fit(tmp_path, block_bytes):
    A = np.random.default_rng(0).random((130, 17))
    np.save(tmp_path / "A.npy", A)
    np.savez(tmp_path / "A.npz", A)
    for name in ("A.npy", "A.npz"):
        out = bignmf.convert(tmp_path / name, tmp_path / f"{name}.zarr",
                             block_bytes=block_bytes)
        z = zarr.open_array(out, mode="r")
        rows = io.choose_block_rows(A.shape, A.dtype, None, block_bytes)
        assert z.chunks == (rows, 17) and z.dtype == A.dtype
        np.testing.assert_array_equal(z[...], A)
        # the fit reads one stored chunk per block with the same budget
        assert io.open_matrix(z, block_bytes=block_bytes).chunks[0][0] == rows
    out = bignmf.convert(tmp_path / "A.npy", tmp_path / "A32.zarr", dtype=np.float32)
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[...], A.astype(np.float32))


def test_npz_with_several_arrays_is_refused(tmp_path):
    np.savez(tmp_path / "two.npz", a=np.ones(3), b=np.ones(3))
    with pytest.raises(ValueError, match=r"holds arrays \['a', 'b'\]"):
        bignmf.convert(tmp_path / "two.npz", tmp_path / "X.zarr")
    np.save(tmp_path / "v.npy", np.ones(5))
    with pytest.raises(ValueError, match="must be a 2-D matrix"):
        bignmf.convert(tmp_path / "v.npy", tmp_path / "X.zarr")
    assert "X.zarr" not in files(tmp_path)


# --------------------------------------------------------------------------- AnnData files
@contextlib.contextmanager
def quiet_anndata():
    """anndata's notices about its future defaults and zarr's about consolidated metadata
    in format 3 (which anndata writes): not about bignmf."""
    with warnings.catch_warnings():
        for text in ("Writing zarr v2 data", "zarr v3 autosharding", "Consolidated metadata"):
            warnings.filterwarnings("ignore", text, UserWarning)
        yield


@pytest.mark.parametrize("layout", ["dense", "csr", "csc"])
@pytest.mark.parametrize("block_bytes", [None, SMALL])
def test_h5ad(tmp_path, layout, block_bytes):
    X = sparse_matrix()
    data = {"dense": X.toarray(), "csr": X, "csc": X.tocsc()}[layout]
    ad.AnnData(data).write_h5ad(tmp_path / "a.h5ad")
    out = bignmf.convert(tmp_path / "a.h5ad", tmp_path / "X.zarr", block_bytes=block_bytes)
    if layout == "dense":
        np.testing.assert_array_equal(zarr.open_array(out, mode="r")[...], X.toarray())
    else:
        assert_same_csr(read_csr(out)[1], X)
    assert files(tmp_path) == ["X.zarr", "a.h5ad"]


@pytest.mark.parametrize("block_bytes", [None, SMALL])
def test_zarr_csc_and_column_strips(tmp_path, block_bytes):
    """AnnData's CSC X (which a fit refuses) and a dense store in column strips become row
    layouts."""
    X = sparse_matrix()
    with quiet_anndata(), ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
        ad.AnnData(X.tocsc()).write_zarr(tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="CSC"):
        io.open_zarr_array(tmp_path / "a.zarr" / "X")
    out = bignmf.convert(f"{tmp_path}/a.zarr/X", tmp_path / "X.zarr", block_bytes=block_bytes)
    assert_same_csr(read_csr(out)[1], X)

    strips = zarr.create_array(tmp_path / "strips.zarr", shape=X.shape, dtype="f8",
                               chunks=(120, 4))
    strips[...] = X.toarray()
    out = bignmf.convert(tmp_path / "strips.zarr", tmp_path / "rows.zarr",
                         block_bytes=block_bytes)
    z = zarr.open_array(out, mode="r")
    assert z.chunks[1] == 30
    np.testing.assert_array_equal(z[...], X.toarray())


# --------------------------------------------------------------------------- arguments
def test_argument_errors_before_anything_is_read(tmp_path):
    X = sparse_matrix()
    sp.save_npz(tmp_path / "X.npz", X)
    (tmp_path / "taken.zarr").mkdir()
    with pytest.raises(FileNotFoundError, match="No file"):
        bignmf.convert(tmp_path / "nope.mtx", tmp_path / "a.zarr")
    with pytest.raises(FileExistsError, match="exists"):
        bignmf.convert(tmp_path / "X.npz", tmp_path / "taken.zarr")
    (tmp_path / "X.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="Cannot tell the format"):
        bignmf.convert(tmp_path / "X.csv", tmp_path / "a.zarr")
    with pytest.raises(ValueError, match="Unknown source format 'csv'"):
        bignmf.convert(tmp_path / "X.npz", tmp_path / "a.zarr", fmt="csv")
    with pytest.raises(TypeError, match="dtype must be numeric"):
        bignmf.convert(tmp_path / "X.npz", tmp_path / "a.zarr", dtype="U3")
    bignmf.convert(tmp_path / "X.npz", tmp_path / "taken.zarr", overwrite=True)
    assert_same_csr(read_csr(tmp_path / "taken.zarr")[1], X)
