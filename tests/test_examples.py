"""The examples run, as a user runs them, and find what they claim to find.

Each test runs ``python examples/NAME.py --quick --out TMP`` in a subprocess (the real
script, its real data) and checks its ``summary.json`` and pictures against what the
example is about: distinct, coherent topics; swimmer parts smaller than the images and error
falling with rank; non-degenerate audio templates; masked NMF beating the baselines on
held-out ratings; consensus clusters that match the known ALL/AML labels (Brunet et al.
2004); an out-of-core fit on a memory-limited Dask cluster staying under the limit.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, out: Path, *args: str, timeout: float = 240) -> tuple[dict[str, Any],
                                                                                  str]:
    """Run ``examples/NAME.py --quick --out OUT ARGS``; its summary and standard output."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--quick", "--out", str(out), *args],
        capture_output=True, text=True, timeout=timeout, cwd=out.parent,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    summary = json.loads((out / "summary.json").read_text())
    assert f"results in {out}" in proc.stdout
    for filename in summary["files"]:
        assert (out / filename).is_file(), filename
    return summary, proc.stdout


def assert_picture(path: Path) -> None:
    """A real PNG with something drawn on it."""
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = matplotlib.image.imread(path)
    assert min(image.shape[:2]) >= 100 and image.shape[0] * image.shape[1] >= 50_000, path
    assert np.std(image[..., :3]) > 0.05, f"{path} is (nearly) blank"


def pictures(out: Path, summary: dict[str, Any], expected: set[str]) -> None:
    pngs = {f for f in summary["files"] if f.endswith(".png")}
    assert pngs == expected
    for name in pngs:
        assert_picture(out / name)


@pytest.fixture
def examples_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Import an example script as a module (for its loaders)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def load(name: str) -> ModuleType:
        return importlib.import_module(name)

    yield load
    for name in ("_common", "topics", "recommend"):
        sys.modules.pop(name, None)


# ------------------------------------------------------------------------------- topics
def test_topics(tmp_path: Path) -> None:
    out = tmp_path / "topics"
    summary, stdout = run_example("topics", out)
    topics = summary["topics"]
    assert len(topics) == summary["n_components"] == 8
    assert all(len(words) == 10 and all(words) for words in topics)
    # distinct topics: few words shared among the 8 top-10 lists
    assert len({w for words in topics for w in words}) >= 0.8 * 80
    assert len({tuple(sorted(words)) for words in topics}) == 8
    # topics are more coherent (co-occur in paragraphs) than random sets of frequent words
    assert summary["npmi_mean"] > summary["npmi_random_frequent_words"] + 0.1
    assert summary["n_documents"] > 3000 and len(summary["dominant_topic"]) == 65
    assert "mean NPMI of the topics" in stdout
    pictures(out, summary, {"topic_words.png", "topics_by_document.png"})


def test_topics_out_of_core_gives_the_same_topics(tmp_path: Path) -> None:
    """--zarr: TF-IDF as a CSR matrix in Zarr, fitted on the embedded Dask cluster."""
    memory, _ = run_example("topics", tmp_path / "memory")
    zarr_run, stdout = run_example("topics", tmp_path / "zarr", "--zarr")
    assert (tmp_path / "zarr" / "tfidf.zarr").is_dir()
    assert "bignmf fit " in stdout and "--cluster slurm" in stdout
    assert zarr_run["topics"] == memory["topics"]
    assert zarr_run["relative_error"] == pytest.approx(memory["relative_error"], rel=1e-5)


def test_topic_corpus_from_a_folder(tmp_path: Path, examples_module: Any) -> None:
    topics = examples_module("topics")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("first para " * 30 + "\n\n" + "too short\n")
    (tmp_path / "one.txt").write_text(("line " * 50 + "\n") * 2)
    (tmp_path / "notes.md").write_text("not a text file")
    files = topics.read_corpus(tmp_path)
    assert [name for name, _ in files] == ["two", "one"]  # .txt files, sorted by path
    # blank-line blocks are paragraphs, and so are long lines; short ones are dropped
    assert len(topics.paragraphs(files[0][1], min_words=40)) == 1
    assert len(topics.paragraphs(files[1][1], min_words=40)) == 2


