"""The honesty evaluation: does an alert mean "the backdoor fired", or only "conspicuous pixels"?

For the backdoored bundle and its clean-encoder control, on clean test images and on copies carrying
(a) the real trigger and (b) each benign perturbation of ``training.evaluation.perturbations``:
- the backdoor activation rate (kNN target-class rate of non-target images, on the bundle's encoder);
- for every candidate score: AUC against the clean images and the alert rate at a threshold set to 1%
  FPR on a disjoint calibration split of clean test images (for the paper score, also the deployed
  threshold from the bundle).
Candidate scores: ``paper`` and ``trimmed@k`` from the per-patch error map (``service.scores``), ``content`` (the
content-adjusted score, its exponent fitted on the calibration split as ``dede train --set score=content`` fits it on
the auxiliary images), and
``consistency`` = 1 - cos(e, encoder(reconstruction)) (does the decoder's picture embed like the input?),
and ``occlusion`` = the largest 1 - cos(e, encoder(x with one square grayed out)) over a 3 x 3 grid of
squares (a fired backdoor snaps back to the true class when its trigger is covered; an embedding that
describes the image moves little). ``occlusion`` uses the encoder only, not the decoder.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.scores import compute_score, content_score, fit_content_exponent, image_content
from service.scoring import Scorer
from training.data import load_images
from training.evaluation.bundle_scores import error_spread
from training.evaluation.perturbations import apply_case, benign_cases
from training.metrics import detection_metrics
from training.pretrain.knn import BundleProbe
from training.triggers import make_trigger

PATCH_SCORES = ("paper", "trimmed@8", "trimmed@12", "trimmed@20", "trimmed@32")  # from the per-patch error map
CANDIDATES = (*PATCH_SCORES, "content", "consistency", "occlusion")
MEASURED = (*PATCH_SCORES, "consistency", "occlusion", "spread", "image_content")  # per image, by candidate_scores
CALIB_FPR = 0.01


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of (B, E) arrays -> (B,) float32."""
    return ((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)).astype(np.float32)


def occlusion_boxes(size: int) -> list[tuple[int, int, int]]:
    """(row, col, side): a 3 x 3 grid of squares of side 3/8 of the image that together cover it."""
    side = round(size * 12 / 32)
    starts = [0, (size - side) // 2, size - side]
    return [(r, c, side) for r in starts for c in starts]


def occlude(x: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
    """Normalised (B, 3, H, W) input with one square set to 0 (the dataset mean colour)."""
    r, c, side = box
    out = x.copy()
    out[:, :, r : r + side, c : c + side] = 0.0
    return out


def candidate_scores(scorer: Scorer, images: np.ndarray, batch_size: int = 500) -> dict[str, np.ndarray]:
    """Every candidate score but ``content`` (``with_content`` adds it), the error spread and the images' content
    (``service.scores.image_content``) of uint8 images -> {name: (N,)}."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in MEASURED}
    enc_in = scorer.encoder.get_inputs()[0].name
    for i in range(0, len(images), batch_size):
        out = scorer.run(images[i : i + batch_size])
        pe = out["patch_error"]
        for k in PATCH_SCORES:
            parts[k].append(compute_score(pe, k))
        parts["spread"].append(error_spread(pe))
        parts["image_content"].append(image_content(out["x"]))
        e = out["embedding"]
        (e_rec,) = scorer.encoder.run(None, {enc_in: out["reconstruction"]})
        parts["consistency"].append(1 - cosine(e, e_rec))
        shifts = [1 - cosine(e, scorer.encoder.run(None, {enc_in: occlude(out["x"], box)})[0])
                  for box in occlusion_boxes(scorer.size)]
        parts["occlusion"].append(np.max(shifts, axis=0))
    return {k: np.concatenate(v) for k, v in parts.items()}


def with_content(scores: dict[str, np.ndarray], exponent: float) -> dict[str, np.ndarray]:
    """``candidate_scores`` with the ``content`` score at ``exponent`` added."""
    return scores | {"content": content_score(scores["paper"], scores["image_content"], exponent)}


def honesty_records(bundle: str, attack: str, dataset: str, trigger: str, target_class: str,
                    n_eval: int = 2000, n_calib: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    scorer = Scorer.from_bundle(bundle)
    m = scorer.manifest
    test = load_images(dataset, "test", scorer.size)
    order = np.random.default_rng(seed).permutation(len(test))
    calib_idx, eval_idx = order[:n_calib], order[n_calib : n_calib + n_eval]
    calib = candidate_scores(scorer, test.images[calib_idx])
    exponent = fit_content_exponent(calib["paper"], calib["image_content"])[0]
    calib = with_content(calib, exponent)
    thresholds = {k: float(np.quantile(calib[k], 1 - CALIB_FPR)) for k in CANDIDATES}
    images, labels = test.images[eval_idx], test.labels[eval_idx]
    probe, target = BundleProbe(scorer, dataset), test.classes.index(target_class)
    clean = with_content(candidate_scores(scorer, images), exponent)
    clean_target = probe.target_rate(images, labels, target)
    cases = [("trigger", "trigger", make_trigger(trigger, scorer.size).apply(images))]
    cases += [(c.name, c.kind, apply_case(c, images, seed)) for c in benign_cases(scorer.size)]
    records = []
    for name, kind, perturbed in cases:
        activation = probe.target_rate(perturbed, labels, target)
        scores = with_content(candidate_scores(scorer, perturbed), exponent)
        for score in CANDIDATES:
            rules = [("fpr@0.01-calib", thresholds[score])]
            if score == m.detector.score:
                rules.append((m.threshold.rule + "-deployed", m.threshold.value))
            for rule, value in rules:
                met = detection_metrics(clean[score], scores[score], value)
                records.append({
                    "attack": attack, "detector": "dede", "aux": m.provenance.aux_dataset, "test": "honesty",
                    "case": name, "case_kind": kind, "score": score, "threshold_rule": rule,
                    "threshold": value, "auc": met["auc"], "alert_rate": met["tpr"],
                    "clean_alert_rate": met["fpr"], "activation_rate": activation,
                    "clean_target_rate": clean_target,
                    "benign": kind != "trigger" and activation <= clean_target + 0.05,
                    "spread": float(np.median(scores["spread"])), "n_clean": len(images),
                    "n_triggered": len(images), "bundle": m.name, "encoder": m.encoder.architecture,
                    **({"content_exponent": exponent} if score == "content" else {}),
                })
    return records
