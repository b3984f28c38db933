"""ASSET (Pan et al., USENIX Security 2023) as the DeDe authors adapted it to SSL encoders.

What their adaptation (``tardisblue9/DeDe: src/Asset_evaluation.py``, built on ``reds-lab/ASSET``) does, and
what this module does the same way:

- The *offset model* C is a fresh supervised image classifier (a CIFAR ResNet-18 with a ``n_classes``-way
  head) trained from scratch on the raw images, Adam lr 1e-4, with two Adam optimisers on the same
  parameters (one per offset direction). The victim encoder is NOT fine-tuned: it only supplies features to
  the outlier MLP, and runs with batch statistics (train-mode BatchNorm, running statistics left untouched).
- Per batch of B (128) shuffled training images x (labels y), with a base batch b of B images drawn from the
  clean base set (the script draws from its first 1000 images only: ``base_pool``):
  1. minimise ``mean_i Var_k C(b_i)_k`` (the variance of C's logits) on the base batch;
  2. fit a fresh MLP V (E -> 512 -> 512 -> 1, ReLU, sigmoid) on the encoder's features: ``mlp_steps`` (10)
     rounds of one Adam step (lr 1e-4) on ``MSE(V(f(x)), 1)`` then one on ``MSE(V(f(b)), 0)``; flag the
     training samples whose V score has adjusted outlyingness > 2 (``adjusted_outlyingness``);
  3. maximise ``CE(C(x_flagged), y_flagged)`` (skipped when nothing is flagged).
- After each epoch, score = ``CE(C(x), y)`` per pool image, C in eval mode. HIGHER = more suspicious.
  10 epochs (30 for CTRL: ``ASSET_EPOCHS``). The paper reports the best epoch, picked with the ground truth;
  ``AssetResult.scores_per_epoch`` keeps every epoch so an evaluator can report both the last and the best.

Labels: the DeDe script uses CIFAR-10's class labels (``CE`` objective), so this needs ``pool_labels``. Its
test pool labelled the triggered copies with the attack's target class, which leaks the ground truth into the
score; callers here should pass every image's own class. ``objective="var"`` is a label-free variant (the
logit variance in steps 3 and in the score, ASSET's commented-out alternative), not what the paper ran.

Transductive or not: the script trains on the poisoned CIFAR-10 train split and scores a separate test pool
with the same poison rate. ``run_asset`` trains on ``train_images`` when given, else on the pool itself.

Threshold (``asset_threshold``): ASSET's ``get_t``: fit one Gaussian (mu, sigma) to the scores at or below the
median and flag scores above ``mu + sigma * sqrt(-2 ln(eps) * sigma * sqrt(2 pi))``, eps = 1e-6 as in ASSET's
demo. That is ASSET's code as written: its parentheses put sigma*sqrt(2 pi) outside the log, so the rule is
not scale-invariant (on CE scores with a small spread it sits barely above the clean mean);
``as_written=False`` gives the intended "density = eps" point. The paper's TPR/FPR for ASSET cannot be traced
to a rule in the DeDe script (it computes accuracies at the pool's median, mean and 90th percentile).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.config import resolve_config
from training.data import load_images
from training.encoders import CifarResNet18, EncoderSpec, to_input
from training.loop import optimizer_step


@dataclass
class AssetConfig:
    preset: str = "custom"
    epochs: int = 10  # 30 for CTRL (ASSET_EPOCHS)
    batch_size: int = 128
    base_pool: int = 1000  # base batches are drawn from the first base_pool base images (0 = all)
    clf_width: int = 64  # the offset classifier: CifarResNet18(width) + a linear head
    n_classes: int = 10
    lr: float = 1e-4
    mlp_hidden: int = 512
    mlp_steps: int = 10
    mlp_lr: float = 1e-4
    ao_threshold: float = 2.0
    objective: str = "ce"  # "ce" (the paper's; needs labels) or "var" (label-free variant)
    encoder_batch_stats: bool = True  # features from the victim with train-mode BatchNorm, as the script
    threshold_eps: float = 1e-6
    score_batch: int = 512
    seed: int = 0


# tiny: seconds, for tests; a stronger MLP and classifier learning rate than the paper so that a few steps
# show the mechanism. cpu: the official schedule with a width-16 offset classifier. paper: the official one.
ASSET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(epochs=2, batch_size=64, base_pool=0, clf_width=4, mlp_hidden=32, mlp_steps=20, mlp_lr=1e-2,
                 lr=1e-3),
    "cpu": dict(epochs=10, clf_width=16),
    "paper": dict(epochs=10, clf_width=64),
}
ASSET_EPOCHS = {"ctrl": 30}  # the official setting; every other attack: 10


def asset_config(attack: str, preset: str) -> AssetConfig:
    """ASSET's config for ``attack`` at ``preset``: the preset's settings with the official epochs per attack
    (``ASSET_EPOCHS``; the tiny preset keeps its own few epochs)."""
    overrides = [] if preset == "tiny" else [f"epochs={ASSET_EPOCHS.get(attack, 10)}"]
    return resolve_config(AssetConfig, ASSET_PRESETS, preset, None, overrides)


# --- robust statistics ---------------------------------------------------------------------------------


def medcouple(x: np.ndarray) -> float:
    """The medcouple (Brys, Hubert & Struyf 2004) of a 1-D sample: a robust skewness in [-1, 1].

    MC = median of h(x_i, x_j) = ((x_j - m) - (m - x_i)) / (x_j - x_i) over pairs x_i <= m <= x_j (m the median).
    Pairs with x_i = x_j = m (ties at the median, k of them on each side) get the special kernel: a k x k block
    with 0 on the anti-diagonal and -1 / +1 on either side of it. O(n^2) time and memory: meant for one batch."""
    z = np.sort(np.asarray(x, dtype=np.float64).ravel())
    if len(z) == 0:
        raise ValueError("medcouple of an empty sample")
    z = z - np.median(z)
    lo, hi = z[z <= 0], z[z >= 0]  # (p,), (q,): median ties appear in both
    diff = hi[:, None] - lo[None, :]  # (q, p), >= 0
    tie = diff == 0  # only where both are exactly the median
    with np.errstate(divide="ignore", invalid="ignore"):
        h = (hi[:, None] + lo[None, :]) / diff
    k = int((z == 0).sum())
    kernel = np.concatenate([h[~tie], np.zeros(k), np.ones(k * (k - 1) // 2), -np.ones(k * (k - 1) // 2)])
    return float(np.median(kernel))


def adjusted_outlyingness(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Adjusted outlyingness (Hubert & Vandervieren 2008, skew-adjusted box plot) of each value: (N,) -> (N,).

    Fences w1 = Q1 - 1.5 e^{-4 MC} IQR, w2 = Q3 + 1.5 e^{3 MC} IQR when MC >= 0 (e^{-3 MC}, e^{4 MC} when
    MC < 0); AO = (x - med) / (w2 - med) above the median, (med - x) / (med - w1) below. AO > 2 is ASSET's
    outlier rule. A value on the median has AO 0; a zero fence distance gives inf (or 0 on the median).
    (ASSET's code takes torch.median, the lower middle value for an even n; this takes the usual median.)"""
    v = x.detach().cpu().double().numpy().ravel() if isinstance(x, torch.Tensor) else np.asarray(x, float).ravel()
    med = float(np.median(v))
    q1, q3 = np.quantile(v, [0.25, 0.75])
    mc = medcouple(v)
    iqr = q3 - q1
    a, b = (-4.0, 3.0) if mc >= 0 else (-3.0, 4.0)
    w1, w2 = q1 - 1.5 * math.exp(a * mc) * iqr, q3 + 1.5 * math.exp(b * mc) * iqr
    dist = np.where(v > med, v - med, med - v)  # (N,)
    scale = np.where(v > med, w2 - med, med - w1)  # (N,)
    with np.errstate(divide="ignore", invalid="ignore"):
        ao = np.where(dist == 0, 0.0, dist / scale)
    return np.where(np.isnan(ao), np.inf, ao)


