"""ONNX parity of the detector graph (no dataset needed) for K = 0 and K > 0 kept patches."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.training.test_dede import normalised, tiny
from training.dede import DetectorGraph, kept_count
from training.export import export_detector


@pytest.mark.parametrize("ratio", [0.99, 0.9])
def test_detector_onnx_matches_pytorch(tmp_path: Path, example_images: np.ndarray, ratio: float) -> None:
    model = tiny().eval()
    keep = kept_count(64, ratio)
    path = tmp_path / "detector.onnx"
    export_detector(model, keep, path)
    onnx.checker.check_model(str(path))
    x = normalised(example_images)
    e = torch.randn(len(x), 16)
    ids = model.random_masking(len(x), ratio)
    with torch.no_grad():
        ref = [t.numpy() for t in DetectorGraph(model)(x, e, ids)]
    sess = ort.InferenceSession(str(path))
    out = sess.run(None, {"image": x.numpy(), "embedding": e.numpy(), "keep": ids.numpy()})
    for a, b in zip(out, ref, strict=True):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
    # dynamic batch axis: one image works too
    one = sess.run(None, {"image": x[:1].numpy(), "embedding": e[:1].numpy(), "keep": ids[:1].numpy()})
    np.testing.assert_allclose(one[0], ref[0][:1], rtol=1e-4)
