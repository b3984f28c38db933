"""Detection metrics: AUC on raw scores, TPR/FPR at a threshold (labels: 1 = triggered)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def auc(clean: np.ndarray, triggered: np.ndarray) -> float:
    """ROC AUC of ``triggered`` (positives) against ``clean`` scores, both (N,)."""
    return float(roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(triggered))], np.r_[clean, triggered]))


def detection_metrics(clean: np.ndarray, triggered: np.ndarray, threshold: float) -> dict[str, float]:
    return {
        "auc": auc(clean, triggered),
        "tpr": float(np.mean(triggered > threshold)),
        "fpr": float(np.mean(clean > threshold)),
        "n_clean": int(len(clean)),
        "n_triggered": int(len(triggered)),
    }


def tpr_at_fpr(clean: np.ndarray, triggered: np.ndarray, fpr: float) -> float:
    """TPR at the best threshold whose FPR on ``clean`` is <= ``fpr`` (an oracle-threshold summary)."""
    labels = np.r_[np.zeros(len(clean)), np.ones(len(triggered))]
    f, t, _ = roc_curve(labels, np.r_[clean, triggered])
    return float(t[f <= fpr].max())
