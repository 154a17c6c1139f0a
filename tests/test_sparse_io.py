"""Sparse V out of core: CSR groups in Zarr (AnnData's layout), read in row blocks.

* A CSR group written by the real ``anndata`` package (Zarr format 2 and 3) fits exactly
  like the same matrix as a SciPy CSR matrix in memory and as a dense array; so do
  :func:`bignmf.write_csr` stores and dask arrays of sparse chunks.
* Row blocks are balanced in non-zeros (checked against a plain greedy reference), and a
  block reads only the stored chunks that hold its entries (a logging store counts reads);
  on a real distributed cluster the workers read their rows themselves.
* Malformed groups raise a :class:`ValueError` naming the problem before anything is
  written; negative and NaN values are found by the first pass.
"""

from __future__ import annotations

import itertools
import os
import re
import warnings
from collections import Counter

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from conftest import ReadLoggingStore, read_log
from dask.utils import key_split
from distributed import Client, get_task_stream

import bignmf
from bignmf import NMF, cli, io

FIT = dict(n_components=3, init="nndsvda", random_state=0, max_iter=50)
TENX = "/work/shared/data/genomics/10x-10k-subset.zarr"


def sparse_low_rank(m=300, n=40, density=0.3, seed=0, dtype=np.float64):
    """A non-negative sparse matrix with low-rank structure and rows of very different
    numbers of non-zeros (some empty), in CSR form."""
    rng = np.random.default_rng(seed)
    dense = rng.gamma(1.0, 1.0, (m, 4)) @ rng.gamma(1.0, 1.0, (4, n))
    keep = rng.random((m, n)) < density * rng.gamma(1.0, 1.0, (m, 1))
    keep[::17] = False
    return sp.csr_matrix(dense * keep, dtype=dtype)


def fit_W(X, **params):
    with dask.config.set(scheduler="synchronous"):
        est = NMF(**{**FIT, **params})
        W = est.fit_transform(X)
        W = W.compute() if hasattr(W, "compute") else W
    return np.asarray(W), est.components_


def assert_close(actual, desired):
    np.testing.assert_allclose(actual, desired, rtol=1e-6,
                               atol=1e-9 * float(np.abs(desired).max()))


def write_anndata(path, X, zarr_format, shard=False):
    """Write ``X`` as an AnnData Zarr store with the real ``anndata`` (format 2 or 3; format
    3 optionally sharded, as anndata will do by default)."""
    with ad.settings.override(zarr_write_format=zarr_format, auto_shard_zarr_v3=shard), \
            warnings.catch_warnings():
        # anndata's notices about its future defaults, and zarr's that consolidated metadata
        # (which anndata writes) is not in the format 3 spec: not about bignmf.
        warnings.filterwarnings("ignore", "Writing zarr v2 data", UserWarning)
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        ad.AnnData(X).write_zarr(path)
    return path


# --------------------------------------------------------------------------- fits
@pytest.mark.parametrize("zarr_format, shard", [(2, False), (3, False), (3, True)])
@pytest.mark.parametrize("block_bytes", [None, 2000])
def test_anndata_store_fits_like_memory_and_dense(tmp_path, monkeypatch, zarr_format, shard,
                                                  block_bytes):
    X = sparse_low_rank()
    path = write_anndata(tmp_path / "adata.zarr", X, zarr_format, shard)
    assert zarr.open_group(path / "X", mode="r").metadata.zarr_format == zarr_format
    if block_bytes:  # several row blocks, unequal in rows
        monkeypatch.setattr(io, "DEFAULT_BLOCK_BYTES", block_bytes)
        assert len(set(io.open_matrix(f"{path}/X").chunks[0])) > 2
    W, H = fit_W(f"{path}/X")
    W_mem, H_mem = fit_W(X)
    W_dense, H_dense = fit_W(X.toarray())
    assert_close(W, W_mem)
    assert_close(H, H_mem)
    assert_close(W, W_dense)
    assert_close(H, H_dense)


def test_float32_store_gives_float32_factors(tmp_path):
    X = sparse_low_rank(dtype=np.float32)
    path = bignmf.write_csr(tmp_path / "X.zarr", X)
    W, H = fit_W(path)
    assert W.dtype == H.dtype == np.float32
    W_mem, _ = fit_W(X)
    np.testing.assert_allclose(W, W_mem, rtol=2e-4, atol=1e-5 * float(W_mem.max()))


def test_group_object_and_transform(tmp_path):
    """A ``zarr.Group`` holding a CSR matrix is an input too, and ``transform`` reads the
    store as the fit does."""
    X = sparse_low_rank()
    path = bignmf.write_csr(tmp_path / "X.zarr", X, zarr_format=2)
    with dask.config.set(scheduler="synchronous"):
        est = NMF(**FIT).fit(zarr.open_group(path, mode="r"))
        W = est.transform(path).compute()
    ref = NMF(**FIT).fit(X)
    assert_close(est.components_, ref.components_)
    assert_close(W, ref.transform(X))


