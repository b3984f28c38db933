import numpy as np
import pytest

from training.calibrate import calibration_record, parse_rule, threshold_for
from training.metrics import detection_metrics, tpr_at_fpr


def test_paper_rule_is_1_5x_mean_of_aux_scores() -> None:
    aux = np.array([1.0, 2.0, 3.0])
    assert threshold_for("paper-1.5x", aux, np.array([100.0])) == pytest.approx(3.0)


def test_fpr_rule_is_the_conformal_threshold_of_holdout() -> None:
    """fpr@q: score > t exactly when p = (1 + #{held-out >= score}) / (1 + n) <= q."""
    from service.calibration import p_values

    hold = np.arange(1, 1001, dtype=float)
    t = threshold_for("fpr@0.01", np.zeros(3), hold)
    assert t == 991.0 and np.mean(hold > t) <= 0.01  # m = floor(0.01 * 1001) - 1 = 9 scores above it
    cal = np.sort(hold.astype(np.float32))
    probe = np.array([990.5, 991.0, 991.5, 2000.0], dtype=np.float32)
    assert ((p_values(probe, cal) <= 0.01) == (probe > t)).all()
    assert p_values(np.array([2000.0]), cal)[0] == pytest.approx(1 / 1001)  # the smallest p-value
    assert threshold_for("fpr@0.1", np.zeros(3), hold) < t


def test_an_fpr_the_holdout_cannot_reach_is_refused_with_the_count_needed() -> None:
    with pytest.raises(ValueError, match="needs at least 1000 held-out"):
        threshold_for("fpr@0.001", np.zeros(3), np.arange(999, dtype=float))
    assert threshold_for("fpr@0.001", np.zeros(3), np.arange(1000, dtype=float)) == 999.0


def test_conformal_alerts_keep_their_fpr_on_exchangeable_clean_scores() -> None:
    """Calibrate on n clean scores, test on fresh ones from the same distribution: FPR <= q (up to sampling)."""
    rng = np.random.default_rng(0)
    for q in (0.01, 0.001):
        fprs = []
        for _ in range(20):
            t = threshold_for(f"fpr@{q}", np.zeros(3), rng.lognormal(size=2000))
            fprs.append(np.mean(rng.lognormal(size=20000) > t))
        assert np.mean(fprs) <= q * 1.15, (q, np.mean(fprs))


@pytest.mark.parametrize("rule", ["median", "fpr@0", "fpr@1.5", "fpr@x", "paper-2x"])
def test_unknown_rules(rule: str) -> None:
    with pytest.raises(ValueError, match="unknown threshold rule"):
        parse_rule(rule)


def test_record_holds_both_rules_and_stats() -> None:
    rng = np.random.default_rng(0)
    rec = calibration_record("fpr@0.01", rng.random(500), rng.random(300), 0.99)
    assert rec["rule"] == "fpr@0.01" and rec["mask_ratio"] == 0.99
    assert set(rec["alternatives"]) == {"paper-1.5x", "fpr@0.01"}  # fpr@0.001 would need 1000 held-out images
    assert rec["value"] == rec["alternatives"]["fpr@0.01"]
    assert rec["incident"]["rule"] == "fpr@0.00334"  # auto: the strictest q 300 held-out images allow, 1/300 rounded up
    assert rec["incident"]["value"] >= rec["value"]
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
