"""The bundle contract between ``training`` (writer) and ``service`` (reader).

A bundle is a folder ``models/<name>/`` holding ``manifest.json``, ``encoder.onnx`` and ``detector.onnx``.
``load_manifest`` validates the JSON against ``Manifest`` and checks every file's sha256: a bundle with a
missing file or a wrong hash is refused with a ``BundleError`` that says which file and why.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.errors import BundleError
from service.scores import SCORE_PATTERN

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EncoderInfo(_Strict):
    file: str = "encoder.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input_size: int = Field(gt=0, le=4096)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    embed_dim: int = Field(gt=0)
    architecture: str
    # where mean/std came from (cifar10, imagenet, timm, processor, open_clip, custom); absent in older bundles
    normalization: str | None = None


class DetectorInfo(_Strict):
    file: str = "detector.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    patch_size: int = Field(gt=0)
    num_patches: int = Field(gt=0)
    train_mask_ratio: float = Field(ge=0, le=1)
    test_mask_ratio: float = Field(ge=0, le=1)
    kept_patches: int = Field(ge=0)
    width: int = Field(gt=0)
    depth: int = Field(gt=0)
    dec_width: int = Field(gt=0)
    dec_depth: int = Field(gt=0)
    score: str = Field("paper", pattern=SCORE_PATTERN)  # see service.scores

    @model_validator(mode="after")
    def _kept_fits(self) -> DetectorInfo:
        if self.kept_patches >= self.num_patches:
            raise ValueError(f"kept_patches {self.kept_patches} must be < num_patches {self.num_patches}")
        return self


class ScoreStats(_Strict):
    count: int = Field(ge=0)
    mean: float
    std: float
    quantiles: dict[str, float]


class ContentFit(_Strict):
    """How a ``content@a`` score's exponent was fitted (``service.scores.fit_content_exponent``)."""

    exponent: float = Field(ge=0)
    r: float = Field(ge=-1, le=1)  # correlation of log paper score and log content on those images
    images: int = Field(gt=0)  # auxiliary training images it was fitted on


class ThresholdInfo(_Strict):
    value: float = Field(gt=0)
    rule: str = Field(pattern=r"^(paper-1\.5x|fpr@0?\.\d+)$")
    mask_ratio: float = Field(ge=0, le=1)
    score: str | None = Field(None, pattern=SCORE_PATTERN)  # the score calibrated (absent in older bundles)
    content_fit: ContentFit | None = None
    alternatives: dict[str, float] = {}
    aux_train: ScoreStats
    holdout: ScoreStats


class Provenance(_Strict):
    aux_dataset: str
    aux_fingerprint: str
    aux_images: int  # images the decoder trained on (after drop_dense, if any)
    poison_rate: float = 0.0
    epochs: int
    final_loss: float
    preset: str
    code_version: str
    created: str
    train_wall_s: float = 0.0
    device: str = "cpu"
    drop_worst: float | None = None  # robust training: share of each batch left out (None: not recorded)
    drop_dense: float | None = None  # share of auxiliary images left out as the densest clump (None: not recorded)
    victim: dict[str, Any] = {}  # what is known of how the encoder was made (attack, target class...)


class Manifest(_Strict):
    format_version: Literal[1] = 1
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    version: str
    encoder: EncoderInfo
    detector: DetectorInfo
    threshold: ThresholdInfo
    provenance: Provenance
    evaluation: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        side = self.encoder.input_size // self.detector.patch_size
        if side * self.detector.patch_size != self.encoder.input_size or side * side != self.detector.num_patches:
            raise ValueError("detector patches do not tile the encoder's input size")
        if abs(self.threshold.mask_ratio - self.detector.test_mask_ratio) > 1e-9:
            raise ValueError("the threshold was calibrated at another mask ratio than the detector scores with")
        if self.threshold.score is not None and self.threshold.score != self.detector.score:
            raise ValueError(f"the threshold was calibrated for the score {self.threshold.score!r}, but the detector "
                             f"scores with {self.detector.score!r}")
        return self


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(bundle_dir: str | Path, verify: bool = True) -> Manifest:
    """Read and validate ``<bundle_dir>/manifest.json``; with ``verify`` check every file's sha256."""
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} does not exist or is not a directory")
    if not path.is_file():
        raise BundleError(f"bundle {bundle} has no {MANIFEST}")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        raise BundleError(f"{path} does not match the bundle schema: {exc}") from exc
    if verify:
        for info in (manifest.encoder, manifest.detector):
            file = bundle / info.file
            if Path(info.file).name != info.file:
                raise BundleError(f"{path}: file {info.file!r} must be a plain name inside the bundle")
            if not file.is_file():
                raise BundleError(f"bundle {bundle} is missing {info.file}")
            actual = sha256_file(file)
            if actual != info.sha256:
                raise BundleError(f"{file} has sha256 {actual}, the manifest says {info.sha256}: refusing "
                                  "a modified or corrupted bundle")
    return manifest
