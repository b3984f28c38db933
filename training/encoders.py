"""Victim encoders: images -> embeddings, without any classification or projection head.

Registry (timm's ``create_model`` pattern)::

    create_encoder("cifar_resnet18", width=16)            # the paper's SimCLR ResNet-18 (CIFAR stem)
    create_encoder("clip_image", width=16, embed_dim=128)  # MiniCLIP's image tower, once registered (below)
    create_encoder("timm:resnet50", weights="w.safetensors")  # any timm architecture, user weights
    create_encoder("onnx", path="encoder.onnx")            # an encoder given as an ONNX file (frozen)
    create_encoder("hf", path="clip-dir")                  # a Hugging Face CLIP/SigLIP vision tower (save_pretrained)
    create_encoder("open_clip", arch="ViT-B-32", weights="clip.safetensors")  # an open_clip image tower

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
from tqdm import tqdm

from training.vision_towers import HFVisionTower, OpenClipTower
from training.weights import load_weights
from training.weights import strip_prefixes as strip_prefixes  # re-exported: it lived here before

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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

        try:
            self.model = timm.create_model(arch, pretrained=False, num_classes=0)
        except RuntimeError as exc:  # timm: "Unknown model (...)"
            raise ValueError(f"timm:{arch}: {exc}") from exc
        if weights:
            head = getattr(self.model, "pretrained_cfg", {}).get("classifier")
            dropped = load_weights(self.model, weights, head if isinstance(head, str) else None)
            if dropped:
                print(f"timm:{arch}: dropped the classifier head's tensors {', '.join(dropped)}")
        self.embed_dim = attr_int(self.model, "num_features")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def timm_data_config(model: nn.Module) -> tuple[int, tuple[float, float, float], tuple[float, float, float]]:
    """(input side, mean, std) of a ``TimmEncoder`` from timm's data config of the architecture (the size timm's
    own transforms resize to by default)."""
    import timm.data

    cfg = timm.data.resolve_model_data_config(getattr(model, "model", model))
    _, h, w = cfg["input_size"]
    if h != w:
        raise ValueError(f"the model's input is {h}x{w}; DeDe needs a square input (pass --input-size)")
    return int(h), tuple(cfg["mean"]), tuple(cfg["std"])  # type: ignore[return-value]


@dataclass(frozen=True)
class OnnxInfo:
    """What an ONNX encoder's graph says about its input and output."""

    input: str
    layout: str  # "NCHW" or "NHWC"
    size: int | None  # the square side, None when height/width are dynamic
    output: str  # the embedding
    outputs: tuple[str, ...]


def _dims(value_info: Any) -> list[int | str | None]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value_info.type.tensor_type.shape.dim]


