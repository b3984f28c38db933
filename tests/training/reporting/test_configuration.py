"""docs/CONFIGURATION.md is generated from the code (``python -m training.reporting.configuration``) and current."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from service.settings import Settings
from training.attacks import ATTACK_NAMES
from training.config import TrainConfig
from training.reporting.configuration import ATTACK_CONFIGS, OTHER_ENV, OUT, ROOT, main, render


def test_the_committed_file_is_what_the_generator_writes_now() -> None:
    assert OUT == ROOT / "docs" / "CONFIGURATION.md"
    assert OUT.read_text() == render(), "docs/CONFIGURATION.md is stale: run python -m training.reporting.configuration"


def test_the_generator_writes_where_it_is_told(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path / "C.md")]) == 0
    assert (tmp_path / "C.md").read_text() == render()


def test_every_setting_and_every_train_key_is_listed() -> None:
    text = render()
    for name, info in Settings.model_fields.items():
        assert f"| `DEDE_{name.upper()}` |" in text
        assert info.description, f"Settings.{name} has no description"
    for f in dataclasses.fields(TrainConfig):
        assert f"| `{f.name}` |" in text
    user, research = text.split("### Research keys")[0], text.split("### Research keys")[1].split("## Research")[0]
    for f in dataclasses.fields(TrainConfig):
        assert (f"| `{f.name}` |" in research) == bool(f.metadata.get("research"))
        assert (f"| `{f.name}` |" in user) == (not f.metadata.get("research"))


def test_every_attack_has_its_table_and_the_other_variables_are_read_where_it_says() -> None:
    assert set(ATTACK_CONFIGS) == set(ATTACK_NAMES)
    for name in ATTACK_NAMES:
        assert f"### `dede attack {name}`" in render()
    for variable, source, _ in OTHER_ENV:
        assert variable in (ROOT / source).read_text(), f"{source} does not read {variable}"
