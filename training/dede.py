"""DeDe (Hou et al., CVPR 2025): a masked autoencoder conditioned on the victim encoder's embedding.

    x --patchify--> tokens (N = (H/p)^2) --keep K random--> PatchEncoder h_e --> latent (1 + K tokens)
    latent[0] <- W e  (the victim embedding, projected, overwrites the CLS slot)
    Decoder h_d: visible tokens + a shared mask token at every removed position --> patches (N, 3 p^2)

As in the official code: learnable positional embeddings (trunc-normal 0.02) added before masking, a CLS
token prepended after masking, pre-LayerNorm blocks without qkv bias, a final LayerNorm in h_e only,
decoder positional embeddings over N + 1 positions, token 0 dropped before the pixel head.

Masking conventions: ``ids_keep: (B, K)`` are the kept patch indices (raster order ids in [0, N));
``mask: (B, N)`` is 1 = removed, 0 = kept. Masks come from a per-sample argsort of noise; visible tokens are
taken with ``gather`` and put back with ``scatter`` (fixed shapes, exportable to ONNX even for K = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DeDeConfig:
    img_size: int = 32
    patch_size: int = 4
    victim_dim: int = 512
    width: int = 192
    depth: int = 12
    heads: int = 3
    dec_width: int = 192
    dec_depth: int = 4
    dec_heads: int = 3
    mlp_ratio: float = 4.0

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch_size) ** 2


def kept_count(num_patches: int, mask_ratio: float) -> int:
    """K = int(N * (1 - ratio)): 0 for N = 64 at 0.99, 6 at 0.9 (the official rounding)."""
    return int(num_patches * (1 - mask_ratio))


def score_mask_ratio(train_ratio: float) -> float:
    """alpha' = min(1.1 alpha, 1): the paper's test-time mask ratio, rounded to 6 decimals (0.99, not
    0.9900000000000001; the kept count is the same)."""
    return round(min(1.1 * train_ratio, 1.0), 6)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, h, L, D/h)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)  # (B, h, L, L)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEncoder(nn.Module):
    """h_e: patchify, add positions, keep the given patches, prepend CLS, transformer, LayerNorm."""

    def __init__(self, cfg: DeDeConfig) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.width))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        t = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        D = t.shape[-1]
        t = torch.gather(t, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))  # (B, K, D)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], 1)  # (B, 1 + K, D)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)


class Decoder(nn.Module):
    """h_d: victim token + visible tokens + mask tokens -> pixels of every patch."""

    def __init__(self, cfg: DeDeConfig) -> None:
        super().__init__()
        self.num_patches = cfg.num_patches
        self.embed = nn.Linear(cfg.width, cfg.dec_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dec_width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.dec_width))
        self.blocks = nn.ModuleList(
            Block(cfg.dec_width, cfg.dec_heads, cfg.mlp_ratio) for _ in range(cfg.dec_depth)
        )
        self.pred = nn.Linear(cfg.dec_width, 3 * cfg.patch_size**2)

    def forward(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        t = self.embed(latent)  # (B, 1 + K, Dd)
        B, _, Dd = t.shape
        full = self.mask_token.expand(B, self.num_patches, Dd)  # (B, N, Dd): every patch masked
        full = full.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, Dd), t[:, 1:])  # visible back in place
        t = torch.cat([t[:, :1], full], 1) + self.pos_embed  # (B, 1 + N, Dd)
        for blk in self.blocks:
            t = blk(t)
        return self.pred(t[:, 1:])  # (B, N, 3 p^2)


class DeDe(nn.Module):
    def __init__(self, cfg: DeDeConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_encoder = PatchEncoder(cfg)
        self.embedding_proj = nn.Linear(cfg.victim_dim, cfg.width, bias=False)
        self.decoder = Decoder(cfg)
        self._init_weights()

    def _init_weights(self) -> None:
        for p in (self.patch_encoder.pos_embed, self.patch_encoder.cls_token, self.decoder.mask_token,
                  self.decoder.pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_encoder.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    # -- masking -------------------------------------------------------------------------------------
    def random_masking(self, batch: int, mask_ratio: float, device: torch.device | str = "cpu",
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """A fresh random subset of patches per sample -> ids_keep (B, K)."""
        N = self.cfg.num_patches
        noise = torch.rand(batch, N, device=device, generator=generator)
        ids_shuffle = torch.argsort(noise, dim=1)
        return ids_shuffle[:, : kept_count(N, mask_ratio)]

    def removed_mask(self, ids_keep: torch.Tensor) -> torch.Tensor:
        """(B, K) kept ids -> (B, N) mask, 1 = removed."""
        mask = torch.ones(ids_keep.shape[0], self.cfg.num_patches, device=ids_keep.device)
        return mask.scatter(1, ids_keep, torch.zeros_like(ids_keep, dtype=mask.dtype))

    # -- stages --------------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, p*p*3)."""
        p, B = self.cfg.patch_size, x.shape[0]
        h = x.shape[2] // p
        x = x.reshape(B, 3, h, p, h, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(B, h * h, p * p * 3)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*3) -> (B, 3, H, W)."""
        p, B = self.cfg.patch_size, patches.shape[0]
        h = self.cfg.img_size // p
        x = patches.reshape(B, h, h, p, p, 3).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, 3, h * p, h * p)

    def forward_encoder(self, x: torch.Tensor, e: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        latent = self.patch_encoder(x, ids_keep)  # (B, 1 + K, D)
        victim_token = self.embedding_proj(e).unsqueeze(1)  # (B, 1, D): overwrites the CLS slot
        return torch.cat([victim_token, latent[:, 1:]], 1)

    def forward_decoder(self, latent: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent, ids_keep)

    def patch_errors(self, x: torch.Tensor, pred: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Squared error summed within each patch, zero on kept patches -> (B, N)."""
        err = ((pred - self.patchify(x)) ** 2).sum(-1)  # (B, N)
        return err * self.removed_mask(ids_keep)

    def forward_loss(self, x: torch.Tensor, pred: torch.Tensor, ids_keep: torch.Tensor,
                     per_sample: bool = False) -> torch.Tensor:
        """Training loss: mean squared error per masked pixel (target = the normalised image).

        ``per_sample=True`` gives (B,) instead of the batch mean (every sample masks the same count)."""
        mask = self.removed_mask(ids_keep)
        err = ((pred - self.patchify(x)) ** 2).mean(-1)  # (B, N)
        per = (err * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B,)
        return per if per_sample else per.mean()

    def forward(self, x: torch.Tensor, e: torch.Tensor, ids_keep: torch.Tensor, per_sample: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) normalised, e: (B, E) raw victim embedding, ids_keep: (B, K) ->
        (loss, or (B,) per-sample losses with ``per_sample``; pred (B, N, 3 p^2))."""
        pred = self.forward_decoder(self.forward_encoder(x, e, ids_keep), ids_keep)
        return self.forward_loss(x, pred, ids_keep, per_sample), pred


def paper_score(patch_errors: torch.Tensor) -> torch.Tensor:
    """The paper's per-image score: sum of squared error over masked pixels -> (B,)."""
    return patch_errors.sum(1)


class DetectorGraph(nn.Module):
    """What ``detector.onnx`` computes: (image, embedding, kept ids) -> (score, reconstruction, patch_error).

    image: (B, 3, H, W) normalised; embedding: (B, E); keep: (B, K) int64.
    score: (B,) paper score; reconstruction: (B, 3, H, W) the decoder's prediction of every patch;
    patch_error: (B, N) squared error per patch (0 on kept patches)."""

    def __init__(self, model: DeDe) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, embedding: torch.Tensor, keep: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        pred = m.forward_decoder(m.forward_encoder(image, embedding, keep), keep)
        errors = m.patch_errors(image, pred, keep)
        return paper_score(errors), m.unpatchify(pred), errors



__all__ = ["DeDe", "DeDeConfig", "DetectorGraph", "kept_count", "paper_score", "score_mask_ratio"]
