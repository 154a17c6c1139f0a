"""Image parts and compression: NMF learns the parts images are made of.

Part 1, parts: the "swimmer" images (a torso and four limbs, each limb in one of four
positions, with background noise) are sums of parts; NMF with k=17 finds them - each row of
H is one limb in one position (or the torso), each row of W says which parts an image uses.
Part 2, compression: scikit-learn's 1797 handwritten digits (8 x 8) at ranks 1...32 -
originals against their reconstructions W H, with the compression ratio (values stored,
m n / (k (m + n))) and the relative error ||V - W H|| / ||V|| of each rank, plus the
parts of the digits at one rank.

Data: examples/data/swimmer.mat (BSD-3-Clause, LANL T-ELF), sklearn.datasets.load_digits
(bundled with scikit-learn). Your own images: --images FILE.npy with an array of shape
(n_images, height, width), used in part 2 instead of the digits.

Run:
    python examples/image_parts.py              # about 10 s
    python examples/image_parts.py --quick      # a few seconds (CI)

Out of core and on a cluster: --zarr writes each images x pixels matrix to Zarr and fits it
from disk on the embedded Dask cluster; --scheduler tcp://HOST:8786 fits on your cluster.
The script prints the same fit as `bignmf fit OUT/swimmer.zarr -k 17 -o ...`, also with
`--cluster slurm` (Dask workers as SLURM jobs) and `bignmf submit ... --profile slurm-batch`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from _common import DATA, Run, image_grid, parser, pyplot
from sklearn.datasets import load_digits

from bignmf import NMF


def bright_pixels(images: np.ndarray) -> np.ndarray:
    """Pixels of each row above 30% of the row's maximum: the size of what it draws."""
    return (images > 0.3 * images.max(axis=1, keepdims=True)).sum(axis=1)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--images", type=Path, default=None,
                   help="your own images for part 2: a .npy array (n_images, height, width)")
    p.add_argument("-k", "--n-components", type=int, default=17,
                   help="parts of the swimmer (default 17: 16 limb positions + the torso)")
    args = p.parse_args()
    run = Run("image_parts", args)
    max_iter = 200 if run.quick else 1000

    # --- part 1: the swimmer's parts ----------------------------------------------------
    V = scipy.io.loadmat(DATA / "swimmer.mat")["V"].T.astype(np.float64)  # 256 x 1024
    k = args.n_components
    source = run.source(V, "swimmer")
    model = NMF(n_components=k, init="nndsvda", max_iter=max_iter, tol=1e-6,
                random_state=args.seed)
    W = run.dense(model.fit_transform(source))
    H = model.components_
    run.cli_hint(source, k)
    swim_err = model.reconstruction_err_ / np.linalg.norm(V)
    order = np.argsort([np.argmax(h) for h in H])  # parts sorted by their brightest pixel
    size_parts, size_images = np.median(bright_pixels(H)), np.median(bright_pixels(V))
    weight = W * np.linalg.norm(H, axis=1)  # what each part contributes to each image
    n_used = np.median((weight > 0.2 * weight.max(axis=1, keepdims=True)).sum(axis=1))
    print(f"swimmer: {V.shape[0]} images of 32 x 32; NMF k={k}: {model.n_iter_} iterations, "
          f"relative error {swim_err:.3f} (the images carry background noise)")
    print(f"  a part draws {size_parts:.0f} bright pixels (median), an image {size_images:.0f}; "
          f"an image uses {n_used:.0f} parts (median; a swimmer is a torso and 4 limbs)")
    fig = image_grid(V[:: V.shape[0] // 16][:16], (32, 32), 8, scale=1.1)
    fig.suptitle("Swimmer images (input)")
    run.save(fig, "swimmer_images.png")
    fig = image_grid(H[order], (32, 32), 9, titles=[f"part {i}" for i in order], scale=1.1)
    fig.suptitle(f"The {k} parts NMF learned (rows of H)")
    run.save(fig, "swimmer_parts.png")

    # --- part 2: digits at several ranks ------------------------------------------------
    if args.images is not None:
        stack = np.load(args.images).astype(np.float64)
        what = args.images.name
    else:
        stack = load_digits().images
        what = "scikit-learn digits"
    if run.quick:
        stack = stack[:600]
    n_img, height, width = stack.shape
    X = stack.reshape(n_img, height * width)
    if X.min() < 0:
        raise SystemExit(f"{what}: NMF needs non-negative pixel values (min {X.min()})")
    ranks = [2, 8, 24] if run.quick else [1, 2, 4, 8, 16, 32]
    ranks = [r for r in ranks if r < min(X.shape)]
    source = run.source(X, "images")
    norm = np.linalg.norm(X)
    errors, ratios, recon = [], [], []
    show = np.linspace(0, n_img - 1, 10).astype(int)
    print(f"{what}: {n_img} images of {height} x {width}")
    for r in ranks:
        model = NMF(n_components=r, init="nndsvda", max_iter=100 if run.quick else 1000,
                    tol=1e-4,
                    random_state=args.seed)
        W = run.dense(model.fit_transform(source))
        errors.append(model.reconstruction_err_ / norm)
        ratios.append(X.size / (r * (n_img + height * width)))
        recon.append(W[show] @ model.components_)
        print(f"  rank {r:3d}: relative error {errors[-1]:.3f}, compression {ratios[-1]:6.1f}x "
              f"({model.n_iter_} iterations)")
        if r == 16 or (run.quick and r == 8):
            fig = image_grid(model.components_, (height, width), 8, scale=1.0,
                             titles=[f"part {i}" for i in range(r)])
            fig.suptitle(f"Parts of {what} at rank {r}")
            run.save(fig, "image_parts.png")
    rows = np.vstack([X[show], *recon])
    fig = image_grid(rows, (height, width), len(show), scale=0.9,
                     row_labels=["original"] + [f"k={r}\n{c:.0f}x, err {e:.2f}"
                                                for r, c, e in zip(ranks, ratios, errors,
                                                                   strict=True)])
    fig.suptitle("Originals and NMF reconstructions (compression, relative error)")
    run.save(fig, "reconstructions.png")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
    ax.plot(ranks, errors, "o-")
    for r, c, e in zip(ranks, ratios, errors, strict=True):
        ax.annotate(f"{c:.0f}x", (r, e), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank k (labels: compression ratio)")
    ax.set_ylabel("relative error")
    ax.set_title(f"{what}: error against rank")
    run.save(fig, "error_by_rank.png")

    run.summary.update(
        swimmer={"n_components": k, "relative_error": swim_err,
                 "bright_pixels_per_part": float(size_parts),
                 "bright_pixels_per_image": float(size_images),
                 "parts_per_image": float(n_used)},
        images={"what": what, "shape": [n_img, height, width], "ranks": ranks,
                "relative_error": errors, "compression_ratio": ratios})
    run.finish()


if __name__ == "__main__":
    main()
