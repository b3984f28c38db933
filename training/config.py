"""Typed run configs: one dataclass per run kind, size presets, a JSON file and ``key=value`` overrides.

Resolution order: dataclass defaults < preset < config file < ``--set key=value``. Unknown keys are errors.
The resolved config is printed and saved with every artifact (``config.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import time
import typing
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")


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
                   config_file: str | None = None, overrides: list[str] | None = None) -> T:
    cfg = cls()
    if preset:
        if preset not in presets:
            raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(presets)}")
        cfg = _apply(cfg, presets[preset], f"preset {preset}")
        if hasattr(cfg, "preset"):
            cfg.preset = preset  # type: ignore[attr-defined]
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


def preset_epochs(module: str, cls_name: str, presets_name: str, preset: str) -> int | None:
    """The epochs ``preset`` schedules for the run whose config class and presets live in ``module`` (e.g.
    ``"training.ssl", "PretrainConfig", "PRETRAIN_PRESETS"``); None for a preset that module does not have."""
    import importlib

    mod = importlib.import_module(module)
    presets = getattr(mod, presets_name)
    return int(resolve_config(getattr(mod, cls_name), presets, preset).epochs) if preset in presets else None


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


def pick_device(name: str) -> str:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
    return device


def warmup_cosine(opt: torch.optim.Optimizer, total: int, warmup: int, cosine: bool = True
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate per step: linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``total``
    steps (``cosine=False``: constant after the warm-up). Step the scheduler once per batch."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def out_of_time(budget_s: float, start: float) -> bool:
    """True once a run with a wall-clock budget (``time_budget_s`` > 0, e.g. on a lent GPU) has used it up:
    training loops then stop after the epoch in progress and record the epochs actually done."""
    return budget_s > 0 and time.time() - start > budget_s


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}: stopping")


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, step: int) -> float:
    """One update: stop on a non-finite loss, backward, step. Returns the loss value."""
    check_finite(loss, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()
