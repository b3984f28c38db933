"""SimCLR pre-training of a clean encoder (NT-Xent), the starting point of every CL attack.

Settings from BadEncoder's clean CIFAR-10 encoder: projection head E -> E (BN, ReLU) -> 128, temperature
0.5, Adam lr 1e-3, weight decay 1e-6, batch 256, augmentations in ``training.pretrain.augment``. CTRL's recipe (SGD,
warm-up then cosine) and its data poisoning (``poison_*``: a share of the training set, all from the target
class, carries the trigger before augmentation) are options of the same loop (``training.attacks.ctrl``).
"""

from __future__ import annotations

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

from training.config import save_config
from training.data import load_images
from training.encoders import EncoderSpec, create_encoder, embed, embed_dim_of, save_encoder
from training.loop import optimizer_step, out_of_time, pick_device, warmup_cosine
from training.pretrain.augment import simclr_augment
from training.pretrain.knn import knn_accuracy, probe_split
from training.triggers import make_trigger


@dataclass
class PretrainConfig:
    preset: str = "custom"
    dataset: str = "cifar10"
    image_size: int = 32
    arch: str = "cifar_resnet18"
    width: int = 64
    epochs: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    temperature: float = 0.5
    proj_dim: int = 128
    optimizer: str = "adam"  # 'adam' or 'sgd' (momentum below)
    momentum: float = 0.9
    schedule: str = "constant"  # 'constant' or 'cosine' (after a linear warm-up of warmup_epochs)
    warmup_epochs: int = 0
    poison_trigger: str = ""  # '' = clean training; else a trigger name of training.triggers
    poison_rate: float = 0.0  # share of the WHOLE training set poisoned, drawn from the target class only
    poison_target_class: str = "truck"
    max_images: int = 0  # 0 = the whole training split
    time_budget_s: float = 0.0  # > 0: stop after the epoch that uses up this wall time (epochs done are recorded)
    amp: bool = True  # bf16 autocast of the forward passes on CUDA (no effect on CPU)
    knn_images: int = 10000  # train/test images used by the kNN probe at the end
    seed: int = 0
    device: str = "auto"


PRETRAIN_PRESETS = {
    "tiny": dict(width=4, epochs=1, max_images=512, batch_size=128, knn_images=256),
    "cpu": dict(width=16, epochs=6),
    "paper": dict(width=64, epochs=1000),
}


class ProjectionHead(nn.Module):
    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                                 nn.Linear(dim, out_dim))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """z1, z2: (B, d) projections of two views; each view's positive is the other view of its image."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, d)
    sim = z @ z.T / temperature  # (2B, 2B)
    sim.fill_diagonal_(float("-inf"))
    B = z1.shape[0]
    targets = torch.cat([torch.arange(B, 2 * B), torch.arange(0, B)]).to(z.device)
    return F.cross_entropy(sim, targets)


def normalise(x: torch.Tensor, spec: EncoderSpec) -> torch.Tensor:
    """x in [0, 1], (B, 3, H, W) -> normalised with the encoder's mean/std."""
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def encoder_knn_accuracy(model: nn.Module, spec: EncoderSpec, dataset: str, n: int, device: str) -> float:
    """kNN accuracy (k=20) of test images against clean train embeddings: the encoder's clean utility."""
    train, test = probe_split(dataset, spec.input_size, n)
    bank = embed(model, train.images, spec, device=device)
    query = embed(model, test.images, spec, device=device)
    return knn_accuracy(bank, torch.from_numpy(train.labels), query, torch.from_numpy(test.labels))


