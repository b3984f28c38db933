"""MiniCLIP (tokenizer, towers, loss, zero-shot), the CLIP attacks' parts, and a tiny end-to-end run on
CIFAR-10: pretrain --method clip -> clip-backdoor / badclip -> load_encoder -> ONNX export."""

from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import data_root, needs_cifar
from training.encoders import EncoderSpec, create_encoder, load_encoder, save_encoder
from training.export import export_encoder
from training.pretrain.captions import (
    ATTRIBUTES,
    COLOURS,
    caption_tokens,
    colour_ids,
    encode_captions,
    image_attributes,
    random_captions,
)
from training.pretrain.clip_model import (
    SPECIALS,
    TEMPLATES,
    ImageTower,
    MiniCLIP,
    TextTower,
    WordTokenizer,
    class_embeddings,
    clip_loss,
    load_clip,
    zero_shot_logits,
)
from training.pretrain.clip_train import SslTerm, random_shift_flip
from training.triggers import badclip_patch_size, make_trigger


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny convolutions: on a busy machine extra threads only contend (the run was ~5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_tokenizer_is_deterministic_and_fixed_length() -> None:
    a = WordTokenizer.build(TEMPLATES, CLASSES)
    b = WordTokenizer.build(list(reversed(TEMPLATES)), list(reversed(CLASSES)))
    assert a.vocab == b.vocab and a.context_length == b.context_length
    assert tuple(a.vocab[:4]) == SPECIALS and "truck" in a.vocab and "close" in a.vocab
    ids = a.encode(["a photo of a cat.", "A PHOTO of a zebra.", "a close-up photo of a automobile."])
    assert ids.shape == (3, a.context_length) and ids.dtype == torch.long
    assert torch.equal(ids, a.encode(["a photo of a cat.", "a photo of a zebra.", "a close-up photo of a automobile."]))
    row = ids[0].tolist()
    words = ["a", "photo", "of", "a", "cat", "."]
    assert row[: len(words) + 2] == [a.sot_id, *(a.index[w] for w in words), a.eot_id]
    assert set(row[len(words) + 2 :]) == {a.pad_id}
    assert a.unk_id in ids[1].tolist()  # zebra is not in the vocabulary
    long = a.encode([" ".join(["cat"] * 50)])[0]
    assert long[-1] == a.eot_id and (long == a.eot_id).sum() == 1


def test_text_tower_projects_the_end_of_text_token() -> None:
    tok = WordTokenizer.build(TEMPLATES, CLASSES)
    text = TextTower(len(tok.vocab), tok.context_length, width=16, layers=1, heads=2, embed_dim=8).eval()
    ids = tok.encode(["a photo of a cat.", "a photo of a dog."])
    out = text(ids)
    assert out.shape == (2, 8)
    # causal: what follows <eot> (padding) does not change the feature
    padded = ids.clone()
    padded[padded == tok.pad_id] = tok.index["ship"]
    assert torch.allclose(text(padded), out, atol=1e-5)
    assert not torch.allclose(out[0], out[1])


class FakeText(nn.Module):
    """Caption -> e_class + (+1 or -1) * e_template_axis: the template parts cancel in the class mean."""

    def __init__(self, tok: WordTokenizer, classes: list[str], dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.class_ids = torch.tensor([tok.index[c] for c in classes])
        self.dim = dim
        self.calls = 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(tokens), self.dim)
        for i, row in enumerate(tokens):
            c = int(torch.isin(self.class_ids, row).nonzero()[0])
            out[i, c] = 1.0
            out[i, -1] = 1.0 if i % 2 == 0 else -1.0  # two templates: +1 then -1 per class
        return out


def test_zero_shot_classifier_on_a_known_case() -> None:
    tok = WordTokenizer.build(TEMPLATES[:2], CLASSES)
    emb = class_embeddings(FakeText(tok, CLASSES, 11), tok, CLASSES, TEMPLATES[:2])  # (C, 11)
    assert emb.shape == (10, 11)
    assert torch.allclose(emb, torch.eye(10, 11), atol=1e-6)  # template parts cancel, renormalised
    images = torch.zeros(3, 11)
    images[0, 3] = 5.0  # cat
    images[1, 9], images[1, 2] = 1.0, 0.9  # mostly truck, some bird
    images[2, 0], images[2, -1] = 1.0, 3.0  # airplane plus an off-class direction
    logits = zero_shot_logits(images, emb)
    assert logits.argmax(1).tolist() == [3, 9, 0]
    assert logits[0, 3] == pytest.approx(1.0) and logits[2, 0] == pytest.approx(1 / math.sqrt(10))


def test_clip_loss_at_known_points() -> None:
    B, s = 8, 3.0
    aligned = s * torch.eye(B)
    expected = math.log(1 + (B - 1) * math.exp(-s))  # -log softmax of the diagonal
    assert clip_loss(aligned).item() == pytest.approx(expected, rel=1e-5)
    shuffled = s * torch.eye(B)[torch.roll(torch.arange(B), 1)]  # every pair matched to another caption
    assert clip_loss(shuffled).item() == pytest.approx(math.log(math.exp(s) + B - 1), rel=1e-5)
    assert clip_loss(torch.zeros(B, B)).item() == pytest.approx(math.log(B))
    assert clip_loss(aligned) < clip_loss(torch.zeros(B, B)) < clip_loss(shuffled)


def test_mini_clip_logits_and_registry() -> None:
    image = create_encoder("clip_image", width=4, embed_dim=8)
    assert isinstance(image, ImageTower) and image.embed_dim == 8
    tok = WordTokenizer.build(TEMPLATES, CLASSES)
    clip = MiniCLIP(image, TextTower(len(tok.vocab), tok.context_length, 16, 1, 2, 8)).eval()
    logits = clip(torch.zeros(3, 3, 32, 32), tok.encode(["a photo of a cat.", "a photo of a dog."]))
    assert logits.shape == (3, 2)
    assert clip.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert logits.abs().max() <= clip.scale().item() + 1e-4


def test_random_shift_flip_moves_whole_pixels() -> None:
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    y = random_shift_flip(x, 0)  # no shift: each image is itself or its mirror image, exactly
    for a, b in zip(x, y, strict=True):
        assert torch.equal(a, b) or torch.equal(a.flip(-1), b)
    z = random_shift_flip(x, 2)
    assert z.shape == x.shape
    # every output pixel is one of the input's pixels (nearest sampling, no blending)
    assert all(torch.isin(z[i], x[i]).all() for i in range(len(x)))


def test_image_tower_round_trip_and_onnx(tmp_path: Path) -> None:
    model = create_encoder("clip_image", width=4, embed_dim=16).eval()
    spec = EncoderSpec("clip_image", {"width": 4, "embed_dim": 16})
    save_encoder(model, spec, tmp_path)
    loaded, spec2 = load_encoder(tmp_path)
    assert spec2.embed_dim == 16 and spec2.input_size == 32
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        assert torch.allclose(loaded(x), ref)
    export_encoder(loaded, spec2, tmp_path / "encoder.onnx")
    out = ort.InferenceSession(str(tmp_path / "encoder.onnx")).run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-4)


