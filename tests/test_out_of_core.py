"""Out of core: V on disk is larger than the cluster's memory, and is read once per pass.

The issue's proof (``test_store_4x_cluster_memory_factorized_within_worker_limits``): a V in a
Zarr store on disk at least 4 times the *total* memory limit of a 2-worker cluster of real
``dask worker`` processes is factorized; every worker's true peak RSS (``VmHWM``) stays under
its limit, no worker dies, pauses or restarts; and a read log shows every stored chunk of V
read exactly once per pass (one pass for ``init='random'``, then one per iteration).

The smaller tests check the same one-read-per-pass property quickly, on the threaded
scheduler and on real worker processes, for both initializations and for stores chunked
across columns as well as rows.
"""

from __future__ import annotations

import os
import shutil
import time

import dask
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
from conftest import (
    LowRankRows,
    assert_same_fit,
    chunk_keys,
    disk_bytes,
    open_logged,
    read_counts,
    read_log,
    running_cluster,
    vmhwm,
    vmrss,
    write_zarr,
)

from bignmf import NMF
from bignmf.io import write_csr_blocks

#: Passes over V made by each initialization before the iterations.
INIT_PASSES = {"random": 1, "nndsvda": 2}


def _fit(X, *, init: str, max_iter: int, **kw):
    est = NMF(n_components=4, init=init, random_state=0, max_iter=max_iter, tol=0, **kw)
    W = est.fit_transform(X)
    return est, W


# --------------------------------------------------------------------------- small, fast
@pytest.fixture
def small_store(tmp_path):
    """600 x 80 float32 in stored chunks of 50 x 40 (12 row chunks x 2 column chunks)."""
    X = LowRankRows(80, 4, seed=3).dense(600)
    return write_zarr(tmp_path / "V.zarr", X, chunks=(50, 40)), X


@pytest.mark.parametrize("init", ["random", "nndsvda"])
def test_each_chunk_read_once_per_pass_threads(small_store, read_log_path, init):
    """Threaded scheduler: every chunk read ``init passes + n_iter`` times, and
    ``transform`` reads every chunk once more."""
    path, X = small_store
    max_iter = 3
    with dask.config.set(scheduler="threads"):
        # 150-row blocks: each block spans 3 stored row chunks and both column chunks.
        est, W = _fit(open_logged(path, read_log_path), init=init, max_iter=max_iter,
                      block_rows=150)
        assert W.numblocks == (4, 1)
        assert est.n_iter_ == max_iter
        keys = chunk_keys(open_logged(path, read_log_path))
        assert len(keys) == 24
        passes = INIT_PASSES[init] + max_iter
        assert read_counts(read_log_path) == dict.fromkeys(keys, passes)

        # The lazy W of transform reads nothing until computed, then each chunk once.
        W_new = est.transform(open_logged(path, read_log_path))
        assert read_counts(read_log_path) == dict.fromkeys(keys, passes)
        W_new = W_new.compute()
    assert read_counts(read_log_path) == dict.fromkeys(keys, passes + 1)
    assert {pid for pid, _ in read_log(read_log_path)} == {os.getpid()}
    # A factorization, not a bound on quality: 3 iterations already explain most of V.
    assert np.linalg.norm(W_new @ est.components_ - X) < 0.15 * np.linalg.norm(X)


@pytest.mark.parametrize("resident", [False, "auto"])
@pytest.mark.parametrize("init", ["random", "nndsvda"])
def test_each_chunk_read_once_per_pass_real_workers(small_store, read_log_path, real_cluster,
                                                     init, resident):
    """Real worker processes: the same counts, and every read happens in a worker process
    (none in this process). V fits in the workers' memory many times over, so by default
    (``resident='auto'``) they read it once and keep it: each chunk is read once in all;
    the factors are the same."""
    path, _ = small_store
    max_iter = 3
    with real_cluster.client.as_current():
        est, W = _fit(open_logged(path, read_log_path), init=init, max_iter=max_iter,
                      block_rows=100, resident=resident)
        assert W.numblocks == (6, 1)
        assert W.compute().shape == (600, 4)
    keys = chunk_keys(open_logged(path, read_log_path))
    reads = 1 if resident else INIT_PASSES[init] + max_iter
    assert read_counts(read_log_path) == dict.fromkeys(keys, reads)
    with dask.config.set(scheduler="threads"):  # the same blocks, streamed from the store
        ref, _ = _fit(path, init=init, max_iter=max_iter, block_rows=100)
    assert_same_fit(est.components_, ref.components_)
    readers = {pid for pid, _ in read_log(read_log_path)}
    assert readers <= set(real_cluster.worker_pids().values())
    assert os.getpid() not in readers


