"""``bignmf`` command line: a thin layer over :class:`bignmf.NMF` and :mod:`bignmf.io`.

Commands:

* ``bignmf fit INPUT --n-components K --output OUT.zarr`` — factorize a Zarr array (path,
  or ``store.zarr/array``) on the embedded local cluster, or on ``--scheduler ADDRESS``;
  W, H, the loss history and the parameters are written to ``OUT.zarr``.
* ``bignmf resume OUT.zarr`` — continue a ``fit --checkpoint-every N`` that was killed,
  from its newest checkpoint, with the same input and options.
* ``bignmf info OUT.zarr`` — what an output store holds (result, parameters, checkpoint).
* ``bignmf convert SRC DST`` — a ``.mtx``/``.npz``/``.npy``/``.h5ad`` matrix (or a Zarr one)
  to a Zarr store chunked for the fit, in bounded memory (:mod:`bignmf.conversion`).
* ``bignmf demo`` — write a matrix larger than the workers' memory to a temporary Zarr store
  and factorize it with progress shown.
* ``bignmf fit ... --cluster PROFILE`` — fit on the cluster a profile describes (embedded,
  a running scheduler, or Dask workers as SLURM/PBS jobs; :mod:`bignmf.hpc`).
* ``bignmf job-script INPUT -k K -o OUT.zarr --profile slurm-batch`` — print the batch script
  of one job that runs the whole fit (resumable); ``bignmf submit ...`` submits it and prints
  the job id; ``bignmf profile [NAME]`` lists or prints the shipped cluster profiles.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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

from bignmf import __version__, checkpoint, cluster, hpc, io
from bignmf.estimator import NMF, SOLVERS
from bignmf.losses import BETA_LOSSES, beta_to_float
from bignmf.progress import Progress

logger = logging.getLogger("bignmf.cli")


def _add_fit_options(p: argparse.ArgumentParser, scheduler: bool = True) -> None:
    p.add_argument("--n-components", "-k", type=int, required=True,
                   help="rank k of the factorization")
    p.add_argument("--init", default=None,
                   choices=["random", "nndsvd", "nndsvda", "nndsvdar"],
                   help="initialization (default: nndsvda, as scikit-learn)")
    p.add_argument("--solver", default="cd", choices=SOLVERS,
                   help="cd (HALS), mu (multiplicative updates; other losses, missing "
                        "entries) or compressed (HALS on a sketch of V, then exact polishing)")
    p.add_argument("--beta-loss", default="frobenius",
                   help="frobenius, kullback-leibler, itakura-saito or a number "
                        "(other than frobenius: with --solver mu)")
    p.add_argument("--missing", default=None, choices=["nan", "unstored"],
                   help="entries that are missing, not zeros: NaN in dense input, or the "
                        "unstored entries of sparse input (with --solver cd or mu)")
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--tol", type=float, default=1e-4,
                   help="stop when the objective decreases by less than this fraction")
    p.add_argument("--alpha-W", type=float, default=0.0)
    p.add_argument("--alpha-H", default="same")
    p.add_argument("--l1-ratio", type=float, default=0.0)
    p.add_argument("--random-state", type=int, default=None)
    p.add_argument("--block-rows", type=int, default=None, help="rows per block of V")
    p.add_argument("--resident", default="auto", choices=["auto", "yes", "no"],
                   help="keep V in the workers' memory after one read (auto: when it takes "
                        "at most 30%% of their total memory limit)")
    p.add_argument("--store-W", default="auto", choices=["auto", "yes", "no"],
                   help="keep W in files beside the checkpoints between passes, not in the "
                        "workers' memory (auto: when V is not resident and W would take over "
                        "10%% of a worker's memory limit)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="checkpoint into the output store every N iterations")
    p.add_argument("--checkpoint-seconds", type=float, default=None,
                   help="checkpoint into the output store every T seconds")
    if scheduler:
        p.add_argument("--scheduler", default=None,
                       help="address of a running Dask scheduler (tcp://host:port); "
                            "default: an embedded local cluster")


def _memory(value: str) -> str:
    from dask.utils import parse_bytes

    try:
        parse_bytes(value)
    except (ValueError, TypeError) as err:
        raise argparse.ArgumentTypeError(f"not a memory size: {value!r} (e.g. 4GiB)") from err
    return value


def _add_placement_options(p: argparse.ArgumentParser) -> None:
    """Where the fit runs, besides ``--scheduler`` (see :mod:`bignmf.hpc`)."""
    p.add_argument("--cluster", default=None, metavar="PROFILE",
                   help="cluster profile: a shipped one (local, address, slurm, pbs; list "
                        "them with `bignmf profile`) or a YAML file")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes of the embedded cluster, or workers to scale a "
                        "--cluster profile to (default: one per core / the profile's)")
    p.add_argument("--worker-memory", type=_memory, default=None,
                   help="memory limit of each embedded worker, e.g. 4GiB (default: an equal "
                        "share of the machine's memory)")


def fit_argv(options: dict[str, Any]) -> list[str]:
    """Command-line arguments of ``bignmf fit`` (after INPUT and --output) that give
    ``options`` (dests as in the parsed arguments: ``n_components``, ``max_iter``,
    ``resume``, ``workers``, ...); options at their default value are left out."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_fit_options(parser)
    _add_placement_options(parser)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--overwrite", action="store_true")
    actions = {a.dest: a for a in parser._actions}
    unknown = sorted(set(options) - set(actions))
    if unknown:
        raise TypeError(f"unknown option(s) of `bignmf fit`: {unknown}")
    argv: list[str] = []
    for dest, action in actions.items():  # in the parser's order, whatever the dict's
        value = options.get(dest)
        if value is None or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        else:
            argv += [flag, str(value)]
    return argv


