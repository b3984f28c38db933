"""The ONNX Runtime scoring path: IO binding equals the plain path; masks are seeded by image content."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.manifest import Manifest, sha256_file
from service.scores import compute_score
from service.scoring import Scorer
from tests.conftest import CONTROL_BUNDLE


@pytest.fixture(scope="module")
def kept_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small bundle whose test mask keeps 16 of 64 patches (random init weights, real file format)."""
    import torch

    from training.dede import DeDe, DeDeConfig
    from training.encoders import EncoderSpec, create_encoder
    from training.export import export_detector, export_encoder

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("kept")
    enc = create_encoder("cifar_resnet18", width=4).eval()
    export_encoder(enc, EncoderSpec("cifar_resnet18", {"width": 4}, embed_dim=32), out / "encoder.onnx")
    model = DeDe(DeDeConfig(32, 4, 32, 32, 1, 2, 32, 1, 2)).eval()
    export_detector(model, 16, out / "detector.onnx")
    stats = {"count": 10, "mean": 1.0, "std": 1.0, "quantiles": {"0.99": 2.0}}
    manifest = Manifest(
        name="kept", version="1",
        encoder={"sha256": sha256_file(out / "encoder.onnx"), "input_size": 32, "mean": (0.5, 0.5, 0.5),
                 "std": (0.25, 0.25, 0.25), "embed_dim": 32, "architecture": "cifar_resnet18(width=4)"},
        detector={"sha256": sha256_file(out / "detector.onnx"), "patch_size": 4, "num_patches": 64,
                  "train_mask_ratio": 0.68, "test_mask_ratio": 0.75, "kept_patches": 16, "width": 32, "depth": 1,
                  "dec_width": 32, "dec_depth": 1},
        threshold={"value": 1.0, "rule": "fpr@0.01", "mask_ratio": 0.75, "aux_train": stats, "holdout": stats},
        provenance={"aux_dataset": "none", "aux_fingerprint": "0", "aux_images": 0, "epochs": 0, "final_loss": 0.0,
                    "preset": "test", "code_version": "test", "created": "now"},
    )
    (out / "manifest.json").write_text(json.dumps(manifest.model_dump(mode="json")))
    return out


@pytest.mark.parametrize("which", ["control", "kept"])
def test_io_binding_path_equals_plain_path(which: str, kept_bundle: Path, example_images: np.ndarray) -> None:
    scorer = Scorer.from_bundle(CONTROL_BUNDLE if which == "control" else kept_bundle)
    fast = scorer.score(example_images).scores
    plain = compute_score(scorer.run(example_images)["patch_error"], scorer.manifest.detector.score)
    np.testing.assert_allclose(fast, plain, rtol=1e-6)


def test_masks_are_seeded_by_image_content(kept_bundle: Path, example_images: np.ndarray) -> None:
    scorer = Scorer.from_bundle(kept_bundle)
    ids = scorer.keep_ids(example_images)
    assert ids.shape == (len(example_images), 16)
    assert all(len(set(row)) == 16 and max(row) < 64 for row in ids.tolist())
    assert np.array_equal(ids, scorer.keep_ids(example_images))  # same image, same mask
    assert not np.array_equal(ids[0], ids[1])  # another image, another mask
    # the score of an image does not depend on the batch it arrives in
    alone = scorer.score(example_images[2:3]).scores[0]
    assert scorer.score(example_images).scores[2] == pytest.approx(alone, rel=1e-5)


def test_preprocess_rejects_wrong_shapes(kept_bundle: Path) -> None:
    scorer = Scorer.from_bundle(kept_bundle)
    with pytest.raises(ValueError, match="expected uint8 images"):
        scorer.preprocess(np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="expected uint8 images"):
        scorer.preprocess(np.zeros((1, 32, 32, 3), np.float32))


def test_mask_draws_average_and_reduce_variance(kept_bundle: Path, example_images: np.ndarray) -> None:
    one = Scorer.from_bundle(kept_bundle)
    many = Scorer.from_bundle(kept_bundle, mask_draws=8)
    s8 = many.score(example_images).scores
    x = one.preprocess(example_images)
    x_dev, e_dev = one.embed_on_device(x)
    assert one.manifest.detector.score == "paper"
    manual = np.mean([one._patch_errors(x_dev, e_dev, one.keep_ids(example_images, d)).sum(1) for d in range(8)],
                     axis=0)  # the paper score of each draw, averaged
    np.testing.assert_allclose(s8, manual, rtol=1e-5)
    assert np.array_equal(many.score(example_images).scores, s8)  # still deterministic
    with pytest.raises(ValueError):
        Scorer.from_bundle(kept_bundle, mask_draws=0)


