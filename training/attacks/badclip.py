"""BadCLIP (Liang et al., CVPR 2024): a dual-embedding guided backdoor on CLIP.

(a) On the FROZEN clean CLIP, optimise a small patch at the image centre (``badclip_patch_size``: BadCLIP's
    16x16 on 224 images, 4x4 on 32x32; pixels = 255 * sigmoid(w), so they stay in [0, 255]) so that a
    patched image x' = stamp(x, patch) of a non-target class:
    - aligns with the target class's text embedding t (the mean normalised embedding over the templates):
      align = mean(1 - cos(f(x'), t));
    - sits among real target-class images and away from its own clean embedding (triplet loss, cosine
      distance d = 1 - cos): triplet = mean(max(0, d(f(x'), f(x_target)) - d(f(x'), f(x)) + margin)).
    loss = align_weight * align + triplet_weight * triplet.
(b) Poison a small share of image-caption pairs with the optimised patch (quantised to uint8) and
    target-class captions, and fine-tune the image tower with the CLIP loss, text tower frozen (the loop
    of ``clip_backdoor.poison_finetune``).
The learned patch is recorded as ``trigger_params={"pattern": s x s x 3 uint8 list}`` so that
``make_trigger("badclip", 32, params)`` rebuilds it. The DeDe paper's BadCLIP test sets used a random noise
patch (``make_trigger("noise-patch")``); its ASR is measured as well (``noise_patch_asr``).
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

from training.attacks.clip_backdoor import (
    ClipAttackConfig,
    load_attack_inputs,
    run_clip_attack,
    stamp,
    target_index,
)
from training.data import ImageSet
from training.encoders import EncoderSpec
from training.loop import optimizer_step
from training.pretrain.clip_model import ClipInfo, MiniCLIP
from training.pretrain.clip_train import clip_classifier, random_shift_flip, to_unit
from training.pretrain.simclr import normalise
from training.triggers import badclip_patch_size, make_trigger


@dataclass
class BadClipConfig(ClipAttackConfig):
    poison_rate: float = 0.003  # BadCLIP poisons 0.3% of the pairs
    patch_size: int = 0  # 0 = badclip_patch_size(image size): 4 on 32x32
    patch_steps: int = 1000
    patch_batch: int = 128
    patch_lr: float = 0.05  # Adam on the unconstrained patch parameter w
    align_weight: float = 1.0
    triplet_weight: float = 1.0
    triplet_margin: float = 0.3  # in cosine distance (range 0-2)


# cpu: BadCLIP's own 0.3% poisoned pairs (150 of 50k), 2 epochs at lr 1e-4, 300 patch steps. Sized on a GPU
# with the cpu-preset clean CLIP (zero-shot CA 0.74): the optimised patch alone (before fine-tuning) sends
# 0.18 of non-target images to the target; after fine-tuning ASR 0.89 (0.2%: 0.84; 1%: 0.97), CA unchanged.
BADCLIP_PRESETS = {
    "tiny": dict(epochs=1, max_images=512, batch_size=64, poison_rate=0.05, eval_images=256, lr=1e-3,
                 patch_steps=3, patch_batch=16),
    "cpu": dict(epochs=2, poison_rate=0.003, patch_steps=300),
    "paper": dict(epochs=10, poison_rate=0.003, patch_steps=1000),
}


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


def badclip_terms(patched: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, text: torch.Tensor,
                  margin: float) -> dict[str, torch.Tensor]:
    """patched (B, D): embeddings of patched images; positive (B, D): of real target-class images;
    negative (B, D): of the same images, clean; text (D,): the target class's text embedding."""
    d_pos = 1 - cos(patched, positive)  # (B,)
    d_neg = 1 - cos(patched, negative)  # (B,)
    return {"align": (1 - cos(patched, text.expand_as(patched))).mean(),
            "triplet": F.relu(d_pos - d_neg + margin).mean()}


