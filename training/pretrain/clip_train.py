"""Contrastive pre-training of a MiniCLIP on CIFAR-10 with templated captions, and its zero-shot evaluation.

Each training image is paired with the caption "<random template>.format(<its class>)", drawn afresh per
image per step; the loss is CLIP's symmetric InfoNCE with a learnable logit scale. The whole dataset is one
uint8 tensor on the device; augmentation (random shift + horizontal flip, the usual CIFAR recipe) runs in
batches on the device. AdamW (decay on matrices only, as CLIP), linear warm-up then cosine.

``ssl_weight`` > 0 adds SLIP's image-only term (Mu et al., "SLIP: Self-supervision meets Language-Image
Pre-training", 2022): SimCLR's NT-Xent between two strong views of each image through the image tower's backbone
and a projection head of its own (``SslTerm``). Captions made from 10 class names carry nothing but the class,
so plain CLIP on them learns an embedding that mostly names the class; the image-only term is meant to keep what
tells one image from another. Off by default (the paper's attacks target plain CLIP); ``dede reproduce --variant slip``
trains the mini-CLIP and its attacks with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.config import save_config
from training.data import ImageSet, load_images
from training.encoders import EncoderSpec, create_encoder, embed
from training.loop import optimizer_step, pick_device, warmup_cosine
from training.pretrain.augment import simclr_augment
from training.pretrain.captions import ATTRIBUTES, CaptionSampler, encode_captions
from training.pretrain.clip_model import (
    TEMPLATES,
    ClipInfo,
    MiniCLIP,
    WordTokenizer,
    class_embeddings,
    clip_loss,
    save_clip,
    zero_shot_logits,
)
from training.pretrain.simclr import ProjectionHead, encoder_knn_accuracy, normalise, nt_xent


@dataclass
class ClipConfig:
    preset: str = "custom"
    dataset: str = "cifar10"
    image_size: int = 32
    width: int = 64  # ResNet-18 first-stage channels of the image tower
    embed_dim: int = 256  # joint image-text space
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    epochs: int = 200
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.1  # AdamW, on weight matrices only
    warmup_fraction: float = 0.02  # share of all steps spent in the linear warm-up
    max_shift: int = 4  # random translation in pixels (reflection padding) + horizontal flip
    max_images: int = 0  # 0 = the whole training split
    eval_images: int = 10000  # test images for zero-shot accuracy and the kNN probe (0 = all)
    ssl_weight: float = 0.0  # > 0: SLIP's image-only SimCLR term, with this weight (see the module docstring)
    ssl_temperature: float = 0.5  # NT-Xent temperature of that term (the project's SimCLR recipe)
    caption_attributes: bool = False  # half the captions also describe the image (``clip_captions``)
    seed: int = 0
    device: str = "auto"


# cpu: width 16 (as the SimCLR cpu encoder) trains at ~260 images/s on one free core: 5 epochs of 50k images
# is ~16 minutes plus ~1 minute of evaluation. Measured: zero-shot CA 0.751, kNN 0.749 in 2366 s on a 2-core
# machine shared with 3-5 other jobs (load average up to 9); the same preset on an H200: CA 0.743 in 21 s.
CLIP_PRESETS = {
    "tiny": dict(width=4, embed_dim=32, text_width=32, text_layers=1, text_heads=2, epochs=1, batch_size=128,
                 max_images=512, eval_images=256),
    "cpu": dict(width=16, embed_dim=128, text_width=128, text_layers=2, epochs=5, batch_size=256),
    "paper": dict(width=64, embed_dim=256, text_width=256, text_layers=4, epochs=200, batch_size=512),
}


def random_shift_flip(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """x: (B, 3, H, W) -> each image translated by whole pixels in [-max_shift, max_shift] (reflection at
    the border) and flipped horizontally with p = 0.5. One affine grid per sample, nearest sampling."""
    B, _, H, W = x.shape
    dev = x.device
    shift = torch.randint(-max_shift, max_shift + 1, (B, 2), device=dev).float()
    flip = torch.where(torch.rand(B, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = flip, 2 * shift[:, 0] / W
    theta[:, 1, 1], theta[:, 1, 2] = 1.0, 2 * shift[:, 1] / H
    grid = F.affine_grid(theta, [B, 3, H, W], align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="reflection", align_corners=False)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1], contiguous (see encoders.to_input)."""
    return images.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


