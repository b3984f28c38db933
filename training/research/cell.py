"""One cell of ``dede reproduce``: an attack x an auxiliary set, evaluated like the paper's Tables 1 and 3.

Scores go through the exported bundles (ONNX Runtime: the service's own scoring path) for the backdoored
detector and its clean-encoder control, on the CIFAR-10 test set (balanced: every clean test image + its
triggered copy; unbalanced: the clean images + triggered copies of 1% of them), at both threshold rules.
The attack's own success (its ASR and clean accuracy, measured by the attack: kNN for the contrastive
attacks, zero-shot for the CLIP ones) is copied into every record, next to the bundle encoder's kNN values.
BadCLIP is also tested with the random noise patch of the paper's BadCLIP test sets (``test_trigger``).

    python -m training.research.cell --root R --attack A --aux id --bundle B --control C --out R/cells/A-id.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.scoring import Scorer
from training.data import load_images
from training.evaluation.bundle_scores import embed_many
from training.evaluation.evaluate import evaluate_bundle, hardware
from training.evaluation.figures import detection_figure, reconstruction_grid
from training.research.grid import EXTRA_TEST_TRIGGERS, FILTERED_DETECTOR, ROBUST_DETECTOR
from training.triggers import attack_record, make_trigger

STEALTH = ("swd_before", "swd", "outlier_auc_before", "outlier_auc")  # embedding-space visibility (DRUPE's claim)


def _stages(encoder_dir: Path) -> list[dict[str, Any]]:
    return json.loads((encoder_dir / "encoder.json").read_text()).get("history", [])


def attack_summary(root: Path, attack: str, preset: str, command: str) -> dict[str, Any] | None:
    """One record (``kind`` "attack") of an attacked encoder under ``root``: its own success before and after
    (the attack step measured them), embedding stealth and wall time; None when the attack has not run. It
    lets RESULTS.md report every attack, also one whose detectors have not been trained (or that failed)."""
    if not (root / attack / "encoder.json").exists() or (rec := attack_record(root / attack)) is None:
        return None
    stages = _stages(root / attack)
    return {"source": "reproduce", "kind": "attack", "cell": f"attack-{attack}", "preset": preset,
            "attack": attack, "trigger": rec["trigger"], "target_class": rec.get("target_class"),
            "attack_asr": rec.get("attack_success_rate"), "asr_before": rec.get("asr_before"),
            "encoder_clean_acc": rec.get("clean_accuracy"), "clean_accuracy_before": rec.get("clean_accuracy_before"),
            "asr_method": rec.get("asr_method", "knn"), **{k: rec.get(k) for k in STEALTH},
            "attack_wall_s": sum(float(h.get("wall_s") or 0) for h in stages),
            "stage_epochs": {h["stage"]: h.get("epochs") for h in stages}, "train_device": rec.get("device"),
            **({"asr_curve": curve} if (curve := rec.get("asr_curve")) else {}), "command": command}


def evaluate_cell(root: Path, attack: str, aux: str, bundle: Path, control: Path, preset: str,
                  max_images: int = 0, command: str = "dede reproduce",
                  figures: Path = Path("docs/figures"), knn_bank: int = 10000, grid: str = "") -> list[dict[str, Any]]:
    """The cell's records; ``grid`` names the figures (``reproduce-<grid>-<attack>-<aux>*.png``; default the
    preset, ``reproduce.GridSpec.label`` for a variant's grid)."""
    start = time.time()
    grid = grid or preset
    rec, summary = attack_record(root / attack), attack_summary(root, attack, preset, command)
    if rec is None or summary is None:
        raise ValueError(f"{root / attack} records no attack")
    trigger, params, target = rec["trigger"], rec.get("trigger_params") or {}, rec["target_class"]
    # the attack's own measurements, on every record: after the attack, or before it for the control's
    attacked = {k: summary[k] for k in ("attack_asr", "encoder_clean_acc", "asr_method", *STEALTH)}
    clean = {"attack_asr": summary["asr_before"], "encoder_clean_acc": summary["clean_accuracy_before"]}
    attack_wall = summary["attack_wall_s"]  # pre-training (CTRL's poisoned one included) + attack
    tests = [(trigger, params), *EXTRA_TEST_TRIGGERS.get(attack, [])]
    records: list[dict[str, Any]] = []
    for test_trigger, test_params in tests:
        scores: dict[str, dict[str, np.ndarray]] = {}
        for label, path, name in (("backdoored", bundle, attack), ("control", control, "none")):
            recs, sc = evaluate_bundle(path, "cifar10", name, test_trigger, target, max_images,
                                       trigger_params=test_params, knn_bank=knn_bank,
                                       fired=scores["backdoored"].get("fired") if scores else None)
            scores[label] = sc
            trained = detector_fields(json.loads((root / "dede" / path.name / "run.json").read_text()))
            for r in recs:
                r.update({"knn_asr": r.pop("attack_asr"), "knn_clean_acc": r.pop("encoder_clean_acc"),
                          **attacked, "test_trigger": test_trigger, **trained})
                if name == "none":
                    r.update({"control_for": attack, **clean})
            records += recs
        suffix = "" if test_trigger == trigger else f"-{test_trigger}"
        detection_figure(scores, f"{attack} ({test_trigger} trigger), aux {aux}, preset {preset}"
                         + ("" if grid == preset else f" ({grid})"),
                         figures / f"reproduce-{grid}-{attack}-{aux}{suffix}.png")
    _grid(bundle, trigger, params, f"{attack}, aux {aux}: backdoored encoder's detector",
          figures / f"reproduce-{grid}-{attack}-{aux}-reconstructions.png")
    collapse = {role: class_collapse(Scorer.from_bundle(path)) for role, path in (("backdoored", bundle),
                                                                                 ("control", control))}
    eval_wall = round(time.time() - start, 1)
    for r in records:
        r.update({"source": "reproduce", "cell": f"{attack}-{aux}", "aux_kind": aux, "preset": preset,
                  "hardware": hardware(), "attack_wall_s": attack_wall, "eval_wall_s": eval_wall,
                  "wall_s": round(attack_wall + r["train_wall_s"] + eval_wall, 1), "command": command,
                  "trigger_params": params if r["test_trigger"] == trigger else {},
                  "class_collapse": collapse["control" if r["attack"] == "none" else "backdoored"]})
    return records


