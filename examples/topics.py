"""Topic modeling: the themes of 60 years of State of the Union addresses, found by NMF.

Each paragraph of the 65 addresses (1945-2006) is a document; TF-IDF turns them into a
sparse documents x terms matrix V, and NMF writes V ~ W H with k topics: row t of H weighs
the terms of topic t, row d of W the topics of paragraph d. The example prints and plots
the top words of each topic, how coherent they are (NPMI of their co-occurrence in
paragraphs, against random sets of frequent words), and the dominant topic of each address
(the sum of its paragraphs' W rows) - a picture of which themes each president spoke about.

Data: examples/data/state_union.zip (public domain; NLTK's copy of the C-Span corpus).
Your own texts: --corpus FOLDER (every *.txt file below it) or --corpus FILE.zip.

Run:
    python examples/topics.py                   # in memory, about 5 s
    python examples/topics.py --quick           # a few seconds (CI)
    python examples/topics.py -k 20 --corpus my_texts/ --unit file

Out of core and on a cluster: --zarr writes V as a CSR matrix in Zarr (an AnnData-style
group, bignmf.write_csr) and fits it from disk on the embedded Dask cluster; add
--scheduler tcp://HOST:8786 to fit on your cluster. The script then prints the same fit as
`bignmf fit OUT/tfidf.zarr -k K -o OUT/result.zarr`, with `--cluster slurm` for Dask
workers as SLURM jobs or `bignmf submit ... --profile slurm-batch` for one batch job.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from _common import DATA, Run, parser, pyplot, top_indices, top_terms_figure
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

from bignmf import NMF


def read_corpus(path: Path) -> list[tuple[str, str]]:
    """``(name, text)`` of every .txt file in a zip archive or below a folder, by name."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            names = sorted(n for n in z.namelist() if n.endswith(".txt"))
            return [(Path(n).stem, z.read(n).decode("utf-8", "replace")) for n in names]
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise SystemExit(f"no .txt files in {path}")
    return [(f.stem, f.read_text(encoding="utf-8", errors="replace")) for f in files]


