"""kNN classification on L2-normalised embeddings: the label-free quality probe of an encoder and the
judge of whether a backdoor fired (the nearest class of a triggered image is the target class)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from service.scoring import Scorer
from training.data import ImageSet, load_images
from training.evaluation.bundle_scores import embed_many


def probe_split(dataset: str, size: int, n: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """A fixed random subset of ``n`` train images (the kNN bank) and ``n`` test images (the queries)."""
    rng = np.random.default_rng(seed)
    train = load_images(dataset, "train", size)
    test = load_images(dataset, "test", size)
    return train.subset(rng.permutation(len(train))[:n]), test.subset(rng.permutation(len(test))[:n])


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, query: torch.Tensor, k: int = 20,
                temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """bank: (M, E), bank_labels: (M,), query: (Q, E) -> predicted labels (Q,) by weighted cosine kNN."""
    bank = F.normalize(bank.float(), dim=1)
    n_classes = int(bank_labels.max()) + 1
    preds = []
    for i in range(0, len(query), chunk):
        q = F.normalize(query[i : i + chunk].float(), dim=1)
        sim = q @ bank.T  # (q, M)
        top, idx = sim.topk(min(k, len(bank)), dim=1)
        weights = (top / temperature).exp()
        votes = torch.zeros(len(q), n_classes).scatter_add_(1, bank_labels[idx], weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, query: torch.Tensor,
                 query_labels: torch.Tensor, k: int = 20) -> float:
    return float((knn_predict(bank, bank_labels, query, k) == query_labels).float().mean())


class BundleProbe:
    """kNN on a bundle encoder's (ONNX Runtime) embeddings of ``n_bank`` clean train images: the judge of an
    encoder's clean accuracy and of whether a backdoor fired. One bank serves every question asked."""

    def __init__(self, scorer: Scorer, dataset: str, n_bank: int = 10000) -> None:
        train = load_images(dataset, "train", scorer.size)
        idx = np.random.default_rng(0).permutation(len(train))[:n_bank]
        self.scorer = scorer
        self.bank = torch.from_numpy(embed_many(scorer, train.images[idx]))
        self.labels = torch.from_numpy(train.labels[idx])

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> kNN class (N,)."""
        return knn_predict(self.bank, self.labels, torch.from_numpy(embed_many(self.scorer, images))).numpy()

    def fired(self, images: np.ndarray, labels: np.ndarray, target: int) -> np.ndarray:
        """(N,) bool: the images whose kNN class is ``target`` although their label is not (the backdoor fired)."""
        keep = labels != target
        out = np.zeros(len(images), bool)
        out[keep] = self.predict(images[keep]) == target
        return out

    def target_rate(self, images: np.ndarray, labels: np.ndarray, target: int) -> float:
        """Share of the non-target images whose kNN class is ``target`` (the backdoor fired)."""
        return float(np.mean(self.fired(images, labels, target)[labels != target]))
