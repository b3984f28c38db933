"""Captions of the mini-CLIP: a template filled with the class name, optionally inside a phrase that describes
the image (its tone, the colour of its centre and of its border).

Captions made from ten class names say nothing but the class, so plain CLIP on them learns an embedding that
mostly names the class (docs/research/CONCLUSIONS.md: class collapse). Web captions, which real CLIPs learn from, say
much more. ``ClipConfig.caption_attributes`` gives half of the training captions a phrase computed from the
image's own pixels, e.g. "a photo of a dark red truck on blue.", so that the image embedding must keep some of
the image's colours and layout to match its caption. The zero-shot classifier keeps the plain templates.

Caption table: row ``(c * T + t) * F + f`` is ``templates[t].format(fills[f].format(classnames[c]))``, fill 0 being
the class name alone (``ClipInfo.fills``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.pretrain.clip_model import ClipInfo, WordTokenizer

TONES = ("dark", "", "bright")  # mean luminance below DARK, between, above BRIGHT
DARK, BRIGHT = 0.35, 0.6
COLOURS = ("gray", "red", "orange", "yellow", "green", "blue", "purple")
HUE_EDGES = (20, 45, 70, 165, 260, 330)  # degrees: red | orange | yellow | green | blue | purple | red
GRAY_SATURATION = 0.1  # (max - min) / max below this: no colour (a third of CIFAR-10 centres)
ATTRIBUTES = [" ".join(w for w in (tone, centre, "{}", "on", border) if w)
              for tone in TONES for centre in COLOURS for border in COLOURS]  # 147 phrases, "dark red {} on blue"
ATTRIBUTE_SHARE = 0.5  # of the training captions; the rest name the class only, as the zero-shot templates do


def colour_ids(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) mean colours in [0, 1] -> (N,) indices into ``COLOURS``."""
    mx, mn = rgb.max(1), rgb.min(1)
    d = np.maximum(mx - mn, 1e-8)
    r, g, b = rgb.T
    hue = 60 * np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))  # (N,)
    bucket = np.searchsorted(HUE_EDGES, hue, side="right") % len(HUE_EDGES)  # 0 red ... 5 purple, >= 330 red
    return np.where((mx - mn) / np.maximum(mx, 1e-8) < GRAY_SATURATION, 0, 1 + bucket)


def image_attributes(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N,) int64 fill indices in [1, 1 + len(ATTRIBUTES)): the image's tone (mean
    luminance), the colour of its centre (the middle half of each side) and of the border around it."""
    out = []
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].astype(np.float32) / 255  # (n, H, W, 3)
        h, q = x.shape[1], x.shape[1] // 4
        inner = x[:, q : h - q, q : h - q].sum((1, 2))  # (n, 3)
        centre = inner / (h - 2 * q) ** 2
        border = (x.sum((1, 2)) - inner) / (h * h - (h - 2 * q) ** 2)
        lum = x.mean((1, 2)) @ np.array([0.299, 0.587, 0.114], np.float32)  # (n,)
        tone = np.digitize(lum, (DARK, BRIGHT))
        out.append(1 + (tone * len(COLOURS) + colour_ids(centre)) * len(COLOURS) + colour_ids(border))
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def caption_tokens(tokenizer: WordTokenizer, classnames: list[str], templates: list[str],
                   fills: list[str]) -> torch.Tensor:
    """The caption table (see the module docstring) -> tokens (C * T * F, L)."""
    return tokenizer.encode([t.format(f.format(c)) for c in classnames for t in templates for f in fills])


def random_captions(labels: torch.Tensor, n_templates: int, attributes: torch.Tensor | None = None,
                    n_fills: int = 1) -> torch.Tensor:
    """labels (B,) -> caption rows (B,): the image's class, a random template and, with ``attributes`` (B,)
    (the images' fill indices), its attribute phrase for ``ATTRIBUTE_SHARE`` of them, the class alone for the
    rest."""
    rows = labels * n_templates + torch.randint(0, n_templates, labels.shape, device=labels.device)
    if attributes is None:
        return rows * n_fills
    described = torch.rand(labels.shape, device=labels.device) < ATTRIBUTE_SHARE
    return rows * n_fills + torch.where(described, attributes, torch.zeros_like(attributes))


def encode_captions(text: nn.Module, tokens: torch.Tensor, rows: torch.Tensor | None = None,
                    chunk: int = 2048) -> torch.Tensor:
    """Normalised text embeddings of caption ``rows`` (B,) of the table ``tokens`` (all rows when None) -> (B, D).
    Each distinct caption runs through the text tower once (differentiably), in chunks."""
    if rows is None:
        uniq, inverse = torch.arange(len(tokens), device=tokens.device), None
    else:
        uniq, inverse = torch.unique(rows, return_inverse=True)
    emb = torch.cat([text(tokens[uniq[i : i + chunk]]) for i in range(0, len(uniq), chunk)])
    emb = F.normalize(emb, dim=-1)
    return emb if inverse is None else emb[inverse]


class CaptionSampler:
    """A CLIP's caption table on ``device`` and, when it was trained with attribute captions, the fill ids of the
    ``images`` it is trained on (N, H, W, 3): what pre-training and the CLIP attacks' fine-tuning draw captions from.
    ``class_only`` (N,) bool: rows whose captions never describe their image (the attack's poisoned pairs without
    ``poison_attributes``)."""

    def __init__(self, info: ClipInfo, images: np.ndarray, device: str | torch.device,
                 class_only: torch.Tensor | None = None) -> None:
        self.n_templates, self.n_fills = len(info.templates), len(info.fills)
        self.tokens = caption_tokens(info.tokenizer(), info.classnames, info.templates, info.fills).to(device)
        self.attrs = torch.from_numpy(image_attributes(images)).to(device) if info.attributes else None  # (N,)
        if self.attrs is not None and class_only is not None:
            self.attrs = self.attrs.masked_fill(class_only, 0)

    def draw(self, labels: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Caption rows (B,) of ``tokens`` for the images ``idx`` (B,) captioned as classes ``labels`` (B,)."""
        return random_captions(labels, self.n_templates, None if self.attrs is None else self.attrs[idx], self.n_fills)
