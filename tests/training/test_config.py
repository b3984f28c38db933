import json
from pathlib import Path

import pytest

from training.config import TRAIN_PRESETS, TrainConfig, resolve_config, save_config


def test_precedence_defaults_preset_file_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"epochs": 7, "lr": 0.5}))
    cfg = resolve_config(TrainConfig, TRAIN_PRESETS, "cpu", str(f), ["lr=0.25", "aux_source=gtsrb"])
    assert cfg.preset == "cpu"
    assert cfg.width == TRAIN_PRESETS["cpu"]["width"]
    assert cfg.epochs == 7 and cfg.lr == 0.25 and cfg.aux_source == "gtsrb"
    assert cfg.weight_decay == TrainConfig().weight_decay


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overrides": ["nonsense=1"]}, "unknown config key 'nonsense'"),
        ({"overrides": ["epochs"]}, "key=value"),
        ({"overrides": ["epochs=ten"]}, "invalid literal"),
        ({"preset": "huge"}, "unknown preset"),
        ({"config_file": "/nonexistent.json"}, "does not exist"),
    ],
)
def test_bad_configs_are_errors(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        resolve_config(TrainConfig, TRAIN_PRESETS, **kwargs)


def test_bad_config_file(tmp_path: Path) -> None:
    f = tmp_path / "c.json"
    f.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        resolve_config(TrainConfig, TRAIN_PRESETS, config_file=str(f))
    f.write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        resolve_config(TrainConfig, TRAIN_PRESETS, config_file=str(f))
    f.write_text(json.dumps({"widht": 3}))
    with pytest.raises(ValueError, match="widht"):
        resolve_config(TrainConfig, TRAIN_PRESETS, config_file=str(f))


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = resolve_config(TrainConfig, TRAIN_PRESETS, "tiny", overrides=["poison_rate=0.01"])
    save_config(cfg, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["poison_rate"] == 0.01 and "code_version" in saved
    saved.pop("code_version")
    (tmp_path / "again.json").write_text(json.dumps(saved))
    assert resolve_config(TrainConfig, TRAIN_PRESETS, config_file=str(tmp_path / "again.json")) == cfg


def test_a_later_override_of_the_same_key_wins() -> None:
    # `dede reproduce` relies on it: a variant's detector settings follow the command line's --stage-set train:...
    cfg = resolve_config(TrainConfig, TRAIN_PRESETS, "tiny", overrides=["epochs=90", "epochs=270"])
    assert cfg.epochs == 270
