"""Backdoor attacks on pre-trained encoders. ``run_attack(method, ...)`` dispatches by name."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from training.config import preset_epochs, resolve_config
from training.triggers import attack_record

IMPLANT_MIN_GAIN = 0.2  # attack success after - before below this: the attack did not implant a backdoor


def implanted(asr_after: float | None, asr_before: float | None) -> bool:
    """Whether an attack took: its success rate rose by at least ``IMPLANT_MIN_GAIN`` over the clean encoder's
    (True when either is unknown: nothing to judge by)."""
    return asr_after is None or asr_before is None or asr_after - asr_before >= IMPLANT_MIN_GAIN


def not_implanted_reason(encoder: str | Path) -> str | None:
    """Why no detector can be tested on this attacked encoder (its attack did not take), or None: also None
    while the attack has not run yet."""
    path = Path(encoder)
    rec = attack_record(path) if (path / "encoder.json").exists() else None
    if rec is None or implanted(rec.get("attack_success_rate"), rec.get("asr_before")):
        return None
    return (f"{path.name} did not implant a backdoor (attack success {rec['asr_before']:.3f} -> "
            f"{rec['attack_success_rate']:.3f}, less than +{IMPLANT_MIN_GAIN})")


# attack -> (module under training.attacks, config class, presets, function(cfg, encoder_dir, out))
_ATTACKS = {
    "badencoder": ("badencoder", "BadEncoderConfig", "BADENCODER_PRESETS", "badencoder"),
    "drupe": ("drupe", "DrupeConfig", "DRUPE_PRESETS", "drupe"),
    "ctrl": ("ctrl", "CtrlConfig", "CTRL_PRESETS", "ctrl"),
    "clip-backdoor": ("clip_backdoor", "ClipBackdoorConfig", "CLIP_BACKDOOR_PRESETS", "clip_backdoor"),
    "badclip": ("badclip", "BadClipConfig", "BADCLIP_PRESETS", "badclip"),
}
ATTACK_NAMES = tuple(_ATTACKS)
FROM_SCRATCH = {"ctrl"}  # data poisoning trains its own encoder: there --encoder is the optional clean control


def attack_preset_epochs(method: str, preset: str) -> int | None:
    """The epochs ``preset`` schedules for an attack (None for an unknown attack or preset)."""
    if method not in _ATTACKS:
        return None
    module, cls_name, presets_name, _ = _ATTACKS[method]
    mod = importlib.import_module(f"training.attacks.{module}")
    return preset_epochs(getattr(mod, cls_name), getattr(mod, presets_name), preset)


def run_attack(method: str, encoder_dir: str | None, out: str, preset: str | None, config_file: str | None,
               overrides: list[str]) -> dict[str, Any]:
    if method not in _ATTACKS:
        raise ValueError(f"unknown attack {method!r}; implemented: {', '.join(_ATTACKS)}")
    if encoder_dir is None and method not in FROM_SCRATCH:
        raise ValueError(f"attack {method!r} fine-tunes an encoder: pass --encoder")
    module, config, presets, function = _ATTACKS[method]
    mod = importlib.import_module(f"training.attacks.{module}")  # a registry by name: only the one attack loads
    cfg = resolve_config(getattr(mod, config), getattr(mod, presets), preset, config_file, overrides)
    result: dict[str, Any] = getattr(mod, function)(cfg, encoder_dir, out)
    return result
