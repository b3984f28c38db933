"""The paper's two baselines in ``dede reproduce`` (Tables 1 and 3, rows ASSET and DECREE), for one attack.

On the same test pools as the DeDe cells (every clean CIFAR-10 test image + its triggered copy; the clean
images + triggered copies of 1% of them):

- ASSET (``training.baselines.asset``): as the paper says, trained on a training set "kept with the same
  poisoning rate as the test dataset" (``--asset-train`` CIFAR-10 train images, that share triggered, each
  labelled with its own class), then scoring the pool; AUC of the last epoch (and of the best epoch, an
  oracle choice as in the paper), TPR / FPR at ASSET's own threshold.
- DECREE (``training.baselines.decree``): trigger inversion on the attacked encoder AND on the clean one it
  came from, with the encoder-level verdict (PL1 < 0.1 = trojaned); for patch triggers, the per-sample score
  (distance to the inverted trigger inside its mask) with a threshold at 1% FPR on clean base images.

    python -m training.research.baselines --root R --attack badencoder --clean simclr --preset cpu \
        --out R/cells/baselines-badencoder.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from training.baselines import (
    DECREE_PRESETS,
    DecreeConfig,
    asset_config,
    asset_threshold,
    decree_applicable,
    decree_scores,
    decree_threshold,
    invert_trigger,
    run_asset,
)
from training.config import resolve_config
from training.data import ImageSet, load_images
from training.encoders import load_encoder
from training.evaluation.evaluate import hardware
from training.loop import pick_device
from training.metrics import detection_metrics, tpr_at_fpr
from training.triggers import attack_record, make_trigger

ASSET_TRAIN = {"tiny": 256, "cpu": 4000, "paper": 50000}  # ASSET's training set size per preset


Pool = tuple[np.ndarray, np.ndarray, np.ndarray]  # clean (N, H, W, 3), triggered (M, H, W, 3), labels (N + M,)


def detection_pools(test: ImageSet, trigger: Any, max_images: int, seed: int = 0) -> dict[str, Pool]:
    """The DeDe cells' pools (``training.evaluation.evaluate.evaluate_bundle``) from the CIFAR-10 test set ``test``:
    name -> (clean, triggered, labels of both)."""
    images, labels = test.images, test.labels
    if max_images:
        sel = np.random.default_rng(seed).permutation(len(images))[:max_images]
        images, labels = images[sel], labels[sel]
    triggered = trigger.apply(images)
    one_pct = np.random.default_rng(seed).choice(len(images), max(1, len(images) // 100), replace=False)
    return {"balanced": (images, triggered, np.r_[labels, labels]),
            "unbalanced-1%": (images, triggered[one_pct], np.r_[labels, labels[one_pct]])}


def decree_base(n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """DECREE's clean data: (``n_images`` base images to invert the trigger on, the 2,000 base images its
    per-sample threshold is calibrated on (1% FPR)), both from the held-out clean base set."""
    base = split_base_and_train(0)[0]
    return base[np.random.default_rng(2).permutation(len(base))[:n_images]], base[:2000]


def split_base_and_train(n_train: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The clean base set (10% of CIFAR-10 train) and a disjoint training set for ASSET (images, labels)."""
    train = load_images("cifar10", "train", 32)
    order = np.random.default_rng(seed).permutation(len(train))
    n_base = len(train) // 10
    rest = order[n_base : n_base + n_train]
    return train.images[order[:n_base]], train.images[rest], train.labels[rest]


def asset_records(encoder: Any, spec: Any, attack: str, trigger: Any, pools: dict[str, Pool], preset: str,
                  n_train: int, device: str, train_rate: float | None = None,
                  target_label: int | None = None) -> list[dict[str, Any]]:
    """ASSET's records on each pool. ``train_rate`` None: one ASSET run per pool, trained at that pool's poison
    rate (the paper's text); a number: one run trained at that rate (the official script's ``--poison_rate
    0.01``), scoring every pool at once (they share the clean images). ``target_label``: every triggered image,
    in the training set and in the pools, is labelled with the attack's target class instead of its own (the
    official script's test labels, and what a poisoned downstream set and a hijacked prediction carry)."""
    cfg = asset_config(attack, preset)
    base, train, train_labels = split_base_and_train(n_train)
    groups = ([(len(p[1]) / (len(p[0]) + len(p[1])), {name: p}) for name, p in pools.items()]
              if train_rate is None else [(train_rate, pools)])
    aux = (f"cifar10-train-{len(train)}-at-pool-rate" if train_rate is None
           else f"cifar10-train-{len(train)}-at-{100 * train_rate:g}%")
    aux += "" if target_label is None else "-target-labelled"
    records = []
    for rate, group in groups:
        is_poisoned = np.zeros(len(train), bool)
        is_poisoned[np.random.default_rng(1).choice(len(train), int(round(rate * len(train))), replace=False)] = True
        poisoned, poisoned_labels = train.copy(), train_labels.copy()
        poisoned[is_poisoned] = trigger.apply(train[is_poisoned])
        if target_label is not None:
            poisoned_labels[is_poisoned] = target_label
        clean, _, labels = next(iter(group.values()))
        n = len(clean)
        pool = np.concatenate([clean, *(trig for _, trig, _ in group.values())])  # (n + sum M, H, W, 3)
        pool_labels = np.concatenate([labels[:n], *(lab[n:] for _, _, lab in group.values())])
        if target_label is not None:
            pool_labels[n:] = target_label
        res = run_asset(encoder, spec, base, pool, cfg, pool_labels=pool_labels, train_images=poisoned,
                        train_labels=poisoned_labels, device=device, log=True, train_poisoned=is_poisoned)
        offset = n
        for test, (_, trig, _) in group.items():
            idx = np.r_[np.arange(n), np.arange(offset, offset + len(trig))]  # this pool's clean + triggered
            offset += len(trig)
            scores = res.scores[idx]
            threshold = asset_threshold(scores, cfg.threshold_eps)
            met = detection_metrics(scores[:n], scores[n:], threshold)
            best = max(detection_metrics(s[idx][:n], s[idx][n:], threshold)["auc"] for s in res.scores_per_epoch)
            records.append({"attack": attack, "detector": "asset", "aux": aux, "test": test, "test_trigger": None,
                            "threshold_rule": "asset-get_t", "threshold": threshold, "deployed": True, **met,
                            "auc_best_epoch": best, "tpr_at_1pct_fpr": tpr_at_fpr(scores[:n], scores[n:], 0.01),
                            "asset_epochs": cfg.epochs, "baseline_wall_s": res.wall_s,
                            "asset_train_poison_rate": float(is_poisoned.mean()),
                            "asset_flagged": sum(res.flagged_per_epoch),
                            "asset_flagged_poisoned": sum(res.flagged_poisoned_per_epoch or [])})
    return records


