"""docs/CONFIGURATION.md, generated from the code so that it cannot drift:
``python -m training.reporting.configuration`` writes it from

- the service: every field of ``service.settings.Settings`` (its environment variable, type, default, bounds and
  description);
- the detector: ``training.config.TrainConfig`` through ``config_keys`` (what ``dede train --help`` lists), the
  user's keys first and the research keys in a table of their own;
- the research commands: the config dataclasses of ``dede pretrain``, ``dede attack`` and the downstream defence,
  with their defaults and presets (they carry no help text).

tests/training/reporting/test_configuration.py checks that the committed file is what this writes now.
"""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from service.settings import Settings
from training.attacks.badclip import BADCLIP_PRESETS, BadClipConfig
from training.attacks.badencoder import BADENCODER_PRESETS, BadEncoderConfig
from training.attacks.clip_backdoor import CLIP_BACKDOOR_PRESETS, ClipBackdoorConfig
from training.attacks.ctrl import CTRL_PRESETS, CtrlConfig
from training.attacks.drupe import DRUPE_PRESETS, DrupeConfig
from training.config import TRAIN_PRESETS, TrainConfig, config_keys
from training.evaluation.downstream import DOWNSTREAM_PRESETS, DownstreamConfig
from training.pretrain.clip_train import CLIP_PRESETS, ClipConfig
from training.pretrain.simclr import PRETRAIN_PRESETS, PretrainConfig

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "CONFIGURATION.md"
COMMAND = "python -m training.reporting.configuration"

# attack name (``dede attack NAME``) -> its config class, presets and source file
ATTACK_CONFIGS: dict[str, tuple[type, dict[str, dict[str, Any]], str]] = {
    "badencoder": (BadEncoderConfig, BADENCODER_PRESETS, "training/attacks/badencoder.py"),
    "drupe": (DrupeConfig, DRUPE_PRESETS, "training/attacks/drupe.py"),
    "ctrl": (CtrlConfig, CTRL_PRESETS, "training/attacks/ctrl.py"),
    "clip-backdoor": (ClipBackdoorConfig, CLIP_BACKDOOR_PRESETS, "training/attacks/clip_backdoor.py"),
    "badclip": (BadClipConfig, BADCLIP_PRESETS, "training/attacks/badclip.py"),
}
# (title, how it is set, config class, presets, source file) of the research configs that are not attacks
RESEARCH_CONFIGS: list[tuple[str, str, type, dict[str, dict[str, Any]], str]] = [
    ("SimCLR pre-training", "`dede pretrain` (`--preset`, `--config`, `--set`)", PretrainConfig, PRETRAIN_PRESETS,
     "training/pretrain/simclr.py"),
    ("Mini-CLIP pre-training", "`dede pretrain --method clip` (`--preset`, `--config`, `--set`)", ClipConfig,
     CLIP_PRESETS, "training/pretrain/clip_train.py"),
    ("Downstream defence", "`python -m training.research.downstream --preset P --set KEY=VALUE`", DownstreamConfig,
     DOWNSTREAM_PRESETS, "training/evaluation/downstream.py"),
]
# environment variables read outside ``Settings``: (name, the file that reads it, what it does)
OTHER_ENV = [
    ("DEDE_DATA_ROOT", "training/data.py", "where named datasets (`cifar10`, `gtsrb`, `imagenette`) live; default "
     "`../shared/data` next to the repository"),
    ("DEDE_CACHE_DIR", "training/data.py", "where decoded datasets are cached as `.npz`; default `~/.cache/dede`"),
    ("DEDE_CODE_VERSION", "training/config.py", "the code version recorded in runs and bundles; default the git "
     "commit (with `+dirty`), else the package version"),
    ("PROMETHEUS_MULTIPROC_DIR", "training/cli.py", "`dede serve --workers N`: where the workers' metrics are merged; "
     "default a new temporary directory, emptied at start"),
]


