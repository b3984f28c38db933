"""The peak-memory estimate of ``dede train`` (training.memory): it grows with what drives it, it refuses what does
not fit with the setting to change, and it is close to the peak RSS of a real run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.own_encoder import MEASURE
from tests.conftest import ROOT
from tests.training.test_user_encoders import TINY, TinyConv, needs_imagenette, photo_folder, save_onnx  # noqa: F401
from training.config import TrainConfig
from training.dede import DeDeConfig
from training.memory import GIB, check_fits, train_memory


def estimate(patch: int, batch: int, size: int = 224, device: str = "cpu") -> int:
    cfg = TrainConfig(patch_size=patch, batch_size=batch, width=64, depth=1, heads=2, dec_width=64, dec_depth=1,
                      dec_heads=2)
    return train_memory(cfg, DeDeConfig(size, patch, 16, 64, 1, 2, 64, 1, 2), 1000, device).total


def test_the_estimate_grows_with_batch_and_tokens_and_counts_images_on_a_gpu() -> None:
    assert estimate(16, 256) > estimate(16, 64) > estimate(16, 8)
    assert estimate(4, 64) > 20 * estimate(16, 64) - 20 * 2**30  # 3,136 patches: attention grows as T^2
    assert estimate(16, 64, device="cuda") > estimate(16, 64)  # the images and embeddings are held on the device


def test_a_config_that_does_not_fit_is_refused_with_a_batch_size_that_would(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(patch_size=8, batch_size=512, width=64, depth=1, heads=2, dec_width=64, dec_depth=1, dec_heads=2)
    est = train_memory(cfg, DeDeConfig(224, 8, 16, 64, 1, 2, 64, 1, 2), 1000, "cpu")
    monkeypatch.setattr("training.memory.available_memory", lambda device: est.total // 3)
    with pytest.raises(MemoryError, match=r"needs about .* GiB .* try --set batch_size=\d+"):
        check_fits(est, "cpu", cfg)
    monkeypatch.setattr("training.memory.available_memory", lambda device: est.total * 2)
    check_fits(est, "cpu", cfg)


@needs_imagenette
def test_the_estimate_is_near_the_peak_rss_of_a_real_run(tmp_path: Path, photo_folder: Path) -> None:  # noqa: F811
    """A run whose activations dominate (784 patches, batch 48): the estimate is within [0.8, 1.5] x the peak."""
    enc = save_onnx(TinyConv(), tmp_path / "enc.onnx")
    sets = ["--set", "patch_size=8", "--set", "batch_size=48", "--set", "epochs=1"]
    proc = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "training.cli", "train", "--encoder",
                           str(enc), "--aux", str(photo_folder), *TINY, *sets, "--out", str(tmp_path / "run")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(next(x for x in proc.stderr.splitlines() if x.startswith("PEAK_KIB")).split()[1]) * 1024
    line = next(x for x in proc.stdout.splitlines() if "estimated peak memory" in x)
    said = float(line.split("estimated peak memory ")[1].split(" GiB")[0]) * GIB
    print(f"estimate {said / GIB:.2f} GiB, peak RSS {peak / GIB:.2f} GiB")
    assert 0.8 * peak <= said <= 1.5 * peak, (said / GIB, peak / GIB)
