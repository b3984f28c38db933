"""The two baselines: ASSET (robust statistics, offset procedure) and DECREE (trigger inversion).

Everything here runs on synthetic images and small fixed encoders whose behaviour is known, so the tests are
about the detectors' logic, not about training an encoder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from training.baselines.asset import (
    ASSET_PRESETS,
    AssetConfig,
    adjusted_outlyingness,
    asset_flags,
    asset_threshold,
    medcouple,
    run_asset,
)
from training.baselines.decree import (
    DECREE_PRESETS,
    DecreeConfig,
    LambdaSchedule,
    decree_applicable,
    decree_scores,
    decree_threshold,
    invert_trigger,
    squash,
    stamp,
    unsquash,
)
from training.config import resolve_config
from training.encoders import EncoderSpec
from training.triggers import PatchTrigger, make_trigger


def _noise(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


# --- medcouple and adjusted outlyingness ---------------------------------------------------------------


def _medcouple_brute(x: np.ndarray) -> float:
    """The definition, pair by pair, for samples without ties (a lone median value pairs with itself: 0)."""
    x = np.sort(x)
    m = np.median(x)
    h = []
    for xi in x[x <= m]:
        for xj in x[x >= m]:
            h.append(0.0 if xi == xj else ((xj - m) - (m - xi)) / (xj - xi))
    return float(np.median(h))


@pytest.mark.parametrize("n", [15, 16, 41])
def test_medcouple_matches_the_pairwise_definition(n: int) -> None:
    x = np.random.default_rng(n).gamma(2.0, size=n)
    assert medcouple(x) == pytest.approx(_medcouple_brute(x), abs=1e-12)


def test_medcouple_is_zero_for_symmetric_samples_and_odd_under_reflection() -> None:
    assert medcouple(np.array([-3.0, -1, 0, 1, 3])) == 0.0
    assert medcouple(np.array([1.0, 2, 2, 2, 3])) == 0.0  # ties at the median use the special kernel
    x = np.random.default_rng(0).exponential(size=200)
    assert medcouple(x) > 0.1  # right-skewed
    assert medcouple(-x) == pytest.approx(-medcouple(x))


def test_adjusted_outlyingness_flags_an_obvious_outlier_only() -> None:
    x = np.r_[np.random.default_rng(0).normal(size=200), 40.0]
    ao = adjusted_outlyingness(x)
    assert ao.shape == (201,)
    assert ao[-1] > 2 and (ao[:-1] <= 2).all()
    assert adjusted_outlyingness(np.array([1.0, 2, 3, 4, 5]))[2] == 0.0  # the median itself
    assert np.allclose(adjusted_outlyingness(torch.tensor(x)), ao)  # tensors are accepted


def test_asset_threshold_is_get_t_and_flags_a_high_group() -> None:
    rng = np.random.default_rng(0)
    scores = np.r_[rng.normal(2.3, 0.1, 900), rng.normal(8.0, 0.5, 100)]
    lower = scores[scores <= np.quantile(scores, 0.5, method="lower")]
    mu, sigma = lower.mean(), math.sqrt(lower.var() + 1e-6)
    expected = mu + sigma * math.sqrt(-2 * math.log(1e-6) * sigma * math.sqrt(2 * math.pi))
    assert asset_threshold(scores) == pytest.approx(expected)
    assert asset_flags(scores)[900:].all()
    intended = asset_flags(scores, as_written=False)  # the "density = eps" point: far fewer false alarms
    assert intended[900:].all() and intended[:900].mean() < 0.01


# --- ASSET --------------------------------------------------------------------------------------------


def test_asset_scores_an_obviously_different_group_above_the_clean_pool() -> None:
    """Features are a fixed 4x4 average pool of the image: the white 10x10 BadEncoder square shifts them far
    from the base set, so step 2 flags those images and step 3 teaches the offset classifier to give them a
    high loss. 12 of 256 pool images carry the square (ASSET's flags need a minority)."""
    spec = EncoderSpec("pool4", embed_dim=48)
    encoder = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())
    rng = np.random.default_rng(1)
    pool = np.concatenate([_noise(244, 1), make_trigger("badencoder", 32).apply(_noise(12, 2))])
    labels = rng.integers(0, 10, len(pool))
    cfg = resolve_config(AssetConfig, ASSET_PRESETS, "tiny", overrides=["epochs=15"])
    truth = np.r_[np.zeros(244), np.ones(12)]
    result = run_asset(encoder, spec, _noise(256, 3), pool, cfg, labels, train_poisoned=truth.astype(bool))
    assert result.scores.shape == (256,) and result.scores_per_epoch.shape == (15, 256)
    assert sum(result.flagged_per_epoch) > 0
    # step 2 finds the triggered images far more often than their 12/256 share: that is what step 3 learns from
    assert result.flagged_poisoned_per_epoch is not None
    assert sum(result.flagged_poisoned_per_epoch) / sum(result.flagged_per_epoch) > 0.5
    assert all(0 <= p <= f for p, f in zip(result.flagged_poisoned_per_epoch, result.flagged_per_epoch, strict=True))
    assert roc_auc_score(truth, result.scores) > 0.85
    assert result.flags[244:].mean() > result.flags[:244].mean()
    assert result.to_dict()["n"] == 256


