"""Initial factors: ``random``, the NNDSVD family, or ``custom``.

Passes over V (each block of V read once per pass):

* ``random`` — 1 pass (the mean of V scales the draw, as in scikit-learn; the same pass
  validates V and gives ``||V||^2``). W and H are drawn from
  ``check_random_state(random_state)`` in scikit-learn's order (H, then W row by row), so
  the same seed gives scikit-learn's exact initial factors. W is drawn in this process and
  sent to the workers block by block: ``m x k`` values, small beside V.
* ``nndsvd``, ``nndsvda``, ``nndsvdar`` — 2 passes: a randomized SVD (Halko, Martinsson &
  Tropp 2011) whose first pass forms ``V^T V Omega`` block by block (a range finder with one
  power iteration folded into the same read), and whose second forms ``C = V Q`` and
  ``C^T C``; then NNDSVD (Boutsidis & Gallopoulos 2008) as in scikit-learn. W is computed
  on the workers from ``C``, never gathered.
* ``custom`` — 0 passes; the first iteration validates V instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import ndtri

from bignmf.passes import Sums, block_stats, check_stats, project_block, sketch_block
from bignmf.scratch import Scratch, loaded, save_block
from bignmf.solvers import small_blas

#: Oversampling of the randomized SVD.
OVERSAMPLES = 10
#: Passes that form ``V^T V Z`` (power steps of the range finder) before the pass that
#: projects V; the NNDSVD family reads V ``POWER_PASSES + 1`` times.
POWER_PASSES = 1


@dataclass
class Initial:
    """Initial factors; ``stats`` is :func:`bignmf.passes.block_stats` of all of V, or
    ``None`` when initialization did not read V."""

    W_blocks: list[Any]
    H: np.ndarray
    stats: Sums | None
    passes: int


def _mean(stats: Sums, shape: tuple[int, int]) -> float:
    """Mean of the observed entries of V (all of them without missing entries)."""
    return float(stats["sum"]) / float(stats.get("observed", shape[0] * shape[1]))


def resolve_init(init: str | None, n_components: int, shape: tuple[int, int]) -> str:
    """scikit-learn's default and checks: ``None`` means ``'nndsvda'`` if
    ``n_components <= min(shape)``, else ``'random'``."""
    if init is None:
        return "nndsvda" if n_components <= min(shape) else "random"
    if init.startswith("nndsvd") and n_components > min(shape):
        raise ValueError(
            f"init = '{init}' can only be used when n_components <= min(n_samples, n_features)"
            f"; got n_components={n_components} for X of shape {shape}"
        )
    return init


def initialize(
    ex: Any, shape: tuple[int, int], dtype: np.dtype, n_components: int, init: str,
    random_state: Any, *, beta: float = 2.0, missing: str | None = None,
    scratch: Scratch | None = None,
) -> Initial:
    """Initial ``W`` (as blocks on the executor) and ``H`` for a resolved ``init``.

    With ``missing`` entries, the mean of V is that of the observed entries and the
    sketch of the NNDSVD family takes the missing ones as zeros. With a ``scratch``, W
    (generation 0) and the NNDSVD family's ``C = V Q`` are kept in its files, not in the
    workers' memory.
    """
    if init == "random":
        return _random(ex, shape, dtype, n_components, random_state, beta, missing, scratch)
    if init in ("nndsvd", "nndsvda", "nndsvdar"):
        return _nndsvd(ex, shape, dtype, n_components, init, random_state, beta, missing,
                       scratch)
    raise ValueError(f"Invalid init {init!r}")


def _random(ex: Any, shape: tuple[int, int], dtype: np.dtype, k: int, random_state: Any,
            beta: float, missing: str | None, scratch: Scratch | None) -> Initial:
    _, stats = ex.run([], ex.total(ex.map(block_stats, ex.blocks(), missing=missing)))
    check_stats(stats, beta=beta)
    W_blocks, H = random_factors(ex, shape, dtype, k, _rng(random_state), stats, scratch)
    return Initial(W_blocks, H, stats, passes=1)


def _rng(random_state: Any) -> np.random.RandomState:
    """scikit-learn's ``check_random_state``, imported here, not with the module: workers
    unpickle this module's kernels and need no scikit-learn."""
    from sklearn.utils import check_random_state

    return check_random_state(random_state)


