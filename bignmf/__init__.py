"""bignmf: non-negative matrix factorization for matrices larger than memory.

V (in Zarr, a dask array, or memory) is factorized as ``V ~ W H`` by alternating updates
whose every pass over V is a block-wise dask computation; the API follows scikit-learn.
"""

from bignmf._version import __version__
from bignmf.estimator import NMF, NMFResult, non_negative_factorization, nmf
from bignmf.io import open_matrix

__all__ = ["NMF", "NMFResult", "__version__", "nmf", "non_negative_factorization", "open_matrix"]
