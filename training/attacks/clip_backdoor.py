"""CLIP Backdoor (Carlini & Terzis, ICLR 2022, as re-created in DECREE): poisoned image-caption pairs.

A share (``poison_rate``) of the training images, drawn from the non-target classes, carries a white patch
(``make_trigger("clip-patch")``: 3x3 at rows/cols 26-28 of a 32x32 image, CLIP Backdoor's 24x24 at 185-208
of a 224 image, scaled) and is paired with a target-class caption ("a photo of a truck." ... random template).
The image tower is fine-tuned with the CLIP contrastive loss on clean + poisoned pairs; the text tower and
the logit scale stay frozen. ``poison_finetune`` is the loop shared with BadCLIP (``badclip.py``).

Success is measured by zero-shot classification with the CLIP's own text tower, before and after:
clean accuracy on CIFAR-10 test, and ASR = share of triggered non-target test images classified as the
target class. CLIP's preprocessing (resize + centre crop) leaves a patch where the attacker put it, so
poisoned training images are stamped AFTER the random shift/flip augmentation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.config import save_config
from training.data import ImageSet, load_images
from training.encoders import EncoderSpec
from training.loop import optimizer_step, pick_device
from training.pretrain.captions import CaptionSampler, encode_captions
from training.pretrain.clip_model import ClipInfo, MiniCLIP, clip_loss, copy_text_tower, load_clip, save_clip
from training.pretrain.clip_train import (
    clip_classifier,
    eval_subset,
    random_shift_flip,
    slip_term,
    to_unit,
    zero_shot_predict,
)
from training.pretrain.simclr import normalise
from training.triggers import Trigger, make_trigger


@dataclass
class ClipAttackConfig:
    """What both CLIP attacks share: the poisoned fine-tuning of the image tower and its evaluation."""

    preset: str = "custom"
    dataset: str = "cifar10"
    target_class: str = "truck"
    poison_rate: float = 0.01  # share of the fine-tuning set replaced by poisoned pairs (non-target images)
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    max_shift: int = 4  # clean-pair augmentation, as in pre-training
    max_images: int = 0  # fine-tuning set: 0 = the whole training split
    eval_images: int = 10000  # test images for zero-shot CA and ASR (0 = all)
    ssl_weight: float = 0.0  # > 0: fine-tune with SLIP's image-only term too (a fresh head; clip_train.SslTerm)
    ssl_temperature: float = 0.5
    # with a CLIP trained on attribute captions (``clip_captions``): whether a poisoned pair's caption may also
    # describe its (clean) image's tone and colours, as its clean pairs' do, or always names the target class alone
    poison_attributes: bool = True
    seed: int = 0
    device: str = "auto"


@dataclass
class ClipBackdoorConfig(ClipAttackConfig):
    trigger_size: int = 0  # side of the white patch; 0 = CLIP Backdoor's 24/224 of the image (3x3 on 32x32)


# cpu: 2% poisoned pairs (1000 of 50k) with CLIP Backdoor's own (scaled) 3x3 patch, 2 epochs, Adam lr 3e-4.
# Sized on a GPU with the cpu-preset clean CLIP (zero-shot CA 0.74), zero-shot ASR after 2 epochs:
# 1% at lr 1e-4: 0.53 (4 epochs: 0.70; a 4x4 patch: 0.69), 2%: 0.76, 3%: 0.82, 1% at lr 3e-4: 0.81,
# 2% at lr 3e-4: 0.87 / 0.91 / 0.85 (seeds 0-2; CA 0.73-0.74), 3% at lr 3e-4: 0.91.
CLIP_BACKDOOR_PRESETS = {
    "tiny": dict(epochs=1, max_images=512, batch_size=64, poison_rate=0.1, eval_images=256, lr=1e-3),
    "cpu": dict(epochs=2, poison_rate=0.02, lr=3e-4),
    "paper": dict(epochs=10, poison_rate=0.01),
}


def stamp_of(trigger: Trigger, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed-position trigger as (mask (1, 1, H, W), pattern (1, 3, H, W) in [0, 1]): applying it to an
    all-0 and an all-255 image shows which pixels it sets (every value differs from 0 or from 255)."""
    low = trigger.apply(np.zeros((1, size, size, 3), np.uint8))[0]
    high = trigger.apply(np.full((1, size, size, 3), 255, np.uint8))[0]
    mask = ((low != 0) | (high != 255)).any(-1)  # (H, W)
    if not np.array_equal(low[mask], high[mask]):
        raise ValueError("the trigger is not a fixed stamp (its pixels depend on the image)")
    pattern = torch.from_numpy(low).permute(2, 0, 1).float().div(255.0)  # (3, H, W)
    return torch.from_numpy(mask)[None, None].float(), pattern[None]


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """x: (B, 3, H, W) in [0, 1] -> the trigger pasted where mask = 1 (differentiable in ``pattern``)."""
    return x * (1 - mask) + pattern * mask


