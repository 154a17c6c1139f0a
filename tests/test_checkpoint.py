"""Checkpoints and resume: a resumed fit equals an uninterrupted one, whatever kills it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import dask
import numpy as np
import pytest
import zarr
from conftest import assert_same_fit

from bignmf import NMF, checkpoint

PARAMS = dict(n_components=6, random_state=0, tol=0, shuffle=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.random((400, 6)) @ rng.random((6, 90)) + 0.05 * rng.random((400, 90))


@pytest.fixture
def zarr_path(tmp_path, data):
    path = tmp_path / "V.zarr"
    zarr.create_array(path, shape=data.shape, chunks=(64, 90), dtype="f8")[...] = data
    return str(path)


@pytest.mark.parametrize("kind", ["numpy", "zarr"])
def test_resume_equals_uninterrupted(kind, data, zarr_path, tmp_path):
    X = data if kind == "numpy" else zarr_path
    with dask.config.set(scheduler="threads"):
        full = NMF(max_iter=30, **PARAMS)
        W_full = np.asarray(full.fit_transform(X))
        store = tmp_path / "ck.zarr"
        NMF(max_iter=12, checkpoint=store, checkpoint_every=5, **PARAMS).fit(X)
        assert checkpoint.latest(store).endswith("ckpt-000012")  # the end is checkpointed too
        resumed = NMF(max_iter=30, checkpoint=store, checkpoint_every=5, **PARAMS)
        W_res = np.asarray(resumed.fit_transform(X, resume=True))
    assert_same_fit(W_res, W_full)
    assert_same_fit(resumed.components_, full.components_)
    assert resumed.n_iter_ == 30
    assert_same_fit(resumed.loss_history_, full.loss_history_)


def test_only_the_newest_checkpoint_is_kept(data, tmp_path):
    store = tmp_path / "ck.zarr"
    NMF(max_iter=23, checkpoint=store, checkpoint_every=5, **PARAMS).fit(data)
    assert sorted(os.listdir(store / "checkpoints")) == ["LATEST", "ckpt-000023", "zarr.json"]


def test_resume_without_checkpoint_starts_afresh(data, tmp_path):
    a = NMF(max_iter=8, **PARAMS).fit(data)
    b = NMF(max_iter=8, checkpoint=tmp_path / "new.zarr", **PARAMS).fit(data, resume=True)
    assert_same_fit(a.components_, b.components_)


def test_resume_refuses_another_problem(data, tmp_path):
    store = tmp_path / "ck.zarr"
    NMF(max_iter=5, checkpoint=store, **PARAMS).fit(data)
    with pytest.raises(ValueError, match=r"another problem.*n_components=6 \(now 5\)"):
        NMF(max_iter=9, checkpoint=store, **{**PARAMS, "n_components": 5}).fit(data, resume=True)
    with pytest.raises(ValueError, match="shape"):
        NMF(max_iter=9, checkpoint=store, **PARAMS).fit(data[:300], resume=True)
    with pytest.raises(ValueError, match="needs checkpoint=PATH"):
        NMF(**PARAMS).fit(data, resume=True)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bignmf.cli", "-q", *args]


def test_sigkilled_cli_fit_resumes_to_the_same_result(tmp_path):
    rng = np.random.default_rng(1)
    V = rng.random((3000, 8)) @ rng.random((8, 400)) + 0.05 * rng.random((3000, 400))
    zarr.create_array(tmp_path / "V.zarr", shape=V.shape, chunks=(500, 400),
                      dtype="f8")[...] = V
    common = ["-k", "8", "--max-iter", "40", "--tol", "0", "--random-state", "0"]
    subprocess.run(_cli("fit", "V.zarr", "-o", "full.zarr", *common), cwd=tmp_path,
                   check=True, capture_output=True, timeout=300)

    every = 5
    proc = subprocess.Popen(_cli("fit", "V.zarr", "-o", "run.zarr", *common,
                                 "--checkpoint-every", str(every)),
                            cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "run.zarr" / "checkpoints" / "LATEST"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if latest.exists() and latest.read_text() >= "ckpt-000015":
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # as a batch system kills a job
    proc.wait()
    killed_at = int(latest.read_text().split("-")[1])
    assert 15 <= killed_at < 40
    state, _ = checkpoint.load(tmp_path / "run.zarr")
    assert state.iteration == killed_at  # nothing lost beyond the last checkpoint interval

    done = subprocess.run(_cli("resume", "run.zarr"), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    full, run = zarr.open_group(tmp_path / "full.zarr"), zarr.open_group(tmp_path / "run.zarr")
    assert_same_fit(run["W"][...], full["W"][...])
    assert_same_fit(run["H"][...], full["H"][...])
    assert_same_fit(run["loss_history"][...], full["loss_history"][...])
    assert run.attrs["status"] == "complete" and run.attrs["n_iter"] == 40


KILL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    import bignmf.executor
    from bignmf import NMF

    real_store, calls = bignmf.executor.store, []

    def store_then_die(array, target):
        calls.append(1)
        real_store(array, target)   # W of this checkpoint is written...
        if len(calls) == 4:         # ...and the process dies before H, attrs and LATEST
            os.kill(os.getpid(), signal.SIGKILL)

    bignmf.executor.store = store_then_die  # checkpoint.save looks it up at call time
    X = np.load(sys.argv[1])
    NMF(n_components=6, random_state=0, tol=0, shuffle=True, max_iter=30,
        checkpoint=sys.argv[2], checkpoint_every=4).fit(X)
""")


def test_kill_during_checkpoint_write_leaves_a_resumable_store(data, tmp_path):
    np.save(tmp_path / "X.npy", data)
    script = tmp_path / "die.py"
    script.write_text(KILL_DURING_WRITE)
    store = tmp_path / "ck.zarr"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "X.npy"), str(store)],
                          capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    # checkpoints: iterations 0, 4, 8, then 12 was being written; 8 is in force
    assert (store / "checkpoints" / "ckpt-000012").exists()
    assert checkpoint.latest(store).endswith("ckpt-000008")
    state, params = checkpoint.load(store)
    assert state.iteration == 8 and params["n_components"] == 6
    resumed = NMF(max_iter=30, checkpoint=store, checkpoint_every=4, **PARAMS)
    resumed.fit(data, resume=True)
    full = NMF(max_iter=30, **PARAMS).fit(data)
    assert_same_fit(resumed.components_, full.components_)
    assert checkpoint.latest(store).endswith("ckpt-000030")
