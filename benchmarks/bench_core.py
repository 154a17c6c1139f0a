#!/usr/bin/env python
"""Side-by-side speed of bignmf against its references, measured in one run.

    python benchmarks/bench_core.py                 # 20000 x 5000, k=32 (5-7 minutes)
    python benchmarks/bench_core.py --quick         # 4000 x 1000, k=16 (< 1 minute)
    python benchmarks/bench_core.py --m 20000 --n 5000 --k 32 --json results.json

Every number that matters is a *ratio* of two timings taken in this run on this machine
(shared machines are noisy, stored absolute times are not comparable):

1. In memory (dense float32 V, low rank plus noise):
   * seconds per iteration of bignmf (default settings, ``inner_sweeps=1``, ``solver='mu'``),
     scikit-learn's ``NMF`` (``solver='cd'`` and ``'mu'``) and of the two NumPy GEMMs an
     iteration needs (``V H^T`` and ``W^T V`` in each BLAS layout; the fastest is the compute
     limit), median and minimum over interleaved rounds;
   * time to equal error: the error scikit-learn reaches in 200 iterations (its default
     ``max_iter``, ``tol=0``, ``init='nndsvda'``, initialization included; recomputed in
     float64) and the time bignmf (default settings, its own NNDSVDA initialization
     included) needs to reach it.
2. Out of core (V in a row-chunked Zarr store in a temporary directory): one read+decode
   pass over V in bignmf's row blocks (the I/O limit) and bignmf's seconds per iteration,
   with dask's threaded scheduler and with bignmf's embedded distributed cluster.
3. A markdown table of the ratios with the machine's facts; ``--json PATH`` saves all of it.

No assertion on speed is made anywhere (the test suite makes none either). See README.md
beside this file for the method, results and findings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from zarr.storage import LocalStore

# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, flush=True)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No ConvergenceWarning / RuntimeWarning noise from the timed fits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def summary(times: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(times), "min": min(times), "n": len(times),
            "all": [round(t, 6) for t in times]}


def make_data(m: int, n: int, k: int, noise: float, seed: int) -> np.ndarray:
    """Dense float32 ``V = W H + noise``: non-negative, exactly rank k before the noise."""
    rng = np.random.default_rng(seed)
    W = rng.random((m, k), dtype=np.float32)
    H = rng.random((k, n), dtype=np.float32)
    V = W @ H
    scale = np.float32(noise * float(V.mean()))
    step = max(1, (1 << 24) // n)
    for a in range(0, m, step):  # add the noise in slices: no second m x n temporary
        V[a:a + step] += scale * rng.random((min(step, m - a), n), dtype=np.float32)
    return V


def random_init(V: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 'random' initialization scale, float32."""
    rng = np.random.default_rng(seed + 1)
    avg = np.sqrt(float(V.mean()) / k)
    W0 = np.abs(avg * rng.standard_normal((V.shape[0], k))).astype(np.float32)
    H0 = np.abs(avg * rng.standard_normal((k, V.shape[1]))).astype(np.float32)
    return W0, H0


def exact_err(V: np.ndarray, W: Any, H: np.ndarray, rows: int = 2048) -> float:
    """``||V - W H||_F`` accumulated in float64, block by block (ground truth for targets)."""
    W = np.asarray(W)
    H64 = np.asarray(H, dtype=np.float64)
    total = 0.0
    for a in range(0, V.shape[0], rows):
        R = V[a:a + rows].astype(np.float64) - W[a:a + rows].astype(np.float64) @ H64
        total += float(np.einsum("ij,ij->", R, R))
    return float(np.sqrt(total))


class _Stop(Exception):
    """Raised by a callback to end a bignmf fit early (target reached or time is up)."""