def random_factors(ex: Any, shape: tuple[int, int], dtype: Any, k: int, rng: Any,
                   stats: Sums, scratch: Scratch | None = None
                   ) -> tuple[list[Any], np.ndarray]:
    """scikit-learn's random start, ``|N(0, 1)| * sqrt(mean(V) / k)``, drawn from ``rng``
    in its order (H, then W row by row); W goes to the executor, or to the scratch files
    block by block as it is drawn."""
    avg = np.sqrt(_mean(stats, shape) / k)
    H = np.abs(avg * rng.standard_normal(size=(k, shape[1])).astype(dtype, copy=False))
    W_parts = (
        np.abs(avg * rng.standard_normal(size=(stop - start, k)).astype(dtype, copy=False))
        for start, stop in ex.row_bounds
    )
    # Into files, each block is written as it is drawn: this process never holds all of W.
    W_blocks = scratch.put(0, W_parts) if scratch is not None else ex.put(list(W_parts))
    return W_blocks, H.astype(dtype, copy=False)


def _nndsvd(
    ex: Any, shape: tuple[int, int], dtype: np.dtype, k: int, init: str, random_state: Any,
    beta: float, missing: str | None, scratch: Scratch | None,
) -> Initial:
    m, n = shape
    rng = _rng(random_state)
    width = min(k + OVERSAMPLES, m, n)
    Omega = rng.standard_normal(size=(n, width))

    # POWER_PASSES passes: Q spans (V^T V)^POWER_PASSES Omega (the first also checks V).
    Q, stats = power_basis(ex, Omega, POWER_PASSES, beta=beta, missing=missing)
    assert stats is not None

    # Last pass: C = V Q (kept where computed) and C^T C.
    outs = ex.map(project_block, ex.blocks(), Q=Q, missing=missing)
    C_out = ex.take(outs, 0)
    if scratch is not None:
        # (generation 0's folder: deleted with the initial W, once the first pass is done)
        C_out = ex.map(save_block, C_out, scratch.targets(0, "C"))
    C_blocks, total = ex.run(C_out, ex.total(ex.take(outs, 1)))
    CtC = total["CtC"]

    # V ~ C Q^T; SVD of C from its Gram matrix: C = U S G^T with G the eigenvectors.
    evals, G = np.linalg.eigh(CtC)
    order = np.argsort(evals)[::-1][:k]
    S = np.sqrt(np.maximum(evals[order], 0.0))
    G = G[:, order]
    Vt = (Q @ G).T  # right singular vectors, (k, n)
    tiny = S[0] * 1e-7 < S if S[0] > 0 else np.zeros(k, dtype=bool)
    M = np.where(tiny, G / np.where(tiny, S, 1.0), 0.0)  # U = C @ M

    W_blocks, H = nndsvd_from_svd(ex, C_blocks, M, S, Vt, init, rng, stats, shape, dtype,
                                  scratch)
    return Initial(W_blocks, H, stats, passes=POWER_PASSES + 1)


def power_basis(ex: Any, Omega: np.ndarray, passes: int, *, beta: float = 2.0,
                missing: str | None = None) -> tuple[np.ndarray, Sums | None]:
    """An orthonormal basis of ``(V^T V)^passes Omega`` (n x l): ``passes`` reads of V, each
    a power step of a randomized range finder (:func:`bignmf.passes.sketch_block`). The
    first pass also checks V; its :func:`~bignmf.passes.block_stats` are returned (``None``
    when ``passes`` is 0)."""
    P, stats = Omega, None
    for _ in range(passes):
        _, sums = ex.run([], ex.total(ex.map(sketch_block, ex.blocks(), Omega=P,
                                             stats=stats is None, missing=missing)))
        if stats is None:
            check_stats(sums, beta=beta)
            stats = Sums({key: v for key, v in sums.items() if key != "Z"})
        with small_blas():
            P, _ = np.linalg.qr(sums["Z"])
    return P, stats


