"""The bundle contract between ``training`` (writer) and ``service`` (reader).

A bundle is a folder ``models/<name>/`` holding ``manifest.json``, ``encoder.onnx`` and ``detector.onnx``.
``load_manifest`` validates the JSON against ``Manifest`` and checks every file's sha256: a bundle with a
missing file or a wrong hash is refused with a ``BundleError`` that says which file and why.

The hashes only vouch for the files; the manifest's own values are checked too, so that an edited manifest
cannot quietly switch the alarm off:

- with calibration scores (``calibration.f32``, hashed): every ``fpr@q`` threshold, the alert's and the
  incident's, must be exactly the conformal threshold of those scores (``load_calibration``);
- without them (older bundles), the threshold (and each recorded alternative) must lie in the range its rule
  allows given the recorded calibration statistics (``threshold_range``): ``paper-1.5x`` is 1.5 x the auxiliary
  images' mean score;
  ``fpr@q`` is the (1 - q) quantile of the held-out scores, so it lies between the recorded quantiles of the
  levels below and above 1 - q and within the bounds the held-out count, mean and std put on any such quantile
  (Samuelson's and Cantelli's inequalities);
- the encoder's mean must be finite and within [-10, 10], its std finite and within (1e-3, 10]; calibration
  statistics must be finite;
- no ONNX model may use external data: ONNX Runtime would read those files, which no hash covers, from paths
  the model names. Every tensor the model holds (initializers, sparse initializers, Constant attributes,
  subgraphs, functions, training info) is read from the protobuf wire format, without the ``onnx`` package
  (not a service dependency), and one with ``data_location = EXTERNAL`` or ``external_data`` entries refuses the
  bundle. So the only files ONNX Runtime reads are the two hashed ones. (``dede export`` never writes external
  data.)
- with ``expected_sha256`` (``DEDE_BUNDLE_SHA256``), manifest.json itself must have that sha256: the pin that
  covers everything else, since the manifest holds the other files' hashes.

These checks catch a careless or naive edit; only the pinned digest stops someone who can rewrite the whole
manifest consistently.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.calibration import CALIBRATION_FILE, read_calibration, rule_q, threshold_at
from service.errors import BundleError
from service.scores import SCORE_PATTERN

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RTOL = 1e-4  # slack of the threshold checks, relative to the statistics' scale (float32 rounding)

Finite = Annotated[float, Field(allow_inf_nan=False)]
NormMean = Annotated[float, Field(ge=-10, le=10, allow_inf_nan=False)]  # on pixels scaled to [0, 1]
NormStd = Annotated[float, Field(gt=1e-3, le=10, allow_inf_nan=False)]  # near 0: every score is inf


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EncoderInfo(_Strict):
    file: str = "encoder.onnx"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input_size: int = Field(gt=0, le=4096)
    mean: tuple[NormMean, NormMean, NormMean]
    std: tuple[NormStd, NormStd, NormStd]
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
    mean: Finite
    std: float = Field(ge=0, allow_inf_nan=False)  # population std (ddof 0), as training.calibrate.stats records
    quantiles: dict[str, Finite]  # level ("0.99") -> quantile


class ContentFit(_Strict):
    """How a ``content@a`` score's exponent was fitted (``service.scores.fit_content_exponent``)."""

    exponent: float = Field(ge=0)
    r: float = Field(ge=-1, le=1)  # correlation of log paper score and log content on those images
    images: int = Field(gt=0)  # auxiliary training images it was fitted on


RULE_PATTERN = r"^(paper-1\.5x|fpr@0?\.\d+)$"


def _level(key: str) -> float | None:
    """A quantile key ("0.99") as its level, None unless a number in [0, 1]."""
    try:
        level = float(key)
    except ValueError:
        return None
    return level if 0 <= level <= 1 else None


