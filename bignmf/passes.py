"""Every computation that touches the data matrix V.

Each function here is a *block kernel*: it receives one row block ``V_i`` (a NumPy array or a
SciPy CSR matrix, already in memory) and returns what the iteration needs from it — a new
block of W and/or small partial sums (:class:`Sums`) that the executor adds up as a tree.
The executor (:mod:`bignmf.executor`) decides where and when kernels run; nothing here
imports dask (or scikit-learn: workers unpickle these functions). :func:`h_step`, the update
of H from a pass's total, runs where that total is added up.

Cost per call, for a block of ``r`` rows, ``n`` columns and ``k`` components: the dense
products ``H V_i^T`` and ``W_i^T V_i`` are ``2 r n k`` flops each (``2 nnz k`` for sparse);
the solver sweeps are ``O(r k^2)``; memory beyond the block is ``O((r + n) k)``.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from bignmf.losses import Penalty, beta_error, expanded_sq, objective
from bignmf.solvers import hals, mu, small_blas


def _combine(key: str) -> Callable[[Any, Any], Any]:
    if key.startswith("min"):
        return np.minimum
    if key.startswith("max"):
        return np.maximum
    return _add


def _add(a: Any, b: Any) -> Any:
    """``a + b``, in float64 when either is a narrower float: a kernel may return a sum in
    the dtype it was computed in (``W_i^T V_i`` of a float32 V is a float32 product: its
    float64 copy holds nothing more, and would double what goes between workers); sums of
    several blocks are still accumulated in float64, to the same bits as from float64
    parts."""
    dtype = np.result_type(a, b)
    if dtype.kind == "f" and dtype.itemsize < 8:
        return np.add(a, b, dtype=np.float64)
    return np.add(a, b)


class Sums(dict[str, Any]):
    """Partial results of one or more row blocks; ``a + b`` merges two of them.

    Keys are added, except those named ``min*``/``max*`` (combined by minimum/maximum).
    """

    def __add__(self, other: Sums) -> Sums:
        out = Sums(self)
        for key, value in other.items():
            out[key] = _combine(key)(out[key], value) if key in out else value
        return out


#: Partial results combined per step of :func:`tree_sum` (per task on a cluster). Each
#: level of the tree is a scheduler round trip and a transfer between workers after the
#: last block finishes, so few levels matter more than small combine tasks: 8 gives one
#: level up to 8 blocks, three up to 512.
FAN_IN = 8


def add_in_order(*parts: Any) -> Any:
    """``parts[0] + parts[1] + ...``, left to right."""
    return functools.reduce(operator.add, parts)


def tree_sum(parts: list[Any], combine: Callable[..., Any] = add_in_order) -> Any:
    """Combine partial sums in a tree of groups of :data:`FAN_IN` consecutive parts.

    The grouping depends only on ``len(parts)``, so the result is the same on every run;
    ``combine`` is :func:`add_in_order`, or on a cluster what adds its task to the pass's
    graph (:meth:`bignmf.executor.DaskExecutor.total`).
    """
    while len(parts) > 1:
        groups = [parts[i:i + FAN_IN] for i in range(0, len(parts), FAN_IN)]
        parts = [combine(*g) if len(g) > 1 else g[0] for g in groups]
    return parts[0]


@dataclass(frozen=True)
class ZarrBlock:
    """Rows ``start:stop`` of a Zarr array, read by the kernel that uses them.

    Passing this small descriptor instead of a dask task that loads the block keeps the
    read inside the kernel's task: the block is never a task result that a worker holds
    or sends to another worker, and each pass reads each stored chunk exactly once.
    """

    array: Any
    start: int
    stop: int
    #: Unique per executor, so task keys never reuse a result computed from other data
    #: that was stored at the same path earlier (the data itself is not hashed).
    token: str = ""

    def read(self) -> Any:
        """The rows as a NumPy array, or a SciPy CSR matrix for a sparse store."""
        block = self.array[self.start : self.stop]
        return block if sp.issparse(block) else np.asarray(block)

    def __dask_tokenize__(self) -> tuple[str, str, int, int, str]:
        return ("bignmf.ZarrBlock", str(self.array.store_path), self.start, self.stop,
                self.token)


def load_block(V: Any) -> Any:
    """A block as the kernels compute with it (read from storage if it is a
    :class:`ZarrBlock`; integer and boolean blocks in float64, as scikit-learn does): also
    what a worker keeps when V is resident in memory."""
    if isinstance(V, ZarrBlock):
        V = V.read()
    if sp.issparse(V):
        if not isinstance(V, sp.csr_matrix):  # (the constructor would copy a row view)
            V = sp.csr_matrix(V)
        if V.dtype not in (np.float32, np.float64):
            V = V.astype(np.float64)
        return V
    V = np.asarray(V)
    if V.dtype not in (np.float32, np.float64):
        V = V.astype(np.float64)
    return V


def _nan_as_zero(V: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(V with NaN as 0, the NaN mask)``; no copy and no mask when there is no NaN."""
    nan = np.isnan(V)
    if not nan.any():
        return V, None
    return np.where(nan, V.dtype.type(0), V), nan


def _zero_filled(V: Any, missing: str | None) -> Any:
    """V with its missing entries as zeros (a copy only when NaN marks them)."""
    if missing == "nan" and not sp.issparse(V):
        V, _ = _nan_as_zero(V)
    return V


