"""``docs/RESULTS.md``, ``docs/research/VARIANTS.md`` and figures, generated from ``docs/results.json`` (never typed
in); ``docs/research/STUDY.md`` from ``docs/research/study.json``. Every report's figures are in ``docs/figures/``."""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from training.attacks import IMPLANT_MIN_GAIN, implanted
from training.reporting.markdown import fmt
from training.reporting.reproduce import plain_grid_lines, variant_grid_lines

# The paper's AUCs for comparison (DeDe, Table 1 balanced / Table 3 1% triggered, in-distribution aux).
PAPER_AUC = {("badencoder", "balanced"): 0.981, ("badencoder", "unbalanced-1%"): 0.978}
VARIANTS_REPORT = Path("research") / "VARIANTS.md"  # the variant grids' report, relative to RESULTS.md's folder


def figures_dir(report: Path) -> Path:
    """The folder of a report's figures: ``figures/`` next to it, or next to its folder for a report in a
    ``research/`` folder (``docs/research/STUDY.md`` -> ``docs/figures``)."""
    return (report.parent.parent if report.parent.name == "research" else report.parent) / "figures"


def link(target: Path, report: Path) -> str:
    """``target`` as a relative link from ``report``'s folder."""
    return Path(os.path.relpath(target, report.parent)).as_posix()


def anchor(title: str) -> str:
    """The anchor GitHub gives a Markdown heading (``## Reproduction ..., preset `cpu```)."""
    text = re.sub(r"[^\w\- ]", "", title.lstrip("#").strip().lower())
    return "#" + text.replace(" ", "-")


