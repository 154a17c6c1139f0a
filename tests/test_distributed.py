"""Distribution with real schedulers: determinism, where the work runs, and graph size.

* The same ``random_state`` gives bitwise identical W and H on the synchronous, threaded and
  distributed schedulers (a real ``dask scheduler`` + 2 ``dask worker`` processes), and the
  in-memory NumPy fit's factors up to the order of floating-point summation.
* With no client and no configured scheduler, fitting a Zarr path starts bignmf's embedded
  cluster, and a second fit reuses it (checked in a fresh interpreter running a plain script,
  as users write them: no ``if __name__ == "__main__":`` guard).
* With a user's ``Client``, the work runs on that client's cluster (its workers run the
  tasks and read V), and no embedded cluster is started.
* The graph of one iteration has ``5 * n_blocks`` tasks, whatever the iteration, the
  stored chunking or the matrix size: it grows with the number of row blocks only.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import dask
import dask.array as da
import numpy as np
import psutil
import pytest
from conftest import (
    LowRankRows,
    assert_same_fit,
    chunk_keys,
    open_logged,
    python_env,
    read_counts,
    read_log,
    running_cluster,
    write_zarr,
)
from dask.utils import key_split
from distributed import Client, get_task_stream
from numpy.testing import assert_array_equal

from bignmf import NMF, checkpoint, cluster
from bignmf.executor import DaskExecutor
from bignmf.passes import FAN_IN, Sums, tree_sum

N_SAMPLES, N_FEATURES, RANK = 1200, 90, 4
CHUNK_ROWS, BLOCK_ROWS = 100, 200  # 12 stored row chunks, 6 row blocks
FIT: dict[str, Any] = dict(n_components=RANK, random_state=0, max_iter=10, tol=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(path of a Zarr store on disk, the same matrix in memory): float64, 1200 x 90."""
    X = LowRankRows(N_FEATURES, RANK, seed=1, dtype=np.float64).dense(N_SAMPLES)
    path = write_zarr(tmp_path_factory.mktemp("data") / "V.zarr", X,
                      chunks=(CHUNK_ROWS, N_FEATURES))
    return path, X


def assert_same_to_rounding(actual, desired):
    """Equal up to floating-point rounding of float64 (measured differences: 1e-14 to 2e-10
    relative; the per-block sweep stop this guards against moved factors by 3-12%)."""
    np.testing.assert_allclose(actual, desired, rtol=1e-8, atol=1e-10 * np.abs(desired).max())


def _factors(X, **params):
    est = NMF(**{**FIT, **params})
    W = est.fit_transform(X)
    if hasattr(W, "compute"):
        W = W.compute()
    return np.asarray(W), est.components_


# --------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("init", ["random", "nndsvda"])
def test_same_seed_same_factors_on_every_scheduler(dataset, real_cluster, init):
    """Bitwise identical W and H on every scheduler (the default ``inner_sweeps='auto'``).

    Each block's kernel is a deterministic function of its inputs and the partial sums are
    added in a fixed tree order, so where and in which order tasks run cannot change a bit.
    """
    path, _ = dataset
    runs = {}
    for scheduler in ("synchronous", "threads"):
        with dask.config.set(scheduler=scheduler):
            runs[scheduler] = _factors(path, init=init, block_rows=BLOCK_ROWS)
    with real_cluster.client.as_current():
        runs["distributed"] = _factors(path, init=init, block_rows=BLOCK_ROWS)
        runs["distributed, again"] = _factors(path, init=init, block_rows=BLOCK_ROWS)

    W_ref, H_ref = runs["synchronous"]
    assert W_ref.shape == (N_SAMPLES, RANK)
    for name, (W, H) in runs.items():
        assert_same_fit(W, W_ref, err_msg=name)
        assert_same_fit(H, H_ref, err_msg=name)


