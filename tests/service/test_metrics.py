"""The scorer a runner calls observes every model call; the loaded model's series exist from the start."""

from __future__ import annotations

import numpy as np

from service.metrics import Metrics, ObservedScorer
from service.scoring import Scorer
from tests.conftest import DEMO_BUNDLE


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_every_model_call_is_observed(example_images: np.ndarray) -> None:
    scorer, metrics = Scorer.from_bundle(DEMO_BUNDLE), Metrics()
    observed = ObservedScorer(scorer, metrics)
    result = observed(example_images)
    np.testing.assert_array_equal(result.scores, scorer.score(example_images).scores)
    observed(example_images[:2])
    assert sample(metrics, "dede_batch_size_count") == 2 and sample(metrics, "dede_batch_size_sum") == 8
    for stage in ("encoder", "detector"):
        assert sample(metrics, "dede_inference_seconds_count", model=scorer.manifest.name, stage=stage) == 2


def test_the_loaded_models_counters_start_at_zero() -> None:
    metrics = Metrics()
    metrics.model_loaded("m", "3", "CPUExecutionProvider")
    assert sample(metrics, "dede_model_info", model="m", version="3", provider="CPUExecutionProvider") == 1
    assert metrics.registry.get_sample_value("dede_backdoor_alerts_total", {"model": "m"}) == 0
    assert metrics.registry.get_sample_value("dede_images_scored_total", {"model": "m"}) == 0
