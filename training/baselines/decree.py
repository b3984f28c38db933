"""DECREE (Feng et al., CVPR 2023): is this encoder trojaned? Invert a trigger with clean images only.

As in ``GiantSeaweed/DECREE: main.py`` (read, not copied):
- mask m = tanh(m') / (2 - eps) + 0.5, one (H, W) map; pattern p = 255 * (tanh(p') / (2 - eps) + 0.5),
  (H, W, 3); both start uniform random (``mask_init='rand'``); eps = 1e-7.
- x' = clip((1 - m) * x + m * p, 0, 255) in pixel space, then normalised like any input.
- loss = -(mean off-diagonal pairwise cosine of the embeddings of x') + lambda * ||m||_1, where the L1 is taken
  over DECREE's (H, W, 3) copy of the mask, i.e. 3 * sum(m) (so lambda keeps DECREE's scale).
- Adam (betas 0.5, 0.9), lr 0.5 for the first 30 epochs, 0.1 until 50, then 0.05 (CIFAR-size encoders;
  ImageNet/CLIP encoders: 200 and 500, ``lr_milestones``); batch 32; at most 1000 epochs.
- lambda schedule, per step: starts at 1e-3; after more than ``patience`` (5) consecutive steps with
  |cos| > 0.99 it is multiplied by 5 (while below 1e5), after more than 5 consecutive steps below it is
  divided by 5 (while >= lambda_min, 1e-5 for CIFAR, 1e-7 for ImageNet/CLIP); once lambda is under lambda_min,
  more than 10 further successful steps reset it to 1e-3.
- the best mask is the one of smallest L1 among the steps with |cos| > 0.99 (the mask that produced that
  cos, before the step's update). Early stop at the end of an epoch whose mean |cos| > 0.99 once the best L1
  has not improved for more than ``early_stop_patience`` (10; 35 for ImageNet/CLIP) steps.
- verdict: PL1 = ||m||_1 / (H * W) of the best mask (the 2-D map; DECREE's 3-channel L1 / (3 H W) is the
  same number); PL1 < 0.1 means trojaned. No step reaching |cos| > 0.99 means not trojaned (``found`` False).

Official data: 5 images per class of the CIFAR-10 test split (50 images). DECREE needs gradients through the
encoder: an ONNX encoder is refused.

Per-sample score (the DeDe paper's adaptation, not in public code): the l2 distance between the inverted
trigger and the image content inside the trigger region, mask-weighted, as an RMS in [0, 1] pixel units:
``d(x) = sqrt(sum_hwc m_hw (x_hwc - p_hwc)^2 / (3 sum_hw m_hw))``. A triggered image's content in the region
is CLOSE to the pattern, so ``decree_scores`` returns ``-d`` (HIGHER = more suspicious, in [-1, 0]).
Threshold: ``decree_threshold`` = the (1 - fpr) quantile of the scores of clean images (fpr = 0.01).
DECREE applies to patch triggers only (``DECREE_APPLICABLE``), not to CTRL's frequency trigger or the
randomly placed noise patch.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.encoders import EncoderSpec, OnnxEncoder

EPS = 1e-7
DECREE_APPLICABLE = frozenset({"badencoder", "clip-patch", "badclip"})  # trigger names with a fixed patch


def decree_applicable(trigger: str) -> bool:
    """DECREE inverts a fixed-position patch: not CTRL's frequency trigger nor the random noise patch."""
    return trigger in DECREE_APPLICABLE


@dataclass
class DecreeConfig:
    preset: str = "custom"
    n_images: int = 50  # clean images used (the first n of those given); 0 = all
    batch_size: int = 32
    lr: float = 0.5
    lr_milestones: list[int] = field(default_factory=lambda: [30, 50])  # [200, 500] for ImageNet/CLIP
    lr_later: list[float] = field(default_factory=lambda: [0.1, 0.05])
    beta1: float = 0.5
    beta2: float = 0.9
    lambda_init: float = 1e-3
    lambda_factor: float = 5.0
    lambda_min: float = 1e-5  # 1e-7 for ImageNet/CLIP
    lambda_max: float = 1e5
    patience: int = 5
    lambda_reset_patience: int = 10
    early_stop_patience: int = 10  # 35 for ImageNet/CLIP
    cos_threshold: float = 0.99
    max_epochs: int = 1000
    pl1_threshold: float = 0.1
    seed: int = 0