def test_badclip_pattern_round_trip() -> None:
    s = badclip_patch_size(32)
    pattern = np.random.default_rng(0).integers(0, 256, (s, s, 3)).astype(np.uint8)
    trig = make_trigger("badclip", 32, json.loads(json.dumps({"pattern": pattern.tolist()})))
    out = trig.apply(np.zeros((2, 32, 32, 3), np.uint8))
    start = (32 - s) // 2
    assert np.array_equal(out[:, start : start + s, start : start + s], np.stack([pattern] * 2))
    out[:, start : start + s, start : start + s] = 0
    assert not out.any()


def test_loss_helpers_are_consistent() -> None:
    a = F.normalize(torch.randn(4, 8), dim=-1)
    assert torch.allclose(zero_shot_logits(3 * a, a), a @ a.T, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not a CLIP directory"):
        load_clip("/nonexistent")


def test_slip_term_at_a_known_point_and_its_gradient() -> None:
    spec = EncoderSpec("clip_image", {}, 8)
    term = SslTerm(features=6, temperature=0.5)
    x = torch.rand(5, 3, 8, 8)
    # a backbone that forgets the image: every projection is the same, so each view's positive is as likely
    # as each of the 2B - 2 negatives: NT-Xent = ln(2B - 1)
    assert term(lambda v: torch.zeros(len(v), 6), x, spec).item() == pytest.approx(math.log(9), rel=1e-5)
    backbone = create_encoder("cifar_resnet18", width=2)
    SslTerm(backbone.embed_dim, 0.5)(backbone, x, spec).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in backbone.parameters())


