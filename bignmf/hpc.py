"""Cluster profiles, batch job scripts and job submission for HPC systems.

A *profile* says where a fit runs. It is a YAML file in dask-jobqueue's configuration
layout (a ``jobqueue:`` section with one ``slurm:``/``pbs:``/... subsection: ``cores``,
``memory``, ``processes``, ``walltime``, ``queue``, ``interface``,
``job-extra-directives``, ``log-directory``, ...) plus a ``bignmf:`` section. The
profiles shipped with bignmf (``bignmf/profiles/*.yaml``, documented copies in the
repository's ``cluster/``) are found by name; any other by its path. There are four kinds
(``bignmf: mode:``):

``local``
    bignmf's embedded local cluster (the default of every fit): ``n-workers`` worker
    processes, one thread each, ``worker-memory`` each.
``address``
    a running Dask scheduler: ``scheduler: tcp://host:8786`` or ``scheduler-file:``.
``jobqueue``
    Dask workers as batch jobs through ``dask_jobqueue.SLURMCluster``/``PBSCluster``/...:
    the scheduler runs in the fitting process, which scales to ``n-workers`` workers,
    waits for them, fits, and cancels the jobs.
``batch``
    one batch job runs the whole fit: :func:`job_script` renders an ``sbatch``/``qsub``
    script that runs ``bignmf fit --resume`` on an embedded cluster sized to the job's
    allocation, checkpointing into the output store, so a requeued or resubmitted job
    continues where the last one stopped; :func:`submit` submits it.

dask-jobqueue is only needed for ``jobqueue`` profiles (``pip install bignmf[hpc]``); it
is imported when such a profile is used.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from bignmf.cluster import MALLOC_TUNABLE, MALLOC_TUNABLE_NAME, worker_info

logger = logging.getLogger(__name__)

MODES = ("local", "address", "jobqueue", "batch")

#: dask-jobqueue cluster class of each job system a ``jobqueue`` profile may name.
CLUSTER_CLASSES = {
    "slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
    "oar": "OARCluster", "moab": "MoabCluster", "htcondor": "HTCondorCluster",
}

#: Job systems a ``batch`` profile can render a script for, and their submit commands.
SUBMIT_COMMANDS = {"slurm": ["sbatch", "--parsable"], "pbs": ["qsub"]}

#: Keys of the ``bignmf:`` section, by mode (``mode`` is allowed in all).
BIGNMF_KEYS = {
    "local": {"n-workers", "worker-memory"},
    "address": {"scheduler", "scheduler-file", "timeout"},
    "jobqueue": {"n-workers", "min-workers", "wait-timeout"},
    "batch": {"worker-memory", "checkpoint-every", "checkpoint-seconds",
              "requeue-before-walltime"},
}

#: ``jobqueue.<system>`` keys a ``batch`` profile uses (the one job's resources).
BATCH_KEYS = {
    "name", "cores", "memory", "processes", "python", "queue", "account", "walltime",
    "job-extra-directives", "job-directives-skip", "job-script-prologue", "log-directory",
    "shebang", "job-cpu", "job-mem", "resource-spec",
}

#: Memory of a batch job kept out of the workers' limits: the fitting process and the
#: scheduler (``RESERVE_BYTES``) and each worker's nanny (``NANNY_BYTES``).
RESERVE_BYTES = 300 * 2**20
NANNY_BYTES = 100 * 2**20

#: Default seconds to wait for ``jobqueue`` workers (queue time included).
DEFAULT_WAIT_TIMEOUT = 3600.0


class ClusterError(RuntimeError):
    """The job system refused a job, or workers did not come up in time."""


class MissingDependencyError(ImportError):
    """An optional dependency (dask-jobqueue: ``pip install bignmf[hpc]``) is missing."""


def _norm(key: Any) -> str:
    return str(key).replace("_", "-")


@dataclass(frozen=True)
class Profile:
    """A loaded profile.

    ``jobqueue`` holds the ``jobqueue.<system>`` keys and ``options`` the ``bignmf:`` keys,
    both with dask's hyphenated spelling (``job-extra-directives``, ``n-workers``;
    underscores are accepted in files and normalized).
    """

    name: str
    source: str
    mode: str
    system: str | None = None
    jobqueue: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def option(self, key: str, default: Any = None) -> Any:
        value = self.options.get(_norm(key))
        return default if value is None else value

    def setting(self, key: str, default: Any = None) -> Any:
        value = self.jobqueue.get(_norm(key))
        return default if value is None else value

    def with_settings(self, **settings: Any) -> Profile:
        """A copy with ``jobqueue`` keys replaced (``None`` values are ignored), e.g.
        ``profile.with_settings(walltime="01:00:00", queue="short")``."""
        new = {_norm(k): v for k, v in settings.items() if v is not None}
        if not new:
            return self
        if self.mode not in ("jobqueue", "batch"):
            raise ValueError(f"profile {self.name!r} ({self.mode}) has no job settings to "
                             f"change ({', '.join(sorted(new))})")
        profile = replace(self, jobqueue={**self.jobqueue, **new})
        _validate(profile)
        return profile


# --------------------------------------------------------------------------- loading
def available_profiles() -> list[str]:
    """Names of the profiles shipped with bignmf."""
    root = importlib.resources.files("bignmf") / "profiles"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def profile_text(name: str) -> str:
    """The YAML text of a shipped profile (to copy and edit)."""
    if name not in available_profiles():
        raise FileNotFoundError(_unknown(name))
    return (importlib.resources.files("bignmf") / "profiles" / f"{name}.yaml").read_text()


def _unknown(name: str) -> str:
    return (f"No cluster profile {name!r}: not a file, and not one of bignmf's profiles "
            f"({', '.join(available_profiles())})")


def load_profile(profile: str | os.PathLike[str] | Mapping[str, Any] | Profile) -> Profile:
    """A profile from a path to a YAML file, the name of a shipped profile (``"slurm"``),
    or the parsed YAML as a mapping."""
    if isinstance(profile, Profile):
        return profile
    if isinstance(profile, Mapping):
        return _parse(dict(profile), "<mapping>", "<mapping>")
    spec = os.fspath(profile)
    if os.path.isfile(spec):
        with open(spec) as f:
            data = yaml.safe_load(f)
        name = os.path.splitext(os.path.basename(spec))[0]
        return _parse(data, name, os.path.abspath(spec))
    if os.sep in spec or spec.endswith((".yaml", ".yml")) or spec not in available_profiles():
        raise FileNotFoundError(_unknown(spec))
    data = yaml.safe_load(profile_text(spec))
    return _parse(data, spec, f"bignmf/profiles/{spec}.yaml")


def _parse(data: Any, name: str, source: str) -> Profile:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"cluster profile {source}: expected a mapping at the top level")
    extra = sorted(set(data) - {"jobqueue", "bignmf"})
    if extra:
        raise ValueError(f"cluster profile {source}: unknown top-level key(s) {extra}; a "
                         "profile has a `jobqueue:` and/or a `bignmf:` section")
    options = {_norm(k): v for k, v in (data.get("bignmf") or {}).items()}
    jq = data.get("jobqueue") or {}
    if not isinstance(jq, dict) or len(jq) > 1:
        raise ValueError(f"cluster profile {source}: `jobqueue:` must hold exactly one job "
                         f"system ({', '.join(CLUSTER_CLASSES)})")
    system, settings = next(iter(jq.items())) if jq else (None, {})
    settings = {_norm(k): v for k, v in (settings or {}).items()}
    mode = options.pop("mode", None)
    if mode is None:
        mode = ("jobqueue" if system else
                "address" if options.get("scheduler") or options.get("scheduler-file") else
                "local")
    profile = Profile(name=name, source=source, mode=str(mode),
                      system=str(system).lower() if system else None,
                      jobqueue=settings, options=options)
    _validate(profile)
    return profile


def _validate(p: Profile) -> None:
    where = f"cluster profile {p.source}"
    if p.mode not in MODES:
        raise ValueError(f"{where}: bignmf.mode must be one of {MODES}, not {p.mode!r}")
    unknown = sorted(set(p.options) - BIGNMF_KEYS[p.mode])
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} in `bignmf:` for mode "
                         f"{p.mode!r}; allowed: {sorted(BIGNMF_KEYS[p.mode])}")
    if p.mode in ("local", "address") and p.system:
        raise ValueError(f"{where}: a {p.mode!r} profile has no `jobqueue:` section")
    if p.mode == "jobqueue":
        if p.system not in CLUSTER_CLASSES:
            raise ValueError(f"{where}: a jobqueue profile needs `jobqueue:` with one of "
                             f"{sorted(CLUSTER_CLASSES)}, not {p.system!r}")
        for key in ("cores", "memory"):
            if p.setting(key) is None:
                raise ValueError(f"{where}: jobqueue.{p.system}.{key} is required")
    if p.mode == "batch":
        if p.system not in SUBMIT_COMMANDS:
            raise ValueError(f"{where}: a batch profile needs `jobqueue:` with one of "
                             f"{sorted(SUBMIT_COMMANDS)}, not {p.system!r}")
        unused = sorted(set(p.jobqueue) - BATCH_KEYS)
        if unused:
            raise ValueError(f"{where}: key(s) {unused} of jobqueue.{p.system} are not "
                             f"used by a batch profile; allowed: {sorted(BATCH_KEYS)}")
        for key in ("cores", "memory"):
            if p.setting(key) is None:
                raise ValueError(f"{where}: jobqueue.{p.system}.{key} is required")
    for key in ("n-workers", "min-workers"):
        value = p.options.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{where}: bignmf.{key} must be a positive integer, not {value!r}")


# --------------------------------------------------------------------------- jobqueue
def _jobqueue() -> Any:
    try:
        import dask_jobqueue
    except ImportError as err:
        raise MissingDependencyError(
            "Dask workers as batch jobs need dask-jobqueue: pip install 'bignmf[hpc]' "
            "(or pip install dask-jobqueue)") from err
    return dask_jobqueue


def cluster_class(system: str) -> Any:
    """The dask-jobqueue cluster class for a job system (``"slurm"`` -> SLURMCluster)."""
    return getattr(_jobqueue(), CLUSTER_CLASSES[system])


def jobqueue_kwargs(profile: Any) -> dict[str, Any]:
    """Keyword arguments of the profile's dask-jobqueue cluster class.

    Every ``jobqueue.<system>`` key maps to the argument of the same name (``-`` -> ``_``;
    ``name`` -> ``job_name``). ``processes`` defaults to ``cores``: one single-threaded
    worker per core, as bignmf's embedded cluster.
    """
    p = load_profile(profile)
    if p.mode != "jobqueue":
        raise ValueError(f"profile {p.name!r} is a {p.mode!r} profile, not a jobqueue one")
    kwargs = {("job_name" if key == "name" else key.replace("-", "_")): value
              for key, value in p.jobqueue.items()}
    if kwargs.get("processes") is None:
        kwargs["processes"] = int(kwargs["cores"])
    prologue = [str(line) for line in kwargs.get("job_script_prologue") or []]
    if not any("GLIBC_TUNABLES" in line for line in prologue):
        kwargs["job_script_prologue"] = [*prologue, TUNABLES_LINE]
    return kwargs


#: The last line before a worker job starts its workers: the embedded cluster's huge pages
#: for malloc (:data:`bignmf.cluster.MALLOC_TUNABLE`) added to the job's glibc tunables,
#: unless they already name that tunable (a profile whose prologue sets ``GLIBC_TUNABLES``
#: gets no such line).
TUNABLES_LINE = (
    f'case "$GLIBC_TUNABLES" in *{MALLOC_TUNABLE_NAME}*) ;; '
    f'*) export GLIBC_TUNABLES="${{GLIBC_TUNABLES:+$GLIBC_TUNABLES:}}{MALLOC_TUNABLE}" ;; esac'
)


def make_jobqueue_cluster(profile: Any, **kwargs: Any) -> Any:
    """The profile's dask-jobqueue cluster (its scheduler runs in this process; no worker
    job is submitted until it is scaled). ``kwargs`` override the profile's."""
    p = load_profile(profile)
    return cluster_class(str(p.system))(**{**jobqueue_kwargs(p), **kwargs})