def threshold_range(rule: str, aux_train: ScoreStats, holdout: ScoreStats) -> tuple[float, float]:
    """The values a threshold calibrated by ``rule`` (``training.calibrate.threshold_for``) can take, given the
    recorded statistics of the scores it was computed from, widened by ``RTOL`` for rounding.

    ``paper-1.5x``: 1.5 x ``aux_train.mean``. ``fpr@q``: the (1 - q) quantile ``v`` of the n held-out scores
    (numpy's linear interpolation), which

    - lies between the recorded quantiles of the levels below and above 1 - q (quantiles grow with the level);
    - lies within mean +- std * sqrt(n - 1), where every score lies (Samuelson's inequality, population std);
    - has more than (n - 1) q / n of the scores at or above it and more than (n - 1)(1 - q) / n at or below it,
      so by Cantelli's inequality v <= mean + std * sqrt(1 / share_above - 1) and
      v >= mean - std * sqrt(1 / share_below - 1).

    No held-out scores recorded: the empty range."""
    if rule == "paper-1.5x":
        centre = 1.5 * aux_train.mean
        return centre - RTOL * abs(centre), centre + RTOL * abs(centre)
    p = 1 - (rule_q(rule) or 0.0)
    n, mean, std = holdout.count, holdout.mean, holdout.std
    if n < 1:
        return math.inf, -math.inf
    lo, hi = mean - std * math.sqrt(n - 1), mean + std * math.sqrt(n - 1)
    above, below = (n - 1) * (1 - p) / n, (n - 1) * p / n
    if above > 0:
        hi = min(hi, mean + std * math.sqrt(1 / above - 1))
    if below > 0:
        lo = max(lo, mean - std * math.sqrt(1 / below - 1))
    for key, value in holdout.quantiles.items():
        level = _level(key)
        if level is not None and level < p - 1e-9:
            lo = max(lo, value)
        elif level is not None and level > p + 1e-9:
            hi = min(hi, value)
    slack = RTOL * (abs(mean) + std)
    return lo - slack, hi + slack


class LevelInfo(_Strict):
    """A second operating point beside the alert threshold: the incident threshold."""

    rule: str = Field(pattern=r"^fpr@0?\.\d+$")
    value: float = Field(gt=0, allow_inf_nan=False)


class CalibrationInfo(_Strict):
    """The held-out clean scores the p-values come from (``service.calibration``), in their own hashed file."""

    file: str = CALIBRATION_FILE
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    count: int = Field(gt=0)


class ThresholdInfo(_Strict):
    value: float = Field(gt=0, allow_inf_nan=False)
    rule: str = Field(pattern=RULE_PATTERN)
    mask_ratio: float = Field(ge=0, le=1)
    score: str | None = Field(None, pattern=SCORE_PATTERN)  # the score calibrated (absent in older bundles)
    content_fit: ContentFit | None = None
    alternatives: dict[str, Finite] = {}
    aux_train: ScoreStats
    holdout: ScoreStats
    incident: LevelInfo | None = None  # absent in bundles made before operating points

    @model_validator(mode="after")
    def _incident_is_an_alert(self) -> ThresholdInfo:
        if self.incident is not None and self.incident.value < self.value:
            raise ValueError(f"threshold.incident.value {self.incident.value:g} is below the alert threshold "
                             f"{self.value:g}: an incident must be at least an alert")
        return self

    def check_within_statistics(self) -> None:
        """For a bundle without calibration scores: the threshold and every alternative of a known rule must be
        what their rule gives (``threshold_range``): a threshold edited far up (the alarm off) or down (every
        image an alert) is refused. (With calibration scores ``load_calibration`` checks them exactly.)"""
        values = [("threshold.value", self.rule, self.value)] + [
            (f"threshold.alternatives[{rule!r}]", rule, value) for rule, value in self.alternatives.items()
            if re.fullmatch(RULE_PATTERN, rule)]
        for name, rule, value in values:
            lo, hi = threshold_range(rule, self.aux_train, self.holdout)
            if not lo <= value <= hi:
                basis = (f"1.5 x the auxiliary mean score {self.aux_train.mean:g}" if rule == "paper-1.5x" else
                         f"the held-out scores' statistics (count {self.holdout.count}, mean {self.holdout.mean:g}, "
                         f"std {self.holdout.std:g}, quantiles {self.holdout.quantiles})")
                raise ValueError(f"{name} {value:g} is outside [{lo:g}, {hi:g}], the range rule {rule} allows given "
                                 f"{basis}: refusing an edited or inconsistent manifest")


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
    calibration: CalibrationInfo | None = None  # absent in bundles made before p-values: no p_value then
    provenance: Provenance
    evaluation: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        side = self.encoder.input_size // self.detector.patch_size
        if side * self.detector.patch_size != self.encoder.input_size or side * side != self.detector.num_patches:
            raise ValueError("detector patches do not tile the encoder's input size")
        if abs(self.threshold.mask_ratio - self.detector.test_mask_ratio) > 1e-9:
            raise ValueError("the threshold was calibrated at another mask ratio than the detector scores with")
        if self.calibration is None:
            self.threshold.check_within_statistics()
        elif self.calibration.count != self.threshold.holdout.count:
            raise ValueError(f"the calibration file holds {self.calibration.count} scores but the threshold was "
                             f"calibrated on {self.threshold.holdout.count}")
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