def nndsvd_from_svd(
    ex: Any, X_blocks: list[Any], M: np.ndarray, S: np.ndarray, Vt: np.ndarray, init: str,
    rng: Any, stats: Sums, shape: tuple[int, int], dtype: Any,
    scratch: Scratch | None = None,
) -> tuple[list[Any], np.ndarray]:
    """NNDSVD (Boutsidis & Gallopoulos 2008, as scikit-learn) from a truncated SVD
    ``V ~ U diag(S) Vt`` whose left factor ``U = X M`` is held in row blocks ``X_i`` on the
    executor (``C = V Q`` here, the sketch basis in :mod:`bignmf.compressed`), or stored in
    ``scratch`` files, where W (generation 0) then goes too.

    Costs one pass over the ``X`` blocks (not V) for the norms of the positive and negative
    parts of U; W is formed where the blocks are, H here. Returns ``(W_blocks, H)``.
    """
    k, n = Vt.shape[0], shape[1]
    # Column norms of the positive and negative parts of U (a pass over X, not V).
    _, norms = ex.run([], ex.total(ex.map(_signed_sq_norms, X_blocks, M=M)))
    coef, sign = np.zeros(k), np.ones(k)
    H = np.zeros((k, n))
    coef[0] = np.sqrt(S[0])
    sign[0] = 0.0  # 0 marks "absolute value" for the leading pair
    H[0] = np.sqrt(S[0]) * np.abs(Vt[0])
    for j in range(1, k):
        y = Vt[j]
        y_p, y_n = np.maximum(y, 0), np.abs(np.minimum(y, 0))
        x_p_nrm, x_n_nrm = np.sqrt(norms["pos"][j]), np.sqrt(norms["neg"][j])
        y_p_nrm, y_n_nrm = np.linalg.norm(y_p), np.linalg.norm(y_n)
        m_p, m_n = x_p_nrm * y_p_nrm, x_n_nrm * y_n_nrm
        if m_p > m_n:
            x_nrm, v, sigma, sign[j] = x_p_nrm, y_p / y_p_nrm, m_p, 1.0
        elif m_n > 0:
            x_nrm, v, sigma, sign[j] = x_n_nrm, y_n / y_n_nrm, m_n, -1.0
        else:
            continue
        lbd = np.sqrt(S[j] * sigma)
        coef[j] = lbd / x_nrm
        H[j] = lbd * v

    eps = 1e-6
    H[eps > H] = 0
    mean = _mean(stats, shape)
    if init == "nndsvda":
        H[H == 0] = mean
    elif init == "nndsvdar":
        zeros = H == 0
        H[zeros] = np.abs(mean * rng.standard_normal(size=int(zeros.sum())) / 100)
    seed = int(rng.randint(0, 2**31 - 1)) if init == "nndsvdar" else 0
    W_blocks = ex.map(
        _nndsvd_W_block, X_blocks, [start for start, _ in ex.row_bounds], M=M, coef=coef,
        sign=sign, eps=eps, fill=init[6:], mean=mean, dtype=dtype, seed=seed,
    )
    if scratch is not None:
        W_blocks = ex.map(save_block, W_blocks, scratch.targets(0))
    W_blocks, _ = ex.run(W_blocks)
    return W_blocks, H.astype(dtype)


def _signed_sq_norms(C: Any, M: np.ndarray) -> Sums:
    U = loaded(C) @ M
    pos = np.maximum(U, 0)
    neg = np.minimum(U, 0)
    return Sums(pos=np.einsum("ij,ij->j", pos, pos), neg=np.einsum("ij,ij->j", neg, neg))


def _nndsvd_W_block(
    C: Any, start: int, *, M: np.ndarray, coef: np.ndarray, sign: np.ndarray,
    eps: float, fill: str, mean: float, dtype: Any, seed: int,
) -> np.ndarray:
    """W rows ``start:`` of NNDSVD from ``U_i = C_i M``: scaled positive or negative parts;
    zeros filled with the mean (``'a'``) or small random values (``'ar'``)."""
    U = loaded(C) @ M
    W = np.where(sign == 0, np.abs(U), np.maximum(sign * U, 0)) * coef
    W[eps > W] = 0
    if fill == "a":
        W[W == 0] = mean
    elif fill == "ar":
        zeros = W == 0
        W[zeros] = np.abs(mean * _row_normals(seed, start, W.shape)[zeros] / 100)
    return W.astype(dtype)


def _row_normals(seed: int, start: int, shape: tuple[int, int]) -> np.ndarray:
    """Standard normal values for rows ``start:start + shape[0]`` of a matrix with
    ``shape[1]`` columns, the same however the rows are split into blocks: one Philox
    stream per seed, whose uniform draws are taken at the rows' positions (``advance``
    skips 4 draws per step) and mapped through the normal quantile function."""
    first = start * shape[1]
    bitgen = np.random.Philox(key=seed)
    bitgen.advance(first // 4)
    gen = np.random.Generator(bitgen)
    gen.random(first % 4)
    u = gen.random(shape)
    return ndtri(np.clip(u, np.finfo(np.float64).tiny, None))
