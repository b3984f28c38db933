"""SimCLR pre-training of a clean encoder (NT-Xent), the starting point of every CL attack.

Settings from BadEncoder's clean CIFAR-10 encoder: projection head E -> E (BN, ReLU) -> 128, temperature
0.5, Adam lr 1e-3, weight decay 1e-6, batch 256, augmentations in ``training.augment``.
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

from training.augment import simclr_augment
from training.config import optimizer_step, pick_device, save_config
from training.data import load_images
from training.encoders import EncoderSpec, create_encoder, embed, embed_dim_of, save_encoder
from training.knn import knn_accuracy, probe_split


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
    max_images: int = 0  # 0 = the whole training split
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


def pretrain_simclr(cfg: PretrainConfig, out: str | Path) -> dict:
    """Train a clean encoder; writes encoder.safetensors/json, config.json into ``out``; returns metrics."""
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    save_config(cfg, out)
    data = load_images(cfg.dataset, "train", cfg.image_size)
    images = data.images
    if cfg.max_images:
        images = images[np.random.default_rng(cfg.seed).permutation(len(images))[: cfg.max_images]]
    images_t = torch.from_numpy(images).to(device)  # (N, H, W, 3) uint8, kept whole on the device
    kwargs = {"width": cfg.width} if cfg.arch == "cifar_resnet18" else {}
    model = create_encoder(cfg.arch, **kwargs).to(device)
    spec = EncoderSpec(cfg.arch, kwargs, cfg.image_size)
    head = ProjectionHead(embed_dim_of(model), cfg.proj_dim).to(device)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(images_t) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(images_t)} images is fewer than one batch of {cfg.batch_size}")
    start, step, loss_avg = time.time(), 0, float("nan")
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
            loss = nt_xent(head(model(v1)), head(model(v2)), cfg.temperature)
            value = optimizer_step(opt, loss, step)
            step += 1
            total += value
            bar.set_postfix(loss=f"{value:.3f}")
        loss_avg = total / steps_per_epoch
        print(f"simclr epoch {epoch + 1}/{cfg.epochs} loss {loss_avg:.4f} ({time.time() - start:.0f}s)")
    model.eval()
    knn = encoder_knn_accuracy(model, spec, cfg.dataset, cfg.knn_images, device)
    metrics = {"final_loss": loss_avg, "knn_accuracy": knn, "epochs": cfg.epochs, "steps": step,
               "wall_s": round(time.time() - start, 1), "device": device}
    spec.history.append({"stage": "pretrain-simclr", "preset": cfg.preset, **metrics})
    save_encoder(model.cpu(), spec, out)
    print(f"simclr done: kNN accuracy {knn:.3f}, saved to {out}")
    return metrics