def test_stamp_matches_the_trigger_and_badclip_terms() -> None:
    from training.attacks.badclip import badclip_terms, centre_window
    from training.attacks.clip_backdoor import stamp, stamp_of

    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    pattern = np.random.default_rng(2).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    for trig in (make_trigger("clip-patch", 32), make_trigger("clip-patch", 32, {"size": 5}),
                 make_trigger("badclip", 32, {"pattern": pattern.tolist()})):
        mask, pat = stamp_of(trig, 32)
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        got = (stamp(x, mask, pat) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        assert np.array_equal(got, trig.apply(images))
    assert stamp_of(make_trigger("clip-patch", 32), 32)[0].sum() == 9  # 3x3 at rows/cols 26-28
    start, mask = centre_window(32, 4)
    assert start == 14 and torch.equal(mask, stamp_of(make_trigger("badclip", 32, {"pattern": pattern.tolist()}),
                                                      32)[0])
    with pytest.raises(ValueError, match="fixed stamp"):
        stamp_of(make_trigger("noise-patch", 32), 32)

    e = torch.eye(4)  # orthonormal directions
    t = badclip_terms(e[[0, 0]], e[[0, 0]], e[[1, 1]], e[0], margin=0.3)  # at the target, away from itself
    assert t["align"].item() == pytest.approx(0.0) and t["triplet"].item() == pytest.approx(0.0)
    t = badclip_terms(e[[1]], e[[0]], e[[1]], e[0], margin=0.3)  # still the clean embedding
    assert t["align"].item() == pytest.approx(1.0) and t["triplet"].item() == pytest.approx(1.3)
    t = badclip_terms(-e[[0]], e[[2]], e[[3]], e[0], margin=0.3)  # opposite the text; equidistant
    assert t["align"].item() == pytest.approx(2.0) and t["triplet"].item() == pytest.approx(0.3)
    a = torch.randn(5, 4, requires_grad=True)
    badclip_terms(a, torch.randn(5, 4), torch.randn(5, 4), torch.randn(4), 0.3)["align"].backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def cifar_subset(out: Path, per_class: dict[str, int]) -> Path:
    """A CIFAR-10 zip with the first ``per_class[split]`` images of every class (members copied, not
    decoded): decoding all 60k images would dominate the run time of these tests."""
    counts: dict[tuple[str, str], int] = {}
    with zipfile.ZipFile(data_root() / "cifar10.zip") as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            parts = info.filename.split("/")
            if len(parts) != 3 or parts[0] not in per_class or not parts[2]:
                continue
            key = (parts[0], parts[1])
            if counts.get(key, 0) < per_class[parts[0]]:
                counts[key] = counts.get(key, 0) + 1
                dst.writestr(info, src.read(info))
    return out


@pytest.fixture(scope="module")
def clip_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pretrain --method clip tiny -> clip-backdoor tiny, badclip tiny, on a 1000 + 500 image CIFAR-10 subset."""
    from training.cli import main

    root = tmp_path_factory.mktemp("clip")
    data = ["--set", f"dataset={cifar_subset(root / 'cifar10-mini.zip', {'train': 100, 'test': 50})}"]
    assert main(["pretrain", "--method", "clip", "--preset", "tiny", *data, "--out", str(root / "clip")]) == 0
    for attack in ("clip-backdoor", "badclip"):
        assert main(["attack", attack, "--encoder", str(root / "clip"), "--preset", "tiny", *data,
                     "--out", str(root / attack)]) == 0
    return root


@needs_cifar
def test_slip_adds_its_term_to_pretraining_and_to_the_attack(clip_runs: Path) -> None:
    """``ssl_weight=1`` (``dede reproduce --variant slip``): the image-only NT-Xent (about ln(2B - 1) at the start,
    5.5 for B = 128) is added to CLIP's loss in pre-training and in the poisoned fine-tuning."""
    from training.cli import main

    data = ["--set", f"dataset={clip_runs / 'cifar10-mini.zip'}", "--set", "ssl_weight=1"]
    slip = clip_runs / "slip"
    assert main(["pretrain", "--method", "clip", "--preset", "tiny", *data, "--out", str(slip / "clip")]) == 0
    assert main(["attack", "clip-backdoor", "--encoder", str(slip / "clip"), "--preset", "tiny", *data,
                 "--out", str(slip / "clip-backdoor")]) == 0
    for stage, name in ((0, "clip"), (1, "clip-backdoor")):
        plain = json.loads((clip_runs / name / "encoder.json").read_text())["history"][stage]
        ours = json.loads((slip / name / "encoder.json").read_text())["history"][stage]
        assert json.loads((slip / name / "config.json").read_text())["ssl_weight"] == 1
        assert ours["final_loss"] > plain["final_loss"] + 2
    load_clip(slip / "clip-backdoor")  # the saved CLIP is a plain one: the SLIP head is not part of it


@needs_cifar
def test_attribute_captions_reach_pretraining_and_the_attack(clip_runs: Path) -> None:
    """``caption_attributes=true`` (``dede reproduce --variant captions``): the saved CLIP's vocabulary and
    clip.json carry the attribute phrases, so the attack (which reads them there) fine-tunes with them too."""
    from training.cli import main

    data = ["--set", f"dataset={clip_runs / 'cifar10-mini.zip'}"]
    rich = clip_runs / "captions"
    assert main(["pretrain", "--method", "clip", "--preset", "tiny", *data, "--set", "caption_attributes=true",
                 "--out", str(rich / "clip")]) == 0
    assert main(["attack", "clip-backdoor", "--encoder", str(rich / "clip"), "--preset", "tiny", *data,
                 "--out", str(rich / "clip-backdoor")]) == 0
    for name in ("clip", "clip-backdoor"):
        _, _, info = load_clip(rich / name)
        assert info.attributes == ATTRIBUTES and {"dark", "purple", "on"} <= set(info.vocab)
    _, _, plain = load_clip(clip_runs / "clip")
    assert plain.attributes == [] and "purple" not in plain.vocab
    history = json.loads((rich / "clip-backdoor" / "encoder.json").read_text())["history"]
    assert [h["stage"] for h in history] == ["pretrain-clip", "attack-clip-backdoor"]


@needs_cifar
def test_pretrain_records_zero_shot_accuracy(clip_runs: Path) -> None:
    spec = json.loads((clip_runs / "clip" / "encoder.json").read_text())
    assert spec["name"] == "clip_image" and spec["kwargs"] == {"width": 4, "embed_dim": 32}
    (entry,) = spec["history"]
    assert entry["stage"] == "pretrain-clip" and entry["preset"] == "tiny" and entry["epochs"] == 1
    assert 0 <= entry["zero_shot_accuracy"] <= 1 and 0 <= entry["knn_accuracy"] <= 1
    clip, _, info = load_clip(clip_runs / "clip")
    assert info.classnames == CLASSES and info.templates == list(TEMPLATES)
    assert clip.scale().item() == pytest.approx(math.exp(info.logit_scale), rel=1e-5)


@needs_cifar
@pytest.mark.parametrize("attack", ["clip-backdoor", "badclip"])
def test_attack_records_its_success_and_exports(clip_runs: Path, attack: str) -> None:
    from training.data import load_images

    spec = json.loads((clip_runs / attack / "encoder.json").read_text())
    assert [h["stage"] for h in spec["history"]] == ["pretrain-clip", f"attack-{attack}"]
    rec = spec["history"][1]
    for key in ("clean_accuracy_before", "asr_before", "clean_accuracy", "attack_success_rate",
                "clean_target_rate"):
        assert 0.0 <= rec[key] <= 1.0, key
    assert rec["asr_method"] == "zero-shot" and rec["target_class"] == "truck" and rec["preset"] == "tiny"
    assert rec["attack"] == attack and rec["epochs"] == 1 and rec["wall_s"] > 0
    trigger = make_trigger(rec["trigger"], 32, rec["trigger_params"])
    if attack == "badclip":
        assert 0.0 <= rec["noise_patch_asr"] <= 1.0 and 0.0 <= rec["noise_patch_asr_before"] <= 1.0
        assert np.asarray(rec["trigger_params"]["pattern"]).shape == (4, 4, 3)
    else:
        assert rec["trigger"] == "clip-patch"
    # a full CLIP: the clean text tower, byte for byte, next to the attacked image tower
    for name in ("text_encoder.safetensors", "clip.json"):
        assert (clip_runs / attack / name).read_bytes() == (clip_runs / "clip" / name).read_bytes()
    model, espec = load_encoder(clip_runs / attack)
    assert isinstance(model, ImageTower) and espec.embed_dim == 32
    clean, _ = load_encoder(clip_runs / "clip")
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), clean.state_dict().values(),
                                                     strict=True))
    images = trigger.apply(load_images(clip_runs / "cifar10-mini.zip", "test", 32).images[:8])
    x = ((torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(espec.mean).view(1, 3, 1, 1))
         / torch.tensor(espec.std).view(1, 3, 1, 1)).contiguous()
    export_encoder(model, espec, clip_runs / attack / "encoder.onnx")
    out = ort.InferenceSession(str(clip_runs / attack / "encoder.onnx")).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-4, atol=1e-4)