def test_the_provider_in_use_decides_gpu_or_cpu(kept_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ORT falls back to the CPU silently; TensorRT (which falls back to CUDA itself) runs on the GPU too, so
    DEDE_REQUIRE_GPU must accept it and IO binding must keep its tensors in CUDA memory."""
    scorer = Scorer.from_bundle(kept_bundle, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    import onnxruntime as ort

    assert scorer.on_gpu == ("CUDAExecutionProvider" in ort.get_available_providers())
    for provider, gpu in (("TensorrtExecutionProvider", True), ("CUDAExecutionProvider", True),
                          ("CPUExecutionProvider", False)):
        monkeypatch.setattr(scorer.detector, "get_providers", lambda p=provider: [p, "CPUExecutionProvider"])
        assert scorer.provider == provider and scorer.on_gpu is gpu


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_cuda_libraries_are_preloaded_once_and_only_for_a_gpu_provider(
        kept_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu finds CUDA/cuDNN from the nvidia-* wheels only through ``preload_dlls``; a CPU-only
    request must not touch them, and a failing preload leaves the CPU fallback (reported) instead of a crash."""
    import onnxruntime as ort

    import service.scoring as scoring

    calls: list[int] = []
    monkeypatch.setattr(scoring, "_gpu_libraries_preloaded", False)
    monkeypatch.setattr(ort, "preload_dlls", lambda: calls.append(1), raising=False)
    Scorer.from_bundle(kept_bundle, ("CPUExecutionProvider",))
    assert calls == []
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    Scorer.from_bundle(kept_bundle, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    Scorer.from_bundle(kept_bundle, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert calls == [1]

    def broken() -> None:
        raise OSError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(scoring, "_gpu_libraries_preloaded", False)
    monkeypatch.setattr(ort, "preload_dlls", broken)
    scorer = Scorer.from_bundle(kept_bundle, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert scorer.provider in real and not scorer.on_gpu



@pytest.mark.parametrize("which", ["control", "kept"])
def test_a_fixed_batch_gives_the_same_scores_and_one_shape(
        which: str, kept_bundle: Path, example_images: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU path runs every model call at one batch size (padded, or in chunks); the padding rows must not
    change or leak into the results, also with kept patches (the mask is seeded per image)."""
    bundle = CONTROL_BUNDLE if which == "control" else kept_bundle
    plain = Scorer.from_bundle(bundle, ("CPUExecutionProvider",))
    fixed = Scorer.from_bundle(bundle, ("CPUExecutionProvider",), fixed_batch=4)
    assert plain.fixed_batch == 0  # off unless asked for (the service asks on the GPU only)
    images = np.resize(example_images, (9, *example_images.shape[1:]))  # 9 images -> chunks of 4, 4, 1 (+3 pad)
    seen: list[int] = []
    real_detect = Scorer._patch_errors
    monkeypatch.setattr(Scorer, "_patch_errors",
                        lambda self, x_dev, e, keep: (seen.append(len(keep)), real_detect(self, x_dev, e, keep))[1])
    for n in (1, 3, 4, 9):
        want, got = plain.score(images[:n]), fixed.score(images[:n])
        assert got.scores.shape == got.flags.shape == (n,)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5)
        np.testing.assert_array_equal(got.flags, want.flags)
        assert set(got.seconds) == {"encoder", "detector"}
    assert seen == [1, 4, 3, 4, 4, 4, 9, 4, 4, 4]  # plain: the request's size; fixed: always 4
    for n in (3, 9):  # the explanation path (Scorer.run) runs the same fixed chunks
        want_run, got_run = plain.run(images[:n]), fixed.run(images[:n])
        assert set(got_run) == set(want_run)
        for key in ("x", "embedding", "patch_error", "reconstruction"):
            assert got_run[key].shape == want_run[key].shape and got_run[key].shape[0] == n
            np.testing.assert_allclose(got_run[key], want_run[key], rtol=1e-4, atol=1e-4)
        assert got_run["encoder_s"].ndim == 0 and float(got_run["detector_s"]) > 0
    seen.clear()
    assert fixed.warm_up() == fixed.warmed_up == [4] and seen == [4]
    assert plain.warm_up() == [1]
    with pytest.raises(ValueError, match="fixed_batch"):
        Scorer.from_bundle(bundle, ("CPUExecutionProvider",), fixed_batch=-1)
