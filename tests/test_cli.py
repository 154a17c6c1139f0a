"""The ``bignmf`` command: fit a Zarr store, the output layout, errors, and the demo.

The commands run as real subprocesses (as a user types them), each on its own embedded
cluster, so nothing here shares dask state with the test process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import zarr
from sklearn.decomposition import NMF as SkNMF


def run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bignmf.cli", *args], capture_output=True, text=True,
        timeout=300, cwd=cwd,
    )


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    V = (rng.random((600, 6)) @ rng.random((6, 80)) + 0.01 * rng.random((600, 80)))
    path = tmp_path / "data.zarr"
    root = zarr.open_group(path, mode="w")
    root.create_array("X", shape=V.shape, dtype="float64", chunks=(128, 40))[...] = V
    return path, V


def test_fit_writes_factors_history_and_parameters(store, tmp_path):
    path, V = store
    out = tmp_path / "out.zarr"
    proc = run_cli("fit", f"{path}/X", "-k", "6", "-o", str(out), "--init", "random",
                   "--random-state", "0", "--max-iter", "40", "--tol", "0")
    assert proc.returncode == 0, proc.stderr
    assert "done: 40 iterations" in proc.stdout
    res = zarr.open_group(out, mode="r")
    W, H, hist = res["W"][...], res["H"][...], res["loss_history"][...]
    assert W.shape == (600, 6) and H.shape == (6, 80)
    assert (W >= 0).all() and (H >= 0).all()
    assert hist.shape == (41,) and np.all(np.diff(hist) <= 1e-9 * hist[0])
    attrs = res.attrs.asdict()
    assert attrs["n_iter"] == 40 and attrs["params"]["n_components"] == 6
    assert attrs["input"] == os.path.abspath(f"{path}/X")
    err = np.linalg.norm(V - W @ H)
    assert err == pytest.approx(attrs["reconstruction_err"], rel=1e-6)
    sk = SkNMF(6, init="random", random_state=0, max_iter=40, tol=0).fit(V)
    assert err <= sk.reconstruction_err_ * 1.01
    # W is stored in row chunks like V's blocks, and no temporary store is left behind
    assert res["W"].chunks[0] <= 600
    assert sorted(os.listdir(tmp_path)) == ["data.zarr", "out.zarr"]


def test_fit_with_W_in_files_writes_the_same_factors(store, tmp_path):
    """``--store-W yes``: W lives in files beside the checkpoints between passes; the
    output is that of the fit with W in memory, and the files are gone at the end."""
    path, _ = store
    res = {}
    for store_W in ("no", "yes"):
        out = tmp_path / f"out-{store_W}.zarr"
        proc = run_cli("fit", f"{path}/X", "-k", "6", "-o", str(out), "--init", "random",
                       "--random-state", "0", "--max-iter", "12", "--tol", "0",
                       "--block-rows", "150", "--resident", "no", "--store-W", store_W,
                       "--checkpoint-every", "5")
        assert proc.returncode == 0, proc.stderr
        res[store_W] = zarr.open_group(out, mode="r")
    for name in ("W", "H", "loss_history"):
        np.testing.assert_allclose(res["yes"][name][...], res["no"][name][...], rtol=1e-12)
    assert res["yes"].attrs["params"]["store_W"] is True
    assert "scratch" not in os.listdir(tmp_path / "out-yes.zarr")


def test_fit_refuses_to_overwrite(store, tmp_path):
    path, _ = store
    out = tmp_path / "out.zarr"
    out.mkdir()
    proc = run_cli("fit", f"{path}/X", "-k", "2", "-o", str(out))
    assert proc.returncode == 2
    assert "exists" in proc.stderr


@pytest.mark.parametrize("case", ["missing", "group", "negative"])
def test_bad_input_fails_clearly_and_writes_nothing(case, store, tmp_path):
    path, V = store
    if case == "missing":
        source, expect = str(tmp_path / "nope.zarr"), "does not exist"
    elif case == "group":
        source, expect = str(path), "is a Zarr group, not an array"
    else:
        bad = V.copy()
        bad[517, 3] = -1.0
        z = zarr.create_array(tmp_path / "neg.zarr", shape=bad.shape, dtype="float64",
                              chunks=(128, 80))
        z[...] = bad
        source, expect = str(tmp_path / "neg.zarr"), "Negative values"
    out = tmp_path / "out.zarr"
    proc = run_cli("fit", source, "-k", "2", "-o", str(out))
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr
    assert not out.exists()
    assert not any(p.name.startswith("out.zarr") for p in tmp_path.iterdir())


def test_demo_runs_out_of_core_with_progress(tmp_path):
    proc = run_cli("demo", "--rows", "20000", "--cols", "500", "--rank", "4",
                   "--max-iter", "3", "--worker-memory-mb", "300", "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "iter    3/3" in proc.stderr  # a progress line per iteration (log mode)
    assert "worker peak memory" in proc.stdout
    assert "dashboard" in proc.stdout
    res = zarr.open_group(tmp_path / "result.zarr", mode="r")
    assert res["W"].shape == (20000, 4) and res["H"].shape == (4, 500)


def test_convert_then_fit_a_matrix_market_file(tmp_path):
    """`bignmf convert` turns a .mtx file into a CSR store (refusing to overwrite it unless
    asked), and `bignmf fit` factorizes that store on the embedded cluster as scikit-learn
    does the same matrix in memory."""
    import scipy.io
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    V = rng.random((400, 5)) @ rng.random((5, 60))
    V[rng.random(V.shape) < 0.6] = 0.0
    scipy.io.mmwrite(tmp_path / "V.mtx", sp.coo_matrix(V))
    store = tmp_path / "V.zarr"
    proc = run_cli("convert", str(tmp_path / "V.mtx"), str(store), "--dtype", "float32",
                   "--block-mb", "0.01")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {store}: CSR 400 x 60 float32, {np.count_nonzero(V)} stored" in proc.stdout
    group = zarr.open_group(store, mode="r")
    assert group.attrs["encoding-type"] == "csr_matrix" and group["data"].dtype == np.float32
    again = run_cli("convert", str(tmp_path / "V.mtx"), str(store))
    assert again.returncode == 2 and "exists" in again.stderr

    out = tmp_path / "out.zarr"
    proc = run_cli("fit", str(store), "-k", "5", "-o", str(out), "--init", "nndsvda",
                   "--random-state", "0", "--max-iter", "30", "--tol", "0")
    assert proc.returncode == 0, proc.stderr
    res = zarr.open_group(out, mode="r")
    assert res["W"].dtype == np.float32 and res["W"].shape == (400, 5)
    from bignmf import NMF

    V32 = V.astype(np.float32)
    ref = NMF(5, init="nndsvda", random_state=0, max_iter=30, tol=0).fit(sp.csr_matrix(V32))
    np.testing.assert_allclose(res["H"][...], ref.components_, rtol=1e-3,
                               atol=1e-4 * float(ref.components_.max()))
    sk = SkNMF(5, init="nndsvda", random_state=0, max_iter=30, tol=0).fit(V32)
    assert res.attrs["reconstruction_err"] <= sk.reconstruction_err_ * 1.01


def test_resume_accepts_a_store_written_before_an_option_existed(tmp_path):
    """An output store written by an older bignmf lacks the options added since (here
    ``store_W``): they count as their defaults, so a resubmitted job still continues it,
    unless the option is now set to something else."""
    from bignmf import cli

    defaults = cli._option_defaults()
    options = {key: defaults[key] for key in cli._FIT_OPTIONS} | {"n_components": 6}
    out, data = str(tmp_path / "out.zarr"), str(tmp_path / "data.zarr")
    older = {key: value for key, value in options.items() if key != "store_W"}
    zarr.open_group(out, mode="w").attrs.update(
        {"status": "running", "input": data, "cli_options": older})
    assert cli.existing_fit(out, data, options)["status"] == "running"
    with pytest.raises(FileExistsError, match="store_W='auto' \\(now 'yes'\\)"):
        cli.existing_fit(out, data, options | {"store_W": "yes"})
    with pytest.raises(FileExistsError, match="n_components=6 \\(now 7\\)"):
        cli.existing_fit(out, data, options | {"n_components": 7})
