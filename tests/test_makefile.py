"""The Makefile's long runs: a fresh checkout (committed bundles, no git-ignored training runs) evaluates the
committed bundles instead of training them again; without the bundles the whole chain is planned."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def planned(tmp: Path, target: str) -> str:
    """The commands ``make -n target`` would run in ``tmp`` (a copy of the Makefile, nothing run)."""
    shutil.copy(ROOT / "Makefile", tmp / "Makefile")
    return subprocess.run(["make", "-n", target], cwd=tmp, capture_output=True, text=True, check=True,
                          timeout=30).stdout


def test_committed_bundles_are_evaluated_without_their_training_runs(tmp_path: Path) -> None:
    for name in ("demo-cifar10-badencoder", "demo-cifar10-clean"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "manifest.json").write_text("{}")
    plan = planned(tmp_path, "evaluate")
    assert "dede evaluate --bundle models/demo-cifar10-badencoder" in plan
    for step in ("pretrain", "attack badencoder", " train ", " export "):
        assert step not in plan
    examples = planned(tmp_path, "examples")
    assert "training.evaluation.examples" in examples and "pretrain" not in examples


def test_without_bundles_the_whole_chain_is_planned(tmp_path: Path) -> None:
    plan = planned(tmp_path, "evaluate")
    steps = ["dede pretrain", "dede attack badencoder", "dede train --encoder runs/demo-cpu/badencoder",
             "dede export --run runs/demo-cpu/dede-badencoder", "dede evaluate"]
    positions = [plan.index(s) for s in steps]
    assert positions == sorted(positions)