def cell(text: Any) -> str:
    """A markdown table cell: pipes escaped, no line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("pydantic.types.", "")


def json_value(value: Any) -> str:
    """A config value as a JSON file (``--config``) spells it, in backticks."""
    return f"`{json.dumps(value)}`"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


# --- the service -----------------------------------------------------------------------------------------------


def env_default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def bounds(info: FieldInfo) -> str:
    signs = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    found = [f"{signs[name]} {getattr(m, name)}" for m in info.metadata for name in signs if hasattr(m, name)]
    return ", ".join(found)


def settings_rows() -> list[list[str]]:
    prefix = Settings.model_config.get("env_prefix", "")
    return [[f"`{(prefix + name).upper()}`", type_name(info.annotation), env_default(info.default), bounds(info),
             info.description or ""] for name, info in Settings.model_fields.items()]


# --- the trainer -----------------------------------------------------------------------------------------------


def preset_text(presets: dict[str, Any]) -> str:
    return ", ".join(f"{p} {json_value(v)}" for p, v in presets.items())


def key_rows(cls: type, presets: dict[str, dict[str, Any]], research: bool | None = None,
             with_help: bool = True) -> list[list[str]]:
    """One row per field (``config_keys``): key, type, default, preset values[, help]. ``research`` True / False:
    only the research / the user's keys; None: all. Defaults come from an instance (default factories too)."""
    hints = typing.get_type_hints(cls)
    instance = cls()
    rows = []
    for r in config_keys(cls, presets, research=True):
        if research is not None and r["research"] != research:
            continue
        row = [f"`{r['key']}`", type_name(hints[r["key"]]), json_value(getattr(instance, r["key"])),
               preset_text(r["presets"])]
        rows.append(row + [r["help"]] if with_help else row)
    return rows


def research_section(title: str, how: str, cls: type, presets: dict[str, dict[str, Any]], source: str) -> list[str]:
    names = ", ".join(f"`{p}`" for p in presets)
    return [f"### {title}", "", f"Set with {how}; presets {names}. What each key does: `{cls.__name__}` in "
            f"[{source}](../{source}).", "", *table(["key", "type", "default", "presets"],
                                                     key_rows(cls, presets, with_help=False)), ""]


def render() -> str:
    train_presets = ", ".join(f"`{p}`" for p in TRAIN_PRESETS)
    lines = [
        "# Configuration",
        "",
        f"Generated by `{COMMAND}` from the code (`service/settings.py` and the trainer's config dataclasses); do "
        "not edit it by hand. `tests/training/reporting/test_configuration.py` checks that it is current.",
        "",
        "## The service: environment variables",
        "",
        "`dede serve` and `uvicorn service.app:create_app --factory --http service.protocol:GuardedHttpProtocol` "
        "read one pydantic-settings class, `service.settings.Settings`. Booleans take `true` / `false` (also "
        "`1` / `0`, `yes` / `no`, `on` / `off`). A value outside its bounds stops the start.",
        "",
        *table(["variable", "type", "default", "bounds", "what"], settings_rows()),
        "",
        "Read elsewhere:",
        "",
        *table(["variable", "read by", "what"], [[f"`{n}`", f"`{f}`", w] for n, f, w in OTHER_ENV]),
        "",
        "## The detector: `dede train`",
        "",
        "A run's config starts from the dataclass defaults and a `--preset`; `--config FILE.json` and `--set "
        "KEY=VALUE` (repeatable) override them, in that order. Unknown keys are errors, and the resolved config is "
        "saved next to the run (`config.json`); `dede train --show-config` prints it without training. Values are "
        "shown as a JSON config file spells them; on the command line `--set aux_split=` sets the empty string.",
        "",
        f"Presets: {train_presets}. `tiny` takes seconds (tests), `cpu` fits a 2-core machine, `paper` is the "
        "paper's settings (the defaults; a GPU job), `study` is the small detector of `dede study`. The presets "
        "column lists the values a preset sets.",
        "",
        *table(["key", "type", "default", "presets", "what"], key_rows(TrainConfig, TRAIN_PRESETS, research=False)),
        "",
        "### Research keys",
        "",
        "Settings of the paper's experiments and of this project's studies (poisoning the auxiliary set, robust "
        "training, the dense filter, crops); `dede train` accepts them like any other key.",
        "",
        *table(["key", "type", "default", "presets", "what"], key_rows(TrainConfig, TRAIN_PRESETS, research=True)),
        "",
        "## Research commands",
        "",
        "The configs of the research commands (docs/research/), resolved the same way. They carry no help text: the "
        "source file named under each table says what a key does.",
        "",
    ]
    for title, how, cls, presets, source in RESEARCH_CONFIGS:
        lines += research_section(title, how, cls, presets, source)
    for name, (cls, presets, source) in ATTACK_CONFIGS.items():
        lines += research_section(f"`dede attack {name}`", f"`dede attack {name}` (`--preset`, `--config`, `--set`)",
                                  cls, presets, source)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=COMMAND, description="write docs/CONFIGURATION.md from the code")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    a.out.write_text(render())
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
