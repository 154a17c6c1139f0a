"""Factor blocks kept on storage between passes, so that worker memory does not grow with m.

A fit holds one row block of W per block of V. In the workers' memory that is
``m k itemsize / workers`` bytes per worker, the only part of a fit's memory that grows
with the number of rows m. With a :class:`Scratch`, each pass's kernel reads its block of W
from a file and writes the new block to another (:class:`Spilling`); between passes the
workers hold only the small sums. The I/O this adds is ``2 k / n`` of a pass over dense V.

Layout: ``<root>/W-scratch-XXXX/<epoch>-<generation>/W-<block>.npy``. Generation ``t`` is the
W of iteration ``t`` (0: the initialization), written by that pass only: a kernel run again
by the scheduler (its result lost with a worker) reads the same input and writes the same
bytes. Each file is written under a temporary name and renamed into place, so a
reader sees a whole block or none; a block that is gone (a generation already deleted, or a
worker that cannot see the folder) raises :class:`LostBlock`, which the fit treats as lost
data and recovers from its newest checkpoint. Recovery starts a new epoch: tasks of the
abandoned iterations still running write into folders that no longer exist, and fail.

The folder must be one that every worker and this process see (a shared filesystem on a
cluster; any local folder for the embedded cluster).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Name prefix of a fit's folder of stored blocks.
PREFIX = "W-scratch-"


class LostBlock(LookupError):
    """A stored block is gone: the fit goes back to its newest checkpoint."""


@dataclass(frozen=True)
class StoredBlock:
    """A row block of a factor in a ``.npy`` file (what a pass keeps instead of the block)."""

    path: str

    def load(self) -> np.ndarray:
        try:
            return np.load(self.path)
        except FileNotFoundError:
            raise LostBlock(f"stored block {self.path} is gone (deleted, or this worker "
                            "does not see the scratch folder)") from None

    def save(self, block: np.ndarray) -> StoredBlock:
        """Write ``block`` here atomically (a temporary name, then a rename)."""
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        try:
            f = open(tmp, "wb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise FileNotFoundError(
                f"cannot write a block of W to {self.path}: its folder is not there (this "
                "worker does not see the folder of the fit's stored W: store_W needs a "
                "folder that every worker shares, see `checkpoint`)") from None
        with f:
            np.save(f, np.ascontiguousarray(block))
        os.replace(tmp, self.path)
        return self


def loaded(block: Any) -> Any:
    """The array of a block, read from storage if it is a :class:`StoredBlock`."""
    return block.load() if isinstance(block, StoredBlock) else block


def save_block(block: np.ndarray, target: StoredBlock) -> StoredBlock:
    """Write ``block`` to ``target`` (a task of its own, for blocks made outside a pass)."""
    return target.save(block)


class Spilling:
    """A pass kernel ``kernel(V_i, W_i, **kw) -> (W_new, *rest)`` whose W comes from and
    goes to storage: called as ``(V_i, W_i, target, **kw)``, it reads ``W_i`` if stored,
    runs the kernel, writes ``W_new`` to ``target`` and returns ``(target, *rest)``.
    With ``target=None`` (a pass that does not update W) it only reads."""

    def __init__(self, kernel: Callable[..., Any]) -> None:
        self.kernel = kernel
        self.__name__ = kernel.__name__

    def __call__(self, V: Any, W: Any, target: StoredBlock | None = None, **kwargs: Any
                 ) -> Any:
        out = self.kernel(V, loaded(W), **kwargs)
        if target is None:
            return out
        return (target.save(out[0]), *out[1:])


class Scratch:
    """The folder of a fit's stored blocks (this process's side: create, name, delete).

    Parameters
    ----------
    root : path
        A folder every worker sees (made if needed); the fit's own subfolder is made in it
        and removed by :meth:`close`. Subfolders left there by earlier fits that did not
        end (a batch job killed at its walltime) are removed first: ``root`` belongs to one
        fit at a time, as the checkpoints beside it do.
    n_blocks : int
        Row blocks per generation.
    """

    def __init__(self, root: str | os.PathLike[str], n_blocks: int) -> None:
        root = os.fspath(root)
        os.makedirs(root, exist_ok=True)
        for name in os.listdir(root):
            if name.startswith(PREFIX):
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        self.path = tempfile.mkdtemp(prefix=PREFIX, dir=root)
        self.n_blocks = n_blocks
        self.epoch = 0

    def _folder(self, generation: int) -> str:
        return os.path.join(self.path, f"{self.epoch}-{generation}")

    def targets(self, generation: int, name: str = "W") -> list[StoredBlock]:
        """Where the blocks of ``generation`` go (its folder is made now); ``name`` tells
        apart other blocks that live as long, e.g. the initialization's ``C = V Q``."""
        folder = self._folder(generation)
        os.makedirs(folder, exist_ok=True)
        return [StoredBlock(os.path.join(folder, f"{name}-{i:06d}.npy"))
                for i in range(self.n_blocks)]

    def put(self, generation: int, blocks: Iterable[np.ndarray]) -> list[StoredBlock]:
        """Write blocks made by this process as ``generation``, one at a time."""
        return [t.save(b) for t, b in zip(self.targets(generation), blocks, strict=True)]

    def release(self, generation: int) -> None:
        """Delete a generation no pass will read again."""
        shutil.rmtree(self._folder(generation), ignore_errors=True)

    def reset(self) -> None:
        """Delete every generation and start a new epoch (after going back to a checkpoint)."""
        for name in os.listdir(self.path):
            shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)
        self.epoch += 1

    def close(self) -> None:
        """Delete the fit's folder, and ``root`` if nothing else is left in it."""
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(self.path))
