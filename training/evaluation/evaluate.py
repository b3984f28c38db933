"""``dede evaluate``: detection of a bundle on clean vs triggered test images, with the clean-encoder
control, through ONNX Runtime (the product's own scoring path).

Test sets (the paper's): balanced = every clean test image + its triggered copy; unbalanced = every clean
test image + triggered copies of 1% of them. Thresholds: the bundle's deployed rule and the other rule
recorded in its calibration. The attack's own success is measured first, by kNN on the bundle encoder's
embeddings of clean train images (an attack that did not implant a backdoor cannot test a detector).
Records go to ``docs/results.json`` (merged by key); ``docs/RESULTS.md`` and ``docs/research/VARIANTS.md`` are
regenerated from it.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.manifest import load_manifest
from service.scoring import Scorer
from training.data import load_images
from training.evaluation.bundle_scores import score_many
from training.evaluation.honesty import honesty_records
from training.metrics import auc, detection_metrics, tpr_at_fpr
from training.pretrain.knn import BundleProbe
from training.reporting.records import command_line, merge_into
from training.reporting.results import evaluated_figures, write_figures, write_report
from training.triggers import make_trigger


def hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{os.cpu_count()}-core CPU ({cpu}), {gpu}"


def encoder_utility(scorer: Scorer, dataset: str, images: np.ndarray, labels: np.ndarray,
                    triggered: np.ndarray, target: int | None,
                    knn_bank: int = 10000) -> tuple[dict[str, float], np.ndarray | None]:
    """kNN clean accuracy of the bundle's encoder on ``images`` (uint8 test images with ``labels``) and,
    with a target, the attack success rate of their ``triggered`` copies (non-target images only), plus
    the per-image mask of where the backdoor fired: (N,) bool, True where a non-target image's triggered
    copy is classified as the target (None without a target)."""
    probe = BundleProbe(scorer, dataset, n_bank=knn_bank)
    pred = probe.predict(images)
    out = {"clean_accuracy": float(np.mean(pred == labels))}
    if target is None:
        return out, None
    keep = labels != target
    fired = probe.fired(triggered, labels, target)
    out["attack_success_rate"] = float(np.mean(fired[keep]))
    out["clean_target_rate"] = float(np.mean(pred[keep] == target))
    return out, fired


def fired_metrics(clean: np.ndarray, triggered: np.ndarray, fired: np.ndarray, labels: np.ndarray, target: int,
                  threshold: float) -> dict[str, float | int | None]:
    """The balanced test restricted to the images whose backdoor fired, and to those where it did not: AUC of
    their clean scores vs their triggered copies' (the same images on both sides, as in the balanced set, so a
    subset of easy or hard images cannot shift it), and TPR at ``threshold``. Non-target images only: the
    target class's own images are in neither. ``clean``, ``triggered`` (N,) scores of image i and its
    triggered copy, ``fired`` (N,) bool, ``labels`` (N,). None for an empty subset."""
    keep = labels != target
    out: dict[str, float | int | None] = {}
    for name, sel in (("fired", keep & fired), ("unfired", keep & ~fired)):
        out[f"n_{name}"] = int(sel.sum())
        out[f"auc_{name}"] = auc(clean[sel], triggered[sel]) if sel.any() else None
        out[f"tpr_{name}"] = float(np.mean(triggered[sel] > threshold)) if sel.any() else None
    return out


def evaluate_bundle(bundle: str | Path, dataset: str, attack: str, trigger: str, target_class: str | None,
                    max_images: int = 0, seed: int = 0, trigger_params: dict[str, Any] | None = None,
                    knn_bank: int = 10000,
                    fired: np.ndarray | None = None) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Records for one bundle (the attack name labels it; 'none' for a clean-encoder control), and the raw
    scores: ``clean`` (N,), ``triggered`` (N,), ``threshold``, ``one_pct`` (indices of the 1% test set), and
    with a target class ``fired`` / ``unfired`` (N,) bool: the non-target images whose triggered copy did /
    did not land in the target class.

    ``fired``: the mask to split the triggered images by, in place of this bundle's own: a control passes
    the backdoored encoder's, so that both detectors are compared on the same images (on the clean
    encoder the backdoor never fires)."""
    scorer = Scorer.from_bundle(bundle, threads=0)
    m = scorer.manifest
    test = load_images(dataset, "test", scorer.size)
    images, labels = test.images, test.labels
    if max_images:
        sel = np.random.default_rng(seed).permutation(len(images))[:max_images]
        images, labels = images[sel], labels[sel]
    triggered = make_trigger(trigger, scorer.size, trigger_params).apply(images)
    target = test.classes.index(target_class) if target_class else None
    utility, own_fired = encoder_utility(scorer, dataset, images, labels, triggered, target, knn_bank)
    fired_by = "this encoder's kNN class" if fired is None else "the backdoored encoder's kNN class"
    fired = own_fired if fired is None else fired
    s_clean, s_trig = score_many(scorer, images), score_many(scorer, triggered)
    rng = np.random.default_rng(seed)
    one_pct = rng.choice(len(images), max(1, len(images) // 100), replace=False)
    thresholds = {m.threshold.rule: m.threshold.value} | dict(m.threshold.alternatives)
    records = []
    for test_name, trig_scores in (("balanced", s_trig), ("unbalanced-1%", s_trig[one_pct])):
        for rule, value in thresholds.items():
            rec = {"attack": attack, "detector": "dede", "aux": m.provenance.aux_dataset, "test": test_name,
                   "threshold_rule": rule, "threshold": value, "deployed": rule == m.threshold.rule,
                   **detection_metrics(s_clean, trig_scores, value),
                   "tpr_at_1pct_fpr": tpr_at_fpr(s_clean, trig_scores, 0.01),
                   "trigger": trigger, "attack_asr": utility.get("attack_success_rate"),
                   "clean_target_rate": utility.get("clean_target_rate"),
                   "encoder_clean_acc": utility["clean_accuracy"], "encoder": m.encoder.architecture,
                   "bundle": m.name, "poison_rate": m.provenance.poison_rate, "score": m.detector.score}
            if test_name == "balanced" and fired is not None and target is not None:
                rec |= {**fired_metrics(s_clean, s_trig, fired, labels, target, value), "fired_by": fired_by}
            records.append(rec)
    raw = {"clean": s_clean, "triggered": s_trig, "threshold": np.array(m.threshold.value), "one_pct": one_pct}
    if fired is not None and target is not None:
        raw |= {"fired": fired, "unfired": (labels != target) & ~fired}
    return records, raw


def merge_records(path: Path, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records of a new evaluation replace every older record of the same bundle, attack label, preset and
    kind of test (detection or honesty), in place, so results.json holds one evaluation of each and nothing
    stale."""

    def group(r: dict[str, Any]) -> tuple[Any, ...]:
        return r.get("bundle"), r.get("attack"), r.get("preset"), r.get("test") == "honesty"

    return merge_into(path, new, group)


PUBLISHED = (Path("docs/results.json"), Path("docs/RESULTS.md"))  # the project's committed results


def output_paths(bundle_name: str, out: str | None, publish: bool) -> tuple[Path, Path]:
    """(results.json, RESULTS.md) that ``dede evaluate`` writes: under ``out`` (default
    ``runs/evaluate/<bundle name>``), or the project's committed docs/ with ``publish`` only."""
    if publish:
        if out:
            raise ValueError("--publish writes docs/; it does not take --out")
        return PUBLISHED
    root = Path(out) if out else Path("runs") / "evaluate" / bundle_name
    return root / "results.json", root / "RESULTS.md"


def evaluate_cli(a: argparse.Namespace) -> None:
    start = time.time()
    manifest = load_manifest(a.bundle)
    victim = manifest.provenance.victim
    attack = victim.get("attack") or "none"
    trigger = victim.get("trigger") or "badencoder"
    target = victim.get("target_class")
    runs = [(a.bundle, attack)]
    if a.control_bundle:
        runs.append((a.control_bundle, "none"))
    records: list[dict[str, Any]] = []
    scores: dict[str, dict[str, np.ndarray]] = {}
    for bundle, name in runs:
        print(f"evaluating {bundle} ({name}) on {a.dataset} test")
        recs, sc = evaluate_bundle(bundle, a.dataset, name, trigger, target, a.max_images,
                                   trigger_params=victim.get("trigger_params"),
                                   fired=scores[attack].get("fired") if scores else None)
        records += recs
        scores[name] = sc
    if a.honesty_images and target:
        for bundle, name in runs:
            print(f"honesty evaluation of {bundle} ({name}): trigger + benign perturbations")
            records += honesty_records(bundle, name, a.dataset, trigger, target, n_eval=a.honesty_images)
    wall = round(time.time() - start, 1)
    command = command_line(a.command_line)
    for r in records:
        r.update({"preset": a.preset or manifest.provenance.preset, "hardware": hardware(), "wall_s": wall,
                  "command": command})
    results, report = output_paths(manifest.name, a.out, a.publish)
    merged = merge_records(results, records)
    write_figures(scores, report.parent / "figures", prefix=manifest.name)
    write_report(merged, report, evaluated_figures(merged, report))
    for r in records:
        if r.get("deployed"):
            print(f"{r['attack']:>10} {r['test']:>14} {r['threshold_rule']:>10}  AUC {r['auc']:.3f}  "
                  f"TPR {r['tpr']:.3f}  FPR {r['fpr']:.3f}")
    print(f"wrote {results} and {report} ({wall}s)")
