"""Cluster profiles, batch job scripts, and fits on a real SLURM.

Everywhere (no SLURM needed): the shipped profiles load and equal their documented copies
in ``cluster/``; batch scripts for SLURM and PBS are checked line by line (directives before
the first command, resources, requeue, the ``bignmf fit`` command parsed back by the CLI's
own parser, ``bash -n``); dask-jobqueue's worker script for a profile; clear errors.

With SLURM (``sbatch``, ``squeue``, ``scontrol``, ``scancel``, ``sinfo`` on PATH and a
partition that answers; on one machine: ``sudo cluster/slurm-local/start.sh``), on a small
Zarr store on disk:

* ``bignmf fit --cluster PROFILE`` with Dask workers as SLURM jobs (dask-jobqueue; the
  scheduler on 127.0.0.1, workers on ``lo``) gives bitwise the fit of the threaded scheduler,
  the workers' own logs show they registered with that fit's scheduler, and no job is left;
  with a worker job cancelled mid-fit, the fit recovers, a replacement job joins, and the
  result is bitwise the same; a refused ``sbatch`` fails the fit at once;
* ``bignmf submit`` runs the whole fit in one job (profile ``batch``); the output store is
  complete and bitwise the threaded fit; submitting again does nothing, and another fit
  into the same store is refused before anything is submitted;
* a job told that its walltime is near (USR1 to its batch shell, as SLURM sends it for
  ``requeue-before-walltime``) requeues itself mid-fit, and its next run continues from
  its newest checkpoint and ends bitwise equal to an uninterrupted fit. A requeue is what
  SLURM also does to a preempted ``--requeue`` job.

Without SLURM these skip and say why, unless ``BIGNMF_REQUIRE_SLURM=1`` (set by CI after it
started SLURM), which makes them fail instead. Each SLURM test prints its submit-to-result
time. Every job a test submits is cancelled at its end if it still exists.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
import yaml
import zarr
from conftest import LowRankRows, assert_same_fit, running_cluster, write_zarr

from bignmf import NMF, cli, hpc

REPO = Path(__file__).resolve().parent.parent
N_SAMPLES, N_FEATURES, RANK = 2000, 60, 5
FIT_ARGS = ["-k", str(RANK), "--init", "random", "--random-state", "0", "--tol", "0",
            "--block-rows", "500"]
JOB_TIMEOUT = 240  # seconds for one job to finish on a loaded 2-core machine
SLURM_TOOLS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bignmf.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


# --------------------------------------------------------------------------- profiles
def test_shipped_profiles_load_and_equal_the_documented_copies():
    names = hpc.available_profiles()
    documented = sorted(p.stem for p in (REPO / "cluster").glob("*.yaml"))
    assert names == documented == ["address", "local", "pbs", "pbs-batch", "slurm",
                                   "slurm-batch"]
    for name in names:
        assert (REPO / "cluster" / f"{name}.yaml").read_text() == hpc.profile_text(name), (
            f"cluster/{name}.yaml and bignmf/profiles/{name}.yaml differ")
    modes = {name: (hpc.load_profile(name).mode, hpc.load_profile(name).system)
             for name in names}
    assert modes == {
        "local": ("local", None), "address": ("address", None),
        "slurm": ("jobqueue", "slurm"), "pbs": ("jobqueue", "pbs"),
        "slurm-batch": ("batch", "slurm"), "pbs-batch": ("batch", "pbs"),
    }
    # a path works as well as a name, and underscores as well as hyphens
    path = REPO / "cluster" / "slurm.yaml"
    assert hpc.load_profile(path).jobqueue == hpc.load_profile("slurm").jobqueue
    p = hpc.load_profile({"jobqueue": {"slurm": {"cores": 2, "memory": "4GB",
                                                 "job_extra_directives": ["--qos=x"]}},
                          "bignmf": {"n_workers": 2}})
    assert p.mode == "jobqueue" and p.setting("job-extra-directives") == ["--qos=x"]
    assert p.option("n-workers") == 2


@pytest.mark.parametrize("case", ["unknown-name", "unknown-key", "two-systems", "batch-no-mem",
                                  "batch-too-small", "script-from-jobqueue", "bad-mode"])
def test_profile_errors_are_clear(case, tmp_path):
    specs = {
        "unknown-key": ({"bignmf": {"mode": "local", "n-wokers": 2}}, "n-wokers"),
        "two-systems": ({"jobqueue": {"slurm": {}, "pbs": {}}}, "exactly one job system"),
        "batch-no-mem": ({"jobqueue": {"slurm": {"cores": 2}}, "bignmf": {"mode": "batch"}},
                         "memory is required"),
        "bad-mode": ({"bignmf": {"mode": "cloud"}}, "must be one of"),
    }
    if case == "unknown-name":
        with pytest.raises(FileNotFoundError, match="slurm-batch"):
            hpc.load_profile("slrum")
    elif case == "batch-too-small":
        small = hpc.load_profile("slurm-batch").with_settings(memory="1GB")  # 8 workers
        with pytest.raises(ValueError, match="less than 128 MiB per worker"):
            hpc.job_script(small, "V.zarr", "out.zarr", n_components=2)
    elif case == "script-from-jobqueue":
        with pytest.raises(ValueError, match="--cluster slurm"):
            hpc.job_script("slurm", "V.zarr", "out.zarr", n_components=2)
    else:
        data, message = specs[case]
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ValueError, match=message):
            hpc.load_profile(path)


# --------------------------------------------------------------------------- job scripts
def _directives_then_commands(script: str, prefix: str) -> tuple[list[str], list[str]]:
    """The directive lines, and the lines from the first command on. SLURM and PBS read
    directives only up to the first line that is not a comment or blank."""
    lines = script.splitlines()
    first = next(i for i, line in enumerate(lines)
                 if line.strip() and not line.startswith("#"))
    assert not any(line.startswith(prefix) for line in lines[first:]), \
        f"{prefix} directives after the first command are ignored by the job system"
    return [line for line in lines[:first] if line.startswith(prefix)], lines[first:]


def _fit_command(commands: list[str]) -> list[str]:
    line = next(line for line in commands if "-m bignmf.cli fit" in line)
    argv = shlex.split(line.removeprefix("exec ").removesuffix(" &"))
    assert argv[:4] == [sys.executable, "-m", "bignmf.cli", "fit"]
    return argv[3:]  # from the subcommand on


def _bash_syntax_ok(script: str) -> None:
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_slurm_batch_script(tmp_path):
    profile = hpc.load_profile("slurm-batch").with_settings(
        walltime="00:20:00", queue="short", cores=4, memory="8GB",
        log_directory=str(tmp_path / "logs"), job_extra_directives=["--qos=normal"])
    script = hpc.job_script(profile, "data.zarr/X", "out.zarr", n_components=7, max_iter=50,
                            init="nndsvda")
    assert script.startswith("#!/usr/bin/env bash\n")
    directives, commands = _directives_then_commands(script, "#SBATCH")
    assert directives == [
        "#SBATCH -J bignmf",
        f"#SBATCH -o {tmp_path}/logs/bignmf-%j.out",
        "#SBATCH -p short",
        "#SBATCH -n 1",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=8G",                 # 8 GB = 7.45 GiB, rounded up
        "#SBATCH -t 00:20:00",
        "#SBATCH --requeue",                # SLURM requeues it when preempted
        "#SBATCH --open-mode=append",       # one log for all runs
        "#SBATCH --signal=B:USR1@300",      # requeue-before-walltime
        "#SBATCH --qos=normal",
    ]
    # the job requeues itself on USR1, and waits for the fit in the background
    assert any(line.startswith("trap ") and 'scontrol requeue "$SLURM_JOB_ID"' in line
               and line.endswith("USR1") for line in commands)
    assert commands[-1] == 'exit "$rc"'
    _bash_syntax_ok(script)
    # the fit command, parsed back by bignmf's own parser
    args = cli.build_parser().parse_args(_fit_command(commands))
    workers_memory = (8 * 10**9 - hpc.RESERVE_BYTES - 4 * hpc.NANNY_BYTES) // 4 // 2**20
    assert (args.command, args.input, args.output) == (
        "fit", os.path.abspath("data.zarr/X"), os.path.abspath("out.zarr"))
    assert (args.n_components, args.max_iter, args.init, args.tol) == (7, 50, "nndsvda", 1e-4)
    assert args.checkpoint_every == 10 and args.checkpoint_seconds is None  # the profile's
    assert args.resume is True
    assert (args.workers, args.worker_memory) == (4, f"{workers_memory}MiB")
    assert args.cluster is None and args.scheduler is None  # the embedded cluster
    # a checkpoint interval given for the fit replaces the profile's
    script = hpc.job_script(profile, "V.zarr", "out.zarr", n_components=7,
                            checkpoint_seconds=600)
    args = cli.build_parser().parse_args(_fit_command(script.splitlines()))
    assert (args.checkpoint_every, args.checkpoint_seconds) == (None, 600.0)


def test_slurm_batch_script_without_self_requeue():
    profile = hpc.load_profile({
        "jobqueue": {"slurm": {"cores": 2, "memory": "4GiB", "account": "proj",
                               "job-directives-skip": ["--open-mode"],
                               "job-script-prologue": ["module load python"]}},
        "bignmf": {"mode": "batch", "worker-memory": "1GiB"}})
    script = hpc.job_script(profile, "V.zarr", "out.zarr", n_components=3)
    directives, commands = _directives_then_commands(script, "#SBATCH")
    assert directives == ["#SBATCH -J bignmf", "#SBATCH -A proj", "#SBATCH -n 1",
                          "#SBATCH --cpus-per-task=2", "#SBATCH --mem=4G", "#SBATCH --requeue"]
    assert commands[0] == "module load python"
    assert commands[-1].startswith("exec ") and len(commands) == 2
    args = cli.build_parser().parse_args(_fit_command(commands))
    assert (args.workers, args.worker_memory) == (2, "1024MiB")
    _bash_syntax_ok(script)


def test_pbs_batch_script(tmp_path):
    profile = hpc.load_profile("pbs-batch").with_settings(
        cores=4, memory="16GiB", queue="workq", log_directory=str(tmp_path))
    script = hpc.job_script(profile, "V.zarr", "out.zarr", n_components=5, max_iter=80)
    directives, commands = _directives_then_commands(script, "#PBS")
    assert directives == [
        "#PBS -N bignmf", "#PBS -q workq", "#PBS -l select=1:ncpus=4:mem=16gb",
        "#PBS -l walltime=04:00:00", "#PBS -j oe", f"#PBS -o {tmp_path}/",
        "#PBS -r y",  # rerunnable: requeued when preempted
    ]
    assert len(commands) == 1 and commands[0].startswith("exec ")
    args = cli.build_parser().parse_args(_fit_command(commands))
    assert (args.n_components, args.max_iter, args.resume, args.workers) == (5, 80, True, 4)
    _bash_syntax_ok(script)


def test_job_script_command_prints_the_script(tmp_path):
    out = tmp_path / "out.zarr"
    proc = run_cli("job-script", "V.zarr", "-o", str(out), *FIT_ARGS, "--walltime", "00:30:00",
                   "--cores", "2", "--memory", "4GB", "--max-iter", "40")
    assert proc.returncode == 0, proc.stderr
    expected = hpc.job_script(
        hpc.load_profile("slurm-batch").with_settings(walltime="00:30:00", cores=2,
                                                      memory="4GB"),
        "V.zarr", str(out), n_components=RANK, init="random", random_state=0, tol=0.0,
        block_rows=500, max_iter=40)
    assert proc.stdout == expected
    # a jobqueue profile cannot be a job script, nor a batch profile a --cluster
    proc = run_cli("job-script", "V.zarr", "-o", str(out), "-k", "2", "--profile", "slurm")
    assert proc.returncode == 2 and "--cluster slurm" in proc.stderr


def test_worker_job_script_is_dask_jobqueues(tmp_path):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (bignmf[hpc])")
    profile = _jobqueue_profile(tmp_path, "debug", "bignmf-w", processes=2, cores=2)
    script = hpc.worker_job_script(profile)
    directives, commands = _directives_then_commands(script, "#SBATCH")
    assert "#SBATCH -p debug" in directives and "#SBATCH --cpus-per-task=2" in directives
    assert "#SBATCH -J bignmf-w" in directives
    # The embedded cluster's huge pages for malloc, added to the job's glibc tunables, then
    # the workers.
    setup, command = [line for line in commands if line.strip()]
    assert setup == hpc.TUNABLES_LINE
    _bash_syntax_ok(script)
    argv = shlex.split(command)
    assert argv[:3] == [sys.executable, "-m", "distributed.cli.dask_worker"]
    for flag, value in [("--nthreads", "1"), ("--nworkers", "2"), ("--interface", "lo"),
                        ("--death-timeout", "30")]:
        assert argv[argv.index(flag) + 1] == value


def test_worker_jobs_keep_a_profiles_own_glibc_tunables():
    """A profile whose prologue sets GLIBC_TUNABLES gets no line of bignmf's; others get it
    after their own lines."""
    def prologue(lines):
        profile = hpc.load_profile({"jobqueue": {"slurm": {
            "cores": 1, "memory": "1GB", "job-script-prologue": lines}}})
        return hpc.jobqueue_kwargs(profile)["job_script_prologue"]

    assert prologue(["export GLIBC_TUNABLES=glibc.malloc.hugetlb=0"]) == [
        "export GLIBC_TUNABLES=glibc.malloc.hugetlb=0"]
    assert prologue(["module load python"]) == ["module load python", hpc.TUNABLES_LINE]
    assert prologue([]) == [hpc.TUNABLES_LINE]


def test_fit_refuses_a_batch_profile_and_conflicting_options(tmp_path):
    path = write_zarr(tmp_path / "V.zarr", np.ones((10, 4)), chunks=(5, 4))
    out = str(tmp_path / "out.zarr")
    proc = run_cli("fit", path, "-o", out, "-k", "2", "--cluster", "slurm-batch")
    assert proc.returncode == 2 and "bignmf submit" in proc.stderr
    proc = run_cli("fit", path, "-o", out, "-k", "2", "--cluster", "local",
                   "--scheduler", "tcp://127.0.0.1:1")
    assert proc.returncode == 2 and "exclude each other" in proc.stderr
    proc = run_cli("fit", path, "-o", out, "-k", "2", "--resume")
    assert proc.returncode == 2 and "--checkpoint-every" in proc.stderr
    assert not os.path.exists(out)


@pytest.mark.parametrize("mode", ["local", "address"])
def test_fit_with_local_and_address_profiles(mode, dataset, tmp_path):
    """``--cluster`` with an embedded cluster of one worker, and with a running scheduler
    (a real ``dask scheduler`` + ``dask worker`` reached through its scheduler file)."""
    out = tmp_path / "out.zarr"
    profile = tmp_path / f"{mode}.yaml"
    with contextlib.ExitStack() as stack:
        if mode == "local":
            options = {"mode": "local", "n-workers": 1, "worker-memory": "1GiB"}
        else:
            running = stack.enter_context(running_cluster(tmp_path / "cluster", n_workers=1))
            options = {"mode": "address", "scheduler-file": running.scheduler_file}
        profile.write_text(yaml.safe_dump({"bignmf": options}))
        proc = run_cli("fit", dataset, "-o", str(out), "--cluster", str(profile), *FIT_ARGS,
                       "--max-iter", "10")
        assert proc.returncode == 0, proc.stderr
        if mode == "address":  # the work ran on that cluster: no cluster of its own
            assert "connected to " + running.scheduler_file in proc.stderr
            assert "started a local Dask cluster" not in proc.stderr
            assert len(running.workers()) == 1  # still up: the fit only disconnected
        else:
            assert "local Dask cluster: 1 workers" in proc.stderr
    _assert_result(out, dataset, 10)


# --------------------------------------------------------------------------- real SLURM
def _slurm() -> tuple[str | None, str]:
    """(the partition to use, '') or (None, why there is none)."""
    missing = [tool for tool in SLURM_TOOLS if shutil.which(tool) is None]
    if missing:
        return None, f"{', '.join(missing)} not on PATH"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P %a %T"], capture_output=True,
                              text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None, "sinfo did not answer within 30 s"
    if proc.returncode != 0:
        return None, f"sinfo failed: {proc.stderr.strip()}"
    usable = []
    for line in proc.stdout.splitlines():
        name, avail, state = line.split()
        if avail == "up" and state.rstrip("*~#") in ("idle", "mixed", "allocated",
                                                      "completing"):
            usable.append((not name.endswith("*"), name.rstrip("*")))  # default first
    wanted = os.environ.get("BIGNMF_SLURM_PARTITION")
    names = [name for _, name in sorted(usable)]
    if wanted:
        return (wanted, "") if wanted in names else (None, f"partition {wanted!r} not usable")
    return (names[0], "") if names else (None, f"no partition is up with a usable node:\n"
                                               f"{proc.stdout}")


@pytest.fixture(scope="module")
def partition() -> str:
    name, why = _slurm()
    if name is None:
        message = (f"no SLURM to test with: {why} (start one on this machine with "
                   "`sudo cluster/slurm-local/start.sh`)")
        if os.environ.get("BIGNMF_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return name


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """A 2000 x 60 float64 Zarr store of low rank plus noise, in 8 stored row chunks."""
    X = LowRankRows(N_FEATURES, RANK, seed=3, dtype=np.float64).dense(N_SAMPLES)
    return write_zarr(tmp_path_factory.mktemp("slurm-data") / "V.zarr", X,
                      chunks=(250, N_FEATURES))


_REFERENCE: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}


def reference(path: str, max_iter: int) -> tuple[np.ndarray, np.ndarray, float]:
    """W, H and the error of the same fit in this process, on the threaded scheduler."""
    if max_iter not in _REFERENCE:
        with dask.config.set(scheduler="threads"):
            model = NMF(RANK, init="random", random_state=0, tol=0, max_iter=max_iter,
                        block_rows=500)
            W = np.asarray(model.fit_transform(path))
        _REFERENCE[max_iter] = W, model.components_, float(model.reconstruction_err_)
    return _REFERENCE[max_iter]


@pytest.fixture
def job_name(request) -> Iterator[str]:
    """A job name unique to this test; its jobs are cancelled at the end if any remain."""
    name = f"bignmf-test-{os.getpid()}-{request.node.name[:20]}"
    yield name
    ids = _jobs(name)
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=60)


def _jobs(name: str) -> list[str]:
    """Ids of the jobs in the queue named ``name`` or ``name-workers``, any state."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True,
                         timeout=60).stdout
    return [i for i, j in (line.split(maxsplit=1) for line in out.splitlines() if line)
            if j in (name, f"{name}-workers")]