_FIT_OPTIONS = ("n_components", "init", "solver", "beta_loss", "missing", "max_iter", "tol",
                "alpha_W", "alpha_H", "l1_ratio", "random_state", "block_rows", "resident",
                "store_W", "checkpoint_every", "checkpoint_seconds")


def _estimator(options: dict[str, Any], output: str | None) -> NMF:
    kw: dict[str, Any] = {key: options.get(key) for key in _FIT_OPTIONS}  # older stores lack some
    kw["beta_loss"] = kw["beta_loss"] or "frobenius"
    for key in ("resident", "store_W"):  # auto | yes | no on the command line
        kw[key] = {"yes": True, "no": False}.get(kw[key] or "auto", "auto")
    if kw["alpha_H"] != "same":
        kw["alpha_H"] = float(kw["alpha_H"])
    if kw["beta_loss"] not in BETA_LOSSES:
        try:
            kw["beta_loss"] = float(kw["beta_loss"])
        except ValueError:
            raise SystemExit(f"bignmf: --beta-loss must be frobenius, kullback-leibler, "
                             f"itakura-saito or a number; got {kw['beta_loss']!r}") from None
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


def _check_placement(args: argparse.Namespace) -> None:
    """Refuse conflicting placement options, and load the profile, before anything runs."""
    profile = getattr(args, "cluster", None)
    sized = getattr(args, "workers", None) is not None or \
        getattr(args, "worker_memory", None) is not None
    if profile is not None and args.scheduler is not None:
        raise ValueError("--cluster and --scheduler exclude each other")
    if args.scheduler is not None and sized:
        raise ValueError("--workers and --worker-memory size the embedded cluster or a "
                         "--cluster profile's workers, not a --scheduler's")
    if profile is not None:
        p = hpc.load_profile(profile)
        if p.mode == "batch":
            raise ValueError(f"profile {p.name!r} describes one batch job that runs the whole "
                             f"fit: use `bignmf submit ... --profile {p.name}`")


@contextlib.contextmanager
def _compute_on(scheduler: str | None, args: argparse.Namespace | None) -> Any:
    """The cluster the fit runs on: ``--cluster``, a sized embedded cluster, ``--scheduler``
    or (nothing given) bignmf's default resolution."""
    profile = getattr(args, "cluster", None)
    workers = getattr(args, "workers", None)
    memory = getattr(args, "worker_memory", None)
    if profile is not None:
        with hpc.connect(profile, n_workers=workers, worker_memory=memory):
            yield
    elif workers is not None or memory is not None:
        cluster.embedded_client(n_workers=workers, memory_limit=memory or "auto")
        yield
    else:
        client = _connect(scheduler)
        try:
            yield
        finally:
            if client is not None:
                client.close()


def _option_defaults() -> dict[str, Any]:
    """The defaults of ``bignmf fit``'s options, by name."""
    parser = argparse.ArgumentParser(add_help=False)
    _add_fit_options(parser)
    return {key: parser.get_default(key) for key in _FIT_OPTIONS}