@pytest.mark.parametrize("init", ["random", "nndsvda"])
def test_each_chunk_read_once_per_pass_with_W_in_files(small_store, read_log_path,
                                                      real_cluster, tmp_path, init):
    """W kept in files between passes (``store_W=True``) adds no read of V: each chunk is
    still read once per pass, by the workers, and the factors are those of W in memory."""
    path, _ = small_store
    max_iter = 3
    with real_cluster.client.as_current():
        est, W = _fit(open_logged(path, read_log_path), init=init, max_iter=max_iter,
                      block_rows=100, resident=False, store_W=True,
                      checkpoint=tmp_path / "out.zarr")
        assert W.compute().shape == (600, 4)
        ref, _ = _fit(path, init=init, max_iter=max_iter, block_rows=100, resident=False)
    keys = chunk_keys(open_logged(path, read_log_path))
    assert read_counts(read_log_path) == dict.fromkeys(keys, INIT_PASSES[init] + max_iter)
    assert_same_fit(est.components_, ref.components_)
    readers = {pid for pid, _ in read_log(read_log_path)}
    assert readers <= set(real_cluster.worker_pids().values())


# --------------------------------------------------------------------------- the big one
#: Memory limit of each of the 2 workers. Measured here: an idle worker process is ~80 MB
#: RSS, ~150 MB once numpy/zarr/bignmf are imported, and peaks at ~225 MB in this fit, well
#: below distributed's spill (70%) and pause (80%) thresholds of 400 MB. bignmf sizes row
#: blocks at limit / 8 (50 MB), rounded down to whole stored chunks: 1 chunk per block.
WORKER_LIMIT = 400_000_000
N_WORKERS = 2
N_FEATURES = 2000
CHUNK_ROWS = 4096  # stored chunks of 4096 x 2000 float32 = 32.8 MB
#: V's uncompressed size: 5x the cluster's total limit, so that with zstd compression
#: (about 0.87 of that for noisy float32) it is still at least 4x the total limit on disk.
V_NBYTES_TARGET = 5 * N_WORKERS * WORKER_LIMIT
MAX_ITER = 3


