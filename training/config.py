"""The detector's config (``TrainConfig``, its size presets) and how every run config is resolved: one dataclass per
run kind, size presets, a JSON file and ``key=value`` overrides.

Resolution order: dataclass defaults < preset < config file < ``--set key=value``. Unknown keys are errors.
The resolved config is printed and saved with every artifact (``config.json``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
DENSE_K = 10  # nearest neighbours that measure an embedding's density (TrainConfig.dense_k's default)


def key(default: Any, help: str, research: bool = False) -> Any:
    """A config field with its one-line help (``dede train --help``, docs/CONFIGURATION.md); ``research``: a setting
    of the paper's experiments or of our studies, not of a detector for a user's encoder."""
    return field(default=default, metadata={"help": help, "research": research})


@dataclass
class TrainConfig:
    """``dede train``: the detector (DeDe's masked autoencoder), its auxiliary set and its calibration."""

    preset: str = key("custom", "the size preset it started from (set by --preset)")
    aux_source: str = key("cifar10", "the auxiliary images: a dataset name (cifar10, gtsrb, imagenette) or a "
                          "folder/zip of images")
    aux_split: str = key("train", "the split of a dataset; '' for a plain folder of images")
    aux_images: int = key(0, "auxiliary images to train on (0: all that are not held out)")
    aux_crops: int = key(0, "> 0: train on this many random crops of each auxiliary image instead of the image "
                         "(aux_images counts the images before cropping)", research=True)
    holdout_images: int = key(2000, "clean held-out images that calibrate the target-FPR threshold")
    poison_rate: float = key(0.0, "share of auxiliary images that carry the trigger (the paper's provider "
                             "scenario)", research=True)
    trigger: str = key("badencoder", "the trigger that poisons the auxiliary set (with poison_rate)", research=True)
    trigger_from: str = key("", "an attacked encoder directory: poison with ITS trigger (name and learned params)",
                            research=True)
    ood_noise_quantile: float = key(0.0, "CTRL handling: > 0 = auxiliary embeddings with an L2 norm above this "
                                    "quantile get a random-noise image instead (the paper's 0.99 norm ball)",
                                    research=True)
    patch_size: int = key(4, "the detector's patch side in pixels (the input size must be a multiple); set from the "
                          "encoder's input size: 4 at 32 px, 16 at 224 px (config.patch_size_for)")
    width: int = key(192, "the detector's encoder width (inputs above 32 px: config.LARGE_INPUT_PRESETS)")
    depth: int = key(12, "the detector's encoder blocks")
    heads: int = key(3, "the detector's encoder attention heads")
    dec_width: int = key(192, "the decoder width")
    dec_depth: int = key(4, "the decoder blocks")
    dec_heads: int = key(3, "the decoder attention heads")
    mask_ratio: float = key(0.9, "share of patches masked in training (the test mask ratio is min(1.1 x this, 1))")
    epochs: int = key(200, "training epochs")
    batch_size: int = key(256, "training batch size")
    lr: float = key(1e-3, "Adam learning rate")
    weight_decay: float = key(1e-6, "Adam weight decay")
    threshold_rule: str = key("fpr@0.001", "the alert threshold (the per-image flag): 'fpr@<q>' (the conformal "
                              "threshold of the held-out clean scores: FPR <= q; needs holdout_images >= 1/q) or "
                              "'paper-1.5x'")
    incident_rule: str = key("auto", "the incident threshold: 'fpr@<q>', or 'auto' (fpr@0.0001, or the strictest "
                             "q = 1/holdout_images the held-out split allows)")
    score: str = key("paper", "the score: 'paper', 'trimmed@<k>', 'content@<a>' or 'content' (exponent fitted); "
                     "see service.scores")
    drop_worst: float = key(0.0, "robust training: leave the highest-loss share of each batch out (after epoch 1)",
                            research=True)
    drop_dense: float = key(0.0, "leave out this share of auxiliary images, the densest in embedding space (a "
                            "defence against a poisoned auxiliary set: a share above the poison rate you fear)")
    dense_k: int = key(DENSE_K, "nearest neighbours that measure an embedding's density for drop_dense",
                       research=True)
    emb_dropout: float = key(0.0, "share of samples trained with a null (zero) embedding", research=True)
    calib_images: int = key(10000, "auxiliary training images scored for the paper-1.5x rule")
    time_budget_s: float = key(0.0, "> 0: stop after the epoch that uses up this wall time (single process only)")
    seed: int = key(0, "seed of the split, the initialisation and the mask stream")
    device: str = key("auto", "'auto' (CUDA when available), 'cpu' or 'cuda[:i]'")


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=32, depth=1, heads=2, dec_width=32, dec_depth=1, dec_heads=2, epochs=2,
                 aux_images=512, holdout_images=256, calib_images=256, batch_size=128, threshold_rule="fpr@0.01"),
    "cpu": dict(width=128, depth=6, heads=4, dec_width=128, dec_depth=2, dec_heads=4, epochs=15,
                aux_images=20000),
    "paper": dict(),  # the official settings are the defaults
    "study": dict(width=64, depth=3, heads=4, dec_width=64, dec_depth=1, dec_heads=4, epochs=10,
                  aux_images=10000, holdout_images=1000, calib_images=2000),
}


@dataclass(frozen=True)
class EncoderOptions:
    """What the command line says about an encoder besides its reference (None: the model's own, or the default)."""

    weights: str | None = None  # timm / open_clip: a safetensors file
    input_size: int | None = None  # the side S of the square input; required for an ONNX model with dynamic H/W
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    output: str | None = None  # ONNX: the output that is the embedding

    def recorded(self) -> dict[str, Any]:
        """The options that were set, for ``run.json`` (file paths resolved)."""
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if self.weights:
            out["weights"] = str(Path(self.weights).resolve())
        return out


