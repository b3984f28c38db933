"""How often the alert-rate and drift rules of docker/prometheus/alerts.yml would page on clean traffic.

    python -m benchmarks.alert_simulation            # -> docs/alert_simulation.json (docs/OPERATIONS.md cites it)

Each simulated day draws a fresh calibration set of N held-out images (so the bundle's real FPR is Beta-distributed
around q, and its p-value deciles Dirichlet-distributed around a tenth each), then 1,500 minutes of clean traffic at
a fixed rate. The rate rule is evaluated every minute on 10-minute and 1-hour windows (z over a threshold and at
least ``X_MIN`` flags); the drift rule every minute on the 1-hour decile counts (chi-square over a critical value,
with at least ``N_MIN`` images, for a number of minutes). ``plain`` is the one-sided binomial z as the issue wrote
it; ``phi`` divides by the beta-binomial variance inflation the rules use. The result: the share of days with at
least one page, per N, rate, variant and threshold.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

Q, X_MIN, N_MIN = 0.001, 10, 1000
Z_THRESHOLDS = (4, 5, 6)
CHI_THRESHOLDS = ((27.88, 10), (33.72, 15))  # (critical value, minutes it must hold)
ROOT = Path(__file__).resolve().parent.parent


def page_share(rate: int, n_cal: int, trials: int, rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Share of simulated days with a page, per variant ("plain", "phi") and rule threshold."""
    k = np.floor(np.arange(1, 11) / 10 * (n_cal + 1) + 1e-9).astype(int)
    alpha = np.diff(np.concatenate([[0], k]))
    k_q = int(np.floor(Q * (n_cal + 1) + 1e-9))
    per_min = int(rate * 60)
    pages: dict[tuple[str, str], int] = {}
    idx = 60 + np.arange(1440) + 1
    for _ in range(trials):
        fpr, deciles = rng.beta(k_q, n_cal + 1 - k_q), rng.dirichlet(alpha)
        flags = np.concatenate([[0], np.cumsum(rng.binomial(per_min, fpr, size=1500))])
        counts = np.vstack([np.zeros(10), np.cumsum(rng.multinomial(per_min, deciles, size=1500), 0)])
        for mode in ("plain", "phi"):
            z_max = np.full(1440, -np.inf)
            for window in (10, 60):
                x, n = flags[idx] - flags[idx - window], per_min * window
                phi = (n + n_cal + 1) / (n_cal + 2) if mode == "phi" else 1
                z = (x - n * Q) / np.sqrt(n * Q * (1 - Q) * phi)
                z_max = np.maximum(z_max, np.where(x >= X_MIN, z, -np.inf))
            for zt in Z_THRESHOLDS:
                key = (mode, f"z>{zt}")
                pages[key] = pages.get(key, 0) + int((z_max > zt).any())
            observed, n = counts[idx] - counts[idx - 60], per_min * 60
            phi = (n + n_cal + 1) / (n_cal + 2) if mode == "phi" else 1
            chi = ((observed - n / 10) ** 2 / (n / 10)).sum(1) / phi
            for critical, minutes in CHI_THRESHOLDS:
                held = np.convolve(((chi > critical) & (n >= N_MIN)).astype(int), np.ones(minutes + 1, int), "valid")
                key = (mode, f"chi>{critical}/{minutes}m")
                pages[key] = pages.get(key, 0) + int((held == minutes + 1).any())
    out: dict[str, dict[str, float]] = {"plain": {}, "phi": {}}
    for (mode, rule), v in pages.items():
        out[mode][rule] = round(v / trials, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=1000, help="simulated days per (N, rate)")
    p.add_argument("--out", default=str(ROOT / "docs" / "alert_simulation.json"))
    a = p.parse_args()
    rng, t0 = np.random.default_rng(3), time.perf_counter()
    rows = [{"n_calibration": n_cal, "images_per_s": rate, **page_share(rate, n_cal, a.trials, rng)}
            for n_cal in (1000, 2000, 10000, 100000) for rate in (1, 10, 100)]
    report = {"command": "python -m benchmarks.alert_simulation", "q": Q, "x_min": X_MIN, "n_min": N_MIN,
              "trials": a.trials, "wall_s": round(time.perf_counter() - t0, 1), "rows": rows}
    Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