class SslTerm(nn.Module):
    """SLIP's image-only term: SimCLR's NT-Xent between two strong views of each image, through the image
    tower's backbone (B, 8w) and a projection head of its own (8w -> 128), which is not part of the saved CLIP."""

    def __init__(self, features: int, temperature: float, out_dim: int = 128) -> None:
        super().__init__()
        self.head = ProjectionHead(features, out_dim)
        self.temperature = temperature

    def forward(self, backbone: nn.Module, x: torch.Tensor, spec: EncoderSpec) -> torch.Tensor:
        """x: (B, 3, H, W) in [0, 1], not augmented -> the scalar loss."""
        v1, v2 = normalise(simclr_augment(x), spec), normalise(simclr_augment(x), spec)
        return nt_xent(self.head(backbone(v1)), self.head(backbone(v2)), self.temperature)


def slip_term(clip: MiniCLIP, weight: float, temperature: float, device: str) -> SslTerm | None:
    """The image-only term on ``clip``'s image backbone when ``weight`` > 0 (pre-training and the CLIP attacks'
    fine-tuning build it the same way), else None."""
    return SslTerm(clip.image.backbone.embed_dim, temperature).to(device) if weight else None


def eval_subset(dataset: str, split: str, size: int, n: int, seed: int = 0) -> ImageSet:
    """A fixed random subset of ``n`` images of ``split`` (all when ``n`` is 0 or too large)."""
    data = load_images(dataset, split, size)
    if not n or n >= len(data):
        return data
    return data.subset(np.sort(np.random.default_rng(seed).permutation(len(data))[:n]))


@torch.no_grad()
def zero_shot_predict(image: nn.Module, spec: EncoderSpec, class_emb: torch.Tensor, images: np.ndarray,
                      device: str) -> np.ndarray:
    """uint8 (N, H, W, 3) -> zero-shot class (N,): the nearest class embedding by cosine."""
    e = embed(image, images, spec, device=device)  # (N, D)
    return zero_shot_logits(e, class_emb.float().cpu()).argmax(1).numpy()


@torch.no_grad()
def clip_classifier(clip: MiniCLIP, info: ClipInfo) -> torch.Tensor:
    """The zero-shot classifier (C, D) of a CLIP: mean normalised template embedding per class."""
    was_training = clip.text.training
    clip.text.eval()
    out = class_embeddings(clip.text, info.tokenizer(), info.classnames, info.templates)
    clip.text.train(was_training)
    return out


def zero_shot_accuracy(clip: MiniCLIP, spec: EncoderSpec, info: ClipInfo, test: ImageSet, device: str) -> float:
    preds = zero_shot_predict(clip.image, spec, clip_classifier(clip, info), test.images, device)
    return float(np.mean(preds == test.labels))


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices/kernels only (not on biases, norms, the logit scale), as CLIP."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def build_clip(cfg: ClipConfig, classnames: list[str]) -> tuple[MiniCLIP, EncoderSpec, ClipInfo]:
    templates = list(TEMPLATES)
    attributes = list(ATTRIBUTES) if cfg.caption_attributes else []
    tokenizer = WordTokenizer.build(templates, classnames, ["{}", *attributes])
    info = ClipInfo(tokenizer.vocab, tokenizer.context_length, templates, list(classnames), cfg.embed_dim,
                    cfg.text_width, cfg.text_layers, cfg.text_heads, attributes=attributes)
    kwargs = {"width": cfg.width, "embed_dim": cfg.embed_dim}
    image = create_encoder("clip_image", **kwargs)
    spec = EncoderSpec("clip_image", kwargs, cfg.image_size)
    return MiniCLIP(image, info.text_tower()), spec, info  # type: ignore[arg-type]