def detector_fields(run: dict[str, Any]) -> dict[str, Any]:
    """What a cell's records say about the DeDe training behind a bundle (its ``run.json``). A detector trained
    robustly (``drop_worst`` > 0, aux ``id-robust``) is named ``dede-robust``, one trained on a filtered set
    (``drop_dense`` > 0, aux ``id-filtered``) ``dede-filtered``, so that their records differ from the paper's
    detector on the same auxiliary set."""
    out = {"train_wall_s": run["train_wall_s"], "train_device": run["device"],
           "train_wall_partial": run.get("train_wall_partial", False), "dede_epochs": run["epochs"],
           "train_mask_ratio": run["train_mask_ratio"], "aux_train_images": run.get("aux", {}).get("n_train")}
    if run.get("drop_worst"):
        out.update({"detector": ROBUST_DETECTOR, "dede_drop_worst": run["drop_worst"]})
    if run.get("drop_dense"):
        aux = run["aux"]
        out.update({"detector": FILTERED_DETECTOR, "dede_drop_dense": run["drop_dense"],
                    "aux_poisoned_dropped": aux.get("dense_filter", {}).get("poisoned_dropped"),
                    "aux_poisoned": aux.get("n_poisoned")})
    return out


def class_collapse(scorer: Scorer, n: int = 2000) -> float:
    """The share of the variance of clean CIFAR-10 test embeddings (L2-normalised) explained by their class:
    between-class / total variance. 1 means every image of a class embeds alike (an embedding that only names
    the class, from which a decoder can draw nothing but a class prototype); 0 means the class is invisible."""
    test = load_images("cifar10", "test", scorer.size)
    idx = np.random.default_rng(0).permutation(len(test))[:n]
    e = embed_many(scorer, test.images[idx])
    e = e / np.linalg.norm(e, axis=1, keepdims=True)  # (n, E)
    labels = test.labels[idx]
    centroids = np.stack([e[labels == c].mean(0) for c in range(len(test.classes))])  # (C, E)
    total = ((e - e.mean(0)) ** 2).sum()
    between = ((centroids[labels] - e.mean(0)) ** 2).sum()
    return float(between / total)


def _grid(bundle: Path, trigger: str, params: dict[str, Any], title: str, path: Path, n: int = 4) -> None:
    scorer = Scorer.from_bundle(bundle)
    test = load_images("cifar10", "test", scorer.size)
    idx = np.random.default_rng(0).permutation(len(test))[:n]
    clean = test.images[idx]
    reconstruction_grid(scorer, clean, make_trigger(trigger, scorer.size, params).apply(clean), title, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--attack", required=True)
    p.add_argument("--aux", required=True)
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--control", required=True, type=Path)
    p.add_argument("--preset", required=True)
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--knn-bank", type=int, default=10000, help="clean train images of the kNN probe")
    p.add_argument("--command-line", default="dede reproduce")
    p.add_argument("--figures", type=Path, default=Path("docs/figures"))
    p.add_argument("--label", default="", help="the grid's name in figure files (default: the preset)")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    records = evaluate_cell(a.root, a.attack, a.aux, a.bundle, a.control, a.preset, a.max_images, a.command_line,
                            a.figures, a.knn_bank, a.label)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(a.out)  # the cell is done only once its records are complete
    for r in records:
        if r.get("deployed"):
            print(f"{r['attack']:>13} {r['test']:>14} {r['test_trigger']:>11}  AUC {r['auc']:.3f}  TPR {r['tpr']:.3f}  "
                  f"FPR {r['fpr']:.3f}")


if __name__ == "__main__":
    main()
