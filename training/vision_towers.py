"""CLIP and SigLIP image towers that users bring, as victim encoders (registered in ``training.encoders``)::

    HFVisionTower("clip-dir")                          # Hugging Face: a directory written by save_pretrained
    OpenClipTower("ViT-B-32", "clip.safetensors")      # open_clip: an architecture name and its weights

Both map a normalised float image ``(B, 3, S, S)`` to its embedding ``(B, E)`` and read local files only: no
download, weights from safetensors only (never pickle). ``hf_preprocessing`` and ``open_clip_preprocessing`` say
what the tower is fed (the side ``S`` and mean/std). transformers and open_clip are heavy and optional (the ``train``
extra): they are imported when a tower is built, never with this module.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.weights import load_weights, strip_prefixes

Triple = tuple[float, float, float]

# the Hugging Face classes DeDe can use as a vision tower, and the output that is the embedding
HF_TOWERS = {"CLIPVisionModel": "pooler_output", "CLIPVisionModelWithProjection": "image_embeds",
             "SiglipVisionModel": "pooler_output"}
_HF_MODEL_TYPES = {"clip_vision_model": "CLIPVisionModel", "siglip_vision_model": "SiglipVisionModel"}
# each family's standard normalisation, for a directory without preprocessor_config.json (transformers' own
# OPENAI_CLIP_MEAN/STD and IMAGENET_STANDARD_MEAN/STD, which CLIPImageProcessor / SiglipImageProcessor default to)
_HF_FAMILY_NORMALIZATION: dict[str, tuple[Triple, Triple]] = {
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def _transformers(what: str) -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ValueError(f"{what}: encoders need the transformers package: pip install -e '.[train]'") from exc
    return transformers


def _open_clip(what: str) -> Any:
    try:
        import open_clip
    except ImportError as exc:
        raise ValueError(f"{what}: encoders need the open_clip_torch package: pip install -e '.[train]'") from exc
    return open_clip


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a readable JSON file ({_first_line(exc)})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a JSON object")
    return data


def _triple(values: Any, what: str) -> Triple:
    """Three floats from a processor's ``image_mean``/``image_std`` (a list of three, or one number for all)."""
    if isinstance(values, int | float):
        values = [values] * 3
    if not isinstance(values, list | tuple) or len(values) != 3:
        raise ValueError(f"{what} should be three numbers, got {values!r}")
    a, b, c = (float(v) for v in values)
    return a, b, c


def _square(value: Any, what: str) -> int | None:
    """The side of a square input given as an int, ``{"height", "width"}``, ``{"shortest_edge"}`` or ``[h, w]``."""
    if value is None:
        return None
    if isinstance(value, dict):
        if "height" in value or "width" in value:
            value = [value.get("height"), value.get("width")]
        elif "shortest_edge" in value:
            value = value["shortest_edge"]
        else:
            raise ValueError(f"{what} is {value}: expected height/width or shortest_edge")
    if isinstance(value, list | tuple):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{what} is {value}: DeDe needs a square input (pass --input-size)")
        value = value[0]
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} is {value!r}: expected a positive number of pixels")
    return value


def hf_tower_class(config: dict[str, Any], where: str) -> str:
    """The supported class that a Hugging Face ``config.json`` names (``architectures``, else ``model_type``)."""
    names = config.get("architectures") or []
    chosen = next((n for n in names if n in HF_TOWERS), None)
    if chosen is None and not names:
        chosen = _HF_MODEL_TYPES.get(str(config.get("model_type")))
    if chosen is None:
        said = f"architectures {', '.join(names)}" if names else f"model_type {config.get('model_type')!r}"
        raise ValueError(f"{where}: config.json names {said}; supported vision towers: {', '.join(HF_TOWERS)} "
                         "(save the tower alone, e.g. CLIPVisionModelWithProjection.from_pretrained(...)"
                         ".save_pretrained(DIR))")
    return chosen