def test_asset_needs_labels_for_its_cross_entropy_objective() -> None:
    spec = EncoderSpec("pool4", embed_dim=48)
    with pytest.raises(ValueError, match="labels"):
        run_asset(nn.Flatten(), spec, _noise(8, 0), _noise(8, 1), AssetConfig(epochs=1))


def test_asset_checks_the_poison_mask_against_its_training_set() -> None:
    spec = EncoderSpec("pool4", embed_dim=48)
    with pytest.raises(ValueError, match="train_poisoned has 3 entries for 8"):
        run_asset(nn.Flatten(), spec, _noise(8, 0), _noise(8, 1), AssetConfig(epochs=1), np.zeros(8, np.int64),
                  train_poisoned=np.zeros(3, bool))


# --- DECREE -------------------------------------------------------------------------------------------


class TinyEncoder(nn.Module):
    """A fixed random conv encoder (no biases, tanh): embeddings of noise images are nearly orthogonal."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.c2 = nn.Conv2d(8, 16, 3, 2, 1, bias=False)
        self.fc = nn.Linear(16 * 8 * 8, 32, bias=False)
        self.embed_dim = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.c2(torch.tanh(self.c1(x)))).flatten(1))  # (B, 32)


class PatchBackdoor(nn.Module):
    """The clean encoder plus ``scale * gate * target``: the gate (a sigmoid of the mean normalised value of
    the 3x3 CLIP Backdoor corner square) opens when the square is white, and the constant target direction
    then dominates every embedding. Differentiable, so DECREE can follow its gradient."""

    def __init__(self, clean: nn.Module, row: int, size: int, scale: float) -> None:
        super().__init__()
        self.clean, self.row, self.size, self.scale = clean, row, size, scale
        self.target: torch.Tensor
        target = torch.randn(32, generator=torch.Generator().manual_seed(1))
        self.register_buffer("target", F.normalize(target, dim=0))
        self.embed_dim = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, s = self.row, self.size
        gate = torch.sigmoid(3 * (x[:, :, r : r + s, r : r + s].mean((1, 2, 3)) - 1.5))  # (B,)
        return self.clean(x) + self.scale * gate[:, None] * self.target


def test_mask_and_pattern_parameterisation_stays_in_range() -> None:
    raw = torch.tensor([-1e4, -3.0, 0.0, 2.0, 1e4])
    m = squash(raw)
    assert (m >= 0).all() and (m <= 1).all() and m[2] == pytest.approx(0.5)
    p = 255 * squash(torch.randn(8, 8, 3) * 10)
    assert (p >= 0).all() and (p <= 255).all()
    v = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(squash(unsquash(v)), v, atol=1e-6)
    x = torch.full((2, 4, 4, 3), 10.0)
    pattern = torch.full((4, 4, 3), 200.0)
    assert torch.equal(stamp(x, torch.zeros(4, 4), pattern), x)
    assert torch.equal(stamp(x, torch.ones(4, 4), pattern), pattern.expand(2, 4, 4, 3))


def test_lambda_goes_up_after_successes_and_down_after_failures() -> None:
    lam = LambdaSchedule(DecreeConfig())
    for _ in range(6):
        lam.update(True)
    assert lam.value == pytest.approx(5e-3)
    for _ in range(12):
        lam.update(False)
    assert lam.value == pytest.approx(2e-4)


def test_decree_separates_a_backdoored_encoder_from_its_clean_original() -> None:
    spec = EncoderSpec("tiny", embed_dim=32)
    clean = TinyEncoder().eval()
    trigger = make_trigger("clip-patch", 32)  # white 3x3 at rows/cols 27-29
    assert isinstance(trigger, PatchTrigger)
    images = _noise(64, 0)
    with torch.no_grad():
        from training.encoders import to_input

        norm = clean(to_input(torch.from_numpy(images), spec)).norm(dim=1).mean().item()
    backdoored = PatchBackdoor(clean, trigger.row, trigger.size, 20 * norm).eval()
    cfg = DecreeConfig(n_images=64, max_epochs=300)
    bad, good = invert_trigger(backdoored, spec, images, cfg), invert_trigger(clean, spec, images, cfg)
    assert bad.found and bad.trojaned and bad.pl1 < 0.1 <= good.pl1
    assert not good.trojaned
    assert bad.mask.shape == (32, 32) and bad.pattern.shape == (32, 32, 3)
    assert bad.mask[27:30, 27:30].mean() > 10 * bad.mask.mean()  # the mask sits on the square
    assert bad.to_dict()["pl1"] == pytest.approx(bad.pl1) and "mask" not in bad.to_dict()
    # per-sample scores: triggered images are closer to the inverted pattern inside the mask
    test = _noise(200, 5)
    clean_s, trig_s = decree_scores(bad, test), decree_scores(bad, trigger.apply(test))
    assert roc_auc_score(np.r_[np.zeros(200), np.ones(200)], np.r_[clean_s, trig_s]) > 0.95
    threshold = decree_threshold(bad, _noise(200, 6), fpr=0.01)
    assert (trig_s > threshold).mean() > 0.9 and (clean_s > threshold).mean() < 0.05


def test_decree_applies_to_patch_triggers_only_and_presets_resolve() -> None:
    assert decree_applicable("badencoder") and decree_applicable("clip-patch") and decree_applicable("badclip")
    assert not decree_applicable("ctrl") and not decree_applicable("noise-patch")
    cfg = resolve_config(DecreeConfig, DECREE_PRESETS, "paper-224", overrides=["lr_milestones=100,300"])
    assert cfg.lr_milestones == [100, 300] and cfg.lambda_min == 1e-7 and cfg.preset == "paper-224"
    with pytest.raises(ValueError, match="unknown config key"):
        resolve_config(AssetConfig, ASSET_PRESETS, "cpu", overrides=["nope=1"])


def test_asset_records_can_label_every_triggered_image_with_the_target(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--target-labels``: the triggered training images and the pools' triggered copies carry the target class
    (the official script's test labels); the clean images keep their own."""
    from types import SimpleNamespace

    import training.research.baselines as rb

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    train_labels = np.arange(100) % 10
    monkeypatch.setattr(rb, "split_base_and_train", lambda n, seed=0: (train[:10], train, train_labels))
    seen: list[dict[str, np.ndarray]] = []

    def fake_asset(encoder, spec, base, pool, cfg, pool_labels, train_images, train_labels, train_poisoned,
                   **kw):  # type: ignore[no-untyped-def]
        seen.append({"pool": pool_labels, "train": train_labels, "poisoned": train_poisoned})
        scores = np.r_[np.zeros(20), np.ones(len(pool) - 20)]
        return SimpleNamespace(scores=scores, scores_per_epoch=[scores], wall_s=0.0, flagged_per_epoch=[0],
                               flagged_poisoned_per_epoch=[0])

    monkeypatch.setattr(rb, "run_asset", fake_asset)
    clean = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(20) % 10
    trigger = make_trigger("badencoder", 32)
    pools = {"balanced": (clean, trigger.apply(clean), np.r_[labels, labels])}
    (own,) = rb.asset_records(None, None, "badencoder", trigger, pools, "tiny", 100, "cpu", train_rate=0.1)
    (target,) = rb.asset_records(None, None, "badencoder", trigger, pools, "tiny", 100, "cpu", train_rate=0.1,
                                 target_label=9)
    assert own["aux"] == "cifar10-train-100-at-10%" and target["aux"] == "cifar10-train-100-at-10%-target-labelled"
    plain, relabelled = seen
    assert (plain["pool"] == np.r_[labels, labels]).all() and (plain["train"] == train_labels).all()
    assert (relabelled["pool"][:20] == labels).all() and (relabelled["pool"][20:] == 9).all()
    poisoned = relabelled["poisoned"]
    assert poisoned.sum() == 10 and (relabelled["train"][poisoned] == 9).all()
    assert (relabelled["train"][~poisoned] == train_labels[~poisoned]).all()
    assert target["auc"] == 1.0  # the fake scores rank every triggered copy first
