"""Thresholds from data available before deployment, at the SAME mask ratio the service scores with.

Rules:
- ``paper-1.5x``: 1.5 x the mean score of the auxiliary training images (the paper's tau);
- ``fpr@<q>``: the (1 - q) quantile of the scores of held-out clean images (target false-positive rate q).
Both are computed and recorded; ``rule`` picks the deployed one. Scores are kept in
``calibration_scores.npz`` so ``dede calibrate --rule ...`` can switch rules without rescoring.

The score ``content`` (``service.scores``) is resolved here: its exponent is fitted on the auxiliary training images'
paper scores, and the record names the fitted score (``content@<a>``) that the held-out threshold is computed with.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from service.calibration import CALIBRATION_FILE, images_needed, strictest_q, threshold_at, write_calibration
from service.manifest import MANIFEST, load_calibration, load_manifest, sha256_file
from service.scores import (
    CONTENT_FIT,
    check_score,
    compute_score,
    content_exponent,
    content_score,
    fit_content_exponent,
    image_content,
)
from service.scoring import Scorer
from training.auxset import build_aux_set, drop_dense_images
from training.config import TRAIN_PRESETS, EncoderOptions, TrainConfig, resolve_config
from training.data import load_images
from training.dede import DeDe
from training.encoders import EncoderSpec, embed, embed_batch_size, to_input
from training.runs import load_run, run_config


def parse_rule(rule: str) -> tuple[str, float]:
    if rule == "paper-1.5x":
        return "paper", 1.5
    if rule.startswith("fpr@"):
        try:
            q = float(rule[4:])
        except ValueError:
            q = -1.0
        if 0 < q < 1:
            return "fpr", q
    raise ValueError(f"unknown threshold rule {rule!r}; use 'paper-1.5x' or 'fpr@<q>' with 0 < q < 1")


def threshold_for(rule: str, aux_scores: np.ndarray, holdout_scores: np.ndarray) -> float:
    """``paper-1.5x``: 1.5 x the auxiliary mean. ``fpr@q``: the conformal threshold of the held-out scores
    (``service.calibration.threshold_at``: score > it exactly when the p-value is <= q); ValueError when the
    held-out split is too small for q."""
    kind, q = parse_rule(rule)
    if kind == "paper":
        return float(q * aux_scores.mean())
    return threshold_at(np.sort(np.asarray(holdout_scores, dtype=np.float32)), q)


def incident_rule(rule: str, n_holdout: int) -> str:
    """``auto``: fpr@1e-4, or the strictest q the held-out split allows (1 / n); else ``rule`` itself."""
    if rule != "auto":
        return rule
    q = max(INCIDENT_Q, strictest_q(n_holdout))
    text = f"{q:.3g}"
    if float(text) < q:  # rounded down below what n allows: one step up in the third significant digit
        text = f"{float(text) + 10 ** (math.floor(math.log10(q)) - 2):.3g}"
    return f"fpr@{text}"


INCIDENT_Q = 1e-4  # the incident threshold's default q, when the held-out split is large enough
# recorded beside the deployed rule, each where the held-out split allows it: evaluations report TPR at each
ALTERNATIVES = ("paper-1.5x", "fpr@0.01", "fpr@0.001", "fpr@0.0001")


def stats(scores: np.ndarray) -> dict[str, Any]:
    qs = [0.5, 0.9, 0.95, 0.99, 0.999]
    return {"count": int(len(scores)), "mean": float(scores.mean()), "std": float(scores.std()),
            "quantiles": {str(q): float(np.quantile(scores, q)) for q in qs}}


@torch.no_grad()
def patch_error_images(model: DeDe, victim: nn.Module, spec: EncoderSpec, images: np.ndarray, mask_ratio: float,
                       device: str = "cpu", seed: int = 0, batch_size: int | None = None,
                       null_embedding: bool = False) -> np.ndarray:
    """Per-patch squared errors of uint8 (N, H, W, 3) images with PyTorch -> (N, num_patches), ``batch_size`` images
    at a time (default: 512 at 32 px, as many pixels per batch at larger sizes; the mask stream depends on it).

    ``null_embedding`` replaces the victim embedding by zeros (the differential score's reference)."""
    model.eval()
    batch_size = batch_size or embed_batch_size(spec.input_size)
    gen = torch.Generator(device=device).manual_seed(seed)
    emb_device = "cpu" if spec.name == "onnx" else device
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="scoring", unit="batch", leave=False,
                  disable=len(images) <= 4 * batch_size):
        chunk = images[i : i + batch_size]
        e = embed(victim, chunk, spec, device=emb_device).to(device)
        if null_embedding:
            e = torch.zeros_like(e)
        x = to_input(torch.from_numpy(np.array(chunk)).to(device), spec)
        ids_keep = model.random_masking(len(chunk), mask_ratio, device, generator=gen)
        pred = model.forward_decoder(model.forward_encoder(x, e, ids_keep), ids_keep)
        out.append(model.patch_errors(x, pred, ids_keep).cpu().numpy())
    return np.concatenate(out)


