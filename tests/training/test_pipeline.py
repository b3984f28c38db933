"""The whole offline pipeline at the ``tiny`` preset on real CIFAR-10: pretrain -> BadEncoder -> DeDe
(clean and 1%-poisoned auxiliary sets) -> calibrate -> export (self-verifying) -> evaluate -> scan."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from service.manifest import load_manifest
from tests.conftest import EXAMPLES, needs_cifar
from training.cli import main

pytestmark = needs_cifar


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    assert main(["pretrain", "--preset", "tiny", "--out", str(root / "clean")]) == 0
    assert main(["attack", "badencoder", "--encoder", str(root / "clean"), "--preset", "tiny",
                 "--set", "lr=0.05", "--out", str(root / "bad")]) == 0
    assert main(["train", "--encoder", str(root / "bad"), "--preset", "tiny", "--set", "epochs=3",
                 "--out", str(root / "run")]) == 0
    assert main(["export", "--run", str(root / "run"), "--name", "tiny-bad", "--out", str(root / "models")]) == 0
    return root


def test_encoder_history_records_attack(pipeline: Path) -> None:
    spec = json.loads((pipeline / "bad" / "encoder.json").read_text())
    stages = [h["stage"] for h in spec["history"]]
    assert stages == ["pretrain-simclr", "attack-badencoder"]
    attack = spec["history"][1]
    for key in ("attack_success_rate", "clean_accuracy", "clean_accuracy_before", "asr_before", "outlier_auc",
                "outlier_auc_before"):
        assert 0.0 <= attack[key] <= 1.0
    assert attack["swd"] >= 0 and attack["swd_before"] >= 0


def test_training_loss_decreases_and_run_is_recorded(pipeline: Path) -> None:
    run = json.loads((pipeline / "run" / "run.json").read_text())
    assert run["loss_history"][-1] < run["loss_history"][0]
    assert run["test_mask_ratio"] == pytest.approx(0.99)
    assert run["aux"]["name"] == "cifar10-clean" and run["aux"]["poison_rate"] == 0
    config = json.loads((pipeline / "run" / "config.json").read_text())
    assert config["epochs"] == 3 and "code_version" in config


def test_bundle_manifest(pipeline: Path) -> None:
    m = load_manifest(pipeline / "models" / "tiny-bad")
    assert m.provenance.victim["attack"] == "badencoder"
    assert m.provenance.drop_worst == 0.0  # recorded: trained on every sample
    assert m.threshold.rule == "fpr@0.01"
    assert m.threshold.mask_ratio == m.detector.test_mask_ratio == pytest.approx(0.99)
    assert m.detector.kept_patches == 0
    assert set(m.threshold.alternatives) == {"paper-1.5x", "fpr@0.01"}


def test_recalibrate_switches_rule(pipeline: Path) -> None:
    assert main(["calibrate", "--run", str(pipeline / "run"), "--rule", "paper-1.5x"]) == 0
    calib = json.loads((pipeline / "run" / "calibration.json").read_text())
    assert calib["rule"] == "paper-1.5x" and calib["value"] == calib["alternatives"]["paper-1.5x"]
    assert main(["calibrate", "--run", str(pipeline / "run"), "--rule", "bogus"]) == 2
    paper_value = calib["value"]
    assert main(["calibrate", "--run", str(pipeline / "run"), "--rule", "paper-1.5x", "--score", "trimmed@8"]) == 0
    calib = json.loads((pipeline / "run" / "calibration.json").read_text())
    assert calib["value"] < paper_value  # the trimmed sum drops the 8 largest patch errors
    assert json.loads((pipeline / "run" / "run.json").read_text())["score"] == "trimmed@8"
    assert main(["calibrate", "--run", str(pipeline / "run"), "--rule", "fpr@0.01", "--score", "paper"]) == 0


def test_poisoned_aux_set(tmp_path: Path, pipeline: Path) -> None:
    assert main(["train", "--encoder", str(pipeline / "bad"), "--preset", "tiny", "--set", "poison_rate=0.05",
                 "--set", "epochs=1", "--out", str(tmp_path / "p")]) == 0
    run = json.loads((tmp_path / "p" / "run.json").read_text())
    assert run["aux"]["name"] == "cifar10-id-5%"
    assert run["aux"]["n_poisoned"] == round(0.05 * run["aux"]["n_train"])


def test_evaluate_writes_records_and_report(pipeline: Path, tmp_path: Path) -> None:
    bundle = str(pipeline / "models" / "tiny-bad")
    results, report = tmp_path / "results.json", tmp_path / "RESULTS.md"
    assert main(["evaluate", "--bundle", bundle, "--control-bundle", bundle, "--max-images", "300",
                 "--out", str(tmp_path), "--honesty-images", "100"]) == 0
    assert {r["preset"] for r in json.loads(results.read_text())} == {"tiny"}  # the bundle's own preset
    records = [r for r in json.loads(results.read_text()) if r["test"] != "honesty"]
    assert {r["attack"] for r in records} == {"badencoder", "none"}
    assert {r["test"] for r in records} == {"balanced", "unbalanced-1%"}
    bal = next(r for r in records if r["test"] == "balanced" and r["deployed"] and r["attack"] == "badencoder")
    assert bal["n_clean"] == bal["n_triggered"] == 300
    for key in ("auc", "tpr", "fpr", "attack_asr", "encoder_clean_acc", "hardware", "wall_s", "command",
                "n_fired", "auc_fired", "tpr_fired"):
        assert key in bal
    ctl = next(r for r in records if r["test"] == "balanced" and r["deployed"] and r["attack"] == "none")
    assert (ctl["n_fired"], ctl["fired_by"]) == (bal["n_fired"], "the backdoored encoder's kNN class")
    text = report.read_text()
    assert "| badencoder |" in text and "| none |" in text and "0.981" in text
    assert f"split by whether the backdoor fired (this encoder's kNN class): fired on {bal['n_fired']} of" in text
    assert (tmp_path / "figures" / "tiny-bad-roc.png").stat().st_size > 0
    honesty = [r for r in json.loads(results.read_text()) if r["test"] == "honesty"]
    cases = {r["case"] for r in honesty}
    assert "trigger" in cases and {"jpeg-50", "blur-1", "pasted-crop-10", "white-10-centre"} <= cases
    assert {r["score"] for r in honesty} == {"paper", "trimmed@8", "trimmed@12", "trimmed@20", "trimmed@32",
                                             "content", "consistency", "occlusion"}
    exponents = {r["content_exponent"] for r in honesty if r["score"] == "content"}
    assert len(exponents) == 1 and min(exponents) >= 0  # one exponent, fitted once on the calibration split
    assert all("content_exponent" not in r for r in honesty if r["score"] != "content")
    for r in honesty:
        assert 0 <= r["activation_rate"] <= 1 and 0 <= r["alert_rate"] <= 1
        assert r["benign"] == (r["case_kind"] != "trigger" and r["activation_rate"] <= r["clean_target_rate"] + 0.05)
    assert "Does an alert mean the backdoor fired?" in report.read_text()
    # a second run replaces its records instead of appending duplicates
    n_all = len(json.loads(results.read_text()))
    assert main(["evaluate", "--bundle", bundle, "--max-images", "300", "--out", str(tmp_path),
                 "--honesty-images", "0"]) == 0
    assert len(json.loads(results.read_text())) == n_all
    assert [r["attack"] for r in json.loads(results.read_text())][:2] == ["badencoder", "badencoder"]  # in place


def test_scan_folder(pipeline: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in EXAMPLES.glob("*.png"):
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "scan.csv"
    assert main(["scan", "--bundle", str(pipeline / "models" / "tiny-bad"), str(folder), "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 7
    broken = next(r for r in rows if r["file"] == "broken.png")
    assert broken["error"] and not broken["score"]
    assert all(float(r["score"]) > 0 for r in rows if r["file"] != "broken.png")


TINY_STUDY = ["aux_images=256", "holdout_images=64", "threshold_rule=fpr@0.05", "calib_images=64",
              "epochs=1", "width=32", "dec_width=32",
              "depth=1", "heads=2", "dec_heads=2", "batch_size=64"]


def test_study_cell_trains_backdoored_and_control(pipeline: Path, tmp_path: Path) -> None:
    import numpy as np

    from training.data import load_images
    from training.research.study import RATIOS, cell_records
    from training.triggers import make_trigger

    clean = load_images("cifar10", "test", 32).images[:64]
    trig = make_trigger("badencoder", 32).apply(clean)
    encoders = {"backdoored": str(pipeline / "bad"), "control": str(pipeline / "clean")}
    recs = cell_records("differential", "t", TINY_STUDY + ["emb_dropout=0.5", "drop_worst=0.1", "epochs=2"],
                        encoders, tmp_path, clean, trig)
    assert {r["encoder"] for r in recs} == {"backdoored", "control"}
    assert {r["test_mask_ratio"] for r in recs} == set(RATIOS)
    diff = [r for r in recs if r["score"] == "differential"]
    assert diff and all(r["test_mask_ratio"] < 0.99 for r in diff)
    assert all(0 <= r["auc"] <= 1 for r in recs)
    assert {(r["encoder"], r["encoder_dir"]) for r in recs} == set(encoders.items())  # which encoders, on record
    assert all(r["aux"]["n_train"] > 0 and "dense_filter" not in r["aux"] for r in recs)
    config = json.loads((tmp_path / "differential" / "t" / "control-clean" / "config.json").read_text())
    assert config["emb_dropout"] == 0.5 and config["drop_worst"] == 0.1 and config["preset"] == "study"
    run = json.loads((tmp_path / "differential" / "t" / "control-clean" / "run.json").read_text())
    assert run["drop_worst"] == 0.1  # what reproduce's cells read to name a robust detector
    # resumable: a second call reuses the finished runs instead of training again
    mtime = (tmp_path / "differential" / "t" / "control-clean" / "dede.safetensors").stat().st_mtime
    again = cell_records("differential", "t", TINY_STUDY + ["emb_dropout=0.5", "drop_worst=0.1", "epochs=2"],
                         encoders, tmp_path, clean, trig)
    assert (tmp_path / "differential" / "t" / "control-clean" / "dede.safetensors").stat().st_mtime == mtime
    assert np.allclose([r["auc"] for r in again], [r["auc"] for r in recs])
    # the same cell on another encoder pair trains its own detector (never reuses another encoder's run)
    import shutil

    shutil.copytree(pipeline / "bad", tmp_path / "bad2")
    other = cell_records("differential", "t", TINY_STUDY + ["emb_dropout=0.5", "drop_worst=0.1", "epochs=2"],
                         {"backdoored": str(tmp_path / "bad2"), "control": str(pipeline / "clean")}, tmp_path, clean,
                         trig)
    run2 = json.loads((tmp_path / "differential" / "t" / "backdoored-bad2" / "run.json").read_text())
    assert run2["encoder"] == str((tmp_path / "bad2").resolve())
    assert (tmp_path / "differential" / "t" / "control-clean" / "dede.safetensors").stat().st_mtime == mtime
    assert {r["encoder_dir"] for r in other} == {str(tmp_path / "bad2"), str(pipeline / "clean")}


def test_the_filter_axis_compares_the_defences_at_each_poison_rate() -> None:
    from training.research.study import AXES

    cells = dict(AXES["filter"])
    rates = ("0.0", "0.005", "0.01", "0.05", "0.1")
    assert list(cells) == [f"p{r}{s}" for s in ("", "-robust", "-filtered") for r in rates]
    assert cells["p0.1"] == ["poison_rate=0.1"]
    assert cells["p0.05-robust"] == ["poison_rate=0.05", "drop_worst=0.05"]
    assert cells["p0.1-filtered"] == ["poison_rate=0.1", "drop_dense=0.05"]


def test_score_and_robust_training_are_recorded_in_the_bundle(pipeline: Path, tmp_path: Path) -> None:
    from service.scoring import Scorer

    assert main(["train", "--encoder", str(pipeline / "bad"), "--preset", "tiny", "--set", "score=trimmed@8",
                 "--set", "drop_worst=0.1", "--set", "epochs=1", "--out", str(tmp_path / "run")]) == 0
    assert main(["export", "--run", str(tmp_path / "run"), "--name", "trim", "--out", str(tmp_path)]) == 0
    scorer = Scorer.from_bundle(tmp_path / "trim")
    assert scorer.manifest.detector.score == "trimmed@8"
    assert scorer.manifest.provenance.drop_worst == 0.1  # the bundle says it was trained robustly
    assert main(["train", "--encoder", str(pipeline / "bad"), "--preset", "tiny", "--set", "score=median",
                 "--out", str(tmp_path / "bad-run")]) == 2


def test_a_content_score_is_fitted_at_calibration_and_scored_alike_by_the_bundle(pipeline: Path, tmp_path: Path,
                                                                                  example_images: np.ndarray) -> None:
    from service.calibration import threshold_at
    from service.scores import image_content
    from service.scoring import Scorer
    from training.calibrate import calibrate_run

    run_dir = tmp_path / "run"
    assert main(["train", "--encoder", str(pipeline / "bad"), "--preset", "tiny", "--set", "score=content",
                 "--set", "epochs=1", "--out", str(run_dir)]) == 0
    run, calib = (json.loads((run_dir / f).read_text()) for f in ("run.json", "calibration.json"))
    fit = calib["content_fit"]
    assert run["score"] == calib["score"] == f"content@{fit['exponent']:g}"  # the fitted score, not 'content'
    assert fit["images"] > 0 and -1 <= fit["r"] <= 1
    with np.load(run_dir / "calibration_scores.npz") as z:  # tiny's fpr@0.01: the conformal threshold
        assert calib["value"] == pytest.approx(threshold_at(np.sort(z["holdout"].astype(np.float32)), 0.01))
    assert main(["export", "--run", str(run_dir), "--name", "content", "--out", str(tmp_path)]) == 0  # ORT == torch
    scorer = Scorer.from_bundle(tmp_path / "content")
    assert scorer.manifest.detector.score == scorer.manifest.threshold.score == run["score"]
    out = scorer.run(example_images)
    expected = out["patch_error"].sum(1) / np.maximum(image_content(out["x"]), 1) ** fit["exponent"]
    assert scorer.score(example_images).scores == pytest.approx(expected, rel=1e-5)
    # back to the paper score, then fitted again from the rebuilt auxiliary set: the same exponent and threshold
    assert calibrate_run(run_dir, "fpr@0.01", score="paper")["score"] == "paper"
    assert "content_fit" not in json.loads((run_dir / "calibration.json").read_text())
    again = calibrate_run(run_dir, "fpr@0.01", score="content")
    assert again["content_fit"] == fit and again["value"] == pytest.approx(calib["value"], rel=1e-5)
    assert calibrate_run(run_dir, "paper-1.5x")["content_fit"] == fit  # a rule switch keeps the fit


def test_a_rescoring_grid_copies_a_finished_run_and_calibrates_the_copy(pipeline: Path, tmp_path: Path) -> None:
    from training.research.reproduce import calibration_fields
    from training.research.rescore import main as rescore

    before = (pipeline / "run" / "run.json").read_text()
    assert rescore(["--from", str(pipeline / "run"), "--to", str(tmp_path / "run"), "--score", "content"]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["score"].startswith("content@") and run["train_wall_s"] == json.loads(before)["train_wall_s"]
    assert (pipeline / "run" / "run.json").read_text() == before  # the other grid's run is left as it was
    fit = json.loads((tmp_path / "run" / "calibration.json").read_text())["content_fit"]
    assert calibration_fields(tmp_path / "run")["content_fit_r"] == fit["r"]  # what the grid's records carry
    assert not (tmp_path / "run.partial").exists()
    assert rescore(["--from", str(pipeline / "bad"), "--to", str(tmp_path / "bad")]) == 0  # an encoder: copied only
    assert (tmp_path / "bad" / "encoder.json").read_bytes() == (pipeline / "bad" / "encoder.json").read_bytes()
    for args in (["--from", str(pipeline / "run"), "--to", str(tmp_path / "run")],  # exists
                 ["--from", str(tmp_path / "nothing"), "--to", str(tmp_path / "x")],  # not finished
                 ["--from", str(pipeline / "bad"), "--to", str(tmp_path / "y"), "--score", "content"]):  # no detector
        assert rescore(args) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "y.partial").exists()


def test_a_dense_filtered_training_set_is_recorded_and_rebuilt_alike_for_rescoring(pipeline: Path,
                                                                                  tmp_path: Path) -> None:
    from training.calibrate import calibrate_run

    run_dir = tmp_path / "run"
    assert main(["train", "--encoder", str(pipeline / "bad"), "--preset", "tiny", "--set", "poison_rate=0.02",
                 "--set", "trigger=badencoder", "--set", "drop_dense=0.1", "--set", "epochs=1",
                 "--out", str(run_dir)]) == 0
    run = json.loads((run_dir / "run.json").read_text())
    dense = run["aux"]["dense_filter"]
    assert run["drop_dense"] == 0.1 and dense["dropped"] == round(0.1 * run["aux"]["n_train"])
    assert 0 <= dense["poisoned_dropped"] <= run["aux"]["n_poisoned"]
    held = json.loads((run_dir / "calibration.json").read_text())["holdout"]["count"]
    assert held == run["aux"]["n_holdout"] - dense["dropped_holdout"]  # calibrated on the filtered held-out set
    assert calibrate_run(run_dir, "fpr@0.01", "trimmed@4")["holdout"]["count"] == held  # rebuilt, filtered alike
    assert main(["export", "--run", str(run_dir), "--name", "filtered", "--out", str(tmp_path)]) == 0
    filtered = load_manifest(tmp_path / "filtered").provenance
    assert filtered.drop_dense == 0.1 and filtered.aux_images == run["aux"]["n_train"] - dense["dropped"]
    assert main(["train", "--encoder", str(pipeline / "bad"), "--preset", "tiny", "--set", "drop_dense=1.5",
                 "--out", str(tmp_path / "bad-run")]) == 2  # a clear error before any work
    assert load_manifest(pipeline / "models" / "tiny-bad").provenance.drop_dense == 0.0  # recorded: no filter


def test_a_cropped_aux_set_trains_on_crops_and_calibrates_on_whole_images(pipeline: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    import numpy as np

    from training.auxset import build_aux_set
    from training.config import TrainConfig

    cfg = TrainConfig(aux_source=str(EXAMPLES), aux_split="", aux_crops=3)
    whole, cropped = build_aux_set(replace(cfg, aux_crops=0), 32), build_aux_set(cfg, 32)
    assert len(cropped.train) == 3 * len(whole.train) > 0
    assert np.array_equal(cropped.holdout, whole.holdout)  # the threshold's images stay whole and held out
    assert cropped.info["crops"] == 3 and cropped.info["n_train_images"] == len(whole.train)
    assert not any(np.array_equal(c, w) for c in cropped.train for w in whole.train)
    args = ["train", "--encoder", str(pipeline / "bad"), "--preset", "tiny", "--set", f"aux_source={EXAMPLES}",
            "--set", "aux_split=", "--set", "epochs=1", "--set", "threshold_rule=paper-1.5x"]  # 6 photos: 1 held out
    assert main(args + ["--set", "aux_crops=3", "--out", str(tmp_path / "run")]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["aux"]["name"] == "examples-ood-crops3" and run["aux"]["n_train"] == len(cropped.train)
    assert main(["export", "--run", str(tmp_path / "run"), "--name", "cropped", "--out", str(tmp_path)]) == 0
    provenance = load_manifest(tmp_path / "cropped").provenance
    assert provenance.aux_dataset == "examples-ood-crops3" and provenance.aux_images == len(cropped.train)
    assert main(args + ["--set", "aux_crops=-1", "--out", str(tmp_path / "bad-run")]) == 2  # before any work


def test_training_resumes_from_its_checkpoint(pipeline: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    args = ["train", "--encoder", str(pipeline / "bad"), "--preset", "tiny", "--out", str(tmp_path / "r")]
    assert main(args + ["--set", "epochs=1"]) == 0
    ckpt = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["step"] > 0 and "code_version" in ckpt and "optimizer" in ckpt
    first_wall = float(ckpt["wall_s"])
    assert main(args + ["--set", "epochs=2"]) == 0  # resumes: one more epoch
    assert "resuming from epoch 1" in capsys.readouterr().out
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert len(run["loss_history"]) == 2 and run["resumed_at_epoch"] == 1 and run["train_wall_partial"] is False
    assert run["train_wall_s"] > first_wall  # the time before the resume is counted too
    assert main(args + ["--set", "epochs=3", "--set", "width=64"]) == 2  # another model: refused


def test_torchrun_data_parallel_training_on_gloo(pipeline: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "training.cli", "train", "--encoder",
           str(pipeline / "bad"), "--preset", "tiny", "--set", "epochs=2", "--out", str(out)]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300,
                         env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and len(run["loss_history"]) == 2
    assert (out / "dede.safetensors").exists() and (out / "calibration.json").exists()


def test_drupe_attack_runs_and_records_itself(pipeline: Path, tmp_path: Path) -> None:
    assert main(["attack", "drupe", "--encoder", str(pipeline / "clean"), "--preset", "tiny", "--set", "epochs=2",
                 "--set", "asr_every=1", "--out", str(tmp_path / "drupe")]) == 0
    spec = json.loads((tmp_path / "drupe" / "encoder.json").read_text())
    rec = spec["history"][-1]
    assert rec["stage"] == "attack-drupe"
    assert 0 <= rec["attack_success_rate"] <= 1
    # the attack success before, after each epoch and at the end (the last point is the final measurement)
    assert [p["epoch"] for p in rec["asr_curve"]] == [0, 1, 2]
    assert rec["asr_curve"][0]["asr"] == rec["asr_before"] and rec["asr_curve"][-1]["asr"] == rec["attack_success_rate"]
    config = json.loads((tmp_path / "drupe" / "config.json").read_text())
    assert config["swd_weight"] > 0 and config["lr"] == 0.05


def test_baselines_cell_records_asset_and_decree(pipeline: Path) -> None:
    from training.research.baselines import baselines_cell

    recs = baselines_cell(pipeline, "bad", "clean", "tiny", max_images=64, command="test")
    verdicts = {r["encoder_role"]: r for r in recs if r.get("kind") == "verdict"}
    assert set(verdicts) == {"backdoored", "clean"}
    assert all(0 <= v["pl1"] <= 1 and v["trojaned"] == (v["found"] and v["pl1"] < 0.1) for v in verdicts.values())
    det = {(r["detector"], r["test"]): r for r in recs if "auc" in r}
    assert set(det) == {(d, t) for d in ("asset", "decree") for t in ("balanced", "unbalanced-1%")}
    assert det[("asset", "balanced")]["n_clean"] == det[("asset", "balanced")]["n_triggered"] == 64
    assert det[("asset", "unbalanced-1%")]["n_triggered"] == 1  # 1% of 64 rounds down to one
    assert all(0 <= r["auc"] <= 1 and r["source"] == "reproduce" and r["cell"] == "baselines-bad" for r in det.values())
    # the paper's text: each pool's ASSET trained at that pool's own poison rate
    assert det[("asset", "balanced")]["asset_train_poison_rate"] == 0.5
    assert det[("asset", "unbalanced-1%")]["asset_train_poison_rate"] == pytest.approx(1 / 65, abs=0.005)


def test_asset_trained_once_at_a_fixed_rate_scores_every_pool(pipeline: Path) -> None:
    """The official script's setting: one ASSET run, training set 1% triggered, both pools scored by it."""
    from training.research.baselines import baselines_cell

    recs = baselines_cell(pipeline, "bad", "clean", "tiny", max_images=64, command="test", asset_train=200,
                          asset_train_rate=0.01, asset_only=True, cell="baselines-bad-asset200")
    assert {(r["detector"], r["test"]) for r in recs} == {("asset", "balanced"), ("asset", "unbalanced-1%")}
    bal, unbal = sorted(recs, key=lambda r: r["test"])
    assert bal["aux"] == unbal["aux"] == "cifar10-train-200-at-1%" and bal["asset_train_poison_rate"] == 0.01
    # one run: the same training, flags and wall time behind both records; each pool its own threshold
    for key in ("asset_flagged", "asset_flagged_poisoned", "baseline_wall_s"):
        assert bal[key] == unbal[key]
    assert (bal["n_clean"], bal["n_triggered"], unbal["n_triggered"]) == (64, 64, 1)
    assert all(r["cell"] == "baselines-bad-asset200" and 0 <= r["auc"] <= 1 for r in recs)


