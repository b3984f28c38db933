from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from training.encoders import (
    CifarResNet18,
    EncoderSpec,
    create_encoder,
    embed,
    load_encoder,
    save_encoder,
)
from training.export import export_encoder
from training.user_encoders import open_encoder


def test_cifar_resnet18_shape_and_width() -> None:
    m = create_encoder("cifar_resnet18", width=4).eval()
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 32)
    assert isinstance(m, CifarResNet18) and m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    full = create_encoder("cifar_resnet18")
    assert full.embed_dim == 512
    assert 11.0e6 < sum(p.numel() for p in full.parameters()) < 11.3e6


def test_unknown_encoder_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="cifar_resnet18.*onnx.*timm:"):
        create_encoder("resnet9000")


def test_save_load_round_trip(tmp_path: Path, example_images: np.ndarray) -> None:
    m = create_encoder("cifar_resnet18", width=4).eval()
    save_encoder(m, EncoderSpec("cifar_resnet18", {"width": 4}), tmp_path)
    m2, spec = load_encoder(tmp_path)
    assert spec.embed_dim == 32
    assert torch.allclose(embed(m, example_images, spec), embed(m2, example_images, spec))


def test_timm_encoder_from_safetensors(tmp_path: Path) -> None:
    ref = create_encoder("timm:resnet10t").eval()
    assert isinstance(ref.model, torch.nn.Module)
    weights = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.model.state_dict().items()}, weights)
    m = create_encoder("timm:resnet10t", weights=str(weights)).eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(ref(x), m(x))
    assert m(x).shape == (1, m.embed_dim)
    save_file({"bogus": torch.zeros(1)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="missing"):
        create_encoder("timm:resnet10t", weights=str(tmp_path / "bad.safetensors"))


def test_onnx_encoder_matches_torch(tmp_path: Path, example_images: np.ndarray) -> None:
    m = create_encoder("cifar_resnet18", width=4).eval()
    spec = EncoderSpec("cifar_resnet18", {"width": 4}, embed_dim=32)
    export_encoder(m, spec, tmp_path / "enc.onnx")
    onnx_model, onnx_spec = open_encoder(tmp_path / "enc.onnx")
    assert onnx_spec.name == "onnx" and onnx_spec.embed_dim == 32
    a, b = embed(m, example_images, spec), embed(onnx_model, example_images, onnx_spec)
    assert torch.allclose(a, b, atol=1e-4)
    sess = ort.InferenceSession(str(tmp_path / "enc.onnx"))
    assert sess.get_inputs()[0].shape[0] == "batch"
    with pytest.raises(FileNotFoundError):
        create_encoder("onnx", path=str(tmp_path / "missing.onnx"))