@pytest.fixture
def big_store_path(tmp_path):
    """Where the big V goes; deleted after the test (pytest keeps recent tmp dirs, and
    several GB each on a shared machine add up)."""
    path = tmp_path / "V.zarr"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_store_4x_cluster_memory_factorized_within_worker_limits(tmp_path, big_store_path,
                                                                read_log_path):
    total_limit = N_WORKERS * WORKER_LIMIT
    row_bytes = N_FEATURES * 4
    n_chunks = -(-V_NBYTES_TARGET // (row_bytes * CHUNK_ROWS))
    m = n_chunks * CHUNK_ROWS

    # This process never holds V: reset its peak RSS, then watch it.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss_before = vmrss()

    t0 = time.perf_counter()
    rows = LowRankRows(N_FEATURES, 5, seed=7)
    sumsq = []

    def block(start: int, stop: int) -> np.ndarray:
        V = rows(start, stop)
        sumsq.append(float(np.vdot(V, V)))
        return V

    path = write_zarr(big_store_path, block, shape=(m, N_FEATURES), dtype=np.float32,
                      chunks=(CHUNK_ROWS, N_FEATURES), threads=2)
    t_write = time.perf_counter() - t0
    on_disk = disk_bytes(path)
    assert on_disk >= 4 * total_limit, (on_disk, total_limit)

    with running_cluster(tmp_path / "cluster", n_workers=N_WORKERS,
                         memory_limit=WORKER_LIMIT) as cluster:
        workers = cluster.workers()
        assert [w["memory_limit"] for w in workers.values()] == [WORKER_LIMIT] * N_WORKERS
        pids_before = cluster.worker_pids()
        idle = cluster.rss()

        t0 = time.perf_counter()
        with cluster.client.as_current():
            est = NMF(n_components=5, init="random", random_state=0, max_iter=MAX_ITER,
                      tol=0)
            W = est.fit_transform(open_logged(path, read_log_path))
            W_head = W[:1000].compute()
        t_fit = time.perf_counter() - t0

        peaks = cluster.peak_rss()
        pids_after = cluster.worker_pids()
        logs = cluster.logs()

    rel_err = est.reconstruction_err_ / np.sqrt(sum(sumsq))
    print(
        f"\nV: {m} x {N_FEATURES} float32, {m * row_bytes / 1e9:.2f} GB, on disk "
        f"{on_disk / 1e9:.2f} GB = {on_disk / total_limit:.2f}x the total worker limit "
        f"{total_limit / 1e9:.2f} GB; blocks of {W.chunks[0][0]} rows "
        f"({len(W.chunks[0])} blocks)\n"
        f"idle worker RSS (MB): {[round(v / 1e6) for v in idle.values()]}; peak VmHWM (MB): "
        f"{[round(v / 1e6) for v in peaks.values()]} (limit {WORKER_LIMIT / 1e6:.0f})\n"
        f"write {t_write:.1f}s, fit {t_fit:.1f}s; test process peak RSS growth "
        f"{(vmhwm() - rss_before) / 1e6:.0f} MB; "
        f"relative error {rel_err:.4g}, objective {[round(float(v)) for v in est.loss_history_]}"
    )

    # Factorized: the objective went down every iteration, W has every row of V.
    assert est.n_iter_ == MAX_ITER
    assert W.shape == (m, 5)
    assert np.all(np.diff(est.loss_history_) < 0)
    assert rel_err < 0.15  # the noise alone is ~0.03 of ||V||
    assert np.isfinite(W_head).all() and (W_head >= 0).all()

    # Memory: true peak RSS of every worker process under its limit; no worker died,
    # restarted (same addresses, same processes) or paused.
    assert set(peaks) == set(pids_before)
    for address, peak in peaks.items():
        assert peak < WORKER_LIMIT, (address, peak)
    assert pids_after == pids_before
    for sign in ("Pausing worker", "Restarting worker", "was killed", "Worker process died",
                 "exceeded", "Remove worker"):
        assert sign not in logs, sign
    # ... nor did this process ever hold V (or any sizeable part of it).
    assert vmhwm() - rss_before < 0.1 * m * row_bytes

    # I/O: every chunk read exactly once per pass (1 for init='random' + 1 per iteration),
    # all by the workers.
    z = open_logged(path, read_log_path)
    counts = read_counts(read_log_path)
    assert counts == dict.fromkeys(chunk_keys(z), 1 + MAX_ITER)
    readers = {pid for pid, _ in read_log(read_log_path)}
    assert readers <= set(pids_before.values())


# ------------------------------------------------------------- sparse, Kullback-Leibler
SPARSE_ROWS = 400_000
SPARSE_DENSITY = 0.0125  # 25 stored entries per row: 10^7 in all


@pytest.mark.slow
def test_kl_on_1e7_nonzeros_runs_in_memory_bounded_by_the_row_blocks(tmp_path):
    """A CSR store with 10^7 non-zeros (dense, it would be 3.2 GB: 4x the cluster's
    memory) fitted with the Kullback-Leibler loss by 2 workers of 400 MB: only stored
    entries are touched, and each worker's peak memory stays far below its limit."""
    n, k, max_iter = N_FEATURES, 10, 3
    chunk_rows = 20_000

    def blocks():
        for start in range(0, SPARSE_ROWS, chunk_rows):
            rng = np.random.default_rng(start)
            block = sp.random(chunk_rows, n, density=SPARSE_DENSITY, format="csr",
                              random_state=rng, dtype=np.float32)
            block.data = rng.poisson(3.0, size=block.nnz).astype(np.float32) + 1
            yield block

    path = write_csr_blocks(tmp_path / "counts.zarr", blocks(), (SPARSE_ROWS, n), np.float32)
    nnz = int(zarr.open_group(path, mode="r")["indptr"][-1])
    assert nnz >= 10**7
    dense_bytes = SPARSE_ROWS * n * 4
    with running_cluster(tmp_path / "cluster", n_workers=N_WORKERS,
                         memory_limit=WORKER_LIMIT) as cluster:
        idle = cluster.rss()
        t0 = time.perf_counter()
        with cluster.client.as_current():
            est = NMF(n_components=k, solver="mu", beta_loss="kullback-leibler",
                      init="random", random_state=0, max_iter=max_iter, tol=0)
            W = est.fit_transform(path)
            n_blocks = len(W.chunks[0])
        t_fit = time.perf_counter() - t0
        peaks = cluster.peak_rss()
        logs = cluster.logs()
    print(f"\nCSR V: {SPARSE_ROWS} x {n}, {nnz} non-zeros (dense: {dense_bytes / 1e9:.1f} GB = "
          f"{dense_bytes / (N_WORKERS * WORKER_LIMIT):.1f}x the cluster's memory); "
          f"{n_blocks} row blocks; KL fit of {max_iter} iterations in {t_fit:.1f}s; "
          f"idle worker RSS (MB) {[round(v / 1e6) for v in idle.values()]}, "
          f"peak VmHWM (MB) {[round(v / 1e6) for v in peaks.values()]} "
          f"(limit {WORKER_LIMIT / 1e6:.0f}); objective "
          f"{[round(float(v)) for v in est.loss_history_]}")
    assert dense_bytes >= 4 * N_WORKERS * WORKER_LIMIT
    assert est.n_iter_ == max_iter
    assert np.all(np.diff(est.loss_history_) < 0)
    for address, peak in peaks.items():
        assert peak < 0.8 * WORKER_LIMIT, (address, peak)
    for sign in ("Pausing worker", "Restarting worker", "was killed", "Worker process died"):
        assert sign not in logs, sign