class HFVisionTower(nn.Module):
    """A Hugging Face CLIP / SigLIP vision tower from a local ``save_pretrained`` directory (safetensors only). The
    embedding is ``pooler_output`` (CLIPVisionModel, SiglipVisionModel) or the projected ``image_embeds``
    (CLIPVisionModelWithProjection). Float32, eval mode."""

    def __init__(self, path: str) -> None:
        super().__init__()
        where = f"hf:{path}"
        directory = Path(path)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(f"{directory} is not a Hugging Face model directory (no config.json): save it "
                                    "with save_pretrained(DIR)")
        self.class_name = hf_tower_class(_read_json(directory / "config.json"), where)
        self.output = HF_TOWERS[self.class_name]
        transformers = _transformers("hf")
        try:
            model, info = getattr(transformers, self.class_name).from_pretrained(
                str(directory), local_files_only=True, use_safetensors=True, output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as exc:  # no model.safetensors, a corrupt file, sizes that differ
            raise ValueError(f"{where}: cannot load {self.class_name} ({_first_line(exc)})") from exc
        problems = {what: list(info.get(key) or []) for what, key in
                    (("missing", "missing_keys"), ("of another shape", "mismatched_keys"))}
        if any(problems.values()):
            said = "; ".join(f"{len(keys)} {what} (first: {', '.join(map(str, keys[:4]))})"
                             for what, keys in problems.items() if keys)
            raise ValueError(f"{where}: the weights do not fit {self.class_name}: {said}")
        if info.get("unexpected_keys"):
            print(f"warning: {where}: ignored {len(info['unexpected_keys'])} tensors {self.class_name} does not "
                  f"have (first: {', '.join(list(info['unexpected_keys'])[:4])})")
        config = model.config
        if self.class_name == "SiglipVisionModel" and not getattr(config, "vision_use_head", True):
            raise ValueError(f"{where}: this SigLIP tower has no pooling head (vision_use_head false), so no "
                             "pooled embedding")
        self.model = model.float().eval()
        dim = config.projection_dim if self.class_name == "CLIPVisionModelWithProjection" else config.hidden_size
        self.embed_dim = int(dim)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(pixel_values=x, return_dict=True), self.output)


def hf_preprocessing(directory: Path) -> tuple[int | None, Triple, Triple]:
    """(input side, mean, std) of a Hugging Face vision tower directory: from its ``preprocessor_config.json`` (CLIP:
    ``crop_size`` when it centre-crops, else ``size``; SigLIP: ``size`` height/width; ``image_mean``/``image_std``),
    else from config.json's ``image_size`` and the family's standard mean/std (with a printed warning). Raises
    ``ValueError`` for a non-square size or a processor whose size is not the model's."""
    directory = Path(directory)
    config = _read_json(directory / "config.json")
    family = "siglip" if "siglip" in str(config.get("model_type", "")).lower() else "clip"
    family_mean, family_std = _HF_FAMILY_NORMALIZATION[family]
    model_side = _square(config.get("image_size"), f"{directory}/config.json image_size")
    processor_file = directory / "preprocessor_config.json"
    if not processor_file.is_file():
        print(f"warning: hf:{directory} has no preprocessor_config.json: input {model_side} px from config.json, "
              f"{family.upper() if family == 'clip' else 'SigLIP'}'s standard mean/std {family_mean} / {family_std}")
        return model_side, family_mean, family_std
    processor = _read_json(processor_file)
    if processor.get("do_center_crop", True) and processor.get("crop_size") is not None:
        side = _square(processor["crop_size"], f"{processor_file} crop_size")
    else:
        side = _square(processor.get("size"), f"{processor_file} size")
    if side is None:
        side = model_side
    elif model_side is not None and side != model_side:
        raise ValueError(f"{processor_file} feeds {side} px, but the model takes {model_side} px (config.json "
                         "image_size)")
    if processor.get("do_normalize", True) is False:
        return side, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    mean = _triple(processor.get("image_mean", family_mean), f"{processor_file} image_mean")
    std = _triple(processor.get("image_std", family_std), f"{processor_file} image_std")
    if min(std) <= 0:
        raise ValueError(f"{processor_file} image_std {std} should be above 0")
    return side, mean, std


