"""Downstream defence: the classifier, the poisoned training set, the filter rule, and a run on the demo bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CONTROL_BUNDLE, DEMO_BUNDLE, needs_cifar
from training.config import resolve_config
from training.data import ImageSet, load_images
from training.evaluation.downstream import (
    DOWNSTREAM_PRESETS,
    Detector,
    DownstreamClassifier,
    DownstreamConfig,
    DownstreamSplits,
    FittedFilter,
    TrainedFilter,
    downstream_grid,
    downstream_metrics,
    load_splits,
    poison_indices,
    poison_training_set,
    target_of,
    train_set_name,
)
from training.evaluation.downstream_bundle import BundleModels, bundle_attack, torch_embed_fn
from training.triggers import make_trigger

TRIGGER = make_trigger("badencoder", 32)  # white 10x10 square at rows/cols 21-30
TIMING = ("embed_s", "score_s", "train_s")


def test_classifier_shapes_and_official_layout() -> None:
    model = DownstreamClassifier(128, 43)
    assert [m.out_features for m in (model.fc1, model.fc2, model.fc3)] == [512, 256, 43]
    assert model.dropout.p == 0.5
    assert model(torch.randn(5, 128)).shape == (5, 43)


def test_config_presets_and_targets() -> None:
    cfg = resolve_config(DownstreamConfig, DOWNSTREAM_PRESETS, "cpu", overrides=["targets=gtsrb:14_stop"])
    assert cfg.preset == "cpu" and cfg.epochs == DOWNSTREAM_PRESETS["cpu"]["epochs"] and cfg.lr == 0.01
    assert target_of(cfg, "gtsrb") == "14_stop"
    with pytest.raises(ValueError, match="no target class for dataset 'cifar10'"):
        target_of(cfg, "cifar10")
    assert target_of(DownstreamConfig(), "cifar10") == "truck"
    assert train_set_name("poisoned", cfg) == "poisoned-1%" and train_set_name("clean", cfg) == "clean"
    with pytest.raises(ValueError, match="unknown config key"):
        resolve_config(DownstreamConfig, DOWNSTREAM_PRESETS, "tiny", overrides=["epoch=3"])


def test_poisoning_stamps_exactly_one_percent_with_target_label() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 200, (1000, 32, 32, 3), dtype=np.uint8)  # never white: stamps are visible
    labels = np.repeat(np.arange(10), 100)
    out, new_labels, idx = poison_training_set(images, labels, TRIGGER, 9, 0.01, np.random.default_rng(1))
    assert len(idx) == 10 and len(np.unique(idx)) == 10
    assert np.all(labels[idx] != 9) and np.all(new_labels[idx] == 9)  # dirty-label: relabelled non-target
    stamped = np.flatnonzero((out != images).any(axis=(1, 2, 3)))
    np.testing.assert_array_equal(stamped, idx)
    np.testing.assert_array_equal(out[idx], TRIGGER.apply(images[idx]))
    np.testing.assert_array_equal(np.delete(new_labels, idx), np.delete(labels, idx))
    assert images.max() < 255 and labels.max() == 9  # inputs untouched
    # clean-label: target-class images are stamped and keep their label
    clean_idx = poison_indices(labels, 9, 0.01, np.random.default_rng(1), dirty_label=False)
    assert len(clean_idx) == 10 and np.all(labels[clean_idx] == 9)
    with pytest.raises(ValueError, match="cannot poison"):
        poison_indices(labels, 9, 0.2, np.random.default_rng(1), dirty_label=False)


def test_filter_rule_on_hand_made_flags() -> None:
    labels = np.array([0, 1, 2, 0])
    pred_clean = np.array([0, 1, 0, 0])  # 3 of 4 correct
    flagged_clean = np.array([True, False, False, False])  # a correct one is rejected
    pred_trig = np.array([2, 2, 2, 1])  # 3 of 4 hit the target
    flagged_trig = np.array([True, True, False, False])
    m = downstream_metrics(pred_clean, labels, flagged_clean, pred_trig, flagged_trig, target=2)
    assert m["ca"] == pytest.approx(2 / 4)  # the rejected clean input counts as a miss
    assert m["ca_kept"] == pytest.approx(2 / 3)  # the official code's CA, on passed inputs only
    assert m["asr"] == pytest.approx(1 / 4)  # rejected triggered inputs are not attack successes
    assert (m["ca_unfiltered"], m["asr_unfiltered"]) == (0.75, 0.75)
    assert (m["test_clean_flagged"], m["test_triggered_flagged"]) == (1, 2)


def _synthetic_splits(n_train: int = 600, n_test: int = 150) -> DownstreamSplits:
    """3 classes told apart by brightness (40, 100, 160 + noise, never white)."""
    rng = np.random.default_rng(0)

    def make(n: int) -> ImageSet:
        y = np.arange(n) % 3
        x = np.clip(40 + 60 * y[:, None, None, None] + rng.integers(-10, 10, (n, 32, 32, 3)), 0, 200)
        return ImageSet(x.astype(np.uint8), y.astype(np.int64), ["a", "b", "c"])

    return DownstreamSplits("synthetic", make(n_train), make(n_test), "c")


def _backdoored_embed(images: np.ndarray) -> np.ndarray:
    """A 'backdoored encoder': the class's one-hot from brightness; a white trigger region maps to class c."""
    cls = np.clip(np.round((images[:, :20, :20].mean(axis=(1, 2, 3)) - 40) / 60), 0, 2).astype(int)
    cls[(images[:, 21:31, 21:31] == 255).all(axis=(1, 2, 3))] = 2
    return np.eye(3, dtype=np.float32)[cls] + 0.05 * np.random.default_rng(len(images)).standard_normal(
        (len(images), 3)).astype(np.float32)


