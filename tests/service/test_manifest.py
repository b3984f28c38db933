import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.errors import BundleError
from service.manifest import Manifest, load_manifest
from service.scoring import Scorer
from tests.conftest import DEMO_BUNDLE


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(DEMO_BUNDLE, dst)
    return dst


def edit(bundle: Path, fn) -> None:  # type: ignore[no-untyped-def]
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_demo_manifest_is_valid() -> None:
    m = load_manifest(DEMO_BUNDLE)
    assert isinstance(m, Manifest)
    assert m.format_version == 1
    assert m.threshold.rule in ("paper-1.5x", "fpr@0.01", "fpr@0.001")
    assert m.threshold.mask_ratio == m.detector.test_mask_ratio
    assert m.detector.num_patches == (m.encoder.input_size // m.detector.patch_size) ** 2


def test_wrong_hash_is_refused(bundle: Path) -> None:
    with (bundle / "detector.onnx").open("ab") as f:
        f.write(b"\x00")
    with pytest.raises(BundleError, match="sha256"):
        load_manifest(bundle)
    with pytest.raises(BundleError, match="sha256"):
        Scorer.from_bundle(bundle)


def test_missing_file_is_refused(bundle: Path) -> None:
    (bundle / "encoder.onnx").unlink()
    with pytest.raises(BundleError, match="missing encoder.onnx"):
        load_manifest(bundle)


def test_missing_manifest_and_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_manifest(tmp_path)


def test_malformed_json(bundle: Path) -> None:
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_manifest(bundle)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format_version=2), "schema"),
        (lambda d: d.update(surprise=1), "schema"),
        (lambda d: d["threshold"].update(value=-1), "schema"),
        (lambda d: d["threshold"].update(rule="median-of-test"), "schema"),
        (lambda d: d["threshold"].update(mask_ratio=0.5), "another mask ratio"),
        (lambda d: d["detector"].update(patch_size=5), "tile"),
        (lambda d: d["encoder"].update(file="../../etc/passwd"), "plain name"),
        (lambda d: d["detector"].update(score="content"), "schema"),  # a score to fit, not a fitted one
        (lambda d: d["threshold"].update(score="content@0.5"), "calibrated for the score 'content@0.5'"),
        (lambda d: d["threshold"].update(content_fit={"exponent": 0.5, "r": 2.0, "images": 10}), "schema"),
    ],
)
def test_schema_violations_are_refused(bundle: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    edit(bundle, change)
    with pytest.raises(BundleError, match=message):
        load_manifest(bundle)


def test_corrupted_onnx_with_matching_hash_is_refused(bundle: Path) -> None:
    from service.manifest import sha256_file

    (bundle / "detector.onnx").write_bytes(b"not an onnx model")
    edit(bundle, lambda d: d["detector"].update(sha256=sha256_file(bundle / "detector.onnx")))
    with pytest.raises(BundleError, match="not a valid ONNX model"):  # not even protobuf: refused before ORT
        Scorer.from_bundle(bundle)
    (bundle / "detector.onnx").write_bytes(b"")  # well-formed protobuf (empty), but no model
    edit(bundle, lambda d: d["detector"].update(sha256=sha256_file(bundle / "detector.onnx")))
    with pytest.raises(BundleError, match="ONNX Runtime"):
        Scorer.from_bundle(bundle)


def test_app_refuses_a_bad_bundle_at_start(bundle: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    (bundle / "encoder.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="sha256"), TestClient(create_app(Settings(bundle=bundle))):
        pass


def test_the_service_scores_with_the_content_score_its_manifest_names(bundle: Path) -> None:
    """A bundle whose threshold was calibrated for ``content@a`` is scored that way over HTTP, with no other change."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.scores import image_content
    from service.settings import Settings
    from tests.conftest import EXAMPLES

    plain = Scorer.from_bundle(bundle)
    held_out = {"count": 2000, "mean": 20.0, "std": 8.0, "quantiles": {"0.5": 19.0, "0.99": 40.0}}
    (bundle / "calibration.f32").unlink()  # a bundle without calibration scores: only the statistics are checked
    edit(bundle, lambda d: (d["detector"].update(score="content@0.5"), d.pop("calibration"),
                            d["threshold"].pop("incident"),
                            d["threshold"].update(rule="fpr@0.01", score="content@0.5", value=40.0, holdout=held_out,
                                                  alternatives={"fpr@0.01": 40.0},
                                                  content_fit={"exponent": 0.5, "r": 0.8, "images": 100})))
    image = sorted(EXAMPLES.glob("*.png"))[0]
    out = plain.run(plain_images := np.asarray(Image.open(image).convert("RGB"))[None])
    expected = out["patch_error"].sum() / np.sqrt(max(image_content(out["x"])[0], 1.0))
    assert Scorer.from_bundle(bundle).score(plain_images).scores[0] == pytest.approx(expected, rel=1e-5)
    with TestClient(create_app(Settings(bundle=bundle))) as c:
        body = c.post("/score", files={"file": (image.name, image.read_bytes(), "image/png")}).json()
        assert body["score"] == pytest.approx(expected, rel=1e-5) and body["threshold"] == 40.0
        assert body["backdoor"] == (expected > 40.0)
        assert c.get("/info").json()["score"] == "content@0.5"
