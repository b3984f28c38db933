"""A trained run directory (``dede train --out RUN``): ``config.json``, ``run.json``, ``calibration.json``,
``calibration_scores.npz`` and ``dede.safetensors``, read back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import nn

from training.config import EncoderOptions, TrainConfig, options_from_record
from training.dede import DeDe, DeDeConfig
from training.encoders import EncoderSpec
from training.user_encoders import open_encoder


def load_run(run_dir: str | Path, encoder: str | None = None, options: EncoderOptions | None = None
             ) -> tuple[DeDe, nn.Module, EncoderSpec, dict[str, Any], dict[str, Any]]:
    """(detector, victim encoder, its spec, run.json, calibration.json) of a finished run. The encoder is the one
    the run recorded (reference and options), or ``encoder`` with ``options`` when given (the same encoder at another
    path, e.g. on another machine: its embedding size must match the detector's)."""
    run_dir = Path(run_dir)
    for name in ("run.json", "calibration.json", "dede.safetensors"):
        if not (run_dir / name).exists():
            raise FileNotFoundError(f"{run_dir} is not a finished DeDe run: {name} is missing")
    run = json.loads((run_dir / "run.json").read_text())
    calib = json.loads((run_dir / "calibration.json").read_text())
    model = DeDe(DeDeConfig(**run["model"]))
    model.load_state_dict(load_file(run_dir / "dede.safetensors"))
    victim, spec = (open_encoder(encoder, options) if encoder else
                    open_encoder(run["encoder"], options_from_record(run.get("encoder_options", {}))))
    if spec.embed_dim != model.cfg.victim_dim or spec.input_size != model.cfg.img_size:
        raise ValueError(f"the encoder gives {spec.embed_dim}-dim embeddings of {spec.input_size}-px images; the "
                         f"detector of {run_dir} was trained on {model.cfg.victim_dim}-dim ones of "
                         f"{model.cfg.img_size}-px images")
    return model.eval(), victim, spec, run, calib


def run_config(run_dir: str | Path) -> TrainConfig:
    """The ``TrainConfig`` a run was trained with (its ``config.json``)."""
    data = json.loads((Path(run_dir) / "config.json").read_text())
    data.pop("code_version", None)
    return TrainConfig(**data)
