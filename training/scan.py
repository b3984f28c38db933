"""``dede scan``: score every image of a folder or zip offline with a bundle; CSV out.

Unreadable files are reported in the CSV (``error`` column) instead of stopping the scan."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from service.errors import BadImage
from service.imaging import decode_image
from service.scoring import Scorer
from training.data import _Reader


def scan(bundle: str, source: str, output: str = "-", batch_size: int = 256) -> dict[str, int]:
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{source} does not exist")
    scorer = Scorer.from_bundle(bundle)
    scorer.warm_up()  # a bundle whose models do not run is a BundleError here, before any CSV line
    reader = _Reader(path)
    names = reader.names()
    out = sys.stdout if output == "-" else open(output, "w", newline="")  # noqa: SIM115
    writer = csv.writer(out)
    writer.writerow(["file", "score", "threshold", "backdoor", "error"])
    counts = {"scanned": 0, "alerts": 0, "errors": 0}
    try:
        for i in range(0, len(names), batch_size):
            arrays, ok = [], []
            for name in names[i : i + batch_size]:
                try:
                    arrays.append(decode_image(reader.read(name), scorer.size))
                    ok.append(name)
                except BadImage as exc:
                    writer.writerow([name, "", scorer.threshold, "", exc.message])
                    counts["errors"] += 1
            if not arrays:
                continue
            result = scorer.score(np.stack(arrays))
            for name, s, f in zip(ok, result.scores, result.flags, strict=True):
                writer.writerow([name, f"{s:.4f}", scorer.threshold, int(f), ""])
            counts["scanned"] += len(ok)
            counts["alerts"] += int(result.flags.sum())
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"scanned {counts['scanned']} images: {counts['alerts']} alerts, {counts['errors']} unreadable",
          file=sys.stderr)
    return counts