@pytest.mark.parametrize("init", ["random", "nndsvda"])
def test_same_factors_as_in_memory_numpy_fit(dataset, init):
    """The in-memory NumPy fit (one block, no dask) finds the same factors.

    With several blocks, ``W^T V`` and ``W^T W`` are sums of per-block products added as a
    tree instead of one product over all rows: the same numbers summed in another order, so
    equal to rounding (measured ~4e-14 relative). With a single block
    the dask fit computes exactly what the NumPy fit computes: bitwise equal.
    """
    path, X = dataset
    W_np, H_np = _factors(X, init=init)
    with dask.config.set(scheduler="synchronous"):
        W_blocks, H_blocks = _factors(path, init=init, block_rows=BLOCK_ROWS)
        W_one, H_one = _factors(path, init=init, block_rows=N_SAMPLES)
    assert_same_to_rounding(H_blocks, H_np)
    assert_same_to_rounding(W_blocks, W_np)
    assert_same_fit(H_one, H_np)
    assert_same_fit(W_one, W_np)


@pytest.mark.parametrize("solver", ["cd", "mu"])
def test_factors_do_not_depend_on_block_rows(dataset, solver):
    """``block_rows`` (by default derived from the workers' memory limit) is not a parameter
    of the result: 1, 4 and 12 blocks give the same factors up to rounding.

    Regression test: the adaptive stop of the inner sweeps on W (``inner_sweeps='auto'``)
    used to be decided per block, so results moved by several percent with the blocking.
    """
    path, _ = dataset
    results = {}
    with dask.config.set(scheduler="synchronous"):
        for rows in (N_SAMPLES, 300, CHUNK_ROWS):
            results[rows] = _factors(path, init="nndsvda", solver=solver, block_rows=rows)
    W_ref, H_ref = results[N_SAMPLES]
    for W, H in results.values():
        assert_same_to_rounding(H, H_ref)
        assert_same_to_rounding(W, W_ref)


def test_workers_do_not_import_scikit_learn(dataset, tmp_path):
    """The kernels and the update of H that run on workers import numpy, scipy and bignmf's
    own small modules, not scikit-learn (~1 s and ~60 MB per worker process). On workers of
    their own: other tests run this module's functions on the shared cluster, which imports
    the module and scikit-learn with it."""
    path, _ = dataset
    with running_cluster(tmp_path / "cluster", n_workers=2, memory_limit="1GB") as fresh:
        with fresh.client.as_current():
            NMF(**FIT, init="random").fit(path)
            NMF(**{**FIT, "max_iter": 3}, init="nndsvda", solver="mu",
                beta_loss="kullback-leibler").fit(path)
        # (a builtin: a function of this module would import it, and so scikit-learn)
        imported = fresh.client.run(eval, '"sklearn" in __import__("sys").modules')
    assert not any(imported.values()), imported


class _Stop(Exception):
    pass