def machine_facts() -> dict[str, Any]:
    import dask
    import distributed
    import scipy
    import sklearn
    import zarr

    import bignmf

    facts: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "affinity_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "versions": {"bignmf": bignmf.__version__, "numpy": np.__version__,
                     "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
                     "dask": dask.__version__, "distributed": distributed.__version__,
                     "zarr": zarr.__version__},
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        facts["cpu_model"] = names[0] if names else platform.processor()
    except OSError:
        facts["cpu_model"] = platform.processor()
    try:
        import psutil

        facts["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo") as f:
            facts["memory_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    with contextlib.suppress(OSError):
        facts["load_average"] = os.getloadavg()
    try:
        import threadpoolctl

        importlib.import_module("scipy.linalg")  # so that SciPy's BLAS is listed

        facts["blas"] = [
            {key: info.get(key) for key in ("internal_api", "version", "num_threads",
                                            "architecture", "threading_layer", "filepath")}
            for info in threadpoolctl.threadpool_info()
        ]
    except ImportError:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            np.show_config()
        facts["blas"] = buf.getvalue()
    return facts


def blas_line(facts: dict[str, Any]) -> str:
    blas = facts.get("blas")
    if not isinstance(blas, list):
        return "see numpy.show_config() in the JSON output"
    seen = []
    for b in blas:
        path = str(b.get("filepath"))
        owner = next((o for o in ("numpy", "scipy", "sklearn", "torch") if o in path),
                     os.path.basename(path))
        if b.get("internal_api") == "openmp":
            seen.append(f"OpenMP ({os.path.basename(path).split('-')[0]}, {owner}), "
                        f"{b.get('num_threads')} threads")
        else:
            seen.append(f"{owner}: {b.get('internal_api')} {b.get('version')} "
                        f"({b.get('architecture')}, {b.get('num_threads')} threads)")
    return "; ".join(seen)


# --------------------------------------------------------------------------- 1a. per iteration


def bignmf_per_iter(V: Any, W0: np.ndarray, H0: np.ndarray, k: int, iters: int,
                    **params: Any) -> dict[str, Any]:
    """Steady-state seconds per iteration from bignmf's own per-iteration timer.

    Iteration 1 also validates V (and, with ``init='custom'``, forms the initial loss), so
    it is reported apart and left out of the median.
    """
    from bignmf import NMF

    seconds: list[float] = []
    est = NMF(n_components=k, init="custom", tol=0.0, max_iter=iters + 1, **params)
    with quiet():
        wall, W = timed(lambda: est.fit_transform(
            V, W=W0.copy(), H=H0.copy(), callback=lambda info: seconds.append(info.seconds)))
    out = summary(seconds[1:])
    out.update(first=seconds[0], wall=wall, est=est, W=W)
    return out


#: scikit-learn's per-iteration update functions (private API): two calls per iteration.
SKLEARN_STEPS = {"cd": ("_update_coordinate_descent",),
                 "mu": ("_multiplicative_update_w", "_multiplicative_update_h")}


def sklearn_per_iter(V: np.ndarray, W0: np.ndarray, H0: np.ndarray, k: int, solver: str,
                     iters: int) -> dict[str, Any]:
    """Seconds per iteration of scikit-learn's NMF, ``tol=0``, ``init='custom'`` (W0, H0).

    scikit-learn has no per-iteration callback, so its module-level update functions (the W
    and the H update, called once each per iteration) are wrapped with a timer for the
    duration of one fit; an iteration is the sum of its two calls. The first iteration is
    left out, as for bignmf. Falls back to :func:`sklearn_per_iter_diff` if the private
    functions are not found (another scikit-learn version).
    """
    import sklearn.decomposition._nmf as nmf_mod
    from sklearn.decomposition import NMF as SkNMF

    names = SKLEARN_STEPS[solver]
    if not all(hasattr(nmf_mod, name) for name in names):
        return sklearn_per_iter_diff(V, W0, H0, k, solver, 2, iters, reps=2)
    calls: list[float] = []
    originals = {name: getattr(nmf_mod, name) for name in names}

    def timer(fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_fn(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            calls.append(time.perf_counter() - t0)
            return out
        return timed_fn

    est = SkNMF(n_components=k, init="custom", solver=solver, tol=0.0, max_iter=iters + 1)
    try:
        for name, fn in originals.items():
            setattr(nmf_mod, name, timer(fn))
        with quiet():
            wall, _ = timed(lambda: est.fit_transform(V, W=W0.copy(), H=H0.copy()))
    finally:
        for name, fn in originals.items():
            setattr(nmf_mod, name, fn)
    assert len(calls) == 2 * est.n_iter_, (len(calls), est.n_iter_)
    per_iter = [calls[i] + calls[i + 1] for i in range(0, len(calls), 2)]
    out = summary(per_iter[1:])
    out.update(first=per_iter[0], wall=wall, method="instrumented")
    return out


def sklearn_per_iter_diff(V: np.ndarray, W0: np.ndarray, H0: np.ndarray, k: int, solver: str,
                          base: int, extra: int, reps: int) -> dict[str, Any]:
    """``(t(max_iter=base+extra) - t(max_iter=base)) / extra``, ``tol=0``, same W0, H0.

    The difference cancels the per-fit costs (input validation, the error at the start and
    the end); each fit is repeated ``reps`` times, interleaved, and the fastest is used.
    On a loaded machine this is fragile (one slow short fit makes it small, even negative).
    """
    from sklearn.decomposition import NMF as SkNMF

    def run(max_iter: int) -> float:
        est = SkNMF(n_components=k, init="custom", solver=solver, tol=0.0, max_iter=max_iter)
        W, H = W0.copy(), H0.copy()
        with quiet():
            t, _ = timed(lambda: est.fit_transform(V, W=W, H=H))
        assert est.n_iter_ == max_iter, (est.n_iter_, max_iter)
        return t

    short, long = [], []
    for _ in range(reps):
        short.append(run(base))
        long.append(run(base + extra))
    per_iter = (min(long) - min(short)) / extra
    return {"all": [per_iter], "median": per_iter, "min": per_iter, "n": 1,
            "first": None, "method": "difference", "short": summary(short),
            "long": summary(long)}


GEMM_LAYOUTS = {
    # name: (product, function of (V, W, H, F=W.T contiguous, Ht=H.T contiguous))
    "V @ H.T": ("VHt", lambda V, W, H, F, Ht: V @ H.T),
    "V @ Ht": ("VHt", lambda V, W, H, F, Ht: V @ Ht),          # scikit-learn's X @ Ht
    "H @ V.T": ("VHt", lambda V, W, H, F, Ht: H @ V.T),        # bignmf's passes._right
    "W.T @ V": ("WtV", lambda V, W, H, F, Ht: W.T @ V),
    "F @ V": ("WtV", lambda V, W, H, F, Ht: F @ V),            # bignmf's passes._left
    "V.T @ W": ("WtV", lambda V, W, H, F, Ht: V.T @ W),        # scikit-learn's X.T @ W
}


def gemm_time(V: np.ndarray, W: np.ndarray, H: np.ndarray, reps: int) -> dict[str, Any]:
    """The two products of an iteration in float32 — ``V H^T`` (m x k) and ``W^T V``
    (k x n) — each in the memory layouts NumPy can hand to BLAS (transposed or not, as
    bignmf and scikit-learn write them); they run at different speeds.

    Returns per-layout timings, ``'requested'`` (``V @ H.T`` + ``W.T @ V``), ``'bignmf'``
    (``H @ V.T`` + ``F @ V``, as bignmf's kernels) and ``'fastest'``: the quickest layout
    of each product, summed — the compute limit used for the ratios.
    """
    F, Ht = np.ascontiguousarray(W.T), np.ascontiguousarray(H.T)
    times: dict[str, list[float]] = {name: [] for name in GEMM_LAYOUTS}
    for _ in range(reps):
        for name, (_, fn) in GEMM_LAYOUTS.items():
            t0 = time.perf_counter()
            fn(V, W, H, F, Ht)
            times[name].append(time.perf_counter() - t0)
    return {"layouts": times}


def gemm_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine :func:`gemm_time` rounds: per layout, then the three sums of two products."""
    layouts = {name: summary([t for r in runs for t in r["layouts"][name]])
               for name in GEMM_LAYOUTS}
    out: dict[str, Any] = {"layouts": layouts}
    for stat in ("median", "min"):
        best: dict[str, str] = {}
        for name, (product, _) in GEMM_LAYOUTS.items():
            if product not in best or layouts[name][stat] < layouts[best[product]][stat]:
                best[product] = name
        out.setdefault("fastest", {})[stat] = sum(layouts[n][stat] for n in best.values())
        out["fastest"].setdefault("layouts", {})[stat] = list(best.values())
        out.setdefault("requested", {})[stat] = (layouts["V @ H.T"][stat]
                                                 + layouts["W.T @ V"][stat])
        out.setdefault("bignmf", {})[stat] = layouts["H @ V.T"][stat] + layouts["F @ V"][stat]
    return out


# --------------------------------------------------------------------------- 1b. time to error


def sklearn_to_target(V: Any, k: int, solver: str, max_iter: int, seed: int,
                      err_fn: Callable[[Any, Any, np.ndarray], float] | None = None
                      ) -> dict[str, Any]:
    """scikit-learn's NMF (``init='nndsvda'``, ``tol=0``): wall time, initialization
    included, and its error recomputed in float64 by ``err_fn`` (default
    :func:`exact_err`, dense V)."""
    from sklearn.decomposition import NMF as SkNMF

    est = SkNMF(n_components=k, init="nndsvda", solver=solver, tol=0.0, max_iter=max_iter,
                random_state=seed)
    with quiet():
        t, W = timed(lambda: est.fit_transform(V))
    err = (err_fn or exact_err)(V, W, est.components_)
    return {"seconds": t, "n_iter": int(est.n_iter_),
            "err_reported": float(est.reconstruction_err_), "err": err}


def bignmf_to_target(V: Any, k: int, target: float, time_cap: float, max_iter: int,
                     seed: int, **params: Any) -> dict[str, Any]:
    """Wall time from the call (initialization included) until bignmf's error <= target."""
    from bignmf import NMF

    trace: list[tuple[int, float, float, float]] = []
    t0 = time.perf_counter()

    def cb(info: Any) -> None:
        now = time.perf_counter() - t0
        trace.append((info.iteration, now, info.reconstruction_err, info.seconds))
        if info.reconstruction_err <= target or now > time_cap:
            raise _Stop

    est = NMF(n_components=k, tol=0.0, max_iter=max_iter, random_state=seed, **params)
    with quiet(), contextlib.suppress(_Stop):
        est.fit_transform(V, callback=cb)
    it, elapsed, err, _ = trace[-1]
    reached = err <= target
    init_seconds = trace[0][1] - trace[0][3]
    return {"reached": reached, "seconds": elapsed, "n_iter": it, "err": err,
            "init_seconds": init_seconds, "target": target,
            "trace": [(i, round(t, 4), e) for i, t, e, _ in trace]}


# --------------------------------------------------------------------------- 2. out of core


def write_zarr(V: np.ndarray, path: str, chunk_rows: int) -> float:
    import zarr

    def write() -> None:
        z = zarr.create_array(store=path, shape=V.shape, chunks=(chunk_rows, V.shape[1]),
                              dtype=V.dtype, overwrite=True)
        z[:] = V

    t, _ = timed(write)
    return t


def _touch(block: np.ndarray) -> int:
    """Minimal work on a block: it has been read and decoded."""
    return int(block.shape[0])


def block_bytes_for(client: Any) -> int | None:
    """The block size bignmf's estimator uses for this scheduler (see NMF._prepare)."""
    from bignmf import cluster
    from bignmf import io as bio

    limit = cluster.worker_memory_limit(client)
    return min(bio.DEFAULT_BLOCK_BYTES, limit // 8) if limit else None


_clock = {"next": 0.0}
_clock_lock = threading.Lock()


class ThrottledStore(LocalStore):
    """A read-only local Zarr store that serves chunk bytes at most at ``bandwidth`` bytes/s
    per process — storage slower than decoding (a network file system, object storage):
    the I/O-bound case. One clock per process, so concurrent chunk reads share the
    bandwidth. Defined in this module so that worker processes can unpickle it."""

    def __init__(self, root: Any, *, bandwidth: float, read_only: bool = True) -> None:
        super().__init__(root, read_only=read_only)
        self.bandwidth = float(bandwidth)

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        buf = await super().get(key, prototype, byte_range)
        if buf is not None and not key.endswith("zarr.json"):
            with _clock_lock:
                now = time.monotonic()
                start = max(now, _clock["next"])
                _clock["next"] = start + len(buf) / self.bandwidth
                wait = _clock["next"] - now
            await asyncio.sleep(wait)
        return buf


def read_pass(path: Any, block_rows: int | None, block_bytes: int | None,
              reps: int, warmup: bool = True) -> dict[str, Any]:
    """One read+decode pass of V in bignmf's row blocks, with the current dask scheduler."""
    import dask

    from bignmf import cluster
    from bignmf import io as bio

    client, _ = cluster.resolve()  # the fit's blocks: a multiple of the workers
    parts = cluster.n_workers(client)
    Vd = bio.open_matrix(path, block_rows=block_rows, block_bytes=block_bytes, parts=parts)
    times = []
    for rep in range(reps + warmup):  # a first, untimed pass warms up (worker imports)
        tasks = [dask.delayed(_touch, pure=False)(b)
                 for b in Vd.to_delayed(optimize_graph=False).ravel()]
        t0 = time.perf_counter()
        rows = dask.compute(*tasks)
        t = time.perf_counter() - t0
        assert sum(rows) == Vd.shape[0]
        if rep or not warmup:
            times.append(t)
    out = summary(times)
    out["blocks"] = [int(c) for c in Vd.chunks[0]]
    return out


def drop_caches() -> bool:
    """Drop the OS page cache (root only); True if it worked."""
    try:
        r = subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"],
                           capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def ooc_scheduler(label: str, path: str, W0: np.ndarray, H0: np.ndarray, k: int, iters: int,
                  reps: int, block_rows: int | None, client: Any, try_cold: bool) -> dict[str, Any]:
    log(f"  [{label}] read pass x{reps} ...")
    bb = block_bytes_for(client)
    rp = read_pass(path, block_rows, bb, reps)
    log(f"  [{label}] read pass: median {rp['median']:.3f}s min {rp['min']:.3f}s, "
        f"blocks {rp['blocks']}")
    out: dict[str, Any] = {"read_pass": rp}
    if try_cold:
        cold = []
        for _ in range(2):
            if not drop_caches():
                break
            cold.append(read_pass(path, block_rows, bb, 1, warmup=False)["min"])
        out["read_pass_cold"] = summary(cold) if cold else None
        if cold:
            log(f"  [{label}] read pass after dropping the page cache: "
                f"{', '.join(f'{c:.3f}s' for c in cold)}")
    log(f"  [{label}] bignmf, {iters} iterations (default settings, init='custom') ...")
    it = bignmf_per_iter(path, W0, H0, k, iters, block_rows=block_rows)
    log(f"  [{label}] bignmf iteration: median {it['median']:.3f}s min {it['min']:.3f}s "
        f"(first {it['first']:.3f}s)")
    it.pop("est"), it.pop("W")
    out["iteration"] = it
    out["ratio_iter_over_read"] = it["median"] / rp["median"]
    return out


# --------------------------------------------------------------------------- profiling


def profile_bignmf(V: np.ndarray, W0: np.ndarray, H0: np.ndarray, k: int, iters: int,
                   top: int = 18) -> str:
    """cProfile of bignmf's in-memory iterations (default settings), by own time."""
    from bignmf import NMF

    est = NMF(n_components=k, init="custom", tol=0.0, max_iter=iters)
    prof = cProfile.Profile()
    with quiet():
        prof.enable()
        est.fit_transform(V, W=W0.copy(), H=H0.copy())
        prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


# --------------------------------------------------------------------------- report


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(res: dict[str, Any]) -> str:
    """Markdown table: seconds as 'median / min', ratios from both."""
    rows = ["| section | measurement | seconds (median / min) | ratio (median / min) |",
            "|---|---|---:|---:|"]

    def both(r: dict[str, Any]) -> str:
        return f"{fmt(r['median'], 4)} / {fmt(r['min'], 4)}"

    def ratio(r: dict[str, Any], ref: dict[str, Any], unit: str) -> str:
        return f"{r['median'] / ref['median']:.2f} / {r['min'] / ref['min']:.2f} x {unit}"

    pi = res.get("per_iteration")
    if pi:
        g = pi["gemm_fastest"]
        lay = g["layouts"]["min"]
        rows.append("| per iteration, in memory | NumPy GEMMs `V H^T` + `W^T V`, fastest layout "
                    f"(`{lay[0]}`, `{lay[1]}`): the compute limit | {both(g)} | 1 x GEMM |")
        rows.append("| per iteration, in memory | same GEMMs as requested: `V @ H.T` + `W.T @ V` "
                    f"| {both(pi['gemm_requested'])} | {ratio(pi['gemm_requested'], g, 'GEMM')} |")
        gb = pi["gemm_bignmf"]
        rows.append("| per iteration, in memory | same GEMMs as bignmf lays them out: `H @ V.T` + "
                    f"`F @ V` | {both(gb)} | {ratio(gb, g, 'GEMM')} |")
        for key, label in (("bignmf_default", "bignmf cd, default (`inner_sweeps='auto'`)"),
                           ("bignmf_sweeps1", "bignmf cd, `inner_sweeps=1`"),
                           ("sklearn_cd", "scikit-learn cd"),
                           ("bignmf_mu", "bignmf mu, default (`inner_sweeps='auto'`)"),
                           ("sklearn_mu", "scikit-learn mu")):
            if key in pi:
                rows.append(f"| per iteration, in memory | {label} | {both(pi[key])} | "
                            f"{ratio(pi[key], g, 'GEMM')} |")
    tt = res.get("time_to_error")
    if tt:
        for ref in ("cd", "mu"):
            sk = tt.get(f"sklearn_{ref}")
            if not sk:
                continue
            rows.append(f"| time to equal error | scikit-learn {ref}: {sk['n_iter']} iterations "
                        f"(nndsvda, tol=0) reach err {sk['err']:.6g} | {fmt(sk['seconds'], 2)} "
                        "| 1 |")
            for key, blabel in (("bignmf_default", "bignmf default (cd)"),
                                ("bignmf_mu", "bignmf mu, default")):
                bt = tt.get(f"{key}_vs_{ref}")
                if not bt:
                    continue
                if bt["reached"]:
                    rows.append(
                        f"| time to equal error | {blabel} to that error: {bt['n_iter']} "
                        f"iterations, init ({bt['init_seconds']:.2f}s) included | "
                        f"{fmt(bt['seconds'], 2)} | **{sk['seconds'] / bt['seconds']:.1f}x "
                        f"faster** |")
                else:
                    rows.append(
                        f"| time to equal error | {blabel}: NOT reached (err {bt['err']:.6g} "
                        f"after {bt['n_iter']} iterations) | > {fmt(bt['seconds'], 2)} | "
                        f"< {sk['seconds'] / bt['seconds']:.2f}x |")
    oc = res.get("out_of_core")
    if oc:
        rows.append(f"| out of core | write V to Zarr ({oc['zarr_mib']:.0f} MiB on disk, chunks "
                    f"of {oc['chunk_rows']} rows) | {fmt(oc['write_seconds'], 2)} | |")
        for key, label in (("threads", "threads"), ("distributed", "distributed")):
            s_ = oc.get(key)
            if not s_:
                continue
            rp, it = s_["read_pass"], s_["iteration"]
            sched = ("dask threaded scheduler" if key == "threads" else
                     f"embedded cluster, {oc.get('distributed_workers')} workers x 1 thread")
            rows.append(f"| out of core, {label} | one read+decode pass of V ({sched}; "
                        f"{len(rp['blocks'])} blocks; page-cached) | {both(rp)} | "
                        "1 x read |")
            if s_.get("read_pass_cold"):
                c = s_["read_pass_cold"]
                rows.append(f"| out of core, {label} | same read pass after dropping the page "
                            f"cache | {both(c)} | {ratio(c, rp, 'read')} |")
            rows.append(f"| out of core, {label} | bignmf iteration, default settings | "
                        f"{both(it)} | {ratio(it, rp, 'read')} |")
            if pi:
                rows.append(f"| out of core, {label} | same iteration vs the in-memory GEMMs | "
                            f"{both(it)} | {ratio(it, pi['gemm_fastest'], 'GEMM')} |")
        if oc.get("client_start_seconds") is not None:
            rows.append("| out of core | start of the embedded cluster, workers ready (once per "
                        f"process) | {fmt(oc['client_start_seconds'], 2)} | |")
    return "\n".join(rows)


def load(values: Any) -> str:
    return "n/a" if not values else "(" + ", ".join(f"{x:.1f}" for x in values) + ")"


def facts_block(res: dict[str, Any]) -> str:
    f = res["machine"]
    a = res["args"]
    v = ", ".join(f"{k} {val}" for k, val in f["versions"].items())
    lines = [
        f"- data: dense float32 V {a['m']} x {a['n']}, k={a['k']}, rank-{a['k']} product of "
        f"uniform factors + {a['noise']:g} x mean uniform noise, seed {a['seed']}",
        f"- machine: {f.get('cpu_model')}, {f['cpu_count']} cores "
        f"({f.get('affinity_cores')} usable), {f.get('memory_gib')} GiB RAM, "
        f"load average (1, 5, 15 min) at start {load(f.get('load_average'))}, "
        f"at end {load(f.get('load_average_end'))}",
        f"- BLAS: {blas_line(f)}",
        f"- {v}; Python {f['python']}; {f['platform']}",
        f"- total benchmark time: {res['total_seconds']:.0f} s",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="4000 x 1000, k=16, fewer repeats (< 1 minute)")
    p.add_argument("--m", type=int, help="rows of V (default 20000; 4000 with --quick)")
    p.add_argument("--n", type=int, help="columns of V (default 5000; 1000 with --quick)")
    p.add_argument("--k", type=int, help="components (default 32; 16 with --quick)")
    p.add_argument("--noise", type=float, default=0.1, help="noise level, x mean(W H)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters", type=int, help="timed iterations per fit and round (default 6; "
                   "5 with --quick)")
    p.add_argument("--rounds", type=int, help="interleaved rounds of the per-iteration "
                   "timings (default 3; 2 with --quick); minimum and median are over all of them")
    p.add_argument("--ref-iter", type=int, default=200,
                   help="scikit-learn iterations that set the target error (its max_iter)")
    p.add_argument("--chunk-rows", type=int, help="rows per stored Zarr chunk")
    p.add_argument("--block-rows", type=int, default=None,
                   help="bignmf's block_rows out of core (default: bignmf's own choice)")
    p.add_argument("--tmpdir", default=None, help="where the Zarr store is written")
    p.add_argument("--skip", action="append", default=[],
                   choices=["per-iteration", "time-to-error", "out-of-core", "distributed",
                            "drop-caches"], help="leave a part out (repeatable)")
    p.add_argument("--profile", action="store_true",
                   help="also cProfile bignmf's in-memory iterations and print the top")
    p.add_argument("--blas-threads", type=int, default=None,
                   help="limit BLAS/OpenMP threads in this process (threadpoolctl); default: "
                   "the libraries' own (all cores)")
    p.add_argument("--json", metavar="PATH", help="save all results as JSON")
    args = p.parse_args(argv)
    if args.blas_threads:
        # Load every BLAS/OpenMP runtime first (SciPy's, scikit-learn's OpenMP), so that
        # the limit reaches all of them and not only NumPy's.
        from threadpoolctl import threadpool_limits

        for module in ("scipy.linalg", "sklearn.decomposition"):
            importlib.import_module(module)

        with threadpool_limits(limits=args.blas_threads):
            return run(args)
    return run(args)


def run(args: argparse.Namespace) -> dict[str, Any]:

    m = args.m or (4000 if args.quick else 20000)
    n = args.n or (1000 if args.quick else 5000)
    k = args.k or (16 if args.quick else 32)
    iters = args.iters or (5 if args.quick else 6)
    reps = 2 if args.quick else 3
    rounds = args.rounds or (2 if args.quick else 3)
    chunk_rows = min(m, args.chunk_rows or (500 if args.quick else 1000))
    t_start = time.perf_counter()

    facts = machine_facts()
    res: dict[str, Any] = {
        "args": {"m": m, "n": n, "k": k, "noise": args.noise, "seed": args.seed,
                 "iters": iters, "ref_iter": args.ref_iter, "quick": args.quick,
                 "chunk_rows": chunk_rows, "block_rows": args.block_rows,
                 "blas_threads": args.blas_threads,
                 "command": " ".join([os.path.basename(sys.executable), *sys.argv])},
        "machine": facts,
    }
    log(f"bignmf benchmark: V {m} x {n} float32 ({m * n * 4 / 2**20:.0f} MiB), k={k}, "
        f"{facts['cpu_count']} cores, BLAS {blas_line(facts)}")

    t, V = timed(lambda: make_data(m, n, k, args.noise, args.seed))
    W0, H0 = random_init(V, k, args.seed)
    log(f"data generated in {t:.1f}s")

    # ---------------------------------------------------------------- 1a
    if "per-iteration" not in args.skip:
        log(f"\n== 1a. seconds per iteration, in memory ({rounds} interleaved rounds) ==")
        pi: dict[str, Any] = {}
        bignmf_variants: tuple[tuple[str, dict[str, Any]], ...] = (
            ("bignmf_default", {}), ("bignmf_sweeps1", {"inner_sweeps": 1}),
            ("bignmf_mu", {"solver": "mu"}))
        raw: dict[str, list[Any]] = {}
        for rnd in range(rounds):
            raw.setdefault("gemm", []).append(gemm_time(V, W0, H0, reps=6 if args.quick else 3))
            for key, params in bignmf_variants:
                r = bignmf_per_iter(V, W0, H0, k, iters, **params)
                est, W = r.pop("est"), r.pop("W")
                if key == "bignmf_sweeps1" and rnd == 0:
                    # bignmf's error comes from products, not a reconstruction: check it.
                    exact = exact_err(V, W, est.components_)
                    pi["err_check"] = {"reported": est.reconstruction_err_, "exact": exact,
                                       "rel_diff": abs(est.reconstruction_err_ - exact) / exact}
                del est, W
                raw.setdefault(key, []).append(r)
            for solver in ("cd", "mu"):
                raw.setdefault(f"sklearn_{solver}", []).append(
                    sklearn_per_iter(V, W0, H0, k, solver, iters))
            log(f"  round {rnd + 1}: " + ", ".join(
                f"{key} {v[-1]['median']:.4f}s"
                for key, v in raw.items() if key != "gemm"))
        for key, runs in raw.items():
            if key == "gemm":
                pi[key] = gemm_summary(runs)
                for name, r in pi[key]["layouts"].items():
                    log(f"  GEMM {name:8s}: median {r['median']:.4f}s, min {r['min']:.4f}s")
                pi["gemm_fastest"] = pi[key]["fastest"]
                pi["gemm_requested"] = pi[key]["requested"]
                pi["gemm_bignmf"] = pi[key]["bignmf"]
            else:
                times = [t for r in runs for t in r["all"]]
                pi[key] = summary(times)
                pi[key]["first"] = [r["first"] for r in runs]
                if "method" in runs[0]:
                    pi[key]["method"] = runs[0]["method"]
        for key, r in pi.items():
            if key not in ("err_check", "gemm"):
                log(f"  {key}: median {r['median']:.4f}s, min {r['min']:.4f}s per iteration")
        log(f"  bignmf's reported error vs float64 recomputation: relative difference "
            f"{pi['err_check']['rel_diff']:.1e}")
        res["per_iteration"] = pi

    # ---------------------------------------------------------------- 1b
    if "time-to-error" not in args.skip:
        log(f"\n== 1b. time to equal error (scikit-learn: {args.ref_iter} iterations, tol=0, "
            "init='nndsvda', init time included) ==")
        tt: dict[str, Any] = {}
        for ref in ("cd", "mu"):
            sk = sklearn_to_target(V, k, ref, args.ref_iter, args.seed)
            tt[f"sklearn_{ref}"] = sk
            log(f"  sklearn {ref}: {sk['seconds']:.2f}s, {sk['n_iter']} iterations, error "
                f"{sk['err']:.7g} (float64 recomputation; sklearn reports "
                f"{sk['err_reported']:.7g})")
            cap = 1.5 * sk["seconds"] + 5.0
            candidates: list[tuple[str, dict[str, Any]]] = [("bignmf_default", {})]
            if ref == "mu":
                candidates.append(("bignmf_mu", {"solver": "mu"}))
            for key, params in candidates:
                b = bignmf_to_target(V, k, sk["err"], cap, 20 * args.ref_iter, args.seed,
                                     **params)
                tt[f"{key}_vs_{ref}"] = b
                if b["reached"]:
                    log(f"  {key}: reached {b['err']:.7g} <= {sk['err']:.7g} after "
                        f"{b['n_iter']} iterations, {b['seconds']:.2f}s (init "
                        f"{b['init_seconds']:.2f}s) -> {sk['seconds'] / b['seconds']:.1f}x "
                        "faster")
                else:
                    log(f"  {key}: NOT reached within {b['seconds']:.1f}s ({b['n_iter']} "
                        f"iterations, error {b['err']:.7g})")
        measured = res.get("per_iteration")
        if measured:
            # Robust to a noisy machine: iteration counts (load-independent) times the
            # minimum per-iteration times measured above; initialization left out.
            for key, per in (("bignmf_default", "bignmf_default"), ("bignmf_mu", "bignmf_mu")):
                for ref in ("cd", "mu"):
                    bt, sk_ref = tt.get(f"{key}_vs_{ref}"), tt.get(f"sklearn_{ref}")
                    if bt and bt["reached"] and sk_ref:
                        bt["modelled_speedup"] = (
                            sk_ref["n_iter"] * measured[f"sklearn_{ref}"]["min"]) / (
                            bt["n_iter"] * measured[per]["min"])
                        log(f"  {key} vs sklearn {ref}: {sk_ref['n_iter']} vs {bt['n_iter']} "
                            f"iterations; x min per-iteration times (init left out): "
                            f"{bt['modelled_speedup']:.1f}x")
        res["time_to_error"] = tt

    if args.profile:
        log("\n== profile: bignmf in memory, default settings ==")
        res["profile"] = profile_bignmf(V, W0, H0, k, iters)
        log(res["profile"])

    # ---------------------------------------------------------------- 2
    if "out-of-core" not in args.skip:
        log("\n== 2. out of core (Zarr on local disk) ==")
        import dask

        from bignmf import cluster

        tmp = tempfile.mkdtemp(prefix="bignmf-bench-", dir=args.tmpdir)
        try:
            path = os.path.join(tmp, "V.zarr")
            wt = write_zarr(V, path, chunk_rows)
            size = sum(os.path.getsize(os.path.join(d, f))
                       for d, _, fs in os.walk(path) for f in fs)
            oc: dict[str, Any] = {"write_seconds": wt, "zarr_mib": size / 2**20,
                                  "chunk_rows": chunk_rows, "path_fs": tmp}
            log(f"  wrote {size / 2**20:.0f} MiB in {wt:.2f}s to {path} "
                f"(chunks of {chunk_rows} rows)")
            try_cold = "drop-caches" not in args.skip
            if try_cold:
                oc["drop_caches_works"] = drop_caches()
                try_cold = oc["drop_caches_works"]
                log("  dropping the page cache: "
                    + ("works (cold reads are timed too)" if try_cold else
                       "not permitted here (all reads below are served from the page cache)"))
            with dask.config.set(scheduler="threads"):
                oc["threads"] = ooc_scheduler("threads", path, W0, H0, k, iters, reps,
                                              args.block_rows, None, try_cold)
            if "distributed" not in args.skip:
                def start() -> Any:
                    client = cluster.embedded_client()
                    # embedded_client() returns before its workers have connected; wait, so
                    # that start-up is not timed as part of the first read pass.
                    client.wait_for_workers(os.cpu_count() or 1, timeout=120)
                    return client

                t, client = timed(start)
                oc["client_start_seconds"] = t
                nw = len(client.scheduler_info()["workers"])
                oc["distributed_workers"] = nw
                log(f"  embedded cluster started in {t:.1f}s ({nw} workers x 1 thread)")
                try:
                    oc["distributed"] = ooc_scheduler("distributed", path, W0, H0, k, iters,
                                                      reps, args.block_rows, client, try_cold)
                finally:
                    cluster.close_embedded()
            res["out_of_core"] = oc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    res["total_seconds"] = time.perf_counter() - t_start
    with contextlib.suppress(OSError):
        res["machine"]["load_average_end"] = os.getloadavg()
    res["table"] = table(res)
    log("\n== results ==\n")
    log(f"command: `{res['args']['command']}`\n")
    log(res["table"])
    log("")
    log(facts_block(res))
    log("\nRatios are of timings taken in this run. Per-iteration times (tol=0, the same "
        "custom W0, H0 for all): bignmf from its own per-iteration timer, scikit-learn from "
        "timers around its W and H update functions; first iteration excluded; median and "
        "minimum over all iterations of interleaved rounds. Out-of-core reads are served from "
        "the OS page cache except in the 'after dropping the page cache' rows.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist")
                      else str(o))
        log(f"\nresults saved to {args.json}")
    return res


if __name__ == "__main__":
    main()
