"""The encoder a user brings, named by one ``--encoder`` string and loaded from local files only (never a download;
weights never by pickle):

    runs/x/clean-encoder      a directory written by ``dede pretrain`` or ``dede attack`` (encoder.json + safetensors)
    encoder.onnx              an ONNX file: input name, size, layout (NCHW or NHWC) and dynamic axes read from the
                              model; a model with a dynamic height/width needs ``--input-size``; the embedding is its
                              single output or the one ``--output`` names
    timm:resnet18             a timm architecture; ``--weights`` a safetensors file as ``model.state_dict()`` saves it
                              (a ``model.``/``module.`` prefix is stripped, the classifier head dropped)
    hf:DIR                    a Hugging Face vision tower saved with ``save_pretrained`` (CLIPVisionModel,
                              CLIPVisionModelWithProjection, SiglipVisionModel); size and mean/std from its processor
    open_clip:ARCH            an open_clip image tower; ``--weights`` a safetensors file of the whole CLIP model

``EncoderOptions`` carries the rest of the command line (``--weights``, ``--input-size``, ``--mean``, ``--std``,
``--output``). ``open_encoder(ref, options)`` returns ``(model, spec)``: the model maps a normalised float image
``(B, 3, S, S)`` to its embedding ``(B, E)``; ``spec`` says how to feed it (``S``, mean/std and where they came from,
``spec.normalization``). A run records the reference and the options (``run.json``), so ``dede calibrate`` and
``dede export`` open the same encoder again.

Mean/std, unless given: the model's own (timm's pretrained config, the Hugging Face processor, open_clip's), else
ImageNet's for inputs above 32 px and CIFAR-10's for 32-px models (the size of this project's own encoders).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from training.config import EncoderOptions
from training.encoders import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderSpec,
    OnnxEncoder,
    create_encoder,
    embed_dim_of,
    inspect_onnx,
    load_encoder,
    timm_data_config,
)
from training.vision_towers import hf_preprocessing, open_clip_preprocessing

KINDS = ("an encoder directory", "FILE.onnx", "timm:ARCH", "hf:DIR", "open_clip:ARCH")


def default_normalization(input_size: int) -> tuple[str, tuple[float, float, float], tuple[float, float, float]]:
    """(name, mean, std) for a model that brings none: CIFAR-10's for 32-px inputs, ImageNet's for larger ones."""
    return ("cifar10", CIFAR_MEAN, CIFAR_STD) if input_size <= 32 else ("imagenet", IMAGENET_MEAN, IMAGENET_STD)


def _with_options(spec: EncoderSpec, options: EncoderOptions) -> EncoderSpec:
    """``spec`` with the user's mean/std (recorded as ``custom``) where given."""
    if options.mean is None and options.std is None:
        return spec
    if options.mean is None or options.std is None:
        raise ValueError("--mean and --std go together: give both (three numbers each, e.g. 0.5,0.5,0.5)")
    for name, values in (("mean", options.mean), ("std", options.std)):
        if len(values) != 3 or (name == "std" and min(values) <= 0):
            raise ValueError(f"--{name} takes three numbers{' above 0' if name == 'std' else ''}, got {values}")
    return replace(spec, mean=options.mean, std=options.std, normalization="custom")


def _check_size(size: int | None, options: EncoderOptions, what: str) -> int:
    """The input side: the model's own fixed ``size`` (``--input-size`` must agree) or ``--input-size``."""
    if size is not None and options.input_size is not None and options.input_size != size:
        raise ValueError(f"{what} takes {size}x{size} inputs, but --input-size {options.input_size} was given")
    chosen = options.input_size or size
    if chosen is None:
        raise ValueError(f"{what} has a dynamic input height/width: pass --input-size (e.g. 224) to say what size "
                         "the downstream model is fed")
    if chosen < 8:
        raise ValueError(f"input size {chosen} is too small (at least 8 pixels)")
    return chosen


SIDECAR_KEYS = {"input_size", "mean", "std", "history", "name", "kwargs", "embed_dim", "normalization"}


def _sidecar(path: Path) -> dict[str, Any]:
    """The ``encoder.json`` beside an ONNX file, if any: its ``input_size``, ``mean``/``std`` (used unless the
    command line gives them) and ``history`` (the attack provenance of an encoder ``dede`` exported)."""
    file = path.with_name("encoder.json")
    if not file.exists():
        return {}
    try:
        side = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not valid JSON: {exc}") from exc
    unknown = set(side) - SIDECAR_KEYS if isinstance(side, dict) else {"(not an object)"}
    if unknown:
        raise ValueError(f"{file}: unknown keys {sorted(unknown)}; it may hold {sorted(SIDECAR_KEYS)}")
    return side


