"""Shared fixtures and helpers for bignmf's tests: real clusters, real Zarr stores.

Everything here uses real components, never mocks:

* :func:`start_cluster` / the ``real_cluster`` fixture — a ``dask scheduler`` process and
  ``dask worker`` processes (each a nanny plus its worker process) started with
  :mod:`subprocess`, exactly as a user starts them by hand or from a batch script, and a
  :class:`distributed.Client` connected through the scheduler file. Every process gets its own
  process group, and teardown kills the groups, so no process outlives the fixture.
* :func:`write_zarr` — writes a Zarr array on disk from a NumPy array, or block of rows by
  block of rows from a function, so a store larger than memory never exists in the test
  process as a whole.
* :class:`ReadLoggingStore` / :func:`open_logged` — a Zarr store on the local file system that
  appends ``"<pid> <chunk key>"`` to a log file every time a chunk is read, in whatever
  process reads it (the test process or a worker), so tests can count reads of V per chunk.

Worker processes get this directory on their ``PYTHONPATH``, so objects defined here (the
logging store) unpickle on the workers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import zarr
from zarr.storage import LocalStore

TESTS_DIR = Path(__file__).resolve().parent

#: Seconds to wait for a scheduler file / workers to appear on a loaded 2-core machine.
START_TIMEOUT = 120


# --------------------------------------------------------------------------- Zarr stores
def write_zarr(
    path: str | os.PathLike[str],
    source: np.ndarray | Callable[[int, int], np.ndarray],
    *,
    chunks: tuple[int, int],
    shape: tuple[int, int] | None = None,
    dtype: Any = None,
    zarr_format: Literal[2, 3] = 3,
    threads: int = 1,
    **create_kwargs: Any,
) -> str:
    """Write a 2-D Zarr array at ``path`` and return the path as a string.

    Parameters
    ----------
    path
        Directory of the new store (e.g. ``tmp_path / "V.zarr"``); the array is at its root.
    source
        A NumPy array (written whole), or a function ``block(start, stop)`` returning rows
        ``start:stop`` as a NumPy array. The function is called once per row of stored chunks
        (``chunks[0]`` rows, fewer for the last), and each block is written and dropped before
        the next is made: the test process holds one block at a time.
    chunks
        Stored chunk shape.
    shape, dtype
        Required with a function ``source``; taken from the array otherwise.
    threads
        Blocks made and written at the same time (each thread holds one block).
    zarr_format
        2 or 3. ``create_kwargs`` go to :func:`zarr.create_array` (e.g. ``compressors``;
        the default is Zarr's default compression, zstd for format 3).
    """
    path = os.fspath(path)
    if isinstance(source, np.ndarray):
        shape, dtype = source.shape, source.dtype
    elif shape is None or dtype is None:
        raise TypeError("write_zarr needs shape= and dtype= when source is a function")
    z = zarr.create_array(
        store=path, shape=shape, chunks=chunks, dtype=dtype, zarr_format=zarr_format,
        overwrite=True, **create_kwargs,
    )
    if isinstance(source, np.ndarray):
        z[...] = source
    else:
        make = source

        def write(start: int) -> None:
            stop = min(start + chunks[0], shape[0])
            block = make(start, stop)
            if block.shape != (stop - start, shape[1]):
                raise ValueError(f"block({start}, {stop}) has shape {block.shape}")
            z[start:stop] = block

        starts = range(0, shape[0], chunks[0])
        if threads == 1:
            for start in starts:
                write(start)
        else:
            with ThreadPoolExecutor(threads) as pool:
                for _ in pool.map(write, starts):
                    pass
    return path


class LowRankRows:
    """Rows of a non-negative low-rank-plus-noise matrix ``V = W H + noise``, made on demand.

    ``rows(start, stop)`` returns rows ``start:stop``; each row depends only on ``seed`` and
    its index, so any split into blocks gives the same matrix. Entries are about
    ``rank / 4`` with uniform noise of amplitude ``noise`` (incompressible mantissas, so a
    compressed store is about as large on disk as in memory). Use as ``write_zarr``'s
    source, or :meth:`dense` for a small matrix in memory.
    """

    def __init__(self, n_features: int, rank: int, *, noise: float = 0.1, seed: int = 0,
                 dtype: Any = np.float32) -> None:
        self.n_features, self.rank, self.noise, self.seed = n_features, rank, noise, seed
        self.dtype = np.dtype(dtype)
        self.H = np.random.default_rng([seed, 0]).random((rank, n_features), dtype=self.dtype)

    def __call__(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, self.n_features), dtype=self.dtype)
        step = 1024  # rows are generated in fixed groups of 1024, so splits do not matter
        for a in range(start - start % step, stop, step):
            rng = np.random.default_rng([self.seed, 1, a // step])
            W = rng.random((step, self.rank), dtype=self.dtype)
            block = rng.random((step, self.n_features), dtype=self.dtype)
            block *= self.dtype.type(self.noise)
            block += W @ self.H
            lo, hi = max(a, start), min(a + step, stop)
            out[lo - start : hi - start] = block[lo - a : hi - a]
        return out

    def dense(self, n_samples: int) -> np.ndarray:
        """The first ``n_samples`` rows as one array."""
        return self(0, n_samples)


def disk_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes the files under ``path`` occupy (their sizes, metadata included)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def chunk_keys(z: zarr.Array) -> list[str]:
    """The store keys of all chunks of ``z`` (Zarr format 2 or 3, default key encoding)."""
    grid = [range(-(-s // c)) for s, c in zip(z.shape, z.chunks, strict=True)]
    idx = np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, len(grid))
    if z.metadata.zarr_format == 3:
        return ["c/" + "/".join(map(str, i)) for i in idx]
    return [".".join(map(str, i)) for i in idx]


class ReadLoggingStore(LocalStore):
    """A :class:`zarr.storage.LocalStore` that logs every chunk read to a file.

    Each read of a chunk key (not of metadata: ``zarr.json``, ``.zarray``, ...) appends one
    line ``"<pid> <key>"`` to ``log_path`` with a single ``O_APPEND`` write, which is atomic
    for such short lines, so concurrent readers in several processes (dask workers) never
    interleave. The store pickles with its log path, so it logs on workers too.
    """

    def __init__(self, root: Path | str, *, read_only: bool = False, log_path: str) -> None:
        super().__init__(root, read_only=read_only)
        self.log_path = str(log_path)

    def with_read_only(self, read_only: bool = False) -> ReadLoggingStore:
        return type(self)(self.root, read_only=read_only, log_path=self.log_path)

    def __eq__(self, other: object) -> bool:
        return super().__eq__(other) and getattr(other, "log_path", None) == self.log_path


    def _log(self, key: str) -> None:
        name = key.rsplit("/", 1)[-1]
        if name == "zarr.json" or name.startswith("."):
            return
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {key}\n".encode())
        finally:
            os.close(fd)

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        self._log(key)
        return await super().get(key, prototype, byte_range)

    def get_sync(self, key: str, *, prototype: Any = None, byte_range: Any = None) -> Any:
        self._log(key)
        return super().get_sync(key, prototype=prototype, byte_range=byte_range)

    async def get_partial_values(self, prototype: Any, key_ranges: Any) -> Any:
        key_ranges = list(key_ranges)
        for key, _ in key_ranges:
            self._log(key)
        return await super().get_partial_values(prototype, key_ranges)


def open_logged(path: str | os.PathLike[str], log_path: str | os.PathLike[str]) -> zarr.Array:
    """Open the array at ``path`` read-only through a :class:`ReadLoggingStore`."""
    store = ReadLoggingStore(os.fspath(path), read_only=True, log_path=os.fspath(log_path))
    return zarr.open_array(store=store, mode="r")


def read_log(log_path: str | os.PathLike[str]) -> list[tuple[int, str]]:
    """``(pid, key)`` for every chunk read logged so far (empty if nothing was read)."""
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        return [(int(pid), key) for pid, key in (line.split() for line in f if line.strip())]


def read_counts(log_path: str | os.PathLike[str]) -> Counter[str]:
    """How many times each chunk key was read."""
    return Counter(key for _, key in read_log(log_path))


# --------------------------------------------------------------------------- real clusters
def vmhwm() -> int:
    """Peak resident set size of the calling process in bytes (``VmHWM``; Linux)."""
    return _status("VmHWM")


def vmrss() -> int:
    """Current resident set size of the calling process in bytes (``VmRSS``; Linux)."""
    return _status("VmRSS")


def _status(field: str) -> int:
    from bignmf.cluster import proc_status

    value = proc_status(field)
    if not value:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return value


@dataclass
class RealCluster:
    """A running scheduler and workers in their own processes, and a client of them.

    ``client`` is *not* set as dask's default client, so it never leaks into other tests:
    compute with ``client.as_current()`` (which bignmf honours), or create a default
    ``Client(scheduler_file=cluster.scheduler_file)`` in the test and close it there.
    """

    client: Any
    scheduler_file: str
    memory_limit: int
    n_workers: int
    log_dir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.client.scheduler.address

    def workers(self) -> dict[str, dict[str, Any]]:
        """The scheduler's view of its workers, by address."""
        return self.client.scheduler_info(n_workers=-1)["workers"]

    def worker_pids(self) -> dict[str, int]:
        """Process id of each worker process, by worker address."""
        return self.client.run(os.getpid)

    def peak_rss(self) -> dict[str, int]:
        """Peak RSS (``VmHWM``) of each worker process since it started, in bytes."""
        return self.client.run(vmhwm)

    def rss(self) -> dict[str, int]:
        """Current RSS of each worker process, in bytes."""
        return self.client.run(vmrss)

    def logs(self) -> str:
        """Everything the scheduler, nannies and workers wrote to stdout/stderr so far."""
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


def _wait_groups_gone(procs: list[subprocess.Popen], timeout: float) -> bool:
    """Wait until every process group is empty (reaping our direct children)."""
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            p.poll()
        if not any(_group_alive(p.pid) for p in procs):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def python_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS_DIR), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env.update(extra)
    return env


