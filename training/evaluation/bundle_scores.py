"""A bundle's scores and embeddings for evaluations and research, through ``service.scoring.Scorer``.

The service scores what a request brings; evaluations score whole test sets, need the embeddings themselves,
or pair images with other images' embeddings. These functions do that with the Scorer's public methods only
(``score``, ``preprocess``, ``encoder``, ``on_device``, ``draw_scores``), so the numbers are the product's own.

- ``score_many``: the scores of any number of images, ``Scorer.score`` batch by batch;
- ``embed_many``: the encoder's embeddings of any number of images;
- ``score_against``: images scored when the decoder draws from other embeddings (``training.research.decompose``);
- ``error_spread``: the share of an image's error held by its worst patches (local = high, global = low); reported
  in evaluations (``training.evaluation.honesty``), not a deployable score on its own.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from service.scoring import Scorer


def score_many(scorer: Scorer, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Scores of uint8 (N, H, W, 3) images, ``scorer.score`` on batches of ``batch_size`` -> (N,) float32."""
    starts = tqdm(range(0, len(images), batch_size), desc="scoring", unit="batch", leave=False,
                  disable=len(images) <= 4 * batch_size)
    out = [scorer.score(np.asarray(images[i : i + batch_size])).scores for i in starts]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def embed_many(scorer: Scorer, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The encoder's embeddings of uint8 (N, H, W, 3) images, in batches of ``batch_size`` -> (N, E)."""
    enc_in = scorer.encoder.get_inputs()[0].name
    starts = tqdm(range(0, len(images), batch_size), desc="embedding", unit="batch", leave=False,
                  disable=len(images) <= 4 * batch_size)
    out = [scorer.encoder.run(None, {enc_in: scorer.preprocess(np.asarray(images[i : i + batch_size]))})[0]
           for i in starts]
    return np.concatenate(out)


def score_against(scorer: Scorer, images: np.ndarray, embeddings: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Scores of uint8 (N, H, W, 3) images when the decoder draws from ``embeddings`` (N, E) instead of the images'
    own, in batches of ``batch_size`` -> (N,) float32. One mask draw (draw 0) and no ``fixed_batch`` padding: with
    ``mask_draws`` 1 and ``fixed_batch`` 0, ``score_against(s, x, embed_many(s, x))`` is ``s.score(x).scores``."""
    if len(embeddings) != len(images):
        raise ValueError(f"{len(images)} images but {len(embeddings)} embeddings")
    out = []
    for i in range(0, len(images), batch_size):
        chunk = images[i : i + batch_size]
        x = scorer.preprocess(chunk)
        e = scorer.on_device(np.ascontiguousarray(embeddings[i : i + batch_size], np.float32))
        out.append(scorer.draw_scores(chunk, x, scorer.on_device(x), e, 1)[0])
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def error_spread(patch_error: np.ndarray, top: float = 0.1) -> np.ndarray:
    """patch_error: (B, N) -> the share of each image's error in its ``top`` fraction of worst patches, (B,) in
    [0, 1]."""
    k = max(1, int(round(top * patch_error.shape[1])))
    worst = -np.sort(-patch_error, axis=1)[:, :k].sum(1)
    return (worst / np.maximum(patch_error.sum(1), 1e-12)).astype(np.float32)
