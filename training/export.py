"""``dede export``: write a trained run as a bundle ``models/<name>/`` and verify it.

encoder.onnx: normalised image (B, 3, H, W) -> embedding (B, E).
detector.onnx: (image, embedding, keep (B, K) int64) -> (score (B,), reconstruction (B, 3, H, W),
patch_error (B, N)). Both have a dynamic batch axis. The export checks itself: onnx.checker, then ONNX
Runtime vs PyTorch on real held-out images (scores within ``SCORE_RTOL`` relative tolerance).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from service.calibration import CALIBRATION_FILE, write_calibration
from service.manifest import MANIFEST, CalibrationInfo, Manifest, load_manifest, sha256_file
from service.scores import compute_score
from service.scoring import Scorer
from training.calibrate import calibration_record
from training.config import EncoderOptions
from training.data import load_images
from training.dede import DeDe, DetectorGraph, kept_count
from training.encoders import EncoderSpec, embed_batch_size
from training.runs import load_run

OPSET = 17
SCORE_RTOL = 1e-3  # ORT vs PyTorch, relative to the threshold; the embedding path adds float noise


def export_encoder(victim: nn.Module, spec: EncoderSpec, path: Path) -> None:
    if spec.name == "onnx":  # the graph it ran in training: NCHW float in, the embedding out (encoders.adapted_onnx)
        path.write_bytes(victim.model_bytes)  # type: ignore[arg-type]
        return
    dummy = torch.zeros(2, 3, spec.input_size, spec.input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(victim.eval(), (dummy,), str(path), input_names=["image"], output_names=["embedding"],
                          dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
                          opset_version=OPSET, dynamo=False)


def export_detector(model: DeDe, keep: int, path: Path) -> None:
    cfg = model.cfg
    image = torch.zeros(2, 3, cfg.img_size, cfg.img_size)
    embedding = torch.zeros(2, cfg.victim_dim)
    ids = torch.arange(keep, dtype=torch.long).unsqueeze(0).repeat(2, 1)  # (2, K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(DetectorGraph(model.eval()), (image, embedding, ids), str(path),
                          input_names=["image", "embedding", "keep"],
                          output_names=["score", "reconstruction", "patch_error"],
                          dynamic_axes={n: {0: "batch"} for n in
                                        ("image", "embedding", "keep", "score", "reconstruction", "patch_error")},
                          opset_version=OPSET, dynamo=False)


def build_manifest(name: str, version: str, spec: EncoderSpec, model: DeDe, run: dict[str, Any],
                   calib: dict[str, Any], bundle: Path, calibration: CalibrationInfo | None = None) -> Manifest:
    cfg = model.cfg
    victim = next((h for h in reversed(spec.history) if h.get("stage", "").startswith("attack")), None)
    victim_info: dict[str, Any] = {"attack": victim.get("attack"), "target_class": victim.get("target_class"),
                                   "trigger": victim.get("trigger"),
                                   "attack_success_rate": victim.get("attack_success_rate")} if victim else {
        "attack": "none"}
    if victim and victim.get("trigger_params"):  # a learned or chosen trigger (BadCLIP patch, patch size)
        victim_info["trigger_params"] = victim["trigger_params"]
    keys = ("stage", "preset", "epochs", "wall_s", "device", "knn_accuracy", "clean_accuracy", "attack_success_rate")
    victim_info["history"] = [{k: h[k] for k in keys if k in h} for h in spec.history]
    return Manifest(
        name=name, version=version,
        encoder={"sha256": sha256_file(bundle / "encoder.onnx"), "input_size": spec.input_size,
                 "mean": spec.mean, "std": spec.std, "embed_dim": spec.embed_dim,
                 "architecture": spec.name + (f"(width={spec.kwargs['width']})" if "width" in spec.kwargs else ""),
                 "normalization": spec.normalization},
        detector={"sha256": sha256_file(bundle / "detector.onnx"), "patch_size": cfg.patch_size,
                  "num_patches": cfg.num_patches, "train_mask_ratio": run["train_mask_ratio"],
                  "test_mask_ratio": run["test_mask_ratio"],
                  "kept_patches": kept_count(cfg.num_patches, run["test_mask_ratio"]),
                  "width": cfg.width, "depth": cfg.depth, "dec_width": cfg.dec_width,
                  "dec_depth": cfg.dec_depth, "score": run.get("score", "paper")},
        threshold=calib,
        calibration=calibration,
        provenance={"aux_dataset": run["aux"]["name"], "aux_fingerprint": run["aux"]["fingerprint"],
                    "aux_images": run["aux"]["n_train"] - run["aux"].get("dense_filter", {}).get("dropped", 0),
                    "poison_rate": run["aux"]["poison_rate"],
                    "epochs": run["epochs"], "final_loss": run["final_loss"], "preset": run["preset"],
                    "code_version": run["code_version"], "created": run["created"],
                    "train_wall_s": run["train_wall_s"], "device": run["device"],
                    "drop_worst": run.get("drop_worst"), "drop_dense": run.get("drop_dense"),
                    "victim": victim_info},
    )


def conformal_calibration(run_dir: Path, calib: dict[str, Any], bundle: Path) -> tuple[dict[str, Any],
                                                                                    CalibrationInfo | None]:
    """The run's held-out scores as the bundle's calibration file (``service.calibration``), and its threshold
    record recomputed from the stored scores, so that every ``fpr@q`` threshold is the conformal one of exactly the
    scores shipped (runs calibrated before conformal thresholds get them here). No stored scores: as it was."""
    scores_file = run_dir / "calibration_scores.npz"
    if not scores_file.exists():
        return calib, None
    with np.load(scores_file, allow_pickle=False) as z:
        aux, hold = z["aux"], z["holdout"]
    incident = (calib.get("incident") or {}).get("rule", "auto")
    record = calibration_record(calib["rule"], aux, hold, calib["mask_ratio"], calib.get("score") or "paper", incident)
    record |= {k: calib[k] for k in ("content_fit",) if calib.get(k)}
    write_calibration(hold, bundle / CALIBRATION_FILE)
    return record, CalibrationInfo(file=CALIBRATION_FILE, sha256=sha256_file(bundle / CALIBRATION_FILE),
                                   count=len(hold))


@torch.no_grad()
def verify_bundle(bundle: Path, model: DeDe, victim: nn.Module, spec: EncoderSpec, images: np.ndarray,
                  threshold: float) -> float:
    """ORT vs PyTorch paper scores on real images, with the same kept patches; returns the worst
    |difference| / threshold and raises when it exceeds ``SCORE_RTOL``."""
    for f in ("encoder.onnx", "detector.onnx"):
        onnx.checker.check_model(str(bundle / f))
    scorer = Scorer.from_bundle(bundle)
    ort_scores = scorer.score(images).scores
    x = torch.from_numpy(scorer.preprocess(images))
    keep = torch.from_numpy(scorer.keep_ids(images))
    step = embed_batch_size(spec.input_size)
    patch_error = np.concatenate([DetectorGraph(model)(x[i : i + step], victim(x[i : i + step]), keep[i : i + step])[2]
                                  .numpy() for i in range(0, len(x), step)])
    torch_scores = compute_score(patch_error, scorer.manifest.detector.score, x.numpy())
    err = float(np.max(np.abs(ort_scores - torch_scores)) / threshold)
    if err > SCORE_RTOL:
        raise RuntimeError(f"ONNX Runtime and PyTorch disagree: max |diff| / threshold = {err:.2e} "
                           f"> {SCORE_RTOL:.0e}")
    return err


def export_bundle(run_dir: str | Path, out_root: str | Path, name: str, version: str = "1", encoder: str | None = None,
                  options: EncoderOptions | None = None) -> Path:
    """Write the run as the bundle ``out_root/name`` (encoder: the run's own, or ``encoder`` with ``options``)."""
    model, victim, spec, run, calib = load_run(run_dir, encoder, options)
    out = Path(out_root) / name
    with tempfile.TemporaryDirectory(dir=Path(out_root).resolve().parent if Path(out_root).exists() else None) as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        print(f"exporting the encoder ({spec.name}, {spec.input_size} px) and the detector to ONNX")
        export_encoder(victim, spec, stage / "encoder.onnx")
        export_detector(model, kept_count(model.cfg.num_patches, run["test_mask_ratio"]), stage / "detector.onnx")
        calib, calibration = conformal_calibration(Path(run_dir), calib, stage)
        manifest = build_manifest(name, version, spec, model, run, calib, stage, calibration)
        (stage / MANIFEST).write_text(manifest.model_dump_json(indent=2))
        aux = run["aux"]
        data = load_images(aux["source"], aux["split"] or None, spec.input_size, labelled=bool(aux["split"]))
        count = min(256, 4 * embed_batch_size(spec.input_size))  # 256 images at 32 px, 64 at 224 px
        images = np.array(data.images[np.sort(np.random.default_rng(0).permutation(len(data))[:count])])
        print(f"verifying ONNX Runtime against PyTorch on {len(images)} auxiliary images")
        err = verify_bundle(stage, model, victim, spec, images, calib["value"])
        print(f"verified: ORT vs PyTorch max |score diff| / threshold = {err:.2e} on {len(images)} real images")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(stage), out)
    load_manifest(out)
    return out
