"""``?explain=true``: the reconstruction and the per-patch error map decode as PNGs of the model's input
size, agree with the score and with each other, and a triggered image is rebuilt further from itself than
its clean original (the backdoor's embedding describes another image)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.explain import colormap, denormalize, error_maps
from service.imaging import normalize
from tests.conftest import EXAMPLES
from tests.service.conftest import demo_client


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with demo_client(max_batch_images=4) as c:
        yield c


def png(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "PNG"
    return img


def explain(client: TestClient, name: str) -> dict:  # type: ignore[type-arg]
    r = client.post("/score?explain=true", content=(EXAMPLES / f"{name}.png").read_bytes())
    assert r.status_code == 200, r.text
    return r.json()


def test_pngs_decode_at_the_model_size_and_match_the_score(client: TestClient) -> None:
    body = explain(client, "triggered-cat")
    ex = body["explanation"]
    recon, emap = png(ex["reconstruction_png"]), png(ex["error_map_png"])
    assert recon.size == emap.size == (32, 32) and recon.mode == emap.mode == "RGB"
    assert len(ex["patch_errors"]) == 64 and ex["patch_size"] == 4
    assert sum(ex["patch_errors"]) == pytest.approx(body["score"], rel=1e-4)  # 'paper' score, no kept patches
    assert ex["error_map_max"] == pytest.approx(max(ex["patch_errors"]))
    plain = client.post("/score", content=(EXAMPLES / "triggered-cat.png").read_bytes()).json()
    assert "explanation" not in plain and plain["score"] == pytest.approx(body["score"])


def test_error_map_blocks_follow_the_patch_errors(client: TestClient) -> None:
    """Each 4x4 block of the map has one colour, and brighter blocks are worse-rebuilt patches, in the
    patches' row-major order (a transposed or mis-scaled map fails this)."""
    for name in ("triggered-cat", "clean-ship"):
        ex = explain(client, name)["explanation"]
        rgb = np.asarray(png(ex["error_map_png"])).astype(int)
        blocks = rgb.reshape(8, 4, 8, 4, 3)
        assert (blocks == blocks[:, :1, :, :1]).all()
        brightness = blocks[:, 0, :, 0].sum(-1).reshape(-1)
        errors = np.array(ex["patch_errors"])
        assert int(np.argmax(brightness)) == int(np.argmax(errors))
        assert int(np.argmin(brightness)) == int(np.argmin(errors))
        assert np.corrcoef(brightness, errors)[0, 1] > 0.95


@pytest.mark.parametrize("subject", ["cat", "ship", "airplane"])
def test_triggered_images_are_rebuilt_further_from_themselves(client: TestClient, subject: str) -> None:
    """With the backdoored demo encoder, the reconstruction of a triggered image is further from that image
    than the clean image's reconstruction is from the clean image (measured here: 2-4x in squared error).
    The hottest patch is not where the trigger is: the hijacked embedding spoils the whole reconstruction."""

    def distance(name: str) -> float:
        rebuilt = np.asarray(png(explain(client, name)["explanation"]["reconstruction_png"]), dtype=float)
        original = np.asarray(Image.open(EXAMPLES / f"{name}.png").convert("RGB"), dtype=float)
        return float(((rebuilt - original) ** 2).mean())

    assert distance(f"triggered-{subject}") > 1.5 * distance(f"clean-{subject}")


def test_batch_explain_keeps_order(client: TestClient) -> None:
    files = [(EXAMPLES / f"{n}.png").read_bytes() for n in ("clean-cat", "triggered-cat")]
    uploads = [("files", (f"{i}.png", f, "image/png")) for i, f in enumerate(files)]
    r = client.post("/score/batch?explain=true", files=uploads)
    results = r.json()["results"]
    for res, f in zip(results, files, strict=True):
        single = client.post("/score?explain=true", content=f).json()
        assert res["explanation"]["patch_errors"] == pytest.approx(single["explanation"]["patch_errors"], rel=1e-5)


def test_helpers() -> None:
    ramp = colormap(np.linspace(0, 1, 11))
    assert ramp.dtype == np.uint8 and ramp.shape == (11, 3)
    assert (np.diff(ramp.astype(int).sum(-1)) > 0).all()  # brightness rises with the value
    assert colormap(np.array([np.nan, -1.0, 2.0])).tolist() == [ramp[0].tolist(), ramp[0].tolist(), ramp[-1].tolist()]
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.201)
    assert np.array_equal(denormalize(normalize(images, mean, std), mean, std), images)  # exact inverse
    maps, top = error_maps(np.array([[0.0, 1.0, 2.0, 4.0]]), patch_size=3)
    assert maps.shape == (1, 6, 6, 3) and top.tolist() == [4.0]
    assert maps[0, 3, 3].tolist() == ramp[-1].tolist() and maps[0, 0, 0].tolist() == ramp[0].tolist()
