"""Audio: NMF of a magnitude spectrogram splits a recording into notes and sounds.

The short-time Fourier transform of a recording gives V (frames x frequencies, magnitudes).
NMF with the Kullback-Leibler divergence (Smaragdis & Brown 2003; Fevotte et al. 2009 for
Itakura-Saito, --beta-loss itakura-saito) writes V ~ W H: each row of H is a spectral
template (a note's harmonics, a bow noise), each column of W when that template sounds and
how loud. The example plots the spectrogram and its reconstruction, the templates with
their pitch, and their activations over time, and resynthesizes one component as a WAV file
(a soft mask, the component's share of W H, applied to the complex STFT).

Data: examples/data/brahms_hungarian_dance_5.ogg (46 s, public domain, Musopen / US Army
Strings); with --quick examples/data/solo_trumpet.ogg (5 s, "Jazz Trumpet Loops Pack in F"
by Mihai Sorohan, Freesound 77711, CC BY 3.0). Your own: --audio FILE (wav, flac, ogg).

Run:
    python examples/audio.py                    # about 10 s
    python examples/audio.py --quick            # a few seconds (CI)
    python examples/audio.py --audio song.flac -k 16 --resynthesize all

Out of core and on a cluster: a long recording's spectrogram has millions of frames; --zarr
writes V to Zarr (frames in row blocks) and fits it from disk on the embedded Dask cluster,
--scheduler tcp://HOST:8786 on your cluster. The script prints the same fit as
`bignmf fit OUT/spectrogram.zarr -k K --solver mu --beta-loss kullback-leibler -o ...`,
with `--cluster slurm` (Dask workers as SLURM jobs) or `bignmf submit ... --profile
slurm-batch` (one batch job).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.signal
from _common import DATA, Run, parser, pyplot

from bignmf import NMF

NOTES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


def note_name(freq: float) -> str:
    """The equal-tempered note nearest ``freq`` Hz (A4 = 440 Hz)."""
    if freq <= 0:
        return "-"
    midi = round(69 + 12 * np.log2(freq / 440.0))
    return f"{NOTES[midi % 12]}{midi // 12 - 1}"


def read_mono(path: Path) -> tuple[np.ndarray, int]:
    try:
        import soundfile
    except ImportError as err:
        raise SystemExit("reading audio needs soundfile: pip install \"bignmf[examples]\"") from err
    signal, rate = soundfile.read(path, dtype="float64", always_2d=True)
    return signal.mean(axis=1), int(rate)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--audio", type=Path, default=None,
                   help="a recording (default: the Brahms dance; the trumpet with --quick)")
    p.add_argument("-k", "--n-components", type=int, default=None,
                   help="number of templates (default 12; 6 with --quick)")
    p.add_argument("--beta-loss", default="kullback-leibler",
                   choices=["kullback-leibler", "itakura-saito"])
    p.add_argument("--n-fft", type=int, default=2048, help="STFT window (samples)")
    p.add_argument("--hop", type=int, default=512, help="STFT hop (samples)")
    p.add_argument("--resynthesize", default="strongest",
                   help="component to write as WAV: an index, 'strongest' or 'all'")
    args = p.parse_args()
    run = Run("audio", args)
    path = args.audio or DATA / ("solo_trumpet.ogg" if run.quick else
                                 "brahms_hungarian_dance_5.ogg")
    k = args.n_components or (6 if run.quick else 12)

    # --- recording -> magnitude spectrogram, frames x frequencies ------------------------
    signal, rate = read_mono(path)
    freqs, times, Z = scipy.signal.stft(signal, fs=rate, nperseg=args.n_fft,
                                        noverlap=args.n_fft - args.hop)
    V = np.abs(Z).T  # frames x frequencies
    if args.beta_loss == "itakura-saito":
        V = V + 1e-6 * V.max()  # IS needs V > 0 (silence is exactly 0)
    print(f"{path.name}: {len(signal) / rate:.1f} s at {rate} Hz -> spectrogram of "
          f"{V.shape[0]} frames x {V.shape[1]} frequencies")

    # --- NMF with a beta divergence (multiplicative updates) -----------------------------
    source = run.source(V, "spectrogram")
    model = NMF(n_components=k, solver="mu", beta_loss=args.beta_loss, init="nndsvda",
                max_iter=100 if run.quick else 300, tol=1e-4, random_state=args.seed)
    W = run.dense(model.fit_transform(source))  # activations: frames x k
    H = model.components_                       # templates: k x frequencies
    run.cli_hint(source, k, f" --solver mu --beta-loss {args.beta_loss}")
    peak = freqs[H.argmax(axis=1)]
    order = np.argsort(peak)  # components from low to high pitch
    W, H, peak = W[:, order], H[order], peak[order]
    energy = (W**2).sum(axis=0) * (H**2).sum(axis=1)
    share = energy / energy.sum()
    WH = W @ H
    rel_err = float(np.linalg.norm(V - WH) / np.linalg.norm(V))
    cosine = H @ H.T / np.outer(np.linalg.norm(H, axis=1), np.linalg.norm(H, axis=1))
    max_cos = float(np.max(cosine[np.triu_indices(k, 1)])) if k > 1 else 0.0
    print(f"NMF k={k}, {args.beta_loss}: {model.n_iter_} iterations, divergence "
          f"{model.reconstruction_err_:.4g}, relative Frobenius error {rel_err:.3f}")
    lines = [f"component {c:2d}: peak {peak[c]:7.1f} Hz ({note_name(peak[c]):>4s}), "
             f"{share[c]:5.1%} of the energy, active in "
             f"{np.mean(W[:, c] > 0.1 * W[:, c].max()):4.0%} of the frames" for c in range(k)]
    lines.append(f"largest cosine similarity between two templates: {max_cos:.2f}")
    print("\n".join(lines))
    run.write_text("components.txt", "\n".join(lines) + "\n")

    # --- pictures ------------------------------------------------------------------------
    plt = pyplot()
    top = np.searchsorted(freqs, min(5000.0, freqs[-1]))  # most of the music lies below
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True, constrained_layout=True)
    for ax, M, title in ((axes[0], V, "spectrogram |STFT|"),
                         (axes[1], WH, f"NMF reconstruction W H (k={k})")):
        ax.imshow(20 * np.log10(M[:, :top].T + 1e-6 * V.max()), origin="lower",
                  aspect="auto", cmap="magma", interpolation="nearest",
                  extent=(times[0], times[-1], freqs[0], freqs[top - 1]))
        ax.set_ylabel("Hz")
        ax.set_title(title)
    axes[1].set_xlabel("seconds")
    run.save(fig, "spectrogram.png", dpi=80)
    fig, (ax_t, ax_a) = plt.subplots(1, 2, figsize=(12, 0.45 * k + 2.5),
                                     gridspec_kw={"width_ratios": [1, 3]},
                                     constrained_layout=True)
    for c in range(k):
        ax_t.plot(freqs[:top], c + 0.9 * H[c, :top] / H[c, :top].max(), lw=0.8, color=f"C{c}")
        ax_a.plot(times, c + 0.9 * W[:, c] / max(W[:, c].max(), 1e-300), lw=0.6,
                  color=f"C{c}")
    labels = [f"{c}: {note_name(peak[c])}" for c in range(k)]
    for ax in (ax_t, ax_a):
        ax.set_yticks(np.arange(k) + 0.4, labels, fontsize=8)
        ax.set_ylim(-0.1, k)
    ax_t.set_xlabel("Hz")
    ax_t.set_title("templates (rows of H)")
    ax_a.set_xlabel("seconds")
    ax_a.set_title("activations (columns of W)")
    run.save(fig, "templates_activations.png")

    # --- resynthesis: a component's share of W H as a soft mask on the complex STFT ------
    import soundfile

    if args.resynthesize == "all":
        chosen = list(range(k))
    elif args.resynthesize == "strongest":
        chosen = [int(np.argmax(share))]
    else:
        chosen = [int(args.resynthesize)]
    for c in chosen:
        mask = np.outer(W[:, c], H[c]) / np.maximum(WH, 1e-12)
        _, part = scipy.signal.istft((mask * Z.T).T, fs=rate, nperseg=args.n_fft,
                                     noverlap=args.n_fft - args.hop)
        wav = run.out / f"component_{c}.wav"
        soundfile.write(wav, part[: len(signal)].astype(np.float32), rate)
        run.files.append(wav)
        print(f"wrote {wav} (component {c}, {note_name(peak[c])})")

    run.summary.update(
        audio=str(path), duration_s=len(signal) / rate, shape=list(V.shape), n_components=k,
        beta_loss=args.beta_loss, n_iter=model.n_iter_,
        divergence=float(model.reconstruction_err_), relative_frobenius_error=rel_err,
        peak_hz=peak, notes=[note_name(f) for f in peak], energy_share=share,
        max_template_cosine=max_cos, resynthesized=chosen)
    run.finish()


if __name__ == "__main__":
    main()
