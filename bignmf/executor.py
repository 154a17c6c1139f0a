"""Where and when block kernels run: the only module that makes dask compute.

A pass over V is ``map`` (one kernel call per row block), ``total`` (a fixed-order tree sum
of the small partial results; ``reduce`` also applies a function to it in the same task)
and ``run`` (materialize: keep the new W blocks where they are, bring the small total
back) or ``start`` (the same, returning before the total is there; ``lookahead`` says how
many passes a fit may start ahead). Two executors share that interface:

* :class:`Eager` — V is a NumPy array or SciPy matrix in this process. Kernels are called
  directly on row blocks that are views of V, one block per core run side by side in
  threads (one BLAS thread each), or on the whole of a small V; no dask, no cluster, no
  start-up cost, so small fits (and scikit-learn's estimator checks) stay fast.
* :class:`DaskExecutor` — V is a dask array of row blocks (from Zarr, or a user's dask
  array). Kernels become tasks; ``start`` calls :func:`dask.persist` once per pass on the
  new W blocks *and* the tree-summed partials together, so every block of V is read
  exactly once per pass, and W stays on the workers (as futures on a distributed cluster).
"""

from __future__ import annotations

import contextlib
import itertools
import operator
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from dask._task_spec import DataNode, Task, TaskRef, convert_legacy_graph
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from bignmf.cluster import active_client, worker_info
from bignmf.passes import Sums, ZarrBlock, add_in_order, load_block, tree_sum
from bignmf.scratch import LostBlock
from bignmf.solvers import small_blas, thread_budget

#: Fewest rows per block of an in-memory V split across cores (smaller V: one block).
MIN_EAGER_ROWS = 2048


def _row_view(V: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of V without copying its entries (CSR: views of data/indices)."""
    if not sp.issparse(V):
        return V[start:stop]
    a, b = V.indptr[start], V.indptr[stop]
    # Set the arrays of an empty matrix: SciPy's constructor copies a view that is under
    # half of its base (``_prune_array``). They are a valid CSR slice of a valid V.
    block = sp.csr_matrix((stop - start, V.shape[1]), dtype=V.dtype)
    block.data, block.indices = V.data[a:b], V.indices[a:b]
    block.indptr = V.indptr[start:stop + 1] - a
    return block


class Pending:
    """A started pass: ``kept`` (where they are computed) and, from :meth:`result`, the
    value of what it fetches."""

    def __init__(self, kept: list, fetch: Callable[[], Any]) -> None:
        self.kept = kept
        self._fetch = fetch

    def result(self) -> tuple[list, Any]:
        """``(kept, fetched value)``, once the pass has computed the fetched part."""
        return self.kept, self._fetch()


class Eager:
    """Run kernels at once on an in-memory matrix.

    V is split into ``n_blocks`` row blocks (views, balanced in stored entries for sparse
    V), by default one per thread of ``threads`` (default
    :func:`~bignmf.solvers.thread_budget`: the cores, fewer when BLAS is limited) when
    every block gets at least :data:`MIN_EAGER_ROWS` rows. Each pass runs the blocks side
    by side in threads with one BLAS thread each: the products run as fast as one
    multithreaded product, and the solver sweeps, the per-entry work and SciPy's
    single-threaded sparse products, which a single block would leave on one core, use
    every core. One block runs directly with the BLAS threads the process has.
    """

    lazy = False
    #: Passes started before the previous one's result is known (:meth:`lookahead`).
    lookahead = 0

    def __init__(self, V: Any, n_blocks: int | None = None, threads: int | None = None
                 ) -> None:
        self.V = V
        m = V.shape[0]
        if n_blocks is None:
            n_blocks = min(threads or thread_budget(), m // MIN_EAGER_ROWS)
        n_blocks = max(1, min(n_blocks, m))
        if sp.issparse(V) and n_blocks > 1:
            V = self.V = sp.csr_matrix(V)  # CSR views need CSR (no copy if it already is)
            targets = np.linspace(0, V.indptr[-1], n_blocks + 1)[1:-1]
            inner = np.searchsorted(V.indptr, targets).clip(1, m - 1)
            ends = np.unique(np.concatenate(([0], inner, [m])))
        else:
            ends = np.linspace(0, m, n_blocks + 1).round().astype(int)
        self.row_bounds: list[tuple[int, int]] = [
            (int(a), int(b)) for a, b in itertools.pairwise(ends)]
        self._blocks = ([V] if len(self.row_bounds) == 1 else
                        [_row_view(V, a, b) for a, b in self.row_bounds])
        # One thread per block, started by the first pass and kept for the executor's life
        # (they end when it is collected): starting them for every pass cost ~1 ms each,
        # a tenth of a sparse or compressed iteration.
        self._pool: ThreadPoolExecutor | None = None

    @property
    def meta(self) -> Any:
        """An object of the type of V's blocks (NumPy array or SciPy sparse matrix)."""
        return self.V

    def blocks(self) -> list[Any]:
        return list(self._blocks)

    def map(
        self, kernel: Callable[..., Any], *per_block: Sequence[Any], **shared: Any,
    ) -> list:
        calls = list(zip(*per_block, strict=True))
        if len(calls) == 1:
            return [kernel(*calls[0], **shared)]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(calls), thread_name_prefix="bignmf-block")
        with small_blas():
            return list(self._pool.map(lambda args: kernel(*args, **shared), calls))

    @staticmethod
    def take(items: Sequence[Any], index: int) -> list:
        return [item[index] for item in items]

    @staticmethod
    def item(obj: Any, index: int) -> Any:
        return obj[index]

    @staticmethod
    def forward(obj: Any, *indices: int) -> tuple:
        return tuple(obj[i] for i in indices)

    @staticmethod
    def total(parts: list[Sums]) -> Sums:
        return tree_sum(parts)

    @staticmethod
    def reduce(parts: list[Sums], func: Callable[..., Any], *args: Any, **kwargs: Any
               ) -> Any:
        return func(tree_sum(parts), *args, **kwargs)

    @staticmethod
    def run(keep: Sequence[Any], fetch: Any = None) -> tuple[list, Any]:
        return list(keep), fetch

    @staticmethod
    def start(keep: Sequence[Any], fetch: Any = None) -> Pending:
        return Pending(list(keep), lambda: fetch)

    @staticmethod
    def value(obj: Any) -> Any:
        return obj

    @staticmethod
    def put(arrays: Sequence[np.ndarray]) -> list:
        return list(arrays)

    @staticmethod
    def lost_data(err: BaseException) -> bool:
        return False

    def assemble(self, blocks: Sequence[np.ndarray], n_cols: int, dtype: Any) -> np.ndarray:
        if len(blocks) == 1:
            return np.ascontiguousarray(blocks[0], dtype=dtype)
        return np.concatenate(blocks, axis=0).astype(dtype, copy=False)

    def split(self, W: np.ndarray) -> list[np.ndarray]:
        return [W[a:b] for a, b in self.row_bounds]


