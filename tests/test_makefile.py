"""The Makefile and research.mk: a fresh checkout (committed bundles, no git-ignored training runs) evaluates the
committed bundles instead of training them again; without the bundles the whole chain is planned; ``make help``
lists the product targets; the variant grids' rules (research-variants.mk) and docs/research/REPRODUCE.md are what
the variants table generates now."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT
from training.research.variants import MAKEFILE, REPRODUCE_MD, RESEARCH_MK, TABLE, generated, help_entries

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
MAKEFILES = (Path("Makefile"), RESEARCH_MK, MAKEFILE)


def make(tmp: Path, *args: str) -> str:
    """What ``make ARGS`` prints in ``tmp``, a copy of the makefiles (``-n``: the commands it would run)."""
    for name in MAKEFILES:
        shutil.copy(ROOT / name, tmp / name)
    return subprocess.run(["make", "--no-print-directory", *args], cwd=tmp, capture_output=True, text=True,
                          check=True, timeout=30).stdout


@needs_make
def test_committed_bundles_are_evaluated_without_their_training_runs(tmp_path: Path) -> None:
    for name in ("demo-cifar10-badencoder", "demo-cifar10-clean"):
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "manifest.json").write_text("{}")
    plan = make(tmp_path, "-n", "evaluate")
    assert "dede evaluate --bundle models/demo-cifar10-badencoder" in plan
    for step in ("pretrain", "attack badencoder", " train ", " export "):
        assert step not in plan
    examples = make(tmp_path, "-n", "examples")
    assert "training.evaluation.examples" in examples and "pretrain" not in examples


@needs_make
def test_without_bundles_the_whole_chain_is_planned(tmp_path: Path) -> None:
    plan = make(tmp_path, "-n", "evaluate")
    steps = ["dede pretrain", "dede attack badencoder", "dede train --encoder runs/demo-cpu/badencoder",
             "dede export --run runs/demo-cpu/dede-badencoder", "dede evaluate"]
    positions = [plan.index(s) for s in steps]
    assert positions == sorted(positions)


@needs_make
def test_help_lists_the_product_targets_one_line_each(tmp_path: Path) -> None:
    lines = make(tmp_path, "help").splitlines()
    listed = [line.split()[0] for line in lines[1:]]
    product = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert product is not None
    assert listed[:-1] == [t for t, _ in help_entries((ROOT / "Makefile").read_text())]
    assert set(listed[:-1]) == set(product.group(1).split())  # every product target, once
    assert listed[-1] == "help-research" and "reproduce" not in listed
    assert all(len(line.split()) > 1 for line in lines[1:])  # each with its line
    assert make(tmp_path) == make(tmp_path, "help")  # the default goal


@needs_make
def test_help_research_lists_research_mk_and_the_variant_grids(tmp_path: Path) -> None:
    listed = [line.split()[0] for line in make(tmp_path, "help-research").splitlines()[1:]]
    research = {"reproduce", "reproduce-gpu", "ctrl-curve", "study", "ensemble", "decompose", "mask-variance"}
    assert research <= set(listed)
    assert listed[-len(TABLE.targets) - len(TABLE.groups):] == [t.name for t in TABLE.targets] + [
        g.name for g in TABLE.groups]


@needs_make
def test_serve_runs_the_service_on_the_demo_bundle(tmp_path: Path) -> None:
    assert make(tmp_path, "-n", "serve") == ".venv/bin/dede serve --bundle models/demo-cifar10-badencoder --port 8000\n"
    assert "--port 9000" in make(tmp_path, "-n", "serve", "PORT=9000")


@needs_make
def test_reproduce_content_runs_every_content_grid_recorded_as_its_own_target(tmp_path: Path) -> None:
    plan = make(tmp_path, "-n", "reproduce-content").splitlines()
    variants = {re.search(r"--variant (\S+)", line).group(1) for line in plan}  # type: ignore[union-attr]
    assert variants == {v for v in TABLE.variants if "-content" in v}
    for line in plan:
        variant = re.search(r"--variant (\S+)", line).group(1)  # type: ignore[union-attr]
        assert line.endswith(f'--command-line "make reproduce-{variant}"')


def test_the_generated_make_rules_and_reproduce_md_are_fresh() -> None:
    for path, text in generated(ROOT).items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: run python -m training.research.variants"
    assert (ROOT / MAKEFILE).read_text().startswith("# Generated from training/research/variants.toml")
    assert "`make reproduce-drupe16-gtsrb3040`" in (ROOT / REPRODUCE_MD).read_text()