def test_downstream_cell_filters_with_the_bundle_detector(pipeline: Path) -> None:
    from training.research.downstream import downstream_cell

    bundle = pipeline / "models" / "tiny-bad"
    recs = downstream_cell(bundle, "badencoder", pipeline / "bad", "tiny", ["max_train=400", "max_test=100",
                           "epochs=1"], "test", datasets=("cifar10",), ood_bundle=bundle)
    assert {(r["train_set"], r["detector"]) for r in recs} == {
        (t, d) for t in ("poisoned-1%", "clean") for d in ("none", "dede", "dede@paper-1.5x", "dede-ood", "decree")}
    by = {(r["train_set"], r["detector"]): r for r in recs}
    # the same bundle as the "out-of-distribution" detector: it must flag exactly what the first one flags
    for key in ("n_train_removed", "test_clean_flagged", "test_triggered_flagged"):
        assert by[("poisoned-1%", "dede-ood")][key] == by[("poisoned-1%", "dede")][key]
    assert by[("poisoned-1%", "dede-ood")]["detector_bundle"] == "tiny-bad" and "detector_bundle" not in by[
        ("poisoned-1%", "none")]
    none = next(r for r in recs if r["detector"] == "none" and r["train_set"] == "poisoned-1%")
    assert none["n_train_removed"] == 0 and none["n_poison_train"] == 4  # 1% of 400
    assert all(r["cell"] == "downstream-badencoder" and 0 <= r["ca"] <= 1 and 0 <= r["asr"] <= 1 for r in recs)
    # one detector alone (the robust one of the grid), poisoned set only: the same flags under its own name
    (alone,) = downstream_cell(bundle, "badencoder", pipeline / "bad", "tiny", ["max_train=400", "max_test=100",
                               "epochs=1"], "test", datasets=("cifar10",), only="dede-robust")
    assert alone["cell"] == "downstream-robust-badencoder" and alone["detector_bundle"] == "tiny-bad"
    assert (alone["detector"], alone["train_set"]) == ("dede-robust", "poisoned-1%")
    for key in ("n_train_removed", "test_clean_flagged", "test_triggered_flagged"):
        assert alone[key] == by[("poisoned-1%", "dede")][key]
    with pytest.raises(ValueError, match="single-filter cell"):
        downstream_cell(bundle, "none", pipeline / "bad", "tiny", [], "test", datasets=("cifar10",), only="x")
