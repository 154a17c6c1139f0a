"""Where out-of-core work runs: the user's cluster, or an embedded local one.

Resolution order for a dask input (NumPy/SciPy inputs never start anything):

1. ``dask.config`` names a scheduler (``dask.config.set(scheduler="threads")``, or a
   ``Client`` set as default): use it.
2. A ``distributed.Client`` exists in this process: use its cluster.
3. Otherwise start (once per process) an embedded local cluster sized to the machine: one
   single-threaded worker process per core, the machine's memory shared between them. It
   is reused by later fits, becomes dask's default client (so that ``W.compute()`` runs
   where W lives), and is closed when the interpreter exits.

The embedded cluster is distributed's ``SubprocessCluster`` (scheduler and nanny-managed
workers started as ``python -m dask spec``) rather than ``LocalCluster``: LocalCluster's
workers are started with multiprocessing's *spawn*, which re-imports the user's
``__main__`` and fails in a plain script without an ``if __name__ == "__main__":`` guard —
the way scikit-learn users write their scripts.

Its processes start with :data:`MALLOC_TUNABLE` in ``GLIBC_TUNABLES``: distributed's nanny
sets ``MALLOC_TRIM_THRESHOLD_``, which turns off glibc's adaptive mmap threshold, so every
buffer of a chunk read from Zarr (the file's bytes, the decoded chunk) is a fresh mapping
whose pages fault in one by one — about two faults per 4 KiB of V per pass. With huge pages
on those mappings, a pass over a 381 MiB V (zstd, 2 workers) took 0.25 million faults
instead of 1.42 million, half the system time, and an iteration 0.68-0.87x as long from the
page cache, 0.93x from disk; peak memory did not change (``run_all.py --only memory``). A
user's own cluster gets the same with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` in its
workers' environment before they start.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import dask

from bignmf import _watchdog

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_embedded: dict[str, Any] = {}

#: glibc's tunable (2.35 and later; ignored by older glibc and other C libraries) for
#: transparent huge pages on malloc's large mappings, given to the embedded cluster's
#: processes (see the module docstring). It takes effect only where the kernel's
#: ``transparent_hugepage/enabled`` is ``madvise`` or ``always``.
MALLOC_TUNABLE_NAME = "glibc.malloc.hugetlb"
MALLOC_TUNABLE = f"{MALLOC_TUNABLE_NAME}=1"


def _cluster_environ() -> dict[str, str]:
    """What the embedded cluster's processes get beside this process's environment: the
    user's ``GLIBC_TUNABLES`` with :data:`MALLOC_TUNABLE` added; nothing if they set that
    tunable themselves, or gave the workers ``GLIBC_TUNABLES`` in Dask's configuration
    (``distributed.nanny.pre-spawn-environ``, which an inherited value would override)."""
    configured = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "GLIBC_TUNABLES" in configured or MALLOC_TUNABLE_NAME in tunables:
        return {}
    return {"GLIBC_TUNABLES": ":".join(filter(None, [tunables, MALLOC_TUNABLE]))}


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``extra`` while processes are started that must inherit it;
    restored afterwards, so that the user's later subprocesses do not."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def active_client() -> Any | None:
    """The ``distributed.Client`` dask would use now, or ``None``."""
    scheduler = dask.config.get("scheduler", None)
    if scheduler is not None and scheduler not in ("dask.distributed", "distributed"):
        if "Client" in type(scheduler).__name__:
            return scheduler
        return None
    try:
        from distributed import Client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return Client.current(allow_global=True)
    except ValueError:
        return None


def uses_explicit_scheduler() -> bool:
    """True when the user chose a scheduler (config or a live Client)."""
    return dask.config.get("scheduler", None) is not None or active_client() is not None


def resolve() -> tuple[Any | None, bool]:
    """``(client, embedded)`` for an out-of-core fit, following the module's order.

    ``client`` is ``None`` when ``dask.config`` names a non-distributed scheduler;
    ``embedded`` says whether the client is bignmf's own local cluster (started now or
    by an earlier fit), whose workers share this machine's filesystem.
    """
    if uses_explicit_scheduler():
        client = active_client()
        return client, client is not None and client is _embedded.get("client")
    return embedded_client(), True


def embedded_client(n_workers: int | None = None, memory_limit: str | int = "auto") -> Any:
    """Start, or return, this process's embedded ``LocalCluster`` client.

    One worker process per core, one thread each (BLAS inside a task is single-threaded
    there, so workers do not oversubscribe the cores); ``memory_limit='auto'`` gives each
    worker an equal share of the machine's memory.
    """
    from distributed import Client
    from distributed.deploy.subprocess import SubprocessCluster

    with _lock:
        client = _embedded.get("client")
        if client is not None and client.status == "running":
            return client
        n = n_workers or os.cpu_count() or 1
        os.environ[_watchdog.ENV] = str(os.getpid())  # inherited by the scheduler process
        with _environ(_cluster_environ()):  # (the processes are started before this returns)
            cluster = SubprocessCluster(
                n_workers=n,
                threads_per_worker=1,
                worker_kwargs={"memory_limit": memory_limit,
                               "preload_nanny": ["bignmf._watchdog"]},
                scheduler_kwargs={"preload": ["bignmf._watchdog"]},
                dashboard_address=":0",
            )
        # The default client from now on: W of an out-of-core fit lives on these workers,
        # and the user's later dask computations (W.compute(), W.to_zarr()) must run there.
        client = Client(cluster, set_as_default=True)
        client.wait_for_workers(n, timeout=120)
        _embedded.update(client=client, cluster=cluster)
        logger.info(
            "bignmf started a local Dask cluster: %d workers, dashboard at %s",
            n,
            client.dashboard_link,
        )
        return client


def close_embedded() -> None:
    """Close the embedded cluster, if one was started."""
    with _lock:
        client = _embedded.pop("client", None)
        cluster = _embedded.pop("cluster", None)
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


atexit.register(close_embedded)


def worker_info(client: Any | None) -> dict[str, dict[str, Any]]:
    """The scheduler's information on each of the client's workers, by address; all of
    them (some versions of distributed truncate the list unless asked for all)."""
    if client is None:
        return {}
    try:
        return dict(client.scheduler_info(n_workers=-1)["workers"])
    except TypeError:
        return dict(client.scheduler_info()["workers"])


def _memory_limits(client: Any | None) -> list[int]:
    """Each worker's memory limit in bytes (0 for a worker without one)."""
    return [int(w.get("memory_limit") or 0) for w in worker_info(client).values()]


def n_workers(client: Any | None) -> int:
    """Workers of the client's cluster (1 without a distributed client)."""
    return max(1, len(_memory_limits(client)))


def worker_memory_limit(client: Any | None) -> int | None:
    """Smallest memory limit among the client's workers, in bytes (``None`` if unknown)."""
    limits = [lim for lim in _memory_limits(client) if lim]
    return min(limits) if limits else None


def total_memory_limit(client: Any | None) -> int | None:
    """Sum of the memory limits of the client's workers, in bytes (``None`` when there is
    no distributed client or a worker has no limit)."""
    limits = _memory_limits(client)
    return sum(limits) if limits and all(limits) else None


def worker_peak_memory(client: Any) -> dict[str, int]:
    """Each worker process's peak resident memory (``VmHWM``, Linux) in bytes, by worker
    address; empty where it cannot be read."""
    try:
        return dict(client.run(_vmhwm))
    except Exception:  # not Linux, or a worker gone
        return {}


def proc_status(field: str) -> int:
    """A memory field of this process's ``/proc/self/status`` (``'VmHWM'``: peak resident
    memory, ``'VmRSS'``: current) in bytes; 0 where there is none (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _vmhwm() -> int:
    return proc_status("VmHWM")