def _recording_job_class(job_cls: Any, errors: list[BaseException]) -> Any:
    """``job_cls`` recording the errors of job submission into ``errors``.

    dask-jobqueue submits jobs in a background task, so a refused ``sbatch`` (a wrong
    partition, too much memory) is only logged; recording it lets the caller fail at
    once, rather than wait for workers that will never come. A failed job is marked
    failed so that closing the cluster does not trip over it."""
    from distributed.core import Status

    class RecordingJob(job_cls):
        async def start(self) -> None:
            try:
                await super().start()
            except Exception as err:
                errors.append(err)
                self.status = Status.failed
                raise

    RecordingJob.__name__ = RecordingJob.__qualname__ = job_cls.__name__
    return RecordingJob


def worker_job_script(profile: Any) -> str:
    """The batch script of one worker job of a jobqueue profile, as dask-jobqueue would
    submit it (with a placeholder scheduler address). Starts and submits nothing
    (dask-jobqueue does create the profile's log directory)."""
    p = load_profile(profile)
    kwargs = jobqueue_kwargs(p)
    for key in ("scheduler_options", "shared_temp_directory"):
        kwargs.pop(key, None)
    job = cluster_class(str(p.system)).job_cls(
        "tcp://<scheduler-address>:8786", name="<worker-name>", **kwargs)
    return str(job.job_script())


