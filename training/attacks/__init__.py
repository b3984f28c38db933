"""Backdoor attacks on pre-trained encoders. ``run_attack(method, ...)`` dispatches by name."""

from __future__ import annotations

from typing import Any


def run_attack(method: str, encoder_dir: str, out: str, preset: str | None, config_file: str | None,
               overrides: list[str]) -> dict[str, Any]:
    from training.config import resolve_config

    if method == "badencoder":
        from training.attacks.badencoder import BADENCODER_PRESETS, BadEncoderConfig, badencoder

        cfg = resolve_config(BadEncoderConfig, BADENCODER_PRESETS, preset, config_file, overrides)
        return badencoder(cfg, encoder_dir, out)
    if method == "drupe":
        from training.attacks.drupe import DRUPE_PRESETS, DrupeConfig, drupe

        dcfg = resolve_config(DrupeConfig, DRUPE_PRESETS, preset, config_file, overrides)
        return drupe(dcfg, encoder_dir, out)
    raise ValueError(f"unknown attack {method!r}; implemented: badencoder, drupe")