# ONNX protobuf messages that can hold tensors: message -> {field number: message of that field}
# (onnx.proto: ModelProto, TrainingInfoProto, FunctionProto, GraphProto, NodeProto, AttributeProto,
# SparseTensorProto); a TensorProto names external data in fields 13 (external_data) and 14 (data_location).
_TENSOR = "TensorProto"
_HOLDS: dict[str, dict[int, str]] = {
    "ModelProto": {7: "GraphProto", 20: "TrainingInfoProto", 25: "FunctionProto"},
    "TrainingInfoProto": {1: "GraphProto", 2: "GraphProto"},
    "FunctionProto": {7: "NodeProto", 11: "AttributeProto"},
    "GraphProto": {1: "NodeProto", 5: _TENSOR, 15: "SparseTensorProto"},
    "NodeProto": {5: "AttributeProto"},
    "AttributeProto": {5: _TENSOR, 6: "GraphProto", 10: _TENSOR, 11: "GraphProto", 22: "SparseTensorProto",
                       23: "SparseTensorProto"},
    "SparseTensorProto": {1: _TENSOR, 2: _TENSOR},
}


def _varint(data: bytes | mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def external_tensor(data: bytes | mmap.mmap) -> str | None:
    """The name of the first tensor in the serialized ONNX model ``data`` whose data lies in an external file
    (or ``"<unnamed>"``), else None. Reads the protobuf wire format along ``_HOLDS``; other fields are skipped
    by their length. Raises ``ValueError`` for bytes that are not a well-formed protobuf message."""
    stack = [("ModelProto", 0, len(data))]
    while stack:
        kind, pos, end = stack.pop()
        holds, name, external = _HOLDS.get(kind, {}), "<unnamed>", False
        groups = 0  # inside a (deprecated) group: an unknown field to skip, as protobuf parsers do
        while pos < end:
            key, pos = _varint(data, pos, end)
            field, wire = key >> 3, key & 7
            own = groups == 0 and kind == _TENSOR
            if wire == 0:
                value, pos = _varint(data, pos, end)
                external |= own and field == 14 and value != 0
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            elif wire == 2:
                size, pos = _varint(data, pos, end)
                if pos + size > end:
                    raise ValueError("a field runs past the end of its message")
                if own and field == 8:
                    name = bytes(data[pos : pos + size]).decode("utf-8", "replace")
                external |= own and field == 13
                if groups == 0 and field in holds:
                    stack.append((holds[field], pos, pos + size))
                pos += size
            elif wire == 3:
                groups += 1
            elif wire == 4 and groups:
                groups -= 1
            else:
                raise ValueError(f"unexpected wire type {wire}")
        if pos > end or groups:
            raise ValueError("a field runs past the end of its message")
        if external:
            return name
    return None


def _verify_model(file: Path, expected_sha256: str) -> None:
    """``file``'s sha256 is ``expected_sha256`` and it uses no external data (module doc), read once."""
    with file.open("rb") as f:
        size = file.stat().st_size
        data: bytes | mmap.mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        try:
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected_sha256:
                raise BundleError(f"{file} has sha256 {actual}, the manifest says {expected_sha256}: refusing "
                                  "a modified or corrupted bundle")
            try:
                tensor = external_tensor(data)
            except ValueError as exc:
                raise BundleError(f"{file} is not a valid ONNX model ({exc})") from exc
        finally:
            if isinstance(data, mmap.mmap):
                data.close()
    if tensor is not None:
        raise BundleError(f"{file}: tensor {tensor!r} keeps its data in an external file, which no hash in the "
                          "manifest covers: refusing a bundle whose models use external data")


def validation_message(exc: ValidationError) -> str:
    """A pydantic error on one line: ``location: message; ...``, without the offending input."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where and not message.startswith(where) else message)
    return "; ".join(parts)


def load_manifest(bundle_dir: str | Path, verify: bool = True, expected_sha256: str | None = None) -> Manifest:
    """Read and validate ``<bundle_dir>/manifest.json``; with ``verify`` check every file's sha256 and that no
    model uses external data; with ``expected_sha256`` check manifest.json's own sha256 (the deployment's pin)."""
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} does not exist or is not a directory")
    if not path.is_file():
        raise BundleError(f"bundle {bundle} has no {MANIFEST}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path} could not be read: {exc}") from exc
    if expected_sha256 is not None:
        check_manifest_digest(path, expected_sha256, hashlib.sha256(raw).hexdigest())
    try:
        manifest = Manifest.model_validate(json.loads(raw.decode("utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from exc
    except ValidationError as exc:
        raise BundleError(f"{path} does not match the bundle schema: {validation_message(exc)}") from exc
    if verify:
        for info in (manifest.encoder, manifest.detector):
            file = bundle / info.file
            if Path(info.file).name != info.file:
                raise BundleError(f"{path}: file {info.file!r} must be a plain name inside the bundle")
            if not file.is_file():
                raise BundleError(f"bundle {bundle} is missing {info.file}")
            try:
                _verify_model(file, info.sha256)
            except OSError as exc:
                raise BundleError(f"{file} could not be read: {exc}") from exc
    return manifest


def load_calibration(bundle_dir: str | Path, manifest: Manifest) -> np.ndarray | None:
    """The bundle's held-out scores (ascending float32), hash-checked, and the manifest's fpr thresholds checked to
    be exactly the conformal thresholds they imply; None for a bundle without them."""
    info = manifest.calibration
    if info is None:
        return None
    file = Path(bundle_dir) / info.file
    if Path(info.file).name != info.file or not file.is_file():
        raise BundleError(f"bundle {bundle_dir} is missing its calibration scores {info.file!r}")
    if sha256_file(file) != info.sha256:
        raise BundleError(f"{file} does not match its sha256 in the manifest (edited or corrupted)")
    try:
        scores = read_calibration(file, info.count)
    except (ValueError, OSError) as exc:
        raise BundleError(f"{file}: {exc}") from exc
    t = manifest.threshold
    levels = [("threshold.value", t.rule, t.value)] + ([("threshold.incident.value", t.incident.rule,
                                                         t.incident.value)] if t.incident else [])
    for name, rule, value in levels:
        if (q := rule_q(rule)) is None:
            continue
        try:
            expected = threshold_at(scores, q)
        except ValueError as exc:
            raise BundleError(f"{name}: {exc}") from exc
        if name == "threshold.incident.value":
            expected = max(expected, t.value)  # an incident is at least an alert (training.calibrate)
        if not math.isclose(value, expected, rel_tol=1e-6):
            raise BundleError(f"{name} {value:g} is not the {rule} threshold of the bundle's calibration scores "
                              f"({expected:g}): refusing an edited or inconsistent manifest")
    return scores


def check_manifest_digest(path: Path, expected_sha256: str, actual: str | None = None) -> None:
    """Refuse ``path`` (a manifest.json) unless its sha256 (``actual``, else computed) is ``expected_sha256``."""
    if actual is None and not path.is_file():
        raise BundleError(f"{path} does not exist, so it cannot have the sha256 DEDE_BUNDLE_SHA256 pins")
    try:
        actual = actual or sha256_file(path)
    except OSError as exc:
        raise BundleError(f"{path} could not be read: {exc}") from exc
    if actual != expected_sha256.lower():
        raise BundleError(f"{path} has sha256 {actual}, but DEDE_BUNDLE_SHA256 pins {expected_sha256.lower()}: "
                          "refusing a manifest other than the deployed one")