def _right(V: Any, B: np.ndarray) -> np.ndarray:
    """``B @ V.T`` of shape (k, r), C-contiguous, for a dense or sparse block ``V`` (r, n).

    Dense: ``B @ V.T`` as written — OpenBLAS is 10-25% faster with the short factor on the
    left than with ``(V @ B.T).T`` (measured on 20000 x 5000 with k = 8, 32, 64, and on
    16000 x 2000, k = 16). Sparse: ``(V @ B.T).T``, SciPy's CSR times dense.
    """
    if sp.issparse(V):
        return np.ascontiguousarray((V @ B.T).T)
    return B @ V.T


def _left(F: np.ndarray, V: Any) -> np.ndarray:
    """``F @ V`` of shape (k, n), C-contiguous, for ``F`` (k, r): as written for dense V
    (see :func:`_right`), ``(V.T @ F.T).T`` for sparse V."""
    if sp.issparse(V):
        return np.ascontiguousarray((V.T @ F.T).T)
    return F @ V


#: How missing entries are marked: ``None`` (none are; NaN is an error), ``"nan"`` (NaN
#: entries of dense V), ``"unstored"`` (for sparse V, every entry that is not stored).
MISSING = (None, "nan", "unstored")


def check_missing(V: Any, missing: str | None) -> None:
    """Raise if ``missing`` does not apply to this kind of block."""
    if missing == "unstored" and not sp.issparse(V):
        raise ValueError("missing='unstored' applies to sparse input (only stored entries are "
                         "observed); for dense input mark missing entries as NaN and pass "
                         "missing='nan'")
    if missing == "nan" and sp.issparse(V):
        raise ValueError("missing='nan' applies to dense input; for sparse input store only "
                         "the observed entries and pass missing='unstored'")


def block_stats(V: Any, missing: str | None = None) -> Sums:
    """What the first pass learns about a block: checks and moments.

    ``nonfinite`` counts NaN/inf (only inf when NaN marks missing entries), ``min``/``max``
    bound the observed values, ``sum`` and ``sumsq`` give their mean and square norm
    (float64), ``observed`` counts them, ``nnz`` counts the non-zeros.
    """
    V = load_block(V)
    check_missing(V, missing)
    with small_blas():
        return _block_stats(V, missing)


#: The keys of :func:`block_stats`.
STATS = ("rows", "nonfinite", "nnz", "observed", "sum", "sumsq", "min", "max")


def stats_of(sums: Sums) -> Sums:
    """The :func:`block_stats` in a pass's ``sums``."""
    return Sums({key: sums[key] for key in STATS})


def check_stats(stats: Sums, what: str = "NMF (input X)", beta: float = 2.0) -> None:
    """Raise for NaN/inf or negative values found by the first pass, and for zeros when
    the loss cannot take them (beta <= 0, as scikit-learn)."""
    if stats["nonfinite"]:
        raise ValueError(
            f"Input X contains NaN or infinity ({stats['nonfinite']} value(s)); "
            f"{what} must be finite (to fit only the observed entries, mark the missing "
            "ones as NaN and pass missing='nan')"
        )
    if stats["min"] < 0:
        raise ValueError(f"Negative values in data passed to {what}: minimum is {stats['min']:g}")
    if beta <= 0 and stats["min"] == 0:
        raise ValueError(
            "When beta_loss <= 0 and X contains zeros, the solver may diverge. Please add "
            "small values to X, or use a positive beta_loss.")
    if not stats.get("observed", 1):
        raise ValueError(f"{what} has no observed entries: every entry is missing")


def _block_stats(V: Any, missing: str | None = None) -> Sums:
    n_rows, n_cols = V.shape
    sparse = sp.issparse(V)
    values = V.data if sparse else V.reshape(-1)
    # Entries of V that count but are not in ``values``: a sparse block's unstored zeros.
    implicit_zeros = n_rows * n_cols - values.size if sparse and missing is None else 0
    out = Sums(rows=n_rows, nonfinite=0, nnz=0, observed=implicit_zeros, sum=0.0, sumsq=0.0,
               min=np.inf, max=-np.inf)
    if implicit_zeros:
        out["min"] = out["max"] = 0.0
    # float64 accumulation in slices keeps memory at one slice beyond the block.
    step = 1 << 20
    for start in range(0, values.size, step):
        s = values[start : start + step]
        if missing == "nan":
            s = s[~np.isnan(s)]
        finite = np.isfinite(s)
        n_bad = int(s.size - np.count_nonzero(finite))
        out["nonfinite"] += n_bad
        if n_bad:
            s = s[finite]
        out["observed"] += int(s.size)
        if not s.size:
            continue
        out["nnz"] += int(np.count_nonzero(s))
        out["min"] = min(out["min"], float(s.min()))
        out["max"] = max(out["max"], float(s.max()))
        s = s.astype(np.float64)
        out["sum"] += float(s.sum())
        out["sumsq"] += float(s @ s)
    return out


