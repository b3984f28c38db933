"""``dede ensemble``: DeDe detectors of one encoder trained with different seeds, alone and averaged.

A detector's AUC moves with its own training seed (docs/research/VARIANTS.md, "Seed repeats"), so one run of a
recipe says little about the next. Averaging detectors trained with different seeds is the usual answer to such
variance. This command measures what it buys: for every subset of k of the N detectors given, the AUC of the mean of
their standardised scores, for the backdoored encoder's detectors and for the clean-encoder controls (the same
trigger: how much of an ensemble's gain is the trigger's own pixels).

Each member's score is standardised by its own held-out calibration scores (the mean and standard deviation the
bundle's manifest carries, ``threshold.holdout``), so members with another scale count alike; an ensemble's score
is the mean of its members'. The test is RESULTS.md's balanced one: every CIFAR-10 test image and its triggered
copy, so the k = 1 rows are the members' AUCs there. ``tpr_at_1pct_fpr`` is measured on the test's clean images
(an ensemble has no calibrated threshold of its own).

    dede ensemble --label L --bundle B1 --bundle B2 --control C1 --control C2

Records go to ``docs/research/ensemble.json`` (merged by label); ``docs/research/ENSEMBLE.md`` is regenerated from
it.
"""

from __future__ import annotations

import argparse
import time
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from service.scoring import Scorer
from training.data import load_images
from training.evaluation.bundle_scores import score_many
from training.evaluation.downstream_bundle import manifest_attack
from training.evaluation.evaluate import hardware
from training.metrics import auc, tpr_at_fpr
from training.reporting.markdown import fmt
from training.reporting.records import command_line, publish_by_label, require_bundles

ROLES = ("backdoored", "control")


