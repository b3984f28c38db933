"""Settings that cannot work are refused at start-up with a message naming the ``DEDE_`` variable: an empty API key
(everyone in), one with surrounding whitespace (no one in), a queue smaller than a batch; ``dede serve`` reports
them as one line and exits 2, before any server starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.conftest import DEMO_BUNDLE, ROOT


@pytest.fixture(autouse=True)
def _no_dede_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DEDE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "DEDE_API_KEY is set but empty"),
        ("   ", "DEDE_API_KEY is set but empty"),
        ("\n", "DEDE_API_KEY is set but empty"),
        ("s3cret-key\n", "DEDE_API_KEY has leading or trailing whitespace"),
        (" s3cret-key", "DEDE_API_KEY has leading or trailing whitespace"),
    ],
)
def test_an_unusable_api_key_is_refused(key: str, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match=message) as info:
        Settings(api_key=key)
    assert "s3cret" not in str(info.value)  # the error never echoes the key
    monkeypatch.setenv("DEDE_API_KEY", key)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_a_usable_api_key_or_none_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().api_key is None
    key = Settings(api_key="a key with inner spaces").api_key
    assert key is not None and key.get_secret_value() == "a key with inner spaces"
    monkeypatch.setenv("DEDE_API_KEY", "k")
    key = Settings().api_key
    assert key is not None and key.get_secret_value() == "k"


def test_a_queue_below_a_batch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match=r"DEDE_MAX_QUEUE \(8\) is below DEDE_MAX_BATCH_SIZE \(64\)"):
        Settings(max_queue=8)
    monkeypatch.setenv("DEDE_MAX_QUEUE", "16")
    monkeypatch.setenv("DEDE_MAX_BATCH_SIZE", "32")
    with pytest.raises(ValidationError, match=r"DEDE_MAX_QUEUE \(16\) is below DEDE_MAX_BATCH_SIZE \(32\)"):
        Settings()
    assert Settings(max_queue=32).max_queue == 32  # one full batch fits
    assert Settings(batching=False).max_queue == 16  # without the batcher no batch has to fit


def test_a_pinned_digest_must_be_a_sha256() -> None:
    with pytest.raises(ValidationError, match="bundle_sha256"):
        Settings(bundle_sha256="abc")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEDE_API_KEY": ""}, "DEDE_API_KEY is set but empty"),
        ({"DEDE_API_KEY": "key\n"}, "DEDE_API_KEY has leading or trailing whitespace"),
        ({"DEDE_MAX_QUEUE": "8"}, r"DEDE_MAX_QUEUE \(8\) is below DEDE_MAX_BATCH_SIZE \(64\)"),
        ({"DEDE_MAX_QUEUE": "many"}, "DEDE_MAX_QUEUE: Input should be a valid integer"),
        ({"DEDE_BUNDLE_SHA256": "0" * 64}, "DEDE_BUNDLE_SHA256 pins 0000"),
    ],
)
def test_dede_serve_reports_a_bad_setting_on_one_line(env: dict[str, str], message: str,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import uvicorn

    from training.cli import main

    def no_server(*args: object, **kwargs: object) -> None:
        raise AssertionError("a server was started with settings that cannot work")

    monkeypatch.setattr(uvicorn, "run", no_server)
    monkeypatch.setenv("DEDE_BUNDLE", str(DEMO_BUNDLE))  # restored afterwards (dede serve --bundle sets it)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--bundle", str(DEMO_BUNDLE)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dede serve: error: ") and err.count("\n") == 1
    assert re.search(message, err), err


def test_dede_serve_starts_the_server_with_good_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from training.cli import main

    started: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: started.append({"app": app, **kwargs}))
    monkeypatch.setenv("DEDE_BUNDLE", str(DEMO_BUNDLE))
    monkeypatch.setenv("DEDE_API_KEY", "k")
    assert main(["serve", "--bundle", str(DEMO_BUNDLE), "--port", "9"]) == 0
    assert started and started[0]["app"] == "service.app:create_app" and started[0]["port"] == 9


def test_dede_serve_exits_2_with_one_line_from_the_shell() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEDE_")} | {"DEDE_API_KEY": " "}
    out = subprocess.run([sys.executable, "-m", "training.cli", "serve", "--bundle", str(DEMO_BUNDLE), "--port", "9"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.splitlines() == ["dede serve: error: invalid settings: DEDE_API_KEY is set but empty (or only "
                                       "whitespace), which would let every request in: set a key, or unset "
                                       "DEDE_API_KEY to serve without one"]


def test_budgets_must_hold_one_request_at_its_limits() -> None:
    with pytest.raises(ValidationError, match="DEDE_UPLOAD_BUDGET_BYTES .* below twice DEDE_MAX_UPLOAD_BYTES"):
        Settings(bundle=DEMO_BUNDLE, max_upload_bytes=10_000_000, upload_budget_bytes=15_000_000)
    with pytest.raises(ValidationError, match="DEDE_DECODE_BUDGET_BYTES .* cannot decode an image"):
        Settings(bundle=DEMO_BUNDLE, max_image_pixels=25_000_000, decode_budget_bytes=100 * 2**20)
    Settings(bundle=DEMO_BUNDLE)  # the defaults fit
