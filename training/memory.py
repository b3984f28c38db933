"""Peak memory of ``dede train``, estimated before it starts, so that a config that cannot fit is refused with the
setting to change instead of being ended by the kernel's OOM killer.

The estimate counts what grows with the config (bytes, float32):
- ``model``: the detector's weights, gradients and Adam's two moments (4 x parameters);
- ``activations``: what autograd keeps for one batch: per transformer block of T tokens, width d and h heads about
  ``ACT_PER_TOKEN_WIDTH * T * d + ATT_PER_HEAD_TOKEN2 * h * T**2`` values, for the encoder (T = kept patches + 1)
  and the decoder (T = patches + 1), plus the image, its patches and the reconstruction error;
- ``images``: the auxiliary training images held as uint8 tensors (N x S x S x 3) on a GPU (on the CPU they are a
  memory-mapped file, paged in as used);
- ``embeddings``: the cached victim embeddings (N x E; memory-mapped on the CPU too) and the victim's own weights;
- ``runtime``: a fixed allowance for the torch runtime itself.
``SLACK`` covers the allocator's fragmentation. tests/training/test_memory.py checks the estimate against the peak
RSS of a real run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from training.config import TrainConfig
from training.dede import DeDe, DeDeConfig, kept_count

ACT_PER_TOKEN_WIDTH = 20  # LayerNorms, qkv, attention output, the MLP's 4d hidden twice, residuals
ATT_PER_HEAD_TOKEN2 = 2  # the attention scores and their softmax
RUNTIME_BYTES = 600 * 2**20
SLACK = 1.3
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    parts: dict[str, int]  # bytes per part (see the module doc)

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()) * SLACK)

    def describe(self) -> str:
        return ", ".join(f"{k} {v / GIB:.2f}" for k, v in self.parts.items()) + f" GiB (x{SLACK} slack)"


def _block_values(tokens: int, width: int, heads: int, depth: int) -> int:
    return depth * (ACT_PER_TOKEN_WIDTH * tokens * width + ATT_PER_HEAD_TOKEN2 * heads * tokens**2)


def train_memory(cfg: TrainConfig, model_cfg: DeDeConfig, n_train: int, device: str, victim: nn.Module | None = None
                 ) -> MemoryEstimate:
    """The estimated peak of training ``model_cfg`` with ``cfg``'s batch size on ``n_train`` auxiliary images. On the
    CPU the images and embeddings are memory-mapped files (paged in as used), so only a GPU holds them whole."""
    with torch.device("meta"):
        params = sum(p.numel() for p in DeDe(model_cfg).parameters())
    n, s, p = model_cfg.num_patches, model_cfg.img_size, model_cfg.patch_size
    kept = kept_count(n, cfg.mask_ratio)
    per_sample = (_block_values(kept + 1, cfg.width, cfg.heads, cfg.depth)
                  + _block_values(n + 1, cfg.dec_width, cfg.dec_heads, cfg.dec_depth)
                  + 4 * 3 * s * s + 4 * n * 3 * p * p + 2 * n * cfg.dec_width)
    victim_bytes = sum(t.numel() * t.element_size() for t in victim.state_dict().values()) if victim else 0
    return MemoryEstimate({
        "model": 16 * params,
        "activations": 4 * per_sample * cfg.batch_size,
        "images": n_train * s * s * 3 if device.startswith("cuda") else 0,
        "embeddings": (4 * n_train * model_cfg.victim_dim if device.startswith("cuda") else 0) + victim_bytes,
        "runtime": RUNTIME_BYTES,
    })


def available_memory(device: str) -> int:
    """Bytes a run may still use: free GPU memory on CUDA, else the kernel's MemAvailable (and the cgroup's limit,
    when one is set, minus what the group already uses)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    meminfo = Path("/proc/meminfo")
    if not meminfo.exists():  # not Linux: no reliable figure, do not refuse
        return 2**62
    fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
    avail = int(fields["MemAvailable"].split()[0]) * 1024
    cgroup = Path("/sys/fs/cgroup/memory.max")
    if cgroup.exists() and cgroup.read_text().strip() != "max":
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        avail = min(avail, int(cgroup.read_text()) - used)
    return avail


def check_fits(estimate: MemoryEstimate, device: str, cfg: TrainConfig) -> None:
    """Refuse (``MemoryError``, one line with the setting to change) an estimate above the available memory.
    ``DEDE_SKIP_MEMORY_CHECK=1`` skips the check."""
    if os.environ.get("DEDE_SKIP_MEMORY_CHECK") == "1":
        return
    avail = available_memory(device)
    if estimate.total <= avail:
        return
    per_sample = estimate.parts["activations"] / max(cfg.batch_size, 1)
    fixed = sum(estimate.parts.values()) - estimate.parts["activations"]
    fits = int((avail / SLACK - fixed) // per_sample) if per_sample else 0  # the batch size that would fit
    hint = (f"--set batch_size={fits}" if fits >= 8 else
            "a larger --set patch_size, smaller widths, or fewer --set aux_images")
    raise MemoryError(f"this config needs about {estimate.total / GIB:.1f} GiB on {device} ({estimate.describe()}) but "
                      f"{avail / GIB:.1f} GiB are available: try {hint}")
