"""MiniCLIP: a tiny CLIP (Radford et al. 2021) trained on CIFAR-10 with templated captions, the stand-in for
the CLIP encoders that CLIP Backdoor and BadCLIP attack (see reference/implementation-notes.md, section 3).

- ``ImageTower``: the CIFAR ResNet-18 followed by a linear projection to the joint space. The WHOLE tower is
  the victim encoder (registry name ``clip_image``), saved with ``save_encoder`` like any other encoder.
- ``TextTower``: a deterministic word-level tokenizer over a fixed vocabulary (templates + class names),
  token + positional embeddings, a causal transformer, a final LayerNorm and a projection of the
  end-of-text token, as CLIP's text encoder.
- ``MiniCLIP``: both towers and a learnable logit scale; ``clip_loss`` is CLIP's symmetric InfoNCE.
- Zero-shot classification: the class embedding is the mean of the normalised embeddings of all templates
  of the class (renormalised); an image's class is the nearest class embedding by cosine.

Directory layout of a saved CLIP: ``encoder.safetensors`` + ``encoder.json`` (the image tower, readable by
``load_encoder``), ``text_encoder.safetensors`` and ``clip.json`` (vocabulary, templates, class names,
logit scale, text tower dimensions).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from training.encoders import CifarResNet18, EncoderSpec, load_encoder, register_encoder, save_encoder

TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a picture of the {}.",
    "a close-up photo of a {}.",
    "a low resolution photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a cropped photo of a {}.",
    "an image of a {}.",
    "a good photo of the {}.",
)
SPECIALS = ("<pad>", "<sot>", "<eot>", "<unk>")
TEXT_FILE = "text_encoder.safetensors"
CLIP_FILE = "clip.json"
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: ``"A photo of a cat."`` -> a, photo, of, a, cat, ."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Word-level tokenizer over a fixed vocabulary: ``<sot> w1 ... wn <eot> <pad> ...`` of a fixed length.
    Unknown words map to ``<unk>``; texts longer than the context are cut (the ``<eot>`` is kept)."""

    def __init__(self, vocab: Sequence[str], context_length: int) -> None:
        if tuple(vocab[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"the vocabulary must start with {SPECIALS}")
        if context_length < 3:
            raise ValueError("context_length must be at least 3")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.context_length = context_length
        self.pad_id, self.sot_id, self.eot_id, self.unk_id = range(4)

    @classmethod
    def build(cls, templates: Sequence[str], classnames: Sequence[str],
              fills: Sequence[str] = ("{}",)) -> WordTokenizer:
        """The vocabulary of every template filled with every class name, inside each of ``fills`` (phrases around
        the class name, ``ClipInfo.fills``), sorted: deterministic."""
        texts = [t.format(f.format(c)) for t in templates for f in fills for c in classnames]
        vocab = sorted({w for text in texts for w in words(text)})
        return cls([*SPECIALS, *vocab], max(len(words(t)) for t in texts) + 2)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """texts -> token ids (N, L) int64, L = context_length."""
        out = torch.full((len(texts), self.context_length), self.pad_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [self.index.get(w, self.unk_id) for w in words(text)][: self.context_length - 2]
            row = [self.sot_id, *ids, self.eot_id]
            out[i, : len(row)] = torch.tensor(row)
        return out


class ImageTower(nn.Module):
    """CLIP's image encoder: CIFAR ResNet-18 (8 * width features) -> linear projection to ``embed_dim``.
    x: (B, 3, H, W) normalised -> (B, embed_dim), unnormalised (CLIP normalises in the loss)."""

    def __init__(self, width: int = 64, embed_dim: int = 256) -> None:
        super().__init__()
        self.backbone = CifarResNet18(width)
        self.proj = nn.Linear(self.backbone.embed_dim, embed_dim, bias=False)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(x))  # (B, 8w) -> (B, D)


register_encoder("clip_image", ImageTower)  # the victim encoder of the CLIP attacks, loadable by name


class TextTower(nn.Module):
    """CLIP's text encoder: tokens (N, L) -> (N, embed_dim), the projected feature of the ``<eot>`` token
    after a causal transformer (pre-LayerNorm blocks) and a final LayerNorm."""

    def __init__(self, vocab_size: int, context_length: int, width: int = 128, layers: int = 3,
                 heads: int = 4, embed_dim: int = 256, eot_id: int = 2) -> None:
        super().__init__()
        self.eot_id = eot_id
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.randn(context_length, width) * 0.01)
        block = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.ln_final = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(context_length),
                             persistent=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:L]  # (N, L, W)
        mask: torch.Tensor = self.causal_mask  # type: ignore[assignment]  # (L, L) additive, -inf above the diagonal
        x = self.transformer(x, mask=mask[:L, :L], is_causal=True)  # (N, L, W)
        x = self.ln_final(x)
        eot = (tokens == self.eot_id).int().argmax(1)  # (N,) position of the end-of-text token
        return self.proj(x[torch.arange(len(x), device=x.device), eot])  # (N, D)