def test_next_iteration_started_early_changes_nothing(dataset, real_cluster, tmp_path):
    """On a cluster each iteration is started before the client has the previous one's
    loss. The fit still stops where the in-memory fit does (the iteration started after the
    converged one is dropped), and a checkpoint written while the next iteration ran
    resumes to the same fit: it holds its own iteration's random state (shuffle=True), not
    the state after the next one's draws."""
    path, X = dataset
    params = dict(n_components=RANK, random_state=0, shuffle=True, init="random",
                  resident=True)  # (passes are started ahead when V is resident)
    ref = NMF(**params, tol=1e-4, max_iter=500).fit(X)
    assert 5 < ref.n_iter_ < 500
    with real_cluster.client.as_current():
        est = NMF(**params, tol=1e-4, max_iter=500, block_rows=N_SAMPLES // 3).fit(path)
    assert est.n_iter_ == ref.n_iter_
    assert_same_to_rounding(est.components_, ref.components_)
    assert_same_to_rounding(est.loss_history_, ref.loss_history_)

    def stop_after_5(info):
        if info.iteration == 5:
            raise _Stop

    store = tmp_path / "ck.zarr"
    fixed = dict(**params, tol=0, max_iter=10, block_rows=N_SAMPLES // 3)
    with real_cluster.client.as_current():
        with pytest.raises(_Stop):
            NMF(**fixed, checkpoint=store, checkpoint_every=2).fit(path, callback=stop_after_5)
        assert checkpoint.latest(store).endswith("ckpt-000004")
        resumed = NMF(**fixed, checkpoint=store, checkpoint_every=2).fit(path, resume=True)
    full = NMF(**params, tol=0, max_iter=10).fit(X)
    assert resumed.n_iter_ == 10
    assert_same_to_rounding(resumed.components_, full.components_)
    assert_same_to_rounding(resumed.loss_history_, full.loss_history_)


def test_kernels_stay_spread_over_the_workers_when_V_is_read_from_storage(tmp_path,
                                                                          real_cluster):
    """With V read from Zarr each pass, a kernel's largest input in memory is its W block;
    H comes from the client, so the scheduler keeps each block's kernel with its W block
    and both workers get half of the blocks. Here a block's W (1000 x 32) is the size of H
    (32 x 1000): when a worker held the new H it drew most kernels (3 of 4 in the
    benchmark: 15% slower passes)."""
    X = LowRankRows(1000, 32, seed=4).dense(4000)
    path = write_zarr(tmp_path / "V.zarr", X, chunks=(1000, 1000))
    n_blocks, max_iter = 4, 8
    with real_cluster.client.as_current(), get_task_stream(real_cluster.client) as stream:
        NMF(32, init="random", random_state=0, tol=0, max_iter=max_iter,
            resident=False, block_rows=1000).fit(path)
    per_worker = Counter(t["worker"] for t in stream.data
                         if key_split(t["key"]) == "frobenius_step")
    assert sum(per_worker.values()) == n_blocks * max_iter, per_worker
    assert len(per_worker) == 2 and min(per_worker.values()) >= 0.4 * n_blocks * max_iter, \
        per_worker


def test_resident_blocks_are_spread_evenly_over_the_workers(dataset, real_cluster):
    """Resident block i goes to worker i mod 2 (in address order); the kernels then run
    where their blocks are. (Left to the scheduler, 10 resident blocks were sometimes split
    6:4 in the benchmark, and the kernels followed them. The kernels of these tiny blocks
    are not counted here: work stealing moves them freely, as it would not 100 MB ones.)"""
    path, _ = dataset
    n_blocks, max_iter = 6, 4
    workers = sorted(real_cluster.client.scheduler_info()["workers"])
    with real_cluster.client.as_current(), get_task_stream(real_cluster.client) as stream:
        NMF(**{**FIT, "max_iter": max_iter}, init="random", resident=True,
            block_rows=N_SAMPLES // n_blocks).fit(path)
    loads = {t["key"][1]: t["worker"] for t in stream.data
             if key_split(t["key"]) == "load_block"}
    assert loads == {i: workers[i % 2] for i in range(n_blocks)}, loads


# --------------------------------------------------------------------------- embedded default
EMBEDDED_SCRIPT = """\
import json
import os
import sys

import dask
import distributed
import psutil

from bignmf import NMF, checkpoint, cluster

path = sys.argv[1]
assert dask.config.get("scheduler", None) is None, dask.config.get("scheduler")
assert not cluster._embedded


def state(client):
    return {
        "scheduler": client.scheduler.address,
        "workers": sorted(client.scheduler_info(n_workers=-1)["workers"]),
        "nthreads": sorted(client.nthreads().values()),
        "worker_pids": sorted(client.run(os.getpid).values()),
        "children": sorted(p.pid for p in psutil.Process().children(recursive=True)),
        "tunables": sorted(set(client.run(os.getenv, "GLIBC_TUNABLES").values())),
    }


est = NMF(n_components=4, init="random", random_state=0, max_iter=10, tol=0)
W1 = est.fit_transform(path)
client = cluster._embedded["client"]
first = state(client)
default_is_embedded = distributed.default_client() is client
W1 = W1.compute()  # W lives on the embedded cluster, dask's default client now

est2 = NMF(n_components=4, init="random", random_state=0, max_iter=10, tol=0)
W2 = est2.fit_transform(path).compute()
again = cluster._embedded["client"]
print("RESULT " + json.dumps({
    "first": first, "second": state(again), "same_client": again is client,
    "default_is_embedded": default_is_embedded,
    "own_tunables": os.environ.get("GLIBC_TUNABLES"),
    "W1": W1.tolist(), "H1": est.components_.tolist(),
    "W2": W2.tolist(), "H2": est2.components_.tolist(),
}))
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_embedded_cluster_started_once_and_reused(dataset, tmp_path):
    """A plain script with no scheduler configured: the first fit of a Zarr path starts one
    worker process per core (1 thread each), the second fit reuses that cluster (same
    scheduler, same worker processes, no new child process), W computes on it, and every
    process of it is gone once the script exits. The workers run with huge pages for
    malloc's large mappings added to the user's glibc tunables; the user's process keeps
    its own."""
    path, X = dataset
    script = tmp_path / "user_script.py"
    script.write_text(EMBEDDED_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), path], cwd=tmp_path,
        env=python_env(GLIBC_TUNABLES="glibc.malloc.arena_max=8"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    result = json.loads(next(line for line in out.splitlines()
                             if line.startswith("RESULT "))[len("RESULT "):])

    first, second = result["first"], result["second"]
    assert result["same_client"]
    assert result["default_is_embedded"]
    n_cores = os.cpu_count() or 1
    assert len(first["workers"]) == n_cores
    assert first["nthreads"] == [1] * n_cores
    assert second == first  # same scheduler, workers, processes: nothing new started
    assert set(first["worker_pids"]) <= set(first["children"])
    assert first["tunables"] == ["glibc.malloc.arena_max=8:glibc.malloc.hugetlb=1"]
    assert result["own_tunables"] == "glibc.malloc.arena_max=8"

    W1, H1 = np.array(result["W1"]), np.array(result["H1"])
    assert_same_fit(W1, np.array(result["W2"]))
    assert_same_fit(H1, np.array(result["H2"]))
    W_np, H_np = _factors(X, init="random", max_iter=10)
    assert_same_to_rounding(H1, H_np)
    assert_same_to_rounding(W1, W_np)

    # The embedded cluster was closed with the interpreter: none of its processes is left.
    deadline = time.monotonic() + 30
    while not all(_gone(pid) for pid in first["children"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [pid for pid in first["children"] if not _gone(pid)] == []


def test_embedded_cluster_respects_the_users_glibc_tunables(monkeypatch):
    """Huge pages are added to the user's tunables, not over their own choice of the same
    tunable, nor over a ``GLIBC_TUNABLES`` they gave the workers in Dask's configuration;
    the user's environment is restored after the processes start."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert cluster._cluster_environ() == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
    assert cluster._cluster_environ() == {}
    monkeypatch.delenv("GLIBC_TUNABLES")
    with dask.config.set({"distributed.nanny.pre-spawn-environ.GLIBC_TUNABLES": ""}):
        assert cluster._cluster_environ() == {}
    with pytest.raises(RuntimeError), cluster._environ({"GLIBC_TUNABLES": "x"}):
        assert os.environ["GLIBC_TUNABLES"] == "x"
        raise RuntimeError
    assert "GLIBC_TUNABLES" not in os.environ


# --------------------------------------------------------------------------- a user's Client
def test_active_client_runs_the_fit_on_its_cluster(dataset, real_cluster, read_log_path):
    """A user's ``Client`` (the default client, as ``Client(...)`` makes it): the fit's tasks
    run on that cluster's workers, those worker processes read V, and bignmf starts no
    embedded cluster."""

    path, X = dataset
    max_iter = 4
    n_blocks = N_SAMPLES // BLOCK_ROWS
    worker_pids = real_cluster.worker_pids()
    assert not cluster._embedded
    with Client(scheduler_file=real_cluster.scheduler_file) as client:
        assert cluster.active_client() is client
        with get_task_stream(client) as stream:
            est = NMF(**{**FIT, "max_iter": max_iter}, init="random", block_rows=BLOCK_ROWS,
                      resident=False)  # read from storage in every pass
            W = est.fit_transform(open_logged(path, read_log_path))
            W = W.compute()
        assert not cluster._embedded
    assert W.shape == (N_SAMPLES, RANK)

    tasks = stream.data
    assert {t["worker"] for t in tasks} <= set(worker_pids)
    kinds = Counter(key_split(t["key"]) for t in tasks)
    assert kinds["frobenius_step"] == n_blocks * max_iter
    assert kinds["block_stats"] == n_blocks  # the one pass of init='random'

    keys = chunk_keys(open_logged(path, read_log_path))
    assert read_counts(read_log_path) == dict.fromkeys(keys, 1 + max_iter)
    assert {pid for pid, _ in read_log(read_log_path)} <= set(worker_pids.values())

    _, H_np = _factors(X, init="random", max_iter=max_iter)
    assert_same_to_rounding(est.components_, H_np)


# --------------------------------------------------------------------------- graph size
class CountingScheduler:
    """A dask scheduler (``dask.config.set(scheduler=...)``) that runs graphs synchronously
    and records, for each graph it is given, the number of tasks per key prefix."""

    def __init__(self) -> None:
        self.graphs: list[Counter[str]] = []

    def __call__(self, dsk, keys, **kwargs):
        graph = dict(dsk.__dask_graph__()) if hasattr(dsk, "__dask_graph__") else dict(dsk)
        self.graphs.append(Counter(key_split(key) for key in graph))
        return dask.local.get_sync(dsk, keys, **kwargs)

    def iteration_graphs(self) -> list[Counter[str]]:
        """The graphs of the iterations (those that run the fused W/H kernel)."""
        return [g for g in self.graphs if "frobenius_step" in g]


def _iteration_graph_sizes(path, block_rows, max_iter=3, **params):
    counting = CountingScheduler()
    with dask.config.set(scheduler=counting):
        est = NMF(n_components=params.pop("n_components", RANK), init="random",
                  random_state=0, max_iter=max_iter, tol=0, block_rows=block_rows, **params)
        est.fit(path)
    graphs = counting.iteration_graphs()
    assert len(graphs) == max_iter
    return graphs


def _combine_tasks(n_blocks: int) -> int:
    """Tasks of the tree that combines ``n_blocks`` partial sums, :data:`FAN_IN` at a time
    (one per group of more than one part, level by level)."""
    tasks = 0
    while n_blocks > 1:
        groups, last = divmod(n_blocks, FAN_IN)
        tasks += groups + (last > 1)
        n_blocks = groups + (last > 0)
    return tasks


def test_combine_tasks():
    """The count above is that of tree_sum's combine calls, and a tree of 8-way groups."""
    for n in (1, 2, 8, 9, 12, 64, 65, 1000):
        calls: list[int] = []

        def combine(*group: int, calls: list[int] = calls) -> int:
            calls.append(len(group))
            return sum(group)

        total = tree_sum(list(range(n)), combine)
        assert total == sum(range(n)) and len(calls) == _combine_tasks(n)
        assert all(2 <= size <= FAN_IN for size in calls)
    assert [_combine_tasks(n) for n in (1, 2, 8, 9, 64, 1000)] == [0, 1, 1, 2, 9, 144]


def test_float32_sums_accumulate_in_float64():
    """A kernel's float32 ``W_i^T V_i`` goes between workers at half the bytes, and block
    sums still add up in float64, to the bits of adding the parts' float64 copies; counts
    stay integers."""
    rng = np.random.default_rng(0)
    parts = [Sums(WtV=rng.random((4, 7), dtype=np.float32) * 10.0 ** e, observed=np.int64(3))
             for e in range(-3, 6)]
    wide = [Sums(WtV=p["WtV"].astype(np.float64), observed=p["observed"]) for p in parts]
    total, reference = tree_sum(parts), tree_sum(wide)
    assert total["WtV"].dtype == np.float64
    assert_array_equal(total["WtV"], reference["WtV"])
    assert total["observed"] == 27 and np.asarray(total["observed"]).dtype.kind == "i"
    # float32 addition would have lost the small parts: the test can fail.
    narrow = parts[0]["WtV"]
    for p in parts[1:]:
        narrow = narrow + p["WtV"]
    assert not np.array_equal(narrow.astype(np.float64), reference["WtV"])


def test_a_started_pass_does_not_hold_its_inputs(real_cluster):
    """Once a pass is started, only the caller's references keep its inputs (the previous
    W blocks) in the workers' memory: the fit drops them, so each block is freed once its
    kernel has run. A started pass that kept the graph it was built from kept every input
    until the whole pass was done: two generations of W at the peak of each pass."""
    client = real_cluster.client
    ex = DaskExecutor(da.ones((40, 3), chunks=(10, 3)), client=client)
    for fetch in (True, False):
        W_in = ex.put([np.full((10, 2), i, dtype=float) for i in range(4)])
        keys = [w.key for w in W_in]
        assert all(client.refcount.get(key) for key in keys)  # (the test can fail)
        outs = ex.map(np.multiply, W_in, W_in)
        pending = ex.start(outs, ex.total(outs) if fetch else None)
        del W_in, outs
        # distributed itself holds the inputs of a graph it has just been given for a few
        # milliseconds (measured: released within 25 ms, in 3 of 40 starts not at once);
        # a started pass that kept them would keep them for as long as it lives.
        deadline = time.monotonic() + 5.0
        while True:
            gc.collect()  # (delayed objects refer to each other in cycles)
            if not any(client.refcount.get(key) for key in keys) or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert not any(client.refcount.get(key) for key in keys)
        kept, total = pending.result()
        assert_array_equal(ex.value(kept[3]), np.full((10, 2), 9.0))
        if fetch:
            assert_array_equal(total, np.full((10, 2), 14.0))


def _inner_combine_tasks(n_blocks: int) -> int:
    """The combine tasks of the tree but its root: the task that updates H adds the last
    group of partial sums itself."""
    return _combine_tasks(n_blocks) - (n_blocks > 1)


def _small_W(block_rows: int, n: int, itemsize: int) -> bool:
    """Whether a block's W (block_rows x RANK) is no larger than its k x n float64 sums: the
    update of H then takes the sums from the kernels' results in its own tasks."""
    return block_rows * RANK * itemsize <= RANK * n * 8


def _graph_tasks(n_blocks: int, small_W: bool) -> int:
    """Tasks of one iteration's graph (see the test below)."""
    return (4 - small_W) * n_blocks + 3 + _inner_combine_tasks(n_blocks)


@pytest.mark.parametrize("n_blocks", [1, 2, 3, 6, 12, 24])
def test_tasks_per_iteration_grow_with_row_blocks_only(dataset, tmp_path, n_blocks):
    """Each iteration submits one graph of ``4 * n_blocks + 3`` tasks plus the combining
    tree: per block one fused kernel (which reads the block of V), two outputs taken from
    it, the incoming W block; the tree's combine tasks but its root (8 partial sums each);
    the update of H (which adds the root's sums), the loss taken from it, and the incoming
    H. When a block's W is no larger than its sums, the combining tasks take the sums from
    the kernels' results themselves: ``3 * n_blocks + 3`` plus the tree. It does not grow
    over the iterations, and does not depend on the stored chunking of V."""
    path, X = dataset
    block_rows = N_SAMPLES // n_blocks
    small = _small_W(block_rows, N_FEATURES, X.dtype.itemsize)
    assert small == (n_blocks >= 24)  # (both kinds of graph are tested)
    graphs = _iteration_graph_sizes(path, block_rows)
    for graph in graphs:
        assert sum(graph.values()) == _graph_tasks(n_blocks, small), graph
        assert graph["frobenius_step"] == n_blocks
        assert graph["add_in_order"] == _inner_combine_tasks(n_blocks)
        # this iteration's update of H, and the incoming H: the initial one (a shared
        # array) or the previous update's result
        assert graph["h_step"] + graph["shared"] == 2

    # Same blocks over a store chunked across columns too, with smaller stored chunks and
    # twice the columns: the same graph, but for the size of the sums.
    X = LowRankRows(2 * N_FEATURES, RANK, seed=2).dense(N_SAMPLES)
    other = write_zarr(tmp_path / "other.zarr", X, chunks=(CHUNK_ROWS // 2, 45))
    small = _small_W(block_rows, 2 * N_FEATURES, X.dtype.itemsize)
    assert [sum(g.values()) for g in _iteration_graph_sizes(other, block_rows)] == \
        [_graph_tasks(n_blocks, small)] * 3


def test_tasks_per_iteration_on_a_real_cluster(dataset, real_cluster):
    """On the distributed scheduler, with V resident (so passes start ahead),
    ``2 * n_blocks + 2`` tasks plus the combining tree run per iteration: per block one
    fused kernel (reading V) and the sums taken from it, the tree's combine tasks but its
    root, the update of H and the loss taken from it (counted from the scheduler's task
    stream: tasks of a 3-iteration fit minus those of a 1-iteration fit, over 2). The next
    iteration's kernels take the new W blocks out of the kernels' results inside their own
    tasks, and the W blocks and H of the previous iteration are already in the workers'
    memory, so none of these are tasks. With blocks whose W is no larger than their sums
    (24 blocks of 50 rows here), the sums are not tasks of their own either, and the fit is
    the same as in memory."""
    path, X = dataset
    per_iteration = {}
    with real_cluster.client.as_current():
        for n_blocks in (3, 6, 24):
            counts = {}
            for max_iter in (1, 3):
                with get_task_stream(real_cluster.client) as stream:
                    est = NMF(**{**FIT, "max_iter": max_iter}, init="random",
                              block_rows=N_SAMPLES // n_blocks, resident=True).fit(path)
                counts[max_iter] = Counter(key_split(t["key"]) for t in stream.data)
            diff = counts[3] - counts[1]
            per_iteration[n_blocks] = {k: v / 2 for k, v in diff.items()}
    assert_same_to_rounding(est.components_,
                            NMF(**{**FIT, "max_iter": 3}, init="random").fit(X).components_)
    for n_blocks, kinds in per_iteration.items():
        small = _small_W(N_SAMPLES // n_blocks, N_FEATURES, X.dtype.itemsize)
        expected = {"frobenius_step": n_blocks, "getitem": (1 - small) * n_blocks + 1,
                    "add_in_order": _inner_combine_tasks(n_blocks), "h_step": 1}
        assert kinds == {key: v for key, v in expected.items() if v}, kinds
        assert sum(kinds.values()) == \
            (2 - small) * n_blocks + 2 + _inner_combine_tasks(n_blocks)


@pytest.mark.parametrize("block_rows", [None, 250])
def test_dask_array_that_needs_rechunking_fits_on_a_real_cluster(real_cluster, block_rows):
    """A user's dask array chunked across columns (so bignmf rechunks it into row blocks),
    or with ``block_rows`` given: fitted by the workers, equal to the in-memory fit. (dask's
    ``clone`` breaks rechunked graphs; bignmf renames the keys of the optimized graph.)"""
    import dask.array as da

    rng = np.random.default_rng(3)
    X = rng.random((600, RANK)) @ rng.random((RANK, 80))
    ref = NMF(**FIT, init="nndsvda").fit(X)
    V = da.from_array(X, chunks=(170, 30)).rechunk((200, 40))
    with real_cluster.client.as_current():
        est = NMF(**FIT, init="nndsvda", block_rows=block_rows)
        W = est.fit_transform(V).compute()
        again = NMF(**FIT, init="nndsvda", block_rows=block_rows).fit(V)  # the same V again
    assert_same_fit(est.components_, ref.components_)
    assert_same_fit(W, NMF(**FIT, init="nndsvda").fit_transform(X))
    assert_same_fit(again.components_, ref.components_)


def test_back_to_back_fits_from_the_same_custom_factors(real_cluster):
    """The same custom W scattered by consecutive fits: fresh keys each time (content-hashed
    keys were reused while the scheduler released them: "lost dependencies", ~1 fit in 3)."""
    import dask.array as da

    rng = np.random.default_rng(5)
    X = rng.random((800, 40))
    W0, H0 = rng.random((800, RANK)), rng.random((RANK, 40))
    V = da.from_array(X, chunks=(200, 40))
    with real_cluster.client.as_current():
        fits = [NMF(RANK, init="custom", max_iter=2, tol=0, resident=False)
                .fit(V, W=W0.copy(), H=H0.copy()).components_ for _ in range(6)]
    for H in fits[1:]:
        assert_same_fit(H, fits[0])