class DaskExecutor:
    """Run kernels as dask tasks over the row blocks of a dask array.

    Parameters
    ----------
    V : dask.array.Array
        Chunked in rows only (see :func:`bignmf.io.open_matrix`).
    client : distributed.Client, optional
        Made current for every computation (the embedded cluster). ``None`` uses whatever
        dask would use: an active ``Client``, or ``dask.config``'s ``scheduler``.
    source : zarr.Array, optional
        The Zarr array behind ``V``. Kernels then read their rows themselves
        (:class:`bignmf.passes.ZarrBlock`): one task per block and pass, no block of V
        ever held or moved as a task result. Without it, blocks come from ``V``'s graph.
    local : bool
        The workers run on this machine (bignmf's embedded cluster), so they can read files
        this process writes, e.g. recovery checkpoints in a temporary folder.
    """

    lazy = True

    def __init__(self, V: da.Array, client: Any = None, source: Any = None,
                 local: bool = False) -> None:
        if len(V.chunks[1]) != 1:
            raise ValueError("V must be chunked in rows only (one chunk across columns)")
        self.V = V
        self.client = client
        self.local = local
        self.source = source
        self.resident = False
        ends = np.cumsum((0, *V.chunks[0]))
        self.row_bounds = [(int(a), int(b)) for a, b in itertools.pairwise(ends)]
        if source is not None:
            token = uuid.uuid4().hex
            self._V_blocks: list[Any] = [ZarrBlock(source, a, b, token)
                                         for a, b in self.row_bounds]
        else:
            self._V_blocks = _fresh_blocks(V)

    @property
    def meta(self) -> Any:
        """An empty object of the type of V's blocks (NumPy array or SciPy sparse matrix)."""
        return self.V._meta

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Make this executor's client (if any) the one dask computes with."""
        if self.client is None:
            yield
        else:
            with self.client.as_current():
                yield

    def blocks(self) -> list[Any]:
        return self._V_blocks

    def map(
        self, kernel: Callable[..., Any], *per_block: Sequence[Any], **shared: Any,
    ) -> list:
        """One delayed ``kernel(*block_args, **shared)`` per row block (a kernel's outputs
        are taken with :meth:`take`)."""
        # Large shared arrays become one graph node each, so they travel once per worker.
        data = {key: value for key, value in shared.items()
                if isinstance(value, np.ndarray) and value.size > 64}
        nodes = _data_layer(list(data.values()))
        shared = {**shared, **dict(zip(data, nodes, strict=True))}
        return _layer(kernel.__name__, [(kernel, args, shared)
                                        for args in zip(*per_block, strict=True)])

    def make_resident(self) -> None:
        """Read V's blocks once into the workers' memory; later passes use them there.

        Costs one read of V and V's size in worker memory (as computed: float32/float64,
        or CSR); every later pass reads no storage. A block lost with a worker is read
        again by the scheduler (its task depends on nothing else).

        On a distributed cluster block i goes to worker i mod w (in address order), a soft
        restriction that holds while that worker lives. Every later kernel runs where its
        block is, so this spreads all passes evenly: left to the scheduler, which hands out
        tasks without inputs as workers ask, 10 blocks on 2 workers were sometimes split
        6:4, and each pass then took the time of 6 blocks.
        """
        with self.active():
            workers = sorted(worker_info(active_client()))
        spread = (dask.annotate(workers=lambda key: [workers[key[1] % len(workers)]],
                                allow_other_workers=True)
                  if workers else contextlib.nullcontext())
        with spread:
            blocks = self.map(load_block, self._V_blocks)
        self._V_blocks, _ = self.run(blocks)
        self.resident = True

    @property
    def lookahead(self) -> int:
        """Passes to start before the previous one's result is known.

        One on a distributed cluster with V resident in the workers' memory: the scheduler
        then starts each pass as soon as its inputs exist, and the client's round trip
        leaves the critical path. Each kernel still runs where its block of V is (the
        block outweighs every other input), even though the new H is on one worker.
        Otherwise none: a local dask scheduler computes when a pass is started; and with V
        read from storage, the largest input a kernel has in memory is its W block, about
        the size of H on many shapes, so that a worker holding H drew most kernels (3 of 4
        blocks on 2 workers, 15% slower passes). :meth:`forward` then sends H from here.
        """
        if not self.resident:
            return 0
        with self.active():
            return 1 if active_client() is not None else 0

    def forward(self, obj: Any, *indices: int) -> tuple:
        """``obj[i]`` for each index, as inputs of the next pass: taken in its tasks
        (:meth:`item`) when passes are started ahead (:attr:`lookahead`), else values,
        gathered here (``obj`` once) and sent with the pass's graph."""
        if self.lookahead:
            return tuple(self.item(obj, i) for i in indices)
        value = self.value(obj)
        return tuple(value[i] for i in indices)

    @staticmethod
    def take(items: Sequence[Any], index: int) -> list:
        return _layer("getitem", [(operator.getitem, (item, index), {}) for item in items])

    @staticmethod
    def item(obj: Any, index: int) -> Any:
        """``obj[index]`` as an argument of later kernels, taken inside their tasks (no
        task of its own: the tasks depend on, and a worker fetches, the whole ``obj``)."""
        return _Item(obj, index) if isinstance(obj, Delayed) else obj[index]

    @staticmethod
    def total(parts: list[Any]) -> Any:
        if len(parts) == 1:
            return parts[0]
        name = f"add_in_order-{uuid.uuid4().hex}"
        deps: dict[Any, Delayed] = {}
        layer, root = _tree_layer(name, parts, deps)
        return Delayed(root.key, _graph(name, layer, deps.values()), layer=name)

    @staticmethod
    def reduce(parts: list[Any], func: Callable[..., Any], *args: Any, **kwargs: Any
               ) -> Delayed:
        """``func(total(parts), *args, **kwargs)``, with the tree's last sum inside
        ``func``'s task: what follows a pass's total starts without another round trip.

        ``parts`` may be :meth:`item` s of the kernels' results: the tree's tasks then take
        them out of the results themselves (no task per block), and fetch whole results.
        """
        name = f"add_in_order-{uuid.uuid4().hex}"
        deps: dict[Any, Delayed] = {}
        layer, root = _tree_layer(name, parts, deps)
        total: Any = root
        if isinstance(root, TaskRef) and root.key in layer:  # (a tree of several parts)
            total = Task(None, add_in_order, *layer.pop(root.key).args)
        ref = _referrer(deps)
        key = f"{func.__name__}-{uuid.uuid4().hex}"
        layer[key] = Task(key, func, total, *map(ref, args),
                          **{k: ref(v) for k, v in kwargs.items()})
        return Delayed(key, _graph(name, layer, deps.values()), layer=name)

    def run(self, keep: Sequence[Any], fetch: Any = None) -> tuple[list, Any]:
        """Materialize ``keep`` where it is computed and return the value of ``fetch``.

        Both go into one graph, so each V block that feeds them is read once.
        """
        return self.start(keep, fetch).result()

    def start(self, keep: Sequence[Any], fetch: Any = None) -> Pending:
        """Start computing ``keep`` (kept where it is computed) and ``fetch``, in one graph;
        on a distributed cluster this returns at once and :meth:`Pending.result` waits."""
        # An :meth:`item` is kept by keeping the whole result it is taken from.
        whole = [x.obj if isinstance(x, _Item) else x for x in keep]
        with self.active():
            *done, fetched = dask.persist(*whole, fetch)
        kept = [_Item(d, x.index) if isinstance(x, _Item) else d
                for d, x in zip(done, keep, strict=True)]
        # (``fetched`` only: ``fetch``'s graph holds the futures of the pass's inputs, the
        # previous W among them, and would keep them in memory as long as the pass.)
        return Pending(kept, lambda: self.value(fetched))  # (value(None) is None)

    def value(self, obj: Any) -> Any:
        """The value of a lazy object: gathered if it was persisted on a cluster."""
        from distributed import futures_of  # imported once a cluster computes

        if isinstance(obj, _Item):
            return self.value(obj.obj)[obj.index]
        if not isinstance(obj, Delayed):
            return obj
        with self.active():
            futures = futures_of(obj)  # on a cluster: gather it, no new graph
            return futures[0].result() if futures else obj.compute()

    def compute(self, *objs: Any) -> tuple:
        """Compute lazy objects (e.g. a ``to_zarr`` store) with this executor's scheduler."""
        with self.active():
            return dask.compute(*objs)

    @staticmethod
    def lost_data(err: BaseException) -> bool:
        """True when a computation failed because workers holding its inputs died (the
        data can be rebuilt from a checkpoint), not because a task itself failed; or
        because a block of W kept in files is gone (:class:`~bignmf.scratch.LostBlock`)."""
        if isinstance(err, LostBlock):
            return True
        if type(err).__name__ != "FutureCancelledError":
            return False
        # "lost dependencies": a worker holding inputs died; "already forgotten": the
        # scheduler dropped such keys, which nothing could recompute.
        return "lost dependencies" in str(err) or "already forgotten" in str(err)

    def put(self, arrays: Sequence[np.ndarray]) -> list:
        """Send client-side blocks to where the kernels run (scattered on a cluster).

        Scattered under fresh keys (``hash=False``): content-hashed keys would make a second
        fit from the same arrays reuse the first fit's keys while the scheduler is still
        releasing them ("lost dependencies").
        """
        with self.active():
            client = active_client()
            if client is None:
                return [dask.delayed(a) for a in arrays]
            futures = client.scatter(list(arrays), hash=False)
            return [dask.delayed(f) for f in futures]

    def assemble(self, blocks: Sequence[Any], n_cols: int, dtype: Any) -> da.Array:
        taken = iter(_layer("getitem", [(operator.getitem, (b.obj, b.index), {})
                                        for b in blocks if isinstance(b, _Item)]))
        blocks = [next(taken) if isinstance(b, _Item) else b for b in blocks]
        parts = [
            da.from_delayed(b, shape=(stop - start, n_cols), dtype=dtype)
            for b, (start, stop) in zip(blocks, self.row_bounds, strict=True)
        ]
        return da.concatenate(parts, axis=0)

    def split(self, W: Any) -> list:
        if isinstance(W, da.Array):
            W = W.rechunk((self.V.chunks[0], W.shape[1]))
            return list(W.to_delayed().ravel())
        return self.put([np.asarray(W[a:b]) for a, b in self.row_bounds])