def paragraphs(text: str, min_words: int) -> list[str]:
    """Paragraphs of at least ``min_words`` words: blocks between blank lines, or single
    lines when a block's lines are long (one paragraph per line, as in the addresses)."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        one_per_line = np.mean([len(line) for line in lines]) > 200
        for part in lines if one_per_line else [" ".join(lines)]:
            if len(part.split()) >= min_words:
                out.append(part.strip())
    return out


def npmi_coherence(B: sp.csr_matrix, terms: np.ndarray) -> float:
    """Mean normalized pointwise mutual information of the pairs of ``terms``, from the
    documents they occur in (B: documents x terms, 0/1); 1 = always together, 0 =
    independent, -1 = never together (Bouma 2009; Lau et al. 2014 for topics)."""
    sub = B[:, terms]
    n_docs = B.shape[0]
    co = (sub.T @ sub).toarray() / n_docs
    p = np.diag(co).copy()
    scores = []
    for i in range(len(terms)):
        for j in range(i + 1, len(terms)):
            if co[i, j] == 0:
                scores.append(-1.0)
            elif co[i, j] == 1:
                scores.append(1.0)
            else:
                scores.append(np.log(co[i, j] / (p[i] * p[j])) / -np.log(co[i, j]))
    return float(np.mean(scores))


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--corpus", type=Path, default=DATA / "state_union.zip",
                   help="a .zip of .txt files, a folder of .txt files, or one .txt file")
    p.add_argument("--unit", choices=["paragraph", "file"], default="paragraph",
                   help="what a document is (default: paragraph)")
    p.add_argument("-k", "--n-components", type=int, default=None,
                   help="number of topics (default 12; 8 with --quick)")
    p.add_argument("--top", type=int, default=10, help="words shown per topic")
    args = p.parse_args()
    run = Run("topics", args)
    k = args.n_components or (8 if run.quick else 12)

    # --- documents -> TF-IDF (sparse) --------------------------------------------------
    files = read_corpus(args.corpus)
    docs, owner = [], []
    for name, text in files:
        parts = paragraphs(text, min_words=40) if args.unit == "paragraph" else [text]
        docs += parts
        owner += [name] * len(parts)
    owner_names = list(dict.fromkeys(owner))
    print(f"{args.corpus.name}: {len(files)} files, {len(docs)} documents ({args.unit}s)")
    # "applause", "laughter": the transcripts' stage directions, not the speaker's words
    vectorizer = TfidfVectorizer(
        stop_words=sorted(ENGLISH_STOP_WORDS | {"applause", "laughter"}),
        token_pattern=r"(?u)\b[a-zA-Z]{3,}\b", sublinear_tf=True,
        min_df=5 if len(docs) >= 200 else 1, max_df=0.5, dtype=np.float32)
    X = vectorizer.fit_transform(docs)  # CSR, documents x terms
    vocab = vectorizer.get_feature_names_out()
    print(f"TF-IDF: {X.shape[0]} documents x {X.shape[1]} terms, {X.nnz} non-zeros "
          f"({X.nnz / np.prod(X.shape):.2%} dense)")

    # --- NMF ---------------------------------------------------------------------------
    source = run.source(X, "tfidf")  # X itself, or with --zarr the path of a CSR Zarr copy
    model = NMF(n_components=k, init="nndsvda", max_iter=100 if run.quick else 300,
                tol=1e-4, random_state=args.seed)
    W = run.dense(model.fit_transform(source))  # documents x topics
    H = model.components_                       # topics x terms
    print(f"NMF k={k}: {model.n_iter_} iterations, relative error "
          f"{model.reconstruction_err_ / sp.linalg.norm(X):.3f}")
    run.cli_hint(source, k)

    # --- topics: top words, coherence ----------------------------------------------------
    B = (X > 0).astype(np.float64).tocsr()
    top = [top_indices(H[t], args.top) for t in range(k)]
    words = [[str(vocab[j]) for j in ts] for ts in top]
    coherence = [npmi_coherence(B, ts) for ts in top]
    rng = np.random.default_rng(args.seed)
    frequent = top_indices(np.asarray(B.sum(axis=0)).ravel(), 500)
    baseline = float(np.mean([npmi_coherence(B, rng.choice(frequent, args.top, replace=False))
                              for _ in range(200)]))
    share = W.sum(axis=0) / W.sum()
    lines = [f"topic {t:2d} ({share[t]:5.1%} of the weight, NPMI {coherence[t]:+.2f}): "
             + " ".join(words[t]) for t in range(k)]
    lines.append(f"mean NPMI of the topics {np.mean(coherence):+.3f}; of random sets of "
                 f"{args.top} words among the 500 most frequent {baseline:+.3f}")

    # --- each file's dominant topic ------------------------------------------------------
    owner_idx = np.array([owner_names.index(o) for o in owner])
    per_file = np.zeros((len(owner_names), k))
    np.add.at(per_file, owner_idx, W)
    per_file /= np.maximum(per_file.sum(axis=1, keepdims=True), 1e-300)
    dominant = per_file.argmax(axis=1)
    lines.append("")
    lines += [f"{name:20s} topic {d:2d} ({per_file[i, d]:.0%}): {' '.join(words[d][:4])}"
              for i, (name, d) in enumerate(zip(owner_names, dominant, strict=True))]
    text = "\n".join(lines)
    print(text)
    run.write_text("topics.txt", text + "\n")

    # --- pictures ------------------------------------------------------------------------
    fig = top_terms_figure(H, vocab, min(args.top, 10),
                           f"Top words of the {k} NMF topics ({args.corpus.name})",
                           label="topic")
    run.save(fig, "topic_words.png")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(0.45 * k + 3, 0.16 * len(owner_names) + 1.5),
                           constrained_layout=True)
    image = ax.imshow(per_file, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.5, label="share of the document's topic weight")
    ax.set_yticks(np.arange(len(owner_names)), owner_names, fontsize=6)
    ax.set_xticks(np.arange(k), [f"{t}: {' '.join(words[t][:2])}" for t in range(k)],
                  rotation=60, ha="right", fontsize=7)
    ax.set_title("Share of each topic in each document")
    run.save(fig, "topics_by_document.png")

    run.summary.update(
        corpus=str(args.corpus), n_documents=X.shape[0], n_terms=X.shape[1], nnz=X.nnz,
        n_components=k, n_iter=model.n_iter_,
        relative_error=model.reconstruction_err_ / float(sp.linalg.norm(X)),
        topics=words, npmi=coherence, npmi_mean=float(np.mean(coherence)),
        npmi_random_frequent_words=baseline,
        dominant_topic={name: int(d) for name, d in zip(owner_names, dominant, strict=True)})
    run.finish()


if __name__ == "__main__":
    main()
