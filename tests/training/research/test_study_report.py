"""docs/STUDY.md names each axis's encoders and, for filtered cells, how much of the poison the filter found."""

from pathlib import Path
from typing import Any

from training.reporting.results import write_study
from training.research.study import study_order


def _records(axis: str, cell: str, **extra: Any) -> list[dict[str, Any]]:
    out = []
    for enc in ("backdoored", "control"):
        for ratio in (0.75, 0.9, 0.99):
            r = {"axis": axis, "cell": cell, "encoder": enc, "test_mask_ratio": ratio, "score": "paper",
                 "auc": 0.9 if enc == "backdoored" else 0.6, "tpr_at_1pct_fpr": 0.5, "train_wall_s": 10.0,
                 "hardware": "2-core CPU"}
            for key, value in extra.items():
                r[key] = value[enc] if isinstance(value, dict) and enc in value else value
            out.append(r)
    return out


def test_study_report_names_encoders_and_what_the_filter_left_out(tmp_path: Path) -> None:
    dense = {"backdoored": {"n_train": 9000, "n_poisoned": 500, "dense_filter": {"dropped": 450,
                                                                              "poisoned_dropped": 430}},
             "control": {"n_train": 9000, "n_poisoned": 500, "dense_filter": {"dropped": 450, "poisoned_dropped": 7}}}
    records = (_records("epochs", "e10")  # older records: no encoder_dir
               + _records("filter", "p0.05-filtered", aux=dense,
                          encoder_dir={"backdoored": "runs/r/badencoder", "control": "runs/r/simclr"},
                          encoder_quality={"backdoored": {"attack-badencoder:attack_success_rate": 0.97},
                                           "control": {"pretrain-simclr:knn_accuracy": 0.49}}))
    write_study(records, tmp_path / "STUDY.md", study_order())
    text = (tmp_path / "STUDY.md").read_text()
    epochs, filt = text.split("## Axis `filter`")
    assert "Encoders: the `make demo` pair (`runs/demo-cpu`)." in epochs
    assert ("Encoders: backdoored `runs/r/badencoder` (attack-badencoder:attack_success_rate 0.970); "
            "control `runs/r/simclr` (pretrain-simclr:knn_accuracy 0.490).") in filt
    assert "- `p0.05-filtered`: the filter left out 450 of the auxiliary images, 430 of the 500 triggered ones " \
           "(control: 7)" in filt
    assert "| p0.05-filtered | paper | 0.900 / 0.600 / +0.300 |" in filt


def test_one_axis_on_two_encoder_pairs_gets_a_section_and_a_figure_each(tmp_path: Path) -> None:
    pairs = {"runs/r/badencoder": 0.9, "runs/r/drupe": 0.7}
    records = [r | {"pair": pair, "auc": auc if r["encoder"] == "backdoored" else 0.6}
               for pair, auc in pairs.items()
               for r in _records("filter", "p0.05", encoder_dir={"backdoored": pair, "control": "runs/r/simclr"})]
    write_study(records, tmp_path / "STUDY.md", study_order())
    text = (tmp_path / "STUDY.md").read_text()
    bad, drupe = text.split("## Axis `filter` on `runs/r/drupe`")
    assert "## Axis `filter` on `runs/r/badencoder`" in bad and "| p0.05 | paper | 0.900 / 0.600 / +0.300 |" in bad
    assert "| p0.05 | paper | 0.700 / 0.600 / +0.100 |" in drupe and "0.900" not in drupe
    # the control detector is one run shared by both sections: its training time is counted once
    assert "training time 20 s in all)" in bad
    assert "training time 10 s in all; 1 run shared with a section above)" in drupe
    assert "![study-filter](figures/study-filter.png)" in bad
    assert "![study-filter-drupe](figures/study-filter-drupe.png)" in drupe
    assert (tmp_path / "figures" / "study-filter-drupe.png").exists()