def _data_layer(values: Sequence[Any]) -> list[Delayed]:
    """One graph layer holding ``values`` as data, one node each, as delayed objects."""
    name = f"shared-{uuid.uuid4().hex}"
    layer: dict[Any, Any] = {(name, i): DataNode((name, i), value)
                             for i, value in enumerate(values)}
    graph = HighLevelGraph({name: layer}, {name: set()})
    return [Delayed((name, i), graph, layer=name) for i in range(len(values))]


def _layer(prefix: str, calls: Sequence[tuple[Callable[..., Any], Sequence[Any],
                                              dict[str, Any]]]) -> list[Delayed]:
    """One graph layer with a task ``func(*args, **kwargs)`` per entry of ``calls``, as
    delayed objects; delayed arguments become references to their keys.

    Building the layer directly costs microseconds per task: ``dask.delayed`` calls
    inspect and tokenize every argument, ~0.5 ms per block and pass, which at 1000 row
    blocks was most of an iteration's time on the client. Keys are unique (no two passes
    share one, however alike their inputs).
    """
    name = f"{prefix}-{uuid.uuid4().hex}"
    deps: dict[Any, Delayed] = {}
    ref = _referrer(deps)
    layer = {
        (name, i): Task((name, i), func, *map(ref, args),
                        **{key: ref(value) for key, value in kwargs.items()})
        for i, (func, args, kwargs) in enumerate(calls)
    }
    graph = _graph(name, layer, deps.values())
    return [Delayed((name, i), graph, layer=name) for i in range(len(calls))]