def frobenius_step(
    V: Any,
    W: np.ndarray,
    H: np.ndarray,
    HHt: np.ndarray,
    *,
    update: Callable[..., tuple[np.ndarray, int]],
    l1: float,
    l2: float,
    max_sweeps: int,
    sweep_tol: float,
    order: np.ndarray | None = None,
    update_W: bool = True,
    initial_loss: bool = False,
    stats: bool = False,
) -> tuple[np.ndarray, Sums]:
    """One fused iteration on a row block, for the Frobenius loss.

    Reads ``V_i`` once: forms ``H V_i^T``, updates ``W_i`` with ``update`` (a rule from
    :mod:`bignmf.solvers`), then with the new ``W_i`` forms the partial sums ``W_i^T V_i``
    (k x n) and ``W_i^T W_i`` (k x k) that the update of H needs.

    Parameters
    ----------
    V : ndarray or CSR matrix of shape (r, n)
    W : ndarray of shape (r, k)
    H : ndarray of shape (k, n), in V's dtype
    HHt : ndarray of shape (k, k)
    max_sweeps, sweep_tol : int, float
        Solver sweeps on ``W_i``; with ``sweep_tol > 0`` each row of ``W_i`` stops on its
        own once a sweep changes it by at most ``sweep_tol`` times its first change (rows
        are independent problems given H, so the result does not depend on how V is split
        into blocks, see :func:`bignmf.solvers.hals.sweep_columns`).
    order : ndarray of int, optional
        Order of the components in a sweep (``shuffle=True``); default ``0..k-1``.
    update_W : bool
        False keeps ``W_i`` fixed (only the sums are formed).
    initial_loss : bool
        Also return, for the incoming ``W_i``, ``cross0 = <W_i, V_i H^T>`` and ``quad0 =
        <W_i^T W_i, H H^T>`` (the loss before the iteration follows from them), ``W_sum0``
        and ``W_sq0``.
    stats : bool
        Also return :func:`block_stats` (the first pass validates V this way).

    Returns
    -------
    W_new : ndarray of shape (r, k)
    sums : Sums
        ``WtV``, ``WtW``, ``W_sum`` (column sums of W), ``max_sweeps``; more as requested.
    """
    V = load_block(V)
    out = block_stats(V) if stats else Sums()
    if out.get("nonfinite"):  # the caller raises from the stats; NaN/inf products only warn
        return W, out
    F = np.array(W.T, dtype=V.dtype, order="C")
    P = _right(V, H)
    with small_blas():  # everything but the two big products: small, single-threaded
        if initial_loss:
            F64 = _incoming_W_terms(F, P, out)
            out["quad0"] = float(np.vdot(F64 @ F64.T, HHt))
        if update_W:
            F, out["max_sweeps"] = update(F, P, HHt, l1, l2, max_sweeps, sweep_tol, order,
                                      per_column=sweep_tol > 0)
    _new_W_sums(F, V, out)
    return F.T, out


def _incoming_W_terms(F: np.ndarray, P: np.ndarray, out: Sums) -> np.ndarray:
    """Into ``out``, the incoming ``W_i``'s share of the loss before the iteration:
    ``cross0 = <W_i, V_i H^T>``, ``W_sum0``, ``W_sq0``. Returns ``F`` in float64 (the caller
    adds its ``quad0``)."""
    F64 = F.astype(np.float64)
    out["cross0"] = float(np.vdot(F64, P))
    out["W_sum0"] = F64.sum(axis=1)
    out["W_sq0"] = float(np.vdot(F64, F64))
    return F64


def _new_W_sums(F: np.ndarray, X: Any, out: Sums) -> np.ndarray:
    """Into ``out``, what the update of H needs from the new ``W_i`` (``F``, k x r) and the
    block ``X``: ``WtV`` (k x n, in the dtype of the product: see :func:`_add`), ``WtW``,
    ``W_sum``. Returns ``F`` in float64."""
    out["WtV"] = _left(F, X)
    with small_blas():
        F64 = F.astype(np.float64)
        out["WtW"] = F64 @ F64.T
        out["W_sum"] = F64.sum(axis=1)
    return F64


def transform_block(
    V: Any,
    H: np.ndarray,
    HHt: np.ndarray,
    *,
    update: Callable[..., tuple[np.ndarray, int]],
    l1: float,
    l2: float,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, Sums]:
    """Solve ``min_{W_i >= 0} ||V_i - W_i H||`` for a block with H fixed: one read of ``V_i``.

    Rows are independent problems, and each row stops on its own once a sweep changes it
    by no more than ``tol`` times its first change, so the answer for a row does not depend
    on which other rows share its block (scikit-learn's subset-invariance).

    W_i starts from zero, as scikit-learn's coordinate descent does, and each row stops on
    its own (``per_column=True`` of the update rule).

    Returns
    -------
    W_i : ndarray of shape (r, k)
    sums : Sums
        ``max_iter_done``: the most sweeps any row needed.
    """
    V = load_block(V)
    if (V.data if sp.issparse(V) else V).size and _min_value(V) < 0:
        raise ValueError("Negative values in data passed to NMF.transform")
    k = H.shape[0]
    P = _right(V, H)
    F = np.zeros((k, V.shape[0]), dtype=V.dtype)
    with small_blas():
        F, done = update(F, P, HHt, l1, l2, max_iter, tol, None, per_column=True)
    return F.T.copy(), Sums(max_iter_done=done)


