"""Before the bundle is loaded and once shutdown has begun, every endpoint that needs the model answers 503 (+
Retry-After), each in its own shape: the service's error, or under /v2 the Open Inference Protocol's."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import DEMO_BUNDLE, EXAMPLES

MODEL = "demo-cifar10-badencoder"
NOT_LOADED = "the model is not loaded yet"


def answers(app: FastAPI) -> dict[str, tuple[int, object, str | None]]:
    """(status, body, Retry-After) of each readiness-checked endpoint, without running the app's lifespan."""
    client = TestClient(app)  # no ``with``: the lifespan (loading, or its end) is the caller's
    image = (EXAMPLES / "clean-cat.png").read_bytes()
    requests = {
        "readyz": client.get("/readyz"),
        "info": client.get("/info"),
        "score": client.post("/score", content=image, headers={"content-type": "image/png"}),
        "v2 ready": client.get("/v2/health/ready"),
        "v2 model": client.get(f"/v2/models/{MODEL}"),
        "v2 model ready": client.get(f"/v2/models/{MODEL}/versions/1/ready"),
        "v2 infer": client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [
            {"name": "image", "datatype": "UINT8", "shape": [1, 1, 1, 3], "data": [0, 0, 0]}]}),
    }
    return {k: (r.status_code, r.json(), r.headers.get("retry-after")) for k, r in requests.items()}


def not_ready(message: str) -> dict[str, object]:
    return {"error": {"code": "not_ready", "message": message}}


EXPECTED = {
    "readyz": (503, not_ready("the model is not loaded or not warmed up"), "1"),
    "info": (503, not_ready(NOT_LOADED), "1"),
    "score": (503, not_ready(NOT_LOADED), "1"),
    "v2 ready": (503, {"ready": False}, None),
    "v2 model": (503, {"error": NOT_LOADED}, "1"),
    "v2 model ready": (503, {"error": NOT_LOADED}, "1"),
    "v2 infer": (503, {"error": NOT_LOADED}, "1"),
}


@pytest.mark.parametrize("when", ["before start-up", "after shutdown"])
def test_not_ready_answers(when: str) -> None:
    app = create_app(Settings(bundle=DEMO_BUNDLE))
    if when == "after shutdown":
        with TestClient(app) as client:
            assert client.get("/readyz").status_code == client.get("/v2/health/ready").status_code == 200
        assert app.state.scoring is not None and not app.state.ready  # loaded, but shutting down
    assert answers(app) == EXPECTED


def test_the_api_key_is_checked_before_readiness() -> None:
    app = create_app(Settings(bundle=DEMO_BUNDLE, api_key="s3cret"))
    got = answers(app)
    assert got["score"][0] == got["v2 infer"][0] == 401
    assert got["readyz"] == EXPECTED["readyz"] and got["v2 ready"] == EXPECTED["v2 ready"]  # no key needed
