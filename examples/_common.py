"""What the examples share: command line, output folder, Zarr copies of V, figures, summary.

Each example is a script that reads top to bottom (``python examples/NAME.py --help``);
the repeated plumbing lives here. Plots need matplotlib (``pip install "bignmf[examples]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

#: The real data sets the examples run on by default (sources and licenses: data/README.md).
DATA = Path(__file__).resolve().parent / "data"


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every example has; ``doc`` (the script's docstring) is its ``--help``."""
    text = (doc or "").strip()
    head, _, rest = text.partition("\n\n")
    p = argparse.ArgumentParser(description=head, epilog=rest,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the pictures and summary (default: "
                        "./example-output/NAME/)")
    p.add_argument("--quick", action="store_true",
                   help="small data and few iterations: a few seconds (what CI runs)")
    p.add_argument("--zarr", action="store_true",
                   help="write V to a Zarr store in OUT and fit it from disk, block by block "
                        "with Dask (on the embedded local cluster unless --scheduler)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="fit on a running Dask scheduler (tcp://host:8786); implies --zarr, "
                        "and OUT must be on a filesystem the workers share")
    p.add_argument("--seed", type=int, default=0, help="random_state of the fits")
    return p


def pyplot() -> Any:
    """matplotlib.pyplot with the file-only Agg backend, or a clear exit if it is missing."""
    try:
        import matplotlib
    except ImportError:
        sys.exit("this example draws its results with matplotlib: "
                 "pip install \"bignmf[examples]\" (or pip install matplotlib)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class Run:
    """One run of an example: its output folder, Dask placement, files and summary.

    ``--scheduler`` connects a :class:`distributed.Client` before anything is fitted, so
    bignmf computes on that cluster; otherwise an out-of-core fit starts bignmf's embedded
    local cluster. In-memory inputs (NumPy, SciPy) never use Dask.
    """

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name = name
        self.args = args
        self.quick: bool = args.quick
        self.zarr: bool = args.zarr or args.scheduler is not None
        self.out = Path(args.out if args.out is not None else Path("example-output") / name)
        self.out.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self.summary: dict[str, Any] = {"example": name, "quick": self.quick,
                                        "zarr": self.zarr, "command": shlex.join(sys.argv)}
        self.client = None
        if args.scheduler is not None:
            from distributed import Client

            self.client = Client(args.scheduler)
            print(f"connected to {args.scheduler} ({len(self.client.nthreads())} workers)")
        self._t0 = time.perf_counter()

    # --------------------------------------------------------------- inputs
    def source(self, X: Any, name: str, rows_per_chunk: int | None = None) -> Any:
        """X itself (fitted in memory), or with ``--zarr`` the path of a Zarr copy in OUT.

        Dense X becomes a Zarr array chunked in row blocks; sparse X a CSR group as AnnData
        writes it (:func:`bignmf.write_csr`). Either path can be given to ``NMF.fit``,
        ``bignmf fit`` or a batch job.
        """
        if not self.zarr:
            return X
        path = (self.out / f"{name}.zarr").resolve()
        m = X.shape[0]
        rows = rows_per_chunk or max(1, min(m, -(-m // 4)))
        if sp.issparse(X):
            import bignmf

            bignmf.write_csr(path, sp.csr_matrix(X), rows_per_chunk=rows)
        else:
            import zarr

            z = zarr.create_array(path, shape=X.shape, chunks=(rows, X.shape[1]),
                                  dtype=X.dtype, overwrite=True)
            z[:] = X
        print(f"wrote V ({m} x {X.shape[1]}, {'CSR' if sp.issparse(X) else 'dense'}) to {path}")
        return str(path)

    @staticmethod
    def dense(A: Any) -> np.ndarray:
        """A NumPy array of A (computes a dask array: W of an out-of-core fit)."""
        if hasattr(A, "compute"):
            A = A.compute()
        return np.asarray(A)

    def cli_hint(self, source: Any, k: int, options: str = "") -> None:
        """Print the same fit as a ``bignmf fit`` command (only for data in Zarr)."""
        if not isinstance(source, str):
            return
        result = shlex.quote(str((self.out / "result.zarr").resolve()))
        base = f"bignmf fit {shlex.quote(source)} -k {k}{options} -o {result}"
        address = self.args.scheduler or "tcp://HOST:8786"
        lines = ["The same fit from the command line (OUT on a filesystem the workers share):",
                 f"  embedded local cluster: {base}",
                 f"  your Dask cluster:      {base} --scheduler {address}",
                 f"  Dask workers as SLURM jobs: {base} --cluster slurm",
                 f"  one resumable SLURM job:    bignmf submit {shlex.quote(source)} -k {k}"
                 f"{options} -o {result} --profile slurm-batch"]
        print("\n".join(lines))

    # --------------------------------------------------------------- outputs
    def save(self, fig: Any, filename: str, dpi: int = 110) -> Path:
        """Write a matplotlib figure as a PNG in OUT and close it."""
        path = self.out / filename
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        pyplot().close(fig)
        self.files.append(path)
        print(f"wrote {path}")
        return path

    def write_text(self, filename: str, text: str) -> Path:
        path = self.out / filename
        path.write_text(text)
        self.files.append(path)
        print(f"wrote {path}")
        return path

    def finish(self) -> None:
        """Write ``summary.json`` (the numbers printed, the files written, the run time)."""
        self.summary["seconds"] = round(time.perf_counter() - self._t0, 2)
        self.summary["files"] = [os.fspath(p.name) for p in self.files]
        path = self.out / "summary.json"
        path.write_text(json.dumps(self.summary, indent=1, default=_jsonable) + "\n")
        print(f"wrote {path}")
        print(f"{self.name}: done in {self.summary['seconds']:.1f} s; results in {self.out}/")
        if self.client is not None:
            self.client.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return os.fspath(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def top_indices(h: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest entries of ``h``, largest first."""
    n = min(n, h.size)
    top = np.argpartition(h, -n)[-n:]
    return top[np.argsort(h[top])[::-1]]


def top_terms_figure(H: np.ndarray, names: Sequence[str], n: int, title: str,
                     label: str = "component", ncols: int = 4) -> Any:
    """A grid of horizontal bar charts: the ``n`` heaviest names of each row of H."""
    plt = pyplot()
    k = H.shape[0]
    nrows = -(-k // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 0.28 * n * nrows + 0.6),
                             squeeze=False, constrained_layout=True)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.axis("off")
            continue
        top = top_indices(H[i], n)
        ax.barh(np.arange(len(top)), H[i, top] / H[i].max(), color=f"C{i % 10}")
        ax.set_yticks(np.arange(len(top)), [names[j] for j in top], fontsize=8)
        ax.invert_yaxis()
        ax.set_xticks([])
        ax.set_title(f"{label} {i}", fontsize=9)
    fig.suptitle(title)
    return fig


def image_grid(images: np.ndarray, shape: tuple[int, int], ncols: int,
               titles: Sequence[str] | None = None, row_labels: Sequence[str] | None = None,
               cmap: str = "gray_r", scale: float = 1.0) -> Any:
    """Images (one per row of ``images``, each ``shape`` when reshaped) in a grid."""
    plt = pyplot()
    n = images.shape[0]
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + 0.3),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for side in ax.spines.values():
            side.set_visible(False)
        if i >= n:
            continue
        ax.imshow(images[i].reshape(shape), cmap=cmap, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
        if row_labels is not None and i % ncols == 0:
            ax.set_ylabel(row_labels[i // ncols], fontsize=7)
    return fig
