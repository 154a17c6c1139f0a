#!/usr/bin/env python
"""Solver sweeps per factor update (``inner_sweeps``) against time to scikit-learn's error.

    python benchmarks/bench_sweeps.py            # dense 20000 x 5000, k=32; text (~2 min)
    python benchmarks/bench_sweeps.py --quick    # dense 4000 x 1000, k=16; text (~5 s)
    python benchmarks/bench_sweeps.py --rules    # candidate 'auto' rules, 6 matrices (~3 min)
    python benchmarks/bench_sweeps.py --json out.json

The default ``inner_sweeps='auto'`` repeats the HALS sweeps over the components up to
``1 + cost / 2`` times (cost: forming an update's products over one sweep, ``n / k`` for
W, times the share of V's entries that are non-zero), at most 20, until a sweep changes the
factor by less than 0.01 of the first sweep's change (Gillis & Glineur 2012). More sweeps
make an iteration longer and the fit need fewer of them. For each setting (1, 3, 5, 10, 20
sweeps exactly, and ``'auto'``) this prints, in memory, from bignmf's own NNDSVDA start
(``random_state`` 0):

* dense ``V = W H + 10% noise`` (float32, as ``run_all.py``): seconds per iteration
  (steady state), and the iterations and seconds (initialization included) until the error
  of scikit-learn ``cd`` after 200 iterations (``init='nndsvda'``, ``tol=0``), measured in
  the same run;
* sparse TF-IDF of the NLTK movie reviews (``--quick``: State of the Union; skipped when
  the shared data are not there), k = 32 (10): the same, to within 0.1% and 0.01% of
  scikit-learn's error (which local minimum each fit ends in is the seed's draw there, see
  the sparse rows of ``run_all.py``; 0.01% may not be reached).

The per-iteration target of ``run_all.py`` (at most 1.15x the GEMMs) is met with one sweep;
this script shows what the default's sweeps buy for that.

``--rules`` compares candidate rules for ``'auto'`` — the cap, the stopping fraction, and
whether the cost of a sparse V's products is counted by its stored entries (``2 nnz k``
instead of ``2 m n k``) — on the shared data where present: dense low rank + noise, the
swimmer images, a Brahms spectrogram (Frobenius), the 10x counts (sparse), and the two
TF-IDF matrices. Each rule fits each matrix from 3 seeds for a fixed time; the table gives
the median over seeds of ``error / best - 1`` (best: the lowest error any fit of that matrix
reached) at 1/8, 1/4, 1/2 and all of the time. The rules are set on this process's
``bignmf.solvers`` and ``bignmf.fit`` (in-memory fits run here), not through the public
API.

Only ratios taken in this run mean anything. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_core as core
import run_all
from bench_core import log

SETTINGS: list[int | str] = [1, 3, 5, 10, 20, "auto"]


def per_iteration(trace: list[tuple[int, float, float]]) -> float:
    """Steady-state seconds per iteration of a traced fit (its first iteration left out)."""
    if len(trace) < 3:
        return float("nan")
    return (trace[-1][1] - trace[0][1]) / (len(trace) - 1)


def first_at(trace: list[tuple[int, float, float]], level: float) -> tuple[int, float] | None:
    """(iteration, seconds) where the traced error is first at or below ``level``."""
    return next(((i, t) for i, t, e in trace if e <= level), None)


def measure(V: Any, k: int, levels: dict[str, float], max_iter: int, seed: int,
            time_cap: float) -> list[dict[str, Any]]:
    """Each setting, fitted with ``tol=0`` until the lowest of ``levels`` (or the caps)."""
    rows = []
    for sweeps in SETTINGS:
        b = core.bignmf_to_target(V, k, min(levels.values()), time_cap, max_iter, seed,
                                  inner_sweeps=sweeps)
        row: dict[str, Any] = {"inner_sweeps": sweeps, "per_iteration": per_iteration(
            b["trace"]), "iterations": b["n_iter"]}
        for name, level in levels.items():
            row[name] = first_at(b["trace"], level)
        rows.append(row)
        log(f"  inner_sweeps={sweeps}: {row['per_iteration'] * 1e3:.1f} ms/iteration, "
            + ", ".join(f"{name}: " + ("not reached" if row[name] is None else
                                        f"iteration {row[name][0]}, {row[name][1]:.2f} s")
                        for name in levels))
    return rows


def table(title: str, rows: list[dict[str, Any]], levels: list[str], ref: float) -> str:
    out = [f"{title}", "", "| inner_sweeps | s/iteration | "
           + " | ".join(f"{name}: iterations, s (speed-up over scikit-learn)"
                        for name in levels) + " |",
           "|---|---:|" + "---:|" * len(levels)]
    for r in rows:
        cells = []
        for name in levels:
            hit = r[name]
            cells.append("not reached" if hit is None else
                         f"{hit[0]}, {hit[1]:.2f} ({ref / hit[1]:.1f}x)")
        out.append(f"| {r['inner_sweeps']} | {r['per_iteration']:.4f} | "
                   + " | ".join(cells) + " |")
    return "\n".join(out)


#: Candidate rules for ``inner_sweeps='auto'``, per solver: (name, cap, stopping fraction,
#: whether the products' cost is scaled by V's non-zero share). For HALS the first was
#: bignmf's default until 2026-12-01, the fifth is its default since.
RULES = {
    "cd": [("10, 0.1 (old default)", 10, 0.1, False), ("20, 0.01", 20, 0.01, False),
           ("10, 0.01, nnz", 10, 0.01, True), ("20, 0.1, nnz", 20, 0.1, True),
           ("20, 0.01, nnz (default)", 20, 0.01, True), ("30, 0.01, nnz", 30, 0.01, True)],
    "mu": [("10, 0.1", 10, 0.1, False), ("10, 0.1, nnz (default)", 10, 0.1, True),
           ("10, 0.01, nnz", 10, 0.01, True), ("20, 0.1, nnz", 20, 0.1, True),
           ("20, 0.01, nnz", 20, 0.01, True), ("30, 0.01, nnz", 30, 0.01, True)],
}


@contextlib.contextmanager
def auto_rule(cap: int, tol: float, nnz: bool, solver: str = "cd") -> Iterator[None]:
    """``inner_sweeps='auto'`` with another cap and stopping fraction, with or without the
    products' cost scaled by V's non-zero share, for this process's fits with ``solver``
    (``'cd'``: HALS; ``'mu'``: the multiplicative updates)."""
    import bignmf.fit as bf
    import bignmf.solvers as bs

    saved = dict(bs._SOLVERS), bf.nonzero_share
    for name in (("cd", "hals") if solver == "cd" else (solver,)):
        bs._SOLVERS[name] = bs._SOLVERS[name]._replace(auto_sweeps=bs.SweepRule(cap, tol))
    if not nnz:
        bf.nonzero_share = lambda stats, shape: 1.0
    try:
        yield
    finally:
        bs._SOLVERS.update(saved[0])
        bf.nonzero_share = saved[1]


def rule_matrices() -> list[tuple[str, Any, int, float]]:
    """(name, V, k, seconds per fit) for each matrix of ``--rules`` whose data are here."""
    import scipy.io
    import scipy.signal

    out: list[tuple[str, Any, int, float]] = [
        ("dense 20000 x 5000 rank 32 + noise", core.make_data(20000, 5000, 32, 0.1, 0), 32, 3.0)]
    swimmer = os.path.join(run_all.DATA, "images", "swimmer.mat")
    if os.path.exists(swimmer):
        out.append(("swimmer 256 x 1024", scipy.io.loadmat(swimmer)["V"].T.astype(np.float64),
                    17, 0.6))
    audio = os.path.join(run_all.DATA, "audio", "brahms_hungarian_dance_5.ogg")
    with contextlib.suppress(ImportError):
        import soundfile

        if os.path.exists(audio):
            signal, rate = soundfile.read(audio, dtype="float64", always_2d=True)
            _, _, Z = scipy.signal.stft(signal.mean(axis=1), fs=rate, nperseg=2048,
                                        noverlap=2048 - 512)
            out.append(("Brahms spectrogram", np.abs(Z).T, 12, 1.0))
    counts = run_all.tenx_counts()
    if counts is not None:
        out.append(("10x counts (CSR)", sp.csr_matrix(counts), 20, 1.5))
    if os.path.isdir(os.path.join(run_all.DATA, "text")):
        out.append(("State of the Union TF-IDF", run_all.text_matrix(True)[0], 10, 0.4))
        out.append(("movie reviews TF-IDF", run_all.text_matrix(False)[0], 32, 2.0))
    return out


def compare_rules(solver: str = "cd") -> tuple[str, list[dict[str, Any]]]:
    """The ``--rules`` table (markdown) and its raw rows, for ``solver``'s fits."""
    fractions = (1 / 8, 1 / 4, 1 / 2, 1)
    lines = ["| matrix | rule (cap, stop fraction, nnz costing) | iterations | "
             + " | ".join(f"(error / best - 1) x 1e4 at {f:g} T" for f in fractions) + " |",
             "|---|---|---:|" + "---:|" * len(fractions)]
    raw = []
    for name, V, k, seconds in rule_matrices():
        traces = {}
        for rule, cap, tol, nnz in RULES[solver]:
            with auto_rule(cap, tol, nnz, solver):
                traces[rule] = [core.bignmf_to_target(V, k, 0.0, seconds, 10**6, seed,
                                                      solver=solver)["trace"]
                                for seed in range(3)]
        best = min(tr[-1][2] for runs in traces.values() for tr in runs)
        for rule, runs in traces.items():
            excess = [float(np.median([error_at(tr, f * seconds) for tr in runs])) / best - 1
                      for f in fractions]
            its = int(np.median([tr[-1][0] for tr in runs]))
            raw.append({"matrix": name, "rule": rule, "iterations": its, "excess": excess})
            lines.append(f"| {name} (k={k}, T={seconds:g} s) | {rule} | {its} | "
                         + " | ".join(f"{e * 1e4:.2f}" for e in excess) + " |")
            log(lines[-1])
    return "\n".join(lines), raw


