"""Calibrated output: conformal p-values from the bundle's held-out scores, the alert and incident operating
points, degenerate inputs, and switching thresholds in a bundle without retraining."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.calibration import p_values, threshold_at
from service.errors import BundleError
from service.manifest import MANIFEST, load_manifest
from service.scoring import Scorer
from tests.conftest import CONTROL_BUNDLE, DEMO_BUNDLE, EXAMPLES
from tests.service.conftest import demo_client


def png(arr: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("bundle", [DEMO_BUNDLE, CONTROL_BUNDLE])
def test_the_demo_bundles_carry_calibration_scores_and_conformal_thresholds(bundle: Path) -> None:
    m, scorer = load_manifest(bundle), Scorer.from_bundle(bundle)
    assert m.calibration is not None and scorer.calibration is not None
    assert len(scorer.calibration) == m.calibration.count
    assert m.threshold.rule == "fpr@0.001" and m.threshold.incident is not None
    assert m.threshold.value == pytest.approx(threshold_at(scorer.calibration, 0.001))
    assert m.threshold.incident.value >= m.threshold.value
    assert (bundle / m.calibration.file).stat().st_size == 4 * m.calibration.count  # float32: a small file


def test_every_answer_carries_a_p_value_that_decides_the_alert() -> None:
    with demo_client() as c:
        answers = {p.stem: c.post("/score", content=p.read_bytes()).json() for p in sorted(EXAMPLES.glob("*.png"))}
        info = c.get("/info").json()
    q = float(info["threshold_rule"].removeprefix("fpr@"))
    n = info["calibration_images"]
    for name, r in answers.items():
        assert 1 / (n + 1) <= r["p_value"] <= 1, name
        assert r["backdoor"] == (r["p_value"] <= q) == (r["score"] > r["threshold"]), name
    assert answers["triggered-cat"]["backdoor"] and answers["triggered-cat"]["incident"]
    assert all(not answers[k]["backdoor"] for k in answers if k.startswith("clean"))
    assert answers["clean-airplane"]["p_value"] > 0.5


def test_p_values_are_uniform_on_the_calibration_distribution() -> None:
    rng = np.random.default_rng(0)
    cal = np.sort(rng.lognormal(size=2000).astype(np.float32))
    p = p_values(rng.lognormal(size=20000), cal)
    counts = np.histogram(p, bins=10, range=(0, 1))[0] / len(p)
    assert np.abs(counts - 0.1).max() < 0.025  # one calibration set of 2000: its own sampling error, ~1/sqrt(n)


def test_metrics_count_incidents_p_values_and_the_calibrated_fprs() -> None:
    trig = (EXAMPLES / "triggered-cat.png").read_bytes()
    with demo_client() as c:
        c.post("/score", content=trig)
        text = c.get("/metrics").text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    model = 'model="demo-cifar10-badencoder"'
    assert float(lines[f"dede_incidents_total{{{model}}}"]) == 1
    assert float(lines[f"dede_p_value_count{{{model}}}"]) == 1
    assert float(lines[f'dede_p_value_bucket{{le="0.001",{model}}}']) == 1
    assert float(lines[f'dede_calibrated_fpr{{level="alert",{model}}}']) == 0.001
    assert float(lines[f"dede_calibration_images{{{model}}}"]) == 2000


@pytest.mark.parametrize("image", [np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8),
                                   np.full((32, 32, 3), (200, 30, 90), np.uint8)])
def test_flat_images_are_degenerate_not_alerts(image: np.ndarray) -> None:
    with demo_client() as c:
        r = c.post("/score", content=png(image)).json()
        transparent = c.post("/score", content=png(np.zeros((32, 32, 4), np.uint8), "RGBA")).json()
        text = c.get("/metrics").text
    assert r["reason"] == "degenerate" and r["backdoor"] is False and r["incident"] is False
    assert transparent["reason"] == "degenerate" and transparent["backdoor"] is False
    assert 'dede_degenerate_images_total{model="demo-cifar10-badencoder"} 2.0' in text
    assert 'dede_backdoor_alerts_total{model="demo-cifar10-badencoder"} 0.0' in text


def test_a_trigger_on_a_flat_image_is_still_scored() -> None:
    from training.triggers import make_trigger

    stamped = make_trigger("badencoder", 32).apply(np.full((1, 32, 32, 3), 90, np.uint8))[0]
    with demo_client() as c:
        r = c.post("/score", content=png(stamped)).json()
    assert r.get("reason") is None and r["p_value"] is not None


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    out = tmp_path / "b"
    shutil.copytree(DEMO_BUNDLE, out)
    return out


def test_calibrate_switches_the_operating_points_without_retraining(bundle: Path) -> None:
    from training.calibrate import calibrate_bundle

    models = {f: (bundle / f).read_bytes() for f in ("encoder.onnx", "detector.onnx", "calibration.f32")}
    record = calibrate_bundle(bundle, "fpr@0.01", "fpr@0.001")
    m, scorer = load_manifest(bundle), Scorer.from_bundle(bundle)
    assert m.threshold.rule == "fpr@0.01" and m.threshold.incident and m.threshold.incident.rule == "fpr@0.001"
    assert record["value"] == pytest.approx(threshold_at(scorer.calibration, 0.01))  # type: ignore[arg-type]
    assert all((bundle / f).read_bytes() == b for f, b in models.items())  # only the manifest changed
    with pytest.raises(ValueError, match="needs at least 10000 held-out"):
        calibrate_bundle(bundle, "fpr@0.0001")


def test_the_cli_refuses_an_unreachable_fpr_with_the_count_needed(bundle: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from training.cli import main

    assert main(["calibrate", "--bundle", str(bundle), "--rule", "fpr@0.0001"]) == 2
    err = capsys.readouterr().err
    assert "needs at least 10000 held-out calibration images" in err and "has 2000" in err


def test_edited_calibration_scores_or_a_threshold_they_do_not_imply_are_refused(bundle: Path) -> None:
    from service.manifest import sha256_file

    raw = json.loads((bundle / MANIFEST).read_text())
    raw["threshold"]["value"] = raw["threshold"]["alternatives"]["fpr@0.01"]  # the fpr@0.01 value, rule kept
    (bundle / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="is not the fpr@0.001 threshold"):
        Scorer.from_bundle(bundle)
    shutil.copy(DEMO_BUNDLE / MANIFEST, bundle / MANIFEST)
    scores = np.fromfile(bundle / "calibration.f32", dtype="<f4")
    (scores * 10).astype("<f4").tofile(bundle / "calibration.f32")  # every image's p-value 10x smaller
    with pytest.raises(BundleError, match="does not match its sha256"):
        Scorer.from_bundle(bundle)
    raw = json.loads((bundle / MANIFEST).read_text())
    raw["calibration"]["sha256"] = sha256_file(bundle / "calibration.f32")  # re-hashed: the thresholds catch it
    (bundle / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="is not the fpr@0.001 threshold"):
        Scorer.from_bundle(bundle)


def test_guard_takes_a_p_value_cut_off() -> None:
    from service.client import DedeClient
    from service.guard import Guard

    images = [(EXAMPLES / f"{n}.png").read_bytes() for n in ("clean-cat", "triggered-ship", "triggered-cat")]
    with demo_client() as app:
        dede = DedeClient("http://testserver", http=app)  # type: ignore[arg-type]
        default = Guard(dede, lambda xs: [0] * len(xs), on_alert="flag")(images)
        loose = Guard(dede, lambda xs: [0] * len(xs), on_alert="flag", p_cutoff=0.05)(images)
        strict = Guard(dede, lambda xs: [0] * len(xs), on_alert="flag", p_cutoff=1e-4)(images)
    assert default.flags == [False, False, True]
    assert loose.flags == [False, True, True]  # triggered-ship's p-value is about 0.013
    assert strict.flags == [False, False, False]  # below the smallest reachable p-value, 1/2001
    with pytest.raises(ValueError):
        Guard(dede, lambda xs: xs, p_cutoff=1.5)
