"""Hugging Face and open_clip image towers as victim encoders: tiny random models that each test builds and saves
itself (no download), loaded back through ``training.vision_towers`` and exported to ONNX as ``dede export`` does."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from training.encoders import EncoderSpec, create_encoder, load_encoder, save_encoder
from training.export import export_encoder
from training.user_encoders import EncoderOptions, open_encoder
from training.vision_towers import HFVisionTower, OpenClipTower, hf_preprocessing, open_clip_preprocessing

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")
ort = pytest.importorskip("onnxruntime")

MEAN, STD = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)  # not any family's default: the test can tell they were read
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "patch_size": 8}
# class name -> (image side, embedding size, the transformers output that is the embedding)
HF_CASES = {"CLIPVisionModel": (32, 32, "pooler_output"),
            "CLIPVisionModelWithProjection": (32, 16, "image_embeds"),
            "SiglipVisionModel": (64, 32, "pooler_output")}


def save_hf_tower(directory: Path, class_name: str, processor: bool = True) -> Any:
    """A random tiny ``class_name`` saved with ``save_pretrained`` (+ its image processor); returns the model."""
    side = HF_CASES[class_name][0]
    torch.manual_seed(0)
    if class_name.startswith("CLIP"):
        config = transformers.CLIPVisionConfig(**TINY, image_size=side, projection_dim=16)
        image_processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": side + 8}, crop_size={"height": side, "width": side},
            image_mean=list(MEAN), image_std=list(STD))
    else:
        config = transformers.SiglipVisionConfig(**TINY, image_size=side)
        image_processor = transformers.SiglipImageProcessor(size={"height": side, "width": side},
                                                            image_mean=list(MEAN), image_std=list(STD))
    model = getattr(transformers, class_name)(config).eval()
    model.save_pretrained(directory)
    if processor:
        image_processor.save_pretrained(directory)
    return model


def onnx_parity(tower: torch.nn.Module, side: int, path: Path) -> float:
    """Export ``tower`` as ``dede export`` does (opset 17, dynamic batch) and return the worst |ORT - torch| on a
    batch of another size than the export's dummy."""
    export_encoder(tower, EncoderSpec("test", input_size=side), path)
    x = torch.randn(3, 3, side, side)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["embedding"], {"image": x.numpy()})
    with torch.no_grad():
        want = tower(x).numpy()
    assert got.shape == want.shape
    return float(np.max(np.abs(got - want)))


@pytest.mark.parametrize("class_name", sorted(HF_CASES))
def test_hf_tower_matches_transformers_and_exports(class_name: str, tmp_path: Path) -> None:
    side, dim, output = HF_CASES[class_name]
    reference = save_hf_tower(tmp_path / "tower", class_name)
    tower = HFVisionTower(str(tmp_path / "tower"))
    assert not tower.training and tower.embed_dim == dim and tower.class_name == class_name
    x = torch.randn(4, 3, side, side)
    with torch.no_grad():
        got = tower(x)
        want = getattr(reference(pixel_values=x), output)
    assert got.shape == (4, dim)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert hf_preprocessing(tmp_path / "tower") == (side, MEAN, STD)
    assert onnx_parity(tower, side, tmp_path / "encoder.onnx") < 1e-4


def test_hf_tower_through_the_registry_and_open_encoder(tmp_path: Path) -> None:
    save_hf_tower(tmp_path / "tower", "CLIPVisionModelWithProjection")
    assert isinstance(create_encoder("hf", path=str(tmp_path / "tower")), HFVisionTower)
    model, spec = open_encoder(f"hf:{tmp_path / 'tower'}")
    assert (spec.name, spec.input_size, spec.mean, spec.std, spec.embed_dim, spec.normalization) == (
        "hf", 32, MEAN, STD, 16, "processor")
    save_encoder(model, spec, tmp_path / "saved")
    again, _ = load_encoder(tmp_path / "saved")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)


def test_hf_preprocessing_without_a_processor_uses_the_family_defaults(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    save_hf_tower(tmp_path / "clip", "CLIPVisionModel", processor=False)
    save_hf_tower(tmp_path / "siglip", "SiglipVisionModel", processor=False)
    assert hf_preprocessing(tmp_path / "clip") == (32, (0.48145466, 0.4578275, 0.40821073),
                                                   (0.26862954, 0.26130258, 0.27577711))
    assert hf_preprocessing(tmp_path / "siglip") == (64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert capsys.readouterr().out.count("no preprocessor_config.json") == 2


def test_hf_preprocessing_rejects_a_non_square_or_foreign_size(tmp_path: Path) -> None:
    save_hf_tower(tmp_path, "SiglipVisionModel")
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    processor["size"] = {"height": 64, "width": 48}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(ValueError, match="square"):
        hf_preprocessing(tmp_path)
    processor["size"] = {"height": 48, "width": 48}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    with pytest.raises(ValueError, match="48 px, but the model takes 64 px"):
        hf_preprocessing(tmp_path)


def test_hf_unsupported_architecture_is_one_value_error(tmp_path: Path) -> None:
    save_hf_tower(tmp_path, "CLIPVisionModel")
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(architectures=["ViTModel"], model_type="vit")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="ViTModel") as caught:
        HFVisionTower(str(tmp_path))
    message = str(caught.value)
    assert "\n" not in message
    assert all(name in message for name in ("CLIPVisionModel", "CLIPVisionModelWithProjection", "SiglipVisionModel"))


@pytest.mark.parametrize("change", [{"intermediate_size": 48},  # the saved MLPs are 64 wide
                                    {"architectures": ["CLIPVisionModelWithProjection"]}])  # no projection saved
def test_hf_weights_that_do_not_fit_are_one_value_error(change: dict[str, Any], tmp_path: Path) -> None:
    save_hf_tower(tmp_path, "CLIPVisionModel")
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(change)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="hf:") as caught:
        HFVisionTower(str(tmp_path))
    assert "\n" not in str(caught.value)


