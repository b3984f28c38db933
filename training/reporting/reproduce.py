"""The ``dede reproduce`` sections of ``docs/RESULTS.md`` and ``docs/research/VARIANTS.md``: our numbers next to
the paper's Tables 1 and 3.

Rendered from the records with ``"source": "reproduce"`` (one group per preset and variant), never typed in: the plain
grids' sections (``plain_grid_lines``) go to RESULTS.md, the variant grids' and the sections that set them next to the
plain grid (``variant_grid_lines``) to VARIANTS.md.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean, stdev
from typing import Any

from service.scores import content_exponent
from training.attacks import IMPLANT_MIN_GAIN, attack_preset_epochs, implanted
from training.baselines import decree_applicable
from training.config import DENSE_K, TRAIN_PRESETS, TrainConfig, preset_epochs
from training.pretrain.clip_train import CLIP_PRESETS, ClipConfig
from training.pretrain.simclr import PRETRAIN_PRESETS, PretrainConfig
from training.reporting.markdown import fmt
from training.research.grid import (
    ATTACKS,
    AUXES,
    EXTRA_TEST_TRIGGERS,
    FILTERED_DETECTOR,
    ROBUST_DETECTOR,
    aux_kind,
    grid_label,
)
from training.research.paper import ATTACK_ORDER, DOWNSTREAM, paper_detection
from training.research.variants import VARIANTS, seed_repeat

TARGET_AUC = {"badencoder": 0.95, "drupe": 0.95}  # issue 4's cpu-preset targets; 0.9 for the others
PAPER_AUX = {"id-robust": "id", "id-filtered": "id"}  # the paper's row a cell is compared with (ours)
DEDE_DETECTORS = ("dede", ROBUST_DETECTOR, FILTERED_DETECTOR)
ROBUST_NOTE = ("; `, robust (drop_worst x)` = the in-distribution set with DeDe trained robustly, the share x of "
               "highest-loss samples of each batch left out of the loss after the first epoch (not the paper's "
               "method: our defence against a poisoned auxiliary set; its control is trained the same way, and it "
               "is compared with the paper's in-distribution numbers)")
FILTERED_NOTE = ("; `, dense-filtered (drop_dense x: t of p triggered left out; control: c)` = the in-distribution "
                 "set without the share x of its images whose victim embeddings are the densest (highest mean cosine "
                 f"similarity to their {DENSE_K} nearest neighbours), t of its p triggered images among them (c with "
                 "the clean encoder's embeddings, for the control), before DeDe is trained; "
                 "the held-out calibration images as dense are left out too (not the paper's method: a backdoor "
                 "maps triggered images to one clump of embeddings; the control is filtered the same way)")
TESTS = (("balanced", "Table 1: balanced test set (every clean CIFAR-10 test image + its triggered copy)"),
         ("unbalanced-1%", "Table 3: unbalanced test set (the clean images + triggered copies of 1% of them)"))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _order(attack: str) -> int:
    return ATTACK_ORDER.index(attack) if attack in ATTACK_ORDER else len(ATTACK_ORDER)


def attack_lines(recs: list[dict[str, Any]], preset: str) -> list[str]:
    """Each attack's own success (it must implant a backdoor before it can test a detector)."""
    seen: dict[str, dict[str, Any]] = {}
    for r in recs:
        if r["attack"] != "none" and r["attack"] not in seen and r.get("kind") != "attack":
            seen[r["attack"]] = r
    ctl = {r["control_for"]: r for r in recs if r["attack"] == "none"}
    for r in recs:  # the attack's own record fills in what its cells lack (epochs), or stands alone for an
        if r.get("kind") != "attack":  # attack with no finished DeDe cell (before = the attack's measurement)
            continue
        if r["attack"] in seen:
            seen[r["attack"]] = {**r, **seen[r["attack"]]}
        else:
            seen[r["attack"]] = r
            ctl[r["attack"]] = {"attack_asr": r.get("asr_before"), "encoder_clean_acc": r.get("clean_accuracy_before")}
    lines = ["| attack | trigger | ASR before -> after | clean accuracy before -> after | measured by | "
             "bundle encoder kNN: ASR / CA | embedding SWD before -> after | outlier AUC before -> after | "
             "class collapse clean -> attacked | pre-training + attack: epochs, wall time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for a in sorted(seen, key=_order):
        r, c = seen[a], ctl.get(a, {})
        lines.append(f"| {a} | {r['trigger']} | {fmt(c.get('attack_asr'))} -> {fmt(r.get('attack_asr'))} | "
                     f"{fmt(c.get('encoder_clean_acc'))} -> {fmt(r.get('encoder_clean_acc'))} | "
                     f"{r.get('asr_method', 'knn')} | {fmt(r.get('knn_asr'))} / {fmt(r.get('knn_clean_acc'))} | "
                     f"{fmt(r.get('swd_before'), 2)} -> {fmt(r.get('swd'), 2)} | "
                     f"{fmt(r.get('outlier_auc_before'))} -> {fmt(r.get('outlier_auc'))} | "
                     f"{fmt(c.get('class_collapse'))} -> {fmt(r.get('class_collapse'))} | "
                     f"{_epochs(r.get('stage_epochs'), preset)}, {fmt(r.get('attack_wall_s'), 0)} s |")
    if curves := [(a, seen[a]["asr_curve"]) for a in sorted(seen, key=_order) if seen[a].get("asr_curve")]:
        lines += ["", "Attack success while the attack trained (kNN ASR / clean accuracy after the epoch; epoch 0 is "
                  "the clean encoder; `asr_every`): " + "; ".join(
                      f"{a}: " + ", ".join(f"epoch {p['epoch']} {fmt(p['asr'])} / {fmt(p['clean_accuracy'])}"
                                           for p in c)
                      for a, c in curves) + "."]
    weak = [a for a in sorted(seen, key=_order)
            if not implanted(seen[a].get("attack_asr"), ctl.get(a, {}).get("attack_asr"))]
    if weak:
        lines += ["", "Did not implant a backdoor at this preset (attack success rose by less than "
                  f"{IMPLANT_MIN_GAIN} over the clean encoder's), so no detector can be tested on it, and "
                  "`dede reproduce` trains no detector for it and runs no downstream defence on it (its "
                  "baselines still run: DECREE's verdict is about the encoder): " + ", ".join(weak) + "."]
    return [*lines, "", "Embedding stealth (DRUPE's claim against BadEncoder): the sliced Wasserstein distance between "
            "triggered and clean test embeddings, normalised by the clean spread, and the AUC of a kNN-distance "
            "outlier detector on them, before and after the attack (lower = stealthier; an AUC below 0.5 means "
            "triggered embeddings sit INSIDE a clean cluster). Class collapse: the share of the variance of the "
            "(normalised) clean test embeddings that their class explains (1 = the embedding only names the "
            "class, so a decoder can draw nothing but a class prototype from it).", ""]


# stage name (as in ``stage_epochs``) -> (config class, presets) of the run that trains it
_STAGE_CONFIGS: dict[str, tuple[type, dict[str, dict[str, Any]]]] = {
    "pretrain-simclr": (PretrainConfig, PRETRAIN_PRESETS), "pretrain-clip": (ClipConfig, CLIP_PRESETS),
    "dede": (TrainConfig, TRAIN_PRESETS)}


def planned_epochs(stage: str, preset: str) -> int | None:
    """The epochs ``preset`` schedules for a stage named as in ``stage_epochs`` ('pretrain-simclr',
    'pretrain-clip', 'attack-<name>') or 'dede'; None for a preset or stage not known here."""
    if stage.startswith("attack-"):
        return attack_preset_epochs(stage.removeprefix("attack-"), preset)
    return preset_epochs(*_STAGE_CONFIGS[stage], preset) if stage in _STAGE_CONFIGS else None


def _epochs(stages: dict[str, int | None] | None, preset: str) -> str:
    """Epochs per stage (``{"pretrain-simclr": 30, "attack-badencoder": 5}`` -> "30 + 5 ep"); a stage that
    stopped short of its preset's schedule (its time budget, on a lent GPU) shows as done/scheduled: "23/1000"."""
    if not stages:
        return "? ep"
    return " + ".join(_done_of(e, planned_epochs(stage, preset)) for stage, e in stages.items()) + " ep"


def _done_of(done: int | None, planned: int | None) -> str:
    if done is None:
        return "?"
    return f"{done}/{planned}" if planned is not None and done < planned else str(done)


CellKey = tuple[str, str, str, bool, str]  # attack, aux, test trigger, is the control, threshold rule


def _cell_records(recs: list[dict[str, Any]],
                  test: str) -> tuple[dict[CellKey, dict[str, Any]], list[tuple[str, str, str]]]:
    """The DeDe records of one test set by (attack, aux, test trigger, is the control, threshold rule), and the
    (attack, aux, test trigger) rows in the tables' order."""
    by: dict[CellKey, dict[str, Any]] = {}
    for r in recs:
        if r.get("test") == test and r.get("detector", "dede") in DEDE_DETECTORS and "aux_kind" in r:
            attack = r.get("control_for") or r["attack"]
            by[(attack, r["aux_kind"], r["test_trigger"], r["attack"] == "none", r["threshold_rule"])] = r
    rows = sorted({(k[0], k[1], k[2]) for k in by},
                  key=lambda k: (_order(k[0]), AUXES.index(aux_kind(k[1])), k[1], k[2]))
    return by, rows


def detection_lines(recs: list[dict[str, Any]], test: str, preset: str) -> list[str]:
    by, rows = _cell_records(recs, test)
    lines = ["| attack | test trigger | aux set | AUC | AUC control | paper AUC | TPR / FPR at fpr@0.01 (deployed) "
             "| control TPR / FPR | TPR / FPR at paper-1.5x | paper TPR / FPR | TPR@1%FPR | wall: DeDe training "
             "(epochs) + evaluation | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for attack, aux, trig in rows:
        bd, ctl = by.get((attack, aux, trig, False, "fpr@0.01")), by.get((attack, aux, trig, True, "fpr@0.01"))
        pap = by.get((attack, aux, trig, False, "paper-1.5x"))
        if bd is None:
            continue
        paper = paper_detection(test, "dede", PAPER_AUX.get(kind := aux_kind(aux), kind), attack)
        goal = TARGET_AUC.get(attack, 0.9)
        verdict = "-" if preset != "cpu" else f"{'met' if bd['auc'] >= goal else 'missed'} (>= {goal})"
        lines.append(
            f"| {attack} | {trig} | {_aux_label(bd, ctl)} | {fmt(bd['auc'])} | {fmt(ctl['auc']) if ctl else '-'} | "
            f"{fmt(paper[2]) if paper else '-'} | {_pct(bd['tpr'])} / {_pct(bd['fpr'])} | "
            f"{(_pct(ctl['tpr']) + ' / ' + _pct(ctl['fpr'])) if ctl else '-'} | "
            f"{(_pct(pap['tpr']) + ' / ' + _pct(pap['fpr'])) if pap else '-'} | "
            f"{(f'{paper[0]:.1f} / {paper[1]:.1f}') if paper else '-'} | {fmt(bd.get('tpr_at_1pct_fpr'))} | "
            f"{'>= ' if bd.get('train_wall_partial') else ''}{fmt(bd.get('train_wall_s'), 0)} s "
            f"({_done_of(bd.get('dede_epochs'), planned_epochs('dede', preset))} ep) + "
            f"{fmt(bd.get('eval_wall_s'), 0)} s | {verdict} |")
    return [*lines, ""]


def fired_lines(recs: list[dict[str, Any]]) -> list[str]:
    """Balanced test set, deployed threshold: each cell's triggered images split by whether the backdoor fired
    on them (the backdoored encoder's kNN class is the target), the control scored on the same images."""
    by, all_rows = _cell_records(recs, "balanced")
    bd = {k[:4]: r for k, r in by.items() if r.get("deployed") and "n_fired" in r}
    rows = [k for k in all_rows if (*k, False) in bd]
    if not rows:
        return []
    lines = ["| attack | test trigger | aux set | fired / not fired (of the non-target images) | AUC all | "
             "AUC fired | AUC not fired | control AUC fired / not fired | TPR fired / not fired at fpr@0.01 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for attack, aux, trig in rows:
        r, ctl = bd[(attack, aux, trig, False)], bd.get((attack, aux, trig, True))
        lines.append(f"| {attack} | {trig} | {_aux_label(r, ctl)} | {r['n_fired']} / {r['n_unfired']} | "
                     f"{fmt(r['auc'])} | {fmt(r['auc_fired'])} | {fmt(r['auc_unfired'])} | "
                     f"{(fmt(ctl['auc_fired']) + ' / ' + fmt(ctl['auc_unfired'])) if ctl else '-'} | "
                     f"{_pct(r['tpr_fired'])} / {_pct(r['tpr_unfired'])} |")
    return [*lines, ""]


def _aux_label(r: dict[str, Any], control: dict[str, Any] | None = None) -> str:
    if drop := r.get("dede_drop_worst"):
        return f"{r['aux']}, robust (drop_worst {drop:g})"
    if dense := r.get("dede_drop_dense"):
        return (f"{r['aux']}, dense-filtered (drop_dense {dense:g}: {fmt(r.get('aux_poisoned_dropped'))} of "
                f"{fmt(r.get('aux_poisoned'))} triggered left out"
                + (f"; control: {fmt(control.get('aux_poisoned_dropped'))}" if control else "") + ")")
    if (n := r.get("aux_train_images")) and str(r.get("aux_kind")).endswith(f"-{n}"):  # ood-<set>-<n>: a cut set
        return f"{r['aux']}, {n:,} training images"
    return str(r["aux"])


def baseline_lines(recs: list[dict[str, Any]], test: str) -> list[str]:
    """ASSET and DECREE rows of Tables 1 / 3, on the same pools as DeDe, with the paper's numbers."""
    rows = sorted((r for r in recs if r.get("test") == test and r.get("detector") in ("asset", "decree")),
                  key=lambda r: (r["detector"], _order(r["attack"])))
    if not rows:
        return []
    lines = ["| baseline | attack | AUC (last epoch) | AUC (best epoch, oracle) | TPR / FPR at its threshold | "
             "paper TPR / FPR / AUC | ASSET training set | ASSET step 2: flagged, poisoned share (training set's) | "
             "wall |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper = paper_detection(test, r["detector"], "id", r["attack"])
        lines.append(f"| {r['detector']} ({r['threshold_rule']}) | {r['attack']} | {fmt(r['auc'])} | "
                     f"{fmt(r.get('auc_best_epoch'))} | {_pct(r['tpr'])} / {_pct(r['fpr'])} | "
                     + (f"{paper[0]:.1f} / {paper[1]:.1f} / {paper[2]:.3f}" if paper else "-")
                     + f" | {r.get('aux') if r['detector'] == 'asset' else '-'} | {_flag_share(r)} | "
                     f"{fmt(r.get('baseline_wall_s'), 0)} s |")
    return [*lines, ""]


def _flag_share(r: dict[str, Any]) -> str:
    """How often ASSET's outlier step flagged a poisoned training sample, next to the poison's share of the
    training set: step 3 can only learn the trigger if the first is well above the second."""
    flagged, hit, rate = r.get("asset_flagged"), r.get("asset_flagged_poisoned"), r.get("asset_train_poison_rate")
    if flagged is None or hit is None or rate is None:
        return "-"
    share = f"{_pct(hit / flagged)}%" if flagged else "-"
    return f"{flagged}, {share} ({_pct(rate)}%)"


def verdict_lines(recs: list[dict[str, Any]]) -> list[str]:
    """DECREE's encoder-level verdicts (PL1 < 0.1 = trojaned) for every attacked and clean encoder."""
    rows = sorted((r for r in recs if r.get("kind") == "verdict"),
                  key=lambda r: (_order(r["attack"]), r["encoder_role"]))
    notes = [r["note"] for r in recs if r.get("kind") == "note"]
    untestable = {(r["attack"], r["test_trigger"]) for r in recs  # DeDe's extra test triggers (the noise patch)
                  if r.get("test_trigger") and r["attack"] != "none" and not decree_applicable(r["test_trigger"])}
    notes += [f"per-sample DECREE not applicable to the {t} test of {a}: it is not a fixed patch"
              for a, t in sorted(untestable) if any(v["attack"] == a for v in rows)]
    if not rows:
        return []
    lines = ["| attack | encoder | PL1 | verdict | best mean abs cos | inversion steps | wall |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = ("trojaned" if r["trojaned"] else "clean") + ("" if r["found"] else " (cos target never reached)")
        lines.append(f"| {r['attack']} | {r['encoder_role']} | {fmt(r['pl1'])} | {verdict} | {fmt(r['best_cos'])} | "
                     f"{r['steps']} | {fmt(r['baseline_wall_s'], 1)} s |")
    return [*lines, "", *(f"- {n}" for n in notes), ""]


def downstream_lines(recs: list[dict[str, Any]]) -> list[str]:
    """Tables 2 and 4: CA / ASR (%) per training set x defence (rows) and attack (columns), paper in brackets."""
    def column(r: dict[str, Any]) -> str:
        return r["attack"] if r["attack"] != "none" else f"none ({r['bundle'].split('-')[1]})"

    lines: list[str] = []
    for dataset in sorted({r["dataset"] for r in recs}):
        rows = [r for r in recs if r["dataset"] == dataset]
        cols = sorted({column(r) for r in rows}, key=lambda c: (not c.startswith("none"), _order(c), c))
        by = {(column(r), r["train_set"], r["detector"]): r for r in rows}
        kinds = [("no defence, poisoned-1% training set", "poisoned-1%", "none", "no-defence-poisoned"),
                 ("no defence, clean training set", "clean", "none", "no-defence-clean"),
                 ("DeDe (deployed fpr@0.01), poisoned-1%", "poisoned-1%", "dede", "dede"),
                 ("DeDe (paper-1.5x), poisoned-1%", "poisoned-1%", "dede@paper-1.5x", None),
                 ("DeDe, out-of-distribution aux (deployed), poisoned-1%", "poisoned-1%", "dede-ood", None),
                 ("DeDe, robust training on the poisoned aux (deployed), poisoned-1%", "poisoned-1%",
                  ROBUST_DETECTOR, None),
                 ("DeDe, the poisoned aux dense-filtered (deployed), poisoned-1%", "poisoned-1%",
                  FILTERED_DETECTOR, None),
                 ("DECREE (patch triggers), poisoned-1%", "poisoned-1%", "decree", None),
                 ("ASSET (fitted on the set it filters), poisoned-1%", "poisoned-1%", "asset", "asset")]
        lines += [f"#### Downstream {dataset} (paper: Table {'2' if dataset == 'cifar10' else '4'})", "",
                  "| defence / training set | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for label, train_set, det, paper_row in kinds:
            cells = []
            for c in cols:
                r = by.get((c, train_set, det))
                # the paper's "no attack" column is its clean SimCLR encoder: no numbers for our clean CLIP
                key = "" if c.startswith("none") and c != "none (simclr)" else c.split(" ")[0]
                paper = DOWNSTREAM.get(dataset, {}).get(paper_row or "", {}).get(key)
                cells.append("-" if r is None else f"{_pct(r['ca'])} / {_pct(r['asr'])}"
                             + (f" ({paper[0]:.1f} / {paper[1]:.1f})" if paper else ""))
            if any(v != "-" for v in cells):
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def asset_downstream_note(recs: list[dict[str, Any]]) -> str:
    """How ASSET filtered, from its downstream records (empty when there are none)."""
    if not recs:
        return ""
    sizes = ", ".join(f"{n:,}" for n in sorted({r["asset_train_images"] for r in recs}))
    trusted = ", ".join(f"{n:,}" for n in sorted({r["trusted_images"] for r in recs}))
    return ("ASSET, a poisoned-data detector, is fitted on the poisoned training set it filters (its labels as the "
            f"user holds them; its offset classifier trains on {sizes} images of it and then scores every one; its "
            f"base set is {trusted} trusted clean images of that split), removes what its `get_t` threshold flags "
            "there, and flags test inputs with the same classifier and threshold, each labelled with the class the "
            "downstream classifier predicts for it (a deployed filter has no other label; for a hijacked triggered "
            "input that is the target, as the official script labels its triggered test images); table below the "
            "downstream tables. ")


def asset_filter_lines(recs: list[dict[str, Any]]) -> list[str]:
    """What ASSET removed as a downstream filter, per attack and dataset (its downstream records)."""
    if not recs:
        return []
    lines = ["ASSET as a downstream filter (poisoned-1% training set):", "",
             "| attack | dataset | training images removed | poisoned removed | test inputs flagged: clean / triggered "
             "| ASSET epochs, step-2 flags | wall (cell) |", "|---|---|---|---|---|---|---|"]
    for r in recs:
        lines.append(f"| {r['attack']} | {r['dataset']} | {r['n_train_removed']} of {r['n_train']} | "
                     f"{r['n_poison_removed']} of {r['n_poison_train']} | {r['test_clean_flagged']} of "
                     f"{r['n_test_clean']} / {r['test_triggered_flagged']} of {r['n_test_triggered']} | "
                     f"{r['asset_epochs']}, {r['asset_flagged']} | {r['wall_s']:.0f} s |")
    return [*lines, ""]


RetrainKey = tuple[str, str, str, str, bool]  # (preset, variant, cell, test trigger, is the control)


def _deployed_dede(records: list[dict[str, Any]],
                   detectors: tuple[str, ...] = ("dede",)) -> dict[RetrainKey, dict[str, Any]]:
    """The balanced-test records of ``detectors`` at the deployed threshold, by ``RetrainKey`` (variant "" for the
    plain grid)."""
    return {(r.get("preset", "?"), r.get("variant", ""), r["cell"], r["test_trigger"], r["attack"] == "none"): r
            for r in records if "aux_kind" in r and r.get("test") == "balanced" and r.get("deployed")
            and r.get("detector", "dede") in detectors}


def _retrain_pairs(by: dict[RetrainKey, dict[str, Any]]) -> list[tuple[RetrainKey, RetrainKey]]:
    """(the plain grid's key, the retrained key) of every backdoored detector's record in a ``retrain`` variant's
    grid (``reproduce.VARIANTS``) whose cell the plain grid of the same preset also has."""
    pairs = []
    for key in by:
        preset, variant, cell, trigger, control = key
        plain = (preset, "", cell, trigger, False)
        if not control and (v := VARIANTS.get(variant)) is not None and v.retrain and plain in by:
            pairs.append((plain, key))
    return sorted(pairs, key=lambda p: (_order(by[p[0]]["attack"]), p[0][2], p[0][3], p[1][1]))


def retrain_lines(records: list[dict[str, Any]]) -> list[str]:
    """The plain grid's cells next to the same cells of grids that trained the same recipe again (pre-training,
    attack and detector): how far one retrain moves a number, summarised over the attacks' own triggers."""
    by = _deployed_dede(records)
    pairs = _retrain_pairs(by)
    if not pairs:
        return []
    lines = ["## Retrains: the same cells trained again", "",
             "Grids of the variants that train the plain grid's recipe again (" +
             ", ".join(f"`{v}`" for v, var in VARIANTS.items() if var.retrain) + "; every stage trained anew, from "
             "SimCLR or CLIP pre-training to the detector) repeat some of the plain grid's cells. One retrain is "
             "how far a number in the tables above can move with nothing changed but the run. Balanced test, "
             "deployed threshold (`fpr@0.01`); ASR of the attacked encoder as in the attack tables; TPR / FPR in %.",
             "",
             "| grid | cell | test trigger | ASR plain / retrained | AUC plain / retrained (difference) | "
             "TPR / FPR plain | TPR / FPR retrained | control AUC plain / retrained (difference) |",
             "|---|---|---|---|---|---|---|---|"]
    ctl_deltas: dict[tuple[str, str, float, float], float] = {}
    bad_deltas = []
    for old_key, new_key in pairs:
        old, new, variant = by[old_key], by[new_key], new_key[1]
        c_old, c_new = by.get((*old_key[:4], True)), by.get((*new_key[:4], True))
        control, own_trigger = "-", not _extra_trigger(old)
        if c_old and c_new:
            control = f"{fmt(c_old['auc'])} / {fmt(c_new['auc'])} ({c_new['auc'] - c_old['auc']:+.3f})"
            clean = ATTACKS[old["attack"]]["clean"]
            if own_trigger:  # the same pair of numbers from two grids (a control copied into a second grid): once
                ctl_deltas[(clean, old["aux"], c_old["auc"], c_new["auc"])] = c_new["auc"] - c_old["auc"]
        if own_trigger:
            bad_deltas.append(new["auc"] - old["auc"])
        lines.append(f"| {variant} | {old['cell']} | {old['test_trigger']} | {fmt(old.get('attack_asr'))} / "
                     f"{fmt(new.get('attack_asr'))} | {fmt(old['auc'])} / {fmt(new['auc'])} "
                     f"({new['auc'] - old['auc']:+.3f}) | {_pct(old['tpr'])} / {_pct(old['fpr'])} | "
                     f"{_pct(new['tpr'])} / {_pct(new['fpr'])} | {control} |")
    lines += ["", "With each attack's own trigger (other test triggers reuse the same detectors):",
              f"- backdoored detectors: {len(bad_deltas)} retrained, AUC difference {_spread(bad_deltas)};",
              f"- their controls: {len(ctl_deltas)} rows (a control copied into a second grid counts once), AUC "
              f"difference {_spread(list(ctl_deltas.values()))}.", ""]
    return lines


def seed_lines(records: list[dict[str, Any]]) -> list[str]:
    """The detectors of ``reproduce.SEED_REPEATS`` trained again with other seeds (nothing else changed: the same
    encoders, auxiliary set and steps): each seed's row, then the mean and spread of the AUCs."""
    by = _deployed_dede(records)
    groups: dict[tuple[str, str, str, str], dict[int, RetrainKey]] = defaultdict(dict)  # seed -> the record's key
    for key, r in by.items():
        preset, variant, cell, trigger, control = key
        if not control and not _extra_trigger(r) and (repeat := seed_repeat(variant)) is not None:
            groups[(preset, repeat[0], cell, trigger)][repeat[1]] = key
    groups = {k: seeds for k, seeds in groups.items() if len(seeds) > 1}
    if not groups:
        return []
    lines = ["## Seed repeats: the same detector trained with other seeds", "",
             "The detector and its control of a variant in `reproduce.SEED_REPEATS`, trained again with "
             "`--set seed=k` (another initialisation, mask stream, held-out split and, for `aux_crops`, other "
             "crops) on the same encoders, auxiliary set and number of steps (`make reproduce-<variant>-seed<k>`; "
             "seed 0 is the variant's own grid; a `-content` variant's seed k is the seed-k grid's detectors with "
             "the content-adjusted score). The spread is how far one run of a row can move with nothing "
             "changed but the detector's seed. Balanced test, deployed threshold (`fpr@0.01`); TPR / FPR in %.", "",
             "| variant | cell | seed | AUC | control AUC | AUC - control | TPR / FPR | TPR@1%FPR |",
             "|---|---|---|---|---|---|---|---|"]
    summary = []
    for (preset, variant, cell, _), seeds in sorted(groups.items()):
        aucs, ctls = [], []
        for seed, key in sorted(seeds.items()):
            r, c = by[key], by.get((*key[:4], True))
            aucs.append(r["auc"])
            ctls += [c["auc"]] if c else []
            lines.append(f"| {variant} | {cell} | {seed} | {fmt(r['auc'])} | {fmt(c['auc']) if c else '-'} | "
                         f"{fmt(r['auc'] - c['auc']) if c else '-'} | {_pct(r['tpr'])} / {_pct(r['fpr'])} | "
                         f"{fmt(r.get('tpr_at_1pct_fpr'))} |")
        summary.append(f"- `{variant}`, {cell} ({preset} preset), {len(aucs)} seeds: AUC {_mean_sd(aucs)}, "
                       f"range {min(aucs):.3f} - {max(aucs):.3f}; control {_mean_sd(ctls)}.")
    return [*lines, "", "Mean and sample standard deviation over the seeds:", "", *summary, ""]


def content_lines(records: list[dict[str, Any]]) -> list[str]:
    """The detectors of a grid next to the same detectors scored with the content-adjusted score by a variant that
    ``rescores`` it (``reproduce.CONTENT_SCORED``): the same decoders, another score and threshold."""
    by = _deployed_dede(records, DEDE_DETECTORS)  # the filtered and robust detectors' cells too

    def rescored(key: RetrainKey) -> RetrainKey | None:
        """The same cell in the grid that ``key``'s variant rescores, if it does."""
        v = VARIANTS.get(key[1])
        return (key[0], v.rescores, *key[2:]) if v is not None and v.rescores else None

    pairs = sorted(((base, key) for key in by if not key[4] and (base := rescored(key)) in by),
                   key=lambda p: (_order(by[p[0]]["attack"]), p[0][1], p[0][2], p[0][3]))
    if not pairs:
        return []
    lines = ["## The content-adjusted score against the paper score", "",
             "The same detectors and controls, scored two ways: the paper's score (the grid named in the first "
             "column) and the content-adjusted score `content@a` (its `-content` grid, `make reproduce-content`): "
             "the paper score divided by the image's content (the squared error of drawing each channel's mean "
             "colour) to the power a, fitted per detector on its auxiliary training images (`service.scores`), with "
             "the threshold calibrated again on the held-out auxiliary images. Balanced test, deployed threshold "
             "(`fpr@0.01`); TPR / FPR in %; a = backdoored / control detector's exponent (r: the correlation of log "
             "paper score and log content over the auxiliary images it was fitted on).", "",
             "| grid | cell | test trigger | a | AUC paper / content (difference) | control AUC paper / content | "
             "AUC - control, paper / content | TPR@1%FPR paper / content | TPR / FPR content |",
             "|---|---|---|---|---|---|---|---|---|"]
    deltas, ctl_deltas, gap_deltas = [], [], []
    for old_key, new_key in pairs:
        old, new = by[old_key], by[new_key]
        c_old, c_new = by.get((*old_key[:4], True)), by.get((*new_key[:4], True))
        exponent = " / ".join(fmt(a) + (f" (r {r['content_fit_r']:.2f})" if "content_fit_r" in r else "")
                              if r and (a := content_exponent(str(r.get("score")))) is not None else "-"
                              for r in (new, c_new))
        control = gaps = "-"
        if c_old and c_new:
            control = f"{fmt(c_old['auc'])} / {fmt(c_new['auc'])}"
            gaps = f"{fmt(old['auc'] - c_old['auc'])} / {fmt(new['auc'] - c_new['auc'])}"
        if not _extra_trigger(old):
            deltas.append(new["auc"] - old["auc"])
            if c_old and c_new:
                ctl_deltas.append(c_new["auc"] - c_old["auc"])
                gap_deltas.append((new["auc"] - c_new["auc"]) - (old["auc"] - c_old["auc"]))
        lines.append(f"| {old_key[1] or old_key[0]} | {old['cell']} | {old['test_trigger']} | {exponent} | "
                     f"{fmt(old['auc'])} / {fmt(new['auc'])} ({new['auc'] - old['auc']:+.3f}) | {control} | {gaps} | "
                     f"{fmt(old.get('tpr_at_1pct_fpr'))} / {fmt(new.get('tpr_at_1pct_fpr'))} | "
                     f"{_pct(new['tpr'])} / {_pct(new['fpr'])} |")
    return [*lines, "", "With each attack's own trigger: backdoored detectors "
            f"{len(deltas)}, AUC difference (content - paper) mean {mean(deltas):+.3f}, from {min(deltas):+.3f} to "
            f"{max(deltas):+.3f}; their controls (a control shared by two cells counts twice) mean "
            + (f"{mean(ctl_deltas):+.3f}, from {min(ctl_deltas):+.3f} to {max(ctl_deltas):+.3f}; the gap over the "
               f"control (AUC - control) mean {mean(gap_deltas):+.3f}, from {min(gap_deltas):+.3f} to "
               f"{max(gap_deltas):+.3f}." if ctl_deltas else "-."), ""]


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{mean(values):.3f}" + (f" +- {stdev(values):.3f}" if len(values) > 1 else "")


def memorisation_lines(records: list[dict[str, Any]]) -> list[str]:
    """Each detector's mean score on its own training images and on its held-out calibration images (both written
    by ``dede train``; ``reproduce.calibration_fields``): a decoder that memorises its auxiliary set scores the images
    it was trained on lower than images it never saw."""
    by = _deployed_dede(records)
    rows = sorted(((k, r) for k, r in by.items() if "score_mean_train" in r and not _extra_trigger(r)),
                  key=lambda kr: (_grid_order(kr[0][0], kr[0][1]), kr[0][2], kr[0][4]))
    if not rows:
        return []
    lines = ["## Training images against held-out images", "",
             "The mean score (the deployed score, `paper`: summed patch error) of each detector's auxiliary "
             "training images and of its held-out auxiliary images, which it never trained on and which set its "
             "threshold; both from the run's `calibration.json`, for the grids whose runs are on the machine that "
             "published them. A ratio well above 1 means the decoder reconstructs the images it was trained on "
             "better than new ones of the same set: it memorises them. With `aux_crops` the training images are the "
             "crops and the held-out ones are whole.", "",
             "| grid | cell | detector | epochs | training images | mean score, training | mean score, held-out | "
             "held-out / training |",
             "|---|---|---|---|---|---|---|---|"]
    for (preset, variant, cell, _, control), r in rows:
        train, hold = r["score_mean_train"], r["score_mean_holdout"]
        lines.append(f"| {grid_label(preset, variant)} | {cell} | {'control' if control else 'backdoored'} | "
                     f"{r.get('dede_epochs', '-')} | {r.get('aux_train_images') or '-'} | {train:.0f} | {hold:.0f} | "
                     f"{hold / train:.3f} |")
    return [*lines, ""]


def _spread(deltas: list[float]) -> str:
    """Mean absolute and largest absolute difference."""
    if not deltas:
        return "-"
    absolute = [abs(d) for d in deltas]
    return f"mean |d| {sum(absolute) / len(absolute):.3f}, largest {max(deltas, key=abs):+.3f}"


def _extra_trigger(r: dict[str, Any]) -> bool:
    """Whether a cell's record scores a test trigger other than its attack's own (``EXTRA_TEST_TRIGGERS``)."""
    attack = r.get("control_for") or r["attack"]
    return r["test_trigger"] in {t for t, _ in EXTRA_TEST_TRIGGERS.get(attack, [])}


def _grid_order(preset: str, variant: str) -> tuple[bool, int, str, str]:
    """Sections in a fixed order, whatever the order of the records: the plain grids (cpu, paper, tiny, others)
    first, then the variants."""
    presets = ("cpu", "paper", "tiny")
    return bool(variant), presets.index(preset) if preset in presets else len(presets), preset, variant


def plain_grid_lines(records: list[dict[str, Any]], figures: str = "figures") -> list[str]:
    """The sections of the plain grids (no variant: cpu, paper, tiny, others in that order); ``figures``: the figures
    folder as the report links it."""
    return _grid_sections([r for r in records if not r.get("variant")], figures)


def variant_grid_lines(records: list[dict[str, Any]], figures: str = "figures") -> list[str]:
    """The sections of the variant grids, then those that set their cells next to the plain grid's (retrains, the
    content-adjusted score, seed repeats, training against held-out scores); ``records``: every grid's, the plain ones
    included (the comparisons need them)."""
    return (_grid_sections([r for r in records if r.get("variant")], figures) + retrain_lines(records)
            + content_lines(records) + seed_lines(records) + memorisation_lines(records))


def _grid_sections(records: list[dict[str, Any]], figures: str) -> list[str]:
    """One section per grid of ``records`` (``_grid_order``)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r.get("preset", "?"), r.get("variant", ""))].append(r)
    lines: list[str] = []
    for (preset, variant), all_recs in sorted(groups.items(), key=lambda kv: _grid_order(*kv[0])):
        grid = grid_label(preset, variant)  # the figures' names
        recs = [r for r in all_recs if "aux_kind" in r]  # the DeDe cells
        attacks = [r for r in all_recs if r.get("kind") == "attack"]
        base = [r for r in all_recs if str(r.get("cell", "")).startswith("baselines-")]
        down = [r for r in all_recs if r.get("kind") == "downstream"]
        asset_down = sorted((r for r in down if r["detector"] == "asset"),
                            key=lambda r: (_order(r["attack"]), r["dataset"]))
        if not recs:
            continue
        first = recs[0]
        commands = sorted({r.get("command", "?") for r in all_recs})
        hardware = sorted({r.get("hardware", "?") for r in all_recs if r.get("kind") != "attack"})
        cells = sorted({r["cell"] for r in recs})
        title = f"preset `{preset}`" + (f", variant `{variant}`" if variant else "")
        about = (f"Variant `{variant}`: {VARIANTS[variant].about} (`dede reproduce --variant {variant}`), to test a "
                 "diagnosis; compare with the same rows of the plain grid. " if variant in VARIANTS else "")
        lines += [f"## Reproduction of the paper's detection tables, {title}", "", about +
                  "Command(s): " + "; ".join(f"`{c}`" for c in commands) + f". Hardware: {'; '.join(hardware)}. "
                  f"Cells: {len(cells)} ({', '.join(cells)}). Test images: {first['n_clean']} clean CIFAR-10 test "
                  "images per cell.", "",
                  "Each DeDe detector is scored through its exported bundle (ONNX Runtime). `AUC control` is the "
                  "same test with the CLEAN encoder the attack started from and its own detector trained on the "
                  "same auxiliary set: it measures how much of the signal is the trigger's own pixels rather "
                  "than the backdoor firing. Aux `cifar10-id-1%` = CIFAR-10 train with 1% triggered (the paper's "
                  "in-distribution set); `*-ood` = an out-of-distribution set (the paper used STL-10, which is "
                  "not available here)" + (ROBUST_NOTE if any(r.get("dede_drop_worst") for r in recs) else "") +
                  (FILTERED_NOTE if any(r.get("dede_drop_dense") for r in recs) else "") +
                  ". TPR/FPR in %. Wall times in seconds. Epochs `n/N`: the stage stopped after n "
                  "of the N epochs its preset schedules (a wall-clock budget, `time_budget_s`, on a short GPU "
                  "loan).", "",
                  "### The attacks", "", *attack_lines(recs + attacks, preset)]
        for test, title in TESTS:
            lines += [f"### {title}", "", *detection_lines(recs, test, preset)]
            fired = fired_lines(recs) if test == "balanced" else []
            if fired:
                lines += ["Did the backdoor fire? The same balanced test, its triggered images split by the "
                          "backdoored encoder's kNN class (the probe of the ASR column, `bundle encoder kNN`): "
                          "fired = the triggered copy of a non-target image lands in the target class (the attack "
                          "success rate counts these), not fired = it does not (the trigger is there, the backdoor "
                          "did not act; a detector of backdoor activations has nothing to see but the trigger's "
                          "pixels). The target class's own images are in neither. Each AUC is the balanced test "
                          "restricted to one subset: its clean images against their own triggered copies. The "
                          "control's detector is scored on the same images. Deployed threshold for the TPRs "
                          "(in %).", "", *fired]
            base_rows = baseline_lines(base, test)
            if base_rows:
                lines += ["Baselines on the same pools (ASSET trained on CIFAR-10 train images poisoned at the "
                          "pool's rate, as the paper describes (`-at-pool-rate`), or at 1% with one run scoring "
                          "both pools, as the official script ran it (`-at-1%`); DECREE's per-sample score for "
                          "patch triggers):", "",
                          *base_rows]
        verdicts = verdict_lines(base + recs)  # the DeDe cells name the extra test triggers
        if verdicts:
            lines += ["### DECREE's encoder-level verdicts", "",
                      "Trigger inversion with clean data only, on each attacked encoder and on the clean encoder it "
                      "came from (the paper stars DECREE's numbers where it flagged the encoder).", "", *verdicts]
        if down:
            lines += ["### Downstream defence (Tables 2 and 4)", "",
                      "A downstream MLP (512-256, dropout 0.5, on L2-normalised embeddings) is trained on the "
                      "downstream set with 1% of its images triggered and relabelled to the target (dirty label) or "
                      "on the clean set, then tested on the clean test set (CA) and on triggered copies of the "
                      "non-target test images (ASR = share classified as the target). DeDe filters both the "
                      "training set and the test inputs; a flagged triggered test input is defended, a flagged "
                      "clean one counts as an error. The DeDe rows use the detector trained on the in-distribution "
                      "auxiliary set with 1% poison (the paper's setting); the out-of-distribution row, the same "
                      "encoder's detector trained on the clean out-of-distribution set (our recommendation)"
                      + ("; the robust row, the detector trained robustly on the in-distribution set (aux "
                         "`id-robust`, a cell of its own: `downstream-robust-<attack>`)"
                         if any(r["detector"] == ROBUST_DETECTOR for r in down) else "")
                      + ("; the dense-filtered row, the detector trained on the in-distribution set without the "
                         "densest share (`drop_dense`) of its embeddings (aux `id-filtered`: "
                         "`downstream-filtered-<attack>`)"
                         if any(r["detector"] == FILTERED_DETECTOR for r in down) else "") + ". "
                      "DECREE filters with the trigger it inverted on the encoder (patch triggers only). "
                      + asset_downstream_note(asset_down) +
                      "CA / ASR in %, the paper's numbers in brackets. "
                      f"Wall time: {sum({r['cell']: r['wall_s'] for r in down}.values()):.0f} s in all.", "",
                      *downstream_lines(down), *asset_filter_lines(asset_down)]
        lines += ["Figures (ROC and score histograms per cell; reconstructions: masked input, reconstruction, "
                  "ground truth for clean and triggered images):", ""]
        for cell in cells:
            extra = sorted({r["test_trigger"] for r in recs if r["cell"] == cell and _extra_trigger(r)})
            lines.append(f"- {cell}: [detection]({figures}/reproduce-{grid}-{cell}.png), "
                         + "".join(f"[detection, {t} trigger]({figures}/reproduce-{grid}-{cell}-{t}.png), "
                                   for t in extra)
                         + f"[reconstructions]({figures}/reproduce-{grid}-{cell}-reconstructions.png)")
        lines.append("")
    return lines