def score_images(model: DeDe, victim: nn.Module, spec: EncoderSpec, images: np.ndarray, mask_ratio: float,
                 device: str = "cpu", seed: int = 0, score: str = "paper") -> np.ndarray:
    """Scores (``service.scores`` kind) of uint8 (N, H, W, 3) images with PyTorch, before export -> (N,)."""
    pe = patch_error_images(model, victim, spec, images, mask_ratio, device, seed)
    exponent = content_exponent(score)
    return compute_score(pe, score) if exponent is None else content_score(pe.sum(1), contents(images, spec), exponent)


def contents(images: np.ndarray, spec: EncoderSpec, batch_size: int = 1024) -> np.ndarray:
    """``image_content`` of uint8 (N, H, W, 3) images as the detector sees them (normalised), in batches -> (N,)."""
    parts = [image_content(to_input(torch.from_numpy(np.array(images[i : i + batch_size])), spec).numpy())
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0)


def calibration_record(rule: str, aux_scores: np.ndarray, holdout_scores: np.ndarray,
                       mask_ratio: float, score: str = "paper", incident: str = "auto") -> dict[str, Any]:
    """The threshold record: the alert ``rule``, the ``incident`` rule (``incident_rule``), alternatives, and the
    statistics of the scores they come from."""
    parse_rule(rule)
    alternatives = {r: threshold_for(r, aux_scores, holdout_scores) for r in ALTERNATIVES
                    if r == "paper-1.5x" or len(holdout_scores) >= images_needed(parse_rule(r)[1])}
    value = threshold_for(rule, aux_scores, holdout_scores)
    record: dict[str, Any] = {"rule": rule, "value": value, "mask_ratio": mask_ratio,
              "score": score, "alternatives": alternatives, "aux_train": stats(aux_scores),
              "holdout": stats(holdout_scores)}
    if incident != "none" and len(holdout_scores) >= 2:  # one held-out image allows no q below 1
        inc = incident_rule(incident, len(holdout_scores))
        if parse_rule(inc)[0] != "fpr":
            raise ValueError(f"the incident rule must be 'fpr@<q>' (or 'auto'), not {inc!r}")
        # an incident is at least an alert (a paper-1.5x alert threshold can lie above an fpr incident one)
        record["incident"] = {"rule": inc, "value": max(threshold_for(inc, aux_scores, holdout_scores), value)}
    return record


def calibrate(model: DeDe, victim: nn.Module, spec: EncoderSpec, aux_images: np.ndarray,
              holdout_images: np.ndarray, mask_ratio: float, rule: str, device: str = "cpu",
              seed: int = 0, out: str | Path | None = None, score: str = "paper",
              incident: str = "auto") -> dict[str, Any]:
    """The threshold record of ``score`` (``content``: fitted here, see the module doc; the record's ``score`` is the
    one to deploy). The held-out images get another mask stream (``seed + 1``) than the auxiliary ones."""
    fit = None
    if score == CONTENT_FIT:
        paper = score_images(model, victim, spec, aux_images, mask_ratio, device, seed)
        content = contents(aux_images, spec)
        exponent, r = fit_content_exponent(paper, content)
        score, fit = f"content@{exponent:g}", {"exponent": exponent, "r": r, "images": int(len(aux_images))}
        aux = content_score(paper, content, exponent)
    else:
        aux = score_images(model, victim, spec, aux_images, mask_ratio, device, seed, score=score)
    hold = score_images(model, victim, spec, holdout_images, mask_ratio, device, seed + 1, score=score)
    if out is not None:
        np.savez(Path(out) / "calibration_scores.npz", aux=aux, holdout=hold)
    record = calibration_record(rule, aux, hold, mask_ratio, score, incident)
    return record | ({"content_fit": fit} if fit else {})