def clip_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: logits (B, B), pair i is (image i, caption i)."""
    targets = torch.arange(len(logits_per_image), device=logits_per_image.device)
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)) / 2


class MiniCLIP(nn.Module):
    """Image tower + text tower + a learnable temperature (logit scale, initialised at 1/0.07, clamped at
    100 as in CLIP)."""

    def __init__(self, image: ImageTower, text: TextTower, logit_scale: float = math.log(1 / 0.07)) -> None:
        super().__init__()
        self.image, self.text = image, text
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    def scale(self) -> torch.Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), tokens (N, L) -> logits_per_image (B, N) = scale * cosine similarity."""
        i = F.normalize(self.image(images), dim=-1)  # (B, D)
        t = F.normalize(self.text(tokens), dim=-1)  # (N, D)
        return self.scale() * i @ t.T


def class_embeddings(text: nn.Module, tokenizer: WordTokenizer, classnames: Sequence[str],
                     templates: Sequence[str]) -> torch.Tensor:
    """Zero-shot classifier weights (C, D): per class, the mean of its normalised template embeddings,
    renormalised. Differentiable (no_grad is the caller's choice)."""
    device = next(text.parameters()).device
    tokens = tokenizer.encode([t.format(c) for c in classnames for t in templates]).to(device)  # (C*T, L)
    e = F.normalize(text(tokens), dim=-1).view(len(classnames), len(templates), -1)  # (C, T, D)
    return F.normalize(e.mean(1), dim=-1)


def zero_shot_logits(image_emb: torch.Tensor, class_emb: torch.Tensor) -> torch.Tensor:
    """image_emb (B, D) unnormalised, class_emb (C, D) normalised -> cosine similarities (B, C)."""
    return F.normalize(image_emb, dim=-1) @ class_emb.T


@dataclass
class ClipInfo:
    """``clip.json``: what rebuilds the text tower and the zero-shot classifier."""

    vocab: list[str]
    context_length: int
    templates: list[str]
    classnames: list[str]
    embed_dim: int
    text_width: int = 128
    text_layers: int = 3
    text_heads: int = 4
    logit_scale: float = math.log(1 / 0.07)  # log of the learned scale
    # phrases around the class name that describe the image ("dark red {} on blue"), see ``clip_captions``;
    # empty: captions name the class only (the plain mini-CLIP)
    attributes: list[str] = field(default_factory=list)

    @property
    def fills(self) -> list[str]:
        """What fills a template: the class name alone (fill 0), then each attribute phrase."""
        return ["{}", *self.attributes]

    def tokenizer(self) -> WordTokenizer:
        return WordTokenizer(self.vocab, self.context_length)

    def text_tower(self) -> TextTower:
        return TextTower(len(self.vocab), self.context_length, self.text_width, self.text_layers,
                         self.text_heads, self.embed_dim, eot_id=SPECIALS.index("<eot>"))


def save_clip(clip: MiniCLIP, spec: EncoderSpec, info: ClipInfo, directory: str | Path) -> Path:
    """Image tower via ``save_encoder`` (encoder.safetensors/json), text tower + clip.json next to it."""
    directory = Path(directory)
    save_encoder(clip.image.cpu(), spec, directory)
    info.logit_scale = float(clip.logit_scale.detach())
    state = {k: v.detach().cpu().contiguous() for k, v in clip.text.state_dict().items()}
    save_file(state, directory / TEXT_FILE)
    (directory / CLIP_FILE).write_text(json.dumps(asdict(info), indent=2))
    return directory


def load_clip(directory: str | Path) -> tuple[MiniCLIP, EncoderSpec, ClipInfo]:
    """Inverse of ``save_clip``; the model is returned in eval mode."""
    directory = Path(directory)
    if not (directory / CLIP_FILE).exists():
        raise FileNotFoundError(f"{directory} is not a CLIP directory (no {CLIP_FILE}); "
                                "make one with `dede pretrain --method clip`")
    image, spec = load_encoder(directory)
    if not isinstance(image, ImageTower):
        raise ValueError(f"{directory}: the image encoder is {spec.name!r}, not a CLIP image tower")
    info = ClipInfo(**json.loads((directory / CLIP_FILE).read_text()))
    text = info.text_tower()
    text.load_state_dict(load_file(directory / TEXT_FILE))
    return MiniCLIP(image, text, info.logit_scale).eval(), spec, info


def copy_text_tower(src: str | Path, dst: str | Path) -> None:
    """An attack fine-tunes only the image tower: the attacked CLIP keeps the clean text tower files."""
    Path(dst).mkdir(parents=True, exist_ok=True)
    for name in (TEXT_FILE, CLIP_FILE):
        shutil.copyfile(Path(src) / name, Path(dst) / name)
