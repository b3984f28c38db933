"""Shared fixtures. Tests that need the real datasets skip with a reason when they are absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEMO_BUNDLE = ROOT / "models" / "demo-cifar10-badencoder"
CONTROL_BUNDLE = ROOT / "models" / "demo-cifar10-clean"
EXAMPLES = ROOT / "examples"


def data_root() -> Path:
    return Path(os.environ.get("DEDE_DATA_ROOT", ROOT.parent / "shared" / "data"))


needs_cifar = pytest.mark.skipif(
    not (data_root() / "cifar10.zip").exists(),
    reason=f"CIFAR-10 not found at {data_root() / 'cifar10.zip'} (set DEDE_DATA_ROOT)",
)


@pytest.fixture(scope="session")
def example_images() -> np.ndarray:
    """The committed example images (real CIFAR-10 test images, clean and triggered): uint8 (6, 32, 32, 3)."""
    files = sorted(EXAMPLES.glob("*.png"))
    assert files, "examples/ is empty: run `make examples`"
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("DEDE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