# ------------------------------------------------------------------------------- images
def test_image_parts(tmp_path: Path) -> None:
    out = tmp_path / "image_parts"
    summary, _ = run_example("image_parts", out)
    swimmer = summary["swimmer"]
    # parts are limbs: a fraction of an image's bright pixels, a few per image
    assert swimmer["bright_pixels_per_part"] < 0.5 * swimmer["bright_pixels_per_image"]
    assert 3 <= swimmer["parts_per_image"] <= 6
    images = summary["images"]
    errors, ratios = images["relative_error"], images["compression_ratio"]
    assert len(errors) == len(images["ranks"]) >= 3
    assert all(a > b for a, b in pairwise(errors))
    assert all(a > b for a, b in pairwise(ratios))
    assert errors[-1] < 0.5 * errors[0]
    pictures(out, summary, {"swimmer_images.png", "swimmer_parts.png", "image_parts.png",
                            "reconstructions.png", "error_by_rank.png"})


# -------------------------------------------------------------------------------- audio
def test_audio(tmp_path: Path) -> None:
    import soundfile

    out = tmp_path / "audio"
    summary, _ = run_example("audio", out)
    k = summary["n_components"]
    assert summary["beta_loss"] == "kullback-leibler"
    assert np.isfinite(summary["divergence"]) and summary["relative_frobenius_error"] < 0.8
    # non-degenerate: every template carries energy, and no two templates are the same
    assert len(summary["energy_share"]) == k and min(summary["energy_share"]) > 0.005
    assert summary["max_template_cosine"] < 0.95
    assert len(set(summary["notes"])) >= k // 2
    (c,) = summary["resynthesized"]
    wav, rate = soundfile.read(out / f"component_{c}.wav")
    assert rate == 22050 and abs(len(wav) / rate - summary["duration_s"]) < 0.01
    assert 0 < np.sqrt(np.mean(wav**2)) < 1
    pictures(out, summary, {"spectrogram.png", "templates_activations.png"})


# ---------------------------------------------------------------------- recommendation
def synthetic_ratings(folder: Path, m: int = 300, n: int = 200,
                      seed: int = 0) -> tuple[Path, np.ndarray]:
    """u.data and u.item (MovieLens 100k formats): ratings 1-5, 20% observed, of users in
    three groups that each like one of three groups of items (4.5 vs 2, plus noise) - taste
    that user and item means cannot capture, and a rank-4 non-negative model can. Returns
    the u.data path and which items each user likes."""
    rng = np.random.default_rng(seed)
    likes = rng.integers(0, 3, m)[:, None] == rng.integers(0, 3, n)[None, :]
    R = np.clip(np.rint(2 + 2.5 * likes + rng.normal(0, 0.5, (m, n))), 1, 5).astype(int)
    users, items = np.nonzero(rng.random((m, n)) < 0.2)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "u.data"
    path.write_text("".join(f"{u + 1}\t{i + 1}\t{R[u, i]}\t{881250949 + j}\n"
                            for j, (u, i) in enumerate(zip(users, items, strict=True))))
    (folder / "u.item").write_text("".join(f"{i + 1}|Movie {i + 1} (1999)|01-Jan-1999||\n"
                                           for i in range(n)))
    return path, likes


def test_recommend(tmp_path: Path) -> None:
    ratings, likes = synthetic_ratings(tmp_path / "ml")
    out = tmp_path / "recommend"
    summary, stdout = run_example("recommend", out, "--ratings", str(ratings), "--user", "7",
                                  "--min-ratings", "5")
    rmse = summary["rmse"]
    masked = rmse[f"bignmf masked NMF (k={summary['n_components']})"]
    assert masked < rmse["global mean"]
    assert masked < rmse["scikit-learn NMF, missing = 0"]
    assert masked < rmse["user + item means"]
    recommended = summary["recommendations"]
    assert len(recommended) == 10 and all(t.startswith("Movie ") for t in recommended)
    rated = {int(line.split("\t")[1]) for line in ratings.read_text().splitlines()
             if line.split("\t")[0] == "7"}
    items = [int(t.split()[1]) for t in recommended]
    assert not set(items) & rated
    assert all(likes[7 - 1, i - 1] for i in items)  # all from the group user 7 likes
    assert "held-out RMSE" in stdout
    pictures(out, summary, {"heldout_rmse.png"})


