"""Recommendation: NMF that fits only the ratings people gave predicts the ones they did not.

A ratings matrix (users x items) is mostly missing: a user has rated a few items of
thousands. NMF with ``missing='unstored'`` fits W H to the stored ratings only (masked
multiplicative updates), so W[u] @ H[:, i] predicts user u's rating of item i. The example
holds out a random 10% of the ratings, fits the rest, and compares the held-out RMSE with
simple baselines: the global mean, user and item means (damped biases), and scikit-learn's
NMF on the matrix with missing ratings set to 0 (what plain NMF does with a sparse matrix).
It then prints a user's top recommendations: the unrated items with the highest predicted
rating, with titles when the item file sits beside the ratings.

Data: MovieLens cannot be redistributed, so give the path of a ratings file you downloaded
from https://grouplens.org/datasets/movielens/ (ml-100k is 5 MB): `u.data` (tab-separated
user item rating timestamp), `ratings.csv` (userId,movieId,rating,timestamp) or
`ratings.dat` (user::item::rating::timestamp). Titles are read from u.item, movies.csv or
movies.dat in the same folder.

Run:
    python examples/recommend.py --ratings ml-100k/u.data            # about 10 s
    python examples/recommend.py --ratings ml-1m/ratings.dat --user 42 -k 8
    python examples/recommend.py --ratings u.data --quick            # a few seconds

Out of core and on a cluster: --zarr writes the training ratings as a CSR matrix in Zarr
(only the stored ratings, as AnnData writes sparse matrices) and fits it from disk on the
embedded Dask cluster; --scheduler tcp://HOST:8786 fits on your cluster. The script prints
the same fit as `bignmf fit OUT/ratings.zarr -k K --missing unstored -o ...`,
with `--cluster slurm` (Dask workers as SLURM jobs) or `bignmf submit ... --profile
slurm-batch` (one batch job).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from _common import Run, parser, pyplot
from sklearn.decomposition import NMF as SklearnNMF

from bignmf import NMF


def read_ratings(path: Path) -> np.ndarray:
    """``(n, 3)`` array of user id, item id, rating from a MovieLens-format file."""
    with open(path, encoding="latin-1") as f:
        first = f.readline()
    if "::" in first:  # ratings.dat (MovieLens 1M, 10M)
        text = path.read_text(encoding="latin-1").replace("::", "\t")
        rows = [line.split("\t")[:3] for line in text.splitlines() if line.strip()]
        return np.array(rows, dtype=np.float64)
    if "," in first:  # ratings.csv (MovieLens 20M, 25M, latest), with a header
        skip = 0 if first.split(",")[0].strip().isdigit() else 1
        return np.loadtxt(path, delimiter=",", skiprows=skip, usecols=(0, 1, 2), ndmin=2)
    return np.loadtxt(path, usecols=(0, 1, 2), ndmin=2)  # u.data (MovieLens 100k)


def read_titles(folder: Path) -> dict[int, str]:
    """Item id -> title from u.item, movies.csv or movies.dat next to the ratings."""
    if (folder / "u.item").exists():
        with open(folder / "u.item", encoding="latin-1") as f:
            return {int(r[0]): r[1] for r in csv.reader(f, delimiter="|") if r}
    if (folder / "movies.csv").exists():
        with open(folder / "movies.csv", encoding="utf-8") as f:
            return {int(r[0]): r[1] for r in list(csv.reader(f))[1:] if r}
    if (folder / "movies.dat").exists():
        lines = (folder / "movies.dat").read_text(encoding="latin-1").splitlines()
        return {int(r[0]): r[1] for r in (line.split("::") for line in lines) if len(r) > 1}
    return {}


def rmse(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.sqrt(np.mean((predicted - actual) ** 2)))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--ratings", type=Path, required=True,
                   help="MovieLens ratings: u.data, ratings.csv or ratings.dat")
    p.add_argument("-k", "--n-components", type=int, default=4, help="rank (default 4)")
    p.add_argument("--alpha", type=float, default=0.002,
                   help="L2 penalty on W and H (alpha_W = alpha_H; default 0.002)")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--user", type=int, default=None, help="user id to recommend for")
    p.add_argument("--min-ratings", type=int, default=20,
                   help="recommend only items with at least this many ratings")
    args = p.parse_args()
    run = Run("recommend", args)
    k = args.n_components

    # --- ratings -> users x items, a random held-out set --------------------------------
    data = read_ratings(args.ratings)
    user_ids, users = np.unique(data[:, 0].astype(np.int64), return_inverse=True)
    item_ids, items = np.unique(data[:, 1].astype(np.int64), return_inverse=True)
    ratings = data[:, 2]
    lo, hi = float(ratings.min()), float(ratings.max())
    m, n = len(user_ids), len(item_ids)
    rng = np.random.default_rng(args.seed)
    test = rng.random(len(ratings)) < args.test_fraction
    train = ~test
    R = sp.csr_matrix((ratings[train], (users[train], items[train])), shape=(m, n))
    print(f"{args.ratings.name}: {len(ratings)} ratings ({lo:g}-{hi:g}) of {m} users x "
          f"{n} items ({len(ratings) / (m * n):.1%} observed); {test.sum()} held out")

    # --- masked NMF: the loss counts the stored ratings only ----------------------------
    source = run.source(R, "ratings")
    model = NMF(n_components=k, missing="unstored", init="random",
                alpha_W=args.alpha, max_iter=100 if run.quick else 300, tol=1e-4,
                random_state=args.seed)
    W = run.dense(model.fit_transform(source))
    H = model.components_
    run.cli_hint(source, k, f" --missing unstored --alpha-W {args.alpha:g}")
    print(f"masked NMF k={k}: {model.n_iter_} iterations")

    # users or items without a training rating have no factors: predict the global mean
    mean = float(ratings[train].mean())
    seen_u = np.bincount(users[train], minlength=m) > 0
    seen_i = np.bincount(items[train], minlength=n) > 0
    known = seen_u[users[test]] & seen_i[items[test]]

    def predict(scores: np.ndarray) -> np.ndarray:
        return np.clip(np.where(known, scores, mean), lo, hi)

    u_t, i_t, r_t = users[test], items[test], ratings[test]
    masked = predict(np.einsum("ij,ji->i", W[u_t], H[:, i_t]))
    # damped user and item biases (Koren 2009, sec. 2.1)
    n_u = np.bincount(users[train], minlength=m)
    b_u = np.bincount(users[train], ratings[train] - mean, minlength=m) / (n_u + 10)
    resid = ratings[train] - mean - b_u[users[train]]
    b_i = np.bincount(items[train], resid, minlength=n) / (np.bincount(items[train],
                                                                       minlength=n) + 10)
    zero_filled = SklearnNMF(n_components=k, init="nndsvda", max_iter=300,
                             random_state=args.seed).fit(R)
    W0 = zero_filled.transform(R)
    results = {
        "global mean": rmse(np.full(len(r_t), mean), r_t),
        "user + item means": rmse(predict(mean + b_u[u_t] + b_i[i_t]), r_t),
        "scikit-learn NMF, missing = 0": rmse(
            predict(np.einsum("ij,ji->i", W0[u_t], zero_filled.components_[:, i_t])), r_t),
        f"bignmf masked NMF (k={k})": rmse(masked, r_t),
    }
    lines = ["held-out RMSE:"] + [f"  {name:32s} {value:.4f}" for name, value in results.items()]

    # --- top recommendations for one user -------------------------------------------------
    titles = read_titles(args.ratings.parent)
    uid = args.user if args.user is not None else int(user_ids[0])
    if uid not in user_ids:
        raise SystemExit(f"user {uid} is not in {args.ratings}")
    u = int(np.searchsorted(user_ids, uid))
    popular = np.bincount(items[train], minlength=n) >= min(args.min_ratings,
                                                            int(np.bincount(items).max()))
    rated = np.zeros(n, dtype=bool)
    rated[items[users == u]] = True
    scores = np.where(popular & ~rated, W[u] @ H, -np.inf)
    best = np.argsort(scores)[::-1][:10]
    liked = np.argsort(np.where(users == u, ratings, -np.inf))[::-1][:5]
    lines += ["", f"user {uid} rated {rated.sum()} items; five of their top-rated:"]
    lines += [f"  {ratings[j]:g}  {titles.get(int(item_ids[items[j]]), item_ids[items[j]])}"
              for j in liked]
    lines += [f"top recommendations (unrated, at least {args.min_ratings} ratings):"]
    lines += [f"  {np.clip(scores[i], lo, hi):.2f}  {titles.get(int(item_ids[i]), item_ids[i])}"
              for i in best]
    text = "\n".join(lines)
    print(text)
    run.write_text("recommendations.txt", text + "\n")

    # --- pictures ------------------------------------------------------------------------
    plt = pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 3.6), constrained_layout=True)
    names = list(results)
    ax0.barh(names, list(results.values()), color=["C7", "C7", "C1", "C0"])
    for y, value in enumerate(results.values()):
        ax0.text(value, y, f" {value:.3f}", va="center", fontsize=8)
    ax0.invert_yaxis()
    ax0.set_xlim(0, 1.2 * max(results.values()))
    ax0.set_xlabel("held-out RMSE (lower is better)")
    levels = np.unique(r_t)
    ax1.boxplot([masked[r_t == v] for v in levels], showfliers=False)
    ax1.set_xticks(np.arange(1, len(levels) + 1), [f"{v:g}" for v in levels])
    ax1.set_xlabel("actual held-out rating")
    ax1.set_ylabel("masked NMF prediction")
    ax1.set_title("Predictions by actual rating")
    run.save(fig, "heldout_rmse.png")

    run.summary.update(
        ratings=str(args.ratings), n_users=m, n_items=n, n_ratings=len(ratings),
        n_heldout=int(test.sum()), n_components=k, alpha=args.alpha, n_iter=model.n_iter_,
        rmse=results, user=uid,
        recommendations=[str(titles.get(int(item_ids[i]), item_ids[i])) for i in best])
    run.finish()


if __name__ == "__main__":
    main()