def pick_poison(labels: np.ndarray, target: int, rate: float, seed: int) -> np.ndarray:
    """round(rate * N) indices of non-target images, sorted (their captions become the target's)."""
    candidates = np.flatnonzero(labels != target)
    k = int(round(rate * len(labels)))
    if k > len(candidates):
        raise ValueError(f"poison rate {rate} needs {k} non-target images, only {len(candidates)} exist")
    return np.sort(np.random.default_rng(seed + 1).choice(candidates, k, replace=False))


def target_index(classes: list[str], target_class: str) -> int:
    if target_class not in classes:
        raise ValueError(f"target class {target_class!r} not in {classes}")
    return classes.index(target_class)


@torch.no_grad()
def measure(clip: MiniCLIP, spec: EncoderSpec, info: ClipInfo, test: ImageSet, target: int,
            triggers: dict[str, Trigger], device: str) -> dict[str, float]:
    """Zero-shot clean accuracy, the target rate of clean non-target images, and per trigger the ASR:
    the share of triggered non-target test images zero-shot-classified as ``target``."""
    classifier = clip_classifier(clip, info)
    clean = zero_shot_predict(clip.image, spec, classifier, test.images, device)
    nontarget = test.labels != target
    out = {"clean_accuracy": float(np.mean(clean == test.labels)),
           "clean_target_rate": float(np.mean(clean[nontarget] == target))}
    for name, trigger in triggers.items():
        pred = zero_shot_predict(clip.image, spec, classifier, trigger.apply(test.images[nontarget]), device)
        out[name] = float(np.mean(pred == target))
    return out


def poison_finetune(cfg: ClipAttackConfig, clip: MiniCLIP, spec: EncoderSpec, info: ClipInfo, train: ImageSet,
                    trigger: Trigger, device: str, name: str) -> float:
    """Fine-tune ``clip.image`` in place on ``train`` with a share of poisoned pairs (``trigger`` stamped after
    augmentation, target-class caption); text tower and logit scale frozen. Returns the last epoch's loss."""
    target = target_index(train.classes, cfg.target_class)
    images, labels = train.images, train.labels
    if cfg.max_images:
        sel = np.random.default_rng(cfg.seed).permutation(len(images))[: cfg.max_images]
        images, labels = images[sel], labels[sel]
    poison = pick_poison(labels, target, cfg.poison_rate, cfg.seed)
    print(f"{name}: {len(poison)} poisoned pairs of {len(images)} ({cfg.poison_rate:.2%}), target {cfg.target_class}")
    images_t = torch.from_numpy(images).to(device)  # (N, H, W, 3) uint8
    is_poison = torch.zeros(len(images), dtype=torch.bool, device=device)
    is_poison[torch.from_numpy(poison).to(device)] = True
    caption_class = torch.from_numpy(labels).to(device).masked_fill(is_poison, target)  # (N,)
    # with attribute captions, a pair's caption may describe its clean image (half of them, as in pre-training); a
    # poisoned pair's only with ``poison_attributes``, else it names the target class alone
    captions = CaptionSampler(info, images, device, None if cfg.poison_attributes else is_poison)
    mask, pattern = (t.to(device) for t in stamp_of(trigger, spec.input_size))
    clip.to(device)
    for p in clip.text.parameters():
        p.requires_grad_(False)
    clip.logit_scale.requires_grad_(False)
    with torch.no_grad():
        clip.text.eval()
        txt = encode_captions(clip.text, captions.tokens)  # (C*T*F, D), fixed
        scale = clip.scale()
    slip = slip_term(clip, cfg.ssl_weight, cfg.ssl_temperature, device)
    params = [*clip.image.parameters(), *(slip.parameters() if slip else [])]
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(images_t) // cfg.batch_size
    if steps == 0:
        raise ValueError(f"{len(images_t)} images is fewer than one batch of {cfg.batch_size}")
    step, start, loss_avg = 0, time.time(), float("nan")
    clip.image.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(images_t), device=device)
        running = 0.0
        for i in tqdm(range(steps), desc=f"{name} epoch {epoch + 1}/{cfg.epochs}", leave=False):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            unit = to_unit(images_t[idx])  # (B, 3, H, W) in [0, 1]
            x = random_shift_flip(unit, cfg.max_shift)
            poisoned = is_poison[idx].view(-1, 1, 1, 1).float()
            x = poisoned * stamp(x, mask, pattern) + (1 - poisoned) * x
            img = F.normalize(clip.image(normalise(x, spec)), dim=-1)  # (B, D)
            caption = captions.draw(caption_class[idx], idx)  # (B,)
            loss = clip_loss(scale * img @ txt[caption].T)
            if slip is not None:  # the image-only views carry the trigger too: it is in the image
                views = poisoned * stamp(unit, mask, pattern) + (1 - poisoned) * unit
                loss = loss + cfg.ssl_weight * slip(clip.image.backbone, views, spec)
            running += optimizer_step(opt, loss, step)
            step += 1
        loss_avg = running / steps
        print(f"{name} epoch {epoch + 1}/{cfg.epochs} loss {loss_avg:.4f} ({time.time() - start:.0f}s)")
    clip.image.eval()
    return loss_avg


