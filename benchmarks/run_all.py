#!/usr/bin/env python
"""The whole bignmf benchmark suite in one command: a table of ratios measured side by side.

    python benchmarks/run_all.py                  # full (about 7 minutes on 2 cores)
    python benchmarks/run_all.py --quick          # small sizes (about 1 minute)
    python benchmarks/run_all.py --json out.json  # also save every raw timing
    python benchmarks/run_all.py --only dense,ooc # some sections (see --help)

Every target is a *ratio of two timings taken in this run* (the machines are shared and
noisy; never compare with stored absolute times). Contenders are interleaved in rounds; the
table reports the median and, in brackets, the minimum; "met?" is judged on the median.
Sections (issue 6):

1. ``dense`` / ``sparse`` — in memory: bignmf's steady-state iteration against the NumPy
   GEMMs it needs (dense) or the SciPy products (sparse), and the wall time for bignmf to
   reach the error scikit-learn's ``cd`` reaches in 200 iterations (initialization
   included); sparse on a real TF-IDF matrix (movie reviews, 2000 x 23784, 0.47M nnz,
   from ``../shared/data`` or ``$BIGNMF_DATA``; skipped, with a row saying so, without it).
2. ``init`` — passes over V of the NNDSVD initialization, counted (not taken from the
   docs): bignmf's by counting block reads of a Zarr store, scikit-learn's by counting the
   full-size operations on V (products and reductions) of ``_initialize_nmf``.
3. ``ooc`` / ``codecs`` — V in Zarr, page cache dropped before every read pass and every
   iteration (``sync; echo 1 > /proc/sys/vm/drop_caches``; root only, else it says so):
   iteration / one read+decode pass; then compressors and chunk sizes for the read pass.
4. ``resident`` — iteration with ``resident=True`` / ``resident=False`` (page-cached).
5. ``compressed`` — runs ``benchmarks/bench_compressed.py`` if it exists (in its own
   process, before the suite starts its clusters): compressed NMF against the exact fit run
   until it reaches the same objective.
6. ``overhead`` — dask tasks per iteration against the number of row blocks; the
   scheduler's overhead with 1000 row blocks; 2 workers against 1.
7. ``memory`` — per-worker peak memory (VmHWM, reset before each fit) against block rows,
   k, n and m, next to a fitted model.

Distributed sections run on ``distributed.LocalCluster`` workers with one thread each (2
workers, and 1 for the scaling and memory measurements), started by this script as a user
would, with glibc's defaults; the out-of-core section compares them with the embedded
cluster's ``GLIBC_TUNABLES`` (:data:`bignmf.cluster.MALLOC_TUNABLE`) on a second cluster.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_core as core
from bench_core import log, quiet, summary, timed

import bignmf.cluster as bignmf_cluster
from bignmf.cluster import MALLOC_TUNABLE, proc_status

DATA = os.environ.get("BIGNMF_DATA", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))

SECTIONS = ("dense", "sparse", "init", "ooc", "codecs", "resident", "compressed",
            "overhead", "memory")


# --------------------------------------------------------------------------- table rows


class Table:
    """Rows of ``measure | bignmf | reference | ratio | target | met?``."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, section: str, measure: str, bignmf: str, reference: str,
            ratio: float | None, ratio_min: float | None = None, target: str = "",
            ok: Callable[[float], bool] | None = None, unit: str = "x",
            digits: int = 2) -> None:
        met = "" if ok is None or ratio is None else ("yes" if ok(ratio) else "**no**")
        text = "n/a" if ratio is None else f"{ratio:.{digits}f}{unit}"
        if ratio_min is not None:
            text += f" ({ratio_min:.2f})"
        self.rows.append({"section": section, "measure": measure, "bignmf": bignmf,
                          "reference": reference, "ratio": ratio, "ratio_min": ratio_min,
                          "ratio_text": text, "target": target, "met": met})

    def markdown(self) -> str:
        out = ["| measure | bignmf | reference | ratio median (min) | target | met? |",
               "|---|---|---|---:|---|---|"]
        out += [f"| {r['measure']} | {r['bignmf']} | {r['reference']} | {r['ratio_text']} | "
                f"{r['target']} | {r['met']} |" for r in self.rows]
        return "\n".join(out)


def s(x: dict[str, Any] | float, digits: int = 3) -> str:
    """Seconds as 'median (min)' or a single value."""
    if isinstance(x, dict):
        return f"{x['median']:.{digits}f} s ({x['min']:.{digits}f})"
    return f"{x:.{digits}f} s"


def ratio_of(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float]:
    return a["median"] / b["median"], a["min"] / b["min"]


# --------------------------------------------------------------------------- utilities


def load() -> tuple[float, float, float] | None:
    with contextlib.suppress(OSError):
        return os.getloadavg()
    return None