class _Item:
    """``obj[index]`` of a delayed ``obj``, taken inside the task that uses it
    (:meth:`DaskExecutor.item`)."""

    def __init__(self, obj: Delayed, index: int) -> None:
        self.obj, self.index = obj, index


def _referrer(deps: dict[Any, Delayed]) -> Callable[[Any], Any]:
    """A function that turns a task argument into its graph form, recording in ``deps``
    the delayed objects it refers to: references to their keys, or for an :class:`_Item`
    an inline ``getitem`` of one."""

    def ref(x: Any) -> Any:
        if isinstance(x, _Item):
            deps[x.obj.key] = x.obj
            return Task(None, operator.getitem, TaskRef(x.obj.key), x.index)
        if isinstance(x, Delayed):
            deps[x.key] = x
            return TaskRef(x.key)
        return x

    return ref


def _tree_layer(name: str, parts: list[Any], deps: dict[Any, Delayed]
                ) -> tuple[dict[Any, Task], Any]:
    """:func:`~bignmf.passes.tree_sum` of ``parts`` (delayed objects or :class:`_Item` s of
    them, recorded in ``deps``) as tasks of one layer: the layer and the root (a reference
    to the only part if there is one)."""
    ref = _referrer(deps)
    layer: dict[Any, Task] = {}

    def combine(*group: Any) -> TaskRef:
        key = (name, len(layer))
        layer[key] = Task(key, add_in_order, *group)
        return TaskRef(key)

    return layer, tree_sum([ref(part) for part in parts], combine)


