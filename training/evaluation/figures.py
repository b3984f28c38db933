"""Figures of one reproduce cell, written as PNG files (matplotlib, Agg backend):

- ``detection_figure``: ROC curves (backdoored vs control detector) and the score histograms of clean vs
  triggered test images for each, threshold marked (the paper's Table 6, second row);
- ``reconstruction_grid``: for a few clean and triggered test images, {masked input, reconstruction, ground
  truth} side by side (the paper's Figure 5 / Table 6, first row), through the bundle's ONNX models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.scoring import Scorer


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, title: str, fontsize: int, path: Path) -> Path:  # type: ignore[no-untyped-def]
    """Title, lay out and write ``fig`` as a PNG at ``path`` (parents created), then free it."""
    fig.suptitle(title, fontsize=fontsize)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def detection_figure(scores: dict[str, dict[str, np.ndarray]], title: str, path: Path) -> Path:
    """scores: {'backdoored' | 'control': {'clean': (N,), 'triggered': (M,), 'threshold': (), optional 'fired'
    and 'unfired': (M,) bool}} -> one PNG (with them, the triggered histogram is split by where the backdoor
    fired; the target class's own images are in neither)."""
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, axes = plt.subplots(1, 1 + len(scores), figsize=(4.2 * (1 + len(scores)), 3.4))
    for name, sc in scores.items():
        labels = np.r_[np.zeros(len(sc["clean"])), np.ones(len(sc["triggered"]))]
        f, t, _ = roc_curve(labels, np.r_[sc["clean"], sc["triggered"]])
        axes[0].plot(f, t, label=name)
    axes[0].plot([0, 1], [0, 1], "k:", lw=0.8)
    axes[0].set(xlabel="FPR", ylabel="TPR", title="ROC")
    axes[0].legend(fontsize=8)
    for ax, (name, sc) in zip(axes[1:], scores.items(), strict=True):
        both = np.r_[sc["clean"], sc["triggered"]]
        bins = np.linspace(both.min(), np.quantile(both, 0.995), 60)
        ax.hist(sc["clean"], bins, alpha=0.6, density=True, label="clean")
        if "fired" in sc:  # split by where the (backdoored encoder's) backdoor fired
            for key, label in (("fired", "triggered, fired"), ("unfired", "triggered, not fired")):
                sel = sc[key].astype(bool)
                if sel.any():
                    ax.hist(sc["triggered"][sel], bins, alpha=0.5, density=True, label=label)
        else:
            ax.hist(sc["triggered"], bins, alpha=0.6, density=True, label="triggered")
        ax.axvline(float(sc["threshold"]), color="k", ls="--", lw=1, label="threshold")
        ax.set(title=f"{name} encoder", xlabel="DeDe score")
        ax.legend(fontsize=8)
    return _save(plt, fig, title, 10, path)


def masked_view(images: np.ndarray, keep: np.ndarray, patch: int) -> np.ndarray:
    """uint8 (B, H, W, 3) with every patch not in ``keep`` (B, K) set to gray: what h_e sees."""
    out = np.full_like(images, 128)
    n_side = images.shape[2] // patch
    for i, ids in enumerate(keep):
        for pid in ids:
            r, c = divmod(int(pid), n_side)
            out[i, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = \
                images[i, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch]
    return out


def reconstructions(scorer: Scorer, images: np.ndarray) -> np.ndarray:
    """The decoder's picture of uint8 (B, H, W, 3) images -> uint8 (B, H, W, 3) (de-normalised)."""
    recon = scorer.run(images)["reconstruction"].transpose(0, 2, 3, 1)  # (B, H, W, 3) normalised
    enc = scorer.manifest.encoder
    pixels = recon * np.asarray(enc.std) + np.asarray(enc.mean)
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)


def reconstruction_grid(scorer: Scorer, clean: np.ndarray, triggered: np.ndarray, title: str, path: Path) -> Path:
    """Rows = images; columns = masked / reconstruction / ground truth, for clean then triggered copies."""
    plt = _plt()
    patch = scorer.manifest.detector.patch_size
    columns = []
    for imgs in (clean, triggered):
        columns += [masked_view(imgs, scorer.keep_ids(imgs), patch), reconstructions(scorer, imgs), imgs]
    heads = ["clean: masked", "reconstruction", "ground truth", "triggered: masked", "reconstruction",
             "ground truth"]
    n = len(clean)
    fig, axes = plt.subplots(n, 6, figsize=(6 * 1.3, n * 1.3), squeeze=False)
    for j, col in enumerate(columns):
        for i in range(n):
            axes[i, j].imshow(col[i], interpolation="nearest")
            axes[i, j].axis("off")
        axes[0, j].set_title(heads[j], fontsize=7)
    return _save(plt, fig, title, 9, path)
