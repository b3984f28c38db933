"""Guard a torchvision-style CIFAR-10 classifier with DeDe: every image is scored before the classifier
sees it; images with a p-value of at most 0.01 are dropped (alerts and incidents are the service's).

    python examples/guard_cifar10.py --url http://127.0.0.1:8000          # against a running service
    python examples/guard_cifar10.py --in-process                          # the app in this process

The classifier is the demo bundle's (backdoored) encoder with a linear head fitted on clean CIFAR-10 train
images: exactly what a downstream user of a third-party encoder builds. It prints clean accuracy and the
attack success rate (triggered non-truck images classified as truck) without and with the guard.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.client import DedeClient  # noqa: E402
from service.guard import Guard  # noqa: E402
from service.imaging import normalize  # noqa: E402
from service.manifest import load_manifest  # noqa: E402
from training.data import load_images  # noqa: E402
from training.triggers import make_trigger  # noqa: E402


class EncoderClassifier(nn.Module):
    """transform + model, torchvision style: uint8 images -> logits (B, 10)."""

    def __init__(self, bundle: Path, n_classes: int = 10) -> None:
        super().__init__()
        self.manifest = load_manifest(bundle)
        self.encoder = ort.InferenceSession(str(bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
        self.head = nn.Linear(self.manifest.encoder.embed_dim, n_classes)

    def features(self, images: np.ndarray) -> torch.Tensor:
        enc = self.manifest.encoder
        x = normalize(images, enc.mean, enc.std)
        (e,) = self.encoder.run(None, {self.encoder.get_inputs()[0].name: x})
        return nn.functional.normalize(torch.from_numpy(e), dim=1)

    def forward(self, images: np.ndarray) -> torch.Tensor:
        return self.head(self.features(images))

    def fit(self, images: np.ndarray, labels: np.ndarray, steps: int = 300) -> None:
        feats, y = self.features(images), torch.from_numpy(labels)
        opt = torch.optim.Adam(self.head.parameters(), lr=0.05)
        for _ in range(steps):
            loss = nn.functional.cross_entropy(self.head(feats), y)
            opt.zero_grad()
            loss.backward()
            opt.step()


def run(client: DedeClient, bundle: Path, n: int = 500, n_train: int = 5000) -> dict[str, float]:
    torch.manual_seed(0)
    train, test = load_images("cifar10", "train", 32), load_images("cifar10", "test", 32)
    clf = EncoderClassifier(bundle)
    sel = np.random.default_rng(1).permutation(len(train))[:n_train]  # the zip lists images class by class
    clf.fit(train.images[sel], train.labels[sel])
    target = test.classes.index("truck")
    idx = np.random.default_rng(0).permutation(len(test))[:n]
    clean, labels = test.images[idx], test.labels[idx]
    triggered = make_trigger("badencoder", 32).apply(clean[labels != target])

    def classify(images: list[np.ndarray]) -> list[int]:
        with torch.no_grad():
            return clf(np.stack(images)).argmax(1).tolist() if images else []

    # the policy: DROP an input at p <= 0.01 (1% of clean inputs is a price a classifier can pay), while the
    # service's own alert (p <= 0.001) opens a ticket and its incident level (p <= 1/2000 here) pages
    # (docs/OPERATIONS.md); dropping is not paging
    guard = Guard(client, classify, on_alert="drop", p_cutoff=0.01)
    plain_clean, plain_trig = classify(list(clean)), classify(list(triggered))
    g_clean = [p for i in range(0, n, 50) for p in guard(list(clean[i : i + 50])).predictions]
    g_trig = [p for i in range(0, len(triggered), 50) for p in guard(list(triggered[i : i + 50])).predictions]
    res = {
        "clean_accuracy": float(np.mean(np.array(plain_clean) == labels)),
        "attack_success_rate": float(np.mean(np.array(plain_trig) == target)),
        # with the guard a dropped clean image counts as an error, a dropped triggered image as defended
        "guarded_clean_accuracy": float(np.mean([p == y for p, y in zip(g_clean, labels, strict=True)])),
        "guarded_attack_success_rate": float(np.mean([p == target for p in g_trig])),
        "clean_dropped": float(np.mean([p is None for p in g_clean])),
        "triggered_dropped": float(np.mean([p is None for p in g_trig])),
    }
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--in-process", action="store_true", help="run the service app in this process")
    p.add_argument("--bundle", default=str(ROOT / "models" / "demo-cifar10-badencoder"))
    p.add_argument("--images", type=int, default=500)
    a = p.parse_args()
    bundle = Path(a.bundle)
    if a.in_process:
        from fastapi.testclient import TestClient

        from service.app import create_app
        from service.settings import Settings

        with TestClient(create_app(Settings(bundle=bundle))) as http:
            res = run(DedeClient("http://testserver", http=http), bundle, a.images)
    else:
        with DedeClient(a.url) as client:
            res = run(client, bundle, a.images)
    for k, v in res.items():
        print(f"{k:>30}: {v:.3f}")


if __name__ == "__main__":
    main()