def options_from_record(recorded: dict[str, Any]) -> EncoderOptions:
    """Inverse of ``EncoderOptions.recorded`` (JSON gives lists where the options hold tuples)."""
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()}
    return EncoderOptions(**values)


MAX_PATCH_GRID = 14  # patches per side at most: 196 patches, as a ViT-B/16 at 224 px
# the detector's widths for inputs larger than 32 px, per preset: a 16-px patch carries 768 values, not 48
LARGE_INPUT_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=64, heads=2, dec_width=64, dec_heads=2),
    "cpu": dict(width=192, depth=6, heads=4, dec_width=128, dec_depth=2, dec_heads=4),
    "paper": dict(width=384, depth=12, heads=6, dec_width=256, dec_depth=4, dec_heads=8),
    "study": dict(width=128, depth=3, heads=4, dec_width=96, dec_depth=1, dec_heads=4),
}


def patch_size_for(input_size: int) -> int:
    """The detector's patch side for an input side S: the smallest divisor of S that leaves at most
    ``MAX_PATCH_GRID`` patches per side (32 px -> 4: 64 patches; 96 -> 8; 224 -> 16: 196 patches)."""
    return next(p for p in range(1, input_size + 1) if input_size % p == 0 and input_size // p <= MAX_PATCH_GRID)


def input_size_layer(preset: str | None, input_size: int) -> dict[str, Any]:
    """The ``TrainConfig`` settings that follow from the encoder's input size under ``preset``: the patch size, and
    for inputs above 32 px the preset's larger widths (``LARGE_INPUT_PRESETS``; no preset: the paper's)."""
    layer: dict[str, Any] = {"patch_size": patch_size_for(input_size)}
    if input_size > 32:
        layer |= LARGE_INPUT_PRESETS.get(preset or "paper", LARGE_INPUT_PRESETS["paper"])
    return layer

def _coerce(value: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if typ is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    if typ is int:
        return int(value)
    if typ is float:
        return float(value)
    if origin in (tuple, list) or typ in (tuple, list):
        return type(json.loads(value))(json.loads(value)) if value.startswith("[") else [
            _coerce(v, typing.get_args(typ)[0] if typing.get_args(typ) else str) for v in value.split(",")
        ]
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value.lower() in ("none", "null", ""):
            return None
        return _coerce(value, args[0])
    return value


def _apply(cfg: T, updates: dict[str, Any], source: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(type(cfg))
    for key, value in updates.items():
        if key not in fields:
            raise ValueError(f"{source}: unknown config key {key!r}; valid keys: {', '.join(sorted(fields))}")
        if isinstance(value, str) and hints[key] is not str:
            value = _coerce(value, hints[key])
        setattr(cfg, key, value)
    return cfg


def resolve_config(cls: type[T], presets: dict[str, dict[str, Any]], preset: str | None = None,
                   config_file: str | None = None, overrides: list[str] | None = None,
                   layer: dict[str, Any] | None = None) -> T:
    """Defaults < ``preset`` < ``layer`` (settings that follow from the input, ``input_size_layer``) < the config
    file < ``--set`` overrides."""
    cfg = cls()
    if preset:
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(presets)}")
        cfg = _apply(cfg, presets[preset], f"preset {preset}")
        if hasattr(cfg, "preset"):
            cfg.preset = preset  # type: ignore[attr-defined]
    if layer:
        cfg = _apply(cfg, layer, "the encoder's input size")
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file {config_file} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"config file {config_file} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"config file {config_file} must hold a JSON object")
        cfg = _apply(cfg, data, config_file)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        key, value = item.split("=", 1)
        cfg = _apply(cfg, {key.strip(): value.strip()}, "--set")
    return cfg


def save_config(cfg: Any, directory: str | Path) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(cfg) | {"code_version": code_version()}
    (directory / "config.json").write_text(json.dumps(data, indent=2))
    print("config:", json.dumps(dataclasses.asdict(cfg)))


def preset_epochs(cls: type, presets: dict[str, dict[str, Any]], preset: str) -> int | None:
    """The epochs ``preset`` schedules for a run of config class ``cls``; None for a preset it does not have."""
    return int(resolve_config(cls, presets, preset).epochs) if preset in presets else None  # type: ignore[attr-defined]


def code_version() -> str:
    """``$DEDE_CODE_VERSION`` when set (a copy of the tree without ``.git``, e.g. on a lent GPU machine), else the
    git commit of the repository (with ``+dirty`` when there are local changes), else the package version."""
    if os.environ.get("DEDE_CODE_VERSION"):
        return os.environ["DEDE_CODE_VERSION"]
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"dede-{version('dede')}"
        except PackageNotFoundError:
            return "unknown"


def config_keys(cls: type, presets: dict[str, dict[str, Any]], research: bool = False) -> list[dict[str, Any]]:
    """One row per field of a config dataclass: ``key``, ``type``, ``default``, each preset's value where it differs
    from the default (``presets``), ``help`` and ``research``; research fields only with ``research``. The source of
    ``dede train --help`` and docs/CONFIGURATION.md."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("research") and not research:
            continue
        rows.append({"key": f.name, "type": getattr(hints[f.name], "__name__", str(hints[f.name])),
                     "default": f.default, "presets": {p: v[f.name] for p, v in presets.items() if f.name in v},
                     "help": f.metadata.get("help", ""), "research": bool(f.metadata.get("research"))})
    return rows
