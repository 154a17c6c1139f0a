"""``bignmf`` command line: a thin layer over :class:`bignmf.NMF` and :mod:`bignmf.io`.

Commands:

* ``bignmf fit INPUT --n-components K --output OUT.zarr`` — factorize a Zarr array (path,
  or ``store.zarr/array``) on the embedded local cluster, or on ``--scheduler ADDRESS``;
  W, H, the loss history and the parameters are written to ``OUT.zarr``.
* ``bignmf resume OUT.zarr`` — continue a ``fit --checkpoint-every N`` that was killed,
  from its newest checkpoint, with the same input and options.
* ``bignmf info OUT.zarr`` — what an output store holds (result, parameters, checkpoint).
* ``bignmf demo`` — write a matrix larger than the workers' memory to a temporary Zarr store
  and factorize it with progress shown.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

from bignmf import __version__, checkpoint, cluster, io
from bignmf.estimator import NMF
from bignmf.progress import Progress

logger = logging.getLogger("bignmf.cli")


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-components", "-k", type=int, required=True,
                   help="rank k of the factorization")
    p.add_argument("--init", default=None,
                   choices=["random", "nndsvd", "nndsvda", "nndsvdar"],
                   help="initialization (default: nndsvda, as scikit-learn)")
    p.add_argument("--solver", default="cd", choices=["cd", "hals", "mu"])
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--tol", type=float, default=1e-4,
                   help="stop when the objective decreases by less than this fraction")
    p.add_argument("--alpha-W", type=float, default=0.0)
    p.add_argument("--alpha-H", default="same")
    p.add_argument("--l1-ratio", type=float, default=0.0)
    p.add_argument("--random-state", type=int, default=None)
    p.add_argument("--block-rows", type=int, default=None, help="rows per block of V")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="checkpoint into the output store every N iterations")
    p.add_argument("--checkpoint-seconds", type=float, default=None,
                   help="checkpoint into the output store every T seconds")
    p.add_argument("--scheduler", default=None,
                   help="address of a running Dask scheduler (tcp://host:port); "
                        "default: an embedded local cluster")


_FIT_OPTIONS = ("n_components", "init", "solver", "max_iter", "tol", "alpha_W", "alpha_H",
                "l1_ratio", "random_state", "block_rows", "checkpoint_every",
                "checkpoint_seconds")


def _estimator(options: dict[str, Any], output: str | None) -> NMF:
    kw = {key: options[key] for key in _FIT_OPTIONS}
    if kw["alpha_H"] != "same":
        kw["alpha_H"] = float(kw["alpha_H"])
    checkpointing = kw["checkpoint_every"] is not None or kw["checkpoint_seconds"] is not None
    return NMF(**kw, checkpoint=output if checkpointing else None)


def _connect(address: str | None) -> Any:
    if address is None:
        return None
    from distributed import Client

    client = Client(address)
    logger.info("connected to %s (dashboard %s)", address, client.dashboard_link)
    return client


def run_fit(model: NMF, source: Any, output: str | None, overwrite: bool = False,
            extra_attrs: dict[str, Any] | None = None, resume: bool = False) -> dict[str, Any]:
    """Fit ``model`` on ``source`` with a progress display; write ``output`` if given.

    When the model checkpoints, it does so into ``output``, and the result is written
    into that same group at the end.
    """
    progress = Progress()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            W = model.fit_transform(source, callback=progress, resume=resume)
        finally:
            progress.close()
    for w in caught:
        logger.warning("%s", w.message)
    seconds = time.perf_counter() - start
    summary = {
        "bignmf_version": __version__,
        "n_iter": int(model.n_iter_),
        "reconstruction_err": float(model.reconstruction_err_),
        "converged": bool(model._converged),
        "seconds": seconds,
        "shape": [int(W.shape[0]), int(model.n_features_in_)],
        "params": {k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
                   for k, v in model.get_params().items()},
        **(extra_attrs or {}),
    }
    if output:
        io.write_result(output, W, model.components_, attrs=summary,
                        loss_history=model.loss_history_, overwrite=overwrite,
                        in_place=model.checkpoint is not None)
        logger.info("wrote W %s, H %s and the loss history to %s",
                    tuple(W.shape), model.components_.shape, output)
    return summary


def cmd_fit(args: argparse.Namespace) -> int:
    options = {key: getattr(args, key) for key in _FIT_OPTIONS}
    source = io.open_zarr_array(args.input)  # fail on a bad path before creating anything
    model = _estimator(options, args.output)
    if model.checkpoint is not None:
        if os.path.exists(args.output):
            if not args.overwrite:
                raise FileExistsError(
                    f"{args.output!r} exists; continue an interrupted run with "
                    f"`bignmf resume {args.output}`, or pass --overwrite")
            shutil.rmtree(args.output)
        zarr.open_group(args.output, mode="w").attrs.update({
            "status": "running", "bignmf_version": __version__,
            "input": os.path.abspath(args.input), "cli_options": options,
        })
    return _fit_and_report(model, source, args.output, args.scheduler, args.overwrite,
                           {"input": os.path.abspath(args.input)}, resume=False)


def cmd_resume(args: argparse.Namespace) -> int:
    try:
        attrs: dict[str, Any] = dict(zarr.open_group(args.output, mode="r").attrs.asdict())
    except FileNotFoundError as err:
        raise FileNotFoundError(f"No bignmf output store at {args.output!r}") from err
    if "cli_options" not in attrs:
        raise ValueError(f"{args.output!r} was not written by `bignmf fit --checkpoint-...`; "
                         "there is nothing to resume")
    if attrs.get("status") == "complete":
        print(f"{args.output} is already complete ({attrs.get('n_iter')} iterations)")
        return 0
    options = dict(attrs["cli_options"])
    if args.max_iter is not None:
        options["max_iter"] = args.max_iter
    model = _estimator(options, args.output)
    source = io.open_zarr_array(attrs["input"])
    return _fit_and_report(model, source, args.output, args.scheduler, False,
                           {"input": attrs["input"]}, resume=True)


def _fit_and_report(model: NMF, source: Any, output: str, scheduler: str | None,
                    overwrite: bool, extra: dict[str, Any], resume: bool) -> int:
    client = _connect(scheduler)
    try:
        summary = run_fit(model, source, output, overwrite, extra, resume=resume)
    finally:
        if client is not None:
            client.close()
    print(f"done: {summary['n_iter']} iterations in {summary['seconds']:.1f} s, "
          f"||V - WH|| = {summary['reconstruction_err']:.6g}; output {output}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    group, attrs = io.read_result(args.output)
    print(f"{args.output}: bignmf output store (written by bignmf {attrs.get('bignmf_version')})")
    print(f"  status: {attrs.get('status', 'unknown')}")
    if "input" in attrs:
        print(f"  input: {attrs['input']}")
    for name, node in group.arrays():
        if name in ("W", "H", "loss_history"):
            print(f"  {name}: shape {node.shape}, dtype {node.dtype}, chunks {node.chunks}")
    for key in ("n_iter", "reconstruction_err", "converged", "seconds"):
        if key in attrs:
            print(f"  {key}: {attrs[key]}")
    params = attrs.get("params") or attrs.get("cli_options")
    if params:
        print("  parameters: " + ", ".join(f"{k}={v!r}" for k, v in sorted(params.items())))
    ckpt = checkpoint.latest(args.output)
    if ckpt is not None:
        loaded = checkpoint.load(args.output)
        assert loaded is not None
        state, _ = loaded
        print(f"  newest checkpoint: {os.path.basename(ckpt)} (iteration {state.iteration}, "
              f"objective {state.history[-1]:.6g})")
    return 0


def write_demo_matrix(path: str, m: int, n: int, rank: int, seed: int = 0,
                      chunk_bytes: int = 16 * 2**20) -> Any:
    """A non-negative ``m x n`` float32 matrix of rank ``rank`` plus noise, written to Zarr
    in row chunks of about ``chunk_bytes`` (at most one chunk in memory)."""
    import zarr

    block_rows = max(1, min(m, chunk_bytes // (4 * n)))
    rng = np.random.default_rng(seed)
    H = rng.gamma(1.0, 1.0, size=(rank, n)).astype(np.float32)
    z = zarr.create_array(path, shape=(m, n), dtype="float32", chunks=(block_rows, n),
                          overwrite=True)
    for start in range(0, m, block_rows):
        rows = min(block_rows, m - start)
        W = rng.gamma(1.0, 1.0, size=(rows, rank)).astype(np.float32)
        noise = rng.random((rows, n), dtype=np.float32) * 0.1
        z[start:start + rows] = W @ H + noise
    return z


def _peak_rss(client: Any) -> dict[str, int]:
    def vmhwm() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    try:
        return dict(client.run(vmhwm))
    except Exception:  # pragma: no cover - not Linux
        return {}


def cmd_demo(args: argparse.Namespace) -> int:
    workdir = args.dir or tempfile.mkdtemp(prefix="bignmf-demo-")
    os.makedirs(workdir, exist_ok=True)
    limit = int(args.worker_memory_mb * 2**20)
    v_bytes = args.rows * args.cols * 4
    print(f"bignmf {__version__} demo: V is {args.rows} x {args.cols} float32 = "
          f"{v_bytes / 2**30:.2f} GiB on disk, {args.workers} workers with "
          f"{args.worker_memory_mb} MiB each ({v_bytes / (limit * args.workers):.1f}x their total)")
    t = time.perf_counter()
    z = write_demo_matrix(os.path.join(workdir, "V.zarr"), args.rows, args.cols, args.rank)
    print(f"wrote {z.store} in {time.perf_counter() - t:.1f} s")
    client = cluster.embedded_client(n_workers=args.workers, memory_limit=limit)
    print(f"local cluster: {args.workers} workers, dashboard {client.dashboard_link}")
    model = NMF(n_components=args.rank, max_iter=args.max_iter, random_state=0,
                init="random")
    out = os.path.join(workdir, "result.zarr")
    summary = run_fit(model, z, out, overwrite=True)
    rel = summary["reconstruction_err"] / np.sqrt(model._data_sq_norm)
    peaks = _peak_rss(client)
    print(f"done: {summary['n_iter']} iterations in {summary['seconds']:.1f} s; "
          f"relative error ||V - WH|| / ||V|| = {rel:.4f}")
    if peaks:
        print("worker peak memory (VmHWM): " + ", ".join(
            f"{p / 2**20:.0f} MiB" for p in peaks.values())
            + f" (limit {args.worker_memory_mb} MiB)")
    print(f"result: {out} (W, H, loss_history); remove {workdir} when done")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bignmf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"bignmf {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p_fit = sub.add_parser("fit", help="factorize a Zarr array")
    p_fit.add_argument("input", help="Zarr array: path, or path/inside/a/group")
    p_fit.add_argument("--output", "-o", required=True, help="output Zarr group")
    p_fit.add_argument("--overwrite", action="store_true")
    _add_fit_options(p_fit)
    p_fit.set_defaults(func=cmd_fit)

    p_resume = sub.add_parser("resume", help="continue an interrupted `bignmf fit` from its "
                                             "newest checkpoint")
    p_resume.add_argument("output", help="the output store of the interrupted fit")
    p_resume.add_argument("--max-iter", type=int, default=None, help="raise the iteration cap")
    p_resume.add_argument("--scheduler", default=None)
    p_resume.set_defaults(func=cmd_resume)

    p_info = sub.add_parser("info", help="describe a bignmf output store")
    p_info.add_argument("output")
    p_info.set_defaults(func=cmd_info)

    p_demo = sub.add_parser("demo", help="factorize a generated matrix larger than the "
                                         "workers' memory")
    p_demo.add_argument("--rows", type=int, default=200_000)
    p_demo.add_argument("--cols", type=int, default=2_000)
    p_demo.add_argument("--rank", type=int, default=10)
    p_demo.add_argument("--max-iter", type=int, default=10)
    p_demo.add_argument("--workers", type=int, default=2)
    p_demo.add_argument("--worker-memory-mb", type=int, default=400)
    p_demo.add_argument("--dir", default=None, help="working folder (default: a new temp folder)")
    p_demo.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as err:
        print(f"bignmf: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
