"""Backdoor attacks on pre-trained encoders. ``run_attack(method, ...)`` dispatches by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def attack_record(encoder: str | Path) -> dict[str, Any] | None:
    """The last ``attack-*`` history entry of an encoder directory (or of the encoder.json beside an .onnx
    file): what attack made it, its target, trigger and trigger parameters, and its measured success."""
    path = Path(encoder)
    spec_file = path.with_name("encoder.json") if path.suffix == ".onnx" else path / "encoder.json"
    if not spec_file.exists():
        raise FileNotFoundError(f"{spec_file} does not exist: not an encoder written by dede")
    history = json.loads(spec_file.read_text()).get("history", [])
    return next((h for h in reversed(history) if str(h.get("stage", "")).startswith("attack-")), None)


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


def recorded_trigger(encoder: str | Path) -> tuple[str, dict[str, Any]]:
    """(trigger name, trigger params) of the attack recorded in an encoder's history."""
    rec = attack_record(encoder)
    if rec is None or not rec.get("trigger"):
        raise ValueError(f"{encoder} records no attack trigger (not an encoder written by `dede attack`)")
    return rec["trigger"], rec.get("trigger_params") or {}


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
    from training.config import preset_epochs

    if method not in _ATTACKS:
        return None
    module, cls_name, presets_name, _ = _ATTACKS[method]
    return preset_epochs(f"training.attacks.{module}", cls_name, presets_name, preset)


def run_attack(method: str, encoder_dir: str | None, out: str, preset: str | None, config_file: str | None,
               overrides: list[str]) -> dict[str, Any]:
    import importlib

    from training.config import resolve_config

    if method not in _ATTACKS:
        raise ValueError(f"unknown attack {method!r}; implemented: {', '.join(_ATTACKS)}")
    if encoder_dir is None and method not in FROM_SCRATCH:
        raise ValueError(f"attack {method!r} fine-tunes an encoder: pass --encoder")
    module, config, presets, function = _ATTACKS[method]
    mod = importlib.import_module(f"training.attacks.{module}")
    cfg = resolve_config(getattr(mod, config), getattr(mod, presets), preset, config_file, overrides)
    result: dict[str, Any] = getattr(mod, function)(cfg, encoder_dir, out)
    return result
