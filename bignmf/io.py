"""Open what a user has as a chunked matrix without reading it, and write results.

Inputs: a path to a Zarr store (an array at the root, or an array inside a group given as
``"store.zarr/X"`` or ``array="X"``), a :class:`zarr.Array` (Zarr format 2 or 3), a sparse
matrix stored in CSR form as AnnData writes it (a group with ``data``, ``indices`` and
``indptr``, see :class:`CSRStore`), a dask array (dense or SciPy-sparse chunks) or a NumPy
array. The result is a dask array chunked in *row blocks* spanning all columns, the layout
the iteration reads; V itself is never loaded.

Row blocks are whole multiples of the stored row chunks, so each stored chunk belongs to
exactly one block and is read once per pass. When the store is chunked across columns too,
a block task reads and concatenates its chunks (one copy of the block in memory, no extra
reads). A store chunked in tall, narrow column strips (e.g. ``(m, 100)``) has no such row
layout: every block would read every strip whole, so such stores should be rewritten in
row blocks first (``bignmf convert`` — or ``dask.array.rechunk`` then ``to_zarr``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import dask.array as da
import numpy as np
import scipy.sparse as sp
import zarr

#: Default size of one row block of V in memory (its dense compute dtype).
DEFAULT_BLOCK_BYTES = 128 * 2**20

MatrixLike = Any  # str | os.PathLike | zarr.Array | zarr.Group | CSRStore | da.Array | ndarray

#: AnnData's attributes of a CSR matrix stored as a group.
CSR_ATTRS = {"encoding-type": "csr_matrix", "encoding-version": "0.1.0"}

#: Entries per stored chunk of ``data``/``indices`` written by :func:`write_csr`
#: (4-8 MiB uncompressed: large enough for fast reads, small against a row block).
CSR_CHUNK_ENTRIES = 2**20


def check_shape_dtype(shape: tuple[int, ...], dtype: Any, what: str = "X") -> None:
    """Raise a clear error for inputs NMF cannot factorize (from metadata only)."""
    if len(shape) != 2:
        raise ValueError(
            f"{what} must be a 2-D matrix; got {len(shape)} dimension(s), shape {shape}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(
            f"{what} is empty: shape {shape}; NMF needs at least 1 row and 1 column"
        )
    kind = np.dtype(dtype).kind
    if kind == "c":
        raise ValueError(f"Complex data not supported: {what} has dtype {dtype}")
    if kind not in "biuf":
        raise TypeError(
            f"{what} has dtype {dtype}; NMF needs numeric (integer, boolean or float) data"
        )


def compute_dtype(dtype: Any) -> np.dtype:
    """float32 stays float32; everything else is computed in float64 (as scikit-learn)."""
    return np.dtype(np.float32) if np.dtype(dtype) == np.float32 else np.dtype(np.float64)


def choose_block_rows(
    shape: tuple[int, int], dtype: Any, stored_rows: int | None = None,
    block_bytes: int | None = None, parts: int = 1,
) -> int:
    """Rows per block: at most about ``block_bytes`` of dense data, a multiple of
    ``stored_rows``, and — when ``parts`` (e.g. the number of workers) is more than 1 —
    as many blocks as a multiple of ``parts``, as equal as the stored chunks allow, so that
    every worker gets the same work (4 blocks of 5000 rows on 2 workers, not
    6000, 6000, 6000 and 2000).
    """
    m, n = shape
    unit = stored_rows or 1
    row_bytes = n * compute_dtype(dtype).itemsize
    rows = max(1, (block_bytes or DEFAULT_BLOCK_BYTES) // row_bytes)
    units = max(1, rows // unit)  # whole stored chunks per block, at most
    n_units = _ceil_div(m, unit)
    n_blocks = _ceil_div(n_units, units)
    if parts > 1 and n_units >= parts:
        n_blocks = _ceil_div(n_blocks, parts) * parts
    return int(min(_ceil_div(n_units, n_blocks) * unit, m))


def open_zarr_array(
    path: str | os.PathLike[str], array: str | None = None
) -> zarr.Array | CSRStore:
    """Open a Zarr array, or a CSR matrix stored as a group (:class:`CSRStore`), read-only,
    with errors that say what was found instead.

    A CSR group's metadata and ``indptr`` are checked here (one streaming read of
    ``indptr``, see :meth:`CSRStore.from_group`); no values are read.
    """
    path = os.fspath(path)
    if "://" not in path and not os.path.exists(path):
        raise FileNotFoundError(f"No Zarr store at {path!r}: the path does not exist")
    try:
        node = zarr.open(store=path, path=array or "", mode="r")
    except (FileNotFoundError, KeyError) as err:
        where = f"{path!r}" + (f" (array {array!r})" if array else "")
        raise FileNotFoundError(f"No Zarr array or group at {where}: {err}") from err
    except Exception as err:  # zarr raises several types for unreadable metadata
        raise ValueError(f"{path!r} is not a readable Zarr store: {err}") from err
    if isinstance(node, zarr.Group):
        where = os.path.join(path, array) if array else path
        if sparse_encoding(node) is not None:
            return CSRStore.from_group(node, where)
        names = sorted([name for name, _ in node.arrays()] + [
            f"{name} (sparse)" for name, g in node.groups() if sparse_encoding(g) is not None])
        hint = (f"; its arrays: {', '.join(names)} — pass e.g. "
                f"{os.path.join(where, names[0].split(' ')[0])!r}"
                if names else " with no arrays in it")
        raise ValueError(f"{where!r} is a Zarr group, not an array{hint}")
    return node


def open_source(X: MatrixLike) -> Any:
    """What the executor reads V from: a path or a :class:`zarr.Group` opened (a
    :class:`zarr.Array` or :class:`CSRStore`, metadata checked); anything else unchanged."""
    if isinstance(X, (str, os.PathLike)):
        return open_zarr_array(X)
    if isinstance(X, zarr.Group):
        if sparse_encoding(X) is None:
            raise ValueError(
                f"The Zarr group {str(X.store_path)!r} is not a sparse matrix (no "
                "'encoding-type' attribute); pass one of its arrays, or a CSR group")
        return CSRStore.from_group(X, str(X.store_path))
    return X


def open_matrix(
    X: MatrixLike,
    *,
    array: str | None = None,
    block_rows: int | None = None,
    block_bytes: int | None = None,
    densify: bool = False,
    parts: int = 1,
) -> da.Array:
    """Return V as a dask array of row blocks, without reading any data.

    Parameters
    ----------
    X : path, zarr.Array, zarr.Group, CSRStore, dask array, ndarray or scipy.sparse matrix
        The data matrix. A path names a Zarr store (format 2 or 3): an array, or a CSR
        group as AnnData writes it (e.g. ``"adata.zarr/X"``).
    array : str, optional
        Path of the array inside a Zarr group (same as appending it to the path).
    block_rows : int, optional
        Rows per block. Default: about ``block_bytes`` per block, rounded to whole stored
        row chunks (dense Zarr); for sparse V see ``densify``.
    block_bytes : int, optional
        Target bytes per block (default 128 MiB, or what the executor derives from the
        workers' memory limit).
    densify : bool, default=False
        Sparse V only. False: blocks hold about ``block_bytes`` of CSR data (values, column
        indices, row pointers), so rows per block vary with the rows' non-zeros and the
        blocks are balanced in work and memory (:func:`csr_block_rows`; one streaming read
        of ``indptr``). True: blocks of ``r`` rows with ``r x n`` dense values about
        ``block_bytes``, for kernels that form a dense ``r x n`` product per block (e.g.
        ``W_i H`` of the Itakura-Saito divergence).
    parts : int, default=1
        Make the number of blocks a multiple of this (the number of workers), blocks as
        equal as possible (see :func:`choose_block_rows`).

    Returns
    -------
    dask.array.Array of shape (m, n), float32 or float64, chunked ``(block_rows, n)``; its
    chunks are SciPy CSR matrices for sparse V.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        For a missing store, a group that is not a sparse matrix, a malformed CSR group, or
        a shape/dtype NMF cannot use.
    """
    if isinstance(X, (str, os.PathLike)):
        X = open_zarr_array(X, array)
    X = open_source(X)
    if sp.issparse(X):
        X = CSRStore.from_scipy(X)
    if isinstance(X, CSRStore):
        check_shape_dtype(X.shape, X.dtype)
        shape = X.shape
        if block_rows:
            rows: tuple[int, ...] = _equal_rows(shape[0], block_rows)
        elif densify:
            rows = _equal_rows(shape[0], choose_block_rows(shape, X.dtype, None, block_bytes,
                                                           parts))
        else:
            rows = csr_block_rows(X.indptr, shape, X.dtype,
                                  _balanced_budget(computed_nbytes(X), block_bytes, parts))
        V = da.from_array(X, chunks=(rows, (shape[1],)), asarray=False, fancy=False,
                          meta=sp.csr_matrix((0, 0), dtype=X.dtype))
    elif isinstance(X, zarr.Array):
        check_shape_dtype(X.shape, X.dtype)
        shape = (int(X.shape[0]), int(X.shape[1]))
        rows_ = block_rows or choose_block_rows(shape, X.dtype, X.chunks[0], block_bytes,
                                                parts)
        V = da.from_zarr(X, chunks=(rows_, X.shape[1]))
    elif isinstance(X, da.Array):
        check_shape_dtype(X.shape, X.dtype)
        if any(np.isnan(c) for dim in X.chunks for c in dim):
            raise ValueError("X has unknown chunk sizes; call X.compute_chunk_sizes() first")
        if block_rows is not None:
            V = X.rechunk((block_rows, -1))
        elif len(X.chunks[1]) == 1:
            V = X
        elif sp.issparse(X._meta):
            # The size of a sparse chunk is unknown without reading it: keep the user's
            # row chunks, which they sized, and join the columns (blockwise: one task per
            # row block, no rechunk graph).
            V = da.blockwise(_identity, "ij", X, "ik", new_axes={"j": X.shape[1]},
                             concatenate=True, dtype=X.dtype, meta=X._meta)
        else:
            rows_ = choose_block_rows(X.shape, X.dtype, X.chunks[0][0], block_bytes, parts)
            V = X.rechunk((rows_, -1))
    elif isinstance(X, np.ndarray):
        check_shape_dtype(X.shape, X.dtype)
        rows_ = block_rows or choose_block_rows(X.shape, X.dtype, None, block_bytes, parts)
        V = da.from_array(X, chunks=(rows_, X.shape[1]))
    else:
        raise TypeError(
            "X must be a path to a Zarr array or CSR group, a zarr.Array, a zarr.Group "
            "holding a CSR matrix, a dask array, a NumPy array or a SciPy sparse matrix; "
            f"got {type(X).__name__}"
        )
    dtype = compute_dtype(V.dtype)
    return V if V.dtype == dtype else V.astype(dtype)


def _balanced_budget(total: int | None, block_bytes: int | None, parts: int) -> int | None:
    """A budget per block that cuts ``total`` bytes into a multiple of ``parts`` blocks."""
    if parts <= 1 or not total:
        return block_bytes
    budget = block_bytes or DEFAULT_BLOCK_BYTES
    n_blocks = _ceil_div(_ceil_div(total, budget), parts) * parts
    return _ceil_div(total, n_blocks) + 1


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _identity(block: Any) -> Any:
    return block


def _equal_rows(m: int, rows: int) -> tuple[int, ...]:
    rows = max(1, min(int(rows), m))
    return (rows,) * (m // rows) + ((m % rows,) if m % rows else ())


def computed_nbytes(X: Any) -> int | None:
    """Bytes V takes in memory as the kernels compute with it (float32/float64 dense, or
    CSR: values, column indices and row pointers); ``None`` if unknown (a dask array of
    sparse chunks)."""
    if isinstance(X, CSRStore):
        index_bytes = 4 if X.shape[1] < 2**31 else 8
        return X.nnz * (compute_dtype(X.dtype).itemsize + index_bytes) + (X.shape[0] + 1) * 8
    if isinstance(X, da.Array) and sp.issparse(X._meta):
        return None
    m, n = X.shape
    return int(m) * int(n) * compute_dtype(X.dtype).itemsize


def is_out_of_core(X: Any) -> bool:
    """True for inputs bignmf processes block by block with dask (paths, Zarr, dask)."""
    return isinstance(X, (str, os.PathLike, zarr.Array, zarr.Group, CSRStore, da.Array))


def write_factors(group: zarr.Group, W: Any, H: np.ndarray, loss_history: list[float]) -> None:
    """Arrays ``W`` (row chunks like V's blocks; block by block for dask), ``H`` and
    ``loss_history`` in ``group``, replacing any already there."""
    from bignmf.executor import store

    if isinstance(W, da.Array):
        row_chunk = W.chunks[0][0]
        W = W.rechunk((row_chunk, W.shape[1]))  # one dask block per Zarr chunk: no shared writes
    else:
        row_chunk = min(W.shape[0], 65536)
    store(W, group.create_array("W", shape=W.shape, dtype=W.dtype,
                                chunks=(row_chunk, W.shape[1]), overwrite=True))
    group.create_array("H", shape=H.shape, dtype=H.dtype, chunks=H.shape,
                       overwrite=True)[...] = H
    history = np.asarray(loss_history, dtype=np.float64)
    group.create_array("loss_history", shape=history.shape, dtype=history.dtype,
                       chunks=(max(1, history.size),), overwrite=True)[...] = history


def write_result(
    path: str | os.PathLike[str],
    W: Any,
    H: np.ndarray,
    *,
    attrs: dict[str, Any],
    loss_history: list[float],
    overwrite: bool = False,
    in_place: bool = False,
) -> str:
    """Write a fit to a Zarr group at ``path``: arrays ``W`` (chunked like V's row blocks),
    ``H`` and ``loss_history``, parameters and summary in the group's attributes.

    A new group is written beside ``path`` under a temporary name and renamed into place
    when complete, so ``path`` is never left half-written. A run that checkpoints into
    ``path`` (``in_place=True``) writes the arrays into its group and sets the attribute
    ``status='complete'`` last; until then ``bignmf resume`` redoes the end from the
    newest checkpoint.
    """
    path = os.fspath(path)

    def write(root: zarr.Group) -> None:
        write_factors(root, W, H, loss_history)
        root.attrs.update({**attrs, "status": "complete"})

    if in_place:
        write(zarr.open_group(path, mode="a"))
    else:
        with atomic_store(path, overwrite) as target:
            write(zarr.open_group(target, mode="w"))
    return path


def read_result(path: str | os.PathLike[str]) -> tuple[zarr.Group, dict[str, Any]]:
    """Open a result store written by :func:`write_result` (or a run still checkpointing)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No bignmf output store at {path!r}")
    group = zarr.open_group(path, mode="r")
    attrs = dict(group.attrs.asdict())
    if "status" not in attrs and "bignmf_version" not in attrs:
        raise ValueError(f"{path!r} is a Zarr group but not a bignmf output store")
    return group, attrs


# --------------------------------------------------------------------------- sparse (CSR) V
def sparse_encoding(node: Any) -> str | None:
    """AnnData's ``encoding-type`` of a sparse-matrix group, else None."""
    value = node.attrs.get("encoding-type", node.attrs.get("h5sparse_format"))
    if isinstance(value, bytes):
        value = value.decode()
    value = {"csr": "csr_matrix", "csc": "csc_matrix"}.get(str(value), value)
    return str(value) if value in ("csr_matrix", "csc_matrix") else None


def _shape_attr(node: Any, where: str) -> tuple[int, int]:
    shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
    if shape is None:
        raise ValueError(f"Malformed CSR matrix {where!r}: the group has no 'shape' attribute "
                         "(AnnData writes shape: [n_rows, n_cols])")
    try:
        dims = [int(d) for d in np.asarray(shape).reshape(-1)]
        ok = len(dims) == 2 and all(d >= 0 and d == float(x)
                                    for d, x in zip(dims, np.asarray(shape).reshape(-1),
                                                    strict=True))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"Malformed CSR matrix {where!r}: attribute 'shape' must be two "
                         f"non-negative integers [n_rows, n_cols]; got {shape!r}")
    return dims[0], dims[1]


class CSRStore:
    """A sparse matrix stored in CSR form as three 1-D arrays — AnnData's layout — read in
    row blocks without ever being densified.

    ``data`` (values), ``indices`` (column of each value) and ``indptr`` (``m + 1`` offsets:
    row ``i`` holds entries ``indptr[i]:indptr[i+1]``) may be :class:`zarr.Array` (Zarr
    format 2 or 3), :class:`h5py.Dataset` or NumPy arrays. The object stands in for the
    part of :class:`zarr.Array` bignmf uses: ``shape``, ``dtype``, ``nnz``, ``store_path``
    and slicing of rows, ``store[a:b]`` or ``store[a:b, cols]``, which returns a
    :class:`scipy.sparse.csr_matrix`. Reading rows ``a:b`` reads ``indptr[a:b+1]`` and the
    entries ``indptr[a]:indptr[b]`` of ``data`` and ``indices`` only: memory and I/O are
    those of the block's CSR data (plus at most one stored chunk at each end).

    Column indices need not be sorted within a row; indices outside ``[0, n)`` raise
    :class:`ValueError` naming the rows when a block containing them is read.

    Use :meth:`from_group` to open a Zarr group (it checks the metadata and streams through
    ``indptr`` once), or :func:`open_zarr_array` / :func:`open_source` with a path.
    """

    ndim = 2

    def __init__(self, data: Any, indices: Any, indptr: Any, shape: tuple[int, int], *,
                 where: str = "", store_path: str | None = None) -> None:
        self.data, self.indices, self.indptr = data, indices, indptr
        self.shape = (int(shape[0]), int(shape[1]))
        self.where = where
        self._store_path = store_path or where
        self._check_metadata()

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_group(cls, group: Any, where: str = "", *,
                   csc_as_transpose: bool = False) -> CSRStore:
        """Open a CSR group (Zarr, or h5py for conversion) and validate it.

        Checks, raising :class:`ValueError` that names the problem: the ``encoding-type``
        (CSC is refused with the way to convert it), the three arrays, the ``shape``
        attribute, their lengths and dtypes, and ``indptr`` itself — starts at 0, never
        decreases, ends at ``len(data)`` — read in chunks of ``2**20`` entries (8 MiB of
        memory, one read of ``indptr``).

        With ``csc_as_transpose=True`` a CSC group is accepted and returned as the CSR
        store of its transpose (its columns are the store's rows), for conversion.
        """
        where = where or str(getattr(group, "store_path", getattr(group, "name", "")))
        encoding = sparse_encoding(group)
        transpose = csc_as_transpose and encoding == "csc_matrix"
        if transpose:
            encoding = "csr_matrix"
        if encoding == "csc_matrix":
            raise ValueError(
                f"{where!r} holds a CSC (column-compressed) sparse matrix; bignmf reads V "
                "by rows and needs CSR. Convert it once with `bignmf convert "
                f"{where} OUT.zarr` (bignmf.convert), or store X.tocsr() instead")
        if encoding != "csr_matrix":
            raise ValueError(
                f"{where!r} is a group with encoding-type "
                f"{group.attrs.get('encoding-type')!r}, not a CSR matrix ('csr_matrix')")
        missing = [name for name in ("data", "indices", "indptr") if name not in group]
        if missing:
            raise ValueError(f"Malformed CSR matrix {where!r}: missing array(s) "
                             f"{', '.join(map(repr, missing))} (a CSR group holds 'data', "
                             "'indices' and 'indptr')")
        shape = _shape_attr(group, where)
        if transpose:
            shape = (shape[1], shape[0])
        store = cls(group["data"], group["indices"], group["indptr"], shape, where=where,
                    store_path=str(getattr(group, "store_path", where)))
        store.check_indptr()
        return store

    @classmethod
    def from_scipy(cls, X: Any) -> CSRStore:
        """An in-memory SciPy sparse matrix (converted to CSR if needed) as a store."""
        from dask.base import tokenize

        X = sp.csr_matrix(X)
        return cls(X.data, X.indices, X.indptr, X.shape,
                   where=f"scipy.sparse matrix {X.shape}", store_path=f"scipy:{tokenize(X)}")

    def _fail(self, what: str) -> ValueError:
        return ValueError(f"Malformed CSR matrix {self.where!r}: {what}")

    def _check_metadata(self) -> None:
        m = self.shape[0]
        for name in ("data", "indices", "indptr"):
            if len(getattr(self, name).shape) != 1:
                raise self._fail(f"{name!r} must be 1-D; it has shape "
                                 f"{tuple(getattr(self, name).shape)}")
        for name in ("indices", "indptr"):
            if np.dtype(getattr(self, name).dtype).kind not in "iu":
                raise self._fail(f"{name!r} must hold integers; its dtype is "
                                 f"{getattr(self, name).dtype}")
        if self.indptr.shape[0] != m + 1:
            raise self._fail(f"'indptr' has {self.indptr.shape[0]} entries; shape {self.shape} "
                             f"needs n_rows + 1 = {m + 1}")
        if self.indices.shape[0] != self.data.shape[0]:
            raise self._fail(f"'indices' has {self.indices.shape[0]} entries and 'data' "
                             f"{self.data.shape[0]}; they must be equal")

    def check_indptr(self, chunk: int = 2**20) -> None:
        """Stream through ``indptr`` (``chunk`` entries at a time) and raise
        :class:`ValueError` unless it starts at 0, never decreases and ends at ``nnz``."""
        m = self.shape[0]
        last = None
        for a in range(0, m + 1, chunk):
            p = np.asarray(self.indptr[a : a + chunk]).astype(np.int64, copy=False)
            if a == 0 and p[0] != 0:
                raise self._fail(f"indptr[0] is {p[0]}; it must be 0")
            ends = p if last is None else np.concatenate(([last], p))
            down = np.flatnonzero(ends[1:] < ends[:-1])
            if down.size:
                row = a + int(down[0]) - (0 if last is None else 1)
                raise self._fail(f"'indptr' decreases after row {row} (indptr[{row}] = "
                                 f"{ends[down[0]]} > indptr[{row + 1}] = {ends[down[0] + 1]}); "
                                 "row offsets must be non-decreasing")
            last = int(p[-1])
        if last != self.nnz:
            raise self._fail(f"indptr[-1] is {last} but 'data' and 'indices' have {self.nnz} "
                             "entries; they must be equal")

    # ----------------------------------------------------------------- zarr.Array's surface
    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def nnz(self) -> int:
        """Stored entries (explicit zeros included)."""
        return int(self.data.shape[0])

    @property
    def store_path(self) -> str:
        """Where the matrix is stored (names the tasks that read it)."""
        return self._store_path

    def __repr__(self) -> str:
        return (f"<CSRStore {self.where!r} shape={self.shape} dtype={self.dtype} "
                f"nnz={self.nnz}>")

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("bignmf.CSRStore", self.store_path, self.shape, self.nnz, str(self.dtype))

    def __getitem__(self, key: Any) -> sp.csr_matrix:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        if isinstance(key, tuple) and len(key) != 2:
            raise IndexError(f"a CSRStore is 2-D; got the index {key!r}")
        if rows is Ellipsis:
            rows = slice(None)
        if not isinstance(rows, slice):
            raise IndexError(f"a CSRStore is read by row slices (store[a:b]); got {rows!r}")
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("a CSRStore is read by contiguous row slices (step 1)")
        block = self.read_rows(start, max(start, stop))
        if cols is Ellipsis or (isinstance(cols, slice)
                                and cols.indices(self.shape[1]) == (0, self.shape[1], 1)):
            return block
        return sp.csr_matrix(block[:, cols])

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as a CSR matrix; reads only their entries.

        Raises
        ------
        ValueError
            If the rows' offsets decrease or a column index is outside ``[0, n)``.
        """
        n = self.shape[1]
        ptr = np.asarray(self.indptr[start : stop + 1]).astype(np.int64, copy=False)
        lo, hi = int(ptr[0]), int(ptr[-1])
        if np.any(ptr[1:] < ptr[:-1]) or hi > self.nnz:
            raise self._fail(f"'indptr' of rows {start}:{stop} is not non-decreasing within "
                             f"[0, {self.nnz}]")
        data = np.asarray(self.data[lo:hi])
        indices = np.asarray(self.indices[lo:hi])
        if indices.size:
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= n:
                raise self._fail(f"column indices of rows {start}:{stop} are out of range "
                                 f"[0, {n}) (found values from {low} to {high})")
        return sp.csr_matrix((data, indices, ptr - lo), shape=(stop - start, n))


def csr_block_rows(
    indptr: Any, shape: tuple[int, int], dtype: Any, block_bytes: int | None = None,
    *, chunk: int = 2**20,
) -> tuple[int, ...]:
    """Rows of each block of a CSR matrix, so that every block holds about ``block_bytes``
    of CSR data.

    A row of ``z`` stored entries costs ``z * (value + index bytes) + index bytes`` in
    memory (values in the compute dtype). Blocks are cut where the running cost crosses
    the next multiple of the budget, so they are balanced in non-zeros (work and memory)
    and unequal in rows: a block of sparse rows has many rows, a block of dense rows few;
    a single row above the budget is a block of its own. Reads ``indptr`` once, ``chunk``
    entries at a time (bounded memory); the result holds one int per block.

    Parameters
    ----------
    indptr : array-like of m + 1 ints (zarr, h5py or NumPy; sliced, never loaded whole)
    shape : (m, n)
    dtype : the values' dtype
    block_bytes : int, optional
        Budget per block (default :data:`DEFAULT_BLOCK_BYTES`).

    Returns
    -------
    tuple of int
        Rows per block, summing to ``m`` (``dask`` chunk sizes).
    """
    m, n = shape
    if m == 0:
        return (0,)
    index_bytes = 4 if n < 2**31 else 8
    per_entry = compute_dtype(dtype).itemsize + index_bytes
    budget = float(block_bytes or DEFAULT_BLOCK_BYTES)
    bounds = [0]
    start_cost = 0.0
    off = 0  # indptr index of cost[0]; its cost never exceeds start_cost + budget
    while off < m:
        ptr = np.asarray(indptr[off : min(off + chunk + 1, m + 1)]).astype(np.int64)
        cost = ptr * float(per_entry) + (off + np.arange(ptr.size)) * float(index_bytes)
        while True:
            j = int(np.searchsorted(cost, start_cost + budget, side="right"))
            if j >= cost.size:
                break
            cut = max(off + j - 1, bounds[-1] + 1)
            if cut >= m:
                break
            bounds.append(cut)
            start_cost = float(cost[cut - off])
        off += ptr.size - 1
    bounds.append(m)
    return tuple(int(b - a) for a, b in itertools.pairwise(bounds))


@contextlib.contextmanager
def atomic_store(path: str | os.PathLike[str], overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write a store into; on success it replaces
    ``path`` (a rename), on error it is removed — ``path`` is never half-written."""
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} exists; choose another output or pass overwrite=True")
    tmp = f"{path.rstrip(os.sep)}.partial-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    os.replace(tmp, path)


def _compressors(zarr_format: int) -> Any:
    """zstd, Zarr's default for format 3, for both formats."""
    if zarr_format == 2:
        import numcodecs

        return numcodecs.Zstd(level=0)
    from zarr.codecs import ZstdCodec

    return ZstdCodec(level=0)


class _Appender:
    """Append to a 1-D Zarr array in whole stored chunks (no chunk written twice)."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.chunk = int(array.chunks[0])
        self.size = 0
        self.pending: list[np.ndarray] = []
        self.n_pending = 0

    def append(self, values: np.ndarray) -> None:
        if values.size:
            self.pending.append(values)
            self.n_pending += values.size
        if self.n_pending >= self.chunk:
            self._flush(whole_chunks=True)

    def _flush(self, whole_chunks: bool) -> None:
        buf = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        k = buf.size // self.chunk * self.chunk if whole_chunks else buf.size
        if k:
            self.array.resize((self.size + k,))
            self.array[self.size : self.size + k] = buf[:k]
            self.size += k
        rest = buf[k:].copy()  # a view would keep all of ``buf`` alive
        self.pending = [rest] if rest.size else []
        self.n_pending = rest.size

    def close(self) -> None:
        if self.n_pending:
            self._flush(whole_chunks=False)


def write_csr_blocks(
    path: str | os.PathLike[str], blocks: Iterable[Any], shape: tuple[int, int], dtype: Any,
    *, overwrite: bool = False, zarr_format: Literal[2, 3] = 3,
    chunk_entries: int = CSR_CHUNK_ENTRIES,
) -> str:
    """Write consecutive row blocks (SciPy sparse, in order, covering all ``m`` rows) as a
    CSR group at ``path``; one block in memory at a time (see :func:`write_csr`)."""
    m, n = int(shape[0]), int(shape[1])
    dtype = np.dtype(dtype)
    index_dtype = np.dtype(np.int32 if n <= np.iinfo(np.int32).max else np.int64)
    with atomic_store(path, overwrite) as tmp:
        group = zarr.open_group(tmp, mode="w", zarr_format=zarr_format)
        group.attrs.update({**CSR_ATTRS, "shape": [m, n]})
        arrays = {
            name: _Appender(group.create_array(
                name, shape=(0,), dtype=dt, chunks=(chunk_entries,),
                compressors=_compressors(zarr_format)))
            for name, dt in (("data", dtype), ("indices", index_dtype),
                             ("indptr", np.dtype(np.int64)))
        }
        arrays["indptr"].append(np.zeros(1, dtype=np.int64))
        offset = rows = 0
        for block in blocks:
            block = sp.csr_matrix(block)
            if block.shape[1] != n:
                raise ValueError(f"a row block has {block.shape[1]} columns; expected {n}")
            nnz = int(block.indptr[-1])
            arrays["data"].append(block.data[:nnz].astype(dtype, copy=False))
            arrays["indices"].append(block.indices[:nnz].astype(index_dtype, copy=False))
            arrays["indptr"].append(block.indptr[1:].astype(np.int64) + offset)
            offset += nnz
            rows += block.shape[0]
            del block  # not held while the next block is made
        if rows != m:
            raise ValueError(f"the row blocks hold {rows} rows; the shape says {m}")
        for appender in arrays.values():
            appender.close()
    return os.fspath(path)


#: Budget of one block when :func:`write_csr` chooses the rows it converts at a time.
_WRITE_BLOCK_BYTES = 32 * 2**20


def _sparse_row_blocks(X: Any, rows_per_chunk: int | None) -> tuple[Any, Iterator[Any]]:
    """``(dtype, blocks)``: X's consecutive row blocks as SciPy sparse matrices."""
    if sp.issparse(X):
        X = CSRStore.from_scipy(X)
    if isinstance(X, (str, os.PathLike, zarr.Group)):
        X = open_source(X)
    if isinstance(X, CSRStore):
        sizes = (_equal_rows(X.shape[0], rows_per_chunk) if rows_per_chunk else
                 csr_block_rows(X.indptr, X.shape, X.dtype, _WRITE_BLOCK_BYTES))
        bounds = np.cumsum((0, *sizes))
        return X.dtype, (X.read_rows(int(a), int(b)) for a, b in itertools.pairwise(bounds))
    if isinstance(X, da.Array):
        V = X.rechunk((rows_per_chunk, -1)) if rows_per_chunk else X.rechunk({1: -1})
        return V.dtype, (sp.csr_matrix(V.blocks[i].compute()) for i in range(V.numblocks[0]))
    if isinstance(X, (np.ndarray, zarr.Array)):
        stored = X.chunks[0] if isinstance(X, zarr.Array) else None
        shape = (int(X.shape[0]), int(X.shape[1]))
        rows = rows_per_chunk or choose_block_rows(shape, X.dtype, stored, _WRITE_BLOCK_BYTES)
        return X.dtype, (sp.csr_matrix(np.asarray(X[a : a + rows]))
                         for a in range(0, X.shape[0], rows))
    raise TypeError("X must be a SciPy sparse matrix, a dask array (sparse or dense chunks), "
                    "a CSR group, a zarr.Array or a NumPy array; got " + type(X).__name__)


def write_csr(
    path: str | os.PathLike[str], X: Any, *, rows_per_chunk: int | None = None,
    overwrite: bool = False, zarr_format: Literal[2, 3] = 3, dtype: Any = None,
) -> str:
    """Write a sparse matrix to ``path`` as a CSR group in AnnData's layout.

    The group holds 1-D arrays ``data``, ``indices`` (int32, int64 beyond 2**31 columns)
    and ``indptr`` (int64), chunked in :data:`CSR_CHUNK_ENTRIES` entries and compressed
    with zstd, and the attributes ``encoding-type: csr_matrix``, ``encoding-version:
    0.1.0`` and ``shape: [m, n]``: ``anndata.io.read_elem`` reads it, and bignmf fits it
    (``NMF().fit(path)``). The store is written under a temporary name and renamed into
    place when complete. Column indices are kept in the order given.

    Parameters
    ----------
    path : str or path
        The new store.
    X : scipy.sparse matrix, dask array, CSRStore, zarr.Array or ndarray
        A dask array (SciPy-sparse or dense chunks) is computed and written one row block
        at a time, so it need not fit in memory; dense inputs are sparsified by blocks.
    rows_per_chunk : int, optional
        Rows converted and written at a time (default: about 32 MiB of CSR data per step;
        a dask array's own row chunks). Memory is about two such blocks.
    overwrite : bool, default=False
        Replace an existing ``path``.
    zarr_format : {2, 3}, default=3
    dtype : dtype, optional
        Dtype of the stored values (default: X's).

    Returns
    -------
    str
        ``path``.
    """
    if rows_per_chunk is not None and rows_per_chunk < 1:
        raise ValueError(f"rows_per_chunk must be >= 1; got {rows_per_chunk}")
    if os.path.exists(os.fspath(path)) and not overwrite:
        raise FileExistsError(f"{os.fspath(path)!r} exists; choose another output or pass "
                              "overwrite=True")
    shape = tuple(int(d) for d in X.shape)
    if len(shape) != 2:
        raise ValueError(f"X must be 2-D; got shape {shape}")
    x_dtype, blocks = _sparse_row_blocks(X, rows_per_chunk)
    return write_csr_blocks(path, blocks, (shape[0], shape[1]),
                            x_dtype if dtype is None else dtype,
                            overwrite=overwrite, zarr_format=zarr_format)
