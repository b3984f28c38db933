"""How often flat or empty images alert, and what the degenerate rule does about it.

    python -m benchmarks.degenerate            # -> docs/degenerate.json

For each demo bundle: all-black, all-white, 64 random single colours, near-flat images (one colour plus noise of
std 1), fully transparent PNGs (as the service flattens them), then the same flat images with the BadEncoder
trigger stamped on (which must still be scored), and the clean CIFAR-10 test images. For each group: the share
whose raw score passes the alert threshold (what the service answered before the rule), the share the rule calls
degenerate, and the share the service flags now. Scored through the bundle (ONNX Runtime), no server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from service.pipeline import is_degenerate
from service.scoring import Scorer
from service.settings import Settings
from tests.conftest import CONTROL_BUNDLE, DEMO_BUNDLE, ROOT


def groups(size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from training.data import load_images
    from training.triggers import make_trigger

    colours = rng.integers(0, 256, (64, 3), dtype=np.uint8)
    flat = np.broadcast_to(colours[:, None, None, :], (64, size, size, 3)).copy()
    noisy = np.clip(flat + rng.normal(0, 1, flat.shape), 0, 255).astype(np.uint8)
    out = {"all black": np.zeros((1, size, size, 3), np.uint8), "all white": np.full((1, size, size, 3), 255, np.uint8),
           "single colour (64)": flat, "near-flat, noise std 1 (64)": noisy,
           "fully transparent PNG, as flattened (black)": np.zeros((1, size, size, 3), np.uint8),
           "single colour + trigger (64)": make_trigger("badencoder", size).apply(flat.copy())}
    with contextlib.suppress(FileNotFoundError, OSError):  # without the dataset: the flat groups only
        out["clean CIFAR-10 test (10000)"] = load_images("cifar10", "test", size).images
    return out


def measure(bundle: Path, max_std: float) -> dict[str, dict[str, float]]:
    scorer = Scorer.from_bundle(bundle)
    rows = {}
    for name, images in groups(scorer.size, np.random.default_rng(0)).items():
        scores = np.concatenate([scorer.score(np.ascontiguousarray(images[i : i + 512])).scores
                                 for i in range(0, len(images), 512)])
        flat = np.array([is_degenerate([("stored", img)], max_std) for img in images])
        raw_alert = scores > scorer.threshold
        rows[name] = {"images": len(images), "raw_alert_share": round(float(raw_alert.mean()), 4),
                      "degenerate_share": round(float(flat.mean()), 4),
                      "flagged_share_now": round(float((raw_alert & ~flat).mean()), 4),
                      "median_score_over_threshold": round(float(np.median(scores) / scorer.threshold), 3)}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "docs" / "degenerate.json"))
    a = p.parse_args()
    t0 = time.perf_counter()
    max_std = Settings(bundle=DEMO_BUNDLE).degenerate_std
    report = {"command": "python -m benchmarks.degenerate", "degenerate_std": max_std,
              "hardware": f"{platform.machine()}, {os.cpu_count()} cores",
              "bundles": {b.name: measure(b, max_std) for b in (DEMO_BUNDLE, CONTROL_BUNDLE)}}
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
