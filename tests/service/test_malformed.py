"""A corpus of malformed and hostile uploads, and property-based tests: every bad upload gets a 4xx JSON
error, nothing gets a 5xx, and the next valid request still succeeds."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import EXAMPLES
from tests.service.conftest import demo_client
from tests.service.test_app import huge_header_png


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with demo_client(max_upload_bytes=3_000_000, max_image_pixels=30_000_000,
                     decode_budget_bytes=30_000_000 * 20) as c:
        yield c


def encode(img: Image.Image, fmt: str, **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def bomb_png(side: int = 8000) -> bytes:
    """A real, fully valid PNG of side x side black pixels that compresses to a few hundred KB."""
    raw_row = b"\x00" + b"\x00" * side  # filter byte + one grayscale byte per pixel
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(raw_row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def corpus() -> dict[str, tuple[bytes, int]]:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), np.uint8))
    jpeg = encode(rgb, "JPEG")
    png = encode(rgb, "PNG")
    return {
        "truncated-png": (png[: len(png) // 3], 400),
        "truncated-jpeg": (jpeg[: len(jpeg) // 2], 400),
        "png-magic-only": (b"\x89PNG\r\n\x1a\n", 400),
        "jpeg-magic-garbage": (b"\xff\xd8\xff\xe0" + b"\x13" * 300, 400),
        "wrong-magic": (b"GIF00a" + png[6:], 400),
        "header-10000x10000": (huge_header_png(10000, 10000), 413),
        "header-100000x100000": (huge_header_png(), 413),
        "decompression-bomb": (bomb_png(), 413),
        "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 400),
        "tiff": (encode(rgb, "TIFF"), 415),
        "ico": (encode(rgb, "ICO"), 415),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 400),
    }


@pytest.mark.parametrize("name", list(corpus()))
def test_malformed_corpus(client: TestClient, name: str) -> None:
    data, status = corpus()[name]
    r = client.post("/score", content=data)
    assert r.status_code == status, (name, r.text)
    assert set(r.json()["error"]) == {"code", "message"}
    assert client.post("/score", content=(EXAMPLES / "clean-cat.png").read_bytes()).status_code == 200


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"),
        lambda: encode(Image.new("CMYK", (40, 30), (0, 50, 100, 0)), "JPEG"),
        lambda: encode(Image.new("I;16", (40, 30)), "PNG"),
        lambda: encode(Image.new("P", (40, 30)), "GIF"),
        lambda: encode(Image.new("RGB", (33, 17)), "WEBP"),
        lambda: encode(Image.new("RGB", (33, 17)), "BMP"),
        lambda: encode(Image.new("RGB", (20, 20)), "PNG") + b"PK\x03\x04" + b"\x00" * 100,  # png+zip polyglot
        lambda: encode(Image.new("RGB", (4000, 10)), "PNG"),  # extreme aspect ratio
    ],
    ids=["1x1", "cmyk-jpeg", "16bit-png", "palette-gif", "webp", "bmp", "polyglot", "4000x10"],
)
def test_odd_but_valid_images_are_scored(client: TestClient, make) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/score", content=make())
    assert r.status_code == 200, r.text
    assert r.json()["score"] >= 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=4096))
def test_random_bytes_never_cause_5xx(client: TestClient, body: bytes) -> None:
    r = client.post("/score", content=body)
    assert r.status_code < 500
    if r.status_code != 200:
        assert r.json()["error"]["code"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=st.integers(1, 300), h=st.integers(1, 300), mode=st.sampled_from(["RGB", "L", "RGBA", "P", "LA"]),
       fmt=st.sampled_from(["PNG", "BMP", "GIF", "WEBP"]), seed=st.integers(0, 2**16))
def test_any_valid_image_is_scored(client: TestClient, w: int, h: int, mode: str, fmt: str, seed: int) -> None:
    arr = np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)
    img = Image.fromarray(arr).convert(mode)
    if fmt in ("BMP", "WEBP") and mode in ("LA", "P"):
        img = img.convert("RGBA" if fmt == "WEBP" else "RGB")
    r = client.post("/score", content=encode(img, fmt))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["backdoor"] == (body["score"] > body["threshold"] and body.get("reason") != "degenerate")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ctype=st.sampled_from(["multipart/form-data", "multipart/form-data; boundary=x", "image/png",
                              "application/x-www-form-urlencoded", "text/plain", ""]),
       body=st.binary(max_size=512))
def test_odd_content_types_never_cause_5xx(client: TestClient, ctype: str, body: bytes) -> None:
    r = client.post("/score", content=body, headers={"content-type": ctype})
    assert 400 <= r.status_code < 500
