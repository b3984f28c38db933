"""Every endpoint and every kind of bad upload, through the app with the committed demo bundle."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.conftest import DEMO_BUNDLE, EXAMPLES, ROOT
from tests.service.conftest import demo_client


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def example() -> bytes:
    return (EXAMPLES / "clean-cat.png").read_bytes()


def metric(client: TestClient, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_health_ready_info(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["provider"] == "CPUExecutionProvider"
    info = client.get("/info").json()
    assert info["model"] == "demo-cifar10-badencoder"
    assert info["input_size"] == 32 and info["kept_patches"] == 0
    assert info["threshold"] > 0 and info["score"] == "paper"
    assert info["drop_worst"] is None  # the demo bundle was exported before manifests recorded robust training
    assert info["drop_dense"] is None  # ... or a filtered auxiliary set


def test_score_multipart_and_raw_body_agree(client: TestClient, example: bytes) -> None:
    a = client.post("/score", files={"file": ("cat.png", example, "image/png")})
    b = client.post("/score", content=example, headers={"content-type": "image/png"})
    assert a.status_code == b.status_code == 200
    ja, jb = a.json(), b.json()
    assert set(ja) == {"backdoor", "score", "p_value", "incident", "threshold", "view", "model", "model_version"}
    assert ja["view"] == "stored"
    assert ja["score"] == pytest.approx(jb["score"])
    assert ja["backdoor"] == (ja["score"] > ja["threshold"])


def test_batch_keeps_order(client: TestClient) -> None:
    files = sorted(EXAMPLES.glob("*.png"))[:3]
    singles = [client.post("/score", content=f.read_bytes()).json()["score"] for f in files]
    batch = client.post("/score/batch", files=[("files", (f.name, f.read_bytes(), "image/png")) for f in files])
    assert batch.status_code == 200
    assert [r["score"] for r in batch.json()["results"]] == pytest.approx(singles, rel=1e-5)


def test_batch_limit(client: TestClient, example: bytes) -> None:
    r = client.post("/score/batch", files=[("files", (f"{i}.png", example, "image/png")) for i in range(5)])
    assert r.status_code in (400, 413)
    assert "error" in r.json()


def test_metrics_change_after_scoring(client: TestClient, example: bytes) -> None:
    before = metric(client, "dede_images_scored_total")
    alerts_before = metric(client, "dede_backdoor_alerts_total")
    flags = [client.post("/score", content=example).json()["backdoor"] for _ in range(3)]
    assert metric(client, "dede_images_scored_total") == before + 3
    assert metric(client, "dede_backdoor_alerts_total") == alerts_before + sum(flags)
    text = client.get("/metrics").text
    for name in ("dede_score_ratio_bucket", "dede_inference_seconds_bucket", "dede_batch_size_bucket",
                 "dede_queue_depth", "dede_model_info"):
        assert name in text
    assert 'stage="decode"' in text and 'stage="encoder"' in text and 'stage="detector"' in text


def truncated_png() -> bytes:
    data = png_bytes(np.full((64, 64, 3), 120, np.uint8))
    return data[: len(data) // 2]


def huge_header_png(w: int = 100_000, h: int = 100_000) -> bytes:
    """A valid PNG signature and IHDR declaring w x h pixels (a decompression-bomb header)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def tiff_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "TIFF")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "bad_image"),
        (b"this is not an image at all", 400, "bad_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400, "bad_image"),
        ("truncated", 400, "bad_image"),
        ("tiff", 415, "unsupported_format"),
        ("huge", 413, "image_too_large"),
    ],
)
def test_bad_uploads_get_clear_4xx(client: TestClient, example: bytes, body: bytes | str, status: int,
                                   code: str) -> None:
    data = {"truncated": truncated_png, "tiff": tiff_bytes, "huge": huge_header_png}[body]() \
        if isinstance(body, str) else body
    errors_before = metric(client, "dede_request_errors_total", reason=code)
    r = client.post("/score", content=data, headers={"content-type": "application/octet-stream"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]
    assert metric(client, "dede_request_errors_total", reason=code) == errors_before + 1
    assert client.post("/score", content=example).status_code == 200  # still serving


def test_upload_over_limit_by_content_length(client: TestClient) -> None:
    r = client.post("/score", content=b"\x00" * 2_100_000)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_chunked_upload_over_limit(client: TestClient, example: bytes) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"\x00" * 100_000

    r = client.post("/score", content=chunks())  # no Content-Length: Transfer-Encoding chunked
    assert r.status_code == 413
    assert client.post("/score", content=example).status_code == 200


def test_multipart_without_file_field(client: TestClient) -> None:
    r = client.post("/score", files={"other": ("x.png", b"abc", "image/png")})
    assert r.status_code == 400
    assert "file" in r.json()["error"]["message"]


def test_modes_are_accepted(client: TestClient) -> None:
    arr = np.asarray(Image.open(EXAMPLES / "clean-cat.png").convert("RGB"))
    rgb = client.post("/score", content=png_bytes(arr)).json()["score"]
    for mode in ("L", "RGBA", "P", "LA", "I;16"):
        r = client.post("/score", content=png_bytes(arr, mode))
        assert r.status_code == 200, (mode, r.text)
    assert client.post("/score", content=png_bytes(arr, "RGBA")).json()["score"] == pytest.approx(rgb)


def test_large_image_is_resized(client: TestClient) -> None:
    big = np.asarray(Image.open(EXAMPLES / "clean-cat.png").convert("RGB").resize((640, 480)))
    assert client.post("/score", content=png_bytes(big)).status_code == 200


def test_api_key_when_configured(example: bytes) -> None:
    app = create_app(Settings(bundle=DEMO_BUNDLE, api_key="s3cret"))
    with TestClient(app) as c:
        assert c.post("/score", content=example).status_code == 401
        assert c.post("/score", content=example, headers={"x-api-key": "wrong"}).status_code == 401
        assert c.post("/score", content=example, headers={"x-api-key": "s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_require_gpu_refuses_cpu_only(example: bytes) -> None:
    app = create_app(Settings(bundle=DEMO_BUNDLE, require_gpu=True, providers="CPUExecutionProvider"))
    with pytest.raises(Exception, match="DEDE_REQUIRE_GPU"), TestClient(app):
        pass


def test_openapi_lists_the_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/score", "/score/batch", "/healthz", "/readyz", "/info", "/metrics"} <= set(paths)


def test_readme_demo_claims(client: TestClient) -> None:
    """What the README says the curl commands show: clean examples pass, triggered-cat alerts, and the
    control bundle (the clean encoder) raises no alert on any example."""
    from tests.conftest import CONTROL_BUNDLE

    flags = {f.stem: client.post("/score", content=f.read_bytes()).json()["backdoor"]
             for f in sorted(EXAMPLES.glob("*.png"))}
    assert not any(v for k, v in flags.items() if k.startswith("clean-"))
    assert flags["triggered-cat"]
    with TestClient(create_app(Settings(bundle=CONTROL_BUNDLE))) as control:
        assert not any(control.post("/score", content=f.read_bytes()).json()["backdoor"]
                       for f in EXAMPLES.glob("*.png"))


def test_an_explanation_refused_and_retried_counts_its_alert_once() -> None:
    trig = (ROOT / "examples" / "triggered-cat.png").read_bytes()
    with demo_client() as c:
        explainer = c.app.state.scoring.explainer  # type: ignore[attr-defined]
        alerts = metric(c, "dede_backdoor_alerts_total", model="demo-cifar10-badencoder")
        explainer._waiting = explainer.max_waiting  # every explanation slot taken: 503
        assert c.post("/score?explain=true", content=trig).status_code == 503
        explainer._waiting = 0
        r = c.post("/score?explain=true", content=trig)  # the client's retry
        assert r.status_code == 200 and r.json()["backdoor"] is True
        assert metric(c, "dede_backdoor_alerts_total", model="demo-cifar10-badencoder") == alerts + 1