def n_connected(client: Any) -> int:
    return len(worker_info(client))


def _job_ids(cluster: Any) -> list[str]:
    return [str(job.job_id) for job in list(cluster.workers.values())
            if getattr(job, "job_id", None)]


def _diagnostics(p: Profile, cluster: Any) -> str:
    """What the job system says about the cluster's jobs, and the tail of their logs."""
    lines = [f"worker jobs: {', '.join(_job_ids(cluster)) or 'none submitted'}"]
    query = {"slurm": ["squeue", "-o", "%i %j %T %R", "-j"], "pbs": ["qstat"]}.get(str(p.system))
    ids = _job_ids(cluster)
    if query and ids:
        cmd = [*query, ",".join(ids)] if p.system == "slurm" else [*query, *ids]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            lines.append(f"$ {shlex.join(cmd)}\n{out.stdout}{out.stderr}".rstrip())
    logdir = p.setting("log-directory")
    if logdir and os.path.isdir(logdir):
        files = sorted((os.path.join(logdir, f) for f in os.listdir(logdir)),
                       key=os.path.getmtime)[-2:]
        for path in files:
            with contextlib.suppress(OSError), open(path, errors="replace") as f:
                lines.append(f"--- {path} (last lines)\n" + "".join(f.readlines()[-10:]))
    return "\n".join(lines)


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (scancel, a walltime) raises SystemExit, so ``finally`` blocks run and the
    worker jobs are cancelled rather than left to time out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: Seconds between checks for worker jobs that ended (walltime, scancel, node failure).