def test_a_missing_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    save_hf_tower(tmp_path, "CLIPVisionModel")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ValueError, match=r"need the transformers package: pip install -e '\.\[train\]'"):
        HFVisionTower(str(tmp_path))
    with pytest.raises(ValueError, match="need the open_clip_torch package"):
        OpenClipTower("ViT-B-32", str(tmp_path / "w.safetensors"))


def tiny_open_clip_config(width: int = 32, embed_dim: int = 16) -> dict[str, Any]:
    return {"embed_dim": embed_dim,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": width, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_archs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Two tiny open_clip architectures, registered with open_clip's public ``add_model_config`` under names no
    built-in has: the second's visual tower is wider (its weights do not fit the first)."""
    directory = tmp_path_factory.mktemp("open_clip_configs")
    names = ("dede-test-tiny-vit", "dede-test-tiny-vit-wide")
    for name, width in zip(names, (32, 48), strict=True):
        (directory / f"{name}.json").write_text(json.dumps(tiny_open_clip_config(width)))
        open_clip.add_model_config(directory / f"{name}.json")
    return names


def save_open_clip(arch: str, path: Path, visual_only: bool = False, prefix: str = "") -> Any:
    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None).eval()
    state = (model.visual if visual_only else model).state_dict()
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    return model


def test_open_clip_tower_matches_encode_image_and_exports(tiny_archs: tuple[str, str], tmp_path: Path) -> None:
    arch = tiny_archs[0]
    reference = save_open_clip(arch, tmp_path / "clip.safetensors")
    tower = OpenClipTower(arch, str(tmp_path / "clip.safetensors"))
    assert not tower.training and tower.embed_dim == 16
    assert not hasattr(tower, "transformer") and set(dict(tower.named_children())) == {"visual"}
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        got, want = tower(x), reference.encode_image(x, normalize=False)
    assert got.shape == (4, 16)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    size, mean, std = open_clip_preprocessing(tower)
    assert (size, mean, std) == (32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    assert onnx_parity(tower, 32, tmp_path / "encoder.onnx") < 1e-4


def test_open_clip_tower_takes_the_visual_tower_alone_with_a_prefix(tiny_archs: tuple[str, str],
                                                                    tmp_path: Path) -> None:
    arch = tiny_archs[0]
    reference = save_open_clip(arch, tmp_path / "visual.safetensors", visual_only=True, prefix="module.")
    tower = create_encoder("open_clip", arch=arch, weights=str(tmp_path / "visual.safetensors"))
    assert isinstance(tower, OpenClipTower)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tower(x), reference.encode_image(x), rtol=0, atol=0)
    model, spec = open_encoder(f"open_clip:{arch}", EncoderOptions(weights=str(tmp_path / "visual.safetensors")))
    assert (spec.name, spec.input_size, spec.embed_dim, spec.normalization) == ("open_clip", 32, 16, "open_clip")


def test_open_clip_weights_of_another_shape_are_one_value_error(tiny_archs: tuple[str, str], tmp_path: Path) -> None:
    arch, wide = tiny_archs
    save_open_clip(wide, tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match="of another shape") as caught:
        OpenClipTower(arch, str(tmp_path / "wide.safetensors"))
    message = str(caught.value)
    assert "\n" not in message and "visual." in message


def test_open_clip_rejects_unknown_or_downloading_references(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        OpenClipTower("no-such-arch", str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="not from a hub"):
        OpenClipTower("hf-hub:someone/clip", str(tmp_path / "w.safetensors"))


class _Stub(torch.nn.Module):
    """What ``open_clip_preprocessing`` reads of a tower, without building a real (large) architecture."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        self.arch = arch
        self.visual = torch.nn.Identity()
        self.visual.image_size = (224, 224)
        self.visual.preprocess_cfg = {"mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD}


def test_open_clip_preprocessing_follows_the_pretrained_configs(capsys: pytest.CaptureFixture[str]) -> None:
    # SigLIP's pretrained weights all use 0.5s, although the tower's own preprocess config says OpenAI's
    assert open_clip_preprocessing(_Stub("ViT-B-16-SigLIP")) == (224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert capsys.readouterr().out == ""
    # ViT-L-14's tags disagree (laion2b_s32b_b82k uses 0.5s): the tower's own, and a warning
    assert open_clip_preprocessing(_Stub("ViT-L-14")) == (224, open_clip.OPENAI_DATASET_MEAN,
                                                           open_clip.OPENAI_DATASET_STD)
    assert "--mean/--std" in capsys.readouterr().out