def test_ratings_formats(tmp_path: Path, examples_module: Any) -> None:
    recommend = examples_module("recommend")
    rows = [(1, 10, 4.0, 100), (1, 20, 3.5, 101), (2, 10, 5.0, 102)]
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t{r:g}\t{t}\n" for u, i, r, t in rows))
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    (tmp_path / "ratings.dat").write_text("".join(f"{u}::{i}::{r:g}::{t}\n"
                                                  for u, i, r, t in rows))
    expected = np.array([r[:3] for r in rows], dtype=float)
    for name in ("u.data", "ratings.csv", "ratings.dat"):
        np.testing.assert_array_equal(recommend.read_ratings(tmp_path / name), expected)
    (tmp_path / "movies.dat").write_text("10::Heat (1995)::Action\n20::Fargo (1996)::Crime\n")
    assert recommend.read_titles(tmp_path) == {10: "Heat (1995)", 20: "Fargo (1996)"}


# ----------------------------------------------------------------------------- genomics
def test_genomics(tmp_path: Path) -> None:
    out = tmp_path / "genomics"
    summary, stdout = run_example("genomics", out)
    ranks = summary["all_aml"]["ranks"]
    # Brunet et al. 2004: k=2 recovers ALL vs AML, k=3 splits ALL into B and T cells
    assert ranks["2"]["matched"] >= 35 and ranks["2"]["ari_vs_all_aml"] > 0.8
    assert ranks["3"]["ari_vs_subtypes"] > 0.8
    assert ranks["2"]["cophenetic"] > 0.95
    genes = summary["all_aml"]["metagene_genes"]
    assert any("LYZ" in g or "CST3" in g for g in genes["AML"])  # known myeloid markers
    programs = summary["programs"]
    tops = programs["top_genes"]
    assert len(tops) == programs["n_components"] and all(len(t) == 10 for t in tops)
    assert len({tuple(t) for t in tops}) == len(tops)
    assert sum(programs["cells_per_program"]) == programs["shape"][0]
    assert "37/38" in stdout or "36/38" in stdout or "35/38" in stdout
    pictures(out, summary, {"all_aml_consensus.png", "all_aml_metagenes.png",
                            "gene_programs.png", "program_usage.png"})


# -------------------------------------------------------------------------- out of core
def test_out_of_core(tmp_path: Path) -> None:
    import zarr

    out = tmp_path / "out_of_core"
    summary, stdout = run_example("out_of_core", out)
    m, n = summary["shape"]
    W = zarr.open_array(out / "W.zarr", mode="r")
    assert W.shape == (m, summary["n_components"])
    head = np.asarray(W[:100])
    assert np.all(head >= 0) and np.any(head > 0)
    assert np.load(out / "H.npy").shape == (summary["n_components"], n)
    # the workers stayed under their memory limit; the objective went down every pass
    peaks, limits = summary["worker_peak_memory"], summary["worker_memory_limits"]
    assert peaks and max(peaks) < min(limits)
    history = summary["loss_history"]
    assert len(history) == summary["n_iter"] + 1
    assert all(a >= b for a, b in pairwise(history))
    assert "iter    3/3" in stdout
    script = (out / "slurm-batch-job.sh").read_text()
    assert script.startswith("#!/usr/bin/env bash") and "#SBATCH" in script
    assert "fit " + str((out / "atlas.zarr").resolve()) in script
    assert "--cluster slurm" in stdout and "--scheduler tcp://" in stdout
    pictures(out, summary, {"gene_programs.png", "objective.png"})
