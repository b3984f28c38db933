"""The Open Inference Protocol (KServe V2) endpoints, with requests written by hand from the protocol's
REST specification (kserve/open-inference-protocol, inference_rest.md) and Triton's binary tensor data
extension, not with a client library."""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.conftest import DEMO_BUNDLE, EXAMPLES

MODEL = "demo-cifar10-badencoder"
INFER = f"/v2/models/{MODEL}/infer"


def pixels(name: str) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / f"{name}.png").convert("RGB"))


def outputs(body: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {o["name"]: o for o in body["outputs"]}


def test_health_and_metadata(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.json() == {"ready": True}
    server = client.get("/v2").json()
    assert server["name"] and server["version"] and "binary_tensor_data" in server["extensions"]
    meta = client.get(f"/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL and meta["versions"] == ["1"] and meta["platform"]
    assert {"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1, 3]} in meta["inputs"]
    assert {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]} in meta["inputs"]
    assert {(o["name"], o["datatype"]) for o in meta["outputs"]} >= {
        ("score", "FP32"), ("backdoor", "BOOL"), ("threshold", "FP32")}
    assert client.get(f"/v2/models/{MODEL}/versions/1").json() == meta
    assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    assert client.get(f"/v2/models/{MODEL}/versions/1/ready").json()["ready"] is True


def test_uint8_tensor_flat_and_nested_agree_with_score(client: TestClient) -> None:
    cat = pixels("triggered-cat")
    ship = pixels("clean-ship")
    batch = np.stack([cat, ship])
    nested = {"id": "req-1", "inputs": [{"name": "image", "shape": [2, 32, 32, 3], "datatype": "UINT8",
                                         "data": batch.tolist()}]}
    flat = {"inputs": [{"name": "image", "shape": [2, 32, 32, 3], "datatype": "UINT8",
                        "data": batch.reshape(-1).tolist()}]}
    a, b = client.post(INFER, json=nested), client.post(INFER, json=flat)
    assert a.status_code == b.status_code == 200, a.text
    body = a.json()
    assert body["model_name"] == MODEL and body["model_version"] == "1" and body["id"] == "req-1"
    out = outputs(body)
    assert out["score"]["datatype"] == "FP32" and out["score"]["shape"] == [2]
    assert out["backdoor"]["datatype"] == "BOOL" and out["backdoor"]["shape"] == [2]
    assert out["threshold"]["shape"] == [1]
    assert outputs(b.json())["score"]["data"] == pytest.approx(out["score"]["data"])
    # the same images through POST /score (PNG upload) give the same scores and flags
    for i, name in enumerate(("triggered-cat", "clean-ship")):
        own = client.post("/score", content=(EXAMPLES / f"{name}.png").read_bytes()).json()
        assert out["score"]["data"][i] == pytest.approx(own["score"], rel=1e-5)
        assert out["backdoor"]["data"][i] == own["backdoor"]
        assert out["threshold"]["data"][0] == pytest.approx(own["threshold"])
    assert out["backdoor"]["data"] == [True, False]  # the README's demo claim


def test_bytes_input_base64_in_json(client: TestClient) -> None:
    files = [(EXAMPLES / f"{n}.png").read_bytes() for n in ("clean-cat", "triggered-cat")]
    req = {"inputs": [{"name": "image_bytes", "shape": [2], "datatype": "BYTES",
                       "data": [base64.b64encode(f).decode() for f in files]}],
           "outputs": [{"name": "backdoor"}, {"name": "score"}]}
    r = client.post(INFER, json=req)
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["backdoor", "score"]  # only those, in that order
    scores = outputs(r.json())["score"]["data"]
    singles = [client.post("/score", content=f).json()["score"] for f in files]
    assert scores == pytest.approx(singles, rel=1e-5)
    nested = {"inputs": [{"name": "image_bytes", "shape": [2, 1], "datatype": "BYTES",
                          "data": [[base64.b64encode(f).decode()] for f in files]}]}
    assert outputs(client.post(INFER, json=nested).json())["score"]["data"] == pytest.approx(scores)


def test_binary_tensor_data_extension(client: TestClient) -> None:
    """JSON header, then the tensor's bytes: BYTES elements with a 4-byte little-endian length each,
    UINT8 as raw row-major bytes."""
    png = (EXAMPLES / "triggered-cat.png").read_bytes()
    elements = struct.pack("<I", len(png)) + png
    head = json.dumps({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(elements)}}]}).encode()
    r = client.post(INFER, content=head + elements, headers={
        "Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    cat = pixels("triggered-cat")
    head = json.dumps({"inputs": [{"name": "image", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                                   "parameters": {"binary_data_size": cat.size}}]}).encode()
    r2 = client.post(INFER, content=head + cat.tobytes(), headers={"Inference-Header-Content-Length": str(len(head))})
    assert r2.status_code == 200, r2.text
    assert outputs(r.json())["score"]["data"] == pytest.approx(outputs(r2.json())["score"]["data"], rel=1e-5)


def test_other_image_sizes_are_resized_like_uploads(client: TestClient) -> None:
    big = np.asarray(Image.fromarray(pixels("clean-cat")).resize((48, 40)))
    r = client.post(INFER, json={"inputs": [{"name": "image", "shape": [1, 40, 48, 3], "datatype": "UINT8",
                                              "data": big.tolist()}]})
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "PNG")
    own = client.post("/score", content=buf.getvalue()).json()
    assert outputs(r.json())["score"]["data"][0] == pytest.approx(own["score"], rel=1e-5)


def uint8(shape: list[int], data: object, datatype: str = "UINT8", name: str = "image") -> dict:  # type: ignore[type-arg]
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


@pytest.mark.parametrize(("body", "status"), [
    (uint8([1, 32, 32, 3], [0] * 3072, datatype="FP32"), 400),  # wrong datatype
    (uint8([1, 32, 32], [0] * 3072), 400),  # wrong rank
    (uint8([1, 32, 32, 4], [0] * 4096), 400),  # not RGB
    (uint8([1, 32, 32, 3], [0] * 3000), 400),  # data does not fill the shape
    (uint8([1, 32, 32, 3], [300] * 3072), 400),  # out of the UINT8 range
    (uint8([1, 32, 32, 3], [0.5] * 3072), 400),  # not integers
    (uint8([1, 2, 2, 3], [[[[0, 0, 0]] * 2] * 2, [[0, 0]]]), 400),  # ragged nesting
    (uint8([5, 1, 1, 3], [0] * 15), 400),  # over DEDE_MAX_BATCH_IMAGES (4)
    (uint8([1, 3000, 3000, 3], [0]), 413),  # over the pixel limit, refused before reading the data
    (uint8([1], ["not base64!"], datatype="BYTES", name="image_bytes"), 400),
    (uint8([1], [3], datatype="BYTES", name="image_bytes"), 400),
    (uint8([1], [1234], datatype="BYTES", name="image_bytes"), 400),  # a number is not a string
    (uint8([1], [base64.b64encode(b"not an image").decode()], datatype="BYTES", name="image_bytes"), 400),
    (uint8([2], [base64.b64encode(b"x").decode()], datatype="BYTES", name="image_bytes"), 400),
    (uint8([1, 32, 32, 3], [0] * 3072, name="pixels"), 400),  # unknown input name
    ({"inputs": []}, 400),
    ({"inputs": [{"name": "image"}]}, 400),  # no shape/datatype
    ({"inputs": uint8([1, 1, 1, 3], [0, 0, 0])["inputs"] * 2}, 400),  # two inputs
    ({**uint8([1, 1, 1, 3], [0, 0, 0]), "outputs": [{"name": "logits"}]}, 400),  # unknown output
    ({**uint8([1, 1, 1, 3], [0, 0, 0]), "parameters": {"explain": "yes"}}, 400),
])
def test_bad_requests_get_v2_errors(client: TestClient, body: dict, status: int) -> None:  # type: ignore[type-arg]
    r = client.post(INFER, json=body)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and isinstance(r.json()["error"], str) and r.json()["error"]


def test_unknown_model_and_version_are_404(client: TestClient) -> None:
    for path in ("/v2/models/other", "/v2/models/other/ready", f"/v2/models/{MODEL}/versions/9",
                 f"/v2/models/{MODEL}/versions/9/ready"):
        r = client.get(path)
        assert r.status_code == 404 and isinstance(r.json()["error"], str), path
    r = client.post("/v2/models/other/infer", json=uint8([1, 1, 1, 3], [0, 0, 0]))
    assert r.status_code == 404 and "other" in r.json()["error"]
    assert client.post(f"/v2/models/{MODEL}/versions/1/infer", json=uint8([1, 1, 1, 3], [0, 0, 0])).status_code == 200
    assert client.get("/v2/nothing").json() == {"error": "Not Found"}


def test_body_limits_and_broken_binary(client: TestClient) -> None:
    r = client.post(INFER, json=uint8([1, 300, 300, 3], [255] * 270_000))  # ~1 MB of JSON is fine...
    assert r.status_code == 200, r.text
    r = client.post(INFER, json=uint8([1, 600, 600, 3], [255] * 1_080_000))  # ...4 MB is over the 2 MB limit
    assert r.status_code == 413 and isinstance(r.json()["error"], str)
    head = json.dumps({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 9}}]}).encode()
    for extra, length in ((b"\x05\x00\x00\x00abcd", len(head)), (b"", len(head)), (b"x" * 9, len(head) + 100)):
        r = client.post(INFER, content=head + extra, headers={"Inference-Header-Content-Length": str(length)})
        assert r.status_code == 400, (extra, r.text)