def test_dask_array_of_sparse_chunks(tmp_path):
    """User dask arrays whose chunks are SciPy CSR matrices: fitted block by block (row
    chunks kept, column chunks joined), and written with write_csr block by block."""
    X = sparse_low_rank()
    D = da.from_array(X, chunks=(70, 15), asarray=False)
    assert sp.issparse(D._meta)
    V = io.open_matrix(D)
    assert V.chunks == ((70, 70, 70, 70, 20), (40,))
    assert sp.issparse(V.blocks[1].compute())
    W, H = fit_W(D)
    W_mem, H_mem = fit_W(X)
    assert_close(W, W_mem)
    assert_close(H, H_mem)

    path = bignmf.write_csr(tmp_path / "D.zarr", D.astype(np.float32))
    back = io.open_zarr_array(path)
    assert back.dtype == np.float32
    assert (back[:] != X.astype(np.float32)).nnz == 0


@pytest.mark.skipif(not os.path.exists(TENX), reason="10x data set not present")
def test_real_10x_counts_as_csr(tmp_path):
    """The real 10x store holds X as a dense float32 Zarr v2 array (mostly zeros); written
    as CSR it holds exactly the non-zeros, and both stores fit alike out of core."""
    dense = zarr.open_array(f"{TENX}/X", mode="r")
    assert dense.metadata.zarr_format == 2 and dense.dtype == np.float32
    path = bignmf.write_csr(tmp_path / "X.zarr", dense)
    store = io.open_zarr_array(path)
    values = dense[...]
    assert store.shape == values.shape and store.nnz == np.count_nonzero(values)
    np.testing.assert_array_equal(store[2000:4000].toarray(), values[2000:4000])
    params = dict(init="random", max_iter=15, tol=0)
    W_csr, H_csr = fit_W(path, **params)
    W_dense, H_dense = fit_W(f"{TENX}/X", **params)
    np.testing.assert_allclose(H_csr, H_dense, rtol=1e-3, atol=1e-5 * float(H_dense.max()))
    np.testing.assert_allclose(W_csr, W_dense, rtol=1e-3, atol=1e-5 * float(W_dense.max()))


# --------------------------------------------------------------------------- row blocks
def greedy_blocks(indptr, n, budget, itemsize=8):
    """Reference: add rows to a block while its CSR bytes stay within the budget."""
    sizes, start = [], 0
    m = len(indptr) - 1
    while start < m:
        stop = start + 1
        while stop < m and ((indptr[stop + 1] - indptr[start]) * (itemsize + 4)
                            + (stop + 1 - start) * 4) <= budget:
            stop += 1
        sizes.append(stop - start)
        start = stop
    return tuple(sizes)


@pytest.mark.parametrize("budget", [100, 700, 3000, 10**9])
@pytest.mark.parametrize("chunk", [1, 7, 2**20])
def test_csr_block_rows_balance_nonzeros(budget, chunk):
    X = sparse_low_rank(m=200).toarray()
    X[5] = 30.0  # one dense row (heavier than the smallest budget on its own)
    X = sp.csr_matrix(X)
    sizes = io.csr_block_rows(X.indptr, X.shape, X.dtype, budget, chunk=chunk)
    assert sizes == greedy_blocks(X.indptr, X.shape[1], budget)
    assert sum(sizes) == X.shape[0]


def test_open_matrix_blocks_sparse_and_densified(tmp_path):
    X = sparse_low_rank(m=500)
    store = io.open_zarr_array(bignmf.write_csr(tmp_path / "X.zarr", X))
    V = io.open_matrix(store, block_bytes=4000)
    assert V.chunks[0] == io.csr_block_rows(X.indptr, X.shape, X.dtype, 4000)
    assert (V.compute() != X).nnz == 0
    dense_rows = io.choose_block_rows(X.shape, X.dtype, None, 4000)
    Vd = io.open_matrix(store, block_bytes=4000, densify=True)
    assert set(Vd.chunks[0][:-1]) == {dense_rows}
    assert io.open_matrix(store, block_rows=64).chunks[0][:2] == (64, 64)
    assert (io.open_matrix(X, block_bytes=4000).compute() != X).nnz == 0  # SciPy input