def _trigger_score(images: np.ndarray) -> np.ndarray:
    return (images[:, 21:31, 21:31] == 255).mean(axis=(1, 2, 3)).astype(np.float32)  # (N,) 1 = stamped


def _darkness_score(images: np.ndarray) -> np.ndarray:
    return -images.mean(axis=(1, 2, 3)).astype(np.float32)  # flags class-a images (the darkest)


def test_grid_filters_training_and_test_sets() -> None:
    cfg = DownstreamConfig(epochs=10, batch_size=100, hidden=[32, 16], seed=3)
    detectors = {"oracle": Detector(_trigger_score, 0.5), "dark": Detector(_darkness_score, -70.0)}
    recs = downstream_grid(_backdoored_embed, TRIGGER, "badencoder", detectors, [_synthetic_splits()], cfg,
                           log=lambda s: None)
    by = {(r["train_set"], r["detector"]): r for r in recs}
    assert set(by) == {(t, d) for t in ("poisoned-1%", "clean") for d in ("none", "oracle", "dark")}
    none, oracle, dark = by["poisoned-1%", "none"], by["poisoned-1%", "oracle"], by["poisoned-1%", "dark"]
    assert none["n_poison_train"] == 6 and none["n_train"] == 600 and none["n_train_removed"] == 0
    assert none["n_test_clean"] == 150 and none["n_test_triggered"] == 100  # non-target test images only
    assert none["ca"] > 0.95 and none["asr"] > 0.95  # the backdoor fires without a defence
    # a perfect detector removes exactly the stamped training images and rejects every triggered test input
    assert oracle["n_train_removed"] == oracle["n_poison_removed"] == 6
    assert (none["threshold"], oracle["threshold"]) == (None, 0.5)
    assert oracle["test_triggered_flagged"] == 100 and oracle["asr"] == 0.0 and oracle["asr_unfiltered"] > 0.95
    assert oracle["ca"] == none["ca"] and by["clean", "oracle"]["n_train_removed"] == 0
    # a detector that rejects the darkest class: those training images are gone, those test inputs are misses
    assert dark["n_train_removed"] == 200 and dark["n_poison_removed"] < 6  # stamped class-a images too
    assert dark["test_clean_flagged"] == 50 and dark["ca"] == pytest.approx(100 / 150, abs=0.02)
    assert dark["ca_kept"] > 0.95
    with pytest.raises(ValueError, match="unknown train set"):
        downstream_grid(_backdoored_embed, TRIGGER, "x", {}, [_synthetic_splits()], DownstreamConfig(train_sets=["x"]))
    cfg.train_sets = ["poisoned"]
    again = downstream_grid(_backdoored_embed, TRIGGER, "badencoder", detectors, [_synthetic_splits()], cfg,
                            log=lambda s: None)
    strip = [{k: v for k, v in r.items() if k not in TIMING} for r in recs if r["train_set"] != "clean"]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING} for r in again]  # deterministic
    with pytest.raises(ValueError, match="reserved"):
        downstream_grid(_backdoored_embed, TRIGGER, "x", {"none": detectors["oracle"]}, [_synthetic_splits()], cfg)