def test_explain_outputs(client: TestClient) -> None:
    body = {**uint8([1, 32, 32, 3], pixels("triggered-cat").tolist()), "parameters": {"explain": True}}
    out = outputs(client.post(INFER, json=body).json())
    assert set(out) == {"score", "backdoor", "threshold", "view", "p_value", "incident", "reconstruction", "error_map",
                        "patch_errors"}
    assert out["reconstruction"]["datatype"] == "BYTES" and out["patch_errors"]["shape"] == [1, 64]
    assert sum(out["patch_errors"]["data"]) == pytest.approx(out["score"]["data"][0], rel=1e-4)
    only = client.post(INFER, json={**uint8([1, 32, 32, 3], pixels("triggered-cat").tolist()),
                                    "outputs": [{"name": "error_map"}]}).json()
    assert [o["name"] for o in only["outputs"]] == ["error_map"]  # asking for it by name is enough


def test_an_output_named_twice_is_refused_not_serialised_again(client: TestClient) -> None:
    """A 0.27 MB request that named `reconstruction` thousands of times once drew a 279 MB answer."""
    body = {**uint8([1, 32, 32, 3], pixels("triggered-cat").tolist()),
            "outputs": [{"name": "reconstruction"}] * 1000 + [{"name": "score"}]}
    r = client.post(INFER, json=body)
    assert r.status_code == 400 and "asked for more than once" in r.json()["error"]
    assert len(r.content) < 1000


