"""CTRL: clean-label poisoning of SimCLR's training set, its optimiser recipe, and DeDe's CTRL handling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import needs_cifar
from training.auxset import fill_with_noise
from training.pretrain.simclr import PretrainConfig, make_optimizer, poison_clean_label
from training.triggers import make_trigger


def test_poison_clean_label_stamps_exactly_the_rate_all_from_the_target_class() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(10), 100)
    out, idx = poison_clean_label(images, labels, target=9, rate=0.01, trigger=make_trigger("ctrl", 32), seed=0)
    assert len(idx) == 10 and (labels[idx] == 9).all()
    changed = np.flatnonzero((out != images).any(axis=(1, 2, 3)))
    assert set(changed) == set(idx)  # nothing else touched, the input untouched
    assert not np.shares_memory(out, images)
    with pytest.raises(ValueError, match="target-class images"):
        poison_clean_label(images, labels, target=9, rate=0.2, trigger=make_trigger("ctrl", 32), seed=0)


def test_warmup_then_cosine_learning_rate() -> None:
    cfg = PretrainConfig(optimizer="sgd", lr=0.1, schedule="cosine", warmup_epochs=1, epochs=3)
    p = torch.nn.Parameter(torch.zeros(1))
    opt, sched = make_optimizer(cfg, [p], steps_per_epoch=10)
    assert isinstance(opt, torch.optim.SGD)
    lrs = []
    for _ in range(30):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)  # linear warm-up over 10 steps
    assert lrs[10] == pytest.approx(0.1) and lrs[20] == pytest.approx(0.05, rel=1e-3)  # cosine: half way
    assert lrs[29] < 0.002
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer(PretrainConfig(optimizer="lamb"), [p], 10)


def test_fill_with_noise_replaces_exactly_the_images_outside_the_norm_ball() -> None:
    images = torch.zeros(100, 4, 4, 3, dtype=torch.uint8)
    emb = torch.zeros(100, 8)
    emb[:, 0] = torch.arange(100).float()  # norms 0..99
    n = fill_with_noise(images, emb, 0.95, seed=0)
    assert n == 5  # norms above the 0.95 quantile (94.05): 95, 96, 97, 98, 99
    assert images[:95].sum() == 0 and images[95:].float().std() > 30


@needs_cifar
def test_ctrl_attack_tiny_records_its_success_and_control(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from training.cli import main

    assert main(["pretrain", "--preset", "tiny", "--out", str(tmp_path / "clean")]) == 0
    assert main(["attack", "ctrl", "--encoder", str(tmp_path / "clean"), "--preset", "tiny", "--set", "epochs=2",
                 "--set", "asr_every=1", "--out", str(tmp_path / "ctrl"), "--metrics",
                 str(tmp_path / "doc" / "ctrl.json")]) == 0
    spec = json.loads((tmp_path / "ctrl" / "encoder.json").read_text())
    pre, attack = spec["history"]
    assert pre["stage"] == "pretrain-simclr" and pre["n_poisoned"] == 5  # 1% of the tiny preset's 512 images
    assert attack["stage"] == "attack-ctrl" and attack["trigger"] == "ctrl" and attack["epochs"] == 2
    for key in ("attack_success_rate", "clean_accuracy", "asr_before", "clean_accuracy_before"):
        assert 0.0 <= attack[key] <= 1.0
    # the attack success after each epoch; the last point is the final measurement
    assert [p["epoch"] for p in attack["asr_curve"]] == [1, 2]
    assert attack["asr_curve"][-1]["asr"] == attack["attack_success_rate"]
    assert json.loads((tmp_path / "doc" / "ctrl.json").read_text()) == {
        k: v for k, v in attack.items() if k != "stage"}
    config = json.loads((tmp_path / "ctrl" / "config.json").read_text())
    assert config["poison_trigger"] == "ctrl" and config["poison_rate"] == 0.01
    # measuring along the way leaves the training as it was: the same weights without it
    assert main(["attack", "ctrl", "--preset", "tiny", "--set", "epochs=2", "--out", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "encoder.json").read_text())["history"][-1]
    assert "asr_curve" not in plain and plain["attack_success_rate"] == attack["attack_success_rate"]
    a, b = (load_file(str(tmp_path / d / "encoder.safetensors")) for d in ("ctrl", "plain"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