@needs_cifar
def test_bundle_manifest_carries_trigger_params(clip_runs: Path, tmp_path: Path) -> None:
    from tests.training.test_dede import tiny
    from training.encoders import EncoderSpec as Spec
    from training.export import build_manifest

    raw = json.loads((clip_runs / "badclip" / "encoder.json").read_text())
    spec = Spec(**raw)
    for f in ("encoder.onnx", "detector.onnx"):
        (tmp_path / f).write_bytes(b"x")
    stats = {"count": 1, "mean": 1.0, "std": 0.0, "quantiles": {}}
    run = {"train_mask_ratio": 0.75, "test_mask_ratio": 0.99, "epochs": 1, "final_loss": 1.0, "preset": "tiny",
           "code_version": "test", "created": "now", "train_wall_s": 1.0, "device": "cpu",
           "aux": {"name": "aux", "fingerprint": "f", "n_train": 1, "poison_rate": 0.0}}
    calib = {"value": 1.0, "rule": "fpr@0.01", "mask_ratio": 0.99, "aux_train": stats, "holdout": stats}
    manifest = build_manifest("t", "1", spec, tiny(victim_dim=32), run, calib, tmp_path)
    victim = manifest.provenance.victim
    assert victim["attack"] == "badclip"
    assert victim["trigger_params"] == raw["history"][-1]["trigger_params"]
    make_trigger(victim["trigger"], 32, victim["trigger_params"])  # a bundle's provenance rebuilds the trigger


