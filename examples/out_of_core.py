"""Out of core and on a cluster: gene programs of a cell atlas larger than the workers' memory.

The example grows the shipped 10x cells into an atlas V of any size (each new cell is a real
cell's counts resampled, x ~ Poisson(c x), with a random depth c), normalizes it (log1p of
counts per 10 000) and writes it to Zarr one chunk at a time - V is never whole in memory.
By default V is four times the total memory of the Dask workers that fit it: a local cluster of
--workers processes, each limited to --worker-memory. NMF reads V block by block, once per
iteration, with a progress line per iteration; W (cells x k) goes to Zarr from the workers.
The example then reports each worker's peak memory against its limit, plots the objective
and the programs' top genes, prints the same fit for an existing scheduler and for SLURM,
and writes the SLURM batch script bignmf would submit (without submitting it).

Data: examples/data/10x-10k-subset.npz (scanpy test data, BSD-3-Clause), resampled.

Run:
    python examples/out_of_core.py              # V = 3.1 GiB, 2 workers x 400 MiB: ~1 min
    python examples/out_of_core.py --quick      # V = 80 MiB, 3 iterations: ~10 s
    python examples/out_of_core.py --times 8 --worker-memory 1GiB --max-iter 30

On your cluster (OUT on a filesystem the workers share):
    python examples/out_of_core.py --scheduler tcp://HOST:8786
    bignmf fit OUT/atlas.zarr -k 10 -o OUT/result.zarr --scheduler tcp://HOST:8786
    bignmf fit OUT/atlas.zarr -k 10 -o OUT/result.zarr --cluster slurm      # workers as jobs
    bignmf submit OUT/atlas.zarr -k 10 -o OUT/result.zarr --profile slurm-batch  # one job
"""

from __future__ import annotations

import shlex
import time

import numpy as np
import scipy.sparse as sp
import zarr
from _common import DATA, Run, parser, pyplot, top_indices, top_terms_figure

from bignmf import NMF, hpc
from bignmf.cluster import worker_peak_memory


