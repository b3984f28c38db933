"""Victim encoders: images -> embeddings, without any classification or projection head.

Registry (timm's ``create_model`` pattern)::

    create_encoder("cifar_resnet18", width=16)            # the paper's SimCLR ResNet-18 (CIFAR stem)
    create_encoder("clip_image", width=16, embed_dim=128)  # MiniCLIP's image tower, once registered (below)
    create_encoder("timm:resnet50", weights="w.safetensors")  # any timm architecture, user weights
    create_encoder("onnx", path="encoder.onnx")            # an encoder given as an ONNX file (frozen)

Every encoder maps a normalised image ``x: [B, 3, H, W]`` to ``e: [B, E]``. Weights are read from
safetensors or ONNX only (never pickle).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def attr_int(obj: object, name: str) -> int:
    value = getattr(obj, name, None)
    if not isinstance(value, int):
        raise TypeError(f"{type(obj).__name__}.{name} should be an int, got {value!r}")
    return value


def embed_dim_of(model: nn.Module) -> int:
    """The embedding size E of an encoder built by ``create_encoder``."""
    return attr_int(model, "embed_dim")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (3x3 conv, stride 1, no max-pool); features after global pooling.

    ``width`` is the first stage's channel count (64 in the paper); the embedding has ``8 * width`` dims."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.width = width
        self.embed_dim = 8 * width
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, in_planes = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            planes = width * 2**i
            stages.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # (B, w, H, W)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # (B, 8w, H/8, W/8)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (B, 8w)


class TimmEncoder(nn.Module):
    """Any timm architecture as a feature extractor (``num_classes=0``): pooled features, no head."""

    def __init__(self, arch: str, weights: str | None = None) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model(arch, pretrained=False, num_classes=0)
        if weights:
            state = load_file(weights)
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if missing:
                raise ValueError(f"{weights}: weights are missing {len(missing)} tensors, e.g. {missing[:3]}")
        self.embed_dim = attr_int(self.model, "num_features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class OnnxEncoder(nn.Module):
    """A frozen encoder given as an ONNX file. Runs through ONNX Runtime; not differentiable."""

    def __init__(self, path: str) -> None:
        super().__init__()
        import onnxruntime as ort

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX encoder {path} does not exist")
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        shape = self.session.get_outputs()[0].shape
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise ValueError(f"{path}: the encoder's output must be [batch, embed_dim], got {shape}")
        self.embed_dim = shape[1]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})
        return torch.from_numpy(out)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {"cifar_resnet18": CifarResNet18, "onnx": OnnxEncoder}


def register_encoder(name: str, builder: Callable[..., nn.Module]) -> None:
    """Make ``create_encoder(name, **kwargs)`` (and so ``load_encoder`` of a directory whose ``encoder.json`` names
    it) build ``builder(**kwargs)``. Architectures outside the core register themselves when their module is
    imported: ``training.pretrain.clip_model`` registers the mini-CLIP's image tower as ``clip_image``."""
    if name in _REGISTRY and _REGISTRY[name] is not builder:
        raise ValueError(f"encoder {name!r} is registered already")
    _REGISTRY[name] = builder


def list_encoders() -> list[str]:
    return sorted(_REGISTRY) + ["timm:<architecture>"]


def create_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Build an encoder by registry name; raises ``ValueError`` listing valid names."""
    if name.startswith("timm:"):
        return TimmEncoder(name.removeprefix("timm:"), **kwargs)
    if name not in _REGISTRY:
        raise ValueError(f"unknown encoder {name!r}; valid names: {', '.join(list_encoders())} (an architecture "
                         "outside the core registers when its module is imported, see register_encoder)")
    return _REGISTRY[name](**kwargs)


@dataclass
class EncoderSpec:
    """What is needed to rebuild an encoder and feed it: saved as ``encoder.json`` next to the weights."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: int = 32
    mean: tuple[float, float, float] = CIFAR_MEAN
    std: tuple[float, float, float] = CIFAR_STD
    embed_dim: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # pretrain/attack provenance


def save_encoder(model: nn.Module, spec: EncoderSpec, directory: str | Path) -> Path:
    """Write ``encoder.safetensors`` + ``encoder.json`` into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec.embed_dim = embed_dim_of(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / "encoder.safetensors")
    (directory / "encoder.json").write_text(json.dumps(asdict(spec), indent=2))
    return directory


def load_encoder(directory: str | Path) -> tuple[nn.Module, EncoderSpec]:
    """Inverse of ``save_encoder``; also accepts a ``.onnx`` file (with CIFAR normalisation unless an
    ``encoder.json`` sits next to it). The model is returned in eval mode."""
    path = Path(directory)
    if path.suffix == ".onnx":
        spec_file = path.with_name("encoder.json")
        spec = EncoderSpec(**json.loads(spec_file.read_text())) if spec_file.exists() else EncoderSpec("onnx")
        spec.name, spec.kwargs = "onnx", {"path": str(path)}
        model = create_encoder("onnx", path=str(path))
        spec.embed_dim = embed_dim_of(model)
        return model.eval(), spec
    spec_file = path / "encoder.json"
    if not spec_file.exists():
        raise FileNotFoundError(f"{path} is not an encoder directory (no encoder.json)")
    raw = json.loads(spec_file.read_text())
    raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
    spec = EncoderSpec(**raw)
    model = create_encoder(spec.name, **spec.kwargs)
    if spec.name != "onnx":
        model.load_state_dict(load_file(path / "encoder.safetensors"))
    return model.eval(), spec


def to_input(images: torch.Tensor, spec: EncoderSpec) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised float (B, 3, H, W) on the same device.

    The result is made contiguous: with torch 2.14 on CPU, oneDNN's conv backward on a channels-last-strided
    input corrupted the heap (``free(): invalid next size``) in BadEncoder training."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0).contiguous()
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def embed(model: nn.Module, images: np.ndarray, spec: EncoderSpec, batch_size: int = 512,
          device: str = "cpu") -> torch.Tensor:
    """Embeddings of uint8 (N, H, W, 3) images -> float32 (N, E) on the CPU. Model in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_input(torch.from_numpy(images[i : i + batch_size]).to(device), spec)
        out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, spec.embed_dim)