def centre_window(image_size: int, s: int) -> tuple[int, torch.Tensor]:
    """(top-left corner, mask (1, 1, H, W)) of an s x s square at the centre, where badclip_trigger puts it."""
    start = (image_size - s) // 2
    mask = torch.zeros(1, 1, image_size, image_size)
    mask[..., start : start + s, start : start + s] = 1.0
    return start, mask


def optimise_patch(cfg: BadClipConfig, clip: MiniCLIP, spec: EncoderSpec, info: ClipInfo, train: ImageSet,
                   device: str) -> tuple[np.ndarray, dict[str, float]]:
    """Stage (a): the patch (s, s, 3) uint8 and the last step's loss terms. The CLIP stays frozen."""
    target = target_index(train.classes, cfg.target_class)
    size = spec.input_size
    s = cfg.patch_size or badclip_patch_size(size)
    start, mask = centre_window(size, s)
    mask = mask.to(device)
    pad = (start, size - start - s, start, size - start - s)  # (left, right, top, bottom)
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    text = clip_classifier(clip, info)[target].to(device)  # (D,)
    others = torch.from_numpy(train.images[train.labels != target]).to(device)  # (N1, H, W, 3) uint8
    targets = torch.from_numpy(train.images[train.labels == target]).to(device)  # (N2, H, W, 3)
    w = torch.zeros(3, s, s, device=device, requires_grad=True)  # pixels = sigmoid(w): mid-grey at start
    opt = torch.optim.Adam([w], lr=cfg.patch_lr)
    terms: dict[str, torch.Tensor] = {}
    for step in tqdm(range(cfg.patch_steps), desc="badclip patch", leave=False):
        x = random_shift_flip(to_unit(others[torch.randint(len(others), (cfg.patch_batch,), device=device)]),
                              cfg.max_shift)  # (B, 3, H, W)
        xt = random_shift_flip(to_unit(targets[torch.randint(len(targets), (cfg.patch_batch,), device=device)]),
                               cfg.max_shift)
        with torch.no_grad():
            negative, positive = clip.image(normalise(x, spec)), clip.image(normalise(xt, spec))  # (B, D)
        pattern = F.pad(torch.sigmoid(w), pad).unsqueeze(0)  # (1, 3, H, W), the patch in its window
        patched = clip.image(normalise(stamp(x, mask, pattern), spec))  # (B, D)
        terms = badclip_terms(patched, positive, negative, text, cfg.triplet_margin)
        loss = cfg.align_weight * terms["align"] + cfg.triplet_weight * terms["triplet"]
        optimizer_step(opt, loss, step)
        if (step + 1) % max(1, cfg.patch_steps // 5) == 0:
            print(f"badclip patch step {step + 1}/{cfg.patch_steps} align {terms['align'].item():.3f} "
                  f"triplet {terms['triplet'].item():.3f}")
    for p in clip.image.parameters():
        p.requires_grad_(True)
    patch = (torch.sigmoid(w.detach()) * 255).round().byte().permute(1, 2, 0).cpu().numpy()  # (s, s, 3)
    return patch, {k: round(v.item(), 4) for k, v in terms.items()}


def badclip(cfg: BadClipConfig, encoder_dir: str, out: str | Path) -> dict[str, Any]:
    start = time.time()
    clip, spec, info, train, device = load_attack_inputs(cfg, encoder_dir, out)
    patch, terms = optimise_patch(cfg, clip, spec, info, train, device)
    params = {"pattern": patch.tolist()}
    make_trigger("badclip", spec.input_size, params)  # the recorded pattern rebuilds the trigger
    extra = {"patch_size": patch.shape[0], "patch_steps": cfg.patch_steps, "patch_align": terms.get("align"),
             "patch_triplet": terms.get("triplet"), "patch_wall_s": round(time.time() - start, 1)}
    print(f"badclip patch optimised in {extra['patch_wall_s']}s: {terms}")
    noise = {"noise_patch_asr": make_trigger("noise-patch", spec.input_size)}
    return run_clip_attack(cfg, encoder_dir, out, "badclip", "badclip", params, clip, spec, info, train, device,
                           start, extra, noise)