def standardised_scores(scorer: Scorer, clean: np.ndarray, triggered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One member's scores of uint8 (N, H, W, 3) clean and triggered images, each (N,), standardised by the
    member's held-out calibration scores (``threshold.holdout`` in its manifest)."""
    hold = scorer.manifest.threshold.holdout
    if hold.std <= 0:
        raise ValueError(f"{scorer.manifest.name}: its held-out scores have no spread (std {hold.std})")
    return ((score_many(scorer, clean) - hold.mean) / hold.std,
            (score_many(scorer, triggered) - hold.mean) / hold.std)


def subset_rows(clean: np.ndarray, triggered: np.ndarray) -> list[dict[str, Any]]:
    """clean, triggered: (M, N) standardised scores of M members. One row per ensemble size k = 1..M: the AUC of
    the mean score of every k-subset (mean, min, max over the subsets) and their mean TPR at 1% FPR."""
    members = len(clean)
    rows = []
    for k in range(1, members + 1):
        aucs, tprs = [], []
        for subset in combinations(range(members), k):
            c, t = clean[list(subset)].mean(0), triggered[list(subset)].mean(0)
            aucs.append(auc(c, t))
            tprs.append(tpr_at_fpr(c, t, 0.01))
        rows.append({"k": k, "n_subsets": len(aucs), "auc_mean": float(np.mean(aucs)), "auc_min": min(aucs),
                     "auc_max": max(aucs), "tpr_at_1pct_fpr_mean": float(np.mean(tprs))})
    return rows


def _members(bundles: list[str | Path], role: str) -> list[Scorer]:
    """Every member's scorer, after checking that there are at least two and that they score one encoder."""
    if len(bundles) < 2:
        raise ValueError(f"an ensemble needs at least 2 {role} bundles, got {len(bundles)}")
    scorers = [Scorer.from_bundle(b, threads=0) for b in bundles]
    encoders = {s.manifest.encoder.sha256 for s in scorers}
    if len(encoders) > 1:
        raise ValueError(f"the {role} bundles score {len(encoders)} different encoders: an ensemble averages "
                         "detectors of one encoder")
    return scorers


def ensemble(bundles: list[str | Path], controls: list[str | Path],
             max_images: int = 0, seed: int = 0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records (one per role x ensemble size) and the facts of the ensemble: trigger, members' AUCs, image count.
    The trigger is the one the first backdoored bundle's manifest records; every backdoored member must record
    the same attack."""
    members = {"backdoored": _members(bundles, "backdoored"), "control": _members(controls, "control")}
    size = members["backdoored"][0].size
    if members["control"][0].size != size:
        raise ValueError(f"the backdoored bundles take {size} px images but the controls "
                         f"{members['control'][0].size} px")
    recorded = [manifest_attack(s.manifest) for s in members["backdoored"]]  # the Scorers verified the bundles
    attacks = {(a.name, a.trigger_name, a.target_class) for a in recorded}
    if len(attacks) > 1:
        raise ValueError(f"the backdoored bundles record different attacks: {sorted(map(str, attacks))}")
    trigger = recorded[0].trigger  # raises if none is recorded
    images = load_images("cifar10", "test", size).images
    if max_images:
        images = images[np.sort(np.random.default_rng(seed).permutation(len(images))[:max_images])]
    triggered = trigger.apply(images)
    records, aucs = [], {}
    for role, paths in zip(ROLES, (bundles, controls), strict=True):
        scores = [standardised_scores(s, images, triggered) for s in members[role]]
        clean, trig = np.stack([c for c, _ in scores]), np.stack([t for _, t in scores])  # (M, N) each
        aucs[role] = [{"bundle": str(p), "auc": auc(c, t)} for p, c, t in zip(paths, clean, trig, strict=True)]
        records += [{"detector": role, **row} for row in subset_rows(clean, trig)]
    manifest = members["backdoored"][0].manifest
    (attack, trigger_name, target_class), = attacks
    facts = {"attack": attack, "trigger": trigger_name, "target_class": target_class,
             "encoder": manifest.encoder.architecture, "aux": manifest.provenance.aux_dataset,
             "n_clean": int(len(images)), "n_triggered": int(len(triggered)), "members": aucs}
    return records, facts


def write_report(records: list[dict[str, Any]], path: Path) -> None:
    """``ENSEMBLE.md`` from the records: per ensemble, the AUC by ensemble size, backdoored and control."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["label"], []).append(r)
    lines = ["# Ensembles of DeDe detectors trained with different seeds", "",
             "Generated by `dede ensemble` (`make ensemble`) from `docs/research/ensemble.json`; do not edit by hand. "
             "Each ensemble averages the standardised scores (each member's score minus the mean of its held-out "
             "calibration scores, over their standard deviation) of k detectors of one encoder, trained with "
             "different seeds. The test is RESULTS.md's balanced one: every CIFAR-10 test image and its triggered "
             "copy, so the k = 1 row is the mean of the members' own AUCs. For each k, every subset of k members is "
             "scored: the mean AUC over the subsets, the lowest and the highest, and the mean TPR at 1% FPR "
             "(measured on the test's clean images: an ensemble has no calibrated threshold of its own). "
             "Backdoored / control: the control ensemble averages the clean-encoder detectors of the same seeds, "
             "scored on the same images and trigger.", ""]
    for label, recs in groups.items():
        r0 = recs[0]
        by = {(r["detector"], r["k"]): r for r in recs}
        lines += [f"## {label}", "",
                  f"Attack {r0['attack']}, trigger {r0['trigger']}, target {r0['target_class']}, encoder "
                  f"{r0['encoder']}, aux {r0['aux']}; {r0['n_clean']} clean + {r0['n_triggered']} triggered images; "
                  f"{r0['hardware']}, {r0['wall_s']} s; `{r0['command']}`.", "",
                  "Members (AUC alone, backdoored): " + ", ".join(
                      f"`{m['bundle']}` {fmt(m['auc'])}" for m in r0["members"]["backdoored"]) + ".", "",
                  "Controls (AUC alone): " + ", ".join(
                      f"`{m['bundle']}` {fmt(m['auc'])}" for m in r0["members"]["control"]) + ".", "",
                  "| k | subsets | AUC, mean over subsets | lowest | highest | TPR@1%FPR, mean | control AUC, mean | "
                  "control lowest / highest |",
                  "|---|---|---|---|---|---|---|---|"]
        for k in sorted({r["k"] for r in recs}):
            b, c = by.get(("backdoored", k)), by.get(("control", k))
            lines.append(
                f"| {k} | {b['n_subsets'] if b else '-'} | {fmt(b['auc_mean']) if b else '-'} | "
                f"{fmt(b['auc_min']) if b else '-'} | {fmt(b['auc_max']) if b else '-'} | "
                f"{fmt(b['tpr_at_1pct_fpr_mean']) if b else '-'} | {fmt(c['auc_mean']) if c else '-'} | "
                f"{(fmt(c['auc_min']) + ' / ' + fmt(c['auc_max'])) if c else '-'} |")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def ensemble_cli(a: argparse.Namespace) -> None:
    start = time.time()
    require_bundles([*a.bundle, *a.control])
    records, facts = ensemble(a.bundle, a.control, a.max_images)
    head = {"label": a.label or f"{len(a.bundle)} detectors of {facts['encoder']} ({facts['trigger']})", **facts,
            "hardware": hardware(), "wall_s": round(time.time() - start, 1), "command": command_line(a.command_line)}
    for r in publish_by_label(records, head, Path(a.results), Path(a.report), write_report):
        print(f"{r['detector']:>10} k={r['k']}  AUC {r['auc_mean']:.3f} ({r['auc_min']:.3f} - {r['auc_max']:.3f})")
    print(f"wrote {a.results} and {a.report} ({head['wall_s']} s)")