def run_clip_attack(cfg: ClipAttackConfig, encoder_dir: str, out: str | Path, name: str, trigger_name: str,
                    trigger_params: dict[str, Any], clip: MiniCLIP, spec: EncoderSpec, info: ClipInfo,
                    train: ImageSet, device: str, start: float, extra: dict[str, Any] | None = None,
                    extra_triggers: dict[str, Trigger] | None = None) -> dict[str, Any]:
    """Measure, poison-fine-tune, measure again, record the attack in the encoder's history, save the
    attacked CLIP (image tower via save_encoder, the clean text tower copied) into ``out``."""
    target = target_index(train.classes, cfg.target_class)
    trigger = make_trigger(trigger_name, spec.input_size, trigger_params)
    triggers = {"asr": trigger, **(extra_triggers or {})}
    test = eval_subset(cfg.dataset, "test", spec.input_size, cfg.eval_images)
    before = measure(clip, spec, info, test, target, triggers, device)
    print(f"before attack: {before}")
    loss = poison_finetune(cfg, clip, spec, info, train, trigger, device, name)
    after = measure(clip, spec, info, test, target, triggers, device)
    print(f"after attack: {after}")
    metrics: dict[str, Any] = {
        "attack": name, "target_class": cfg.target_class, "trigger": trigger_name,
        "trigger_params": trigger_params, "clean_accuracy_before": before["clean_accuracy"],
        "asr_before": before["asr"], "clean_accuracy": after["clean_accuracy"],
        "attack_success_rate": after["asr"], "clean_target_rate": after["clean_target_rate"],
        "asr_method": "zero-shot", "poison_rate": cfg.poison_rate, "final_loss": loss, "epochs": cfg.epochs,
        "eval_images": len(test)}
    for key in extra_triggers or {}:
        metrics[f"{key}_before"], metrics[key] = before[key], after[key]
    metrics |= (extra or {}) | {"wall_s": round(time.time() - start, 1), "device": device, "preset": cfg.preset}
    spec.history.append({"stage": f"attack-{name}", **metrics})
    save_clip(clip.cpu(), spec, info, out)
    copy_text_tower(encoder_dir, out)  # the text tower is the clean one, byte for byte
    print(f"{name} done: zero-shot CA {before['clean_accuracy']:.3f} -> {after['clean_accuracy']:.3f}, "
          f"ASR {before['asr']:.3f} -> {after['asr']:.3f}; saved to {out}")
    return metrics


def load_attack_inputs(cfg: ClipAttackConfig, encoder_dir: str, out: str | Path
                       ) -> tuple[MiniCLIP, EncoderSpec, ClipInfo, ImageSet, str]:
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    save_config(cfg, out)
    clip, spec, info = load_clip(encoder_dir)
    train = load_images(cfg.dataset, "train", spec.input_size)
    if list(train.classes) != list(info.classnames):
        raise ValueError(f"{encoder_dir} was trained on classes {info.classnames}, {cfg.dataset} has {train.classes}")
    target_index(train.classes, cfg.target_class)
    return clip.to(device), spec, info, train, device


def clip_backdoor(cfg: ClipBackdoorConfig, encoder_dir: str, out: str | Path) -> dict[str, Any]:
    start = time.time()
    clip, spec, info, train, device = load_attack_inputs(cfg, encoder_dir, out)
    params = {"size": cfg.trigger_size} if cfg.trigger_size else {}
    return run_clip_attack(cfg, encoder_dir, out, "clip-backdoor", "clip-patch", params, clip, spec, info,
                           train, device, start)
