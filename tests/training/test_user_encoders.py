"""The encoders a user brings (training.user_encoders), each a small random model the test saves itself in the
format a user would have: ONNX files (static, NHWC, dynamic size, several outputs) and timm safetensors as
``state_dict()`` writes them; the detector sized for the input; the trainer's one-line errors (exit code 2)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from tests.conftest import data_root
from training.cli import main
from training.config import EncoderOptions, input_size_layer, patch_size_for
from training.encoders import IMAGENET_MEAN, create_encoder
from training.user_encoders import open_encoder

needs_imagenette = pytest.mark.skipif(not (data_root() / "imagenette.zip").exists(),
                                      reason=f"Imagenette not found at {data_root() / 'imagenette.zip'}")


class TinyConv(nn.Module):
    """A 224-px stand-in for a user's encoder: (B, 3, S, S) -> (B, 16); ``nhwc`` takes (B, S, S, 3) instead;
    ``extra`` adds a second output (the pre-pool feature map)."""

    def __init__(self, nhwc: bool = False, extra: bool = False) -> None:
        super().__init__()
        self.nhwc, self.extra = nhwc, extra
        self.conv = nn.Conv2d(3, 16, 16, stride=16)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        fmap = F.relu(self.conv(x))
        emb = fmap.mean((2, 3))
        return (fmap, emb) if self.extra else emb


def save_onnx(model: nn.Module, path: Path, size: int = 224, nhwc: bool = False, dynamic_hw: bool = False,
              outputs: tuple[str, ...] = ("embedding",)) -> Path:
    shape = (2, size, size, 3) if nhwc else (2, 3, size, size)
    axes: dict[str, dict[int, str]] = {"x": {0: "batch"}} | {o: {0: "batch"} for o in outputs}
    if dynamic_hw:
        axes["x"] |= {1: "h", 2: "w"} if nhwc else {2: "h", 3: "w"}
    torch.onnx.export(model.eval(), (torch.zeros(shape),), str(path), input_names=["x"], output_names=list(outputs),
                      dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def test_a_static_nchw_onnx_model_gives_its_size_and_imagenet_statistics(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = TinyConv()
    model, spec = open_encoder(save_onnx(ref, tmp_path / "enc.onnx"))
    assert (spec.input_size, spec.embed_dim, spec.normalization, spec.mean) == (224, 16, "imagenet", IMAGENET_MEAN)
    x = torch.randn(3, 3, 224, 224)
    assert torch.allclose(model(x), ref(x), atol=1e-5)


def test_a_32px_onnx_model_gets_cifar_statistics(tmp_path: Path) -> None:
    _, spec = open_encoder(save_onnx(TinyConv(), tmp_path / "enc.onnx", size=32))
    assert (spec.input_size, spec.normalization) == (32, "cifar10")


def test_an_nhwc_model_is_read_as_such_and_adapted_to_nchw(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = TinyConv(nhwc=True)
    model, spec = open_encoder(save_onnx(ref, tmp_path / "enc.onnx", nhwc=True))
    x = torch.randn(2, 3, 224, 224)  # the bundle's contract: NCHW in
    assert spec.input_size == 224
    assert torch.allclose(model(x), ref(x.permute(0, 2, 3, 1)), atol=1e-5)


def test_a_dynamic_size_model_needs_input_size(tmp_path: Path) -> None:
    path = save_onnx(TinyConv(), tmp_path / "enc.onnx", dynamic_hw=True)
    with pytest.raises(ValueError, match="--input-size"):
        open_encoder(path)
    _, spec = open_encoder(path, EncoderOptions(input_size=96))
    assert (spec.input_size, spec.normalization) == (96, "imagenet")


def test_an_encoder_json_beside_the_onnx_file_gives_size_and_statistics(tmp_path: Path) -> None:
    import json

    path = save_onnx(TinyConv(), tmp_path / "enc.onnx", dynamic_hw=True)
    (tmp_path / "encoder.json").write_text(json.dumps({"input_size": 64, "mean": [0.5] * 3, "std": [0.2] * 3}))
    _, spec = open_encoder(path)
    assert (spec.input_size, spec.mean, spec.normalization) == (64, (0.5, 0.5, 0.5), "encoder.json")
    _, spec = open_encoder(path, EncoderOptions(mean=(0.1, 0.1, 0.1), std=(0.3, 0.3, 0.3)))  # the command line wins
    assert spec.normalization == "custom"
    (tmp_path / "encoder.json").write_text(json.dumps({"input_sise": 64}))
    with pytest.raises(ValueError, match="unknown keys \\['input_sise'\\]"):
        open_encoder(path)


def test_several_outputs_need_output_and_the_adapted_graph_keeps_only_it(tmp_path: Path) -> None:
    path = save_onnx(TinyConv(extra=True), tmp_path / "enc.onnx", outputs=("features", "embedding"))
    with pytest.raises(ValueError, match="features, embedding.*--output|--output.*"):
        open_encoder(path)
    model, spec = open_encoder(path, EncoderOptions(output="embedding"))
    assert spec.embed_dim == 16 and model(torch.zeros(1, 3, 224, 224)).shape == (1, 16)
    import onnx

    assert [o.name for o in onnx.load_from_string(model.model_bytes).graph.output] == ["embedding"]
    with pytest.raises(ValueError, match="no output 'emb'"):
        open_encoder(path, EncoderOptions(output="emb"))


def test_a_size_that_disagrees_with_the_model_and_bad_statistics_are_refused(tmp_path: Path) -> None:
    path = save_onnx(TinyConv(), tmp_path / "enc.onnx")
    with pytest.raises(ValueError, match="takes 224x224"):
        open_encoder(path, EncoderOptions(input_size=96))
    with pytest.raises(ValueError, match="go together"):
        open_encoder(path, EncoderOptions(mean=(0.5, 0.5, 0.5)))
    _, spec = open_encoder(path, EncoderOptions(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert (spec.mean, spec.std, spec.normalization) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "custom")


def test_timm_weights_as_state_dict_saves_them_with_a_prefix_and_a_head(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import timm

    torch.manual_seed(0)
    full = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()  # with its classifier head
    save_file({f"module.{k}": v.contiguous() for k, v in full.state_dict().items()}, tmp_path / "w.safetensors")
    model, spec = open_encoder("timm:resnet10t", EncoderOptions(weights=str(tmp_path / "w.safetensors")))
    assert "dropped the classifier head's tensors fc.bias, fc.weight" in capsys.readouterr().out
    assert (spec.input_size, spec.normalization, spec.embed_dim) == (176, "timm", 512)  # resnet10t's data config
    _, spec = open_encoder("timm:resnet10t", EncoderOptions(weights=str(tmp_path / "w.safetensors"), input_size=224))
    assert spec.input_size == 224  # a CNN takes the size the user feeds it
    x = torch.randn(2, 3, 224, 224)
    full.reset_classifier(0)
    assert torch.allclose(model(x), full(x), atol=1e-5)


def test_timm_weights_of_another_architecture_name_the_mismatched_keys(tmp_path: Path) -> None:
    other = create_encoder("timm:resnet18")
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="does not fit the architecture: .*(missing|unexpected|shape)"):
        open_encoder("timm:resnet10t", EncoderOptions(weights=str(tmp_path / "w.safetensors")))


def test_the_detector_follows_the_input_size() -> None:
    assert [patch_size_for(s) for s in (32, 96, 224)] == [4, 8, 16]
    assert input_size_layer("tiny", 32) == {"patch_size": 4}  # the 32-px presets are unchanged
    big = input_size_layer("tiny", 224)
    assert big["patch_size"] == 16 and big["width"] > 32


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 real 224-px Imagenette training photos as a plain folder of JPEGs, plus one unreadable file."""
    if not (data_root() / "imagenette.zip").exists():
        pytest.skip("Imagenette not found")
    out = tmp_path_factory.mktemp("photos")
    with zipfile.ZipFile(data_root() / "imagenette.zip") as z:
        names = sorted(n for n in z.namelist() if n.startswith("train/") and n.endswith(".JPEG"))[::36][:48]
        for n in names:
            (out / Path(n).name).write_bytes(z.read(n))
    (out / "broken.jpg").write_bytes(b"not a jpeg")
    return out