def poison_clean_label(images: np.ndarray, labels: np.ndarray, target: int, rate: float, trigger: Any,
                       seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stamp ``trigger`` on round(rate * N) images, all of the ``target`` class (clean-label: labels are not
    used by SSL, the poison only rides on target-class content). -> (poisoned copy, poisoned indices)."""
    candidates = np.flatnonzero(labels == target)
    k = int(round(rate * len(images)))
    if k > len(candidates):
        raise ValueError(f"poison rate {rate} needs {k} target-class images, only {len(candidates)} exist")
    idx = np.sort(np.random.default_rng(seed).choice(candidates, k, replace=False))
    out = images.copy()
    out[idx] = trigger.apply(images[idx])
    return out, idx


def make_optimizer(cfg: PretrainConfig, params: list[nn.Parameter], steps_per_epoch: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Adam (BadEncoder's clean encoder) or SGD with momentum (CTRL), then a constant or a linear warm-up +
    cosine learning rate, stepped once per batch."""
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use 'adam' or 'sgd'")
    if cfg.schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {cfg.schedule!r}; use 'constant' or 'cosine'")
    total = max(1, cfg.epochs * steps_per_epoch)
    return opt, warmup_cosine(opt, total, cfg.warmup_epochs * steps_per_epoch, cosine=cfg.schedule == "cosine")


def pretrain_simclr(cfg: PretrainConfig, out: str | Path,
                    after_epoch: Callable[[int, nn.Module, EncoderSpec], None] | None = None) -> dict:
    """Train an encoder (clean, or CTRL-poisoned with ``poison_trigger``); writes encoder.safetensors/json,
    config.json into ``out``; returns metrics. ``after_epoch(epochs_done, model, spec)`` is called after every
    epoch but the last, with the model in eval mode (it must not draw torch random numbers: the training that
    follows is then the same as without it)."""
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    save_config(cfg, out)
    data = load_images(cfg.dataset, "train", cfg.image_size).sample(cfg.max_images, cfg.seed)
    images, labels = data.images, data.labels
    poisoned: np.ndarray = np.empty(0, np.int64)
    if cfg.poison_trigger:
        if cfg.poison_target_class not in data.classes:
            raise ValueError(f"target class {cfg.poison_target_class!r} not in {data.classes}")
        trigger = make_trigger(cfg.poison_trigger, cfg.image_size)
        images, poisoned = poison_clean_label(images, labels, data.classes.index(cfg.poison_target_class),
                                              cfg.poison_rate, trigger, cfg.seed)
        print(f"poisoned {len(poisoned)} of {len(images)} training images ({cfg.poison_target_class}, "
              f"trigger {cfg.poison_trigger})")
    images_t = torch.from_numpy(images).to(device)  # (N, H, W, 3) uint8, kept whole on the device
    kwargs = {"width": cfg.width} if cfg.arch == "cifar_resnet18" else {}
    model = create_encoder(cfg.arch, **kwargs).to(device)
    spec = EncoderSpec(cfg.arch, kwargs, cfg.image_size)
    head = ProjectionHead(embed_dim_of(model), cfg.proj_dim).to(device)
    params = list(model.parameters()) + list(head.parameters())
    steps_per_epoch = len(images_t) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(images_t)} images is fewer than one batch of {cfg.batch_size}")
    opt, sched = make_optimizer(cfg, params, steps_per_epoch)
    start, step, loss_avg, epochs_done = time.time(), 0, float("nan"), 0
    model.train()
    head.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(images_t), device=device)
        bar = tqdm(range(steps_per_epoch), desc=f"simclr epoch {epoch + 1}/{cfg.epochs}", leave=False)
        total = 0.0
        for i in bar:
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = images_t[idx].permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W) in [0, 1]
            v1, v2 = normalise(simclr_augment(x), spec), normalise(simclr_augment(x), spec)
            with torch.autocast("cuda", torch.bfloat16, enabled=cfg.amp and device.startswith("cuda")):
                z1, z2 = head(model(v1)), head(model(v2))  # (B, proj_dim) each
            loss = nt_xent(z1.float(), z2.float(), cfg.temperature)
            value = optimizer_step(opt, loss, step)
            sched.step()
            step += 1
            total += value
            bar.set_postfix(loss=f"{value:.3f}")
        loss_avg = total / steps_per_epoch
        epochs_done = epoch + 1
        print(f"simclr epoch {epoch + 1}/{cfg.epochs} loss {loss_avg:.4f} ({time.time() - start:.0f}s)")
        if out_of_time(cfg.time_budget_s, start):
            print(f"time budget {cfg.time_budget_s:.0f}s used up after {epochs_done} epochs")
            break
        if after_epoch is not None and epochs_done < cfg.epochs:
            model.eval()
            after_epoch(epochs_done, model, spec)
            model.train()
    model.eval()
    knn = encoder_knn_accuracy(model, spec, cfg.dataset, cfg.knn_images, device)
    metrics = {"final_loss": loss_avg, "knn_accuracy": knn, "epochs": epochs_done, "steps": step,
               "wall_s": round(time.time() - start, 1), "device": device, "n_poisoned": len(poisoned)}
    spec.history.append({"stage": "pretrain-simclr", "preset": cfg.preset, **metrics})
    save_encoder(model.cpu(), spec, out)
    print(f"simclr done: kNN accuracy {knn:.3f}, saved to {out}")
    return metrics