def _min_value(V: Any) -> float:
    values = V.data if sp.issparse(V) else V
    m = float(values.min())
    if sp.issparse(V) and V.nnz < V.shape[0] * V.shape[1]:
        m = min(m, 0.0)
    return m


def sketch_block(
    V: Any, Omega: np.ndarray, *, stats: bool = True, missing: str | None = None
) -> Sums:
    """``V_i^T (V_i Omega)`` (n x l): one power step of a randomized range finder, per block.

    Summed over blocks it is ``V^T V Omega``, whose span approximates the top right
    singular subspace of V as one power iteration would, in a single pass. Missing
    entries count as zeros here.
    """
    V = load_block(V)
    out = block_stats(V, missing) if stats else Sums()
    if out.get("nonfinite"):  # the caller raises from the stats; NaN/inf products only warn
        return out
    V = _zero_filled(V, missing)
    Y = (V @ Omega.astype(V.dtype, copy=False))
    out["Z"] = _left(np.ascontiguousarray(Y.T), V).T.astype(np.float64, copy=False)
    return out


def project_block(
    V: Any, Q: np.ndarray, *, missing: str | None = None, stats: bool = False,
    with_VtC: bool = False,
) -> tuple[np.ndarray, Sums]:
    """``C_i = V_i Q`` (r x l, float64, kept by the caller) and its Gram ``C_i^T C_i``: the
    last pass of a randomized range finder (:mod:`bignmf.init`, :mod:`bignmf.compressed`).

    ``with_VtC`` also returns ``V_i^T C_i`` (n x l), formed from the very ``C_i`` returned
    (rounded to V's dtype the same way): summed over blocks, ``C^T C`` orthonormalizes
    ``Q' = C T`` and ``V^T C`` gives ``B = Q'^T V = (V^T C T)^T`` from the same read of V.
    Costs ``2 r n l`` flops (twice that with ``with_VtC``; ``nnz`` for ``r n`` when sparse).
    """
    V = load_block(V)
    out = block_stats(V, missing) if stats else Sums()
    if out.get("nonfinite"):  # the caller raises from the stats
        return np.zeros((V.shape[0], Q.shape[1])), out
    V = _zero_filled(V, missing)
    C = np.asarray(V @ Q.astype(V.dtype, copy=False))
    if with_VtC:
        out["VtC"] = np.asarray(V.T @ C, dtype=np.float64)
    C = C.astype(np.float64)
    out["CtC"] = C.T @ C
    return C, out


# ---------------------------------------------------------------------------------------
# Beta-divergences and missing entries: multiplicative updates (scikit-learn's solver='mu')

#: scikit-learn's guard against division by zero and negative powers of zero.
EPSILON = float(np.finfo(np.float32).eps)
#: Factor entries below this are set to zero for beta < 1 (W) and beta <= 1 (H), as in
#: scikit-learn, "for stability".
TINY = float(np.finfo(np.float64).eps)


def beta_step(
    V: Any,
    W: np.ndarray,
    H: np.ndarray,
    *,
    beta: float,
    gamma: float = 1.0,
    l1: float = 0.0,
    l2: float = 0.0,
    missing: str | None = None,
    update_W: bool = True,
    partials: bool = True,
    stats: bool = False,
) -> tuple[np.ndarray, Sums]:
    """One fused multiplicative-update iteration on a row block, for any beta-divergence
    and for masked (missing-entry) problems: reads ``V_i`` once.

    With ``L = W_i H`` (the incoming factors), the block's divergence ``D(V_i | L)`` (over
    the observed entries) is summed — the objective of the previous iterate, which costs
    nothing extra because the update needs ``L`` anyway. Then::

        W_i <- W_i * ((M*V*L^(b-2)) H^T / ((M*L^(b-1)) H^T + l1 + l2 W_i)) ** gamma
        L'   = W_i H
        num_H += W_i^T (M*V*L'^(b-2)) ;  den_H += W_i^T (M*L'^(b-1))

    (``M`` the mask of observed entries, all ones without ``missing``), exactly the steps of
    scikit-learn's ``_multiplicative_update_w`` and, summed over blocks, of
    ``_multiplicative_update_h``. Kullback-Leibler (beta = 1) without a mask needs no
    ``den_H``: it is ``colsum(W)``, returned as ``W_sum``.

    Costs: for a dense block, ``L`` and ``L'`` are ``r x n`` (four GEMMs of ``2 r n k`` and
    about four block-sized temporaries). For a sparse block with beta = 1, or with
    ``missing='unstored'`` and any beta, everything is evaluated at the stored entries only:
    ``O(nnz k)`` time and memory, ``W H`` is never formed. A sparse block with another beta
    and no mask needs ``W_i H`` at every entry: the block is made dense, in its own task
    (size the blocks for it: ``open_matrix(..., densify=True)``).

    Parameters
    ----------
    V : ndarray or CSR matrix of shape (r, n)
    W : ndarray of shape (r, k)
    H : ndarray of shape (k, n)
    beta, gamma : float
        The divergence and the exponent of the update (:func:`bignmf.solvers.mu.mm_exponent`).
    l1, l2 : float
        scikit-learn's scaled penalties on W.
    missing : None, 'nan' or 'unstored'
        Which entries are missing (see :data:`MISSING`); they take no part in the fit.
    update_W, partials : bool
        ``update_W=False`` keeps ``W_i``; ``partials=False`` skips the sums for H (a pass
        that only evaluates the loss).
    stats : bool
        Also return :func:`block_stats`.

    Returns
    -------
    W_new : ndarray of shape (r, k)
    sums : Sums
        ``div0`` (the block's divergence before the update), ``W_sum0``, ``W_sq0``;
        ``num_H`` and ``den_H`` (or ``W_sum``) when ``partials``; the stats if asked.
    """
    V = load_block(V)
    check_missing(V, missing)
    out = block_stats(V, missing) if stats else Sums()
    if out.get("nonfinite"):
        return W, out
    block = _Observed(V, missing, beta)
    W = np.asarray(W, dtype=V.dtype)
    H = np.asarray(H, dtype=V.dtype)
    # The products with V's block (``W H``, ratios times H) use every BLAS thread; the
    # small sums one.
    L = block.evaluate(W, H)
    out["div0"] = block.divergence(L, W, H)
    with small_blas():
        W64 = W.astype(np.float64)
        out["W_sum0"] = W64.sum(axis=0)
        out["W_sq0"] = float(np.vdot(W64, W64))
    if update_W:
        W = block.update_W(W, H, L, l1, l2, gamma)
    del L
    if partials:
        num, den = block.ratios(block.evaluate(W, H))
        out["num_H"] = block.times_left(W, num)
        if den is None:
            out["W_sum"] = W.sum(axis=0, dtype=np.float64)
        else:
            out["den_H"] = block.times_left(W, den)
    return W, out


