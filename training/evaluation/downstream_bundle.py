"""The downstream grid's callables from a bundle, through ``service.scoring.Scorer`` (the product's scoring path).

    models = BundleModels("models/demo-cifar10-badencoder", threads=1)
    attack = bundle_attack("models/demo-cifar10-badencoder")
    records = downstream_grid(models.embed, attack.trigger, attack.name, {"dede": models.detector()})

One ONNX Runtime pass (``Scorer.run``) gives an image set's embeddings and DeDe scores together; the results
are memoised by the images' content digest, so ``embed`` then ``score`` of the same set costs one pass.
``torch_embed_fn`` wraps a torch encoder (``training.encoders.load_encoder``) instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from service.manifest import Manifest, load_manifest
from service.scores import compute_score
from service.scoring import DEFAULT_PROVIDERS, Scorer
from training.encoders import EncoderSpec, embed
from training.evaluation.downstream import Detector, EmbedFn
from training.triggers import Trigger, make_trigger


def _digest(images: np.ndarray) -> str:
    h = hashlib.sha256(str((images.shape, images.dtype.str)).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


class BundleModels:
    """``embed`` (uint8 (N, H, W, 3) -> (N, E)) and DeDe's ``score`` (-> (N,)) of one bundle."""

    def __init__(self, bundle_dir: str | Path, threads: int = 0, batch_size: int = 256,
                 providers: tuple[str, ...] = DEFAULT_PROVIDERS) -> None:
        self.scorer = Scorer.from_bundle(bundle_dir, providers=providers, threads=threads)
        self.batch_size = batch_size
        self._memo: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def manifest(self) -> Any:
        return self.scorer.manifest

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (N, E) float32, scores (N,) float32), memoised by content."""
        key = _digest(images)
        if key not in self._memo:
            embs, scores = [], []
            kind = self.manifest.detector.score
            for i in range(0, len(images), self.batch_size):
                out = self.scorer.run(images[i : i + self.batch_size])
                embs.append(out["embedding"].astype(np.float32))
                scores.append(compute_score(out["patch_error"], kind, out["x"]))
            e_dim = self.manifest.encoder.embed_dim
            self._memo[key] = (np.concatenate(embs) if embs else np.zeros((0, e_dim), np.float32),
                               np.concatenate(scores) if scores else np.zeros(0, np.float32))
        return self._memo[key]

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)[0]

    def score(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)[1]

    def thresholds(self) -> dict[str, float]:
        """Every calibrated threshold of the bundle by rule; the deployed one included."""
        t = self.manifest.threshold
        return {t.rule: float(t.value)} | {k: float(v) for k, v in t.alternatives.items()}

    def detector(self, rule: str | None = None) -> Detector:
        """DeDe at the bundle's deployed threshold, or at the calibrated alternative ``rule``."""
        thresholds = self.thresholds()
        rule = rule or self.manifest.threshold.rule
        if rule not in thresholds:
            raise ValueError(f"bundle has no threshold for rule {rule!r}; has: {', '.join(thresholds)}")
        return Detector(self.score, thresholds[rule])

    def clear(self) -> None:
        self._memo.clear()


@dataclass(frozen=True)
class BundleAttack:
    """What a bundle's provenance says about its encoder's attack."""

    name: str  # badencoder, drupe, ..., or "none" for a clean encoder
    trigger_name: str | None
    trigger_params: dict[str, Any]
    target_class: str | None
    image_size: int

    @property
    def trigger(self) -> Trigger:
        if not self.trigger_name:
            raise ValueError(f"the bundle's encoder ({self.name}) records no trigger; take it from the attacked one")
        return make_trigger(self.trigger_name, self.image_size, self.trigger_params)


def bundle_attack(bundle_dir: str | Path) -> BundleAttack:
    return manifest_attack(load_manifest(bundle_dir))


def manifest_attack(m: Manifest) -> BundleAttack:
    """``bundle_attack`` of a manifest already loaded (a ``Scorer``'s), without reading and hashing it again."""
    victim = m.provenance.victim
    return BundleAttack(victim.get("attack") or "none", victim.get("trigger"), victim.get("trigger_params") or {},
                        victim.get("target_class"), m.encoder.input_size)


def torch_embed_fn(model: nn.Module, spec: EncoderSpec, device: str = "cpu", batch_size: int = 512) -> EmbedFn:
    """An ``EmbedFn`` of a torch encoder (eval mode, no gradients): uint8 (N, H, W, 3) -> (N, E) float32."""
    model = model.to(device)
    return lambda images: embed(model, images, spec, batch_size=batch_size, device=device).numpy()
