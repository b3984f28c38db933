"""How visible a backdoor is in embedding space (DRUPE's claim against BadEncoder): triggered vs clean
test embeddings of the attacked encoder, by
- the sliced Wasserstein distance between the two sets (unnormalised embeddings), divided by the mean
  per-dimension std of the clean ones;
- the AUC of a simple outlier detector: distance to the 10th nearest clean train embedding (cosine).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from training.encoders import EncoderSpec, embed
from training.pretrain.knn import probe_split
from training.triggers import make_trigger


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 50) -> torch.Tensor:
    """SWD (p = 2) between two equal-size point sets a, b: (N, E), over random unit directions."""
    dirs = F.normalize(torch.randn(a.shape[1], projections, device=a.device), dim=0)  # (E, P)
    pa, pb = (a @ dirs).sort(0).values, (b @ dirs).sort(0).values  # (N, P)
    return (((pa - pb) ** 2).mean() + 1e-12).sqrt()  # eps: the gradient of sqrt at 0 is infinite


@torch.no_grad()
def embedding_stealth(model: nn.Module, spec: EncoderSpec, dataset: str, trigger: str, n: int = 2000,
                      device: str = "cpu") -> dict[str, float]:
    train, test = probe_split(dataset, spec.input_size, n, seed=1)
    bank = F.normalize(embed(model, train.images, spec, device=device), dim=1)
    clean = embed(model, test.images, spec, device=device)
    trig = embed(model, make_trigger(trigger, spec.input_size).apply(test.images), spec, device=device)
    torch.manual_seed(0)
    swd = sliced_wasserstein(trig, clean) / clean.std(0).mean().clamp(min=1e-6)

    def outlier(e: torch.Tensor) -> np.ndarray:
        sim = F.normalize(e, dim=1) @ bank.T
        return (1 - sim.topk(10, dim=1).values[:, -1]).numpy()

    scores = np.r_[outlier(clean), outlier(trig)]
    labels = np.r_[np.zeros(len(clean)), np.ones(len(trig))]
    return {"swd_normalised": float(swd), "outlier_auc": float(roc_auc_score(labels, scores))}