def test_a_block_reads_only_the_chunks_holding_its_entries(tmp_path):
    X = sparse_low_rank(m=400)
    path = io.write_csr_blocks(tmp_path / "X.zarr", [X[:150], X[150:]], X.shape, X.dtype,
                               chunk_entries=100)
    log = tmp_path / "reads.log"
    group = zarr.open_group(store=ReadLoggingStore(path, read_only=True, log_path=log),
                            mode="r")
    store = io.CSRStore.from_group(group, path)
    log.unlink()
    a, b = 120, 260
    block = store[a:b]
    assert sp.isspmatrix_csr(block) and (block != X[a:b]).nnz == 0
    first, last = X.indptr[a] // 100, (X.indptr[b] - 1) // 100
    reads = Counter(key for _, key in read_log(log))
    expected = {f"{name}/c/{i}" for name in ("data", "indices") for i in range(first, last + 1)}
    assert {k for k in reads if not k.startswith("indptr")} == expected
    assert all(count == 1 for count in reads.values())


# --------------------------------------------------------------------------- writing
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_write_csr_is_read_by_anndata(tmp_path, zarr_format):
    X = sparse_low_rank(m=1000)
    path = bignmf.write_csr(tmp_path / "X.zarr", X, rows_per_chunk=333, zarr_format=zarr_format)
    group = zarr.open_group(path, mode="r")
    assert group.metadata.zarr_format == zarr_format
    assert dict(group.attrs) == {"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                                 "shape": [1000, 40]}
    assert group["indptr"].dtype == np.int64 and group["indices"].dtype == np.int32
    back = ad.io.read_elem(group)
    assert sp.issparse(back) and back.dtype == X.dtype
    assert (back != X).nnz == 0
    with pytest.raises(FileExistsError, match="exists"):
        bignmf.write_csr(path, X)
    bignmf.write_csr(path, X[:10], overwrite=True)
    assert io.open_zarr_array(path).shape == (10, 40)


def test_write_csr_leaves_nothing_when_a_block_fails(tmp_path):
    def block(i):
        if i == 2:
            raise RuntimeError("boom")
        return sp.csr_matrix(np.ones((10, 5)))

    parts = [da.from_delayed(dask.delayed(block)(i), shape=(10, 5), dtype=float,
                             meta=sp.csr_matrix((0, 0))) for i in range(4)]
    with dask.config.set(scheduler="synchronous"), pytest.raises(RuntimeError, match="boom"):
        bignmf.write_csr(tmp_path / "X.zarr", da.concatenate(parts))
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- bad input
def csr_group(path, data, indices, indptr, attrs):
    group = zarr.open_group(path, mode="w")
    group.attrs.update(attrs)
    for name, values in (("data", data), ("indices", indices), ("indptr", indptr)):
        if values is not None:
            values = np.asarray(values)
            group.create_array(name, shape=values.shape, dtype=values.dtype,
                               chunks=(max(1, min(3, values.size)), *values.shape[1:]))[...] \
                = values
    return str(path)


GOOD = dict(data=[1.0, 2.0, 3.0, 4.0], indices=[0, 2, 1, 2], indptr=[0, 2, 2, 3, 4],
            attrs={**io.CSR_ATTRS, "shape": [4, 3]})
MALFORMED = {
    "missing indices": (dict(indices=None), r"missing array\(s\) 'indices'"),
    "no shape": (dict(attrs=dict(io.CSR_ATTRS)), "no 'shape' attribute"),
    "bad shape": (dict(attrs={**io.CSR_ATTRS, "shape": [4]}), "'shape' must be two"),
    "shape vs indptr": (dict(attrs={**io.CSR_ATTRS, "shape": [5, 3]}),
                        r"'indptr' has 5 entries; shape \(5, 3\) needs n_rows \+ 1 = 6"),
    "indptr[0]": (dict(indptr=[1, 2, 2, 3, 4]), r"indptr\[0\] is 1"),
    "indptr[-1]": (dict(indptr=[0, 2, 2, 3, 3]), r"indptr\[-1\] is 3 but 'data'"),
    "lengths": (dict(indices=[0, 2, 1]), "'indices' has 3 entries and 'data' 4"),
    "decreasing": (dict(indptr=[0, 2, 1, 3, 4]), r"'indptr' decreases after row 1"),
    "float indptr": (dict(indptr=[0.0, 2.0, 2.0, 3.0, 4.0]), "'indptr' must hold integers"),
    "csc": (dict(attrs={**GOOD["attrs"], "encoding-type": "csc_matrix"}),
            "CSC .*bignmf convert"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_csr_raises_before_any_output(tmp_path, case):
    change, message = MALFORMED[case]
    path = csr_group(tmp_path / "X.zarr", **{**GOOD, **change})
    with pytest.raises(ValueError, match=message):
        io.open_zarr_array(path)
    with dask.config.set(scheduler="synchronous"), pytest.raises(ValueError, match=message):
        NMF(**FIT).fit(path)
    out = tmp_path / "out.zarr"
    with dask.config.set(scheduler="synchronous"):
        assert cli.main(["fit", path, "-k", "2", "-o", str(out)]) == 2
    assert not out.exists()


def test_indptr_decreasing_across_a_streamed_chunk(tmp_path):
    path = csr_group(tmp_path / "X.zarr", **{**GOOD, "indptr": [0, 2, 3, 2, 4]})
    store = io.CSRStore(*(zarr.open_group(path)[k] for k in ("data", "indices", "indptr")),
                        (4, 3), where=path)
    for chunk in (1, 2, 3, 10):
        with pytest.raises(ValueError, match=r"decreases after row 2 \(indptr\[2\] = 3"):
            store.check_indptr(chunk=chunk)


def test_column_index_out_of_range_raises_naming_the_rows(tmp_path):
    path = csr_group(tmp_path / "X.zarr", **{**GOOD, "indices": [0, 2, 1, 3]})
    store = io.open_zarr_array(path)  # metadata are fine; the index is found when read
    assert (store[0:3] != sp.csr_matrix(np.array([[1, 0, 2], [0, 0, 0], [0, 3, 0]]))).nnz == 0
    message = re.escape("column indices of rows 3:4 are out of range [0, 3) (found values "
                        "from 3 to 3)")
    with pytest.raises(ValueError, match=message):
        store[3:4]
    out = tmp_path / "out.zarr"
    message = re.escape("rows 2:4 are out of range [0, 3) (found values from 1 to 3)")
    with dask.config.set(scheduler="synchronous"), pytest.raises(ValueError, match=message):
        NMF(**FIT, block_rows=2).fit(path)
    with dask.config.set(scheduler="synchronous"):
        assert cli.main(["fit", path, "-k", "2", "-o", str(out), "--block-rows", "2"]) == 2
    assert not out.exists()


@pytest.mark.parametrize("value, message", [(-1.0, "Negative values"), (np.nan, "NaN")])
def test_negative_or_nan_values_found_by_the_first_pass(tmp_path, value, message):
    path = csr_group(tmp_path / "X.zarr", **{**GOOD, "data": [1.0, 2.0, value, 4.0]})
    with dask.config.set(scheduler="synchronous"), pytest.raises(ValueError, match=message):
        NMF(n_components=2, init="random", random_state=0, block_rows=2).fit(path)


def test_group_without_a_matrix_lists_what_it_holds(tmp_path):
    X = sparse_low_rank()
    path = write_anndata(tmp_path / "adata.zarr", X, 3)
    message = r"not an array; its arrays: X \(sparse\).* — pass e\.g\. '.*adata\.zarr/X'"
    with pytest.raises(ValueError, match=message):
        io.open_zarr_array(path)
    with pytest.raises(ValueError, match="not a sparse matrix"):
        io.open_source(zarr.open_group(path, mode="r"))


# --------------------------------------------------------------------------- distributed
def test_workers_read_their_own_csr_rows(tmp_path, real_cluster):
    """On a real cluster each block task reads its rows of the CSR store itself: the data
    chunks are read by worker processes only, each once per pass, and no task loads a
    block of V as a separate result."""
    X = sparse_low_rank(m=600)
    path = io.write_csr_blocks(tmp_path / "X.zarr", [X], X.shape, X.dtype, chunk_entries=500)
    log = tmp_path / "reads.log"
    group = zarr.open_group(store=ReadLoggingStore(path, read_only=True, log_path=log),
                            mode="r")
    max_iter, block_rows = 3, 150
    worker_pids = real_cluster.worker_pids()
    with Client(scheduler_file=real_cluster.scheduler_file) as client, \
            get_task_stream(client) as stream:
        est = NMF(n_components=3, init="random", random_state=0, max_iter=max_iter,
                  tol=0, block_rows=block_rows, resident=False)  # read in every pass
        W = est.fit_transform(group).compute()
    kinds = Counter(key_split(t["key"]) for t in stream.data)
    n_blocks = 600 // block_rows
    assert kinds["frobenius_step"] == n_blocks * max_iter
    assert kinds["block_stats"] == n_blocks
    assert "array" not in kinds, kinds  # no task of V's own graph: blocks are not results
    data_reads = [(pid, key) for pid, key in read_log(log) if key.startswith("data/")]
    assert {pid for pid, _ in data_reads} <= set(worker_pids.values())
    counts = Counter(key for _, key in data_reads)
    n_chunks = -(-X.nnz // 500)
    bounds = [X.indptr[i] for i in range(0, 601, block_rows)]
    expected = Counter()
    for a, b in itertools.pairwise(bounds):  # a chunk shared by two blocks is read by both
        for i in range(a // 500, (b - 1) // 500 + 1):
            expected[f"data/c/{i}"] += 1 + max_iter
    assert len(counts) == n_chunks and counts == expected
    W_mem, H_mem = fit_W(X, n_components=3, init="random", max_iter=max_iter, tol=0)
    assert_close(W, W_mem)
    assert_close(est.components_, H_mem)