def drop_caches() -> bool:
    """``sync; echo 1 > /proc/sys/vm/drop_caches`` (page cache only); True if it worked."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return True
    except OSError:
        return False


def write_zarr(V: np.ndarray, path: str, chunk_rows: int, compressors: Any = "auto") -> float:
    import zarr

    def write() -> None:
        kw = {} if isinstance(compressors, str) else {"compressors": compressors}
        z = zarr.create_array(store=path, shape=V.shape, chunks=(chunk_rows, V.shape[1]),
                              dtype=V.dtype, overwrite=True, **kw)
        z[:] = V

    t, _ = timed(write)
    return t


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def start_cluster(n_workers: int, memory_limit: str, tunables: str = "") -> Any:
    """A ``LocalCluster`` of single-threaded workers, as a user would start one; their
    processes start with ``GLIBC_TUNABLES=tunables`` (``""``: glibc's defaults; the
    embedded cluster's setting is :data:`bignmf.cluster.MALLOC_TUNABLE`). Set in this
    process's environment while the workers start (the nanny would let an inherited value
    win over its configuration), and restored."""
    from distributed import Client, LocalCluster

    with bignmf_cluster._environ({"GLIBC_TUNABLES": tunables}):
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               memory_limit=memory_limit, dashboard_address=":0")
    client = Client(cluster, set_as_default=False)
    client.wait_for_workers(n_workers, timeout=120)
    return client


def close_cluster(client: Any) -> None:
    cluster = client.cluster
    client.close()
    cluster.close()


_calls = [0]


def per_iter(client: Any, V: Any, W0: np.ndarray, H0: np.ndarray, k: int, iters: int,
             between: Callable[[], Any] | None = None, stream: bool = False,
             **params: Any) -> dict[str, Any]:
    """Steady-state seconds per iteration of bignmf on ``client`` (first one left out).

    ``between`` runs after each iteration, outside the iteration's timer (e.g. dropping the
    page cache so that the next iteration reads cold). With ``stream`` the workers' task
    stream of the fit is returned too (``(start, stop)`` of each timed iteration in
    ``time.time()``).
    """
    from bignmf import NMF

    info: list[tuple[float, float]] = []

    def cb(it: Any) -> None:
        now = time.time()
        info.append((it.seconds, now))
        if between is not None:
            between()

    # A W0 that differs in the last bits from call to call: bignmf scatters W0's blocks
    # under content-hashed keys, and two fits in a row with the same W0 then share keys
    # that the first fit's release can cancel ("lost dependencies"); see README.md.
    _calls[0] += 1
    W0 = W0 * np.float32(1 + 1e-6 * (_calls[0] % 100))
    est = NMF(n_components=k, init="custom", tol=0.0, max_iter=iters + 1, **params)
    ctx = client.as_current() if client is not None else contextlib.nullcontext()
    records: list[dict[str, Any]] = []
    with ctx, quiet():
        if stream:
            from distributed import get_task_stream

            with get_task_stream(client=client) as ts:
                W = est.fit_transform(V, W=W0.copy(), H=H0.copy(), callback=cb)
            records = ts.data
        else:
            W = est.fit_transform(V, W=W0.copy(), H=H0.copy(), callback=cb)
    del W
    # The mean over the timed iterations: on a cluster the next iteration starts before an
    # iteration's callback, so single callback intervals are uneven; their sum is not.
    times = [sec for sec, _ in info[1:]]
    out = summary([sum(times) / len(times)])
    out["callback_intervals"] = times
    out["first"] = info[0][0]
    if stream:
        out["windows"] = [(now - sec, now) for sec, now in info[1:]]
        out["records"] = records
    return out


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return summary([t for r in runs for t in r["all"]])


def sq_err(V: Any, W: np.ndarray, H: np.ndarray, rows: int = 256) -> float:
    """``||V - W H||_F`` in float64 for dense or sparse V (sparse rows densified in slices)."""
    import scipy.sparse as sp

    if not sp.issparse(V):
        return core.exact_err(V, W, H)
    V = V.tocsr()
    H64 = np.asarray(H, dtype=np.float64)
    total = 0.0
    for a in range(0, V.shape[0], rows):
        R = V[a:a + rows].toarray().astype(np.float64) - np.asarray(W[a:a + rows],
                                                                    dtype=np.float64) @ H64
        total += float(np.einsum("ij,ij->", R, R))
    return float(np.sqrt(total))


# --------------------------------------------------------------------------- 1. in memory


def section_dense(V: np.ndarray, k: int, a: argparse.Namespace, tab: Table) -> dict[str, Any]:
    log(f"\n== 1. dense in memory: V {V.shape[0]} x {V.shape[1]} float32, k={k} ==")
    W0, H0 = core.random_init(V, k, a.seed)
    raw: dict[str, list[Any]] = {}
    for rnd in range(a.rounds):
        raw.setdefault("gemm", []).append(core.gemm_time(V, W0, H0, reps=a.gemm_reps))
        for key, params in (("default", {}), ("sweeps1", {"inner_sweeps": 1})):
            r = core.bignmf_per_iter(V, W0, H0, k, a.iters, **params)
            r.pop("est"), r.pop("W")
            raw.setdefault(key, []).append(r)
        raw.setdefault("sklearn_cd", []).append(core.sklearn_per_iter(V, W0, H0, k, "cd",
                                                                      a.iters))
        log(f"  round {rnd + 1}: " + ", ".join(f"{key} {v[-1]['median']:.4f}s"
                                               for key, v in raw.items() if key != "gemm"))
    out: dict[str, Any] = {"gemm": core.gemm_summary(raw.pop("gemm"))}
    g = out["gemm"]["fastest"]
    out.update({key: merge(v) for key, v in raw.items()})
    gemm = {"median": g["median"], "min": g["min"]}
    for key, label in (("default", "default settings"), ("sweeps1", "`inner_sweeps=1`")):
        rm = ratio_of(out[key], gemm)
        tab.add("dense", f"dense in memory: s/iteration, bignmf {label} / NumPy GEMMs "
                f"`V H^T` + `W^T V` ({'/'.join(g['layouts']['median'])})", s(out[key], 4),
                s(gemm, 4), *rm, "<= 1.15", lambda x: x <= 1.15)
    rm = ratio_of(out["sklearn_cd"], gemm)
    tab.add("dense", "dense in memory: s/iteration, scikit-learn cd / NumPy GEMMs (for "
            "comparison)", s(out["sklearn_cd"], 4), s(gemm, 4), *rm, "(~1.4)")
    log(f"  GEMMs {gemm['median']:.4f}s; bignmf default {out['default']['median']:.4f}s, "
        f"inner_sweeps=1 {out['sweeps1']['median']:.4f}s; sklearn cd "
        f"{out['sklearn_cd']['median']:.4f}s")
    out["to_error"] = time_to_error(V, k, a, tab, "dense", ">= 3x", 3.0)
    return out


def time_to_error(V: Any, k: int, a: argparse.Namespace, tab: Table, label: str,
                  target: str, goal: float) -> dict[str, Any]:
    """scikit-learn cd's error after ``ref_iter`` iterations; bignmf's time to reach it.

    Repeated ``a.error_rounds`` times, interleaved (scikit-learn, bignmf, ...), speed-up
    from the median and the best of each."""
    runs_sk, runs_b = [], []
    for _ in range(a.error_rounds):
        sk = core.sklearn_to_target(V, k, "cd", a.ref_iter, a.seed, err_fn=sq_err)
        runs_sk.append(sk)
        cap = 1.5 * sk["seconds"] + 5.0
        b = core.bignmf_to_target(V, k, sk["err"], cap, 20 * a.ref_iter, a.seed)
        runs_b.append(b)
        log(f"  [{label}] sklearn cd {a.ref_iter} it: {sk['seconds']:.2f}s err {sk['err']:.7g}; "
            f"bignmf {'reached' if b['reached'] else 'NOT reached'} after {b['n_iter']} it, "
            f"{b['seconds']:.2f}s (init {b['init_seconds']:.2f}s)")
    t_sk = summary([r["seconds"] for r in runs_sk])
    reached = all(b["reached"] for b in runs_b)
    t_b = summary([b["seconds"] for b in runs_b])
    iters = [b["n_iter"] for b in runs_b]
    sp_med, sp_min = t_sk["median"] / t_b["median"], t_sk["min"] / t_b["min"]
    tab.add(label, f"{label} in memory: time to scikit-learn cd's error after {a.ref_iter} "
            f"iterations (init included; bignmf: {iters[0]} iterations"
            f"{'' if reached else ', NOT reached'}) — speed-up = sklearn / bignmf",
            s(t_b, 2), s(t_sk, 2), sp_med if reached else None, sp_min if reached else None,
            target, lambda x: x >= goal)
    # The last 0.1% of scikit-learn's 200 iterations is a flat tail (it is within 0.1% of
    # that error after ~20 iterations on the text matrix), and which local minimum each
    # method settles in decides whether the exact value is ever crossed: also report the
    # time to come within 0.1% of it.
    near = [next((t for _, t, e in b["trace"] if e <= 1.001 * sk["err"]), None)
            for b, sk in zip(runs_b, runs_sk, strict=True)]
    if all(t is not None for t in near):
        t_near = summary([float(t) for t in near])  # type: ignore[arg-type]
        tab.add(label, f"{label} in memory: time to within 0.1% of scikit-learn cd's error "
                f"after {a.ref_iter} iterations — speed-up = sklearn / bignmf",
                s(t_near, 2), s(t_sk, 2), t_sk["median"] / t_near["median"],
                t_sk["min"] / t_near["min"], "(info)", None)
    return {"sklearn": runs_sk, "bignmf": runs_b, "speedup": (sp_med, sp_min), "near": near}


def text_matrix(quick: bool) -> tuple[Any, str]:
    """TF-IDF of a real corpus (float32 CSR): movie reviews (full) or State of the Union
    addresses (``--quick``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    name = "state_union.zip" if quick else "movie_reviews.zip"
    with zipfile.ZipFile(os.path.join(DATA, "text", name)) as z:
        docs = [z.read(n).decode("latin-1") for n in sorted(z.namelist())
                if n.endswith(".txt") and "README" not in n]
    X = TfidfVectorizer(min_df=2, stop_words="english", dtype=np.float32).fit_transform(docs)
    return X.tocsr(), f"{name} TF-IDF {X.shape[0]} x {X.shape[1]}, {X.nnz / 1e6:.2f}M nnz"


def section_sparse(a: argparse.Namespace, tab: Table) -> dict[str, Any]:
    text = os.path.join(DATA, "text")
    if not os.path.isdir(text):
        log(f"\n== 1. sparse in memory: skipped, no text corpora in {text} ==")
        tab.add("sparse", f"sparse in memory: skipped (the text corpora are not in {text}; "
                "set BIGNMF_DATA to the shared data folder)", "", "", None)
        return {"skipped": text}
    X, what = text_matrix(a.quick)
    k = a.sparse_k
    log(f"\n== 1. sparse in memory: {what}, k={k} ==")
    rng = np.random.default_rng(a.seed)
    avg = np.sqrt(float(X.mean()) / k)
    W0 = np.abs(avg * rng.standard_normal((X.shape[0], k))).astype(np.float32)
    H0 = np.abs(avg * rng.standard_normal((k, X.shape[1]))).astype(np.float32)
    raw: dict[str, list[Any]] = {}
    for _ in range(a.rounds):
        t = []
        for _ in range(a.gemm_reps):
            t0 = time.perf_counter()
            _ = (X @ H0.T, (X.T @ W0).T)
            t.append(time.perf_counter() - t0)
        raw.setdefault("spmm", []).append(summary(t))
        r = core.bignmf_per_iter(X, W0, H0, k, a.iters)
        r.pop("est"), r.pop("W")
        raw.setdefault("default", []).append(r)
        raw.setdefault("sklearn_cd", []).append(core.sklearn_per_iter(X, W0, H0, k, "cd",
                                                                      a.iters))
    out: dict[str, Any] = {key: merge(v) for key, v in raw.items()}
    out["matrix"] = what
    tab.add("sparse", f"sparse in memory ({what}, k={k}): s/iteration, bignmf default / SciPy "
            "products `V H^T` + `V^T W` (info)", s(out["default"], 4), s(out["spmm"], 4),
            *ratio_of(out["default"], out["spmm"]))
    tab.add("sparse", "sparse in memory: s/iteration, scikit-learn cd / SciPy products (info)",
            s(out["sklearn_cd"], 4), s(out["spmm"], 4), *ratio_of(out["sklearn_cd"],
                                                                   out["spmm"]))
    out["to_error"] = time_to_error(X, k, a, tab, "sparse", ">= 2x", 2.0)
    # (scikit-learn's fit from a.seed has just run: its error is reused)
    known = {a.seed: out["to_error"]["sklearn"][0]["err"]}
    out["minima"] = local_minima(X, k, a, tab, "sparse", known)
    return out


def local_minima(V: Any, k: int, a: argparse.Namespace, tab: Table, label: str,
                 known: dict[int, float]) -> dict[str, Any]:
    """Where each method ends from ``a.minima_seeds`` seeds: scikit-learn cd after
    ``ref_iter`` iterations (as in :func:`time_to_error`), bignmf converged (``tol=0``,
    ``a.minima_iter`` iterations, its own NNDSVDA), both errors recomputed in float64.

    On the text matrix the local minimum a fit settles in depends on the seed, for
    scikit-learn as for bignmf: whether one seed's bignmf fit crosses one seed's
    scikit-learn error is a draw. The medians over seeds compare the methods instead.
    ``known``: scikit-learn's errors by seed already measured (the same fits)."""
    from bignmf import NMF

    seeds = list(range(a.seed, a.seed + a.minima_seeds))
    sk, b = [], []
    for sd in seeds:  # interleaved, one seed of each at a time
        sk.append(known[sd] if sd in known else
                  core.sklearn_to_target(V, k, "cd", a.ref_iter, sd, err_fn=sq_err)["err"])
        est = NMF(n_components=k, tol=0.0, max_iter=a.minima_iter, random_state=sd)
        with quiet():
            W = est.fit_transform(V)
        b.append(sq_err(V, W, est.components_))
        log(f"  [{label}] seed {sd}: scikit-learn cd {a.ref_iter} it {sk[-1]:.7g}, bignmf "
            f"{a.minima_iter} it {b[-1]:.7g}")
    med_sk, med_b = float(np.median(sk)), float(np.median(b))
    tab.add(label, f"{label} in memory: error where each method ends, median over seeds "
            f"{seeds[0]}-{seeds[-1]} (scikit-learn cd after {a.ref_iter} iterations: "
            f"{min(sk):.7g} to {max(sk):.7g}; bignmf after {a.minima_iter}, tol=0, its own "
            f"NNDSVDA: {min(b):.7g} to {max(b):.7g}) — bignmf / sklearn",
            f"{med_b:.7g}", f"{med_sk:.7g}", med_b / med_sk, None, "(info)", digits=5)
    return {"seeds": seeds, "sklearn": sk, "bignmf": b}


# --------------------------------------------------------------------------- 2. init passes


def section_init(V: np.ndarray, path: str, k: int, a: argparse.Namespace,
                 tab: Table) -> dict[str, Any]:
    """Passes over V of NNDSVD(a) initialization, counted."""
    import dask
    import sklearn.decomposition._nmf as sk_nmf

    from bignmf import NMF, passes
    from bignmf import io as bio

    log("\n== 2. passes over V of the NNDSVD initialization ==")
    # bignmf: count block reads of the Zarr store (threaded scheduler, this process).
    reads = [0]
    original = passes.ZarrBlock.read

    def counting(self: Any) -> Any:
        reads[0] += 1
        return original(self)

    n_blocks = len(bio.open_matrix(path).chunks[0])
    counts = {}
    try:
        passes.ZarrBlock.read = counting  # type: ignore[method-assign]
        with dask.config.set(scheduler="threads"), quiet():
            for it in (1, 2):
                reads[0] = 0
                NMF(k, init="nndsvda", max_iter=it, tol=0.0, resident=False,
                    random_state=0).fit(path)
                counts[it] = reads[0]
    finally:
        passes.ZarrBlock.read = original  # type: ignore[method-assign]
    per_iter_reads = counts[2] - counts[1]
    bignmf_passes = (counts[1] - per_iter_reads) / n_blocks
    log(f"  bignmf: {counts} block reads for max_iter 1, 2 ({n_blocks} blocks) -> "
        f"{bignmf_passes:g} passes for init, {per_iter_reads / n_blocks:g} per iteration")

    # scikit-learn: count operations over all of V inside _initialize_nmf.
    class Counted(np.ndarray):
        ops: ClassVar[list[str]] = []

        def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kw: Any) -> Any:
            if any(isinstance(x, Counted) and x.size == V.size for x in inputs):
                Counted.ops.append(f"{ufunc.__name__}.{method}")
            args = [np.asarray(x) if isinstance(x, Counted) else x for x in inputs]
            return getattr(ufunc, method)(*args, **kw)

    Vc = V.view(Counted)
    Counted.ops = []
    with quiet():
        sk_nmf._initialize_nmf(Vc, k, init="nndsvda", random_state=0)
    sk_ops = list(Counted.ops)
    matmuls = sum(op.startswith("matmul") for op in sk_ops)
    log(f"  scikit-learn: {len(sk_ops)} full passes over V ({matmuls} products): {sk_ops}")
    tab.add("init", "passes over V, NNDSVDA initialization (counted; reference: scikit-learn's "
            "randomized SVD + checks)", f"{bignmf_passes:g}", f"{len(sk_ops)} ({matmuls} "
            "products)", len(sk_ops) / bignmf_passes, None, "bignmf 2", unit="x fewer",
            ok=lambda _: bignmf_passes <= 2)
    return {"bignmf_reads": counts, "n_blocks": n_blocks, "bignmf_passes": bignmf_passes,
            "sklearn_ops": sk_ops}