def asset_threshold(scores: np.ndarray, eps: float = 1e-6, as_written: bool = True) -> float:
    """ASSET's ``get_t``: one Gaussian (GaussianMixture with one component, its reg_covar 1e-6 included)
    fitted to the scores <= the (lower) median; t = mu + sigma * sqrt(-2 ln(eps) * sigma * sqrt(2 pi)) as
    ASSET's code computes it, or with ``as_written=False`` where that Gaussian's density falls to eps:
    t = mu + sigma * sqrt(-2 ln(eps * sigma * sqrt(2 pi))) (scale-aware, and clamped at mu)."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    lower = s[s <= np.quantile(s, 0.5, method="lower")]
    mu, sigma = lower.mean(), math.sqrt(lower.var() + 1e-6)
    if as_written:
        return float(mu + sigma * math.sqrt(-2 * math.log(eps) * sigma * math.sqrt(2 * math.pi)))
    return float(mu + sigma * math.sqrt(max(-2 * math.log(eps * sigma * math.sqrt(2 * math.pi)), 0.0)))


def asset_flags(scores: np.ndarray, eps: float = 1e-6, as_written: bool = True) -> np.ndarray:
    """ASSET's verdict per sample: score > ``asset_threshold(scores, eps, as_written)`` -> bool (N,)."""
    return np.asarray(scores) > asset_threshold(scores, eps, as_written)


