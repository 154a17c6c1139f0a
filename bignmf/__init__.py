"""bignmf: non-negative matrix factorization for matrices larger than memory.

V (in Zarr, a dask array, or memory) is factorized as ``V ~ W H`` by alternating updates
whose every pass over V is a block-wise dask computation; the API follows scikit-learn.

The public names are imported on first use, so that a Dask worker unpickling a block
kernel (:mod:`bignmf.passes`) does not import scikit-learn and the estimator machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from bignmf._version import __version__

if TYPE_CHECKING:
    from bignmf.conversion import convert
    from bignmf.estimator import NMF, NMFResult, load, nmf, non_negative_factorization
    from bignmf.io import open_matrix, write_csr

_LAZY = {
    "NMF": "bignmf.estimator",
    "NMFResult": "bignmf.estimator",
    "nmf": "bignmf.estimator",
    "non_negative_factorization": "bignmf.estimator",
    "load": "bignmf.estimator",
    "open_matrix": "bignmf.io",
    "write_csr": "bignmf.io",
    "convert": "bignmf.conversion",
}

__all__ = ["NMF", "NMFResult", "__version__", "convert", "load", "nmf",
           "non_negative_factorization", "open_matrix", "write_csr"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bignmf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