def stop_cluster(cluster: RealCluster) -> None:
    """Close the client, then end every process group: SIGTERM, then SIGKILL if needed."""
    with contextlib.suppress(Exception):
        cluster.client.close(timeout=10)
    workers = cluster.processes[1:]
    scheduler = cluster.processes[:1]
    for p in workers:
        _kill_group(p, signal.SIGTERM)
    if not _wait_groups_gone(workers, 20):
        for p in workers:
            _kill_group(p, signal.SIGKILL)
    for p in scheduler:
        _kill_group(p, signal.SIGTERM)
    if not _wait_groups_gone(scheduler, 10):
        for p in scheduler:
            _kill_group(p, signal.SIGKILL)
    for p in cluster.processes:
        _kill_group(p, signal.SIGKILL)  # stragglers in any group
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)
    _wait_groups_gone(cluster.processes, 10)


def start_cluster(
    directory: str | os.PathLike[str],
    *,
    n_workers: int = 2,
    memory_limit: str | int = "1GB",
    nthreads: int = 1,
    worker_env: dict[str, str] | None = None,
) -> RealCluster:
    """Start ``python -m distributed.cli.dask_scheduler`` and ``n_workers`` times
    ``python -m distributed.cli.dask_worker`` (one worker process each, behind a nanny, as
    ``dask worker`` does by default), wait for all workers and return a connected client.

    Each process is started in a new session (its own process group), with stdout/stderr in
    ``directory/*.log``. Call :func:`stop_cluster` to end it (the fixtures do); should this
    process die first, the scheduler and nannies exit by themselves (``bignmf._watchdog``).
    """
    from dask.utils import parse_bytes
    from distributed import Client

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    scheduler_file = directory / "scheduler.json"
    # bignmf's watchdog preload makes the scheduler and nannies exit if this process dies
    # without tearing them down (a killed pytest run leaves nothing behind).
    from bignmf import _watchdog

    env = python_env(**{_watchdog.ENV: str(os.getpid())})
    procs: list[subprocess.Popen] = []

    def launch(name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        log = open(directory / f"{name}.log", "wb")  # noqa: SIM115 - closed below
        try:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=directory, env={**env, **(extra_env or {})},
                start_new_session=True,
            ))
        finally:
            log.close()

    cluster = RealCluster(
        client=None, scheduler_file=str(scheduler_file), n_workers=n_workers,
        memory_limit=parse_bytes(memory_limit) if isinstance(memory_limit, str)
        else int(memory_limit), log_dir=directory, processes=procs,
    )
    try:
        launch("scheduler", [
            "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
            "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file),
            "--preload", "bignmf._watchdog",
        ])
        deadline = time.monotonic() + START_TIMEOUT
        while not _scheduler_file_ready(scheduler_file):
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dask scheduler did not start:\n{cluster.logs()}")
            time.sleep(0.2)
        for i in range(n_workers):
            launch(f"worker-{i}", [
                "distributed.cli.dask_worker", "--scheduler-file", str(scheduler_file),
                "--nthreads", str(nthreads), "--memory-limit", str(memory_limit),
                "--name", f"worker-{i}", "--host", "127.0.0.1", "--no-dashboard",
                "--local-directory", str(directory / f"worker-{i}-space"),
                "--preload-nanny", "bignmf._watchdog",
            ], worker_env)
        cluster.client = Client(
            scheduler_file=str(scheduler_file), set_as_default=False, timeout=START_TIMEOUT,
        )
        cluster.client.wait_for_workers(n_workers, timeout=START_TIMEOUT)
    except BaseException:
        stop_cluster(cluster)
        raise
    return cluster