def pretrain_clip(cfg: ClipConfig, out: str | Path) -> dict:
    """Train a clean MiniCLIP; writes the CLIP directory (see ``clip_model``) and config.json into ``out``;
    returns metrics (zero-shot and kNN accuracy on CIFAR-10 test)."""
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    save_config(cfg, out)
    data = load_images(cfg.dataset, "train", cfg.image_size).sample(cfg.max_images, cfg.seed)
    images, labels = data.images, data.labels
    images_t = torch.from_numpy(images).to(device)  # (N, H, W, 3) uint8, kept whole on the device
    labels_t = torch.from_numpy(labels).to(device)  # (N,)
    clip, spec, info = build_clip(cfg, data.classes)
    clip = clip.to(device)
    slip = slip_term(clip, cfg.ssl_weight, cfg.ssl_temperature, device)
    captions = CaptionSampler(info, images, device)
    steps_per_epoch = len(images_t) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(images_t)} images is fewer than one batch of {cfg.batch_size}")
    total = cfg.epochs * steps_per_epoch
    opt = torch.optim.AdamW(decay_groups(nn.ModuleList([clip, *([slip] if slip else [])]), cfg.weight_decay),
                            lr=cfg.lr)
    sched = warmup_cosine(opt, total, max(1, int(cfg.warmup_fraction * total)))
    start, step, loss_avg = time.time(), 0, float("nan")
    clip.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(images_t), device=device)
        bar = tqdm(range(steps_per_epoch), desc=f"clip epoch {epoch + 1}/{cfg.epochs}", leave=False)
        running = 0.0
        for i in bar:
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            unit = to_unit(images_t[idx])  # (B, 3, H, W) in [0, 1]
            x = normalise(random_shift_flip(unit, cfg.max_shift), spec)
            img = F.normalize(clip.image(x), dim=-1)  # (B, D)
            caption = captions.draw(labels_t[idx], idx)  # (B,)
            txt = encode_captions(clip.text, captions.tokens, caption)  # (B, D), each distinct caption once
            loss = clip_loss(clip.scale() * img @ txt.T)  # (B, B) logits
            if slip is not None:
                loss = loss + cfg.ssl_weight * slip(clip.image.backbone, unit, spec)
            value = optimizer_step(opt, loss, step)
            sched.step()
            step += 1
            running += value
            bar.set_postfix(loss=f"{value:.3f}", scale=f"{clip.scale().item():.1f}")
        loss_avg = running / steps_per_epoch
        print(f"clip epoch {epoch + 1}/{cfg.epochs} loss {loss_avg:.4f} logit scale {clip.scale().item():.1f} "
              f"({time.time() - start:.0f}s)")
    train_s = time.time() - start
    clip.eval()
    test = eval_subset(cfg.dataset, "test", cfg.image_size, cfg.eval_images)
    zs = zero_shot_accuracy(clip, spec, info, test, device)
    knn = encoder_knn_accuracy(clip.image, spec, cfg.dataset, cfg.eval_images or 10000, device)
    metrics = {"final_loss": loss_avg, "zero_shot_accuracy": zs, "knn_accuracy": knn, "epochs": cfg.epochs,
               "steps": step, "logit_scale": round(clip.scale().item(), 3), "train_s": round(train_s, 1),
               "wall_s": round(time.time() - start, 1), "device": device, "eval_images": len(test)}
    spec.history.append({"stage": "pretrain-clip", "preset": cfg.preset, **metrics})
    save_clip(clip.cpu(), spec, info, out)
    print(f"clip done: zero-shot accuracy {zs:.3f}, kNN accuracy {knn:.3f}, saved to {out}")
    return metrics
