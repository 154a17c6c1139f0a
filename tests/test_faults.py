"""A worker that dies mid-fit neither fails the fit nor changes its result.

Workers are real processes (a ``LocalCluster`` with ``processes=True``, and bignmf's
embedded cluster in a subprocess); one is SIGKILLed while the fit runs, taking with it the
blocks of W it held. The fit goes back to its newest checkpoint and redoes the iterations
since, so its result equals that of an undisturbed fit (to 1e-12; bit for bit in our runs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr
from conftest import assert_same_fit
from distributed import Client, LocalCluster

from bignmf import NMF

PARAMS = dict(n_components=8, init="random", random_state=0, max_iter=25, tol=0,
              block_rows=1000)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.random((12000, 8)) @ rng.random((8, 300)) + 0.05 * rng.random((12000, 300))
    path = tmp_path_factory.mktemp("faults") / "V.zarr"
    zarr.create_array(path, shape=X.shape, chunks=(1000, 300), dtype="f8")[...] = X
    return str(path)


def test_worker_killed_mid_fit_gives_the_same_result(store, tmp_path):
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        reference = NMF(**PARAMS).fit(store)
        pids = list(client.run(os.getpid).values())
        killed: list[int] = []

        def kill_a_worker(info):
            if info.iteration == 12 and not killed:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        model = NMF(**PARAMS, checkpoint=tmp_path / "ck.zarr", checkpoint_every=5)
        model.fit(store, callback=kill_a_worker)
        assert killed and pids[0] not in client.run(os.getpid).values()
    assert_same_fit(model.components_, reference.components_)
    assert_same_fit(model.loss_history_, reference.loss_history_)
    assert model.n_iter_ == 25


EMBEDDED = textwrap.dedent("""
    # a user's script: no __main__ guard, no cluster set up, no checkpoint asked for
    import os, signal, sys
    import numpy as np
    from distributed import get_client
    from bignmf import NMF

    params = dict(n_components=8, init="random", random_state=0, max_iter=25, tol=0,
                  block_rows=1000)
    reference = NMF(**params).fit(sys.argv[1])          # starts the embedded cluster
    client = get_client()
    victim = list(client.run(os.getpid).values())[0]
    killed = []

    def kill_a_worker(info):
        if info.iteration == 14 and not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    model = NMF(**params).fit(sys.argv[1], callback=kill_a_worker)
    assert killed and victim not in client.run(os.getpid).values()
    # equal to 1e-12 (bitwise in our runs; BLAS may round differently run to run)
    np.testing.assert_allclose(model.components_, reference.components_, rtol=1e-12,
                               atol=1e-12 * np.abs(reference.components_).max())
    print("identical after a worker was killed")
""")


def test_embedded_cluster_recovers_without_being_asked(store, tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text(EMBEDDED)
    proc = subprocess.run([sys.executable, str(script), store], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "identical after a worker was killed" in proc.stdout
    assert "redoing from the checkpoint of iteration 10" in proc.stderr