def _graph(name: str, layer: dict[Any, Task], deps: Iterable[Delayed]) -> HighLevelGraph:
    """``layer`` on top of one layer holding the graphs of ``deps`` (each merged once,
    however many delayed objects share it).

    Two layers, not one per input: ``dask.persist`` copies every collection's graph layer
    by layer, and with 1000 row blocks (a layer per persisted W block and V block) that was
    millions of dictionary operations per pass on the client.
    """
    below: dict[Any, Any] = {}
    graphs: dict[int, Any] = {}  # by id, holding each graph (``.dask`` may build a new one)
    for dep in deps:
        graph = dep.dask
        if id(graph) not in graphs:
            graphs[id(graph)] = graph
            below.update(graph)
    base = f"inputs-{name}"
    return HighLevelGraph({name: layer, base: below}, {name: {base}, base: set()})


def _fresh_blocks(V: da.Array) -> list[Delayed]:
    """V's row blocks as delayed objects of an optimized copy of V's graph whose keys are
    all new.

    Fresh keys: the same V opened by another fit, a transform, or the user's own graphs
    may be optimized into different tasks under the same key names, which a distributed
    scheduler cannot reconcile (the worker waits on a stale dependency). Renaming every key
    of the optimized low-level graph does what ``dask.graph_manipulation.clone`` does, and
    also for graphs that ``clone`` breaks (dask 2026.8: a rechunked array loses the
    rechunk's inputs).
    """
    (optimized,) = dask.optimize(V)
    graph = convert_legacy_graph(dict(optimized.__dask_graph__()))
    tag = uuid.uuid4().hex

    def fresh(key: Any) -> Any:
        return (f"{key[0]}-{tag}", *key[1:]) if isinstance(key, tuple) else f"{key}-{tag}"

    new = {key: fresh(key) for key in graph}
    renamed = {new[key]: node.substitute(new, key=new[key]) for key, node in graph.items()}
    return [Delayed(new[key], renamed) for key in dask.core.flatten(optimized.__dask_keys__())]


def store(array: Any, target: Any) -> None:
    """Write a dask or NumPy array into a ``zarr.Array`` (block by block for dask)."""
    if isinstance(array, da.Array):
        da.store(array, target, lock=False)
    else:
        target[...] = array