# --------------------------------------------------------------------------- 3. out of core


def read_pass(client: Any, path: Any, reps: int, cold: bool,
              block_rows: int | None = None) -> dict[str, Any]:
    """One read+decode pass of V in bignmf's row blocks on ``client`` (page cache dropped
    before each when ``cold``); one untimed warm-up pass first (worker imports)."""
    bb = core.block_bytes_for(client)
    with client.as_current():
        core.read_pass(path, block_rows, bb, 1, warmup=False)
        times = []
        for _ in range(reps):
            if cold:
                drop_caches()
            times.append(core.read_pass(path, block_rows, bb, 1, warmup=False)["min"])
        blocks = core.read_pass(path, block_rows, bb, 1, warmup=False)["blocks"]
    out = summary(times)
    out["blocks"] = blocks
    return out


def section_ooc(client: Any, path: str, V: np.ndarray, k: int, a: argparse.Namespace,
                tab: Table, cold: bool) -> dict[str, Any]:
    log(f"\n== 3. out of core: iteration / read pass ({'cold' if cold else 'page-cached'}) ==")
    W0, H0 = core.random_init(V, k, a.seed)
    runs_r, runs_i, runs_s = [], [], []
    scratch = tempfile.mkdtemp(prefix="bench-store-W-")
    for rnd in range(a.rounds):
        runs_r.append(read_pass(client, path, 2, cold))
        if cold:
            drop_caches()
        runs_i.append(per_iter(client, path, W0, H0, k, a.iters,
                               between=drop_caches if cold else None, resident=False))
        if cold:
            drop_caches()
        # W in files between passes: its I/O is 2 k / n of V's
        runs_s.append(per_iter(client, path, W0, H0, k, a.iters, resident=False,
                               between=drop_caches if cold else None, store_W=True,
                               checkpoint=os.path.join(scratch, "ck.zarr"),
                               checkpoint_every=10**6))
        log(f"  round {rnd + 1}: read {runs_r[-1]['median']:.3f}s, iteration "
            f"{runs_i[-1]['median']:.3f}s, with W in files {runs_s[-1]['median']:.3f}s")
    shutil.rmtree(scratch, ignore_errors=True)
    rp, it = merge(runs_r), merge(runs_i)
    blocks = runs_r[0]["blocks"]
    state = "page cache dropped before each" if cold else "page-cached (could not drop)"
    tab.add("ooc", f"out of core ({len(blocks)} blocks, 2 workers x 1 thread, {state}): "
            "s/iteration / one read+decode pass", s(it), s(rp), *ratio_of(it, rp), "<= 1.25",
            lambda x: x <= 1.25)
    out = {"read": rp, "iteration": it, "blocks": blocks, "cold": cold}
    st = out["iteration_store_W"] = merge(runs_s)
    tab.add("ooc", f"out of core, W in files between passes (store_W=True) / W in worker "
            f"memory, s/iteration ({state}; W's I/O is 2k/n = {2 * k / V.shape[1]:.1%} "
            "of V's)", s(st), s(it), *ratio_of(st, it), "(info)")
    out["io_bound"] = io_bound(client, path, W0, H0, k, a, tab)
    out["huge_pages"] = huge_pages(client, path, W0, H0, k, a, tab)
    return out


