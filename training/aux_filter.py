"""Dense-clump filter: our defence against a poisoned auxiliary set, applied before DeDe is trained.

A backdoor maps every triggered image to (nearly) one embedding, so the triggered images of a poisoned auxiliary
set form the densest clump of the victim's embeddings: each one's nearest neighbours are other triggered images,
at cosine similarity near 1. Leaving out the ``share`` of auxiliary images with the highest mean similarity to
their ``k`` nearest neighbours removes them before the decoder can learn to redraw the trigger for the target's
embedding (``training.train_dede``, ``drop_dense``). The held-out calibration images are filtered against the
same clump, so a triggered held-out image does not raise the deployed threshold either. Not the paper's method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DENSE_K = 10  # nearest neighbours that measure an embedding's density (TrainConfig.dense_k's default)


def knn_similarity(emb: torch.Tensor, ref: torch.Tensor, k: int, same: bool, chunk: int = 2048) -> torch.Tensor:
    """Mean cosine similarity of each row of ``emb`` (N, E) to its ``k`` most similar rows of ``ref`` (M, E);
    ``same``: ``emb`` is ``ref``, and a row is not its own neighbour. -> (N,) float32 on ``emb``'s device."""
    if k < 1 or k > len(ref) - int(same):
        raise ValueError(f"k={k} nearest neighbours need at least {k + int(same)} reference embeddings, got {len(ref)}")
    a, b = F.normalize(emb.float(), dim=1), F.normalize(ref.float().to(emb.device), dim=1)
    out = []
    for i in range(0, len(a), chunk):
        sim = a[i : i + chunk] @ b.T  # (c, M)
        if same:
            rows = torch.arange(len(sim), device=sim.device)
            sim[rows, rows + i] = -2.0  # below any cosine similarity: never among the k largest
        out.append(sim.topk(k, dim=1).values.mean(1))
    return torch.cat(out) if out else torch.zeros(0, device=emb.device)


@dataclass(frozen=True)
class DenseFilter:
    keep: torch.Tensor  # (N,) bool: auxiliary training images kept
    keep_holdout: torch.Tensor  # (M,) bool: held-out calibration images kept
    threshold: float  # the lowest similarity that was dropped; held-out images at or above it are dropped


def dense_filter(train_emb: torch.Tensor, holdout_emb: torch.Tensor, share: float, k: int = DENSE_K) -> DenseFilter:
    """Drop the ``round(share * N)`` training embeddings (N, E) with the highest k-NN similarity among themselves,
    and the held-out embeddings (M, E) whose similarity to their k nearest training embeddings is as high."""
    if not 0 < share < 1:
        raise ValueError(f"drop_dense must be in (0, 1), got {share}")
    n_drop = int(round(share * len(train_emb)))
    dens = knn_similarity(train_emb, train_emb, k, same=True).cpu()
    keep = torch.ones(len(train_emb), dtype=torch.bool)
    if n_drop == 0:
        return DenseFilter(keep, torch.ones(len(holdout_emb), dtype=torch.bool), float("inf"))
    worst = dens.argsort(descending=True)[:n_drop]
    keep[worst] = False
    threshold = float(dens[worst].min())
    hold = knn_similarity(holdout_emb, train_emb, k, same=False).cpu()
    return DenseFilter(keep, hold < threshold, threshold)