TINY = ["--preset", "tiny", "--set", "holdout_images=16", "--set", "calib_images=32", "--set", "threshold_rule=fpr@0.2"]


@needs_imagenette
def test_bad_trainer_inputs_exit_2_with_one_line(tmp_path: Path, photo_folder: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "run")
    cases = {
        "does not exist": ["--encoder", str(tmp_path / "missing.onnx")],
        "--input-size": ["--encoder", str(save_onnx(TinyConv(), tmp_path / "dyn.onnx", dynamic_hw=True))],
        "--output": ["--encoder", str(save_onnx(TinyConv(extra=True), tmp_path / "two.onnx",
                                                 outputs=("features", "embedding")))],
    }
    empty, broken = tmp_path / "empty", tmp_path / "broken"
    empty.mkdir()
    broken.mkdir()
    for i in range(3):
        (broken / f"{i}.jpg").write_bytes(b"not a jpeg")
    static = str(save_onnx(TinyConv(), tmp_path / "enc.onnx"))
    cases["holds no image files"] = ["--encoder", static, "--aux", str(empty)]
    cases["none of its 3 image files could be read"] = ["--encoder", static, "--aux", str(broken)]
    other = create_encoder("timm:resnet18")
    save_file({k: v.contiguous() for k, v in other.model.state_dict().items()}, tmp_path / "r18.safetensors")
    cases["does not fit the architecture"] = ["--encoder", "timm:resnet10t", "--weights",
                                              str(tmp_path / "r18.safetensors")]
    # the patch size that once took the whole machine: 3,136 patches at 224 px
    cases["GiB are available"] = ["--encoder", static, "--aux", str(photo_folder), "--set", "patch_size=4",
                                  "--set", "batch_size=4096"]
    for expect, args in cases.items():
        code, err = run(["train", *args, *TINY, "--out", out], capsys)
        assert code == 2 and expect in err and "Traceback" not in err and len(err.splitlines()) == 1, (expect, err)