def test_bundle_models_use_the_service_scoring_path(example_images: np.ndarray) -> None:
    models = BundleModels(DEMO_BUNDLE, threads=1, providers=("CPUExecutionProvider",))
    emb = models.embed(example_images)
    assert emb.shape == (len(example_images), models.manifest.encoder.embed_dim)
    service = models.scorer.score(example_images)
    np.testing.assert_allclose(models.score(example_images), service.scores, rtol=1e-4)
    assert len(models._memo) == 1  # embed then score: one ONNX pass
    det = models.detector()
    assert det.threshold == service.threshold
    np.testing.assert_array_equal(det.flags(service.scores), service.flags)
    assert models.detector("paper-1.5x").threshold < det.threshold
    with pytest.raises(ValueError, match="no threshold for rule"):
        models.detector("fpr@0.5")
    attack = bundle_attack(DEMO_BUNDLE)
    assert (attack.name, attack.target_class, attack.trigger) == ("badencoder", "truck", TRIGGER)
    assert bundle_attack(CONTROL_BUNDLE).name == "none"


@needs_cifar
def test_demo_bundle_on_cifar10_dede_cuts_the_attack() -> None:
    """The committed backdoored demo bundle on real CIFAR-10 images. To stay fast, 1,000 training and 300 test
    images are drawn from the (quicker to decode) test split; ``load_splits`` is tested on its own below."""
    cifar = load_images("cifar10", "test", 32)
    idx = np.random.default_rng(0).permutation(len(cifar))
    splits = DownstreamSplits("cifar10", cifar.subset(idx[:1000]), cifar.subset(idx[1000:1300]), "truck")
    cfg = resolve_config(DownstreamConfig, DOWNSTREAM_PRESETS, "tiny", overrides=["train_sets=poisoned"])
    models = BundleModels(DEMO_BUNDLE, threads=1, providers=("CPUExecutionProvider",))
    attack = bundle_attack(DEMO_BUNDLE)
    # filtering a training set: dropping 1% of clean images costs little, so the calibrated fpr@0.01 point, not the
    # deployed per-image alert (fpr@0.001), as the committed downstream study used
    none, dede = downstream_grid(models.embed, attack.trigger, attack.name, {"dede": models.detector("fpr@0.01")},
                                 [splits], cfg)
    assert (none["detector"], dede["detector"]) == ("none", "dede")
    assert none["n_poison_train"] == 10 and none["n_test_clean"] == 300
    assert none["ca"] > 0.25  # well above chance (0.1) with 1000 training images
    assert none["asr"] > 0.8  # the demo backdoor fires through a downstream classifier
    assert dede["asr"] < none["asr"] - 0.4 and dede["n_poison_removed"] >= 5
    assert dede["ca"] > none["ca"] - 0.1