def calibrate_run(run_dir: str | Path, rule: str, score: str | None = None, encoder: str | None = None,
                  options: EncoderOptions | None = None, incident: str = "auto") -> dict[str, Any]:
    """Switch a trained run's deployed rule (from its stored calibration scores) and, with ``score``, its
    score: the auxiliary and held-out images are rebuilt from the run's config and rescored."""
    run_dir = Path(run_dir)
    scores_file = run_dir / "calibration_scores.npz"
    if not scores_file.exists():
        raise FileNotFoundError(f"{scores_file} is missing: train the run first (dede train)")
    parse_rule(rule)
    run = json.loads((run_dir / "run.json").read_text())
    old = json.loads((run_dir / "calibration.json").read_text())
    if score is not None and score != run.get("score", "paper"):
        check_score(score, fit=True)
        cfg = run_config(run_dir)
        model, victim, spec, _, _ = load_run(run_dir, encoder, options)
        aux, _ = drop_dense_images(cfg, build_aux_set(cfg, spec.input_size), victim, spec, "cpu")
        record = calibrate(model, victim, spec, aux.train[: cfg.calib_images], aux.holdout, old["mask_ratio"], rule,
                           seed=cfg.seed, out=run_dir, score=score, incident=incident)
        run["score"] = record["score"]
        (run_dir / "run.json").write_text(json.dumps(run, indent=2))
    else:
        with np.load(scores_file, allow_pickle=False) as z:
            aux, hold = z["aux"], z["holdout"]
        record = calibration_record(rule, aux, hold, old["mask_ratio"], run.get("score", "paper"), incident)
        record |= {k: old[k] for k in ("content_fit",) if k in old}
    (run_dir / "calibration.json").write_text(json.dumps(record, indent=2))
    return record


def holdout_from_provenance(manifest: Any) -> np.ndarray:
    """The held-out split a bundle was calibrated on, rebuilt from its provenance (preset, auxiliary set, seed 0)
    and checked by the auxiliary set's fingerprint; ValueError when it cannot be rebuilt."""
    prov = manifest.provenance
    source = prov.aux_dataset.split("-")[0]
    cfg = resolve_config(TrainConfig, TRAIN_PRESETS, prov.preset,
                         overrides=[f"aux_source={source}", f"aux_images={prov.aux_images}",
                                    f"poison_rate={prov.poison_rate}"])
    aux = build_aux_set(cfg, manifest.encoder.input_size)
    if aux.info["fingerprint"] != prov.aux_fingerprint:
        raise ValueError(f"the auxiliary set rebuilt from the bundle's provenance ({prov.aux_dataset}, preset "
                         f"{prov.preset}) is not the one it was trained on (fingerprint differs): pass --holdout "
                         "with clean images the detector never trained on")
    return aux.holdout


def calibrate_bundle(bundle: str | Path, rule: str, incident: str = "auto",
                     holdout: str | None = None) -> dict[str, Any]:
    """Switch a bundle's alert and incident thresholds in place, without retraining: from its calibration scores
    (``calibration.f32``), or, with ``holdout`` (a dataset, a folder, or ``auto``: the split rebuilt from the
    bundle's provenance), from held-out clean images scored through the bundle itself, which then become its
    calibration scores. The manifest is rewritten; the models are untouched."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    if holdout is not None:
        if holdout == "auto":
            images = holdout_from_provenance(manifest)
        else:
            source, _, split = holdout.partition(":")
            images = load_images(source, split or None, manifest.encoder.input_size).images
        scorer = Scorer.from_bundle(bundle)
        chunks = range(0, len(images), 256)
        scores = np.concatenate([scorer.score(np.ascontiguousarray(images[i : i + 256])).scores
                                 for i in tqdm(chunks, desc="scoring the held-out images", unit="batch")])
        calibration = write_calibration(scores, bundle / CALIBRATION_FILE)
        info = {"file": CALIBRATION_FILE, "sha256": sha256_file(bundle / CALIBRATION_FILE), "count": len(scores)}
    else:
        stored = load_calibration(bundle, manifest)
        if stored is None or manifest.calibration is None:
            raise ValueError(f"{bundle} has no calibration scores: pass --holdout auto (or clean images)")
        calibration, info = stored, manifest.calibration.model_dump()
    t = manifest.threshold
    aux_mean = np.full(1, t.aux_train.mean)  # the paper rule needs only the auxiliary mean
    record = calibration_record(rule, aux_mean, calibration, t.mask_ratio, t.score or "paper", incident)
    record["aux_train"] = t.aux_train.model_dump()
    if t.content_fit is not None:
        record["content_fit"] = t.content_fit.model_dump()
    raw = manifest.model_dump(mode="json")
    raw["threshold"], raw["calibration"] = record, info
    (bundle / (MANIFEST + ".tmp")).write_text(json.dumps(raw, indent=2))
    (bundle / (MANIFEST + ".tmp")).replace(bundle / MANIFEST)
    load_manifest(bundle)
    return raw["threshold"] | {"calibration": info}
