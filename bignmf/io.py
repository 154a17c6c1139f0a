"""Open what a user has as a chunked matrix without reading it, and write results.

Inputs: a path to a Zarr store (an array at the root, or an array inside a group given as
``"store.zarr/X"`` or ``array="X"``), a :class:`zarr.Array` (Zarr format 2 or 3), a dask
array or a NumPy array. The result is a dask array chunked in *row blocks* spanning all
columns, the layout the iteration reads; V itself is never loaded.

Row blocks are whole multiples of the stored row chunks, so each stored chunk belongs to
exactly one block and is read once per pass. When the store is chunked across columns too,
a block task reads and concatenates its chunks (one copy of the block in memory, no extra
reads). A store chunked in tall, narrow column strips (e.g. ``(m, 100)``) has no such row
layout: every block would read every strip whole, so such stores should be rewritten in
row blocks first (``bignmf convert`` — or ``dask.array.rechunk`` then ``to_zarr``).
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import dask.array as da
import numpy as np
import zarr

#: Default size of one row block of V in memory (its dense compute dtype).
DEFAULT_BLOCK_BYTES = 128 * 2**20

MatrixLike = Any  # str | os.PathLike | zarr.Array | da.Array | np.ndarray


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
    block_bytes: int | None = None,
) -> int:
    """Rows per block: about ``block_bytes`` of dense data, a multiple of ``stored_rows``."""
    m, n = shape
    row_bytes = n * compute_dtype(dtype).itemsize
    rows = max(1, (block_bytes or DEFAULT_BLOCK_BYTES) // row_bytes)
    if stored_rows:
        rows = max(stored_rows, rows // stored_rows * stored_rows)
    return int(min(rows, m))


def open_zarr_array(path: str | os.PathLike[str], array: str | None = None) -> zarr.Array:
    """Open a Zarr array read-only, with errors that say what was found instead."""
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
        names = sorted(name for name, _ in node.arrays())
        hint = (f"; its arrays: {', '.join(names)} — pass e.g. {os.path.join(path, names[0])!r}"
                if names else " with no arrays in it")
        raise ValueError(f"{path!r} is a Zarr group, not an array{hint}")
    return node


def open_matrix(
    X: MatrixLike,
    *,
    array: str | None = None,
    block_rows: int | None = None,
    block_bytes: int | None = None,
) -> da.Array:
    """Return V as a dask array of row blocks, without reading any data.

    Parameters
    ----------
    X : str, os.PathLike, zarr.Array, dask.array.Array or numpy.ndarray
        The data matrix. A path names a Zarr store (format 2 or 3).
    array : str, optional
        Path of the array inside a Zarr group (same as appending it to the path).
    block_rows : int, optional
        Rows per block. Default: about ``block_bytes`` per block, rounded to whole stored
        row chunks.
    block_bytes : int, optional
        Target bytes per block (default 128 MiB, or what the executor derives from the
        workers' memory limit).

    Returns
    -------
    dask.array.Array of shape (m, n), float32 or float64, chunked ``(block_rows, n)``.

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        For a missing store, a group instead of an array, or a shape/dtype NMF cannot use.
    """
    if isinstance(X, (str, os.PathLike)):
        X = open_zarr_array(X, array)
    if isinstance(X, zarr.Array):
        check_shape_dtype(X.shape, X.dtype)
        shape = (int(X.shape[0]), int(X.shape[1]))
        rows = block_rows or choose_block_rows(shape, X.dtype, X.chunks[0], block_bytes)
        V = da.from_zarr(X, chunks=(rows, X.shape[1]))
    elif isinstance(X, da.Array):
        check_shape_dtype(X.shape, X.dtype)
        if any(np.isnan(c) for dim in X.chunks for c in dim):
            raise ValueError("X has unknown chunk sizes; call X.compute_chunk_sizes() first")
        if block_rows is not None:
            V = X.rechunk((block_rows, -1))
        elif len(X.chunks[1]) == 1:
            V = X
        else:
            rows = choose_block_rows(X.shape, X.dtype, X.chunks[0][0], block_bytes)
            V = X.rechunk((rows, -1))
    elif isinstance(X, np.ndarray):
        check_shape_dtype(X.shape, X.dtype)
        rows = block_rows or choose_block_rows(X.shape, X.dtype, None, block_bytes)
        V = da.from_array(X, chunks=(rows, X.shape[1]))
    else:
        raise TypeError(
            "X must be a path to a Zarr array, a zarr.Array, a dask array or a NumPy array; "
            f"got {type(X).__name__}"
        )
    dtype = compute_dtype(V.dtype)
    return V if V.dtype == dtype else V.astype(dtype)


def is_out_of_core(X: Any) -> bool:
    """True for inputs bignmf processes block by block with dask (paths, Zarr, dask)."""
    return isinstance(X, (str, os.PathLike, zarr.Array, da.Array))


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
    if in_place:
        root = zarr.open_group(path, mode="a")
        target = path
    else:
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(
                f"{path!r} exists; choose another output or pass overwrite=True")
        target = f"{path}.partial-{os.getpid()}"
        if os.path.exists(target):
            shutil.rmtree(target)
        root = zarr.open_group(target, mode="w")
    write_factors(root, W, H, loss_history)
    root.attrs.update({**attrs, "status": "complete"})
    if not in_place:
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(target, path)
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
