#!/usr/bin/env python
"""Compressed NMF (``solver='compressed'``) against the exact HALS fit, measured in one run.

    python benchmarks/bench_compressed.py            # 100000 x 1000, k=10 (about 3 minutes)
    python benchmarks/bench_compressed.py --quick    # 20000 x 500, k=10 (about 20 s)
    python benchmarks/bench_compressed.py --m 100000 --n 2000 --k 20 --json out.json

Data: dense float32 ``V = W H + noise`` (uniform factors of rank ``k``, uniform noise of
``--noise`` times the mean of ``W H``), seed 0. Both fits use the estimator's defaults
(``init='nndsvda'``, ``tol=1e-4``, ``max_iter=200``, ``random_state=0``), once in memory
(NumPy) and once out of core (a Zarr store on disk, dask's threaded scheduler,
``resident=False`` so that every pass reads the store). Printed side by side:

* passes over V — counted, out of core, from the chunk reads of the store (a counting
  ``LocalStore``) divided by the number of chunks; in memory from the fits' own counts;
* the final objective of each (the compressed fit's comes from its last exact pass);
* wall time of the compressed fit, and of the exact fit until its objective is first at or
  below the compressed fit's final one (from a callback timing every iteration, the
  initialization included). The exact fit runs with ``tol=0`` for this, and its callback
  stops it there: with the default ``tol=1e-4`` it usually stops first, at a higher
  objective (a user wanting the compressed fit's objective from the exact solver has to
  lower ``tol``). Where the default ``tol`` would have stopped it is worked out from the same
  trace (its iterates are the same) and printed beside. If the exact fit does not get
  there within ``--exact-max-iter`` iterations, the time of the whole exact fit is used and
  the row says so (the speed-up is then a lower bound).

Only ratios taken in this run mean anything (shared machines are noisy). Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_core import log, quiet


def make_data(m: int, n: int, k: int, noise: float, seed: int = 0) -> np.ndarray:
    """``W H + noise * mean(W H) * U(0, 1)`` in float32, made in row slices."""
    rng = np.random.default_rng(seed)
    H = rng.random((k, n), dtype=np.float32)
    V = np.empty((m, n), dtype=np.float32)
    scale = np.float32(noise * k / 4)  # the mean of W H is k / 4
    for a in range(0, m, 10000):
        b = min(a + 10000, m)
        V[a:b] = rng.random((b - a, k), dtype=np.float32) @ H
        V[a:b] += scale * rng.random((b - a, n), dtype=np.float32)
    return V


def counting_store(path: str) -> tuple[Any, dict[str, int]]:
    """A Zarr ``LocalStore`` at ``path`` that counts chunk reads (threads: one process)."""
    from zarr.storage import LocalStore

    counts = {"reads": 0}
    lock = threading.Lock()

    class Counting(LocalStore):
        def _count(self, key: str) -> None:
            name = key.rsplit("/", 1)[-1]
            if name != "zarr.json" and not name.startswith("."):
                with lock:
                    counts["reads"] += 1

        async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
            self._count(key)
            return await super().get(key, prototype, byte_range)

        def with_read_only(self, read_only: bool = False) -> Counting:
            return Counting(self.root, read_only=read_only)

    return Counting(path, read_only=True), counts


class _Reached(Exception):
    """Raised by the callback of a fit told to stop at an objective."""


def run_fit(X: Any, k: int, solver: str, stop_at: float | None = None,
            **params: Any) -> dict[str, Any]:
    """Fit with the defaults; record ``(elapsed, objective)`` after every iteration.

    ``stop_at``: the callback ends the fit (by raising) as soon as the objective is at or
    below it; ``seconds`` is then the time to that iteration's callback.
    """
    from bignmf import NMF

    trace: list[tuple[float, float]] = []
    t0 = time.perf_counter()

    def cb(info: Any) -> None:
        trace.append((time.perf_counter() - t0, info.objective))
        if stop_at is not None and info.objective <= stop_at:
            raise _Reached

    est = NMF(k, solver=solver, random_state=0, **params)
    try:
        with quiet():
            W = est.fit_transform(X, callback=cb)
            if hasattr(W, "compute"):
                W = W.compute()
    except _Reached:
        return {"seconds": trace[-1][0], "n_iter": len(trace), "objective": trace[-1][1],
                "trace": trace, "stopped": True}
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "n_iter": int(est.n_iter_),
            "objective": float(est.loss_history_[-1]), "trace": trace, "stopped": False}


def default_stop(trace: list[tuple[float, float]], tol: float) -> int | None:
    """The iteration (1-based) at which a fit with ``tol`` stops on this trace (that of a
    ``tol=0`` fit: the iterates are the same up to there), or None if it does not."""
    from bignmf.fit import stopping

    history = [objective for _, objective in trace]
    for i in range(2, len(history) + 1):
        if stopping(history[:i], tol)[1]:
            return i
    return None


def compare(label: str, make_input: Any, k: int, count: Any, exact_max_iter: int,
            **params: Any) -> dict[str, Any]:
    from bignmf.compressed import POWER_ITERATIONS

    # Untimed warm-up: the first fit of a process pays one-time costs (imports, thread pools,
    # Zarr's event loop) that must not count against whichever solver runs first.
    run_fit(make_input(), k, "cd", max_iter=1, init="random")
    log(f"[{label}] compressed fit ...")
    before = count()
    comp = run_fit(make_input(), k, "compressed", **params)
    comp["passes"] = count() - before
    log(f"[{label}] compressed: {comp['seconds']:.2f}s, {comp['n_iter']} iterations, "
        f"objective {comp['objective']:.8g}, {comp['passes']} passes over V")
    log(f"[{label}] exact HALS fit (tol=0), until the compressed fit's objective ...")
    before = count()
    exact = run_fit(make_input(), k, "cd", stop_at=comp["objective"], tol=0,
                    max_iter=exact_max_iter, **params)
    exact["passes"] = count() - before
    log(f"[{label}] exact: {exact['seconds']:.2f}s, {exact['n_iter']} iterations, "
        f"objective {exact['objective']:.8g}, {exact['passes']} passes over V")
    # (its callback stopped it at the first iteration at or below the target: that time)
    reached = exact["seconds"] if exact["stopped"] else None
    # Where the default tol (1e-4) would have stopped the same exact fit.
    stop = default_stop(exact["trace"], 1e-4)
    default = ({"n_iter": stop, "seconds": exact["trace"][stop - 1][0],
                "objective": exact["trace"][stop - 1][1]} if stop is not None else None)
    out = {"compressed": comp, "exact": exact, "exact_reached": reached is not None,
           "exact_seconds_to_target": reached if reached is not None else exact["seconds"],
           "exact_default_tol": default, "power_iterations": POWER_ITERATIONS}
    out["objective_ratio"] = comp["objective"] / (default or exact)["objective"]
    out["speedup"] = out["exact_seconds_to_target"] / comp["seconds"]
    out["passes_ratio"] = exact["passes"] / max(comp["passes"], 1)
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    rows = ["| | passes over V to compressed's objective (exact / compressed) "
            "| objective: compressed / exact's where tol=1e-4 stops it "
            "| exact s to compressed's objective | compressed s | speed-up |",
            "|---|---|---|---|---|---|"]
    for label, r in results.items():
        mark = "" if r["exact_reached"] else " (never reached: whole fit)"
        d = r["exact_default_tol"]
        where = f" (iteration {d['n_iter']}, {d['seconds']:.2f} s)" if d else ""
        rows.append(
            f"| {label} | {r['exact']['passes']} / {r['compressed']['passes']} = "
            f"{r['passes_ratio']:.1f}x | {r['objective_ratio']:.5f}{where} | "
            f"{r['exact_seconds_to_target']:.2f}{mark} | {r['compressed']['seconds']:.2f} | "
            f"**{r['speedup']:.1f}x** |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--m", type=int, default=100_000)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.5,
                   help="noise amplitude as a fraction of the mean of W H (default 0.5)")
    p.add_argument("--chunk-rows", type=int, default=5000)
    p.add_argument("--exact-max-iter", type=int, default=400,
                   help="at most this many exact iterations to reach the compressed fit's "
                   "objective (default 400)")
    p.add_argument("--quick", action="store_true", help="20000 x 500, k=10")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--tmpdir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.m, args.n, args.k, args.chunk_rows = 20_000, 500, 10, 2000

    import dask
    import zarr

    log(f"data: {args.m} x {args.n} float32, rank {args.k} + noise {args.noise}, "
        f"k={args.k}; cores: {os.cpu_count()}, load {os.getloadavg()[0]:.2f}")
    V = make_data(args.m, args.n, args.k, args.noise)
    results: dict[str, dict[str, Any]] = {}
    if not args.skip_memory:
        results["in memory"] = compare(
            "in memory", lambda X=V: X, args.k, count=lambda: 0,
            exact_max_iter=args.exact_max_iter)
        r = results["in memory"]
        # In memory there is no store to count: the fits' own counts (2 init passes + one
        # per iteration for the exact fit; 1 + q + polishing iterations for the compressed).
        r["exact"]["passes"] = 2 + r["exact"]["n_iter"]
        r["compressed"]["passes"] = None
    tmp = tempfile.mkdtemp(dir=args.tmpdir, prefix="bench-compressed-")
    try:
        path = os.path.join(tmp, "V.zarr")
        t0 = time.perf_counter()
        zarr.create_array(store=path, shape=V.shape, chunks=(args.chunk_rows, args.n),
                          dtype=V.dtype)[...] = V
        n_chunks = -(-args.m // args.chunk_rows)
        log(f"wrote {path} in {time.perf_counter() - t0:.1f}s ({n_chunks} chunks)")
        del V
        store, counts = counting_store(path)

        def passes() -> float:
            return counts["reads"] / n_chunks

        with dask.config.set(scheduler="threads"):
            # resident=False: every pass reads the store, as for a V larger than memory.
            results["out of core (Zarr, threads)"] = compare(
                "out of core", lambda: zarr.open_array(store=store, mode="r"), args.k,
                count=passes, exact_max_iter=args.exact_max_iter, resident=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if "in memory" in results:
        mem = results["in memory"]
        ooc = results["out of core (Zarr, threads)"]
        mem["compressed"]["passes"] = ooc["compressed"]["passes"]
        mem["passes_ratio"] = mem["exact"]["passes"] / mem["compressed"]["passes"]
    log("")
    log(table(results))
    log(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return results


if __name__ == "__main__":
    main()
