"""W kept in files between passes (``store_W``, :mod:`bignmf.scratch`).

* The stored blocks: written whole or not at all, a missing one is :class:`LostBlock`.
* On a real cluster (a scheduler and 2 worker processes), a fit with W in files gives the
  fit with W in memory bit for bit, for every kernel (HALS, KL multiplicative updates,
  masked HALS) and every initialization that forms W (random in this process, NNDSVD on the
  workers); between passes the workers then hold none of W; only two generations of files
  are kept; and a generation deleted under a running fit is recovered from its checkpoint
  to the same result.
* ``'auto'`` stores W when its share of a worker is large and V is not resident.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import LowRankRows, assert_same_fit, write_zarr

import bignmf.estimator
from bignmf import NMF, checkpoint
from bignmf.estimator import InvalidParameterError
from bignmf.scratch import LostBlock, Scratch, Spilling, StoredBlock

N_SAMPLES, N_FEATURES, RANK = 4000, 30, 4
BLOCK_ROWS = 1000  # 4 row blocks; W (4000 x 4 float64, 128 kB) outweighs H and the sums


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """(path of a Zarr store on disk, the same matrix in memory): float64, 4000 x 30, with
    a few NaN (for ``missing='nan'``) in a copy."""
    X = LowRankRows(N_FEATURES, RANK, seed=3, dtype=np.float64).dense(N_SAMPLES)
    base = tmp_path_factory.mktemp("data")
    path = write_zarr(base / "V.zarr", X, chunks=(500, N_FEATURES))
    Xn = X.copy()
    Xn[np.random.default_rng(0).random(X.shape) < 0.05] = np.nan
    nan_path = write_zarr(base / "Vnan.zarr", Xn, chunks=(500, N_FEATURES))
    return path, nan_path


# --------------------------------------------------------------------------- the files
def test_stored_block_round_trip_and_loss(tmp_path):
    block = StoredBlock(str(tmp_path / "b.npy"))
    A = np.arange(12.0).reshape(4, 3)
    assert block.save(A) is block
    np.testing.assert_array_equal(block.load(), A)
    assert os.listdir(tmp_path) == ["b.npy"]  # (the temporary name is gone)
    with pytest.raises(LostBlock, match="gone"):
        StoredBlock(str(tmp_path / "missing.npy")).load()
    with pytest.raises(FileNotFoundError, match="store_W needs a folder that every worker"):
        StoredBlock(str(tmp_path / "no-such-folder" / "b.npy")).save(A)


def test_spilling_reads_and_writes_the_block(tmp_path):
    def kernel(V, W, *, scale):
        return W * scale, {"sum": float(V.sum())}

    kernel_ = Spilling(kernel)
    assert kernel_.__name__ == "kernel"  # (task names stay those of the kernel)
    src, dst = StoredBlock(str(tmp_path / "a.npy")), StoredBlock(str(tmp_path / "b.npy"))
    src.save(np.ones((2, 2)))
    out = kernel_(np.ones(3), src, dst, scale=3.0)
    assert out == (dst, {"sum": 3.0})
    np.testing.assert_array_equal(dst.load(), np.full((2, 2), 3.0))
    W, _ = kernel_(np.ones(3), dst, scale=2.0)  # no target: read only
    np.testing.assert_array_equal(W, np.full((2, 2), 6.0))


def test_scratch_generations(tmp_path):
    scratch = Scratch(tmp_path / "root", n_blocks=3)
    stored = scratch.put(0, [np.full((2, 2), i) for i in range(3)])
    assert [b.load()[0, 0] for b in stored] == [0, 1, 2]
    nxt = scratch.targets(1)
    assert len({os.path.dirname(b.path) for b in [*stored, *nxt]}) == 2
    scratch.release(0)
    with pytest.raises(LostBlock):
        stored[0].load()
    scratch.targets(1)[0].save(np.zeros(1))
    scratch.reset()  # a new epoch: nothing of the old one is left, names differ
    assert os.listdir(scratch.path) == []
    assert scratch.targets(1)[0].path != nxt[0].path
    scratch.close()
    assert not (tmp_path / "root").exists()  # (nothing else was in it)


def test_scratch_removes_what_a_killed_fit_left(tmp_path):
    left = Scratch(tmp_path, n_blocks=2)  # a fit whose job was killed: never closed
    left.put(3, [np.ones(2), np.ones(2)])
    (tmp_path / "other").mkdir()  # not a fit's folder: kept
    scratch = Scratch(tmp_path, n_blocks=2)
    assert sorted(os.listdir(tmp_path)) == sorted(["other", os.path.basename(scratch.path)])


# --------------------------------------------------------------------------- in a fit
CASES = {
    "cd-random": dict(init="random"),
    "cd-nndsvda-shuffle": dict(init="nndsvda", shuffle=True),
    "kl-mu-nndsvd": dict(init="nndsvdar", solver="mu", beta_loss="kullback-leibler"),
    "masked-cd": dict(init="random", missing="nan"),
    # V resident: each pass is started before the previous one's loss is here (lookahead)
    "cd-resident": dict(init="random", resident=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_W_in_files_gives_the_same_fit(dataset, real_cluster, tmp_path, case):
    path = dataset[1] if CASES[case].get("missing") else dataset[0]
    params = {**dict(n_components=RANK, random_state=0, max_iter=6, tol=0, resident=False,
                     block_rows=BLOCK_ROWS, checkpoint_every=2), **CASES[case]}
    fits = {}
    with real_cluster.client.as_current():
        for store_W in (False, True):
            est = NMF(**params, store_W=store_W, checkpoint=tmp_path / f"{store_W}.zarr")
            W = np.asarray(est.fit_transform(path))
            fits[store_W] = (W, est.components_, est.loss_history_)
    for a, b in zip(fits[True], fits[False], strict=True):
        assert_same_fit(a, b)
    assert not (tmp_path / "True.zarr" / "scratch").exists()  # (removed with the fit)


def test_workers_hold_no_W_between_passes(dataset, real_cluster, tmp_path):
    """Between passes the workers hold what the next pass needs: with W in memory that is
    all of W (128 kB here); with W in files, only H and the sums. Two generations of W are
    on disk (the last one, and the one before for a pass run again)."""
    client = real_cluster.client
    W_bytes = N_SAMPLES * RANK * 8
    held: dict[bool, list[int]] = {False: [], True: []}
    generations: list[int] = []
    known: list[int] = []  # tasks the scheduler keeps (with W in files)

    def during(store_W):
        def callback(info):
            where = client.who_has()
            held[store_W].append(sum(size for key, size in client.nbytes(summary=False).items()
                                     if where.get(key)))  # (bytes in the workers' memory)
            if store_W:
                known.append(len(client.nbytes(summary=False)))
                (scratch,) = os.listdir(tmp_path / "True.zarr" / "scratch")
                generations.append(len(os.listdir(tmp_path / "True.zarr" / "scratch" / scratch)))
        return callback

    with client.as_current():
        for store_W in (False, True):
            NMF(RANK, init="random", random_state=0, max_iter=12, tol=0, resident=False,
                block_rows=BLOCK_ROWS, store_W=store_W, checkpoint=tmp_path / f"{store_W}.zarr",
                checkpoint_every=100).fit(dataset[0], callback=during(store_W))
    assert min(held[False]) >= W_bytes
    assert max(held[True]) < W_bytes / 4
    assert set(generations) == {2}
    # A pass's tasks depend on none of the previous pass's kernels (the next pass reads W
    # by name), so the scheduler forgets them: no chain of released tasks back to the start
    # (with one, ~2 more tasks per block each iteration: ~100 after 12 iterations; without,
    # those of the last pass or two, however many iterations, as the client's releases
    # arrive).
    n_blocks = N_SAMPLES // BLOCK_ROWS
    assert max(known) <= 3 * (2 * n_blocks + 3), known


def test_lost_generation_is_recovered_from_the_checkpoint(dataset, real_cluster, tmp_path):
    """The newest generation of W deleted while the fit runs (as a cleaner of scratch space
    would): the next pass fails with :class:`LostBlock`, and the fit goes back to its
    checkpoint of iteration 4 and ends as the uninterrupted fit."""
    params = dict(n_components=RANK, init="random", random_state=0, max_iter=8, tol=0,
                  resident=False, block_rows=BLOCK_ROWS, store_W=True, checkpoint_every=2)
    store = tmp_path / "ck.zarr"

    def delete_W(info):
        if info.iteration == 5 and not deleted:
            root = store / "scratch"
            for scratch in os.listdir(root):
                for generation in os.listdir(root / scratch):
                    for name in os.listdir(root / scratch / generation):
                        os.remove(root / scratch / generation / name)
            deleted.append(True)

    deleted: list[bool] = []
    with real_cluster.client.as_current():
        est = NMF(**params, checkpoint=store).fit(dataset[0], callback=delete_W)
        full = NMF(**params, checkpoint=tmp_path / "full.zarr").fit(dataset[0])
    assert deleted and est.n_iter_ == 8
    assert_same_fit(est.components_, full.components_)
    assert_same_fit(est.loss_history_, full.loss_history_)
    assert checkpoint.latest(store).endswith("ckpt-000008")


def test_auto_stores_W_when_its_share_is_large(dataset, real_cluster, tmp_path, monkeypatch,
                                               caplog):
    used: list[bool] = []
    real = bignmf.estimator.Scratch

    def recording(*args, **kwargs):
        used.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(bignmf.estimator, "Scratch", recording)
    params = dict(n_components=RANK, init="random", random_state=0, max_iter=2, tol=0,
                  block_rows=BLOCK_ROWS, checkpoint=tmp_path / "ck.zarr")
    with real_cluster.client.as_current():
        NMF(**params, resident=False).fit(dataset[0])  # 64 kB of W per worker of 1 GB
        assert used == []
        monkeypatch.setattr(bignmf.estimator, "W_FRACTION", 1e-6)
        NMF(**params, resident=True).fit(dataset[0])  # V is in memory anyway
        assert used == []
        NMF(**params, resident=False).fit(dataset[0])
        assert used == [True]
        NMF(**params, resident=False, store_W=False).fit(dataset[0])
        assert used == [True]
        # No folder the workers share (no checkpoint, not the embedded cluster): W stays in
        # memory, and the log says how to move it.
        NMF(**{**params, "checkpoint": None}, resident=False).fit(dataset[0])
        assert used == [True]
        assert "pass checkpoint=PATH" in caplog.text


def test_store_W_errors(dataset, real_cluster):
    X = np.ones((10, 4))
    with pytest.raises(ValueError, match="store_W=True applies to out-of-core X"):
        NMF(2, store_W=True).fit(X)
    with pytest.raises(InvalidParameterError, match="store_W"):
        NMF(2, solver="compressed", store_W=True).fit(X)
    with pytest.raises(InvalidParameterError, match="'auto' or a bool"):
        NMF(2, store_W="yes").fit(X)
    with real_cluster.client.as_current(), pytest.raises(ValueError, match="checkpoint=PATH"):
        NMF(2, store_W=True).fit(dataset[0])