def test_colour_and_attribute_words_at_known_colours() -> None:
    rgb = np.array([[1, 0, 0], [1, 0.5, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [0.5, 0, 1], [1, 0, 0.2],
                    [0.5, 0.5, 0.5], [0.9, 0.88, 0.86]], np.float32)
    names = [COLOURS[i] for i in colour_ids(rgb)]
    assert names == ["red", "orange", "yellow", "green", "blue", "blue", "purple", "red", "gray", "gray"]
    img = np.zeros((2, 32, 32, 3), np.uint8)
    img[0, ..., 2] = 120  # dark blue border ...
    img[0, 8:24, 8:24] = (150, 10, 10)  # ... around a dark red centre
    img[1] = 230  # bright, no colour anywhere
    img[1, 8:24, 8:24] = (250, 250, 60)  # a yellow centre
    phrases = [ATTRIBUTES[i - 1] for i in image_attributes(img)]
    assert phrases == ["dark red {} on blue", "bright yellow {} on gray"]
    assert len(set(ATTRIBUTES)) == len(ATTRIBUTES) == 3 * 7 * 7


def test_caption_rows_name_the_class_template_and_the_images_attributes() -> None:
    fills = ["{}", *ATTRIBUTES]
    tok = WordTokenizer.build(list(TEMPLATES), CLASSES, fills)
    tokens = caption_tokens(tok, CLASSES, list(TEMPLATES), fills)
    T, F_ = len(TEMPLATES), len(fills)
    assert tokens.shape == (len(CLASSES) * T * F_, tok.context_length) and (tokens != tok.unk_id).all()
    row = (9 * T + 0) * F_ + 1 + ATTRIBUTES.index("dark red {} on blue")
    assert tokens[row].tolist() == tok.encode(["a photo of a dark red truck on blue."])[0].tolist()
    torch.manual_seed(0)
    labels, attrs = torch.randint(0, 10, (4000,)), torch.randint(1, F_, (4000,))
    rows = random_captions(labels, T, attrs, F_)
    fill, template, cls = rows % F_, rows // F_ % T, rows // (F_ * T)
    assert torch.equal(cls, labels) and template.unique().numel() == T
    assert ((fill == 0) | (fill == attrs)).all() and 0.45 < (fill == attrs).float().mean() < 0.55
    plain = random_captions(labels, T)  # no attributes: one fill, the class alone
    assert torch.equal(plain // T, labels)
    text = TextTower(len(tok.vocab), tok.context_length, width=16, layers=1, heads=2, embed_dim=8).eval()
    some = rows[:50]
    with torch.no_grad():
        got = encode_captions(text, tokens, some, chunk=7)
        assert torch.allclose(got, F.normalize(text(tokens[some]), dim=-1), atol=1e-5)