def error_at(trace: list[tuple[int, float, float]], t: float) -> float:
    """The traced error at time ``t`` (the last one reported by then; inf before any)."""
    seen = [e for _, s, e in trace if s <= t]
    return seen[-1] if seen else float("inf")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small dense matrix, small corpus")
    p.add_argument("--rules", action="store_true",
                   help="compare candidate rules for inner_sweeps='auto' instead")
    p.add_argument("--solver", choices=["cd", "mu"], default="cd",
                   help="with --rules: the rules of this solver's fits (default cd, HALS)")
    p.add_argument("--json", metavar="PATH", help="save the results as JSON")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.rules:
        text, raw = compare_rules(a.solver)
        print("\n" + text)
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"machine": core.machine_facts(), "solver": a.solver, "rules": raw},
                          f, indent=1)
        return {"rules": raw}
    m, n, k = (4000, 1000, 16) if a.quick else (20000, 5000, 32)
    res: dict[str, Any] = {"machine": core.machine_facts()}
    tables = []

    log(f"== dense in memory: V {m} x {n} float32, rank {k} + 10% noise, k={k} ==")
    V = core.make_data(m, n, k, 0.1, a.seed)
    sk = core.sklearn_to_target(V, k, "cd", 200, a.seed)
    log(f"  scikit-learn cd, 200 iterations: {sk['seconds']:.2f} s, error {sk['err']:.7g}")
    rows = measure(V, k, {"error": sk["err"]}, 2000, a.seed, 2 * sk["seconds"] + 10)
    res["dense"] = {"sklearn": sk, "rows": rows}
    tables.append(table(f"Dense {m} x {n}, k = {k} (scikit-learn cd, 200 iterations: "
                        f"{sk['seconds']:.2f} s)", rows, ["error"], sk["seconds"]))
    del V

    if os.path.isdir(os.path.join(run_all.DATA, "text")):
        X, what = run_all.text_matrix(a.quick)
        k = 10 if a.quick else 32
        log(f"== sparse in memory: {what}, k={k} ==")
        sk = core.sklearn_to_target(X, k, "cd", 200, a.seed, err_fn=run_all.sq_err)
        log(f"  scikit-learn cd, 200 iterations: {sk['seconds']:.2f} s, error {sk['err']:.7g}")
        levels = {"within 0.1%": 1.001 * sk["err"], "within 0.01%": 1.0001 * sk["err"]}
        rows = measure(X, k, levels, 300, a.seed, 2 * sk["seconds"] + 10)
        res["sparse"] = {"matrix": what, "sklearn": sk, "rows": rows}
        tables.append(table(f"Sparse {what}, k = {k} (scikit-learn cd, 200 iterations: "
                            f"{sk['seconds']:.2f} s)", rows, list(levels), sk["seconds"]))
    else:
        log(f"(sparse: skipped, no text corpora in {os.path.join(run_all.DATA, 'text')})")

    print("\n" + "\n\n".join(tables))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    return res


if __name__ == "__main__":
    main()