# --- the offset procedure ------------------------------------------------------------------------------


class OffsetClassifier(nn.Module):
    """C: a fresh CIFAR ResNet-18 with a linear head; normalised images (B, 3, H, W) -> logits (B, K)."""

    def __init__(self, width: int, n_classes: int) -> None:
        super().__init__()
        self.backbone = CifarResNet18(width)
        self.head = nn.Linear(self.backbone.embed_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def outlier_mlp(dim: int, hidden: int) -> nn.Module:
    """V: features (B, E) -> P(training sample) (B, 1); two hidden ReLU layers, sigmoid output."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1), nn.Sigmoid())


@contextmanager
def frozen_features(encoder: nn.Module, batch_stats: bool) -> Iterator[None]:
    """Run ``encoder`` without gradients, in train mode when ``batch_stats`` (BatchNorm uses the batch's
    statistics, as the script's train-mode copy did); buffers and mode are restored afterwards."""
    was_training = encoder.training
    buffers = {k: v.clone() for k, v in encoder.named_buffers()}
    encoder.train(batch_stats)
    try:
        with torch.no_grad():
            yield
    finally:
        encoder.train(was_training)
        with torch.no_grad():
            for k, v in encoder.named_buffers():
                v.copy_(buffers[k])


def flag_batch(f_train: torch.Tensor, f_base: torch.Tensor, cfg: AssetConfig) -> np.ndarray:
    """Step 2: fit a fresh V to tell training features f_train (b, E) (label 1) from base features f_base
    (B, E) (label 0); return the training samples whose V score has adjusted outlyingness > ao_threshold."""
    v = outlier_mlp(f_train.shape[1], cfg.mlp_hidden).to(f_train.device)
    opt_pos = torch.optim.Adam(v.parameters(), lr=cfg.mlp_lr)
    opt_neg = torch.optim.Adam(v.parameters(), lr=cfg.mlp_lr)
    for _ in range(cfg.mlp_steps):
        for feats, target, opt in ((f_train, 1.0, opt_pos), (f_base, 0.0, opt_neg)):
            out = v(feats).view(-1)  # (n,)
            loss = F.mse_loss(out, torch.full_like(out, target))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        res = v(f_train).view(-1)  # (b,)
    return adjusted_outlyingness(res) > cfg.ao_threshold


def sample_loss(logits: torch.Tensor, labels: torch.Tensor | None, objective: str) -> torch.Tensor:
    """Per-sample offset loss: cross-entropy with the labels, or the logits' variance: (B, K) -> (B,)."""
    if objective == "ce":
        if labels is None:
            raise ValueError("objective 'ce' needs labels")
        return F.cross_entropy(logits, labels, reduction="none")
    if objective == "var":
        return logits.var(dim=1)
    raise ValueError(f"unknown ASSET objective {objective!r}; valid: ce, var")


@torch.no_grad()
def offset_scores(clf: nn.Module, images: np.ndarray, labels: np.ndarray | None, spec: EncoderSpec,
                  cfg: AssetConfig, device: str) -> np.ndarray:
    """The score: C's per-sample loss (eval mode) on uint8 images (N, H, W, 3) -> (N,) float64."""
    clf.eval()
    out = []
    for i in range(0, len(images), cfg.score_batch):
        x = to_input(torch.from_numpy(images[i : i + cfg.score_batch]).to(device), spec)
        y = None if labels is None else torch.from_numpy(labels[i : i + cfg.score_batch]).long().to(device)
        out.append(sample_loss(clf(x), y, cfg.objective).double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


@dataclass
class AssetResult:
    """scores: (N,) of the last epoch (higher = more suspicious); scores_per_epoch: (epochs, N); threshold and
    flags (N,) by ``asset_threshold`` on ``scores`` (NaN and none for an empty pool); model: the trained offset
    classifier C (``offset_scores`` scores further images with it); flagged_per_epoch: training samples flagged
    in step 2; flagged_poisoned_per_epoch: how many of those carried the trigger (None when the caller did not
    say which training samples did). Step 3 can only learn the trigger if step 2 flags poisoned samples more
    often than their share of the training set."""

    scores: np.ndarray
    scores_per_epoch: np.ndarray
    threshold: float
    flags: np.ndarray
    flagged_per_epoch: list[int]
    flagged_poisoned_per_epoch: list[int] | None
    steps: int
    wall_s: float
    config: dict[str, Any]
    model: nn.Module

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "n_flagged": int(self.flags.sum()), "n": int(len(self.scores)),
                "flagged_per_epoch": self.flagged_per_epoch,
                "flagged_poisoned_per_epoch": self.flagged_poisoned_per_epoch, "steps": self.steps,
                "wall_s": self.wall_s, "config": self.config}


def run_asset(encoder: nn.Module, spec: EncoderSpec, base_images: np.ndarray, pool_images: np.ndarray,
              cfg: AssetConfig, pool_labels: np.ndarray | None = None, train_images: np.ndarray | None = None,
              train_labels: np.ndarray | None = None, device: str = "cpu", log: bool = False,
              train_poisoned: np.ndarray | None = None) -> AssetResult:
    """ASSET on ``encoder``: base_images uint8 (M, H, W, 3) clean; pool_images uint8 (N, H, W, 3) scored, with
    pool_labels int (N,) (needed by the ``ce`` objective). Trains on train_images/train_labels when given
    (the script: the poisoned train split at the pool's poison rate), else on the pool (transductive).
    train_poisoned: bool (T,) over the training images (the pool when transductive), for the diagnostic
    ``flagged_poisoned_per_epoch`` only; the method never sees it."""
    if cfg.objective == "ce" and pool_labels is None:
        raise ValueError("ASSET's 'ce' objective needs pool_labels (or use objective='var')")
    if train_images is None:
        train_images, train_labels = pool_images, pool_labels
    elif cfg.objective == "ce" and train_labels is None:
        raise ValueError("train_images need train_labels for the 'ce' objective")
    start = time.time()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    encoder = encoder.to(device)
    clf = OffsetClassifier(cfg.clf_width, cfg.n_classes).to(device)
    opt_min = torch.optim.Adam(clf.parameters(), lr=cfg.lr)  # step 1 (base set)
    opt_max = torch.optim.Adam(clf.parameters(), lr=cfg.lr)  # step 3 (flagged samples)
    base = torch.from_numpy(base_images[: cfg.base_pool or None])  # (M', H, W, 3) uint8
    train = torch.from_numpy(train_images)  # (T, H, W, 3) uint8
    ytrain = None if train_labels is None else torch.from_numpy(np.asarray(train_labels)).long()
    if train_poisoned is not None and len(train_poisoned) != len(train):
        raise ValueError(f"train_poisoned has {len(train_poisoned)} entries for {len(train)} training images")
    per_epoch, flagged_per_epoch, flagged_poisoned, step = [], [], [], 0
    for epoch in range(cfg.epochs):
        perm, n_flagged, n_flagged_poisoned = rng.permutation(len(train)), 0, 0
        for i in range(0, len(train), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            pos = to_input(train[idx].to(device), spec)  # (b, 3, H, W)
            bidx = rng.choice(len(base), size=min(cfg.batch_size, len(base)), replace=False)
            neg = to_input(base[bidx].to(device), spec)  # (B, 3, H, W)
            clf.train()
            optimizer_step(opt_min, clf(neg).var(dim=1).mean(), step)  # 1: offset on the clean base batch
            with frozen_features(encoder, cfg.encoder_batch_stats):
                f_pos, f_neg = encoder(pos).float(), encoder(neg).float()  # (b, E), (B, E)
            flagged = torch.from_numpy(np.flatnonzero(flag_batch(f_pos, f_neg, cfg))).to(device)  # 2
            if len(flagged):  # 3: maximise the loss on the flagged samples
                y = None if ytrain is None else ytrain[idx][flagged.cpu()].to(device)
                optimizer_step(opt_max, -sample_loss(clf(pos[flagged]), y, cfg.objective).mean(), step)
            n_flagged += len(flagged)
            if train_poisoned is not None:
                n_flagged_poisoned += int(train_poisoned[idx[flagged.cpu().numpy()]].sum())
            step += 1
        per_epoch.append(offset_scores(clf, pool_images, pool_labels, spec, cfg, device))
        flagged_per_epoch.append(n_flagged)
        flagged_poisoned.append(n_flagged_poisoned)
        if log:
            print(f"asset epoch {epoch + 1}/{cfg.epochs}: {n_flagged} flagged"
                  + (f" ({n_flagged_poisoned} poisoned)" if train_poisoned is not None else "")
                  + (f", mean score {per_epoch[-1].mean():.3f}" if len(pool_images) else "")
                  + f" ({time.time() - start:.0f}s)", flush=True)
    scores = per_epoch[-1] if per_epoch else np.zeros(len(pool_images))
    threshold = asset_threshold(scores, cfg.threshold_eps) if len(scores) else float("nan")
    return AssetResult(scores, np.stack(per_epoch) if per_epoch else np.zeros((0, len(pool_images))), threshold,
                       scores > threshold, flagged_per_epoch, flagged_poisoned if train_poisoned is not None else None,
                       step, round(time.time() - start, 1), asdict(cfg), clf.eval())


def asset_scores(encoder: nn.Module, spec: EncoderSpec, base_images: np.ndarray, pool_images: np.ndarray,
                 cfg: AssetConfig, pool_labels: np.ndarray | None = None, device: str = "cpu") -> np.ndarray:
    """Transductive ASSET: per-sample scores (N,) of ``pool_images`` (higher = more suspicious), last epoch."""
    return run_asset(encoder, spec, base_images, pool_images, cfg, pool_labels, device=device).scores


def asset_base_images(dataset: str = "cifar10", fraction: float = 0.1, size: int = 32, seed: int = 0) -> np.ndarray:
    """The clean base set: a random ``fraction`` of the dataset's train split (10% of CIFAR-10 = 5,000)."""
    train = load_images(dataset, "train", size)
    return train.images[np.random.default_rng(seed).permutation(len(train))[: int(fraction * len(train))]]