def train_export_serve(encoder_args: list[str], photos: Path, tmp_path: Path, name: str) -> dict[str, object]:
    """``dede train`` (tiny) -> ``dede export`` (which checks ONNX Runtime against PyTorch on real images) ->
    ``dede serve`` -> a 400x300 JPEG scored over HTTP. Returns the manifest's encoder and detector sections."""
    import httpx

    from service.manifest import load_manifest
    from tests.servers import dede_server

    run_dir, models = tmp_path / "run", tmp_path / "models"
    assert main(["train", *encoder_args, "--aux", str(photos), *TINY, "--out", str(run_dir)]) == 0
    assert main(["export", "--run", str(run_dir), "--name", name, "--out", str(models)]) == 0
    assert not (run_dir / "aux_train.npy").exists()  # training's memory-mapped working files are gone
    m = load_manifest(models / name)
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    with dede_server(bundle=models / name) as url:
        assert httpx.get(f"{url}/info").json()["kept_patches"] == m.detector.kept_patches
        r = httpx.post(f"{url}/score", content=jpeg.getvalue(), headers={"content-type": "image/jpeg"})
        assert r.status_code == 200 and r.json()["score"] > 0, r.text
    return {"encoder": m.encoder, "detector": m.detector}


@needs_imagenette
def test_an_nhwc_dynamic_onnx_encoder_at_224px_end_to_end(tmp_path: Path, photo_folder: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    enc = save_onnx(TinyConv(nhwc=True), tmp_path / "enc.onnx", nhwc=True, dynamic_hw=True)
    m = train_export_serve(["--encoder", str(enc), "--input-size", "224"], photo_folder, tmp_path, "user-onnx")
    assert "skipped 1 of 49 image files" in capsys.readouterr().out
    enc_info, det = m["encoder"], m["detector"]
    assert (enc_info.input_size, enc_info.normalization, det.patch_size, det.num_patches) == (  # type: ignore[attr-defined]
        224, "imagenet", 16, 196)
    assert det.test_mask_ratio == 0.99 and det.kept_patches == 1  # type: ignore[attr-defined]


@needs_imagenette
def test_timm_safetensors_at_224px_end_to_end(tmp_path: Path, photo_folder: Path) -> None:
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=1000)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    m = train_export_serve(["--encoder", "timm:resnet10t", "--weights", str(tmp_path / "w.safetensors"),
                            "--input-size", "224"], photo_folder, tmp_path, "user-timm")
    assert (m["encoder"].input_size, m["encoder"].normalization) == (224, "timm")  # type: ignore[attr-defined]


@needs_imagenette
def test_an_encoder_directory_with_aux_folder_end_to_end(tmp_path: Path, photo_folder: Path) -> None:
    from training.encoders import EncoderSpec, save_encoder

    save_encoder(create_encoder("cifar_resnet18", width=4), EncoderSpec("cifar_resnet18", {"width": 4}, 64),
                 tmp_path / "enc")
    m = train_export_serve(["--encoder", str(tmp_path / "enc")], photo_folder, tmp_path, "user-dir")
    assert (m["encoder"].input_size, m["detector"].patch_size) == (64, 8)  # type: ignore[attr-defined]


@needs_imagenette
@pytest.mark.parametrize("class_name", ["CLIPVisionModelWithProjection", "SiglipVisionModel"])
def test_a_hugging_face_vision_tower_end_to_end(class_name: str, tmp_path: Path, photo_folder: Path) -> None:
    from tests.training.test_vision_towers import HF_CASES, MEAN, save_hf_tower

    save_hf_tower(tmp_path / "tower", class_name)
    m = train_export_serve(["--encoder", f"hf:{tmp_path / 'tower'}"], photo_folder, tmp_path, "user-hf")
    side = HF_CASES[class_name][0]
    assert (m["encoder"].input_size, m["encoder"].mean, m["encoder"].normalization) == (  # type: ignore[attr-defined]
        side, MEAN, "processor")


@needs_imagenette
def test_an_open_clip_image_tower_end_to_end(tmp_path: Path, photo_folder: Path) -> None:
    import json

    import open_clip

    from tests.training.test_vision_towers import save_open_clip, tiny_open_clip_config

    (tmp_path / "dede-e2e-tiny-vit.json").write_text(json.dumps(tiny_open_clip_config()))
    open_clip.add_model_config(tmp_path / "dede-e2e-tiny-vit.json")
    save_open_clip("dede-e2e-tiny-vit", tmp_path / "clip.safetensors")
    encoder = ["--encoder", "open_clip:dede-e2e-tiny-vit", "--weights", str(tmp_path / "clip.safetensors")]
    m = train_export_serve(encoder, photo_folder, tmp_path, "user-open-clip")
    assert (m["encoder"].input_size, m["encoder"].embed_dim) == (32, 16)  # type: ignore[attr-defined]