def decree_records(encoders: dict[str, tuple[Any, Any]], attack: str, trigger_name: str, trigger: Any,
                   pools: dict[str, Any], preset: str, device: str) -> list[dict[str, Any]]:
    cfg = resolve_config(DecreeConfig, DECREE_PRESETS, preset)
    clean_ref, calib = decree_base(cfg.n_images)
    records: list[dict[str, Any]] = []
    for role, (model, spec) in encoders.items():
        res = invert_trigger(model, spec, clean_ref, cfg, device=device)
        records.append({"kind": "verdict", "detector": "decree", "attack": attack, "encoder_role": role,
                        **res.to_dict(), "baseline_wall_s": res.wall_s})
        if role != "backdoored" or not decree_applicable(trigger_name):
            continue
        threshold = decree_threshold(res, calib)
        for test, (clean, trig, _) in pools.items():
            s_clean, s_trig = decree_scores(res, clean), decree_scores(res, trig)
            records.append({"attack": attack, "detector": "decree", "aux": "cifar10-clean-50", "test": test,
                            "test_trigger": trigger_name, "threshold_rule": "decree-fpr@0.01", "threshold": threshold,
                            "deployed": True, **detection_metrics(s_clean, s_trig, threshold),
                            "tpr_at_1pct_fpr": tpr_at_fpr(s_clean, s_trig, 0.01), "decree_pl1": res.pl1,
                            "baseline_wall_s": res.wall_s,
                            "decree_trojaned": res.trojaned})
    if not decree_applicable(trigger_name):
        records.append({"kind": "note", "detector": "decree", "attack": attack,
                        "note": f"per-sample DECREE not applicable: {trigger_name} is not a patch trigger"})
    return records


def baselines_cell(root: Path, attack: str, clean: str, preset: str, max_images: int, command: str,
                   asset_train: int | None = None, asset_train_rate: float | None = None, asset_only: bool = False,
                   cell: str | None = None, target_labels: bool = False) -> list[dict[str, Any]]:
    start = time.time()
    rec = attack_record(root / attack)
    if rec is None:
        raise ValueError(f"{root / attack} records no attack")
    trigger = make_trigger(rec["trigger"], 32, rec.get("trigger_params") or {})
    device = pick_device("auto")
    bad, bad_spec = load_encoder(root / attack)
    test = load_images("cifar10", "test", 32)
    pools = detection_pools(test, trigger, max_images)
    records = [] if asset_only else decree_records(
        {"backdoored": (bad, bad_spec), "clean": load_encoder(root / clean)}, attack, rec["trigger"], trigger, pools,
        preset, device)
    records += asset_records(bad, bad_spec, attack, trigger, pools, preset,
                             asset_train or ASSET_TRAIN.get(preset, 4000), device, asset_train_rate,
                             test.classes.index(rec["target_class"]) if target_labels else None)
    wall = round(time.time() - start, 1)
    for r in records:
        r.update({"source": "reproduce", "cell": cell or f"baselines-{attack}", "trigger": rec["trigger"],
                  "preset": preset, "hardware": hardware(), "wall_s": wall, "command": command})
    return records


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--attack", required=True)
    p.add_argument("--clean", required=True, help="the clean encoder the attack started from (under --root)")
    p.add_argument("--preset", required=True)
    p.add_argument("--max-images", type=int, default=0)
    p.add_argument("--asset-train", type=int, default=None, help="ASSET's training images (default by preset)")
    p.add_argument("--asset-train-rate", type=float, default=None,
                   help="train ASSET once at this poison rate and score every pool (the official script: 0.01); "
                        "default: one run per pool at the pool's own rate (the paper's text)")
    p.add_argument("--asset-only", action="store_true", help="leave DECREE out")
    p.add_argument("--target-labels", action="store_true",
                   help="label ASSET's triggered images (training set and pools) with the attack's target class")
    p.add_argument("--cell", default=None, help="the records' cell name (default baselines-<attack>)")
    p.add_argument("--command-line", default="dede reproduce")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    records = baselines_cell(a.root, a.attack, a.clean, a.preset, a.max_images, a.command_line, a.asset_train,
                             a.asset_train_rate, a.asset_only, a.cell, a.target_labels)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(a.out)
    for r in records:
        if "auc" in r:
            print(f"{r['detector']:>7} {r['test']:>14}  AUC {r['auc']:.3f}  TPR {r['tpr']:.3f}  FPR {r['fpr']:.3f}")
        elif r.get("kind") == "verdict":
            print(f" decree {r['encoder_role']:>10} encoder: PL1 {r['pl1']:.3f} trojaned {r['trojaned']}")


if __name__ == "__main__":
    main()