def _onnx(path: Path, options: EncoderOptions) -> tuple[nn.Module, EncoderSpec]:
    side = _sidecar(path)
    info = inspect_onnx(path, options.output)
    size = _check_size(info.size, replace(options, input_size=options.input_size or side.get("input_size")),
                       str(path))
    model = OnnxEncoder(str(path), output=info.output, input_size=size)
    name, mean, std = default_normalization(size)
    if "mean" in side and "std" in side:
        name, mean, std = "encoder.json", tuple(side["mean"]), tuple(side["std"])
    spec = EncoderSpec("onnx", {"path": str(path.resolve()), "output": info.output, "input_size": size},
                       size, mean, std, embed_dim_of(model), history=side.get("history", []), normalization=name)
    return model, _with_options(spec, options)


def _timm(arch: str, options: EncoderOptions) -> tuple[nn.Module, EncoderSpec]:
    kwargs: dict[str, Any] = {"weights": str(Path(options.weights).resolve())} if options.weights else {}
    if not options.weights:
        print(f"warning: timm:{arch} without --weights: random initialisation (for speed tests, not detection)")
    model = create_encoder(f"timm:{arch}", **kwargs)
    size, mean, std = timm_data_config(model)
    if options.input_size is None:
        print(f"timm:{arch}: {size}-px input (timm's data config; --input-size to feed another size)")
    size = _check_size(None, replace(options, input_size=options.input_size or size), f"timm:{arch}")
    spec = EncoderSpec(f"timm:{arch}", kwargs, size, mean, std, embed_dim_of(model), normalization="timm")
    return model, _with_options(spec, options)


def _hf(directory: Path, options: EncoderOptions) -> tuple[nn.Module, EncoderSpec]:
    model = create_encoder("hf", path=str(directory.resolve()))
    size, mean, std = hf_preprocessing(directory)
    size = _check_size(size, options, f"hf:{directory}")
    spec = EncoderSpec("hf", {"path": str(directory.resolve())}, size, mean, std, embed_dim_of(model),
                       normalization="processor")
    return model, _with_options(spec, options)


def _open_clip(arch: str, options: EncoderOptions) -> tuple[nn.Module, EncoderSpec]:
    if not options.weights:
        raise ValueError(f"open_clip:{arch} needs --weights: a safetensors file of the model's state_dict()")
    kwargs = {"arch": arch, "weights": str(Path(options.weights).resolve())}
    model = create_encoder("open_clip", **kwargs)
    size, mean, std = open_clip_preprocessing(model)
    size = _check_size(size, options, f"open_clip:{arch}")
    spec = EncoderSpec("open_clip", kwargs, size, mean, std, embed_dim_of(model), normalization="open_clip")
    return model, _with_options(spec, options)


def encoder_ref(ref: str | Path) -> str:
    """``ref`` as a run records it: a file or directory as an absolute path, ``timm:``/``open_clip:`` names as they
    are, ``hf:`` with its directory resolved."""
    text = str(ref)
    if text.startswith(("timm:", "open_clip:")):
        return text
    if text.startswith("hf:"):
        return "hf:" + str(Path(text.removeprefix("hf:")).resolve())
    return str(Path(text).resolve())


def open_encoder(ref: str | Path, options: EncoderOptions | None = None) -> tuple[nn.Module, EncoderSpec]:
    """The encoder ``ref`` names (see the module doc) in eval mode, and its spec. Raises ``FileNotFoundError`` or
    ``ValueError`` with one line that says what is wrong (a missing file, weights that do not fit, an ONNX model whose
    embedding or input size is ambiguous)."""
    options = options or EncoderOptions()
    text = str(ref)
    if options.weights and not Path(options.weights).is_file():
        raise FileNotFoundError(f"--weights {options.weights} does not exist")
    if text.startswith("timm:"):
        model, spec = _timm(text.removeprefix("timm:"), options)
    elif text.startswith("open_clip:"):
        model, spec = _open_clip(text.removeprefix("open_clip:"), options)
    elif text.startswith("hf:"):
        directory = Path(text.removeprefix("hf:"))
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory} is not a Hugging Face model directory (no config.json): save it "
                                    "with save_pretrained(DIR)")
        model, spec = _hf(directory, options)
    else:
        path = Path(text)
        if not path.exists():
            raise FileNotFoundError(f"encoder {text} does not exist (expected one of: {', '.join(KINDS)})")
        if path.suffix == ".onnx":
            model, spec = _onnx(path, options)
        elif path.is_dir():
            if options.weights or options.output:
                raise ValueError(f"{path} is an encoder directory: --weights and --output do not apply")
            model, spec = load_encoder(path)
            spec = _with_options(spec, options)
            if options.input_size not in (None, spec.input_size):
                raise ValueError(f"{path} was trained at {spec.input_size} px; --input-size {options.input_size} "
                                 "does not apply")
        else:
            raise ValueError(f"encoder {text}: expected one of {', '.join(KINDS)}")
    return model.eval(), spec
