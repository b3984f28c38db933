"""SimCLR augmentations applied to a whole batch on the device (no per-image Python).

``x: [B, 3, H, W]`` floats in [0, 1]. RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3) + horizontal flip via
one affine grid per sample; ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8; grayscale with p=0.2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (x * _LUMA.to(x).view(1, 3, 1, 1)).sum(1, keepdim=True)  # (B, 1, H, W)


def random_resized_crop_flip(x: torch.Tensor, scale: tuple[float, float] = (0.08, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    B = x.shape[0]
    dev = x.device
    area = torch.empty(B, device=dev).uniform_(*scale)
    log_r = torch.empty(B, device=dev).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)  # crop width as a fraction of the image
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(B, device=dev) * (1 - w) + w / 2) * 2 - 1  # crop centre in [-1, 1]
    cy = (torch.rand(B, device=dev) * (1 - h) + h / 2) * 2 - 1
    flip = torch.where(torch.rand(B, device=dev) < 0.5, -1.0, 1.0)
    theta = torch.zeros(B, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    v = maxc
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp(min=1e-8), torch.zeros_like(maxc))
    dc = delta.clamp(min=1e-8)
    rc, gc, bc = (maxc - r) / dc, (maxc - g) / dc, (maxc - b) / dc
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, v], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    r = torch.stack([v, q, p, p, t, v], 1).gather(1, i.unsqueeze(1)).squeeze(1)
    g = torch.stack([t, v, v, q, p, p], 1).gather(1, i.unsqueeze(1)).squeeze(1)
    b = torch.stack([p, p, t, v, v, q], 1).gather(1, i.unsqueeze(1)).squeeze(1)
    return torch.stack([r, g, b], 1)


def color_jitter(x: torch.Tensor, strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
                 p: float = 0.8) -> torch.Tensor:
    B = x.shape[0]
    dev = x.device
    bri, con, sat, hue = strength

    def factor(s: float) -> torch.Tensor:
        return torch.empty(B, 1, 1, 1, device=dev).uniform_(1 - s, 1 + s)

    y = (x * factor(bri)).clamp(0, 1)
    mean = _gray(y).mean((2, 3), keepdim=True)
    y = ((y - mean) * factor(con) + mean).clamp(0, 1)
    g = _gray(y)
    y = ((y - g) * factor(sat) + g).clamp(0, 1)
    hsv = _rgb_to_hsv(y)
    shift = torch.empty(B, 1, 1, device=dev).uniform_(-hue, hue)
    hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
    y = _hsv_to_rgb(hsv).clamp(0, 1)
    apply = (torch.rand(B, 1, 1, 1, device=dev) < p).to(x)
    return apply * y + (1 - apply) * x


def random_grayscale(x: torch.Tensor, p: float = 0.2) -> torch.Tensor:
    apply = (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p).to(x)
    return apply * _gray(x).expand_as(x) + (1 - apply) * x


def simclr_augment(x: torch.Tensor) -> torch.Tensor:
    """One random SimCLR view of each image in ``x: [B, 3, H, W]`` (values in [0, 1])."""
    return random_grayscale(color_jitter(random_resized_crop_flip(x)))
