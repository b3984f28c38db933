"""``dede decompose``: images scored against other images' embeddings, on the committed demo bundles."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CONTROL_BUNDLE, DEMO_BUNDLE, ROOT, needs_cifar
from tests.test_makefile import MAKEFILES
from training.cli import main
from training.research.decompose import CONDITIONS, decompose, displacement, partners, write_report


def test_partners_are_other_images_of_the_same_or_another_class() -> None:
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 0, 2, 1] * 5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        same, other = partners(labels, rng, same=True), partners(labels, rng, same=False)
        assert (labels[same] == labels).all() and (same != np.arange(len(labels))).all()
        assert (labels[other] != labels).all()
    with pytest.raises(ValueError, match="no other image of its own class"):
        partners(np.array([0, 0, 1]), rng, same=True)
    with pytest.raises(ValueError, match="no image of another class"):
        partners(np.array([3, 3]), rng, same=False)


def test_displacement_at_known_points() -> None:
    rng = np.random.default_rng(0)
    clean, target = rng.normal(size=(200, 16)), rng.normal(size=(50, 16)) + 3 * np.eye(16)[0]
    unmoved = displacement(clean, clean * 2.0, target)  # the same directions: nothing moved
    assert unmoved["kept"] == pytest.approx(1.0) and unmoved["pull"] == pytest.approx(0.0, abs=1e-12)
    assert unmoved["norm_ratio"] == pytest.approx(2.0)  # ... but twice as long, which only the norm ratio sees
    onto = displacement(clean, target[rng.integers(0, 50, 200)], target)  # replaced by target-class embeddings
    assert onto["pull"] == pytest.approx(1.0, abs=0.05) and abs(onto["kept"]) < 0.1
    unit = clean / np.linalg.norm(clean, axis=1, keepdims=True)
    little, more = (displacement(clean, unit + shift * np.eye(16)[0], target) for shift in (0.2, 0.6))
    assert 0 < little["pull"] < more["pull"] and 1 > little["kept"] > more["kept"]


@needs_cifar
def test_the_backdoor_not_the_trigger_pixels_separates_the_demo_detector() -> None:
    records, facts = decompose(DEMO_BUNDLE, CONTROL_BUNDLE, max_images=300)
    assert facts["n_images"] == 300 and facts["trigger"] == "badencoder" and facts["target_class"] == "truck"
    assert facts["n_fired"] > 200  # the demo BadEncoder fires on ~97% of the images
    auc = {(r["detector"], r["condition"]): r["auc"] for r in records}
    assert set(auc) == {(d, c) for d in ("backdoored", "control") for c in CONDITIONS}
    # the backdoored embedding alone separates; the clean encoder's embedding of the same triggered images hardly
    assert auc["backdoored", "embedding"] > 0.9 and auc["control", "embedding"] < 0.75
    # the trigger's pixels alone give both detectors much the same
    assert abs(auc["backdoored", "pixels"] - auc["control", "pixels"]) < 0.1
    assert facts["kept"]["backdoored"] < facts["kept"]["control"] - 0.3  # the backdoor moves the embedding ...
    assert facts["pull"]["backdoored"] > 1.0 and facts["pull"]["control"] < 0.5  # ... onto the target class
    # the backdoored triggered embedding no longer says the clean image's layout; the clean encoder's still does
    assert facts["layout_kept"]["backdoored"] < 0 < facts["layout_kept"]["control"] <= facts["pixel_r2"]["control"]
    assert facts["norm_ratio"]["backdoored"] > 1.5 > facts["norm_ratio"]["control"]
    # another image's embedding, even of the same class, is drawn as another image
    assert auc["backdoored", "swap-same"] > 0.75 and auc["control", "swap-same"] > 0.75


def test_report_tables_and_merging_by_label(tmp_path: Path) -> None:
    def recs(label: str, value: float) -> list[dict[str, object]]:
        pair = {"label": label, "pair_bundle": "b", "pair_control": "c", "attack": "drupe", "trigger": "t",
                "target_class": "truck", "encoder": "e", "aux": "a", "control_aux": "a", "n_images": 9,
                "n_fired": 5, "hardware": "h", "wall_s": 1.0, "command": "make decompose"}
        encoders = {k: {"backdoored": value, "control": 1 - value}
                    for k in ("pixel_r2", "class_collapse", "kept", "pull", "norm_ratio", "layout_kept")}
        return [{**pair, **encoders, "detector": d, "condition": c, "auc": value, "auc_fired": None,
                 "score_ratio": 1.0} for d in ("backdoored", "control") for c in CONDITIONS]

    path = tmp_path / "D.md"
    write_report(recs("pair one", 0.25) + recs("pair two", 0.75), path)
    text = path.read_text()
    assert "| pair one | 0.250 / 0.250 | 0.250 / 0.250 |" in text
    assert "| pair two | 0.750 / 0.750 |" in text and "| pair two | - / - |" in text  # fired: none recorded
    assert "| pair one |" + " 0.250 / 0.750 |" * 6 + "\n" in text  # the encoders: six columns


def test_cli_refuses_what_it_cannot_decompose(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = ["--results", str(tmp_path / "d.json"), "--report", str(tmp_path / "D.md")]
    assert main(["decompose", "--bundle", str(tmp_path / "missing"), "--control", str(CONTROL_BUNDLE), *out]) == 2
    assert "is not a bundle (no manifest.json)" in capsys.readouterr().err
    # a clean encoder's bundle names no attack to decompose
    assert main(["decompose", "--bundle", str(CONTROL_BUNDLE), "--control", str(CONTROL_BUNDLE), *out]) == 2
    assert "records no attack" in capsys.readouterr().err
    assert main(["decompose", "--bundle", str(DEMO_BUNDLE), "--control", str(CONTROL_BUNDLE),
                 "--max-images", "-3", *out]) == 2
    assert "max_images >= 0" in capsys.readouterr().err
    other = tmp_path / "other-size"
    shutil.copytree(CONTROL_BUNDLE, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["encoder"]["input_size"], manifest["detector"]["patch_size"] = 64, 8  # still 8 x 8 patches
    (other / "manifest.json").write_text(json.dumps(manifest))
    assert main(["decompose", "--bundle", str(DEMO_BUNDLE), "--control", str(other), *out]) == 2
    # a manifest edited to another input size no longer describes its models: the bundle check refuses it first
    assert "[*, 3, 64, 64]" in capsys.readouterr().err
    (other / "detector.onnx").write_bytes(b"not a model")  # a corrupted bundle: its hash no longer matches
    assert main(["decompose", "--bundle", str(DEMO_BUNDLE), "--control", str(other), *out]) == 2
    assert "detector.onnx" in capsys.readouterr().err
    assert main(["decompose", "--bundle", str(CONTROL_BUNDLE), "--control", str(CONTROL_BUNDLE), "--trigger",
                 "badencoder", "--target-class", "lorry", *out]) == 2
    err = capsys.readouterr().err  # the class names come from the dataset: without it, that it is missing
    assert "target class 'lorry' is not a cifar10 class" in err or "dataset 'cifar10' not found" in err
    assert not (tmp_path / "d.json").exists()  # nothing written by a refused run


@needs_cifar
def test_a_bundle_that_records_no_attack_is_decomposed_for_a_suspected_trigger_and_target(tmp_path: Path) -> None:
    out = ["--results", str(tmp_path / "d.json"), "--report", str(tmp_path / "D.md")]
    assert main(["decompose", "--bundle", str(CONTROL_BUNDLE), "--control", str(CONTROL_BUNDLE), "--trigger",
                 "badencoder", "--target-class", "truck", "--max-images", "60", "--knn-bank", "200",
                 "--label", "suspect", *out]) == 0
    records = json.loads((tmp_path / "d.json").read_text())
    assert {r["condition"] for r in records} == set(CONDITIONS) and len(records) == 2 * len(CONDITIONS)
    assert {(r["attack"], r["trigger"], r["target_class"], r["n_images"]) for r in records} == {
        (None, "badencoder", "truck", 60)}
    auc = {(r["detector"], r["condition"]): r["auc"] for r in records}
    for c in ("full", "pixels", "embedding"):  # the same clean detector in both roles: the same triggered scores
        assert auc["backdoored", c] == pytest.approx(auc["control", c])
    assert "attack none recorded (suspected trigger and target), trigger badencoder, target truck" in (
        tmp_path / "D.md").read_text()


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_decompose_pairs_each_detector_with_the_control_of_its_grid_and_aux(tmp_path: Path) -> None:
    for makefile in MAKEFILES:
        shutil.copy(ROOT / makefile, tmp_path / makefile)
    for name in (DEMO_BUNDLE.name, CONTROL_BUNDLE.name):  # committed: not rebuilt
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "manifest.json").write_text("{}")
    plan = subprocess.run(["make", "-n", "decompose"], cwd=tmp_path, capture_output=True, text=True, check=True,
                          timeout=30).stdout.replace("\\\n", " ")
    commands = [shlex.split(line) for line in plan.splitlines() if "dede decompose" in line]
    assert len(commands) >= 10
    labels = []
    for argv in commands:
        arg = {k: v for k, v in zip(argv, argv[1:], strict=False) if k.startswith("--")}
        labels.append(arg["--label"])
        assert arg["--command-line"] == "make decompose"
        bundle, control = Path(arg["--bundle"]), Path(arg["--control"])
        assert bundle.parent == control.parent  # the same grid
        if bundle.parent.name == "bundles":  # a grid's cell <attack>-<aux>: the control of the same aux
            aux = re.search(r"-((?:id|ood)(?:-[a-z0-9-]+)?)$", bundle.name)
            assert aux, bundle
            assert control.name.startswith("control-") and control.name.endswith(f"-{aux[1]}"), (bundle, control)
    assert len(set(labels)) == len(labels)  # a label's records replace each other's
