import subprocess
import sys

import pytest

from training.cli import build_parser, main


def test_every_subcommand_exists() -> None:
    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert sub is not None
    assert set(sub) == {"pretrain", "attack", "train", "calibrate", "export", "evaluate", "scan", "serve", "study",
                        "reproduce", "decompose", "ensemble"}


def test_bad_config_exits_2_with_message(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert main(["train", "--out", str(tmp_path), "--set", "nope=1", "--show-config"]) == 2
    assert "unknown config key 'nope'" in capsys.readouterr().err
    assert main(["train", "--encoder", "x", "--out", str(tmp_path)]) == 2
    assert "encoder x does not exist" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path / "missing"), "--name", "x"]) == 2


def test_serve_does_not_import_torch() -> None:
    code = ("import sys, training.cli, service.app; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_ensemble_of_missing_bundles_exits_2(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert main(["ensemble", "--bundle", str(tmp_path / "a"), "--bundle", str(tmp_path / "b"), "--control",
                 str(tmp_path / "c"), "--control", str(tmp_path / "d"), "--results", str(tmp_path / "e.json"),
                 "--report", str(tmp_path / "E.md")]) == 2
    assert "is not a bundle (no manifest.json)" in capsys.readouterr().err
    assert not (tmp_path / "e.json").exists()
