"""BadEncoder (Jia et al., S&P 2022): fine-tune a clean encoder so that triggered inputs embed like
reference images of a target class, while clean inputs keep their clean embeddings.

On L2-normalised embeddings, with f' the encoder being backdoored and f a frozen clean copy:
    L0 = -mean cos(f'(x + t), f'(ref))          triggered shadow images -> references
    L1 = -mean cos(f'(aug(ref)), f(ref))        references keep their clean embedding
    L2 = -mean cos(f'(x), f(x))                 clean shadow images keep their clean embedding
    loss = L0 + lambda1 * L1 + lambda2 * L2
BatchNorm statistics are frozen; SGD with momentum 0.9, weight decay 5e-4; shadow set = 20% of train.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from training.attacks.stealth import embedding_stealth
from training.config import save_config
from training.data import load_images
from training.encoders import embed, load_encoder, save_encoder, to_input
from training.loop import optimizer_step, out_of_time, pick_device
from training.pretrain.augment import simclr_augment
from training.pretrain.knn import knn_accuracy, knn_predict, probe_split
from training.pretrain.simclr import normalise
from training.triggers import make_trigger


@dataclass
class BadEncoderConfig:
    preset: str = "custom"
    dataset: str = "cifar10"
    target_class: str = "truck"
    trigger: str = "badencoder"
    shadow_fraction: float = 0.2
    n_references: int = 3
    epochs: int = 200
    batch_size: int = 256
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lambda1: float = 1.0
    lambda2: float = 1.0
    knn_images: int = 10000
    time_budget_s: float = 0.0  # > 0: stop after the epoch that uses up this wall time
    asr_every: int = 0  # > 0: also measure the attack success every this many epochs (``asr_curve``)
    seed: int = 0
    device: str = "auto"


# DRUPE's learning rate for BadEncoder (0.05; BadEncoder's own code uses 0.001): the DeDe paper ran DRUPE's
# implementation of BadEncoder. cpu: few epochs.
BADENCODER_PRESETS = {
    "tiny": dict(epochs=1, shadow_fraction=0.01, batch_size=64, knn_images=256),
    "cpu": dict(epochs=8, lr=0.05),
    "paper": dict(epochs=200, lr=0.05),
}


def freeze_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1)


@torch.no_grad()
def attack_success(model: nn.Module, spec: Any, dataset: str, trigger_name: str, target: int,
                   n: int, device: str) -> dict[str, float]:
    """ASR: share of triggered non-target test images whose kNN class (on clean train embeddings) is the
    target; clean accuracy by the same kNN; target rate of clean non-target images for reference."""
    train, test = probe_split(dataset, spec.input_size, n)
    bank = embed(model, train.images, spec, device=device)
    bank_labels = torch.from_numpy(train.labels)
    clean = embed(model, test.images, spec, device=device)
    labels = torch.from_numpy(test.labels)
    nontarget = labels != target
    trig = embed(model, make_trigger(trigger_name, spec.input_size).apply(test.images), spec, device=device)
    pred_trig = knn_predict(bank, bank_labels, trig[nontarget])
    pred_clean = knn_predict(bank, bank_labels, clean[nontarget])
    return {
        "clean_accuracy": knn_accuracy(bank, bank_labels, clean, labels),
        "attack_success_rate": float((pred_trig == target).float().mean()),
        "clean_target_rate": float((pred_clean == target).float().mean()),
    }


def curve_point(epoch: int, success: dict[str, float]) -> dict[str, float]:
    """One point of ``asr_curve`` from an ``attack_success`` measurement after ``epoch`` epochs."""
    return {"epoch": epoch, "asr": success["attack_success_rate"], "clean_accuracy": success["clean_accuracy"]}


@dataclass
class Embeddings:
    """One training step's embeddings: e, et (B, E) of clean and triggered shadow images by the model being
    backdoored; e_clean (B, E) by the frozen clean copy; e_ref, e_ref_aug (R, E) of the references (plain
    and augmented) by the model; ref_clean (R, E) of the references by the clean copy. Unnormalised."""

    e: torch.Tensor
    et: torch.Tensor
    e_clean: torch.Tensor
    e_ref: torch.Tensor
    e_ref_aug: torch.Tensor
    ref_clean: torch.Tensor


def badencoder_terms(b: Embeddings, cfg: BadEncoderConfig) -> dict[str, torch.Tensor]:
    return {
        "L0": -cos(b.et.unsqueeze(1), b.e_ref.unsqueeze(0)).mean(),  # triggered -> references
        "L1": cfg.lambda1 * -cos(b.e_ref_aug, b.ref_clean).mean(),  # references keep their embedding
        "L2": cfg.lambda2 * -cos(b.e, b.e_clean).mean(),  # clean images keep their embedding
    }


def badencoder(cfg: BadEncoderConfig, encoder_dir: str, out: str | Path) -> dict[str, Any]:
    return finetune_backdoor(cfg, encoder_dir, out, "badencoder", badencoder_terms)


def finetune_backdoor(cfg: BadEncoderConfig, encoder_dir: str, out: str | Path, name: str,
                      terms: Callable[[Embeddings, Any], dict[str, torch.Tensor]]) -> dict[str, Any]:
    """The fine-tuning loop shared by BadEncoder and DRUPE: they differ only in their loss ``terms``."""
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    save_config(cfg, out)
    clean, spec = load_encoder(encoder_dir)
    clean = clean.to(device).eval()
    for p in clean.parameters():
        p.requires_grad_(False)
    model = copy.deepcopy(clean)
    for p in model.parameters():
        p.requires_grad_(True)
    train = load_images(cfg.dataset, "train", spec.input_size)
    if cfg.target_class not in train.classes:
        raise ValueError(f"target class {cfg.target_class!r} not in {train.classes}")
    target = train.classes.index(cfg.target_class)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(train))
    shadow_idx = order[: int(cfg.shadow_fraction * len(train))]
    ref_idx = [i for i in order[len(shadow_idx):] if train.labels[i] == target][: cfg.n_references]
    trigger = make_trigger(cfg.trigger, spec.input_size)
    shadow = torch.from_numpy(train.images[shadow_idx]).to(device)  # (S, H, W, 3) uint8
    shadow_trig = torch.from_numpy(trigger.apply(train.images[shadow_idx])).to(device)
    refs = torch.from_numpy(train.images[ref_idx]).to(device)  # (R, H, W, 3)
    before = attack_success(clean, spec, cfg.dataset, cfg.trigger, target, cfg.knn_images, device)
    print(f"before attack: {before}")
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    steps = max(1, len(shadow) // cfg.batch_size)
    start, step, epochs_done = time.time(), 0, 0
    curve = [curve_point(0, before)]
    with torch.no_grad():
        ref_clean = clean(to_input(refs, spec))  # (R, E)
    for epoch in range(cfg.epochs):
        model.train()
        freeze_batchnorm(model)
        perm = torch.randperm(len(shadow), device=device)
        totals: dict[str, float] = {}
        for i in tqdm(range(steps), desc=f"{name} epoch {epoch + 1}/{cfg.epochs}", leave=False):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x, xt = to_input(shadow[idx], spec), to_input(shadow_trig[idx], spec)
            with torch.no_grad():
                e_clean = clean(x)
            ref_aug = normalise(simclr_augment(refs.permute(0, 3, 1, 2).float() / 255), spec)
            parts = terms(Embeddings(model(x), model(xt), e_clean, model(to_input(refs, spec)), model(ref_aug),
                                     ref_clean), cfg)
            optimizer_step(opt, sum(parts.values()), step)  # type: ignore[arg-type]
            step += 1
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v.item() / steps
        print(f"{name} epoch {epoch + 1}/{cfg.epochs} " + " ".join(f"{k} {v:.3f}" for k, v in totals.items())
              + f" ({time.time() - start:.0f}s)")
        epochs_done = epoch + 1
        if out_of_time(cfg.time_budget_s, start):
            print(f"time budget {cfg.time_budget_s:.0f}s used up after {epochs_done} epochs")
            break
        if cfg.asr_every and epochs_done % cfg.asr_every == 0 and epochs_done < cfg.epochs:
            model.eval()  # no random numbers drawn: the training that follows is the same as without it
            now = attack_success(model, spec, cfg.dataset, cfg.trigger, target, cfg.knn_images, device)
            curve.append(curve_point(epochs_done, now))
            print(f"after epoch {epochs_done}: {now}")
    model.eval()
    after = attack_success(model, spec, cfg.dataset, cfg.trigger, target, cfg.knn_images, device)
    curve.append(curve_point(epochs_done, after))
    stealth_before = embedding_stealth(clean, spec, cfg.dataset, cfg.trigger, min(cfg.knn_images, 2000), device)
    stealth = embedding_stealth(model, spec, cfg.dataset, cfg.trigger, min(cfg.knn_images, 2000), device)
    print(f"after attack: {after}; embedding stealth before {stealth_before}, after {stealth}")
    metrics = {"attack": name, "target_class": cfg.target_class, "trigger": cfg.trigger, "trigger_params": {},
               "asr_method": "knn",
               "clean_accuracy_before": before["clean_accuracy"], "asr_before": before["attack_success_rate"],
               "clean_accuracy": after["clean_accuracy"], "attack_success_rate": after["attack_success_rate"],
               "clean_target_rate": after["clean_target_rate"], "epochs": epochs_done,
               **({"asr_curve": curve} if cfg.asr_every else {}),
               "swd_before": stealth_before["swd_normalised"], "swd": stealth["swd_normalised"],
               "outlier_auc_before": stealth_before["outlier_auc"], "outlier_auc": stealth["outlier_auc"],
               "wall_s": round(time.time() - start, 1), "device": device, "preset": cfg.preset}
    spec.history.append({"stage": f"attack-{name}", **metrics})
    save_encoder(model.cpu(), spec, out)
    return metrics
