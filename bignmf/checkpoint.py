"""Checkpoints of a running fit, and resuming from them.

Layout inside the output Zarr group (``OUT.zarr``)::

    checkpoints/
      LATEST                 text file: name of the newest complete checkpoint
      ckpt-000040/           a Zarr group
        W   (m x k, chunked like V's row blocks)    H (k x n)    loss_history
        attrs: iteration, stats (||V||^2, mean, ...), rng_state, params, bignmf_version

A checkpoint is written completely under its own name, then published by replacing
``LATEST`` with :func:`os.replace` (atomic on POSIX filesystems), then older checkpoints are
deleted. A process killed at any moment leaves ``LATEST`` naming a complete checkpoint, so
the store always opens and resumes. Checkpoints therefore need a POSIX filesystem (local
disk, NFS, Lustre, GPFS), not an object store.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from bignmf._version import __version__

CHECKPOINTS = "checkpoints"
LATEST = "LATEST"


@dataclass
class FitState:
    """Everything an iteration needs to continue: the state after ``iteration`` iterations."""

    iteration: int
    W: Any  # list of blocks (in a fit) or an array (loaded)
    H: np.ndarray
    history: list[float]
    stats: dict[str, Any]
    rng_state: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        return {k: _from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


def save(root: str | os.PathLike[str], state: FitState, W: Any, *,
         params: dict[str, Any], keep: int = 1) -> str:
    """Write ``state`` (with ``W`` as one array, NumPy or dask) as the newest checkpoint."""
    from bignmf.io import write_factors

    base = os.path.join(os.fspath(root), CHECKPOINTS)
    zarr.open_group(base, mode="a")  # a Zarr group, so readers of the store recognize it
    name = f"ckpt-{state.iteration:06d}"
    path = os.path.join(base, name)
    if os.path.exists(path):
        shutil.rmtree(path)
    group = zarr.open_group(path, mode="w")
    write_factors(group, W, state.H, state.history)
    group.attrs.update(_jsonable({
        "iteration": state.iteration, "stats": state.stats, "rng_state": state.rng_state,
        "params": params, "extra": state.extra, "bignmf_version": __version__,
        "written_at": time.time(),
    }))
    tmp = os.path.join(base, f".{LATEST}.{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(base, LATEST))  # the checkpoint is now in force
    old = sorted(d for d in os.listdir(base) if d.startswith("ckpt-") and d != name)
    for d in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(os.path.join(base, d), ignore_errors=True)
    return path


def latest(root: str | os.PathLike[str]) -> str | None:
    """Path of the newest complete checkpoint in ``root``, or ``None``."""
    base = os.path.join(os.fspath(root), CHECKPOINTS)
    try:
        with open(os.path.join(base, LATEST)) as f:
            name = f.read().strip()
    except FileNotFoundError:
        return None
    path = os.path.join(base, name)
    return path if os.path.isdir(path) else None


def load(root: str | os.PathLike[str]) -> tuple[FitState, dict[str, Any]] | None:
    """The newest checkpoint as a :class:`FitState` (W as a lazy dask array) and the
    parameters it was written with; ``None`` when there is none."""
    import dask.array as da

    path = latest(root)
    if path is None:
        return None
    group = zarr.open_group(path, mode="r")
    attrs = _from_jsonable(group.attrs.asdict())
    W, H, history = (_array(group, name) for name in ("W", "H", "loss_history"))
    state = FitState(
        iteration=int(attrs["iteration"]),
        W=da.from_zarr(W),
        H=np.asarray(H[...]),
        history=[float(x) for x in np.asarray(history[...])],
        stats=attrs["stats"],
        rng_state=_rng_state_from_json(attrs.get("rng_state")),
        extra=attrs.get("extra", {}),
    )
    return state, attrs["params"]


def _array(group: zarr.Group, name: str) -> zarr.Array:
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise ValueError(f"checkpoint {group.store_path} has no array {name!r}")
    return node


def _rng_state_from_json(value: Any) -> Any:
    if value is None:
        return None
    name, keys, pos, has_gauss, cached = value
    return (name, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached))


class Checkpointer:
    """Decides when to checkpoint: every ``every`` iterations and/or ``seconds`` seconds
    (whichever comes first), and always at the end of the fit."""

    def __init__(self, root: str | os.PathLike[str], params: dict[str, Any],
                 every: int | None = None, seconds: float | None = None) -> None:
        self.root = os.fspath(root)
        self.params = params
        self.every = every
        self.seconds = seconds
        self._last = time.monotonic()
        self.saved: list[int] = []

    def due(self, iteration: int) -> bool:
        if self.every and iteration % self.every == 0:
            return True
        return bool(self.seconds) and time.monotonic() - self._last >= float(self.seconds or 0)

    def load(self) -> FitState | None:
        """The newest checkpoint in this checkpointer's store, or ``None``."""
        loaded = load(self.root)
        return loaded[0] if loaded is not None else None

    def save(self, state: FitState, W: Any) -> None:
        save(self.root, state, W, params=self.params)
        self._last = time.monotonic()
        self.saved.append(state.iteration)
