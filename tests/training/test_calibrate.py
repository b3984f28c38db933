import numpy as np
import pytest

from training.calibrate import calibration_record, parse_rule, threshold_for
from training.metrics import detection_metrics, tpr_at_fpr


def test_paper_rule_is_1_5x_mean_of_aux_scores() -> None:
    aux = np.array([1.0, 2.0, 3.0])
    assert threshold_for("paper-1.5x", aux, np.array([100.0])) == pytest.approx(3.0)


def test_fpr_rule_is_quantile_of_holdout() -> None:
    hold = np.arange(1, 1001, dtype=float)
    t = threshold_for("fpr@0.01", np.zeros(3), hold)
    assert np.mean(hold > t) == pytest.approx(0.01, abs=0.001)
    assert threshold_for("fpr@0.1", np.zeros(3), hold) < t


@pytest.mark.parametrize("rule", ["median", "fpr@0", "fpr@1.5", "fpr@x", "paper-2x"])
def test_unknown_rules(rule: str) -> None:
    with pytest.raises(ValueError, match="unknown threshold rule"):
        parse_rule(rule)


def test_record_holds_both_rules_and_stats() -> None:
    rng = np.random.default_rng(0)
    rec = calibration_record("fpr@0.01", rng.random(500), rng.random(300), 0.99)
    assert rec["rule"] == "fpr@0.01" and rec["mask_ratio"] == 0.99
    assert set(rec["alternatives"]) == {"paper-1.5x", "fpr@0.01"}
    assert rec["value"] == rec["alternatives"]["fpr@0.01"]
    assert rec["aux_train"]["count"] == 500 and rec["holdout"]["count"] == 300
    assert "0.99" in rec["holdout"]["quantiles"]


def test_detection_metrics() -> None:
    clean, trig = np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.5, 5.0])
    m = detection_metrics(clean, trig, threshold=3.0)
    assert m["auc"] == pytest.approx(7 / 8)
    assert m["tpr"] == 1.0 and m["fpr"] == 0.25
    assert tpr_at_fpr(clean, trig, 0.0) == 0.5