def _safetensors_keys(path: str) -> list[str] | None:
    """The tensor names of a safetensors file, without reading the tensors (None when it is not readable: then
    ``load_weights`` says why)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return list(f.keys())
    except Exception:  # safetensors raises its own error types for a file that is not safetensors
        return None


class _DropRecords(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


class OpenClipTower(nn.Module):
    """An open_clip model's image tower: ``open_clip.create_model(arch)`` without a download, then the weights of the
    whole CLIP model (``model.state_dict()``) or of its visual tower alone (``model.visual.state_dict()``), from
    safetensors, strictly (``training.weights.load_weights``). Only ``.visual`` is kept."""

    def __init__(self, arch: str, weights: str) -> None:
        super().__init__()
        where = f"open_clip:{arch}"
        open_clip = _open_clip("open_clip")
        if ":" in arch:  # 'hf-hub:' would download, 'local-dir:' would read weights of its own
            raise ValueError(f"{where}: give an open_clip architecture name (e.g. ViT-B-32); the weights come from "
                             "--weights, not from a hub or a directory")
        config = open_clip.get_model_config(arch)
        if config is None:
            raise ValueError(f"{where}: unknown architecture; open_clip.list_models() has the "
                             f"{len(open_clip.list_models())} it knows (e.g. ViT-B-32, ViT-B-16-SigLIP)")
        quiet = _DropRecords("No pretrained weights loaded")  # open_clip's warning; the weights come next
        logging.getLogger().addFilter(quiet)
        try:  # no pretrained weights of either tower: open_clip would download them
            model = open_clip.create_model(arch, pretrained=None, pretrained_image=False, pretrained_text=False)
        except Exception as exc:  # e.g. a Hugging Face text tower whose config is not on this machine
            raise ValueError(f"{where}: open_clip cannot build the architecture offline ({_first_line(exc)})") from exc
        finally:
            logging.getLogger().removeFilter(quiet)
        keys = _safetensors_keys(weights)
        names = strip_prefixes(dict.fromkeys(keys, torch.empty(0))) if keys is not None else {}
        whole = keys is None or any(k.startswith("visual.") for k in names)  # else model.visual.state_dict()
        load_weights(model if whole else model.visual, weights)
        self.arch = arch
        self.visual = model.visual.eval()
        self.embed_dim = int(getattr(self.visual, "output_dim", None) or config["embed_dim"])
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def open_clip_preprocessing(model: nn.Module) -> tuple[int | None, Triple, Triple]:
    """(input side, mean, std) of an ``OpenClipTower`` (or an open_clip model): the visual tower's ``image_size``;
    the mean/std that open_clip's pretrained configs of the architecture agree on (SigLIP's 0.5s, OpenAI's for most
    CLIPs), else the tower's preprocess config (open_clip's OPENAI_DATASET_MEAN/STD when nothing says otherwise),
    with a printed warning when the architecture's pretrained weights use several."""
    open_clip = _open_clip("open_clip")
    visual = getattr(model, "visual", model)
    arch = getattr(model, "arch", None)
    where = f"open_clip:{arch}" if arch else "open_clip"
    side = _square(getattr(visual, "image_size", None), f"{where}: the visual tower's image_size")
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    mean = _triple(cfg.get("mean") or getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN,
                   f"{where} mean")
    std = _triple(cfg.get("std") or getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD,
                  f"{where} std")
    if arch:
        tagged: dict[tuple[Triple, Triple], list[str]] = {}
        for tag in open_clip.list_pretrained_tags_by_model(arch):
            pretrained = open_clip.get_pretrained_cfg(arch, tag)
            pair = (_triple(pretrained.get("mean", open_clip.OPENAI_DATASET_MEAN), f"{where} {tag} mean"),
                    _triple(pretrained.get("std", open_clip.OPENAI_DATASET_STD), f"{where} {tag} std"))
            tagged.setdefault(pair, []).append(tag)
        if len(tagged) == 1:
            (mean, std), = tagged
        elif len(tagged) > 1:
            said = "; ".join(f"{m} / {s} ({', '.join(tags[:3])}{', ...' if len(tags) > 3 else ''})"
                             for (m, s), tags in tagged.items())
            print(f"warning: {where}: its pretrained weights use different mean/std ({said}); using {mean} / {std}: "
                  "pass --mean/--std if your weights use another")
    return side, mean, std
