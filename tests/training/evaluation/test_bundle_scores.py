"""A bundle's scores and embeddings for evaluations, through the Scorer's public methods, on the demo bundle."""

from __future__ import annotations

import numpy as np
import pytest

from service.scoring import Scorer
from tests.conftest import DEMO_BUNDLE
from training.evaluation.bundle_scores import embed_many, error_spread, score_against, score_many


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer.from_bundle(DEMO_BUNDLE)


def test_scores_and_embeddings_in_batches_are_those_of_one_batch(scorer: Scorer, example_images: np.ndarray) -> None:
    whole = score_many(scorer, example_images)
    assert whole.shape == (len(example_images),) and whole.dtype == np.float32
    np.testing.assert_array_equal(whole, scorer.score(example_images).scores)
    np.testing.assert_allclose(score_many(scorer, example_images, batch_size=4), whole, rtol=1e-5)  # two batches
    assert score_many(scorer, example_images[:0]).shape == (0,)
    e = embed_many(scorer, example_images)
    assert e.shape == (len(example_images), scorer.manifest.encoder.embed_dim)
    np.testing.assert_allclose(embed_many(scorer, example_images, batch_size=4), e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e, scorer.run(example_images)["embedding"], rtol=1e-5, atol=1e-6)


def test_scoring_against_an_images_own_embedding_is_its_score(scorer: Scorer, example_images: np.ndarray) -> None:
    own = score_against(scorer, example_images, embed_many(scorer, example_images), batch_size=4)  # two batches
    np.testing.assert_allclose(own, score_many(scorer, example_images), rtol=1e-5)
    # another image's embedding changes the reconstruction, so the score
    swapped = score_against(scorer, example_images, embed_many(scorer, example_images[::-1]))
    assert not np.allclose(swapped, own, rtol=1e-3)
    with pytest.raises(ValueError, match="6 images but 5 embeddings"):
        score_against(scorer, example_images, embed_many(scorer, example_images[:5]))


def test_spread_is_high_for_local_error() -> None:
    local = np.zeros(64)
    local[:4] = 16.0  # a trigger: the error in 4 patches; the other image has the same total over all 64
    spread_local, spread_global = error_spread(np.stack([local, np.ones(64)]))
    assert spread_local == pytest.approx(1.0) and spread_global == pytest.approx(6 / 64)
