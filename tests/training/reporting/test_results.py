"""One generation from the records writes RESULTS.md (demo, plain grids) and research/VARIANTS.md (the variant grids
and the sections comparing them with the plain grid); a report in research/ links the figures one folder up."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from training.reporting.results import anchor, figures_dir, link, write_report, write_study
from training.research.study import study_order

PLAIN = "## Reproduction of the paper's detection tables, preset `cpu`"
VARIANT = "## Reproduction of the paper's detection tables, preset `cpu`, variant `badencoder`"


def _grid(auc: float, ctl: float, variant: str = "") -> list[dict[str, Any]]:
    """The badencoder-ood cell of a reproduce grid: backdoored and control, both tests and threshold rules."""
    out: list[dict[str, Any]] = []
    for test in ("balanced", "unbalanced-1%"):
        for rule in ("fpr@0.01", "paper-1.5x"):
            for name, a in (("badencoder", auc), ("none", ctl)):
                out.append({"attack": name, "detector": "dede", "test": test, "threshold_rule": rule, "auc": a,
                            "tpr": 0.5, "fpr": 0.01, "n_clean": 100, "n_triggered": 100, "aux": "x-ood",
                            "aux_kind": "ood", "test_trigger": "badencoder", "trigger": "badencoder",
                            "deployed": rule == "fpr@0.01", "cell": "badencoder-ood", "preset": "cpu",
                            "source": "reproduce", "attack_asr": 0.9 if name != "none" else 0.08,
                            "encoder_clean_acc": 0.5, "train_wall_s": 10.0, "eval_wall_s": 5.0, "dede_epochs": 15,
                            **({"control_for": "badencoder"} if name == "none" else {}),
                            **({"variant": variant} if variant else {})})
    return out


def _headings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("## ")]


def test_a_variant_grid_goes_to_variants_md_and_the_plain_grid_stays_in_results_md(tmp_path: Path) -> None:
    results, variants = tmp_path / "RESULTS.md", tmp_path / "research" / "VARIANTS.md"
    # the badencoder variant retrains the plain grid's recipe: its cells are also set next to the plain grid's
    write_report(_grid(0.947, 0.83, "badencoder") + _grid(0.985, 0.807), results, [])
    main, other = results.read_text(), variants.read_text()
    assert PLAIN in _headings(main) and VARIANT not in _headings(main)
    assert "| 0.985 | 0.807 |" in main and "| 0.947 | 0.830 |" not in main  # each grid's numbers in its own file
    assert _headings(other)[0] == VARIANT and PLAIN not in _headings(other)
    assert "| 0.947 | 0.830 |" in other and "## Retrains: the same cells trained again" in _headings(other)
    assert "Retrains" not in main
    assert "[research/VARIANTS.md](research/VARIANTS.md)" in main  # the one line pointing to it
    # VARIANTS.md is one folder deeper: its figure links and its links back to RESULTS.md say so, and resolve
    assert "(../figures/reproduce-cpu-badencoder-badencoder-ood.png)" in other
    assert "(figures/reproduce-cpu-badencoder-ood.png)" in main
    back = re.findall(r"\]\(\.\./RESULTS\.md(#[^)]*)\)", other)
    assert back == [anchor(PLAIN)] and anchor(PLAIN) == "#reproduction-of-the-papers-detection-tables-preset-cpu"


def test_without_variant_grids_no_variants_report_is_written(tmp_path: Path) -> None:
    write_report(_grid(0.985, 0.807), tmp_path / "RESULTS.md", [])
    assert PLAIN in (tmp_path / "RESULTS.md").read_text()
    assert "VARIANTS.md" not in (tmp_path / "RESULTS.md").read_text()
    assert not (tmp_path / "research").exists()


def test_a_research_report_keeps_its_figures_in_the_docs_figures_folder(tmp_path: Path) -> None:
    report = tmp_path / "research" / "STUDY.md"
    assert figures_dir(report) == tmp_path / "figures" and figures_dir(tmp_path / "RESULTS.md") == tmp_path / "figures"
    assert link(tmp_path / "figures", report) == "../figures"
    records = [{"axis": "epochs", "cell": "e10", "encoder": enc, "test_mask_ratio": ratio, "score": "paper",
                "auc": 0.9 if enc == "backdoored" else 0.6, "tpr_at_1pct_fpr": 0.5, "train_wall_s": 10.0}
               for enc in ("backdoored", "control") for ratio in (0.75, 0.9, 0.99)]
    write_study(records, report, study_order())
    assert "![study-epochs](../figures/study-epochs.png)" in report.read_text()
    assert (tmp_path / "figures" / "study-epochs.png").exists() and not (report.parent / "figures").exists()
