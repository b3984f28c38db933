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

from training.attacks.drupe import sliced_wasserstein
from training.attacks.triggers import make_trigger
from training.encoders import EncoderSpec, embed
from training.knn import probe_split


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