class _Observed:
    """A block of V with what the multiplicative updates need to know about its entries:
    where they are observed, and whether ``W H`` is formed densely or only at the stored
    entries of a sparse block (``self.pattern``)."""

    def __init__(self, V: Any, missing: str | None, beta: float) -> None:
        self.beta = beta
        self.mask: np.ndarray | None = None
        self.pattern = sp.issparse(V) and (missing == "unstored" or beta == 1)
        if sp.issparse(V) and not self.pattern:
            V = V.toarray()  # beta not in (1, 2) without a mask: W H is needed everywhere
        if missing == "nan" and not self.pattern:
            V, nan = _nan_as_zero(V)
            self.mask = None if nan is None else ~nan
        self.V = V
        self.masked = missing is not None
        self.x = V.data if self.pattern else V

    def evaluate(self, W: np.ndarray, H: np.ndarray) -> np.ndarray:
        """``W H`` at the stored entries (pattern) or everywhere (dense)."""
        if self.pattern:
            return _values_at(self.V, W, H)
        return W @ H

    def ratios(self, L: np.ndarray) -> tuple[Any, Any]:
        """``M * V * L^(beta-2)`` and ``M * L^(beta-1)`` (None when it is all ones and
        the caller uses row/column sums instead), as in scikit-learn (clipping at
        EPSILON where a negative power is taken)."""
        beta, x = self.beta, self.x
        Ls = np.maximum(L, EPSILON) if beta < 2 else L
        if beta == 1:
            num = x / Ls
        elif beta == 2:
            num = x
        elif beta == 0:
            num = x / (Ls * Ls)
        else:
            num = x * Ls ** (beta - 2)
        if beta == 1:  # all ones without a mask: the caller uses row/column sums of H, W
            den = (np.ones_like(L) if self.pattern and self.masked else self.mask)
        else:
            Lc = np.maximum(L, EPSILON) if beta < 1 else L
            den = Lc if beta == 2 else Lc ** (beta - 1)
            if self.mask is not None:
                den = den * self.mask
        if self.mask is not None and beta != 1:
            num = num * self.mask
        return self._wrap(num), None if den is None else self._wrap(den)

    def update_W(self, W: np.ndarray, H: np.ndarray, L: np.ndarray, l1: float, l2: float,
                 gamma: float) -> np.ndarray:
        """scikit-learn's multiplicative update of ``W_i`` given ``L = W_i H``."""
        num, den = self.ratios(L)
        denominator = H.sum(axis=1)[None, :] if den is None else self.times(den, H.T)
        W = mu.beta_update(W, self.times(num, H.T), denominator, l1, l2, gamma)
        if self.beta < 1:  # scikit-learn: necessary for stability with beta_loss < 1
            W[W < TINY] = 0.0
        return W

    def _wrap(self, values: Any) -> Any:
        if not self.pattern:
            return np.asarray(values, dtype=self.V.dtype)
        V = self.V
        return sp.csr_matrix((np.asarray(values, dtype=V.dtype), V.indices, V.indptr),
                             shape=V.shape)

    def times(self, A: Any, B: np.ndarray) -> np.ndarray:
        """``A @ B`` for a (sparse or dense) r x n ``A`` and n x k ``B``."""
        return np.asarray(A @ B)

    def times_left(self, W: np.ndarray, A: Any) -> np.ndarray:
        """``W^T A`` (k x n) in the dtype it is computed in (see :func:`_add`), formed in
        BLAS's fast layout."""
        return _left(np.ascontiguousarray(W.T), A)

    def divergence(self, L: np.ndarray, W: np.ndarray, H: np.ndarray) -> float:
        """``D_beta(V_i | W_i H)`` over the observed entries, as scikit-learn's
        ``_beta_divergence`` (entries of V at most EPSILON drop out of the terms in V,
        ``W H`` is clipped at EPSILON where divided by)."""
        beta = self.beta
        x = self.x.reshape(-1) if not self.pattern else self.x
        Lf = np.asarray(L).reshape(-1)
        observed = None if self.mask is None else self.mask.reshape(-1)
        if beta == 2:
            d = x - Lf
            if observed is not None:
                d = d[observed]
            d = d.astype(np.float64)
            return 0.5 * float(d @ d)
        # Sum of W H (or its beta-th power) over the observed entries.
        if self.pattern and not self.masked:  # KL on all entries of a sparse block
            total = float(W.sum(axis=0, dtype=np.float64) @ H.sum(axis=1, dtype=np.float64))
            n_obs = float(self.V.shape[0] * self.V.shape[1])
        else:
            Lo = Lf if observed is None else Lf[observed]
            n_obs = float(Lo.size)
            if beta == 1:
                total = float(Lo.sum(dtype=np.float64))
            elif beta == 0:
                total = 0.0
            else:
                total = float((Lo.astype(np.float64) ** beta).sum())
        # The terms in V, over slices of the entries (float64 temporaries stay small).
        s_log = s_x = s_ratio = s_pow = s_cross = 0.0
        step = 1 << 20
        for a in range(0, x.size, step):
            xa, La = x[a : a + step], Lf[a : a + step]
            keep = xa > EPSILON
            xs = xa[keep].astype(np.float64)
            Ls = np.maximum(La[keep].astype(np.float64), EPSILON)
            if beta == 1:
                s_log += float(xs @ np.log(xs / Ls))
                s_x += float(xs.sum())
            elif beta == 0:
                ratio = xs / Ls
                s_ratio += float(ratio.sum())
                s_log += float(np.log(ratio).sum())
            else:
                s_pow += float((xs**beta).sum())
                s_cross += float(xs @ Ls ** (beta - 1))
        if beta == 1:
            return s_log - s_x + total
        if beta == 0:
            return s_ratio - n_obs - s_log
        return (s_pow - beta * s_cross + (beta - 1) * total) / (beta * (beta - 1))


