"""How much a score depends on which patches the test mask keeps, with 1 mask and with K averaged masks.

    python benchmarks/mask_variance.py --bundle models/<bundle whose test mask keeps patches>

For each of N real images, scores under D independent content-seeded masks (draw indices) give the spread
of a one-mask score; averages of K masks (disjoint groups of draws) give the spread of the K-mask score.
Reports the mean per-image coefficient of variation (std / mean) for each, and AUC clean vs triggered with
1 and K masks. Bundles at 32 px with test mask 0.99 keep no patch: their score has no mask variance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_service import real_images  # noqa: E402
from service.scoring import Scorer  # noqa: E402
from training.triggers import make_trigger  # noqa: E402


def draw_scores(scorer: Scorer, images: np.ndarray, draws: int) -> np.ndarray:
    """(D, N) scores of N images under D masks."""
    x = scorer.preprocess(images)
    x_dev, e_dev = scorer.embed_on_device(x)
    return scorer.draw_scores(images, x, x_dev, e_dev, draws)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", required=True)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--draws", type=int, default=32)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--out", default="docs/mask_variance.json")
    a = p.parse_args()
    scorer = Scorer.from_bundle(a.bundle)
    if not scorer.manifest.detector.kept_patches:
        raise SystemExit(f"{a.bundle} keeps no patch at test time: its score has no mask variance")
    clean, _ = real_images(scorer.size, a.images)
    trig = make_trigger("badencoder", scorer.size).apply(clean)
    sc, st = draw_scores(scorer, clean, a.draws), draw_scores(scorer, trig, a.draws)
    groups = a.draws // a.k
    avg_c = sc[: groups * a.k].reshape(groups, a.k, -1).mean(1)
    avg_t = st[: groups * a.k].reshape(groups, a.k, -1).mean(1)
    labels = np.r_[np.zeros(a.images), np.ones(a.images)]

    def cv(s: np.ndarray) -> float:
        return float(np.mean(s.std(0) / s.mean(0)))

    def aucs(c: np.ndarray, t: np.ndarray) -> list[float]:
        return [float(roc_auc_score(labels, np.r_[ci, ti])) for ci, ti in zip(c, t, strict=True)]

    res = {"bundle": a.bundle, "kept_patches": scorer.manifest.detector.kept_patches, "images": a.images,
           "draws": a.draws, "k": a.k, "cv_one_mask": cv(sc), f"cv_{a.k}_masks": cv(avg_c),
           "auc_one_mask_mean": float(np.mean(aucs(sc, st))), "auc_one_mask_std": float(np.std(aucs(sc, st))),
           f"auc_{a.k}_masks_mean": float(np.mean(aucs(avg_c, avg_t))),
           f"auc_{a.k}_masks_std": float(np.std(aucs(avg_c, avg_t))),
           "command": "python benchmarks/mask_variance.py " + " ".join(sys.argv[1:])}
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
