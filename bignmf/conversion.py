"""Convert a matrix file to a Zarr store chunked for the fit, in bounded memory.

Sources (the format is guessed from the name, or given as ``fmt``):

=========  ===============================================  ===============================
``fmt``    source                                           target
=========  ===============================================  ===============================
``mtx``    Matrix Market coordinate file (``.mtx``,         CSR group
           ``.mtx.gz``; general, symmetric or skew)
``npz``    ``scipy.sparse.save_npz`` file                   CSR group
           ``numpy.savez`` file with one array              dense array
``npy``    ``numpy.save`` file (memory-mapped)              dense array
``h5ad``   AnnData HDF5 file, its ``X`` (needs ``h5py``):
           dense, CSR or CSC                                dense array / CSR group
``zarr``   Zarr array, CSR or CSC group (e.g. chunked in    dense array / CSR group
           column strips, or AnnData's CSC)
=========  ===============================================  ===============================

Dense targets are chunked in whole rows, ``io.choose_block_rows(shape, dtype,
block_bytes=block_bytes)`` rows per chunk: with the same ``block_bytes`` a fit reads one
chunk per block. Sparse targets are CSR groups in AnnData's layout (:func:`bignmf.write_csr`),
which a fit reads in blocks of about ``block_bytes`` of CSR data. Every target is written
under a temporary name and renamed into place when complete.

Memory is bounded by a few blocks of ``block_bytes`` (default 128 MiB; measured peak about
6 blocks for Matrix Market, while a block is built from its spilled entries), except:

* Matrix Market and CSC sources keep one 8-byte count per row (the CSR row offsets) and
  spill entries to temporary files beside the target (about 24 bytes per entry);
* ``.npz`` files are zip archives of whole arrays and are loaded whole: they must fit in
  memory (the target is still written in blocks).
"""

from __future__ import annotations

import gzip
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import scipy.sparse as sp
import zarr
from zarr.codecs import BloscCodec

from bignmf import io

#: Source formats and the file names they are guessed from.
FORMATS: dict[str, tuple[str, ...]] = {
    "mtx": (".mtx", ".mtx.gz"),
    "npz": (".npz",),
    "npy": (".npy",),
    "h5ad": (".h5ad",),
    "zarr": (".zarr",),
}

Entries = tuple[np.ndarray, np.ndarray, np.ndarray]  # rows, columns, values (0-based)


def convert(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    fmt: str | None = None,
    dtype: Any = None,
    block_bytes: int | None = None,
    overwrite: bool = False,
) -> str:
    """Convert the matrix in ``source`` to a Zarr store at ``target`` that bignmf fits
    block by block (see the module docstring for formats and memory).

    Parameters
    ----------
    source : str or path
        A ``.mtx``/``.mtx.gz``, ``.npz``, ``.npy`` or ``.h5ad`` file, or a Zarr array or
        sparse group (``store.zarr/X``).
    target : str or path
        The new Zarr store: a dense array, or a CSR group for sparse sources.
    fmt : {'mtx', 'npz', 'npy', 'h5ad', 'zarr'}, optional
        The source format (default: from the file name).
    dtype : dtype, optional
        Dtype of the stored values (default: the source's; Matrix Market ``integer`` is
        int64, ``real`` and ``pattern`` float64, as :func:`scipy.io.mmread`).
    block_bytes : int, optional
        Size of one row block (default 128 MiB): the target's chunking for the fit, and
        the unit of memory the conversion works in.
    overwrite : bool, default=False
        Replace an existing ``target``.

    Returns
    -------
    str
        ``target``.

    Raises
    ------
    FileNotFoundError, FileExistsError, ValueError, TypeError
        Before anything is written: a missing source, an existing target, an unknown
        format or dtype, a malformed file (found while reading: nothing is left behind).
    ImportError
        For ``.h5ad`` without ``h5py``.
    """
    source, target = os.fspath(source), os.fspath(target)
    fmt = fmt or _guess_format(source)
    if fmt not in _READERS:
        raise ValueError(f"Unknown source format {fmt!r}; known: {', '.join(FORMATS)}")
    if not os.path.exists(source) and not (fmt == "zarr" and "://" in source):
        raise FileNotFoundError(f"No file at {source!r}")
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target!r} exists; choose another target or pass "
                              "overwrite=True (--overwrite)")
    if os.path.abspath(source) == os.path.abspath(target):
        raise ValueError("the target must differ from the source")
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype.kind not in "biuf":
            raise TypeError(f"dtype must be numeric (bool, integer or float); got {dtype}")
    if block_bytes is not None and block_bytes < 1:
        raise ValueError(f"block_bytes must be >= 1; got {block_bytes}")
    budget = int(block_bytes or io.DEFAULT_BLOCK_BYTES)
    _READERS[fmt](source, target, dtype, budget, overwrite)
    return target


