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


def recorded_trigger(encoder: str | Path) -> tuple[str, dict[str, Any]]:
    """(trigger name, trigger params) of the attack recorded in an encoder's history."""
    rec = attack_record(encoder)
    if rec is None or not rec.get("trigger"):
        raise ValueError(f"{encoder} records no attack trigger (not an encoder written by `dede attack`)")
    return rec["trigger"], rec.get("trigger_params") or {}


def run_attack(method: str, encoder_dir: str | None, out: str, preset: str | None, config_file: str | None,
               overrides: list[str]) -> dict[str, Any]:
    from training.config import resolve_config

    if method == "ctrl":  # data poisoning: trains from scratch; --encoder is the clean control (optional)
        from training.attacks.ctrl import CTRL_PRESETS, CtrlConfig, ctrl

        ccfg = resolve_config(CtrlConfig, CTRL_PRESETS, preset, config_file, overrides)
        return ctrl(ccfg, out, control=encoder_dir)
    if encoder_dir is None:
        raise ValueError(f"attack {method!r} fine-tunes an encoder: pass --encoder")
    if method == "badencoder":
        from training.attacks.badencoder import BADENCODER_PRESETS, BadEncoderConfig, badencoder

        cfg = resolve_config(BadEncoderConfig, BADENCODER_PRESETS, preset, config_file, overrides)
        return badencoder(cfg, encoder_dir, out)
    if method == "drupe":
        from training.attacks.drupe import DRUPE_PRESETS, DrupeConfig, drupe

        dcfg = resolve_config(DrupeConfig, DRUPE_PRESETS, preset, config_file, overrides)
        return drupe(dcfg, encoder_dir, out)
    if method == "clip-backdoor":
        from training.attacks.clip_backdoor import CLIP_BACKDOOR_PRESETS, ClipBackdoorConfig, clip_backdoor

        kcfg = resolve_config(ClipBackdoorConfig, CLIP_BACKDOOR_PRESETS, preset, config_file, overrides)
        return clip_backdoor(kcfg, encoder_dir, out)
    if method == "badclip":
        from training.attacks.badclip import BADCLIP_PRESETS, BadClipConfig, badclip

        bcfg = resolve_config(BadClipConfig, BADCLIP_PRESETS, preset, config_file, overrides)
        return badclip(bcfg, encoder_dir, out)
    raise ValueError(f"unknown attack {method!r}; implemented: badencoder, drupe, ctrl, clip-backdoor, badclip")
