"""``dede ensemble``: detectors of one encoder, alone and with their standardised scores averaged."""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

import numpy as np
import pytest

from service.scoring import Scorer
from tests.conftest import CONTROL_BUNDLE, DEMO_BUNDLE, needs_cifar
from training.cli import main
from training.data import load_images
from training.evaluation.bundle_scores import score_many
from training.evaluation.downstream_bundle import bundle_attack
from training.metrics import auc
from training.research.ensemble import ensemble, subset_rows


def test_every_subset_of_every_size_is_scored() -> None:
    rng = np.random.default_rng(0)
    signal = np.r_[np.zeros(400), np.ones(400)]  # (N,) 0 clean, 1 triggered
    scores = signal + rng.normal(scale=1.5, size=(4, 800))  # (M, N) four members, independent noise
    clean, triggered = scores[:, :400], scores[:, 400:]
    rows = subset_rows(clean, triggered)
    assert [(r["k"], r["n_subsets"]) for r in rows] == [(k, comb(4, k)) for k in range(1, 5)]
    alone = [auc(c, t) for c, t in zip(clean, triggered, strict=True)]
    assert rows[0]["auc_mean"] == pytest.approx(np.mean(alone))
    assert (rows[0]["auc_min"], rows[0]["auc_max"]) == (min(alone), max(alone))
    assert rows[-1]["auc_min"] == rows[-1]["auc_max"] == auc(clean.mean(0), triggered.mean(0))
    # independent noise averages out: each larger ensemble separates better on average
    means = [r["auc_mean"] for r in rows]
    assert means == sorted(means) and means[-1] > means[0] + 0.05
    # identical members: an ensemble is its member
    same = subset_rows(np.stack([clean[0]] * 3), np.stack([triggered[0]] * 3))
    assert [r["auc_mean"] for r in same] == pytest.approx([alone[0]] * 3)


def test_an_ensemble_needs_two_members_of_one_encoder() -> None:
    with pytest.raises(ValueError, match="at least 2 backdoored bundles, got 1"):
        ensemble([DEMO_BUNDLE], [CONTROL_BUNDLE, CONTROL_BUNDLE])
    with pytest.raises(ValueError, match="the control bundles score 2 different encoders"):
        ensemble([DEMO_BUNDLE, DEMO_BUNDLE], [CONTROL_BUNDLE, DEMO_BUNDLE])
    with pytest.raises(ValueError, match="records no trigger"):  # a clean encoder's bundle as the backdoored one
        ensemble([CONTROL_BUNDLE, CONTROL_BUNDLE], [CONTROL_BUNDLE, CONTROL_BUNDLE])


@needs_cifar
def test_the_demo_detector_twice_is_the_demo_detector(tmp_path: Path) -> None:
    results, report = tmp_path / "ensemble.json", tmp_path / "ENSEMBLE.md"
    args = ["ensemble", "--label", "demo twice", "--bundle", str(DEMO_BUNDLE), "--bundle", str(DEMO_BUNDLE),
            "--control", str(CONTROL_BUNDLE), "--control", str(CONTROL_BUNDLE), "--max-images", "200",
            "--results", str(results), "--report", str(report)]
    assert main(args) == 0
    records = json.loads(results.read_text())
    assert [(r["detector"], r["k"]) for r in records] == [("backdoored", 1), ("backdoored", 2), ("control", 1),
                                                          ("control", 2)]
    by = {(r["detector"], r["k"]): r for r in records}
    members = records[0]["members"]
    # standardising by the held-out statistics keeps each member's order: its AUC is its raw scores' AUC
    scorer = Scorer.from_bundle(DEMO_BUNDLE)
    test = load_images("cifar10", "test", scorer.size).images
    clean = test[np.sort(np.random.default_rng(0).permutation(len(test))[:200])]
    raw = auc(score_many(scorer, clean), score_many(scorer, bundle_attack(DEMO_BUNDLE).trigger.apply(clean)))
    assert members["backdoored"][0]["auc"] == pytest.approx(raw)
    assert raw == pytest.approx(by[("backdoored", 1)]["auc_mean"]) and raw == pytest.approx(
        by[("backdoored", 2)]["auc_mean"])  # the same detector twice adds nothing
    assert records[0]["n_clean"] == records[0]["n_triggered"] == 200
    assert by[("backdoored", 1)]["auc_mean"] > by[("control", 1)]["auc_mean"]
    assert records[0]["attack"] == "badencoder" and records[0]["trigger"] == bundle_attack(DEMO_BUNDLE).trigger_name
    text = report.read_text()
    assert "## demo twice" in text and f"| 2 | 1 | {raw:.3f} |" in text
    assert main(args) == 0  # the same label again replaces its records
    assert len(json.loads(results.read_text())) == 4
