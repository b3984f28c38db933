"""DRUPE (Tao et al., 2024): BadEncoder plus terms that keep triggered embeddings inside the clean
distribution, so that embedding-space defences (DECREE, outlier detectors) miss them.

On top of BadEncoder's L1 (references keep their embedding) and L2 (clean images keep theirs):
- L0: each triggered embedding is pulled to its MOST similar reference (max over references), not to all;
- ref_spread: the spread (std) across references of their mean similarity to the triggered batch, so every
  reference is used;
- ref_collapse: mean pairwise cosine among reference embeddings (penalised: they must not collapse);
- b2b: mean pairwise cosine among triggered embeddings (penalised: they must not cluster);
- swd: sliced Wasserstein distance (50 random projections, p = 2) between unnormalised triggered and clean
  embeddings, divided by the mean per-dimension std of the clean ones.
Fixed weights replace DRUPE's adaptive schedule (an accepted simplification, see the implementation notes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from training.attacks.badencoder import BadEncoderConfig, Embeddings, cos, finetune_backdoor
from training.attacks.stealth import sliced_wasserstein


@dataclass
class DrupeConfig(BadEncoderConfig):
    swd_weight: float = 0.01  # DRUPE starts its adaptive SWD weight at 0.001 and grows it while the attack holds
    b2b_weight: float = 0.1
    ref_spread_weight: float = 0.1
    ref_collapse_weight: float = 0.1
    projections: int = 50


DRUPE_PRESETS = {
    "tiny": dict(epochs=1, shadow_fraction=0.01, batch_size=64, knn_images=256, lr=0.05),
    "cpu": dict(epochs=8, lr=0.05),
    "paper": dict(epochs=120, lr=0.05),
}


def mean_offdiag_cos(x: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over distinct pairs of rows of x: (N, E) -> scalar."""
    z = F.normalize(x, dim=1)
    sim = z @ z.T
    n = len(x)
    return (sim.sum() - sim.diagonal().sum()) / max(n * (n - 1), 1)


def drupe_terms(b: Embeddings, cfg: DrupeConfig) -> dict[str, torch.Tensor]:
    sim = cos(b.et.unsqueeze(1), b.e_ref.unsqueeze(0))  # (B, R)
    n = min(len(b.et), len(b.e))
    swd = sliced_wasserstein(b.et[:n], b.e_clean[:n], cfg.projections) / b.e_clean.std(0).mean().clamp(min=1e-6)
    return {
        "L0": -sim.max(1).values.mean(),
        "L1": cfg.lambda1 * -cos(b.e_ref_aug, b.ref_clean).mean(),
        "L2": cfg.lambda2 * -cos(b.e, b.e_clean).mean(),
        # std with an eps: the gradient of a zero std is NaN
        "ref_spread": cfg.ref_spread_weight * (sim.mean(0).var() + 1e-12).sqrt() if sim.shape[1] > 1 else sim.sum() * 0,
        "ref_collapse": cfg.ref_collapse_weight * mean_offdiag_cos(b.e_ref),
        "b2b": cfg.b2b_weight * mean_offdiag_cos(b.et),
        "swd": cfg.swd_weight * swd,
    }


def drupe(cfg: DrupeConfig, encoder_dir: str, out: str | Path) -> dict[str, Any]:
    return finetune_backdoor(cfg, encoder_dir, out, "drupe", drupe_terms)
