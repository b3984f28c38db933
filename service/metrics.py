"""Prometheus metrics (one prefix, base units, counters end in ``_total``, low-cardinality labels).

Each app owns its registry, so several apps (tests) never collide. ``ObservedScorer`` is what the runner calls:
a scorer whose every model call is observed (batch size, time per stage)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, multiprocess

from service.scoring import Scorer, ScoreResult

disable_created_metrics()

RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# the strict cut-offs an operator alerts on, then deciles: on clean traffic p-values are uniform, so each decile
# holds a tenth of them (the drift rule in docker/prometheus/alerts.yml tests that)
P_VALUE_BUCKETS = (0.0001, 0.001, 0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.images_scored = Counter("dede_images_scored", "Images scored", ["model"], registry=r)
        self.alerts = Counter("dede_backdoor_alerts", "Images flagged as backdoor activations", ["model"],
                              registry=r)
        self.incidents = Counter("dede_incidents", "Images past the incident threshold (p-value <= the incident "
                                 "FPR)", ["model"], registry=r)
        self.degenerate = Counter("dede_degenerate_images", "Flat or empty images, answered reason 'degenerate' "
                                  "and not scored as alerts", ["model"], registry=r)
        self.p_value = Histogram("dede_p_value", "Conformal p-value of each scored image (uniform on clean traffic)",
                                 ["model"], buckets=P_VALUE_BUCKETS, registry=r)
        self.calibrated_fpr = Gauge("dede_calibrated_fpr", "The false-positive rate each threshold is calibrated "
                                    "to (level: alert, incident)", ["model", "level"], registry=r,
                                    multiprocess_mode="max")
        self.calibration_images = Gauge("dede_calibration_images", "Held-out clean images the p-values come from",
                                        ["model"], registry=r, multiprocess_mode="max")
        self.score_ratio = Histogram("dede_score_ratio", "Score divided by the threshold (>1 = alert)",
                                     ["model"], buckets=RATIO_BUCKETS, registry=r)
        self.inference_seconds = Histogram("dede_inference_seconds", "Time per stage of a scored batch",
                                           ["model", "stage"], buckets=SECONDS_BUCKETS, registry=r)
        self.batch_size = Histogram("dede_batch_size", "Images per model call", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.errors = Counter("dede_request_errors", "Rejected or failed requests", ["reason"], registry=r)
        self.queue_depth = Gauge("dede_queue_depth", "Images waiting for or in scoring", registry=r,
                                 multiprocess_mode="livesum")
        self._children: dict[str, tuple[Any, ...]] = {}
        self.model_info = Gauge("dede_model_info", "The loaded bundle (value 1)",
                                ["model", "version", "provider"], registry=r, multiprocess_mode="max")

    def exposition_registry(self) -> CollectorRegistry:
        """What ``/metrics`` serves: this process's registry, or with several workers
        (``PROMETHEUS_MULTIPROC_DIR`` set) the values of every worker, merged from their files."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return self.registry
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry

    def observe_images(self, model: str, scores: list[float], flags: list[bool], threshold: float,
                       decode_s: float, p_values: list[float] | None = None, incidents: int = 0,
                       degenerate: int = 0) -> None:
        """Per request: counts, alerts, incidents, score ratios, p-values, decode time. ``scores`` are the scored
        images' (degenerate ones, counted apart, are not among them)."""
        images, alerts, ratio, decode, pvalue, incident, flat = self._per_model(model)
        images.inc(len(scores))
        if any(flags):
            alerts.inc(sum(flags))
        if incidents:
            incident.inc(incidents)
        if degenerate:
            flat.inc(degenerate)
        for s in scores:
            ratio.observe(s / threshold)
        for p in p_values or ():
            pvalue.observe(p)
        decode.observe(decode_s)

    def _per_model(self, model: str) -> tuple[Any, ...]:
        """The labelled children, looked up once per model (``labels()`` costs a lock and a dict lookup)."""
        children = self._children.get(model)
        if children is None:
            children = self._children[model] = (
                self.images_scored.labels(model), self.alerts.labels(model), self.score_ratio.labels(model),
                self.inference_seconds.labels(model, "decode"), self.p_value.labels(model),
                self.incidents.labels(model), self.degenerate.labels(model))
        return children

    def observe_batch(self, model: str, size: int, seconds: dict[str, float]) -> None:
        """Per model call: the batch size and the time of each model stage."""
        self.batch_size.observe(size)
        for stage, sec in seconds.items():
            self.inference_seconds.labels(model, stage).observe(sec)

    def model_loaded(self, model: str, version: str, provider: str, alert_fpr: float | None = None,
                     incident_fpr: float | None = None, calibration_images: int = 0) -> None:
        """The loaded bundle's info series and calibration, and its counters exported at 0 from the start:
        Prometheus's increase() cannot see a first incident on a series that appears with value 1."""
        self.model_info.labels(model, version, provider).set(1)
        self.alerts.labels(model)
        self.images_scored.labels(model)
        self.incidents.labels(model)
        self.degenerate.labels(model)
        self.p_value.labels(model)
        if alert_fpr is not None:
            self.calibrated_fpr.labels(model, "alert").set(alert_fpr)
        if incident_fpr is not None:
            self.calibrated_fpr.labels(model, "incident").set(incident_fpr)
        if calibration_images:
            self.calibration_images.labels(model).set(calibration_images)


def worker_stopped() -> None:
    """With several workers (``PROMETHEUS_MULTIPROC_DIR`` set): drop this process's live gauges from the merged
    values, at shutdown."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())


class ObservedScorer:
    """``scorer.score`` with each model call's batch size and stage times observed in ``metrics``: the function a
    runner (``service.batching``) scores its batches with."""

    __slots__ = ("metrics", "model", "scorer")

    def __init__(self, scorer: Scorer, metrics: Metrics) -> None:
        self.scorer, self.metrics, self.model = scorer, metrics, scorer.manifest.name

    def __call__(self, images: np.ndarray) -> ScoreResult:
        result = self.scorer.score(images)
        self.metrics.observe_batch(self.model, len(images), result.seconds)
        return result