def existing_fit(output: str, input: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """The attributes of ``output`` if it holds a ``bignmf fit`` of ``input`` with these
    options (interrupted or complete); ``None`` if it does not exist. Raises
    FileExistsError if it holds anything else."""
    if not os.path.exists(output):
        return None
    try:
        attrs: dict[str, Any] = dict(zarr.open_group(output, mode="r").attrs.asdict())
    except Exception:
        attrs = {}
    stored = attrs.get("cli_options") or {}
    wanted = json.loads(json.dumps(options))
    # An option newer than the store it was written with had its default then.
    defaults = _option_defaults()
    stored = {key: stored.get(key, defaults.get(key)) for key in wanted}
    differ = [f"input {attrs.get('input')!r} (now {input!r})"] \
        if attrs.get("input") != input else []
    differ += [f"{key}={stored[key]!r} (now {wanted[key]!r})"
               for key in sorted(wanted) if stored[key] != wanted[key]]
    if differ:
        raise FileExistsError(
            f"{output!r} exists and holds another fit ({'; '.join(differ)}); --resume "
            "continues only the same fit: choose another output, or remove it")
    return attrs


def cmd_fit(args: argparse.Namespace) -> int:
    options = {key: getattr(args, key) for key in _FIT_OPTIONS}
    source = io.open_zarr_array(args.input)  # fail on a bad path before creating anything
    _check_placement(args)
    model = _estimator(options, args.output)
    if getattr(args, "resume", False):
        if model.checkpoint is None:
            raise ValueError("--resume needs --checkpoint-every or --checkpoint-seconds: it "
                             "continues from the checkpoints in the output store")
        attrs = existing_fit(args.output, os.path.abspath(args.input), options)
        if attrs is not None:
            if attrs.get("status") == "complete":
                print(f"{args.output} is already complete ({attrs.get('n_iter')} iterations)")
                return 0
            loaded = checkpoint.load(args.output)
            logger.info("continuing the fit in %s from %s", args.output,
                        f"its checkpoint of iteration {loaded[0].iteration}" if loaded
                        else "the start (it has no checkpoint yet)")
            return _fit_and_report(model, source, args.output, args.scheduler, False,
                                   {"input": os.path.abspath(args.input)}, resume=True,
                                   args=args)
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
                           {"input": os.path.abspath(args.input)}, resume=False, args=args)


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
    _check_placement(args)
    return _fit_and_report(model, source, args.output, args.scheduler, False,
                           {"input": attrs["input"]}, resume=True, args=args)


def _fit_and_report(model: NMF, source: Any, output: str, scheduler: str | None,
                    overwrite: bool, extra: dict[str, Any], resume: bool,
                    args: argparse.Namespace | None = None) -> int:
    with _compute_on(scheduler, args):
        summary = run_fit(model, source, output, overwrite, extra, resume=resume)
    what = "||V - WH||" if beta_to_float(model.beta_loss) == 2 else "sqrt(2 D(V||WH))"
    if model.missing is not None:
        what += " over the observed entries"
    print(f"done: {summary['n_iter']} iterations in {summary['seconds']:.1f} s, "
          f"{what} = {summary['reconstruction_err']:.6g}; output {output}")
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
    peaks = cluster.worker_peak_memory(client)
    print(f"done: {summary['n_iter']} iterations in {summary['seconds']:.1f} s; "
          f"relative error ||V - WH|| / ||V|| = {rel:.4f}")
    if peaks:
        print("worker peak memory (VmHWM): " + ", ".join(
            f"{p / 2**20:.0f} MiB" for p in peaks.values())
            + f" (limit {args.worker_memory_mb} MiB)")
    if args.dir is None:  # our own temporary folder: drop the generated matrix
        shutil.rmtree(os.path.join(workdir, "V.zarr"), ignore_errors=True)
        print(f"removed the generated matrix; the result is in {out} (W, H, loss_history)")
    else:
        print(f"matrix: {z.store}; result: {out} (W, H, loss_history)")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from bignmf.conversion import convert, describe

    start = time.perf_counter()
    block_bytes = int(args.block_mb * 2**20) if args.block_mb is not None else None
    out = convert(args.source, args.target, fmt=args.format, dtype=args.dtype,
                  block_bytes=block_bytes, overwrite=args.overwrite)
    print(f"wrote {out}: {describe(out)} in {time.perf_counter() - start:.1f} s")
    return 0


def _job_profile(args: argparse.Namespace) -> hpc.Profile:
    return hpc.load_profile(args.profile).with_settings(
        walltime=args.walltime, queue=args.queue, account=args.account, cores=args.cores,
        memory=args.memory, name=args.job_name)