def inspect_onnx(path: str | Path, output: str | None = None) -> OnnxInfo:
    """Read an ONNX encoder's input (layout, size, dynamic axes) and pick its embedding output: the single output,
    or ``output``. Raises ``ValueError`` when the model is ambiguous or is not an image encoder."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # onnx raises DecodeError and friends for a corrupt file
        raise ValueError(f"{path} is not a readable ONNX model ({exc})") from exc
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ValueError(f"{path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an encoder takes one "
                         "image batch")
    dims = _dims(inputs[0])
    if len(dims) != 4 or 3 not in (dims[1], dims[3]):
        raise ValueError(f"{path}: input {inputs[0].name} has shape {dims}; expected [batch, 3, H, W] or "
                         "[batch, H, W, 3]")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ValueError(f"{path}: input {inputs[0].name} is not float32; export the model with a float input")
    layout = "NCHW" if dims[1] == 3 else "NHWC"
    h, w = (dims[2], dims[3]) if layout == "NCHW" else (dims[1], dims[2])
    if isinstance(h, int) and isinstance(w, int) and h != w:
        raise ValueError(f"{path}: the input is {h}x{w}; DeDe needs a square input")
    size = h if isinstance(h, int) and h == w else None
    names = tuple(o.name for o in graph.output)
    if output is None and len(names) != 1:
        raise ValueError(f"{path} has {len(names)} outputs ({', '.join(names)}): pass --output NAME to say which is "
                         "the embedding")
    chosen = output or names[0]
    if chosen not in names:
        raise ValueError(f"{path} has no output {chosen!r}; its outputs: {', '.join(names)}")
    out_dims = _dims(next(o for o in graph.output if o.name == chosen))
    if len(out_dims) != 2:
        raise ValueError(f"{path}: output {chosen} has shape {out_dims}; the embedding must be [batch, dim]")
    return OnnxInfo(inputs[0].name, layout, size, chosen, names)


def adapted_onnx(path: str | Path, info: OnnxInfo) -> bytes:
    """The encoder as the bundle's contract wants it: a normalised float (B, 3, S, S) input and one output, the
    embedding. An NHWC model gets a Transpose in front; a model with several outputs keeps the chosen one. A model
    that already fits is returned byte for byte."""
    if info.layout == "NCHW" and info.outputs == (info.output,):
        return Path(path).read_bytes()
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    kept = [o for o in graph.output if o.name == info.output]
    del graph.output[:]
    graph.output.extend(kept)
    if info.layout == "NHWC":
        old = next(i for i in graph.input if i.name == info.input)
        b, h, w, c = _dims(old)
        nchw = helper.make_tensor_value_info(f"{info.input}_nchw", onnx.TensorProto.FLOAT, [b, c, h, w])
        graph.input.remove(old)
        graph.input.insert(0, nchw)
        graph.node.insert(0, helper.make_node("Transpose", [nchw.name], [info.input], perm=[0, 2, 3, 1]))
    onnx.checker.check_model(model)
    return model.SerializeToString()


class OnnxEncoder(nn.Module):
    """A frozen encoder given as an ONNX file, run through ONNX Runtime on the CPU (not differentiable). The graph it
    runs (and that ``dede export`` puts in a bundle) is ``adapted_onnx``: NCHW float in, the embedding out."""

    def __init__(self, path: str, output: str | None = None, input_size: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        if not Path(path).is_file():
            raise FileNotFoundError(f"ONNX encoder {path} does not exist")
        self.path = str(path)
        info = inspect_onnx(path, output)
        self.model_bytes = adapted_onnx(path, info)
        self.session = ort.InferenceSession(self.model_bytes, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = info.output
        size = input_size or info.size
        dim = self.session.get_outputs()[0].shape[1]
        if not isinstance(dim, int):  # a dynamic embedding size: run one image to see it
            if size is None:
                raise ValueError(f"{path}: dynamic input size and embedding size; pass --input-size")
            dim = int(self.forward(torch.zeros(1, 3, size, size)).shape[1])
        self.embed_dim = dim

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run([self.output_name], {self.input_name: x.detach().cpu().numpy().astype(np.float32)})
        return torch.from_numpy(out)


_REGISTRY: dict[str, Callable[..., nn.Module]] = {"cifar_resnet18": CifarResNet18, "onnx": OnnxEncoder,
                                                  "hf": HFVisionTower, "open_clip": OpenClipTower}


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
    # where mean/std came from: cifar10, imagenet, timm, processor (Hugging Face), open_clip, encoder.json (an ONNX
    # file's sidecar) or custom (--mean/--std)
    normalization: str = "cifar10"


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
    """Inverse of ``save_encoder``: an encoder directory. The model is returned in eval mode. (Any encoder a user
    brings, an ONNX file among them: ``training.user_encoders.open_encoder``.)"""
    path = Path(directory)
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


def embed_batch_size(input_size: int) -> int:
    """Images per encoder call when embedding: 512 at 32 px, fewer for larger inputs (the same pixels per call,
    at least 16), so that a 224-px encoder's activations stay near a 32-px one's."""
    return max(16, 512 * 32 * 32 // (input_size * input_size))


@torch.no_grad()
def embed(model: nn.Module, images: np.ndarray, spec: EncoderSpec, batch_size: int | None = None,
          device: str = "cpu") -> torch.Tensor:
    """Embeddings of uint8 (N, H, W, 3) images -> float32 (N, E) on the CPU. Model in eval mode."""
    batch_size = batch_size or embed_batch_size(spec.input_size)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_input(torch.from_numpy(np.array(images[i : i + batch_size])).to(device), spec)
        out.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, spec.embed_dim)


@torch.no_grad()
def embed_into(model: nn.Module, images: np.ndarray, spec: EncoderSpec, path: Path, device: str = "cpu",
               batch_size: int | None = None) -> np.ndarray:
    """``embed`` of uint8 (N, H, W, 3) images written batch by batch into the ``.npy`` file ``path`` -> its float32
    (N, E) memory map: the embedding cache of a large auxiliary set streams to disk."""
    batch_size = batch_size or embed_batch_size(spec.input_size)
    out = np.lib.format.open_memmap(path, "w+", np.float32, (len(images), spec.embed_dim))
    was_training = model.training
    model.eval()
    for i in tqdm(range(0, len(images), batch_size), desc="embedding", unit="batch", leave=False,
                  disable=len(images) <= batch_size):
        x = to_input(torch.from_numpy(np.array(images[i : i + batch_size])).to(device), spec)
        out[i : i + batch_size] = model(x).float().cpu().numpy()
    model.train(was_training)
    out.flush()
    return out