def test_load_splits_subsamples_and_names_the_target(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 6)):
        for cls in ("cat", "truck"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    cfg = DownstreamConfig(max_train=10, max_test=5, targets=[f"{root}:truck"])
    a, b = load_splits(str(root), cfg), load_splits(str(root), cfg)
    assert (len(a.train), len(a.test), a.target) == (10, 5, 1)
    np.testing.assert_array_equal(a.train.images, b.train.images)  # seeded
    cfg.targets = [f"{root}:dog"]
    with pytest.raises(ValueError, match="unknown target class 'dog'"):
        _ = load_splits(str(root), cfg).target

def test_trained_filter_is_fitted_on_each_training_set_it_filters() -> None:
    """A trained filter (ASSET-like) is fitted on each training set as the user holds it (relabelled poison
    included) with a trusted clean subset, flags that set, and scores the test inputs with the labels the
    downstream classifier predicts for them (the target, for triggered inputs the backdoor hijacks)."""
    fits: list[tuple[int, int, int, int, bool]] = []
    seen: list[np.ndarray] = []  # the labels the test inputs are scored with

    def fit(images: np.ndarray, labels: np.ndarray, n_classes: int, trusted: np.ndarray) -> FittedFilter:
        stamped = _trigger_score(images) > 0.5
        fits.append((len(images), int(stamped.sum()), n_classes, len(trusted), bool((labels[stamped] == 2).all())))
        def score(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            seen.append(y)
            return _trigger_score(x)

        return FittedFilter(stamped, score, 0.5, {"fitted_on": len(images)})

    cfg = DownstreamConfig(epochs=10, batch_size=100, hidden=[32, 16], trusted=50)
    splits = _synthetic_splits()
    recs = downstream_grid(_backdoored_embed, TRIGGER, "badencoder", {"trained": TrainedFilter(fit)}, [splits],
                           cfg, log=lambda s: None, baseline=False)
    assert fits == [(600, 6, 3, 50, True), (600, 0, 3, 50, True)]  # poisoned set (relabelled to 2), clean set
    r = {(r["train_set"], r["detector"]): r for r in recs}
    assert set(r) == {("poisoned-1%", "trained"), ("clean", "trained")}  # no unfiltered baseline asked for
    assert r["poisoned-1%", "trained"]["n_poison_removed"] == r["poisoned-1%", "trained"]["n_train_removed"] == 6
    assert r["clean", "trained"]["n_train_removed"] == 0 and r["clean", "trained"]["fitted_on"] == 600
    assert r["clean", "trained"]["trusted_images"] == 50
    assert r["poisoned-1%", "trained"]["test_triggered_flagged"] == 100
    assert r["poisoned-1%", "trained"]["test_clean_flagged"] == 0 and r["poisoned-1%", "trained"]["threshold"] == 0.5
    assert [len(y) for y in seen] == [150, 100, 150, 100]  # per training set: clean test images, triggered copies
    assert (seen[0] == splits.test.labels).mean() > 0.95  # the classifier's predictions, not the ground truth:
    assert (seen[1] == 2).mean() > 0.95  # the backdoor sends the triggered copies to the target


def test_asset_filter_trains_on_a_capped_subset_and_scores_every_image(tmp_path: Path) -> None:
    """ASSET as a downstream filter, for real at the tiny preset: trained on ``max_train`` images of the set it
    filters, it scores all of them and, with the same offset classifier and threshold, the labelled test inputs."""
    from training.encoders import EncoderSpec, create_encoder, save_encoder
    from training.research.downstream import asset_filter

    torch.manual_seed(0)
    save_encoder(create_encoder("cifar_resnet18", width=4), EncoderSpec("cifar_resnet18", {"width": 4}), tmp_path)
    splits = _synthetic_splits(n_train=240, n_test=30)
    fitted = asset_filter(tmp_path, "badencoder", "tiny", max_train=100).fit(
        splits.train.images, splits.train.labels, 3, splits.train.images[:40])
    assert fitted.train_flags.shape == (240,) and fitted.train_flags.dtype == bool
    assert np.isfinite(fitted.threshold) and fitted.info["asset_train_images"] == 100
    assert fitted.info["asset_epochs"] == 2  # the tiny preset's schedule
    scores = fitted.score_fn(splits.test.images, splits.test.labels)
    assert scores.shape == (30,) and np.isfinite(scores).all() and scores.min() >= 0  # cross-entropies


def test_torch_embed_fn_matches_embed() -> None:
    from training.encoders import EncoderSpec, create_encoder, embed

    torch.manual_seed(0)
    model, spec = create_encoder("cifar_resnet18", width=4).eval(), EncoderSpec("cifar_resnet18", {"width": 4})
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    out = torch_embed_fn(model, spec)(images)
    assert out.shape == (5, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out, embed(model, images, spec).numpy(), rtol=1e-5)
