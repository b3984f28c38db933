"""Detection bypass through what the image is: the EXIF orientation tag and transparency.

The triggered cat stored rotated with an orientation tag (a browser or Hugging Face ``load_image`` shows it upright,
trigger and all), or with its trigger square made transparent (torchvision's default loader drops the alpha and
shows the trigger), scores under the threshold when the service decodes it one way only. By default every view a
common loader could produce is scored, and the upload is flagged when any view alerts."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps

from benchmarks.red_team import encode, example
from benchmarks.red_team import rotated_trigger_png as rotated_with_tag
from benchmarks.red_team import transparent_trigger_png as transparent_trigger
from service.client import DedeClient
from service.guard import Guard, as_seen
from tests.service.conftest import demo_client


def png(img: Image.Image) -> bytes:
    return encode(img)


rgb = example


def test_the_two_edits_show_the_trigger_to_common_loaders() -> None:
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(rotated_with_tag())))
    assert np.array_equal(np.asarray(upright.convert("RGB")), np.asarray(rgb("triggered-cat")))
    dropped = Image.open(io.BytesIO(transparent_trigger())).convert("RGB")  # torchvision's default loader
    assert np.array_equal(np.asarray(dropped), np.asarray(rgb("triggered-cat")))


@pytest.mark.parametrize(("make", "view"), [(rotated_with_tag, "exif=applied"),
                                            (transparent_trigger, "alpha=")])
def test_one_view_misses_the_edit_every_view_catches_it(make: Any, view: str) -> None:
    data = make()
    with demo_client(exif="ignore", alpha="black") as one_view:
        assert one_view.post("/score", content=data).json()["backdoor"] is False  # the bypass, as it was
    with demo_client() as every_view:
        r = every_view.post("/score", content=data).json()
        assert r["backdoor"] is True and r["view"].startswith(view) and r["score"] > r["threshold"]
        v2 = every_view.post("/v2/models/demo-cifar10-badencoder/infer", json={"inputs": [{
            "name": "image_bytes", "datatype": "BYTES", "shape": [1],
            "data": [base64.b64encode(data).decode()]}]}).json()
        out = {o["name"]: o["data"] for o in v2["outputs"]}
        assert out["backdoor"] == [True] and out["view"][0].startswith(view)


def test_the_downstream_convention_alone_is_scored_when_named() -> None:
    data = rotated_with_tag()
    with demo_client(exif="apply") as c:
        assert c.post("/score", content=data).json()["view"] == "exif=applied"
    with demo_client(exif="ignore", alpha="drop") as c:
        r = c.post("/score", content=transparent_trigger()).json()
        assert r["view"] == "alpha=dropped" and r["backdoor"] is True


def test_plain_images_have_one_view_and_score_as_before() -> None:
    with demo_client() as c, demo_client(exif="ignore", alpha="black") as one:
        for name in ("clean-cat", "triggered-cat"):
            a = c.post("/score", content=png(rgb(name))).json()
            b = one.post("/score", content=png(rgb(name))).json()
            assert a["view"] == "stored" and a["score"] == b["score"]


@pytest.mark.parametrize(("exif", "alpha", "make"), [(True, "drop", rotated_with_tag),
                                                     (False, "drop", transparent_trigger)])
def test_guard_classifies_exactly_the_pixels_it_scored(exif: bool, alpha: str, make: Any) -> None:
    seen: list[np.ndarray] = []

    def classifier(images: list[np.ndarray]) -> list[int]:
        seen.extend(images)
        return [0] * len(images)

    with demo_client() as app:
        out = Guard(DedeClient("http://testserver", http=app), classifier, on_alert="flag", exif=exif,
                    alpha=alpha)([make()])
    assert out.flags == [True]  # the pixels the classifier gets carry the trigger, and they were scored
    assert np.array_equal(seen[0], np.asarray(rgb("triggered-cat")))
    assert np.array_equal(seen[0], as_seen(make(), exif, alpha))