def write_figures(scores: dict[str, dict[str, np.ndarray]], out_dir: Path, prefix: str) -> list[Path]:
    """Score histograms (clean vs triggered, threshold marked) and ROC curves, one PNG each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.5), squeeze=False)
    for ax, (name, sc) in zip(axes[0], scores.items(), strict=True):
        hi = np.quantile(np.r_[sc["clean"], sc["triggered"]], 0.995)
        bins = np.linspace(0, hi, 60)
        ax.hist(sc["clean"], bins, alpha=0.6, label="clean", density=True)
        ax.hist(sc["triggered"], bins, alpha=0.6, label="triggered", density=True)
        ax.axvline(float(sc["threshold"]), color="k", ls="--", label="threshold")
        ax.set_title(f"{'backdoored encoder' if name != 'none' else 'clean encoder (control)'}")
        ax.set_xlabel("DeDe score (sum of squared error)")
        ax.legend()
    hist = out_dir / f"{prefix}-histogram.png"
    fig.tight_layout()
    fig.savefig(hist, dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, sc in scores.items():
        labels = np.r_[np.zeros(len(sc["clean"])), np.ones(len(sc["triggered"]))]
        f, t, _ = roc_curve(labels, np.r_[sc["clean"], sc["triggered"]])
        ax.plot(f, t, label="backdoored" if name != "none" else "control (clean encoder)")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("FPR")
    ax.set_ylabel("TPR")
    ax.legend()
    roc = out_dir / f"{prefix}-roc.png"
    fig.tight_layout()
    fig.savefig(roc, dpi=110)
    plt.close(fig)
    return [hist, roc]


def bundle_lines(names: list[str], models: Path = Path("models")) -> list[str]:
    """How each evaluated bundle was built, from its manifest (training times, hardware, encoder history)."""
    import json

    rows = []
    for name in names:
        f = models / name / "manifest.json"
        if not f.exists():
            continue
        m = json.loads(f.read_text())
        p = m["provenance"]
        hist = "; ".join(
            f"{h.get('stage')} {h.get('epochs', '?')} ep {h.get('wall_s', '?')} s"
            + (f" kNN {h['knn_accuracy']:.3f}" if "knn_accuracy" in h else "")
            + (f" ASR {h['attack_success_rate']:.3f} CA {h['clean_accuracy']:.3f}"
               if "attack_success_rate" in h else "")
            for h in p.get("victim", {}).get("history", []))
        rows.append(f"| {name} | {m['encoder']['architecture']} | {hist} | {p['aux_dataset']} ({p['aux_images']}) | "
                    f"{p['epochs']} ep {p.get('train_wall_s', '?')} s on {p.get('device', '?')} | {p['preset']} |")
    if not rows:
        return []
    return ["## How the bundles were built", "",
            "From each bundle's `manifest.json` (`make -j2 demo`; two jobs at a time, one thread each).", "",
            "| bundle | encoder | encoder history (stage, epochs, wall time, quality) | aux set (images) "
            "| DeDe training | preset |", "|---|---|---|---|---|---|", *rows, ""]


def goal_lines(by: dict[tuple[bool, str, str], dict[str, Any]], scores: list[str], cases: list[str]) -> list[str]:
    """Issue 3's goals, checked per score: backdoored AUC >= 0.95, control AUC <= 0.65, benign alert rate
    <= 2x the clean alert rate (at the 1%-FPR calibration threshold)."""
    lines = ["Goals per score (met / missed, by how much):", ""]
    for sc in scores:
        bad, ctl = by.get((True, sc, "trigger")), by.get((False, sc, "trigger"))
        if not (bad and ctl):
            continue
        benign = [by[(True, sc, c)] for c in cases if c != "trigger" and by.get((True, sc, c), {}).get("benign")]
        limit = 2 * max(bad["clean_alert_rate"], 1e-9)
        over = [r["case"] for r in benign if r["alert_rate"] > limit]
        checks = [
            f"backdoored AUC {bad['auc']:.3f} {'>=' if bad['auc'] >= 0.95 else '<'} 0.95",
            f"control AUC {ctl['auc']:.3f} {'<=' if ctl['auc'] <= 0.65 else '>'} 0.65",
            f"benign alerts above 2x clean ({limit:.3f}): {len(over)} of {len(benign)} cases"
            + (f" ({', '.join(over)})" if over else ""),
        ]
        ok = bad["auc"] >= 0.95 and ctl["auc"] <= 0.65 and not over
        lines.append(f"- `{sc}`: {'all met' if ok else 'not met'}: " + "; ".join(checks) + ".")
    lines.append("")
    return lines


def honesty_lines(records: list[dict[str, Any]]) -> list[str]:
    """Summary per candidate score, then the per-case table for each score (backdoored vs control)."""
    calib = [r for r in records if r["threshold_rule"] == "fpr@0.01-calib"]
    if not calib:
        return []
    first = calib[0]
    by = {(r["attack"] != "none", r["score"], r["case"]): r for r in calib}
    deployed = {(r["attack"] != "none", r["score"], r["case"]): r for r in records
                if r["threshold_rule"].endswith("-deployed")}
    scores = list(dict.fromkeys(r["score"] for r in calib))
    cases = list(dict.fromkeys(r["case"] for r in calib))
    lines = [f"### Honesty evaluation (`{first.get('command', '?')}`)", "",
             f"Hardware: {first.get('hardware', '?')}; wall time {first.get('wall_s', '?')} s; "
             f"{first['n_clean']} clean CIFAR-10 test images and their perturbed copies; every threshold",
             "is the 99th percentile of the same score on 2,000 OTHER clean test images (1% FPR by",
             "construction). Activation = share of non-target images whose kNN class on the BACKDOORED",
             "encoder is the target (benign = within 5 points of clean images). `content`: the content-adjusted",
             "score, its exponent a (backdoored / control) fitted on those 2,000 images. The project's goals:",
             "backdoored AUC >= 0.95 on the trigger, control AUC <= 0.65, benign alert rate <= 2x the clean one.", "",
             "| score | trigger AUC (backdoored) | trigger AUC (control) | trigger alerts (backdoored / control) "
             "| clean alerts | worst benign alerts (case) | mean benign alerts |",
             "|---|---|---|---|---|---|---|"]
    for sc in scores:
        bad, ctl = by.get((True, sc, "trigger")), by.get((False, sc, "trigger"))
        if not bad:
            continue
        benign = [by[(True, sc, c)] for c in cases if c != "trigger" and by.get((True, sc, c), {}).get("benign")]
        worst = max(benign, key=lambda r: r["alert_rate"]) if benign else None
        ctl_auc = fmt(ctl["auc"]) if ctl else "-"
        ctl_alert = fmt(ctl["alert_rate"]) if ctl else "-"
        mean_benign = fmt(float(np.mean([r["alert_rate"] for r in benign]))) if benign else "-"
        label = sc + (f" (a = {bad['content_exponent']:.3f} / {ctl['content_exponent']:.3f})"
                      if "content_exponent" in bad and ctl else "")
        lines.append(f"| {label} | {fmt(bad['auc'])} | {ctl_auc} | {fmt(bad['alert_rate'])} / {ctl_alert} | "
                     f"{fmt(bad['clean_alert_rate'])} | "
                     f"{fmt(worst['alert_rate']) + ' (' + worst['case'] + ')' if worst else '-'} | {mean_benign} |")
    lines.append("")
    lines += goal_lines(by, scores, cases)
    for sc in scores:
        lines += [f"Score `{sc}` per case (alerts at the 1%-FPR calibration threshold; for the score the bundle "
                  "deploys, also at the bundle's own threshold):", "",
                  "| case | activation | benign | alerts backdoored | alerts control | alerts at deployed threshold "
                  "(backdoored / control) | AUC backdoored | AUC control | median spread |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in cases:
            bad, ctl = by.get((True, sc, c)), by.get((False, sc, c))
            if not bad:
                continue
            db, dc = deployed.get((True, sc, c)), deployed.get((False, sc, c))
            dep = f"{fmt(db['alert_rate'])} / {fmt(dc['alert_rate']) if dc else '-'}" if db else "-"
            lines.append(f"| {c} | {fmt(bad['activation_rate'])} | {'yes' if bad['benign'] else 'no'} | "
                         f"{fmt(bad['alert_rate'])} | {fmt(ctl['alert_rate']) if ctl else '-'} | {dep} | "
                         f"{fmt(bad['auc'])} | {fmt(ctl['auc']) if ctl else '-'} | {fmt(bad['spread'])} |")
        lines.append("")
    return lines


def fired_line(bad: dict[str, Any], ctl: dict[str, Any] | None) -> str:
    """One evaluation's triggered images split by whether the backdoor fired (``fired_metrics``), the control
    scored on the same images."""
    def pair(key: str) -> str:
        return f"{bad[key]:.3f}" + (f" (control {ctl[key]:.3f})" if ctl and ctl.get(key) is not None else "")

    return (f"- {bad['test']}, split by whether the backdoor fired ({bad['fired_by']}): fired on {bad['n_fired']} "
            f"of {bad['n_fired'] + bad['n_unfired']} non-target images; AUC of their clean images vs their own "
            f"triggered copies: fired {pair('auc_fired')}, not fired {pair('auc_unfired')}; TPR at the deployed "
            f"threshold: fired {bad['tpr_fired']:.3f}, not fired {bad['tpr_unfired']:.3f}.")


def variants_header(plain: list[str], results: Path, variants: Path) -> list[str]:
    """The top of VARIANTS.md: what a variant is, and links back to RESULTS.md's plain grids (``plain``: their
    lines)."""
    back = link(results, variants)
    grids = [line for line in plain if line.startswith("## ")]
    where = ", ".join(f"[{g.rpartition(', ')[2]}]({back}{anchor(g)})" for g in grids)
    return ["# The variant grids of the paper's detection tables", "",
            f"Generated with [RESULTS.md]({back}) by `dede evaluate` and `dede reproduce` from `docs/results.json`; "
            "do not edit by hand. A variant (`dede reproduce --variant NAME`, its make targets in "
            f"[REPRODUCE.md]({link(variants.parent / 'REPRODUCE.md', variants)})) is the plain grid of "
            "`dede reproduce` with one thing trained or scored differently (the clean encoder's pre-training, the "
            "attacks, the detectors or their score), in a grid of its own, to test a diagnosis; each section says "
            "what its variant changes. Compare its rows with the same rows of the plain grid in RESULTS.md"
            + (f" ({where})" if where else "") + ". After the grids, the sections that set the variants' cells next "
            "to the plain grid's. Figures are in "
            f"[{link(figures_dir(results), variants)}/]({link(figures_dir(results), variants)}/).", ""]


def evaluated_figures(records: list[dict[str, Any]], report: Path) -> list[Path]:
    """The figures of the bundles ``dede evaluate`` recorded (``<bundle>-*.png`` in ``figures_dir(report)``), in
    the records' order: the Figures section of RESULTS.md."""
    bundles = dict.fromkeys(r["bundle"] for r in records if r.get("bundle") and r.get("source") != "reproduce")
    return [f for b in bundles for f in sorted(figures_dir(report).glob(f"{b}-*.png"))]