def test_api_key_and_overload() -> None:
    app = create_app(Settings(bundle=DEMO_BUNDLE, api_key="k3y", max_queue=64, max_batch_size=64))
    body = uint8([1, 1, 1, 3], [0, 0, 0])
    with TestClient(app) as c:
        r = c.post(INFER, json=body)
        assert r.status_code == 401 and isinstance(r.json()["error"], str)
        assert c.post(INFER, json=body, headers={"x-api-key": "k3y"}).status_code == 200
        assert c.get(f"/v2/models/{MODEL}").status_code == 200  # metadata needs no key, like /info
        c.app.state.runner._queued_images = 64  # type: ignore[attr-defined]  # a full queue
        r = c.post(INFER, json=body, headers={"x-api-key": "k3y"})
        assert r.status_code == 503 and r.headers["retry-after"] and isinstance(r.json()["error"], str)
        c.app.state.runner._queued_images = 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("length", ["²", "¹0", "-1", " 5", "1e3", "0x10", ""])
def test_a_header_length_that_is_not_ascii_digits_is_a_v2_400(client: TestClient, length: str) -> None:
    """``"²".isdigit()`` is true and ``int("²")`` raises: that once answered 500."""
    header = {"Inference-Header-Content-Length": length.encode("latin-1")}
    r = client.post(INFER, content=b'{"inputs": []}', headers=header)
    assert r.status_code == 400 and isinstance(r.json()["error"], str)


def test_no_malformed_infer_request_gets_a_5xx(client: TestClient) -> None:
    """Random cuts and byte flips of valid requests, JSON and binary: each answer is a 4xx in the V2 shape."""
    rng = np.random.default_rng(0)
    valid = [json.dumps(uint8([1, 4, 4, 3], [7] * 48)).encode(),
             json.dumps({"inputs": [{"name": "image_bytes", "shape": [1], "datatype": "BYTES",
                                     "data": [base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()]}]}).encode()]
    for i in range(150):
        body = bytearray(valid[i % 2])
        for _ in range(int(rng.integers(1, 4))):
            body[int(rng.integers(0, len(body)))] = int(rng.integers(0, 256))
        body = body[: int(rng.integers(1, len(body) + 1))] if i % 3 == 0 else body
        headers = {"Inference-Header-Content-Length": str(int(rng.integers(0, len(body) + 5)))} if i % 5 == 0 else {}
        r = client.post(INFER, content=bytes(body), headers=headers)
        assert 400 <= r.status_code < 500 and isinstance(r.json()["error"], str), (i, r.status_code, r.text)
