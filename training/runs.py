"""A trained run directory (``dede train --out RUN``): ``config.json``, ``run.json``, ``calibration.json``,
``calibration_scores.npz`` and ``dede.safetensors``, read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from training.config import TrainConfig
from training.dede import DeDe, DeDeConfig
from training.encoders import EncoderSpec, load_encoder


def load_run(run_dir: str | Path) -> tuple[DeDe, nn.Module, EncoderSpec, dict[str, Any], dict[str, Any]]:
    run_dir = Path(run_dir)
    for name in ("run.json", "calibration.json", "dede.safetensors"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir} is not a finished DeDe run: {name} is missing")
    run = json.loads((run_dir / "run.json").read_text())
    calib = json.loads((run_dir / "calibration.json").read_text())
    model = DeDe(DeDeConfig(**run["model"]))
    model.load_state_dict(load_file(run_dir / "dede.safetensors"))
    victim, spec = load_encoder(run["encoder"])
    return model.eval(), victim, spec, run, calib


def run_config(run_dir: str | Path) -> TrainConfig:
    """The ``TrainConfig`` a run was trained with (its ``config.json``)."""
    data = json.loads((Path(run_dir) / "config.json").read_text())
    data.pop("code_version", None)
    return TrainConfig(**data)