def huge_pages(client: Any, path: str, W0: np.ndarray, H0: np.ndarray, k: int,
               a: argparse.Namespace, tab: Table) -> dict[str, Any]:
    """The embedded cluster's glibc setting (huge pages for malloc's large mappings) on a
    second 2-worker cluster, against ``client``'s (glibc's defaults): one read pass and
    seconds per iteration from the page cache, interleaved, and the workers' minor page
    faults per pass of the fit."""
    huge = start_cluster(2, "4GiB", tunables=MALLOC_TUNABLE)
    runs: dict[str, dict[str, list[Any]]] = {name: {"read": [], "iteration": []}
                                             for name in ("huge", "plain")}
    faults: dict[str, list[float]] = {"huge": [], "plain": []}
    try:
        for rnd in range(a.rounds):
            for name, c in (("huge", huge), ("plain", client)):
                runs[name]["read"].append(read_pass(c, path, 2, False))
                before = sum(c.run(_minor_faults).values())
                runs[name]["iteration"].append(per_iter(c, path, W0, H0, k, a.iters,
                                                        resident=False))
                # (the fit's passes: its first, checking, pass and a.iters + 1 iterations)
                faults[name].append((sum(c.run(_minor_faults).values()) - before)
                                    / (a.iters + 2))
            log(f"  huge pages: round {rnd + 1}: read {runs['huge']['read'][-1]['median']:.3f}s"
                f" against {runs['plain']['read'][-1]['median']:.3f}s, iteration "
                f"{runs['huge']['iteration'][-1]['median']:.3f}s against "
                f"{runs['plain']['iteration'][-1]['median']:.3f}s")
    finally:
        close_cluster(huge)
    out: dict[str, Any] = {"faults_per_pass": {n: statistics.median(f)
                                               for n, f in faults.items()}}
    f_hp, f_pl = out["faults_per_pass"]["huge"], out["faults_per_pass"]["plain"]
    for what in ("iteration", "read"):
        hp, pl = merge(runs["huge"][what]), merge(runs["plain"][what])
        out[what] = {"huge": hp, "plain": pl}
        label = ("s/iteration (page faults per pass "
                 f"{f_hp / 1e3:.0f}k / {f_pl / 1e3:.0f}k)" if what == "iteration"
                 else "one read+decode pass")
        tab.add("ooc", f"out of core, page-cached, 2 workers: {label}, with the embedded "
                f"cluster's `GLIBC_TUNABLES={MALLOC_TUNABLE}` / glibc's defaults", s(hp),
                s(pl), *ratio_of(hp, pl), "(info)")
    return out