REPLACE_INTERVAL = 5.0


@contextlib.contextmanager
def _replacing_lost_jobs(jq_cluster: Any, target: int) -> Iterator[None]:
    """Submit a new job for each worker job that ends while the fit runs.

    A job that ends is dropped from the cluster's running workers (after distributed's
    ``lost-worker-timeout``) but stays in its specification, and neither ``scale`` nor
    ``adapt`` replaces it by itself; ``scale(n)`` again does. Meanwhile the fit goes on
    with the other workers (and back to its newest checkpoint if data was lost).
    """
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(REPLACE_INTERVAL):
            lost = set(jq_cluster.worker_spec) - set(jq_cluster.workers)
            if lost:
                logger.warning("worker job(s) %s ended; submitting replacements",
                               ", ".join(sorted(map(str, lost))))
            with contextlib.suppress(Exception):
                jq_cluster.scale(n=target)

    thread = threading.Thread(target=watch, name="bignmf-replace-lost-jobs", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


# --------------------------------------------------------------------------- connecting
@contextlib.contextmanager
def connect(profile: Any, *, n_workers: int | None = None,
            worker_memory: str | int | None = None) -> Iterator[Any]:
    """Start or reach the profile's Dask cluster and yield a ``distributed.Client`` set as
    dask's default, so that fits in the ``with`` block run there.

    ``local``: bignmf's embedded cluster (kept for later fits of this process).
    ``address``: a client of the running scheduler, closed at the end.
    ``jobqueue``: submits worker jobs to reach ``n-workers`` (``n_workers`` overrides),
    waits until ``min-workers`` are connected (at most ``wait-timeout`` seconds), and
    closes the client and cancels the jobs at the end.
    """
    p = load_profile(profile)
    if worker_memory is not None and p.mode not in ("local",):
        raise ValueError(f"--worker-memory applies to the embedded local cluster; profile "
                         f"{p.name!r} ({p.mode}) sets its workers' memory itself")
    if p.mode == "local":
        from bignmf import cluster

        memory = worker_memory if worker_memory is not None else p.option("worker-memory",
                                                                           "auto")
        yield cluster.embedded_client(n_workers=n_workers or p.option("n-workers"),
                                      memory_limit=memory)
    elif p.mode == "address":
        if n_workers is not None:
            raise ValueError(f"profile {p.name!r} connects to a running scheduler; it "
                             "cannot choose the number of workers")
        yield from _connect_address(p)
    elif p.mode == "jobqueue":
        yield from _connect_jobqueue(p, n_workers)
    else:
        raise ValueError(
            f"profile {p.name!r} describes one batch job that runs the whole fit: render "
            f"it with `bignmf job-script ... --profile {p.name}` or submit it with "
            f"`bignmf submit ... --profile {p.name}`")


def _connect_address(p: Profile) -> Iterator[Any]:
    import dask
    from distributed import Client

    address = p.option("scheduler") or dask.config.get("scheduler-address", None)
    scheduler_file = p.option("scheduler-file")
    if bool(address) == bool(scheduler_file):
        raise ValueError(f"profile {p.source}: set exactly one of bignmf.scheduler "
                         "(tcp://host:8786) and bignmf.scheduler-file")
    timeout = p.option("timeout", 60)
    if scheduler_file:
        scheduler_file = os.path.expanduser(os.path.expandvars(scheduler_file))
        client = Client(scheduler_file=scheduler_file, timeout=timeout)
    else:
        client = Client(address, timeout=timeout)
    logger.info("connected to %s (dashboard %s)", address or scheduler_file,
                client.dashboard_link)
    try:
        yield client
    finally:
        client.close()


def _connect_jobqueue(p: Profile, n_workers: int | None) -> Iterator[Any]:
    from distributed import Client

    target = n_workers or p.option("n-workers") or jobqueue_kwargs(p)["processes"]
    wait_for = min(p.option("min-workers", target), target)
    timeout = float(p.option("wait-timeout", DEFAULT_WAIT_TIMEOUT))
    errors: list[BaseException] = []
    with _sigterm_exits():
        t0 = time.monotonic()
        cls = cluster_class(str(p.system))
        jq_cluster = make_jobqueue_cluster(p, job_cls=_recording_job_class(cls.job_cls, errors))
        try:
            logger.info("%s: one worker job is\n%s", cls.__name__, jq_cluster.job_script())
            client = Client(jq_cluster, set_as_default=True)
            try:
                jq_cluster.scale(n=target)
                logger.info("scheduler at %s (dashboard %s); waiting for %d of %d workers",
                            jq_cluster.scheduler_address, client.dashboard_link, wait_for,
                            target)
                deadline = time.monotonic() + timeout
                while n_connected(client) < wait_for:
                    if errors:
                        raise ClusterError(f"submitting a worker job failed: {errors[0]}")
                    if time.monotonic() > deadline:
                        raise ClusterError(
                            f"{n_connected(client)} of {wait_for} Dask workers connected "
                            f"within {timeout:.0f} s (bignmf.wait-timeout)\n"
                            f"{_diagnostics(p, jq_cluster)}")
                    time.sleep(0.2)
                logger.info("%d workers connected %.1f s after the first job was submitted "
                            "(jobs %s)", n_connected(client), time.monotonic() - t0,
                            ", ".join(_job_ids(jq_cluster)))
                with _replacing_lost_jobs(jq_cluster, target):
                    yield client
            finally:
                client.close()
        finally:
            try:
                jq_cluster.close()
            except Exception as err:  # the jobs still end: death-timeout after the scheduler
                logger.warning("closing the %s failed: %r", cls.__name__, err)


# --------------------------------------------------------------------------- batch jobs
def _bytes(value: Any) -> int:
    from dask.utils import parse_bytes

    return int(value) if isinstance(value, (int, float)) else int(parse_bytes(str(value)))


def slurm_memory(n: int) -> str:
    """Bytes as SLURM's ``--mem`` wants them: whole KiB/MiB/GiB (named K/M/G), rounded up."""
    for unit, size in (("G", 2**30), ("M", 2**20)):
        if n >= size:
            return f"{math.ceil(n / size)}{unit}"
    return f"{max(1, math.ceil(n / 2**10))}K"


def pbs_memory(n: int) -> str:
    """Bytes as PBS's ``mem=`` wants them (its KB/MB/GB are KiB/MiB/GiB), rounded up."""
    for unit, size in (("gb", 2**30), ("mb", 2**20), ("kb", 2**10)):
        if n >= 10 * size:
            return f"{math.ceil(n / size)}{unit}"
    return f"{n}b"


def batch_workers(profile: Any) -> tuple[int, int]:
    """``(workers, memory limit of each in bytes)`` of the embedded cluster a batch job runs:
    ``processes`` workers (default: ``cores``), one thread each; each gets
    ``bignmf.worker-memory``, or by default an equal share of the job's memory after
    300 MiB for the fitting process and the scheduler and 100 MiB per worker's nanny."""
    p = load_profile(profile)
    n = int(p.setting("processes") or p.setting("cores"))
    if p.option("worker-memory") is not None:
        return n, _bytes(p.option("worker-memory"))
    total = _bytes(p.setting("job-mem") or p.setting("memory"))
    each = (total - RESERVE_BYTES - n * NANNY_BYTES) // n
    if each < 128 * 2**20:
        raise ValueError(f"profile {p.source}: memory {p.setting('memory')} leaves less than "
                         f"128 MiB per worker for {n} workers; ask for more memory or set "
                         "fewer processes")
    return n, int(each)


def fit_command(input: str, output: str, *, python: str | None = None,
                **fit_options: Any) -> list[str]:
    """The ``bignmf fit`` command line (argv) for ``fit_options``, which are the option
    names of ``bignmf fit`` (``n_components``, ``max_iter``, ``checkpoint_every``,
    ``resume``, ``workers``, ...); options left at their default are omitted."""
    from bignmf import cli

    argv = [python or sys.executable, "-m", "bignmf.cli", "fit", input, "--output", output]
    argv += cli.fit_argv(fit_options)
    return argv


def _abspath(path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(path)


def batch_fit_options(profile: Any, fit_options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``bignmf fit`` options a batch job runs with: ``fit_options``, the profile's
    ``checkpoint-every``/``checkpoint-seconds`` unless either is given (every 10 iterations
    if the profile sets neither: a batch job must be able to resume), ``resume=True``, and
    the embedded cluster's size (:func:`batch_workers`)."""
    p = load_profile(profile)
    options = dict(fit_options)
    if options.get("checkpoint_every") is None and options.get("checkpoint_seconds") is None:
        options["checkpoint_every"] = p.option("checkpoint-every")
        options["checkpoint_seconds"] = p.option("checkpoint-seconds")
        if options["checkpoint_every"] is None and options["checkpoint_seconds"] is None:
            options["checkpoint_every"] = 10
    n_workers, worker_memory = batch_workers(p)
    options.update(resume=True, workers=n_workers, worker_memory=f"{worker_memory // 2**20}MiB")
    return options


def job_script(profile: Any, input: str | os.PathLike[str], output: str | os.PathLike[str],
               **fit_options: Any) -> str:
    """The batch script of one job that runs ``bignmf fit INPUT --output OUTPUT`` with
    ``fit_options`` (``n_components=``, ``max_iter=``, ... as :func:`fit_command`) on an
    embedded cluster sized to the job (:func:`batch_workers`).

    The fit checkpoints into OUTPUT (the profile's ``checkpoint-every`` unless given) and
    runs with ``--resume``: a job that is requeued (``#SBATCH --requeue``, ``#PBS -r y``)
    or submitted again continues from the newest checkpoint, and finds nothing to do once
    the result is complete. With ``requeue-before-walltime: S`` (SLURM) the job asks for a
    signal S seconds before its walltime and then requeues itself. Paths are made
    absolute, since a job may start in another directory. Nothing is created or submitted.
    """
    p = load_profile(profile)
    if p.mode != "batch":
        raise ValueError(
            f"profile {p.name!r} is a {p.mode!r} profile; job scripts need a batch profile "
            f"(one of {[n for n in available_profiles() if n.endswith('-batch')]}, or a "
            f"file with `bignmf: mode: batch`); run `bignmf fit ... --cluster {p.name}` "
            "to fit with it")
    options = batch_fit_options(p, fit_options)
    n_workers, worker_memory = batch_workers(p)
    command = fit_command(_abspath(input), _abspath(output),
                          python=p.setting("python"), **options)
    header = (_slurm_header if p.system == "slurm" else _pbs_header)(p)
    skip = [str(s) for s in p.setting("job-directives-skip", [])]
    header = [line for line in header if not any(s in line for s in skip)]
    prefix = "#SBATCH" if p.system == "slurm" else "#PBS"
    header += [f"{prefix} {d}" for d in p.setting("job-extra-directives", [])]
    requeue = p.option("requeue-before-walltime") if p.system == "slurm" else None

    from bignmf import __version__

    lines = [p.setting("shebang", "#!/usr/bin/env bash"), *header, "",
             f"# Written by bignmf {__version__} from the cluster profile {p.name}.",
             f"# This job runs the whole fit on a Dask cluster inside its allocation: a "
             f"scheduler and {n_workers}",
             f"# single-threaded workers of {worker_memory // 2**20} MiB each. The fit "
             "checkpoints into its output store and",
             "# runs with --resume: requeued or submitted again, the job continues from the "
             "newest",
             "# checkpoint; once the result is complete it does nothing.",
             *[str(line) for line in p.setting("job-script-prologue", [])]]
    if requeue:
        lines += [
            f"# SLURM sends USR1 to this script {requeue} s before the walltime "
            f"(--signal=B:USR1@{requeue}): the job",
            "# requeues itself and its next run continues from the newest checkpoint.",
            "trap 'echo \"bignmf: walltime near: requeueing job $SLURM_JOB_ID\"; "
            "scontrol requeue \"$SLURM_JOB_ID\"' USR1",
            shlex.join(command) + " &",
            "pid=$!",
            "wait \"$pid\"; rc=$?",
            "# a trapped signal interrupts `wait`: keep waiting until the fit exits or SLURM "
            "ends the job",
            "while kill -0 \"$pid\" 2>/dev/null; do wait \"$pid\"; rc=$?; done",
            "exit \"$rc\"",
        ]
    else:
        lines.append("exec " + shlex.join(command))
    return "\n".join(lines) + "\n"


def _log_directory(p: Profile) -> str | None:
    logdir = p.setting("log-directory")
    return _abspath(logdir) if logdir else None


def _slurm_header(p: Profile) -> list[str]:
    name = p.setting("name", "bignmf")
    out = [f"#SBATCH -J {name}"]
    logdir = _log_directory(p)
    if logdir:
        out.append(f"#SBATCH -o {logdir}/{name}-%j.out")  # stdout and stderr, one file a job
    if p.setting("queue"):
        out.append(f"#SBATCH -p {p.setting('queue')}")
    if p.setting("account"):
        out.append(f"#SBATCH -A {p.setting('account')}")
    out += ["#SBATCH -n 1",
            f"#SBATCH --cpus-per-task={p.setting('job-cpu') or p.setting('cores')}",
            f"#SBATCH --mem={p.setting('job-mem') or slurm_memory(_bytes(p.setting('memory')))}"]
    if p.setting("walltime"):
        out.append(f"#SBATCH -t {p.setting('walltime')}")
    # Requeue after a preemption or node failure; keep the log of every run in one file.
    out += ["#SBATCH --requeue", "#SBATCH --open-mode=append"]
    requeue = p.option("requeue-before-walltime")
    if requeue:
        out.append(f"#SBATCH --signal=B:USR1@{int(requeue)}")
    return out


def _pbs_header(p: Profile) -> list[str]:
    out = [f"#PBS -N {p.setting('name', 'bignmf')}"]
    if p.setting("queue"):
        out.append(f"#PBS -q {p.setting('queue')}")
    if p.setting("account"):
        out.append(f"#PBS -A {p.setting('account')}")
    spec = p.setting("resource-spec") or (
        f"select=1:ncpus={p.setting('cores')}:mem={pbs_memory(_bytes(p.setting('memory')))}")
    out.append(f"#PBS -l {spec}")
    if p.setting("walltime"):
        out.append(f"#PBS -l walltime={p.setting('walltime')}")
    logdir = _log_directory(p)
    out.append("#PBS -j oe")  # stdout and stderr in one file
    if logdir:
        out.append(f"#PBS -o {logdir}/")
    out.append("#PBS -r y")  # rerunnable: requeued after a preemption or node failure
    return out


def prepare(profile: Any) -> None:
    """Create what a batch job needs before it starts: its log directory (SLURM and PBS
    cannot write a job's output into a missing directory, and the job then fails
    without a log)."""
    logdir = _log_directory(load_profile(profile))
    if logdir:
        os.makedirs(logdir, exist_ok=True)


def submit_script(script: str, system: str) -> str:
    """Submit a batch script (on standard input) with ``sbatch``/``qsub``; the job id."""
    cmd = SUBMIT_COMMANDS[system]
    try:
        proc = subprocess.run(cmd, input=script, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as err:
        raise ClusterError(f"`{cmd[0]}` is not on PATH: submit from a machine of the "
                           f"{system.upper()} cluster (a login node)") from err
    if proc.returncode != 0:
        raise ClusterError(f"`{shlex.join(cmd)}` failed (exit {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()}")
    out = proc.stdout.strip()
    job_id = out.split(";")[0].strip() if system == "slurm" else out.splitlines()[-1].strip()
    if not job_id:
        raise ClusterError(f"`{shlex.join(cmd)}` printed no job id: {out!r}")
    return job_id


def submit(profile: Any, input: str | os.PathLike[str], output: str | os.PathLike[str],
           **fit_options: Any) -> str:
    """Render :func:`job_script`, create the log directory, submit; the job id."""
    p = load_profile(profile)
    script = job_script(p, input, output, **fit_options)
    prepare(p)
    job_id = submit_script(script, str(p.system))
    logger.info("submitted job %s (profile %s): bignmf fit %s -> %s", job_id, p.name,
                input, output)
    return job_id