DECREE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_images=32, max_epochs=40),
    "cpu": dict(),  # DECREE is cheap: 50 images, 2 steps per epoch; the official setting fits a CPU
    "paper": dict(),
    "paper-224": dict(lr_milestones=[200, 500], lambda_min=1e-7, early_stop_patience=35),  # ImageNet/CLIP
}


@dataclass
class DecreeResult:
    """mask (H, W) float32 in [0, 1]; pattern (H, W, 3) float32 in [0, 255]; l1 = sum(mask); pl1 = l1 / (H W);
    best_cos: |mean pairwise cos| the mask reached; found: some step reached cos_threshold (else mask/l1/pl1
    are the last step's); trojaned = found and pl1 < pl1_threshold."""

    mask: np.ndarray
    pattern: np.ndarray
    l1: float
    pl1: float
    best_cos: float
    found: bool
    trojaned: bool
    steps: int
    epochs: int
    final_lambda: float
    wall_s: float
    config: dict[str, Any]

    def to_dict(self, arrays: bool = False) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("mask", "pattern")}
        if arrays:
            out["mask"] = self.mask.round(4).tolist()
            out["pattern"] = self.pattern.round(2).tolist()
        return out


def mean_offdiag_cos(e: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over the distinct pairs of rows of e: (B, E) -> scalar (DECREE's self-cos)."""
    z = F.normalize(e, dim=1)
    sim = z @ z.T  # (B, B)
    n = len(e)
    return (sim.sum() - sim.diagonal().sum()) / (n * (n - 1))


def normalise(x: torch.Tensor, spec: EncoderSpec) -> torch.Tensor:
    """x: (B, 3, H, W) in [0, 1] -> normalised with the encoder's channel mean/std."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def squash(raw: torch.Tensor) -> torch.Tensor:
    """DECREE's bounded parameterisation: raw (any real) -> tanh(raw) / (2 - eps) + 0.5 in (0, 1)."""
    return (torch.tanh(raw) / (2 - EPS) + 0.5).clamp(0, 1)


def unsquash(v: torch.Tensor) -> torch.Tensor:
    """Inverse of ``squash`` for v in [0, 1]."""
    return torch.atanh((v - 0.5) * (2 - EPS))


def stamp(images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """x' = clip((1 - m) x + m p, 0, 255): images (B, H, W, 3) float pixels, mask (H, W), pattern (H, W, 3)."""
    m = mask.unsqueeze(-1)  # (H, W, 1)
    return ((1 - m) * images + m * pattern).clamp(0, 255)


def lr_at(epoch: int, cfg: DecreeConfig) -> float:
    lr = cfg.lr
    for milestone, later in zip(cfg.lr_milestones, cfg.lr_later, strict=True):
        if epoch >= milestone:
            lr = later
    return lr


class LambdaSchedule:
    """DECREE's per-step lambda adaptation (see the module docstring)."""

    def __init__(self, cfg: DecreeConfig) -> None:
        self.cfg, self.value = cfg, cfg.lambda_init
        self.up = self.down = self.reset = 0

    def update(self, success: bool) -> float:
        cfg = self.cfg
        if self.value < cfg.lambda_min and success:
            self.reset += 1
            if self.reset > cfg.lambda_reset_patience:
                self.value, self.up, self.down = cfg.lambda_init, 0, 0
        else:
            self.reset = 0
        self.up, self.down = (self.up + 1, 0) if success else (0, self.down + 1)
        if self.up > cfg.patience:
            if self.value < cfg.lambda_max:
                self.value *= cfg.lambda_factor
            self.up = 0
        elif self.down > cfg.patience:
            if self.value >= cfg.lambda_min:
                self.value /= cfg.lambda_factor
            self.down = 0
        return self.value


def invert_trigger(encoder: nn.Module, spec: EncoderSpec, clean_images: np.ndarray, cfg: DecreeConfig,
                   device: str = "cpu", log: bool = False) -> DecreeResult:
    """Run DECREE on ``encoder`` with clean uint8 images (N, H, W, 3); returns the inverted trigger + verdict."""
    if isinstance(encoder, OnnxEncoder):
        raise TypeError("DECREE needs gradients through the encoder; an ONNX encoder is not differentiable")
    start = time.time()
    gen = torch.Generator().manual_seed(cfg.seed)
    images = torch.from_numpy(clean_images[: cfg.n_images or None]).float().to(device)  # (N, H, W, 3)
    n, h, w = images.shape[:3]
    if n < 2 or cfg.max_epochs < 1:
        raise ValueError("DECREE needs at least 2 clean images (it measures pairwise similarity) and 1 epoch")
    mask_raw = unsquash(torch.rand(h, w, generator=gen)).to(device).requires_grad_(True)  # (H, W)
    pattern_raw = unsquash(torch.rand(h, w, 3, generator=gen)).to(device).requires_grad_(True)  # (H, W, 3)
    opt = torch.optim.Adam([mask_raw, pattern_raw], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    was_training, grads = encoder.training, [p.requires_grad for p in encoder.parameters()]
    encoder.to(device).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    lam = LambdaSchedule(cfg)
    best_l1, best_cos, best = math.inf, 0.0, None
    es_best, es_count, step, epoch = math.inf, 0, 0, 0
    try:
        for epoch in range(cfg.max_epochs):
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch, cfg)
            perm = torch.randperm(n, generator=gen)
            batches = [perm[i : i + cfg.batch_size] for i in range(0, n, cfg.batch_size)]
            if len(batches) > 1 and len(batches[-1]) < 2:  # a lone image has no pair
                batches[-2] = torch.cat(batches[-2:])
                batches.pop()
            cos_epoch = []
            for idx in batches:
                mask, pattern = squash(mask_raw), 255 * squash(pattern_raw)  # (H, W), (H, W, 3)
                x = stamp(images[idx.to(device)], mask, pattern).permute(0, 3, 1, 2) / 255  # (b, 3, H, W)
                cos = mean_offdiag_cos(encoder(normalise(x, spec)))
                l1 = mask.abs().sum()
                loss = -cos + lam.value * 3 * l1  # DECREE's L1 is over its (H, W, 3) mask
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite DECREE loss at step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                c, l1v = abs(cos.item()), l1.item()
                cos_epoch.append(c)
                success = c > cfg.cos_threshold
                if success and l1v < best_l1:
                    best_l1, best_cos = l1v, c
                    best = (mask.detach().cpu().numpy(), pattern.detach().cpu().numpy())
                if best_l1 < math.inf:
                    es_count = es_count + 1 if best_l1 >= es_best else 0
                es_best = min(best_l1, es_best)
                lam.update(success)
                step += 1
            if log and (epoch % 20 == 0 or epoch == cfg.max_epochs - 1):
                print(f"decree epoch {epoch}: cos {np.mean(cos_epoch):.4f} lambda {lam.value:.2e} "
                      f"best pl1 {best_l1 / (h * w):.4f} ({time.time() - start:.0f}s)", flush=True)
            if np.mean(cos_epoch) > cfg.cos_threshold and es_count > cfg.early_stop_patience:
                break
    finally:
        encoder.train(was_training)
        for p, g in zip(encoder.parameters(), grads, strict=True):
            p.requires_grad_(g)
    found = best is not None
    if best is None:  # no step reached the threshold: report the last mask, not trojaned
        best = (squash(mask_raw).detach().cpu().numpy(), 255 * squash(pattern_raw).detach().cpu().numpy())
        best_l1, best_cos = float(best[0].sum()), float(np.mean(cos_epoch))
    pl1 = best_l1 / (h * w)
    return DecreeResult(best[0].astype(np.float32), best[1].astype(np.float32), float(best_l1), float(pl1),
                        float(best_cos), found, bool(found and pl1 < cfg.pl1_threshold), step, epoch + 1,
                        float(lam.value), round(time.time() - start, 1), asdict(cfg))


def decree_scores(result: DecreeResult, images: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Per-sample score: minus the mask-weighted RMS distance (in [0, 1] units) between each image and the
    inverted pattern inside the trigger region: uint8 (N, H, W, 3) -> float64 (N,), HIGHER = more suspicious."""
    m = result.mask.astype(np.float32)[None, :, :, None]  # (1, H, W, 1)
    p = result.pattern.astype(np.float32)[None] / 255  # (1, H, W, 3)
    denom = 3 * max(float(result.mask.sum()), 1e-12)
    out = []
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].astype(np.float32) / 255  # (c, H, W, 3)
        out.append(np.sqrt((m * (x - p) ** 2).sum((1, 2, 3)) / denom))
    return -np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def decree_threshold(result: DecreeResult, clean_images: np.ndarray, fpr: float = 0.01) -> float:
    """The (1 - fpr) quantile of the scores of clean (base / auxiliary) images: flag = score > threshold."""
    return float(np.quantile(decree_scores(result, clean_images), 1 - fpr))


def decree_flags(result: DecreeResult, images: np.ndarray, threshold: float) -> np.ndarray:
    """bool (N,): ``decree_scores > threshold``."""
    return decree_scores(result, images) > threshold