def write_atlas(path: str, cells: sp.csr_matrix, m: int, rows_per_chunk: int,
                seed: int) -> tuple[zarr.Array, float]:
    """An ``m x n`` float32 atlas resampled from ``cells``, normalized, written to Zarr
    one chunk of ``rows_per_chunk`` rows at a time; and its squared norm ``||V||^2``."""
    rng = np.random.default_rng(seed)
    n = cells.shape[1]
    z = zarr.create_array(path, shape=(m, n), chunks=(rows_per_chunk, n), dtype="float32",
                          overwrite=True)
    sumsq = 0.0
    for start in range(0, m, rows_per_chunk):
        rows = min(rows_per_chunk, m - start)
        block = cells[rng.integers(0, cells.shape[0], rows)].tocsr()
        depth = rng.gamma(4.0, 0.25, size=rows)  # mean 1: cells sequenced more or less deeply
        block.data = rng.poisson(block.data * np.repeat(depth, np.diff(block.indptr)))
        block.eliminate_zeros()
        dense = block.toarray().astype(np.float32)
        total = np.maximum(dense.sum(axis=1, keepdims=True), 1)
        chunk = np.log1p(dense * (1e4 / total))
        sumsq += float(np.sum(chunk.astype(np.float64) ** 2))
        z[start:start + rows] = chunk
    return z, sumsq


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--workers", type=int, default=2, help="local worker processes (default 2)")
    p.add_argument("--worker-memory", default="400MiB", help="memory limit of each worker")
    p.add_argument("--times", type=float, default=None,
                   help="size of V in units of the workers' total memory (default 4)")
    p.add_argument("-k", "--n-components", type=int, default=10)
    p.add_argument("--max-iter", type=int, default=None, help="default 10 (3 with --quick)")
    args = p.parse_args()
    args.zarr = True  # this example is about data on disk
    run = Run("out_of_core", args)
    from dask.utils import format_bytes, parse_bytes
    from distributed import Client, LocalCluster

    # --- the cluster: yours (--scheduler), or local workers with a memory limit ----------
    if run.client is not None:
        client = run.client
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                               memory_limit=args.worker_memory, dashboard_address=":0")
        client = Client(cluster)
        limits = [parse_bytes(args.worker_memory)] * args.workers
        print(f"local Dask cluster: {args.workers} workers x {args.worker_memory}, "
              f"dashboard {client.dashboard_link}")
    total_memory = sum(limits)

    # --- V: an atlas of resampled cells, written to Zarr chunk by chunk ------------------
    d = np.load(DATA / "10x-10k-subset.npz")
    cells = sp.csr_matrix((d["data"].astype(np.float64), d["indices"], d["indptr"]),
                          shape=tuple(d["shape"]))
    genes = [str(g) for g in d["gene_names"]]
    n = cells.shape[1]
    times = args.times if args.times is not None else (0.1 if run.quick else 4.0)
    m = max(1000, int(times * total_memory / (4 * n)))
    rows_per_chunk = max(1, min(m, (16 * 2**20) // (4 * n)))  # 16 MiB chunks
    path = str((run.out / "atlas.zarr").resolve())
    t = time.perf_counter()
    _, sumsq = write_atlas(path, cells, m, rows_per_chunk, args.seed)
    v_bytes = m * n * 4
    on_disk = sum(f.stat().st_size for f in (run.out / "atlas.zarr").rglob("*") if f.is_file())
    print(f"wrote V: {m} cells x {n} genes, float32, {format_bytes(v_bytes)} in memory "
          f"({format_bytes(on_disk)} compressed on disk) = {v_bytes / total_memory:.1f}x the "
          f"workers' total memory ({len(limits)} x {format_bytes(min(limits))}); "
          f"{time.perf_counter() - t:.1f} s -> {path}")

    # --- the fit: one pass over V per iteration, progress printed ------------------------
    max_iter = args.max_iter or (3 if run.quick else 10)
    model = NMF(n_components=args.n_components, init="random", max_iter=max_iter, tol=0,
                random_state=args.seed, verbose=1)
    t = time.perf_counter()
    W = model.fit_transform(path)  # read block by block; W is a dask array on the workers
    fit_seconds = time.perf_counter() - t
    W.to_zarr(str(run.out / "W.zarr"), overwrite=True)  # written by the workers, block by block
    np.save(run.out / "H.npy", model.components_)
    rel_err = model.reconstruction_err_ / np.sqrt(sumsq)
    peaks = worker_peak_memory(client)
    print(f"fit: {model.n_iter_} iterations in {fit_seconds:.1f} s "
          f"({fit_seconds / (model.n_iter_ + 1):.1f} s per pass over V), relative error "
          f"{rel_err:.3f}; W -> "
          f"{run.out / 'W.zarr'}, H -> {run.out / 'H.npy'}")
    if peaks:
        print("workers' peak memory: " + ", ".join(format_bytes(v) for v in peaks.values())
              + f" (limit {format_bytes(min(limits))} each)")

    # --- what NMF found, and the objective per iteration ---------------------------------
    H = model.components_
    lines = [f"program {c}: " + " ".join(genes[j] for j in top_indices(H[c], 8))
             for c in range(H.shape[0])]
    print("\n".join(lines))
    run.write_text("gene_programs.txt", "\n".join(lines) + "\n")
    run.save(top_terms_figure(H, genes, 8, f"Gene programs of {m} cells (out of core)",
                              label="program", ncols=5), "gene_programs.png")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3), constrained_layout=True)
    ax.plot(np.arange(len(model.loss_history_)), model.loss_history_, "o-")
    ax.set_xlabel("iteration (one pass over V each)")
    ax.set_ylabel("objective 0.5 ||V - WH||^2")
    ax.set_yscale("log")
    ax.set_title(f"{format_bytes(v_bytes)} on {len(limits)} x {format_bytes(min(limits))} workers")
    run.save(fig, "objective.png")

    # --- the same fit elsewhere ------------------------------------------------------------
    result = str((run.out / "result.zarr").resolve())
    options = f"-k {args.n_components} --max-iter {max_iter} --init random"
    script = hpc.job_script("slurm-batch", path, result, n_components=args.n_components,
                            max_iter=max_iter, init="random")
    run.write_text("slurm-batch-job.sh", script)
    print("The same fit elsewhere (V on a filesystem the workers share):\n"
          f"  on a running Dask scheduler: bignmf fit {shlex.quote(path)} {options} "
          f"-o {shlex.quote(result)} --scheduler tcp://HOST:8786\n"
          f"  Dask workers as SLURM jobs:  bignmf fit {shlex.quote(path)} {options} "
          f"-o {shlex.quote(result)} --cluster slurm\n"
          f"  one resumable SLURM job:     bignmf submit {shlex.quote(path)} {options} "
          f"-o {shlex.quote(result)} --profile slurm-batch  (the script: "
          f"{run.out / 'slurm-batch-job.sh'})\n"
          f"  from Python: Client('tcp://HOST:8786'); NMF(...).fit_transform({path!r})\n"
          f"V stays in {path} ({format_bytes(on_disk)}); remove it when done.")

    run.summary.update(
        shape=[m, n], v_bytes=v_bytes, v_bytes_on_disk=on_disk, worker_memory_limits=limits,
        v_over_worker_memory=v_bytes / total_memory, n_components=args.n_components,
        n_iter=model.n_iter_, fit_seconds=fit_seconds, loss_history=model.loss_history_,
        relative_error=rel_err, worker_peak_memory=list(peaks.values()))
    run.finish()
    if run.client is None:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