def _job_state(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True,
                         text=True, timeout=60).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _wait_job(job_id: str, until: tuple[str, ...], timeout: float = JOB_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = _job_state(job_id).get("JobState", "")
        if state in until or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def _log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"<no log at {path}>"


def _report(capsys, what: str, seconds: float) -> None:
    with capsys.disabled():
        print(f"\n[slurm] {what}: {seconds:.1f} s", flush=True)


def _jobqueue_profile(tmp_path: Path, queue: str, name: str, *, processes: int = 1,
                      cores: int = 1) -> Path:
    path = tmp_path / "workers.yaml"
    path.write_text(yaml.safe_dump({
        "jobqueue": {"slurm": {
            "name": name, "cores": cores, "processes": processes, "memory": "1GB",
            "walltime": "00:10:00", "queue": queue,
            # loopback only, as on a laptop: workers and scheduler on lo / 127.0.0.1
            "interface": "lo", "death-timeout": 30,
            "local-directory": str(tmp_path), "log-directory": str(tmp_path / "logs"),
            "scheduler-options": {"host": "127.0.0.1", "dashboard_address": ":0"},
        }},
        "bignmf": {"n-workers": 2, "wait-timeout": 180},
    }))
    return path


def _batch_profile(tmp_path: Path, queue: str, name: str,
                   options: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "batch.yaml"
    path.write_text(yaml.safe_dump({
        "jobqueue": {"slurm": {"name": name, "cores": 2, "memory": "2GB",
                               "walltime": "00:10:00", "queue": queue,
                               "log-directory": str(tmp_path / "logs")}},
        "bignmf": {"mode": "batch", "checkpoint-every": 5, **(options or {})},
    }))
    return path


def _assert_result(out: Path, dataset: str, max_iter: int) -> None:
    W_ref, H_ref, err_ref = reference(dataset, max_iter)
    res = zarr.open_group(out, mode="r")
    attrs = res.attrs.asdict()
    assert attrs["status"] == "complete" and attrs["n_iter"] == max_iter
    W, H = res["W"][...], res["H"][...]
    assert W.shape == (N_SAMPLES, RANK) and H.shape == (RANK, N_FEATURES)
    # Block kernels are deterministic and partial sums are added in a fixed tree order, so
    # where the tasks ran changes no bit.
    assert_same_fit(W, W_ref)
    assert_same_fit(H, H_ref)
    assert attrs["reconstruction_err"] == pytest.approx(err_ref, rel=1e-12)


def test_fit_with_dask_workers_as_slurm_jobs(partition, dataset, tmp_path, job_name, capsys):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (bignmf[hpc])")
    profile = _jobqueue_profile(tmp_path, partition, f"{job_name}-workers")
    out = tmp_path / "out.zarr"
    t0 = time.monotonic()
    proc = run_cli("fit", dataset, "-o", str(out), "--cluster", str(profile), *FIT_ARGS,
                   "--max-iter", "30")
    seconds = time.monotonic() - t0
    logs = tmp_path / "logs"
    worker_logs = "\n".join(_log(p) for p in sorted(logs.glob("*"))) if logs.exists() else ""
    assert proc.returncode == 0, f"{proc.stderr[-4000:]}\n--- worker logs\n{worker_logs[-4000:]}"
    _report(capsys, "fit with 2 dask-jobqueue workers as SLURM jobs, command start to result",
            seconds)
    _assert_result(out, dataset, 30)
    # The work ran on SLURM jobs: two worker jobs, each registered with this fit's scheduler.
    found = re.search(r"scheduler at (tcp://\S+)", proc.stderr)
    assert found, proc.stderr[-4000:]
    scheduler = found.group(1)
    assert scheduler.startswith("tcp://127.0.0.1:")
    registered = [p for p in logs.glob("*.err")
                  if re.search(rf"Registered to:\s+{re.escape(scheduler)}", _log(p))]
    assert len(registered) == 2, worker_logs[-4000:]
    assert re.search(r"2 workers connected .* \(jobs \d+, \d+\)", proc.stderr)
    # ... and the fit cancelled its worker jobs when it was done.
    deadline = time.monotonic() + 60
    while _jobs(job_name) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _jobs(job_name)


def test_fit_survives_a_worker_job_that_ends(partition, dataset, tmp_path, job_name, capsys):
    """A worker job cancelled mid-fit (as a walltime or a node failure ends it): the fit
    goes back to its newest checkpoint if it lost data, goes on with the other worker,
    a replacement job is submitted and joins, and the result is bitwise the same."""
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (bignmf[hpc])")
    # Long enough for the replacement job to start and join before the end (100 iterations
    # took ~5 s after the cancel, and a replacement sometimes joined after the fit ended).
    max_iter = 300
    profile = _jobqueue_profile(tmp_path, partition, f"{job_name}-workers")
    out = tmp_path / "out.zarr"
    env = {**os.environ, "DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT": "1s"}
    log_path = tmp_path / "fit.log"
    t0 = time.monotonic()
    with open(log_path, "w") as log, subprocess.Popen(
        [sys.executable, "-m", "bignmf.cli", "fit", dataset, "-o", str(out), "--cluster",
         str(profile), *FIT_ARGS, "--max-iter", str(max_iter), "--checkpoint-every", "5"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    ) as fit:
        try:
            latest = out / "checkpoints" / "LATEST"
            deadline = time.monotonic() + JOB_TIMEOUT
            while not (latest.exists() and latest.read_text().strip() != "ckpt-000000"):
                assert fit.poll() is None and time.monotonic() < deadline, \
                    _log(log_path)[-4000:]
                time.sleep(0.1)
            first_jobs = _jobs(job_name)
            assert len(first_jobs) == 2
            subprocess.run(["scancel", first_jobs[0]], check=True, timeout=60)
            fit.wait(timeout=JOB_TIMEOUT)
        finally:
            if fit.poll() is None:
                fit.terminate()
                fit.wait(timeout=60)
    seconds = time.monotonic() - t0
    stderr = _log(log_path)
    assert fit.returncode == 0, stderr[-4000:]
    _report(capsys, f"fit of {max_iter} iterations on SLURM workers, one worker job "
            "cancelled mid-fit, command start to result", seconds)
    _assert_result(out, dataset, max_iter)
    assert "ended; submitting replacements" in stderr
    found = re.search(r"scheduler at (tcp://\S+)", stderr)
    assert found, stderr[-4000:]
    scheduler = found.group(1)
    registered = [p for p in (tmp_path / "logs").glob("*.err")
                  if re.search(rf"Registered to:\s+{re.escape(scheduler)}", _log(p))]
    assert len(registered) == 3  # the two first jobs and the replacement
    deadline = time.monotonic() + 60
    while _jobs(job_name) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _jobs(job_name)


def test_fit_fails_at_once_when_sbatch_refuses_the_workers(partition, dataset, tmp_path,
                                                           job_name):
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (bignmf[hpc])")
    profile = _jobqueue_profile(tmp_path, "no-such-partition", f"{job_name}-workers")
    out = tmp_path / "out.zarr"
    t0 = time.monotonic()
    proc = run_cli("fit", dataset, "-o", str(out), "--cluster", str(profile), *FIT_ARGS)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert "bignmf: error: submitting a worker job failed" in proc.stderr
    assert "invalid partition" in proc.stderr.lower()
    assert time.monotonic() - t0 < 120  # not the profile's wait-timeout of 180 s
    assert not out.exists() and not _jobs(job_name)


def test_submit_runs_the_whole_fit_in_one_job(partition, dataset, tmp_path, job_name, capsys):
    profile = _batch_profile(tmp_path, partition, job_name)
    out = tmp_path / "out.zarr"
    args = ["submit", dataset, "-o", str(out), "--profile", str(profile), *FIT_ARGS,
            "--max-iter", "30"]
    t0 = time.monotonic()
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    assert job_id.isdigit(), proc.stdout
    state = _wait_job(job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                               "OUT_OF_MEMORY"))
    seconds = time.monotonic() - t0
    log = _log(tmp_path / "logs" / f"{job_name}-{job_id}.out")
    assert state == "COMPLETED", f"job {job_id}: {state}\n{log[-4000:]}"
    assert _job_state(job_id)["ExitCode"] == "0:0"
    _report(capsys, "`bignmf submit` of a one-job fit, submit to completed job", seconds)
    _assert_result(out, dataset, 30)
    assert "bignmf started a local Dask cluster: 2 workers" in log
    # The same command again: the result is complete, nothing is submitted.
    proc = run_cli(*args)
    assert proc.returncode == 0 and proc.stdout == "", proc.stderr
    assert "already complete" in proc.stderr
    # Another fit into the same store is refused before anything is submitted.
    proc = run_cli(*args[:-1], "31")
    assert proc.returncode == 2 and "holds another fit" in proc.stderr
    assert "max_iter=30 (now 31)" in proc.stderr
    assert not _jobs(job_name)


@pytest.mark.parametrize("store_W", ["no", "yes"])
def test_job_requeues_itself_near_its_walltime_and_continues(partition, dataset, tmp_path,
                                                             job_name, capsys, store_W):
    """With W in worker memory, and with W in files beside the checkpoints (``--store-W
    yes``): the same result, and no W files are left."""
    max_iter = 80
    profile = _batch_profile(tmp_path, partition, job_name, {"requeue-before-walltime": 300})
    out = tmp_path / "out.zarr"
    t0 = time.monotonic()
    proc = run_cli("submit", dataset, "-o", str(out), "--profile", str(profile), *FIT_ARGS,
                   "--max-iter", str(max_iter), "--store-W", store_W)
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip()
    log_path = tmp_path / "logs" / f"{job_name}-{job_id}.out"
    # Wait for a checkpoint after the first (iteration 0), then signal the running job as
    # SLURM does 300 s before its walltime (--signal=B:USR1@300: USR1 to the batch shell).
    latest = out / "checkpoints" / "LATEST"
    deadline = time.monotonic() + JOB_TIMEOUT
    iteration = 0
    while iteration < 5:
        with contextlib.suppress(OSError, ValueError):
            iteration = int(latest.read_text().strip().removeprefix("ckpt-"))
        state = _job_state(job_id).get("JobState")
        assert state in ("PENDING", "CONFIGURING", "RUNNING"), \
            f"job {job_id} is {state} before it could be requeued\n{_log(log_path)[-4000:]}"
        assert time.monotonic() < deadline, _log(log_path)[-4000:]
        time.sleep(0.1)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, timeout=60)
    # The job requeues itself. SLURM holds a requeued job for about 2 minutes (its
    # EligibleTime); release it now. Not in the same second as the requeue, though: slurmd
    # refuses to launch a job whose credential is not newer (in whole seconds) than the
    # one the requeue revoked.
    assert _wait_job(job_id, ("PENDING",), timeout=60) == "PENDING", _log(log_path)[-4000:]
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True,
                   timeout=60)
    state = _wait_job(job_id, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                               "OUT_OF_MEMORY"))
    seconds = time.monotonic() - t0
    log = _log(log_path)
    assert state == "COMPLETED", f"job {job_id}: {state}\n{log[-4000:]}"
    assert _job_state(job_id)["Restarts"] == "1"
    assert f"bignmf: walltime near: requeueing job {job_id}" in log
    _report(capsys, f"one-job fit of {max_iter} iterations that requeued itself once, "
            "submit to result", seconds)
    # The second run continued from a checkpoint (not from the start), and the result is
    # bitwise that of an uninterrupted fit.
    resumed = re.findall(r"continuing the fit in \S+ from its checkpoint of iteration (\d+)",
                         log)
    assert len(resumed) == 1 and int(resumed[0]) >= 5, log[-4000:]
    assert log.count("bignmf started a local Dask cluster") == 2
    _assert_result(out, dataset, max_iter)
    assert zarr.open_group(out, mode="r").attrs["params"]["store_W"] is (store_W == "yes")
    assert "scratch" not in os.listdir(out)
