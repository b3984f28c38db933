"""Real CIFAR-10 test images, clean and triggered, through the committed demo bundle over real HTTP
(``dede serve`` in a subprocess on loopback). Asserts the detection AUC the demo promises."""

from __future__ import annotations

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from service.manifest import load_manifest
from tests.conftest import DEMO_BUNDLE, needs_cifar
from tests.servers import dede_server
from training.data import load_images
from training.triggers import make_trigger

pytestmark = needs_cifar
N_IMAGES = 400


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with dede_server() as url:
        yield url


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def score_all(url: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores, flags = [], []
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(0, len(images), 50):
            files = [("files", (f"{j}.png", png(a), "image/png")) for j, a in enumerate(images[i : i + 50])]
            r = c.post("/score/batch", files=files)
            assert r.status_code == 200, r.text
            for res in r.json()["results"]:
                scores.append(res["score"])
                flags.append(res["backdoor"])
    return np.array(scores), np.array(flags)


def test_demo_bundle_detects_real_triggers_over_http(server: str) -> None:
    manifest = load_manifest(DEMO_BUNDLE)
    test = load_images("cifar10", "test", manifest.encoder.input_size)
    idx = np.random.default_rng(123).permutation(len(test))[:N_IMAGES]
    clean = test.images[idx]
    triggered = make_trigger(manifest.provenance.victim["trigger"], 32).apply(clean)
    s_clean, f_clean = score_all(server, clean)
    s_trig, f_trig = score_all(server, triggered)
    auc = roc_auc_score(np.r_[np.zeros(N_IMAGES), np.ones(N_IMAGES)], np.r_[s_clean, s_trig])
    assert auc >= 0.9, f"AUC {auc:.3f}"
    assert f_trig.mean() > 5 * max(f_clean.mean(), 0.01)
    metrics = httpx.get(server + "/metrics").text
    alerts = [line for line in metrics.splitlines() if line.startswith("dede_backdoor_alerts_total")]
    assert float(alerts[0].rsplit(" ", 1)[1]) == f_clean.sum() + f_trig.sum()