def write_report(records: list[dict[str, Any]], path: Path, figures: list[Path]) -> None:
    """RESULTS.md at ``path`` (the demo evaluations, the plain reproduction grids, the bundles, the honesty
    evaluation, ``figures``) and, when there are variant grids, ``VARIANTS_REPORT`` next to it (their sections, and
    the sections comparing them with the plain grid), from the same records."""
    honesty = [r for r in records if r.get("test") == "honesty"]
    reproduced = [r for r in records if r.get("source") == "reproduce"]
    records = [r for r in records if r.get("test") != "honesty" and r.get("source") != "reproduce"]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r.get("preset", "?"), r.get("command", "?"))].append(r)
    lines = [
        "# Detection results",
        "",
        "Generated by `dede evaluate` from `docs/results.json`; do not edit by hand. Each section names the",
        "command that produced it, the hardware and the wall time of the evaluation. Scores go through the",
        "exported ONNX bundles (ONNX Runtime), i.e. the service's own scoring path. The demo bundles are",
        "built by `make demo` (see the README); their training times are in each bundle's manifest",
        "(`provenance.train_wall_s`).",
        "",
        "Columns: AUC on raw scores; TPR/FPR at each of the bundle's calibrated thresholds (`fpr@q` = the",
        "conformal threshold of the held-out clean scores: p-value <= q, FPR <= q on exchangeable clean images;",
        "the deployed one is marked; a q below 1/n of the n held-out images is not reachable and not shown;",
        "`paper-1.5x` = 1.5 x mean auxiliary training score);",
        "TPR@1%FPR = best TPR at FPR <= 1% with an oracle threshold; ASR = attack success rate (kNN on the",
        "bundle encoder's clean-train embeddings, triggered non-target test images); CA = clean kNN accuracy.",
        "Attack `none` is the control: the same triggered images through the CLEAN encoder (before the",
        "attack) with its own DeDe detector. DeDe claims to detect the backdoor firing, so the control",
        "should not alert.",
        "",
    ]
    variants = path.parent / VARIANTS_REPORT
    plain = plain_grid_lines(reproduced)
    variant = variant_grid_lines(reproduced, figures=link(figures_dir(path), variants))
    if variant:
        lines += [f"The variant grids of `dede reproduce` and the sections comparing them with the plain grid are in "
                  f"[{VARIANTS_REPORT.as_posix()}]({VARIANTS_REPORT.as_posix()}).", ""]
    for (preset, command), recs in groups.items():
        first = recs[0]
        lines += [f"## `{command}`", "",
                  f"Preset `{preset}`; hardware: {first.get('hardware', '?')}; "
                  f"evaluation wall time {first.get('wall_s', '?')} s.", "",
                  "| attack | aux set | test | rule | AUC | TPR | FPR | TPR@1%FPR | n clean | n trig | ASR "
                  "| CA | paper AUC |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in recs:
            paper = PAPER_AUC.get((r["attack"], r["test"]))
            rule = r["threshold_rule"] + (" (deployed)" if r.get("deployed") else "")
            lines.append(
                f"| {r['attack']} | {r['aux']} | {r['test']} | {rule} | {fmt(r['auc'])} | {fmt(r['tpr'])} | "
                f"{fmt(r['fpr'])} | {fmt(r.get('tpr_at_1pct_fpr'))} | {r['n_clean']} | {r['n_triggered']} | "
                f"{fmt(r.get('attack_asr'))} | {fmt(r.get('encoder_clean_acc'))} | {fmt(paper)} |")
        lines.append("")
        by_attack = {(r["attack"], r["test"]): r for r in recs if r.get("deployed")}
        for test in ("balanced", "unbalanced-1%"):
            bad = next((v for (a, t), v in by_attack.items() if t == test and a != "none"), None)
            ctl = by_attack.get(("none", test))
            if bad and test == "balanced":
                lines.append(f"- The project's demo target, balanced, deployed threshold: AUC {bad['auc']:.3f} "
                             f"({'met' if bad['auc'] >= 0.95 else 'missed'}: >= 0.95), FPR {bad['fpr']:.3f} "
                             f"({'met' if bad['fpr'] <= 0.05 else 'missed'}: <= 0.05).")
            if bad and ctl and test == "balanced" and not implanted(bad.get("attack_asr"), ctl.get("attack_asr")):
                lines.append(f"- The attack did not implant a backdoor: attack success {bad['attack_asr']:.3f} on the "
                             f"attacked encoder against {ctl['attack_asr']:.3f} on the clean one (less than "
                             f"+{IMPLANT_MIN_GAIN}); these rows measure the trigger's pixels, not a backdoor firing.")
            if bad and ctl:
                lines.append(f"- {test}: backdoored AUC {bad['auc']:.3f} vs control AUC {ctl['auc']:.3f} "
                             f"(gap {bad['auc'] - ctl['auc']:+.3f}); alert rate on triggered images "
                             f"{bad['tpr']:.3f} (backdoored) vs {ctl['tpr']:.3f} (control), on clean images "
                             f"{bad['fpr']:.3f} vs {ctl['fpr']:.3f}.")
            if bad and bad.get("n_fired") is not None:
                lines.append(fired_line(bad, ctl))
        lines.append("")
    lines += plain
    lines += bundle_lines(list(dict.fromkeys(r["bundle"] for r in records + honesty if "bundle" in r)))
    if honesty:
        lines += ["## Does an alert mean the backdoor fired?", ""] + honesty_lines(honesty)
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{f.stem}](figures/{f.name})" for f in figures]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    if variant:
        variants.parent.mkdir(parents=True, exist_ok=True)
        variants.write_text("\n".join(variants_header(plain, path, variants) + variant))