def _guess_format(source: str) -> str:
    name = source.rstrip("/").lower()
    for fmt, suffixes in FORMATS.items():
        if name.endswith(suffixes) or (fmt == "zarr" and ".zarr/" in name):
            return fmt
    raise ValueError(f"Cannot tell the format of {source!r} from its name; pass fmt= "
                     f"(--format), one of {', '.join(FORMATS)}")


# --------------------------------------------------------------------------- writers
def _chunk_entries(block_bytes: int) -> int:
    """Stored entries per chunk of a CSR target: :data:`bignmf.io.CSR_CHUNK_ENTRIES`, fewer
    for small blocks so that the writer's buffer (one chunk) stays within the budget."""
    return int(min(io.CSR_CHUNK_ENTRIES, max(4096, block_bytes // 32)))


#: Codec of dense targets: Blosc-zstd level 3 with byte shuffle. On float data (nearly
#: incompressible) it read back 1.5x faster than Zarr's default zstd and 1.25x smaller
#: (``benchmarks/run_all.py --only codecs``: 0.19 s vs 0.29 s per read pass of 20000 x
#: 5000 float32; no compression 0.15 s but 1.25x larger); counts compress ~25x either way.
DENSE_CODEC = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def _write_dense(target: str, X: Any, dtype: np.dtype | None, block_bytes: int,
                 overwrite: bool) -> None:
    """Copy a dense 2-D array-like (NumPy memory map, h5py dataset, zarr array) to a Zarr
    array chunked in row blocks, one block in memory at a time."""
    io.check_shape_dtype(tuple(X.shape), X.dtype, "the source matrix")
    m, n = (int(d) for d in X.shape)
    dtype = np.dtype(X.dtype if dtype is None else dtype)
    rows = io.choose_block_rows((m, n), dtype, None, block_bytes)
    with io.atomic_store(target, overwrite) as tmp:
        z = zarr.create_array(tmp, shape=(m, n), dtype=dtype, chunks=(rows, n),
                              compressors=DENSE_CODEC)
        for a in range(0, m, rows):
            z[a : a + rows] = np.asarray(X[a : a + rows]).astype(dtype, copy=False)


def _write_store(target: str, store: io.CSRStore, dtype: np.dtype | None, block_bytes: int,
                 overwrite: bool) -> None:
    """Copy a CSR store in row blocks of about ``block_bytes``."""
    io.check_shape_dtype(store.shape, store.dtype, "the source matrix")
    sizes = io.csr_block_rows(store.indptr, store.shape, store.dtype, block_bytes)
    bounds = np.cumsum((0, *sizes))
    blocks = (store.read_rows(int(a), int(b)) for a, b in itertools.pairwise(bounds))
    io.write_csr_blocks(target, blocks, store.shape, store.dtype if dtype is None else dtype,
                        overwrite=overwrite, chunk_entries=_chunk_entries(block_bytes))


def _coo_to_csr(entries: Callable[[], Iterator[Entries]], shape: tuple[int, int],
                value_dtype: np.dtype, dtype: np.dtype | None, target: str, block_bytes: int,
                overwrite: bool) -> None:
    """Write entries given in any order as a CSR group, in bounded memory.

    ``entries()`` yields chunks ``(rows, cols, values)`` and is called twice. Pass 1
    counts the entries of each row (8 bytes per row), from which rows are split into
    blocks of about ``block_bytes`` (:func:`bignmf.io.csr_block_rows`). Pass 2 appends
    each chunk's entries to spill files of their block, beside the target; then each
    block is read back, built (duplicates summed, as :func:`scipy.io.mmread` then
    ``tocsr()`` does; columns sorted) and written. A matrix of one block skips the spill.
    """
    m, n = shape
    dtype = np.dtype(value_dtype if dtype is None else dtype)
    counts = np.zeros(m, dtype=np.int64)
    for rows, _, _ in entries():
        counts += np.bincount(rows, minlength=m)
    indptr = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    del counts
    io.check_shape_dtype(shape, dtype, "the source matrix")
    bounds = np.cumsum((0, *io.csr_block_rows(indptr, shape, dtype, block_bytes)))
    del indptr

    def build(rows: int, r: np.ndarray, c: np.ndarray, v: np.ndarray) -> sp.csr_matrix:
        """The block from its entries (``r`` relative to its first row)."""
        block = sp.csr_matrix((v.astype(dtype, copy=False), (r, c)), shape=(rows, n))
        block.sum_duplicates()  # also sorts the columns of each row
        return block

    if len(bounds) == 2:  # one block: within the budget, no spill needed
        parts = list(entries())
        r, c, v = (np.concatenate([p[i] for p in parts]) if parts else
                   np.zeros(0, dtype=np.int64 if i < 2 else value_dtype) for i in range(3))
        del parts
        io.write_csr_blocks(target, [build(m, r, c, v)], shape, dtype, overwrite=overwrite,
                            chunk_entries=_chunk_entries(block_bytes))
        return

    # Spilled row and column indices: int32 where they fit (rows relative to the block).
    index = np.dtype(np.int32 if max(m, n) < 2**31 else np.int64)

    spill = tempfile.mkdtemp(prefix=".bignmf-convert-",
                             dir=os.path.dirname(os.path.abspath(target)))
    try:
        for rows, cols, values in entries():
            which = np.searchsorted(bounds, rows, side="right") - 1
            order = np.argsort(which, kind="stable")
            cuts = np.flatnonzero(np.diff(which[order])) + 1
            for part in np.split(order, cuts):
                i = int(which[part[0]])
                for name, arr in (("r", rows[part] - bounds[i]), ("c", cols[part]),
                                  ("v", values[part])):
                    with open(os.path.join(spill, f"{i}.{name}"), "ab") as f:
                        arr.astype(index if name != "v" else arr.dtype, copy=False).tofile(f)

        def blocks() -> Iterator[sp.csr_matrix]:
            for i, (a, b) in enumerate(itertools.pairwise(bounds)):
                files = [os.path.join(spill, f"{i}.{name}") for name in "rcv"]
                if not os.path.exists(files[0]):
                    yield sp.csr_matrix((int(b - a), n), dtype=dtype)
                    continue
                r, c = (np.fromfile(f, dtype=index) for f in files[:2])
                v = np.fromfile(files[2], dtype=value_dtype)
                for f in files:
                    os.remove(f)
                block = build(int(b - a), r, c, v)
                del r, c, v  # not held while the block is written
                yield block

        io.write_csr_blocks(target, blocks(), shape, dtype, overwrite=overwrite,
                            chunk_entries=_chunk_entries(block_bytes))
    finally:
        shutil.rmtree(spill, ignore_errors=True)


# --------------------------------------------------------------------------- Matrix Market
@dataclass(frozen=True)
class _MtxHeader:
    shape: tuple[int, int]
    nnz: int
    field: str
    symmetry: str


def _open_text(path: str) -> TextIO:
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="ascii")
    return open(path, encoding="ascii")


def _read_mtx_header(f: TextIO, path: str) -> _MtxHeader:
    """Parse the banner and size line; ``f`` is left at the first entry."""
    first = f.readline()
    parts = first.lower().split()
    if len(parts) != 5 or parts[0] != "%%matrixmarket" or parts[1] != "matrix":
        raise ValueError(f"{path!r} is not a Matrix Market file: its first line is "
                         f"{first[:80]!r} (expected '%%MatrixMarket matrix coordinate ...')")
    layout, field, symmetry = parts[2:]
    if layout != "coordinate":
        raise ValueError(f"{path!r} is a dense ('{layout}') Matrix Market file; convert "
                         "supports the sparse 'coordinate' layout (save dense data as .npy)")
    if field not in ("real", "double", "integer", "pattern"):
        raise ValueError(f"{path!r} holds {field!r} values; NMF needs real, integer or "
                         "pattern entries")
    if symmetry not in ("general", "symmetric", "skew-symmetric"):
        raise ValueError(f"{path!r} has symmetry {symmetry!r}; supported: general, "
                         "symmetric, skew-symmetric")
    line = f.readline()
    while line and (line.startswith("%") or not line.strip()):
        line = f.readline()
    try:
        m, n, nnz = (int(x) for x in line.split())
    except ValueError:
        raise ValueError(f"{path!r}: the size line must be 'rows columns entries'; got "
                         f"{line.strip()[:80]!r}") from None
    if min(m, n, nnz) < 0:
        raise ValueError(f"{path!r}: negative size {m} x {n} with {nnz} entries")
    return _MtxHeader((m, n), nnz, field, symmetry)


def _mtx_entries(path: str, header: _MtxHeader, lines_per_chunk: int) -> Iterator[Entries]:
    """The file's entries, ``lines_per_chunk`` lines at a time, 0-based, symmetric
    entries mirrored; raises :class:`ValueError` for a malformed or out-of-range line."""
    m, n = header.shape
    integer = header.field == "integer"
    width = 2 if header.field == "pattern" else 3
    seen = 0
    with _open_text(path) as f:
        _read_mtx_header(f, path)
        while True:
            lines = list(itertools.islice(f, lines_per_chunk))
            if not lines:
                break
            try:
                table = np.loadtxt(lines, dtype=np.int64 if integer else np.float64,
                                   comments="%", ndmin=2)
            except ValueError as err:
                raise ValueError(f"{path!r}: malformed entry among data lines {seen + 1} to "
                                 f"{seen + len(lines)}: {err}") from None
            if not table.size:
                continue
            if table.shape[1] != width:
                raise ValueError(f"{path!r}: entries of a {header.field!r} file have {width} "
                                 f"fields; found {table.shape[1]} near data line {seen + 1}")
            rows = table[:, 0].astype(np.int64) - 1
            cols = table[:, 1].astype(np.int64) - 1
            values = (np.ones(len(table)) if width == 2 else table[:, 2])
            for what, idx, size in (("row", rows, m), ("column", cols, n)):
                bad = np.flatnonzero((idx < 0) | (idx >= size))
                if bad.size:
                    raise ValueError(
                        f"{path!r}: entry {seen + int(bad[0]) + 1} has {what} "
                        f"{int(idx[bad[0]]) + 1}, outside 1..{size}")
            seen += len(table)
            if header.symmetry != "general":
                off = rows != cols
                sign = -1 if header.symmetry == "skew-symmetric" else 1
                rows, cols, values = (np.concatenate((rows, cols[off])),
                                      np.concatenate((cols, rows[off])),
                                      np.concatenate((values, sign * values[off])))
            yield rows, cols, values
    if seen != header.nnz:
        raise ValueError(f"{path!r} declares {header.nnz} entries but holds {seen}")


def _from_mtx(source: str, target: str, dtype: np.dtype | None, block_bytes: int,
              overwrite: bool) -> None:
    with _open_text(source) as f:
        header = _read_mtx_header(f, source)
    value_dtype = np.dtype(np.int64 if header.field == "integer" else np.float64)
    # A parsed line costs ~100 bytes while its text is held (list of str + table).
    lines = max(256, block_bytes // 128)
    _coo_to_csr(lambda: _mtx_entries(source, header, lines), header.shape, value_dtype,
                dtype, target, block_bytes, overwrite)


# --------------------------------------------------------------------------- NumPy files
def _from_npz(source: str, target: str, dtype: np.dtype | None, block_bytes: int,
              overwrite: bool) -> None:
    with np.load(source, allow_pickle=False) as npz:
        keys = list(npz.files)
        if {"format", "shape", "data"} <= set(keys):
            X = sp.load_npz(source)
        elif len(keys) == 1:
            _write_dense(target, npz[keys[0]], dtype, block_bytes, overwrite)
            return
        else:
            raise ValueError(f"{source!r} holds arrays {keys}: expected a scipy.sparse.save_npz "
                             "file or a numpy.savez file with one array")
    _write_store(target, io.CSRStore.from_scipy(X), dtype, block_bytes, overwrite)


def _from_npy(source: str, target: str, dtype: np.dtype | None, block_bytes: int,
              overwrite: bool) -> None:
    X = np.load(source, mmap_mode="r", allow_pickle=False)
    _write_dense(target, X, dtype, block_bytes, overwrite)


# --------------------------------------------------------------------------- sparse groups
def _from_group(group: Any, where: str, target: str, dtype: np.dtype | None, block_bytes: int,
                overwrite: bool) -> None:
    """A CSR group is copied in row blocks; a CSC group is streamed by column blocks into
    row blocks (:func:`_coo_to_csr`): no transpose of the whole matrix in memory."""
    if io.sparse_encoding(group) != "csc_matrix":
        _write_store(target, io.CSRStore.from_group(group, where), dtype, block_bytes,
                     overwrite)
        return
    columns = io.CSRStore.from_group(group, where, csc_as_transpose=True)
    n, m = columns.shape
    bounds = np.cumsum((0, *io.csr_block_rows(columns.indptr, columns.shape, columns.dtype,
                                              block_bytes)))

    def entries() -> Iterator[Entries]:
        for a, b in itertools.pairwise(bounds):
            block = columns.read_rows(int(a), int(b)).tocoo()
            yield block.col.astype(np.int64), block.row.astype(np.int64) + int(a), block.data

    _coo_to_csr(entries, (m, n), columns.dtype, dtype, target, block_bytes, overwrite)


def _from_h5ad(source: str, target: str, dtype: np.dtype | None, block_bytes: int,
               overwrite: bool) -> None:
    try:
        import h5py
    except ImportError as err:
        from bignmf.hpc import MissingDependencyError

        raise MissingDependencyError(
            "reading .h5ad files needs h5py: pip install h5py (or bignmf[convert])") from err
    with h5py.File(source, "r") as f:
        if "X" not in f:
            raise ValueError(f"{source!r} has no 'X' matrix (its keys: {sorted(f.keys())})")
        X = f["X"]
        if isinstance(X, h5py.Dataset):
            _write_dense(target, X, dtype, block_bytes, overwrite)
        else:
            _from_group(X, f"{source}/X", target, dtype, block_bytes, overwrite)


def _from_zarr(source: str, target: str, dtype: np.dtype | None, block_bytes: int,
               overwrite: bool) -> None:
    try:
        node = zarr.open(store=source, mode="r")
    except Exception as err:  # zarr raises several types for unreadable metadata
        raise ValueError(f"{source!r} is not a readable Zarr store: {err}") from err
    if isinstance(node, zarr.Array):
        _write_dense(target, node, dtype, block_bytes, overwrite)
    elif io.sparse_encoding(node) is not None:
        _from_group(node, source, target, dtype, block_bytes, overwrite)
    else:
        io.open_zarr_array(source)  # raises, listing the matrices inside the group


_READERS: dict[str, Callable[[str, str, np.dtype | None, int, bool], None]] = {
    "mtx": _from_mtx,
    "npz": _from_npz,
    "npy": _from_npy,
    "h5ad": _from_h5ad,
    "zarr": _from_zarr,
}


def describe(path: str | os.PathLike[str]) -> str:
    """One line on what a converted store holds (for ``bignmf convert``)."""
    node = io.open_zarr_array(path)
    if isinstance(node, io.CSRStore):
        m, n = node.shape
        density = node.nnz / max(1, m * n)
        return (f"CSR {m} x {n} {node.dtype}, {node.nnz} stored entries "
                f"({100 * density:.3g}% dense)")
    return f"dense {node.shape[0]} x {node.shape[1]} {node.dtype}, chunks {node.chunks}"