def _scheduler_file_ready(path: Path) -> bool:
    try:
        return bool(json.loads(path.read_text()).get("address"))
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def running_cluster(directory: str | os.PathLike[str], **kwargs: Any) -> Iterator[RealCluster]:
    """:func:`start_cluster` as a context manager that always stops the cluster."""
    cluster = start_cluster(directory, **kwargs)
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture(scope="module")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    """A real 2-worker cluster (scheduler + 2 ``dask worker`` processes, 1 thread and 1 GB
    memory limit each) for the tests of one module; torn down, processes killed, at the end.

    The client is not dask's default client (see :class:`RealCluster`).
    """
    with running_cluster(tmp_path_factory.mktemp("cluster"), n_workers=2,
                         memory_limit="1GB") as cluster:
        yield cluster


@pytest.fixture
def read_log_path(tmp_path: Path) -> Path:
    """A fresh path for a :class:`ReadLoggingStore` log."""
    return tmp_path / "reads.log"


def assert_same_fit(actual, desired, err_msg=""):
    """Two fits that must give the same result: equal to 1e-12 relative.

    The fits are deterministic, and in our runs equal bit for bit; but BLAS kernels round
    differently depending on the memory alignment of their operands, which changes between
    runs, so separate fits may differ in the last bits. Any real difference (another seed,
    a lost or repeated iteration, a different block split) is many orders larger.
    """
    actual, desired = np.asarray(actual), np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=1e-12,
                               atol=1e-12 * float(np.abs(desired).max(initial=0.0)),
                               err_msg=err_msg)