def _values_at(V: sp.csr_matrix, W: np.ndarray, H: np.ndarray) -> np.ndarray:
    """``(W H)[i, j]`` at the stored entries of ``V`` (in ``V.data``'s order): ``O(nnz k)``
    time; beyond the result, memory for one slice of about ``2**22 / k`` entries."""
    out = np.empty(V.indices.size, dtype=np.result_type(W, H))
    Ht = np.ascontiguousarray(H.T)
    indptr = V.indptr
    step = max(1, (1 << 22) // max(1, W.shape[1]))
    row = 0
    while row < V.shape[0]:
        # Rows row:stop hold about ``step`` entries (at least one row).
        stop = max(row + 1, int(np.searchsorted(indptr, indptr[row] + step, side="right")) - 1)
        stop = min(stop, V.shape[0])
        a, b = int(indptr[row]), int(indptr[stop])
        if b > a:
            rows = np.repeat(np.arange(row, stop), np.diff(indptr[row : stop + 1]))
            np.einsum("ij,ij->i", W[rows], Ht[V.indices[a:b]], out=out[a:b])
        row = stop
    return out


def beta_transform_block(
    V: Any,
    H: np.ndarray,
    *,
    beta: float,
    gamma: float,
    l1: float,
    l2: float,
    missing: str | None,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, Sums]:
    """W for a block with H fixed, by multiplicative updates (one read of ``V_i``).

    As scikit-learn's ``transform`` with ``solver='mu'``: W starts at ``sqrt(mean / k)``
    (the mean of the block's observed entries) and is updated until ``max_iter`` or, checked
    every 10 updates, the divergence has decreased by less than ``tol`` times its initial
    value. Used for every beta other than 2 and for masked problems (missing entries).

    Returns
    -------
    W_i : ndarray of shape (r, k)
    sums : Sums
        ``max_iter_done``: the updates this block needed.
    """
    V = load_block(V)
    check_missing(V, missing)
    k = H.shape[0]
    block = _Observed(V, missing, beta)
    x = block.x
    if block.pattern and not block.masked:  # the unstored entries are zeros, and count
        mean = float(x.sum(dtype=np.float64)) / (V.shape[0] * V.shape[1])
    else:  # the observed entries
        values = x if block.mask is None else x[block.mask]
        mean = float(values.mean(dtype=np.float64)) if values.size else 0.0
    W = np.full((V.shape[0], k), np.sqrt(max(mean, 0.0) / k), dtype=V.dtype)
    H = np.asarray(H, dtype=V.dtype)
    done = 0
    first = previous = block.divergence(block.evaluate(W, H), W, H)
    for done in range(1, max_iter + 1):
        W = block.update_W(W, H, block.evaluate(W, H), l1, l2, gamma)
        if tol > 0 and done % 10 == 0:
            current = block.divergence(block.evaluate(W, H), W, H)
            if first <= 0 or (previous - current) / first < tol:
                break
            previous = current
    return W, Sums(max_iter_done=done)


# ---------------------------------------------------------------------------------------
# Missing entries with HALS (solver='cd'): per-row and per-column Gram matrices

def masked_hals_step(
    V: Any,
    W: np.ndarray,
    H: np.ndarray,
    HHt: np.ndarray,
    *,
    missing: str,
    l1: float,
    l2: float,
    max_sweeps: int,
    sweep_tol: float,
    order: np.ndarray | None = None,
    initial_loss: bool = False,
    stats: bool = False,
) -> tuple[np.ndarray, Sums]:
    """One fused HALS iteration on a row block for the masked Frobenius loss
    ``0.5 sum_observed (V_ij - W_i H_j)^2``: reads ``V_i`` once.

    Row ``i`` of W sees only its observed columns, so its Gram matrix is its own:
    ``G_i = sum_{j observed} H_j H_j^T`` — formed as ``H H^T`` minus the missing columns'
    outer products when NaN marks a few missing entries (``missing='nan'``), or from the
    stored entries of a sparse block (``missing='unstored'``): ``O(e k^2)`` for ``e`` such
    entries. The rows of ``W_i`` are then solved by :func:`bignmf.solvers.hals.update_rows`.
    For the update of H, the same per column: the block's part of ``G_j = sum_{i observed}
    W_i W_i^T`` (an ``n x k x k`` partial sum, or ``W_i^T W_i`` and the missing entries'
    part) and ``W_i^T V_i`` (missing entries as zeros).

    Returns
    -------
    W_new : ndarray of shape (r, k)
    sums : Sums
        ``WtV`` (k x n), ``Gcols`` (n x k x k: observed Grams, ``'unstored'``; or the
        missing entries' part to subtract from ``WtW``, ``'nan'``), ``WtW``, ``W_sum``,
        ``max_sweeps``; with ``initial_loss`` the W side of the incoming iterate's loss
        (``cross0 = <W, V H^T>``, ``quad0 = sum_i w_i^T G_i w_i``, ``W_sum0``, ``W_sq0``).
    """
    V = load_block(V)
    check_missing(V, missing)
    out = block_stats(V, missing) if stats else Sums()
    if out.get("nonfinite"):
        return W, out
    pattern, X = _masked_parts(V, missing)
    F = np.array(W.T, dtype=V.dtype, order="C")
    P = _right(X, H)
    with small_blas():
        grams = _row_grams(pattern, H, HHt, missing)
        if initial_loss:
            F64 = _incoming_W_terms(F, P, out)
            out["quad0"] = float(np.einsum("kr,rkl,lr->", F64, grams, F64))
        F, out["max_sweeps"] = hals.update_rows(F, P, grams.astype(F.dtype, copy=False), l1, l2,
                                            max_sweeps, sweep_tol, order)
    F64 = _new_W_sums(F, X, out)
    with small_blas():
        out["Gcols"] = _entry_grams(pattern, np.ascontiguousarray(F64.T), by_row=False)
    return F.T, out


def _masked_parts(V: Any, missing: str) -> tuple[sp.csr_matrix, Any]:
    """``(pattern, X)``: the sparse pattern of the observed entries (``'unstored'``) or of
    the missing ones (``'nan'``), and V with the missing entries as zeros."""
    if missing == "unstored":
        return V, V
    X, nan = _nan_as_zero(V)
    return sp.csr_matrix(nan if nan is not None else V.shape, dtype=bool), X


def _row_grams(pattern: sp.csr_matrix, H: np.ndarray, HHt: np.ndarray,
               missing: str) -> np.ndarray:
    """Each row's Gram matrix over its observed columns, ``(r, k, k)`` float64."""
    grams = _entry_grams(pattern, np.ascontiguousarray(H.T, dtype=np.float64), by_row=True)
    return HHt[None, :, :] - grams if missing == "nan" else grams


def masked_transform_block(
    V: Any, H: np.ndarray, HHt: np.ndarray, *, missing: str, l1: float, l2: float,
    max_iter: int, tol: float,
) -> tuple[np.ndarray, Sums]:
    """W for a block with H fixed, over the observed entries only (one read of ``V_i``):
    each row from zero by HALS with its own Gram matrix, stopping on its own at ``tol``
    (as :func:`transform_block`, which it is when nothing is missing)."""
    V = load_block(V)
    check_missing(V, missing)
    pattern, X = _masked_parts(V, missing)
    P = _right(X, H)
    F = np.zeros((H.shape[0], V.shape[0]), dtype=V.dtype)
    with small_blas():
        grams = _row_grams(pattern, H, HHt, missing).astype(V.dtype, copy=False)
        F, done = hals.update_rows(F, P, grams, l1, l2, max_iter, tol)
    return F.T.copy(), Sums(max_iter_done=done)


def _entry_grams(pattern: sp.csr_matrix, X: np.ndarray, *, by_row: bool) -> np.ndarray:
    """Sums of outer products over the entries of a sparse ``pattern`` (r x n).

    ``by_row``: for each row ``i``, ``sum_{j in row i} X_j X_j^T`` with ``X`` of shape
    (n, k) (H transposed) -> (r, k, k). Else for each column ``j``, ``sum_{i in col j}
    X_i X_i^T`` with ``X`` of shape (r, k) (W) -> (n, k, k). Formed as a sparse
    (groups x entries) matrix times the entries' outer products, in slices of entries.
    """
    r, n = pattern.shape
    k = X.shape[1]
    groups = r if by_row else n
    out = np.zeros((groups, k * k))
    indptr, indices = pattern.indptr, pattern.indices
    rows = np.repeat(np.arange(r), np.diff(indptr))
    step = max(1, (1 << 21) // (k * k))
    for a in range(0, indices.size, step):
        b = min(a + step, indices.size)
        E = X[indices[a:b]] if by_row else X[rows[a:b]]
        outer = (E[:, :, None] * E[:, None, :]).reshape(b - a, k * k)
        group = rows[a:b] if by_row else indices[a:b]
        select = sp.csr_matrix((np.ones(b - a), (group, np.arange(b - a))),
                               shape=(groups, b - a))
        out += select @ outer
    return out.reshape(groups, k, k)


# --------------------------------------------------------------------------- update of H


@dataclass(frozen=True)
class HRule:
    """How a fit updates H from a pass's sums, fixed for the fit: the kernel ``kind``
    (:func:`bignmf.fit.update_kind`), the solver's ``update``, the penalty, the sweeps'
    stopping fraction and the beta loss. (The number of sweeps is :func:`h_step`'s
    argument: the fit sets it per iteration, from V's non-zero share once a pass has
    counted it.)"""

    kind: str
    update: Callable[..., tuple[np.ndarray, int]]
    penalty: Penalty
    sweep_tol: float
    missing: str | None
    beta: float
    gamma: float

    def gram(self, H: np.ndarray) -> np.ndarray | None:
        """``H H^T`` in float64, which the W update takes (none for the beta kernel)."""
        if self.kind == "beta":
            return None
        with small_blas():
            H64 = H.astype(np.float64)
            return H64 @ H64.T


def h_step(sums: Sums, H: np.ndarray, rule: HRule, *, sweeps: int, sq_norm_V: float | None,
           first: bool, order: np.ndarray | None
           ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """The update of H from a pass's total ``sums`` (at most ``sweeps`` sweeps of the
    solver), and the objective: ``(H, H H^T, info)``, with ``info`` holding ``objectives``
    (the values the iteration adds to the history: two in the first iteration of the
    Frobenius kernels, the loss before it too), ``loss_sq`` and, from a pass that computed
    them, V's ``stats`` (checked here).

    ``sq_norm_V`` is ``||V||^2`` (``None``: from the pass's own stats). Runs where the pass
    is added up: in this process, or on a cluster in the task with the tree's last sum.
    """
    stats = None
    if "nonfinite" in sums:  # the first pass also measured V
        stats = stats_of(sums)
        check_stats(stats, beta=rule.beta)
        if sq_norm_V is None:
            sq_norm_V = float(stats["sumsq"])
    penalty = rule.penalty
    objectives = []
    with small_blas():  # small products, one thread
        if rule.kind != "beta":
            # ||V - WH||^2 over the observed entries = ||V||^2 - 2 <W^T V, H> + quad,
            # with quad = <W^T W, H H^T>, or sum_j h_j^T G_j h_j for per-column Grams.
            assert sq_norm_V is not None
            if first:
                loss0 = expanded_sq(sq_norm_V, sums["cross0"], sums["quad0"])
                objectives.append(objective(loss0, penalty, float(sums["W_sum0"].sum()),
                                            sums["W_sq0"], H))
            WtV = sums["WtV"].astype(H.dtype, copy=False)
            if rule.kind == "masked_hals":
                grams = (sums["Gcols"] if rule.missing == "unstored"
                         else sums["WtW"][None, :, :] - sums["Gcols"])
                H, _ = hals.update_rows(H.copy(), WtV, grams, penalty.l1_H, penalty.l2_H,
                                        sweeps, rule.sweep_tol, order)
            else:
                H, _ = rule.update(H.copy(), WtV, sums["WtW"], penalty.l1_H, penalty.l2_H,
                                   sweeps, rule.sweep_tol, order)
            H64 = H.astype(np.float64)
            HHt = H64 @ H64.T  # (for the next pass too)
            quad = (float(np.einsum("kn,nkl,ln->", H64, grams, H64))
                    if rule.kind == "masked_hals" else float(np.vdot(sums["WtW"], HHt)))
            loss_sq = expanded_sq(sq_norm_V, float(np.vdot(sums["WtV"], H64)), quad)
            objectives.append(objective(loss_sq, penalty, float(sums["W_sum"].sum()),
                                        float(np.trace(sums["WtW"])), H))
        else:
            # The pass measured the iterate before it (W and H as they came in).
            loss_sq = beta_error(sums["div0"]) ** 2
            objectives.append(float(sums["div0"]) + penalty.value(
                float(sums["W_sum0"].sum()), sums["W_sq0"], H))
            denominator = sums.get("den_H")
            if denominator is None:  # Kullback-Leibler: W's column sums
                W_sum = sums["W_sum"].copy()
                W_sum[W_sum == 0] = 1.0
                denominator = W_sum[:, None]
            H = mu.beta_update(H, sums["num_H"], denominator, penalty.l1_H, penalty.l2_H,
                               rule.gamma)
            if rule.beta <= 1:
                H[H < TINY] = 0.0
            HHt = None
    return H, HHt, {"objectives": objectives, "loss_sq": loss_sq, "stats": stats}