def _minor_faults() -> int:
    """Minor page faults of this (worker) process so far."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def io_bound(client: Any, path: str, W0: np.ndarray, H0: np.ndarray, k: int,
             a: argparse.Namespace, tab: Table) -> dict[str, Any]:
    """Storage slower than decoding: each worker reads at ``a.io_bandwidth`` bytes/s
    (:class:`bench_core.ThrottledStore`, a model of a network file system or object
    storage). Iteration / read pass, interleaved."""
    import zarr

    bw = a.io_bandwidth
    V = zarr.open_array(core.ThrottledStore(path, bandwidth=bw), mode="r")
    log(f"  I/O bound: storage throttled to {bw / 1e6:.0f} MB/s per worker")
    runs: dict[str, list[Any]] = {"read": [], "iteration": []}
    for rnd in range(a.rounds):
        runs["read"].append(read_pass(client, V, 1, False))
        runs["iteration"].append(per_iter(client, V, W0, H0, k, a.io_iters, resident=False))
        log(f"  round {rnd + 1}: read {runs['read'][-1]['median']:.3f}s, iteration "
            f"{runs['iteration'][-1]['median']:.3f}s")
    rp, it = merge(runs["read"]), merge(runs["iteration"])
    tab.add("ooc", f"out of core, I/O bound (storage read at {bw / 1e6:.0f} MB/s per worker, "
            "2 workers): s/iteration / one read pass", s(it), s(rp), *ratio_of(it, rp),
            "<= 1.25", lambda x: x <= 1.25)
    return {"bandwidth": bw, "read": rp, "iteration": it}


def codec_table() -> list[tuple[str, Any]]:
    from zarr.codecs import BloscCodec, ZstdCodec
    from zarr.codecs.numcodecs import LZ4

    return [("none", None), ("zarr default (zstd level 0)", "auto"),
            ("zstd 1", ZstdCodec(level=1)), ("zstd 3", ZstdCodec(level=3)),
            ("zstd 5", ZstdCodec(level=5)), ("lz4", LZ4()),
            ("blosc-lz4 (shuffle)", BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")),
            ("blosc-zstd 3 (shuffle)", BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"))]


def section_codecs(client: Any, tmp: str, datasets: list[tuple[str, np.ndarray]],
                   chunk_rows: list[int], a: argparse.Namespace, tab: Table,
                   cold: bool) -> dict[str, Any]:
    log("\n== 3. compressors and chunk sizes: one read+decode pass (cold) ==")
    out: dict[str, Any] = {}
    for dname, X in datasets:
        rows = []
        for cr in chunk_rows:
            for cname, comp in codec_table():
                path = os.path.join(tmp, "codec.zarr")
                wt = write_zarr(X, path, cr, comp)
                size = du(path)
                rp = read_pass(client, path, a.codec_reps, cold)
                rows.append({"codec": cname, "chunk_rows": cr, "chunk_mib":
                             cr * X.shape[1] * X.itemsize / 2**20, "write": wt,
                             "ratio": X.nbytes / size, "read": rp})
                shutil.rmtree(path, ignore_errors=True)
                log(f"  [{dname}] chunks {cr:5d} rows, {cname:26s}: write {wt:.2f}s, "
                    f"{X.nbytes / size:5.2f}x smaller, read {rp['median']:.3f}s "
                    f"({rp['min']:.3f})")
        best = min(rows, key=lambda r: r["read"]["median"])
        default = [r for r in rows if r["codec"].startswith("zarr default")]
        ref = min(default, key=lambda r: r["read"]["median"])
        tab.add("codecs", f"read pass, {dname}: fastest = {best['codec']}, chunks of "
                f"{best['chunk_rows']} rows ({best['chunk_mib']:.1f} MiB), "
                f"{best['ratio']:.2f}x compression; reference = zarr default, best chunks "
                f"({ref['chunk_rows']} rows)", s(best["read"]), s(ref["read"]),
                *ratio_of(best["read"], ref["read"]), "(report)")
        out[dname] = {"shape": list(X.shape), "rows": rows}
    return out


def section_resident(client: Any, path: str, V: np.ndarray, k: int, a: argparse.Namespace,
                     tab: Table) -> dict[str, Any]:
    log("\n== 4. resident=True vs resident=False (page-cached reads) ==")
    W0, H0 = core.random_init(V, k, a.seed)
    raw: dict[bool, list[Any]] = {True: [], False: []}
    for rnd in range(a.rounds):
        for res in (False, True):
            raw[res].append(per_iter(client, path, W0, H0, k, a.iters, resident=res))
        log(f"  round {rnd + 1}: resident {raw[True][-1]['median']:.3f}s, not resident "
            f"{raw[False][-1]['median']:.3f}s")
    r_t, r_f = merge(raw[True]), merge(raw[False])
    tab.add("resident", "s/iteration, `resident=True` / `resident=False` (Zarr, page-cached; "
            "2 workers)", s(r_t), s(r_f), *ratio_of(r_t, r_f), "< 1", lambda x: x < 1)
    return {"resident": r_t, "not_resident": r_f}


# --------------------------------------------------------------------------- 5. compressed


def section_compressed(a: argparse.Namespace, tab: Table) -> dict[str, Any]:
    log("\n== 5. compressed NMF vs exact (benchmarks/bench_compressed.py) ==")
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_compressed.py")
    if not os.path.exists(script):
        tab.add("compressed", "compressed NMF vs exact: benchmarks/bench_compressed.py not "
                "available", "", "", None, target="(other helper)")
        return {"available": False}
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        jpath = f.name
    # Its default size (100000 x 1000, k=10; about a minute) in both modes; --quick: its
    # quick size (20000 x 500) out of core only.
    cmd = [sys.executable, script, *(["--quick", "--skip-memory"] if a.quick else []),
           "--json", jpath]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.compressed_timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        tab.add("compressed", f"compressed NMF vs exact: timed out after "
                f"{a.compressed_timeout}s", "", "", None)
        return {"available": True, "timeout": True}
    rows = [line for line in p.stdout.splitlines() if line.startswith("|")]
    out: dict[str, Any] = {"available": True, "rc": p.returncode, "table": rows,
                           "stderr_tail": p.stderr[-2000:]}
    with contextlib.suppress(OSError, ValueError), open(jpath) as f:
        out["json"] = json.load(f)
    os.remove(jpath) if os.path.exists(jpath) else None
    results = out.get("json") or {}
    for label, r in results.items():  # (the rows of its printed table, from its results)
        ooc = "out of core" in label
        bound = ("" if r["exact_reached"] else
                 " (the exact fit never reached it: its whole fit, a lower bound)")
        d = r["exact_default_tol"]
        where = f" (iteration {d['n_iter']}, {d['seconds']:.2f} s)" if d else ""
        tab.add("compressed", f"compressed NMF vs exact ({label}; `bench_compressed.py"
                f"{' --quick' if a.quick else ''}`): time to the compressed fit's "
                f"objective, exact fit with tol=0{bound}; passes to it "
                f"{r['exact']['passes']} / {r['compressed']['passes']} = "
                f"{r['passes_ratio']:.1f}x; objective compressed / exact's where tol=1e-4 "
                f"stops it {r['objective_ratio']:.5f}{where}",
                f"{r['compressed']['seconds']:.2f} s", f"{r['exact_seconds_to_target']:.2f} s",
                r["speedup"], None, ">= 5x" if ooc else "(report)",
                (lambda x: x >= 5) if ooc else None)
    if results:
        return out
    tab.add("compressed", f"compressed NMF vs exact: `{' '.join(cmd[1:])}` exit "
            f"{p.returncode}; its output is printed below", "", "", None)
    return out


# --------------------------------------------------------------------------- 6. overheads


def _compute_seconds(records: list[dict[str, Any]],
                     window: tuple[float, float] | None = None) -> tuple[int, float]:
    """Tasks and summed compute seconds of task-stream records (started in ``window``)."""
    n, total = 0, 0.0
    for r in records:
        for ss in r.get("startstops", ()):
            if ss["action"] != "compute":
                continue
            if window is not None and not window[0] <= ss["start"] <= window[1]:
                continue
            n += 1
            total += ss["stop"] - ss["start"]
    return n, total


def _per_window(r: dict[str, Any]) -> tuple[float, float]:
    """Tasks and compute seconds per timed iteration of a :func:`per_iter` run: over all its
    timed iterations, divided by their number (on a cluster an iteration starts before the
    previous one's callback, so single windows split iterations unevenly)."""
    windows = r["windows"]
    n, sec = _compute_seconds(r["records"], (windows[0][0], windows[-1][1]))
    return n / len(windows), sec / len(windows)


def section_overhead(c1: Any, c2: Any, tmp: str, path: str, V: np.ndarray, k: int,
                     a: argparse.Namespace, tab: Table) -> dict[str, Any]:
    log("\n== 6. overheads: tasks per iteration, 1000 row blocks, 2 workers vs 1 ==")
    out: dict[str, Any] = {}
    m = V.shape[0]
    W0, H0 = core.random_init(V, k, a.seed)
    # tasks per iteration, from the task stream of a fit (timed iterations only)
    tasks = []
    for n_blocks in a.task_blocks:
        br = -(-m // n_blocks)
        r = per_iter(c2, path, W0, H0, k, 3, stream=True, block_rows=br, resident=False)
        per = [_per_window(r)[0]]
        blocks = -(-m // br)
        tasks.append({"blocks": blocks, "tasks_per_iteration": per})
        log(f"  {blocks} blocks: tasks per iteration {per}")
    xs = np.array([t["blocks"] for t in tasks], dtype=float)
    ys = np.array([statistics.median(t["tasks_per_iteration"]) for t in tasks])
    slope, icpt = np.polyfit(xs, ys, 1) if len(xs) > 1 else (ys[0] / xs[0], 0.0)
    out["tasks"] = {"runs": tasks, "per_block": slope, "constant": icpt}
    tab.add("overhead", f"dask tasks per iteration = {slope:.2f} x blocks + {icpt:.1f} "
            f"(fitted over {', '.join(str(int(x)) for x in xs)} blocks: "
            f"{', '.join(f'{y:g}' for y in ys)} tasks)", f"{slope:.2f}/block", "", None,
            target="linear in blocks, ~2-5 per block", ok=None)
    # (2 per block when a block's W is no larger than its sums, else 3; plus the tree)
    tab.rows[-1]["met"] = "yes" if 1.5 <= slope <= 5.5 else "**no**"

    # 1000 row blocks vs few, V resident (isolates the scheduler from I/O)
    mb, nb = a.many_shape
    rng = np.random.default_rng(a.seed)
    Vb = rng.random((mb, nb), dtype=np.float32)
    Vb_bytes = Vb.nbytes
    pb = os.path.join(tmp, "many.zarr")
    small = mb // a.many_blocks
    write_zarr(Vb, pb, small)
    Wb, Hb = core.random_init(Vb, k, a.seed)
    del Vb
    raw: dict[str, list[Any]] = {"many": [], "few": []}
    for _ in range(a.rounds):
        raw["few"].append(per_iter(c2, pb, Wb, Hb, k, a.iters, block_rows=mb // 4,
                                   resident=True))
        raw["many"].append(per_iter(c2, pb, Wb, Hb, k, a.iters, stream=True, block_rows=small,
                                    resident=True))
    few, many = merge(raw["few"]), merge(raw["many"])
    busy = []
    for r in raw["many"]:
        _, sec = _per_window(r)
        busy.append(statistics.median(r["all"]) / (sec / 2))
        r.pop("records")
    out["many"] = {"shape": [mb, nb], "block_rows": small, "few": few, "many": many,
                   "wall_over_kernels": summary(busy)}
    log(f"  {a.many_blocks} blocks of {small} rows: {many['median']:.3f}s/iteration; 4 blocks: "
        f"{few['median']:.3f}s; iteration / (kernel seconds / 2 workers): "
        f"{statistics.median(busy):.2f}")
    tab.add("overhead", f"scheduler overhead, {a.many_blocks} row blocks ({small} rows, V "
            f"{mb} x {nb} resident, k={k}): s/iteration vs the same V in 4 blocks",
            s(many), s(few), *ratio_of(many, few), "< 1.10", lambda x: x < 1.10)
    tab.add("overhead", f"same {a.many_blocks}-block iteration / (sum of its kernel times / 2 "
            "workers)", s(many), "", statistics.median(busy), min(busy), "< 1.10",
            lambda x: x < 1.10)
    # Extrapolation to bignmf's default 128 MiB blocks: the extra wall time per block
    # measured here against the kernel time of a 128 MiB block (from the 4-block run,
    # both workers busy): the fraction of an iteration of 1000 such blocks lost to overhead.
    per_block = (many["median"] - few["median"]) / (a.many_blocks - 4)
    kernel_128 = few["median"] * 2 / Vb_bytes * 128 * 2**20
    frac = per_block / (kernel_128 / 2)
    out["many"].update(per_block_overhead=per_block, kernel_128mib=kernel_128,
                       extrapolated_fraction=frac)
    tab.add("overhead", f"extrapolated: {a.many_blocks} blocks of 128 MiB (bignmf's default): "
            f"extra wall time per block {per_block * 1e3:.1f} ms / kernel time per block "
            f"{kernel_128:.2f} s on 2 workers (model, not a run)", f"{per_block * 1e3:.1f} ms",
            f"{kernel_128 / 2:.2f} s", 1 + frac, None, "< 1.10", lambda x: x < 1.10)
    shutil.rmtree(pb, ignore_errors=True)

    # 2 workers vs 1. Resident V isolates the distribution (zarr decodes each block's
    # chunks in a thread pool, so a "1-thread" worker reading Zarr already uses both
    # cores); V and V stacked 3 times separate the fixed per-iteration latency (scheduler
    # round trips, the tree of sums, the H update here) from the work that scales.
    big = os.path.join(tmp, "V3.zarr")
    write_zarr(np.vstack([V, V, V]), big, a.chunk_rows)
    scaling: dict[str, Any] = {}
    for label, store in (("V", path), ("3V", big)):
        raw = {"1": [], "2": []}
        for _ in range(a.rounds):
            raw["1"].append(per_iter(c1, store, W0 if label == "V" else np.vstack([W0] * 3),
                                     H0, k, a.iters, resident=True))
            raw["2"].append(per_iter(c2, store, W0 if label == "V" else np.vstack([W0] * 3),
                                     H0, k, a.iters, resident=True))
        scaling[label] = {"one": merge(raw["1"]), "two": merge(raw["2"])}
        one, two = scaling[label]["one"], scaling[label]["two"]
        log(f"  {label} resident: 1 worker {one['median']:.3f}s, 2 workers "
            f"{two['median']:.3f}s per iteration")
        rows = m * (1 if label == "V" else 3)
        tab.add("overhead", f"throughput, 2 workers / 1 worker (1 thread each; s/iteration of "
                f"1 worker / of 2; V {rows} x {V.shape[1]} resident, "
                f"{rows * V.shape[1] * 4 / 2**20:.0f} MiB)", s(two), s(one),
                *ratio_of(one, two), ">= 1.7", lambda x: x >= 1.7)
    shutil.rmtree(big, ignore_errors=True)
    # t = latency + work / workers, from the four medians (least squares): the latency
    # an iteration pays however large V is, and the speed-up it leaves at each size.
    A, b = [], []
    for label, mult in (("V", 1.0), ("3V", 3.0)):
        for nw, key in ((1, "one"), (2, "two")):
            A.append([1.0, mult / nw])
            b.append(scaling[label][key]["median"])
    (latency, work), *_ = np.linalg.lstsq(np.array(A), np.array(b), rcond=None)
    scaling["model"] = {"latency": latency, "work_per_V": work}
    tab.add("overhead", f"model t = latency + work / workers (4 medians above): latency "
            f"{latency * 1e3:.0f} ms per iteration, work {work:.3f} s per "
            f"{V.nbytes / 2**20:.0f} MiB; 2-worker speed-up at 10x this V (model)",
            f"{latency * 1e3:.0f} ms", f"{work:.3f} s",
            (latency + 10 * work) / (latency + 5 * work), None, "(info)")
    out["workers"] = scaling
    return out


# --------------------------------------------------------------------------- 7. memory


def _reset_peak() -> int:
    """Reset this process's VmHWM to its current RSS; return that RSS in bytes."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return proc_status("VmRSS")


def _peak() -> int:
    return proc_status("VmHWM")


#: Rows per stored chunk of the memory section's Zarr arrays.
MEM_CHUNK_ROWS = 250


def section_memory(c1: Any, tmp: str, a: argparse.Namespace, tab: Table) -> dict[str, Any]:
    """Per-worker peak memory of a fit (1 worker, ``resident=False``) by block rows, k, n, m;
    and by m with W kept in files between passes (``store_W=True``)."""
    from bignmf import NMF

    log("\n== 7. per-worker peak memory (VmHWM) ==")
    base = a.mem_base  # (m, n, k, r)
    configs: list[dict[str, Any]] = [{**dict(zip("mnkr", base, strict=True)), "s": False}]
    for r in a.mem_r:
        configs.append({**configs[0], "r": r})
    for k in a.mem_k:
        configs.append({**configs[0], "k": k})
    for n in a.mem_n:
        configs.append({**configs[0], "n": n})
    # m: on a shape where W's share is large (small n, large k), with W in worker memory
    # and in files (store_W=True), where the m k 4 term should vanish.
    m_base = dict(zip("mnkr", a.mem_m_base, strict=True))
    for m in [m_base["m"], *a.mem_m]:
        for stored in (False, True):
            configs.append({**m_base, "m": m, "s": stored})
    seen, uniq = set(), []
    for c in configs:
        key = tuple(c[x] for x in "mnkrs")
        if key not in seen:
            seen.add(key)
            uniq.append(c)
    stores: dict[tuple[int, int], str] = {}
    rows = []
    rng = np.random.default_rng(a.seed)
    warm_up = True  # the first fit on a fresh worker also pays one-time costs (imports)
    # Each fit twice, the smaller increment taken: what the allocator keeps from one fit to
    # the next moves single measurements by ~10 MiB.
    for c in [uniq[0], *(c for c in uniq for _ in range(2))]:
        mn = (c["m"], c["n"])
        if mn not in stores:
            for p in stores.values():
                shutil.rmtree(p, ignore_errors=True)
            stores.clear()
            p = os.path.join(tmp, f"mem_{mn[0]}_{mn[1]}.zarr")
            X = rng.random(mn, dtype=np.float32)
            write_zarr(X, p, MEM_CHUNK_ROWS)
            del X
            stores[mn] = p
        c1.run(gc.collect)
        time.sleep(0.2)
        before = c1.run(_reset_peak)
        with c1.as_current(), quiet():
            W = NMF(c["k"], init="random", max_iter=2, tol=0.0, resident=False,
                    block_rows=c["r"], random_state=0, store_W=c["s"],
                    checkpoint=os.path.join(tmp, "mem_ck.zarr") if c["s"] else None,
                    ).fit_transform(stores[mn])
            del W
        peak = c1.run(_peak)
        if warm_up:
            warm_up = False
            continue
        wk = next(iter(peak))
        inc = peak[wk] - before[wk]
        log(f"  m={c['m']} n={c['n']} k={c['k']} r={c['r']} store_W={c['s']}: baseline "
            f"{before[wk] / 2**20:.0f} MiB, peak {peak[wk] / 2**20:.0f} MiB, "
            f"+{inc / 2**20:.1f} MiB")
        if rows and all(rows[-1][x] == c[x] for x in "mnkrs"):
            if inc < rows[-1]["increment"]:
                rows[-1].update(baseline=before[wk], peak=peak[wk], increment=inc)
            continue
        rows.append({**c, "baseline": before[wk], "peak": peak[wk], "increment": inc})
    for p in stores.values():
        shutil.rmtree(p, ignore_errors=True)
    # model (least squares): increment = c1 r n 4 + c2 min(r, 4 chunk rows) n 4
    # + c3 (r + n) k 8 + c4 m k 4 + c0, with c4's term 0 with W in files. The c2 term: Zarr
    # decodes several chunks of a block at once (the n dependence is ~2x the r dependence).
    # (A cap at Zarr's async.concurrency = 10 chunks, tried, fitted no better: max error
    # 0.29 against 0.25 on the same 14 fits.)
    c_rows = 4 * MEM_CHUNK_ROWS
    A = np.array([[r["r"] * r["n"] * 4, min(r["r"], c_rows) * r["n"] * 4,
                   (r["r"] + r["n"]) * r["k"] * 8, 0 if r["s"] else r["m"] * r["k"] * 4, 1]
                  for r in rows], dtype=float)
    y = np.array([r["increment"] for r in rows], dtype=float)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    pred = A @ coef
    for r, p_ in zip(rows, pred, strict=True):
        r["model"] = float(p_)
    rel = np.abs(pred - y) / np.maximum(y, 1)
    out = {"rows": rows, "coef": coef.tolist(), "max_rel_err": float(rel.max())}
    formula = (f"peak - baseline = {coef[0]:.2f} x r*n*4 + {coef[1]:.2f} x min(r, {c_rows})*n*4 "
               f"+ {coef[2]:.1f} x (r+n)*k*8 + {coef[3]:.2f} x m*k*4 (0 with store_W) + "
               f"{coef[4] / 2**20:.1f} MiB")
    out["formula"] = formula
    log("  fitted: " + formula + f" (max relative error {rel.max():.2f})")
    out["table"] = memory_table(rows)
    log(out["table"])
    tab.add("memory", f"per-worker peak memory model ({len(rows)} fits, 1 worker, "
            f"resident=False): {formula}", "", "", float(rel.max()), None,
            "fits within 0.2", lambda x: x <= 0.2, unit=" max rel. err")
    for stored in (False, True):
        ms = [r for r in rows if (r["n"], r["k"], r["r"]) == tuple(a.mem_m_base[1:])
              and r["s"] == stored]
        if len(ms) < 2:
            continue
        lo, hi = min(ms, key=lambda r: r["m"]), max(ms, key=lambda r: r["m"])
        where = "W in files (store_W=True)" if stored else "W in worker memory (store_W=False)"
        tab.add("memory", f"peak increment at m={hi['m']} / at m={lo['m']}, {where} "
                f"(n={lo['n']}, k={lo['k']}, r={lo['r']}; W {hi['m'] * hi['k'] * 4 / 2**20:.0f} "
                "MiB at the larger m)", f"{hi['increment'] / 2**20:.1f} MiB",
                f"{lo['increment'] / 2**20:.1f} MiB", hi["increment"] / lo["increment"],
                None, "~1 (<= 1.1)" if stored else "(info)",
                (lambda x: x <= 1.1) if stored else None)
    return out


def memory_table(rows: list[dict[str, Any]]) -> str:
    out = ["| m | n | k | block rows r | W in files | block MiB | baseline MiB | "
           "peak - baseline MiB | model MiB |", "|---:|---:|---:|---:|:---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['m']} | {r['n']} | {r['k']} | {r['r']} | {'yes' if r['s'] else ''} | "
                   f"{r['r'] * r['n'] * 4 / 2**20:.1f} | {r['baseline'] / 2**20:.0f} | "
                   f"{r['increment'] / 2**20:.1f} | {r['model'] / 2**20:.1f} |")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, fewer rounds (1-2 min)")
    p.add_argument("--json", metavar="PATH", help="save all results as JSON")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections (default all: {','.join(SECTIONS)})")
    p.add_argument("--profile", action="store_true",
                   help="also cProfile one in-memory bignmf fit (dense) and print the top")
    p.add_argument("--tmpdir", default=None, help="where Zarr stores are written")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minima-seeds", type=int, default=None, metavar="N",
                   help="seeds for where each method ends on the sparse text (default 5; "
                   "2 with --quick)")
    a = p.parse_args(argv)
    q = a.quick
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = sorted(set(a.only) - set(SECTIONS))
    if bad:
        p.error(f"unknown sections {bad}; choose from {', '.join(SECTIONS)}")
    a.m, a.n, a.k = (4000, 1000, 16) if q else (20000, 5000, 32)
    a.sparse_k = 10 if q else 32
    a.iters = 4 if q else 6
    a.rounds = 2 if q else 3
    a.gemm_reps = 3
    a.error_rounds = 1 if q else 2
    a.ref_iter = 200
    a.minima_seeds = a.minima_seeds or (2 if q else 5)
    a.minima_iter = 300
    a.chunk_rows = 500 if q else 1000
    a.codec_chunks = [500] if q else [250, 1000, 4000]
    a.codec_shape = (4000, 1000) if q else (20000, 2000)
    a.codec_reps = 1 if q else 2
    a.task_blocks = [2, 8] if q else [4, 10, 20]
    a.many_shape = (20000, 200) if q else (50000, 1000)
    a.many_blocks = 1000
    a.mem_base = (10000, 500, 16, 1000) if q else (20000, 2000, 16, 2000)
    a.mem_r = [500, 4000] if q else [500, 1000, 4000, 8000]
    a.mem_k = [32] if q else [8, 32, 64]
    a.mem_n = [1000] if q else [1000, 4000]
    a.mem_m_base = (10000, 250, 32, 1000) if q else (20000, 500, 64, 2000)
    a.mem_m = [40000] if q else [160000]
    a.compressed_timeout = 300 if q else 600
    a.io_bandwidth = 100e6 if q else 150e6
    a.io_iters = 2 if q else 3
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse(argv)
    t_start = time.perf_counter()
    tab = Table()
    facts = core.machine_facts()
    res: dict[str, Any] = {"args": {k: v for k, v in vars(a).items()}, "machine": facts,
                           "load_start": load(), "command": " ".join(
                               [os.path.basename(sys.executable), *sys.argv])}
    log(f"bignmf benchmark suite ({'quick' if a.quick else 'full'}): sections {a.only}; "
        f"load average {res['load_start']}")
    tmp = tempfile.mkdtemp(prefix="bignmf-suite-", dir=a.tmpdir)
    V = None
    clients: dict[int, Any] = {}
    try:
        need_V = {"dense", "init", "ooc", "resident", "overhead"} & set(a.only)
        if need_V:
            t, V = timed(lambda: core.make_data(a.m, a.n, a.k, 0.1, a.seed))
            log(f"data: V {a.m} x {a.n} float32 ({V.nbytes / 2**20:.0f} MiB) in {t:.1f}s")
        if "dense" in a.only:
            res["dense"] = section_dense(V, a.k, a, tab)
            if a.profile:
                W0, H0 = core.random_init(V, a.k, a.seed)
                res["profile"] = core.profile_bignmf(V, W0, H0, a.k, 3)
                log(res["profile"])
        if "sparse" in a.only:
            res["sparse"] = section_sparse(a, tab)
        path = os.path.join(tmp, "V.zarr")
        if {"init", "ooc", "resident", "overhead"} & set(a.only):
            wt = write_zarr(V, path, a.chunk_rows)
            log(f"\nV written to Zarr: {du(path) / 2**20:.0f} MiB in {wt:.1f}s "
                f"(chunks of {a.chunk_rows} rows, zarr default zstd)")
        if "init" in a.only:
            res["init"] = section_init(V, path, a.k, a, tab)
        if "compressed" in a.only:
            # Its own process, on no cluster: before the suite's clusters start.
            res["compressed"] = section_compressed(a, tab)
        distributed_sections = {"ooc", "codecs", "resident", "overhead", "memory"}
        if distributed_sections & set(a.only):
            t, clients[2] = timed(lambda: start_cluster(2, "4GiB"))
            log(f"\nLocalCluster: 2 workers x 1 thread, 4 GiB each, started in {t:.1f}s")
        if {"overhead", "memory"} & set(a.only):
            t, clients[1] = timed(lambda: start_cluster(1, "6GiB"))
            log(f"LocalCluster: 1 worker x 1 thread, 6 GiB, started in {t:.1f}s")
        cold = drop_caches()
        res["drop_caches"] = cold
        if distributed_sections & set(a.only):
            log("dropping the page cache: " + ("works" if cold else
                                              "NOT permitted: reads below are page-cached"))
        if "ooc" in a.only:
            res["ooc"] = section_ooc(clients[2], path, V, a.k, a, tab, cold)
        if "codecs" in a.only:
            rng = np.random.default_rng(a.seed)
            mc, nc = a.codec_shape
            dense = (V[:mc, :nc].copy() if V is not None and V.shape[0] >= mc
                     and V.shape[1] >= nc else core.make_data(mc, nc, 16, 0.1, a.seed))
            sets = [(f"dense float32 low-rank + noise {mc} x {nc}", dense)]
            counts = tenx_counts()
            if counts is not None:
                sets.append((f"10x single-cell counts {counts.shape[0]} x {counts.shape[1]} "
                             f"({(counts > 0).mean():.0%} non-zero)", counts))
            del rng
            res["codecs"] = section_codecs(clients[2], tmp, sets, a.codec_chunks, a, tab,
                                           cold)
        if "resident" in a.only:
            res["resident"] = section_resident(clients[2], path, V, a.k, a, tab)
        if "overhead" in a.only:
            res["overhead"] = section_overhead(clients[1], clients[2], tmp, path, V, a.k, a,
                                               tab)
        if "memory" in a.only:
            res["memory"] = section_memory(clients[1], tmp, a, tab)
    finally:
        for c in clients.values():
            with contextlib.suppress(Exception):
                close_cluster(c)
        shutil.rmtree(tmp, ignore_errors=True)
    res["load_end"] = load()
    res["total_seconds"] = time.perf_counter() - t_start
    res["table"] = tab.rows
    report = render(res, tab)
    log("\n" + report)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist")
                      else str(o))
        log(f"\nresults saved to {a.json}")
    return res


def tenx_counts() -> np.ndarray | None:
    """The 10x single-cell UMI counts (dense float32) from the shared data, if present."""
    import zarr

    p = os.path.join(DATA, "genomics", "10x-10k-subset.zarr")
    if not os.path.exists(p):
        return None
    with contextlib.suppress(Exception):
        return np.asarray(zarr.open_array(p, path="X", mode="r")[...], dtype=np.float32)
    return None


def render(res: dict[str, Any], tab: Table) -> str:
    f = res["machine"]
    ls, le = res["load_start"], res["load_end"]

    def lf(x: Any) -> str:
        return "n/a" if not x else "/".join(f"{v:.1f}" for v in x)

    lines = [
        f"## bignmf benchmark suite — {'quick' if res['args']['quick'] else 'full'}, "
        f"{res['total_seconds']:.0f} s, load average (1/5/15 min) {lf(ls)} at start, "
        f"{lf(le)} at end",
        "",
        f"`{res['command']}` — {f.get('cpu_model')}, {f['cpu_count']} cores, "
        f"{f.get('memory_gib')} GiB; BLAS: {core.blas_line(f)}; "
        + ", ".join(f"{k} {v}" for k, v in f["versions"].items()),
        "",
        tab.markdown(),
        "",
        "Ratios are of timings taken side by side in this run, median over interleaved "
        "rounds (minimum in brackets); 'met?' is judged on the median.",
    ]
    mem = res.get("memory")
    if mem:
        lines += ["", "### Per-worker peak memory", "", mem["formula"], "", mem["table"]]
    cod = res.get("codecs")
    if cod:
        lines += ["", "### Read pass by compressor and chunk size (page cache dropped before "
                  "each pass)" if res.get("drop_caches") else "### Read pass by compressor and "
                  "chunk size (page-cached)", ""]
        for dname, d in cod.items():
            lines += [f"{dname}:", "", "| compressor | chunk rows | chunk MiB | compression | "
                      "write s | read pass s median (min) |", "|---|---:|---:|---:|---:|---:|"]
            for r in sorted(d["rows"], key=lambda r: r["read"]["median"]):
                lines.append(f"| {r['codec']} | {r['chunk_rows']} | {r['chunk_mib']:.1f} | "
                             f"{r['ratio']:.2f}x | {r['write']:.2f} | "
                             f"{r['read']['median']:.3f} ({r['read']['min']:.3f}) |")
            lines.append("")
    comp = res.get("compressed")
    if comp and comp.get("table") is not None:
        lines += ["", "### Compressed NMF (bench_compressed.py)", "", *comp["table"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
