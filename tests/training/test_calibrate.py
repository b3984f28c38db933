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


def test_fired_metrics_split_the_triggered_images_by_where_the_backdoor_fired() -> None:
    from training.evaluation.evaluate import fired_metrics

    clean = np.array([1.0, 2.0, 3.0, 4.0, 0.0])  # test image i
    triggered = np.array([9.0, 8.0, 2.5, 0.5, 7.0])  # its triggered copy; image 4 is of the target class
    labels = np.array([0, 1, 2, 1, 3])
    fired = np.array([True, True, False, False, True])  # image 4's "fired" is ignored: target class
    m = fired_metrics(clean, triggered, fired, labels, target=3, threshold=3.0)
    assert m["n_fired"] == 2 and m["n_unfired"] == 2
    assert m["auc_fired"] == 1.0  # 9 and 8 above the clean scores of the same images (1, 2)
    # not fired: images 2 and 3 (clean 3, 4; triggered 2.5, 0.5): no triggered copy above a clean score,
    # although 2.5 is above the clean scores of images 0 and 1, which are not in this subset
    assert m["auc_unfired"] == 0.0
    assert m["tpr_fired"] == 1.0 and m["tpr_unfired"] == 0.0
    none_fired = fired_metrics(clean, triggered, np.zeros(5, bool), labels, target=3, threshold=3.0)
    assert none_fired["n_fired"] == 0 and none_fired["auc_fired"] is None and none_fired["n_unfired"] == 4