def write_study(records: list[dict[str, Any]], path: Path, order: dict[str, list[str]]) -> None:
    """``docs/research/STUDY.md`` and one plot per axis (in ``figures_dir(path)``), from ``docs/research/study.json``;
    ``order``: axis -> its cells in the order the study defines them (two processes may write an axis's cells in any
    order)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a group: one axis run on one encoder pair (``pair``: the backdoored encoder given to `dede study`; records
    # from before the field used the `make demo` pair)
    by = {(r["axis"], r.get("pair"), r["cell"], r["encoder"], r["test_mask_ratio"], r["score"]): r for r in records}
    groups = list(dict.fromkeys((r["axis"], r.get("pair")) for r in records))
    lines = ["# Scale and poisoning study", "",
             "Generated by `dede study` (`make study`) from `docs/research/study.json`; do not edit by hand. Each cell",
             "trains two DeDe detectors with one config: on a backdoored encoder (the `make demo` BadEncoder pair",
             "unless the section names others) and on the clean encoder before the attack (the control). Both score",
             "the same 2,000 clean CIFAR-10 test images and their triggered copies, in PyTorch. AUC backdoored /",
             "control / gap; a detector of the backdoor FIRING has a high first number and a control near 0.5.",
             "TPR@1% = TPR at 1% FPR (oracle threshold).", ""]
    if records:
        lines += [f"Hardware: {records[0].get('hardware', '?')}.", ""]
    fig_dir = figures_dir(path)
    fig_dir.mkdir(parents=True, exist_ok=True)
    counted: set[Any] = set()
    for axis, pair in groups:
        group = [r for r in records if r["axis"] == axis and r.get("pair") == pair]
        first = next(g for g in groups if g[0] == axis) == (axis, pair)
        name = f"study-{axis}" + ("" if first else f"-{Path(pair or 'demo').name}")
        cell_order = order.get(axis, [])
        cells = sorted(dict.fromkeys(r["cell"] for r in group),
                       key=lambda c: cell_order.index(c) if c in cell_order else len(cell_order))
        scores = list(dict.fromkeys(r["score"] for r in group))
        # a detector run: its encoder and config; one shared with an earlier section (the same control) counts there
        runs = {(r.get("encoder_dir") or (axis, r["cell"], r["encoder"]), tuple(r.get("overrides") or ())):
                r["train_wall_s"] for r in group}
        shared = [k for k in runs if k in counted]
        wall = sum(v for k, v in runs.items() if k not in counted)
        counted.update(runs)
        reused = f"; {len(shared)} run{'s' * (len(shared) != 1)} shared with a section above" if shared else ""
        on = f" on `{pair}`" if pair and sum(g[0] == axis for g in groups) > 1 else ""
        lines += [f"## Axis `{axis}`{on} (`dede study --axis {axis}`, training time {wall:.0f} s in all{reused})", "",
                  "| cell | score | " + " | ".join(f"AUC @{t} (bd / ctl / gap)" for t in RATIOS_FOR_REPORT)
                  + " | TPR@1% backdoored @" + "/".join(map(str, RATIOS_FOR_REPORT))
                  + " | TPR@1% control @" + "/".join(map(str, RATIOS_FOR_REPORT)) + " |",
                  "|---|---|" + "---|" * (len(RATIOS_FOR_REPORT) + 2)]
        for cell in cells:
            for sc in scores:
                row = [cell, sc]
                for t in RATIOS_FOR_REPORT:
                    b, c = by.get((axis, pair, cell, "backdoored", t, sc)), by.get((axis, pair, cell, "control", t, sc))
                    row.append(f"{b['auc']:.3f} / {c['auc']:.3f} / {b['auc'] - c['auc']:+.3f}" if b and c else "-")
                for enc in ("backdoored", "control"):
                    row.append(" / ".join(f"{by[(axis, pair, cell, enc, t, sc)]['tpr_at_1pct_fpr']:.3f}"
                                          if (axis, pair, cell, enc, t, sc) in by else "-" for t in RATIOS_FOR_REPORT))
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines += study_encoder_lines(axis, group)
        for cell in cells:
            for enc in ("backdoored", "control"):
                q = by.get((axis, pair, cell, enc, 0.99, scores[0]), {}).get("encoder_quality")
                if axis == "encoder" and q:
                    lines.append(f"- `{cell}` {enc} encoder: " + ", ".join(f"{k} {v:.3f}" for k, v in q.items()))
        for cell in cells:
            filtered = {enc: by.get((axis, pair, cell, enc, 0.99, scores[0]), {}).get("aux", {}).get("dense_filter")
                        for enc in ("backdoored", "control")}
            bd, ctl = filtered["backdoored"], filtered["control"]
            if bd and ctl:
                n = by[(axis, pair, cell, "backdoored", 0.99, scores[0])]["aux"].get("n_poisoned", 0)
                found = (f"{bd['poisoned_dropped']} of the {n} triggered ones (control: {ctl['poisoned_dropped']})"
                         if n else "none triggered (a clean set)")
                lines.append(f"- `{cell}`: the filter left out {bd['dropped']} of the auxiliary images, {found}")
        lines.append("")
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for sc in scores:
            for enc, ls in (("backdoored", "-"), ("control", "--")):
                ys = [by.get((axis, pair, cell, enc, 0.99, sc), {}).get("auc", np.nan) for cell in cells]
                ax.plot(cells, ys, ls, marker="o", label=f"{sc} {enc}")
        ax.set_ylabel("AUC @ test mask 0.99")
        ax.set_title(f"axis: {axis}" + (f" ({Path(pair).name})" if on and pair else ""))
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(fig_dir / f"{name}.png", dpi=100)
        plt.close(fig)
        missing = [c for c in order.get(axis, []) if c not in cells]
        if missing:
            lines += [f"Not run (CPU time; `make study STUDY_SKIP=` runs them): {', '.join(missing)}.", ""]
        lines += [f"![{name}]({link(fig_dir, path)}/{name}.png)", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


RATIOS_FOR_REPORT = (0.75, 0.9, 0.99)


def study_encoder_lines(axis: str, records: list[dict[str, Any]]) -> list[str]:
    """Which encoder pair an axis used (records name it since the ``filter`` axis; older ones used the demo pair,
    except the ``encoder`` axis, whose cells name their pairs)."""
    dirs = {r["encoder"]: r.get("encoder_dir") for r in records}
    if axis == "encoder":
        return []
    if not all(dirs.values()) or len({r.get("encoder_dir") for r in records}) != len(dirs):
        return ["Encoders: the `make demo` pair (`runs/demo-cpu`)."]
    quality = {r["encoder"]: r.get("encoder_quality") or {} for r in records}
    return ["Encoders: " + "; ".join(
        f"{enc} `{path}`" + (" (" + ", ".join(f"{k} {v:.3f}" for k, v in quality[enc].items()) + ")"
                             if quality[enc] else "") for enc, path in sorted(dirs.items())) + "."]


def main() -> None:
    """``python -m training.reporting.results``: rewrite RESULTS.md and research/VARIANTS.md from their JSON
    records."""
    import argparse
    import json

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--results", default="docs/results.json")
    p.add_argument("--report", default="docs/RESULTS.md")
    a = p.parse_args()
    records = json.loads(Path(a.results).read_text())
    write_report(records, Path(a.report), evaluated_figures(records, Path(a.report)))


if __name__ == "__main__":
    main()