def cmd_job_script(args: argparse.Namespace) -> int:
    profile = _job_profile(args)
    options = {key: getattr(args, key) for key in _FIT_OPTIONS}
    print(hpc.job_script(profile, args.input, args.output, **options), end="")
    logdir = hpc._log_directory(profile)
    if logdir and not os.path.isdir(logdir):
        print(f"bignmf: note: create the log directory before submitting: mkdir -p {logdir}",
              file=sys.stderr)
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    profile = _job_profile(args)
    io.open_zarr_array(args.input)  # fail on a bad path before submitting anything
    options = {key: getattr(args, key) for key in _FIT_OPTIONS}
    effective = hpc.batch_fit_options(profile, options)
    attrs = existing_fit(os.path.abspath(args.output), os.path.abspath(args.input),
                         {key: effective[key] for key in _FIT_OPTIONS})
    if attrs is not None and attrs.get("status") == "complete":
        print(f"bignmf: {args.output} is already complete ({attrs.get('n_iter')} "
              "iterations): nothing submitted", file=sys.stderr)
        return 0
    if attrs is not None:
        logger.info("%s holds an interrupted run of this fit: the job continues it",
                    args.output)
    print(hpc.submit(profile, args.input, args.output, **options))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    if args.name:
        print(hpc.profile_text(args.name), end="")
        return 0
    for name in hpc.available_profiles():
        p = hpc.load_profile(name)
        print(f"{name:14s} {p.mode:9s} {p.system or ''}")
    print("print one with `bignmf profile NAME`; use it with `--cluster NAME` (fit) or "
          "`--profile NAME` (job-script, submit), or an edited copy by its path")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``bignmf`` argument parser."""
    parser = argparse.ArgumentParser(prog="bignmf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"bignmf {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p_fit = sub.add_parser("fit", help="factorize a Zarr array")
    p_fit.add_argument("input", help="Zarr array: path, or path/inside/a/group")
    p_fit.add_argument("--output", "-o", required=True, help="output Zarr group")
    p_fit.add_argument("--overwrite", action="store_true")
    _add_fit_options(p_fit)
    _add_placement_options(p_fit)
    p_fit.add_argument("--resume", action="store_true",
                       help="if OUTPUT holds this same fit (input and options), interrupted: "
                            "continue it from its newest checkpoint; complete: do nothing. "
                            "Needs --checkpoint-every/--checkpoint-seconds (batch jobs use it)")
    p_fit.set_defaults(func=cmd_fit)

    p_resume = sub.add_parser("resume", help="continue an interrupted `bignmf fit` from its "
                                             "newest checkpoint")
    p_resume.add_argument("output", help="the output store of the interrupted fit")
    p_resume.add_argument("--max-iter", type=int, default=None, help="raise the iteration cap")
    p_resume.add_argument("--scheduler", default=None)
    _add_placement_options(p_resume)
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

    p_convert = sub.add_parser("convert", help="convert a .mtx/.mtx.gz/.npz/.npy/.h5ad file "
                                               "(or a Zarr matrix) to a Zarr store chunked "
                                               "for the fit")
    p_convert.add_argument("source", help="the matrix file, or a Zarr array / sparse group")
    p_convert.add_argument("target", help="the new Zarr store (a CSR group for sparse data)")
    p_convert.add_argument("--format", default=None,
                           choices=["mtx", "npz", "npy", "h5ad", "zarr"],
                           help="source format (default: from the file name)")
    p_convert.add_argument("--dtype", default=None,
                           help="dtype of the stored values, e.g. float32 (default: the "
                                "source's)")
    p_convert.add_argument("--block-mb", type=float, default=None,
                           help="MiB per row block: the fit's chunking and the conversion's "
                                "unit of memory (default 128)")
    p_convert.add_argument("--overwrite", action="store_true")
    p_convert.set_defaults(func=cmd_convert)

    for name, func, text in (
        ("job-script", cmd_job_script, "print the batch script of one job that runs the fit"),
        ("submit", cmd_submit, "submit one batch job that runs the fit; print its job id"),
    ):
        p_job = sub.add_parser(name, help=text)
        p_job.add_argument("input", help="Zarr array: path, or path/inside/a/group")
        p_job.add_argument("--output", "-o", required=True, help="output Zarr group")
        p_job.add_argument("--profile", default="slurm-batch",
                           help="batch profile: slurm-batch (default), pbs-batch, or a YAML "
                                "file")
        p_job.add_argument("--walltime", default=None, help="e.g. 04:00:00")
        p_job.add_argument("--queue", default=None, help="partition / queue")
        p_job.add_argument("--account", default=None)
        p_job.add_argument("--cores", type=int, default=None,
                           help="CPUs of the job (one worker each)")
        p_job.add_argument("--memory", type=_memory, default=None,
                           help="memory of the job, e.g. 32GB")
        p_job.add_argument("--job-name", default=None)
        _add_fit_options(p_job, scheduler=False)
        p_job.set_defaults(func=func)

    p_profile = sub.add_parser("profile", help="list the shipped cluster profiles, or print one")
    p_profile.add_argument("name", nargs="?", default=None)
    p_profile.set_defaults(func=cmd_profile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except (FileNotFoundError, FileExistsError, ValueError, TypeError,
            hpc.MissingDependencyError, hpc.ClusterError) as err:
        print(f"bignmf: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
