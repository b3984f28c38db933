import numpy as np
import pytest
import torch

from training.dede import DeDe, DeDeConfig, DetectorGraph, kept_count, score_mask_ratio
from training.encoders import CIFAR_MEAN, CIFAR_STD


def tiny(img_size: int = 32, patch: int = 4, victim_dim: int = 16) -> DeDe:
    torch.manual_seed(0)
    return DeDe(DeDeConfig(img_size, patch, victim_dim, width=32, depth=1, heads=2, dec_width=32, dec_depth=1,
                           dec_heads=2))


def normalised(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)


@pytest.mark.parametrize(("ratio", "kept"), [(0.99, 0), (0.9, 6), (0.75, 16), (0.0, 64)])
def test_kept_count_on_32px_p4(ratio: float, kept: int) -> None:
    assert kept_count(64, ratio) == kept


def test_test_mask_ratio_is_capped() -> None:
    assert score_mask_ratio(0.9) == pytest.approx(0.99)
    assert score_mask_ratio(0.95) == 1.0


def test_random_masking_shapes_and_uniqueness() -> None:
    m = tiny()
    ids = m.random_masking(8, 0.9)
    assert ids.shape == (8, 6)
    assert all(len(set(row.tolist())) == 6 for row in ids)
    mask = m.removed_mask(ids)
    assert mask.shape == (8, 64)
    assert torch.all(mask.sum(1) == 58)  # 1 = removed
    assert torch.all(mask.gather(1, ids) == 0)
    assert m.random_masking(3, 0.99).shape == (3, 0)


def test_masks_differ_between_samples_and_calls() -> None:
    m = tiny()
    a, b = m.random_masking(4, 0.5), m.random_masking(4, 0.5)
    assert not torch.equal(a, b)
    assert not torch.equal(a[0].sort().values, a[1].sort().values)


def test_forward_shapes_with_no_kept_patch(example_images: np.ndarray) -> None:
    m = tiny().eval()
    x = normalised(example_images)
    e = torch.randn(len(x), 16)
    ids = m.random_masking(len(x), 0.99)
    loss, pred = m(x, e, ids)
    assert pred.shape == (len(x), 64, 48)
    assert loss.ndim == 0 and torch.isfinite(loss)
    score, recon, patch_err = DetectorGraph(m)(x, e, ids)
    assert score.shape == (len(x),) and recon.shape == x.shape and patch_err.shape == (len(x), 64)
    assert torch.allclose(score, patch_err.sum(1))


def test_patchify_roundtrip(example_images: np.ndarray) -> None:
    m = tiny()
    x = normalised(example_images)
    assert torch.equal(m.unpatchify(m.patchify(x)), x)


def test_loss_and_score_ignore_kept_patches(example_images: np.ndarray) -> None:
    m = tiny()
    x = normalised(example_images)
    ids = m.random_masking(len(x), 0.5)
    pred = torch.randn(len(x), 64, 48)
    changed = pred.clone()
    changed.scatter_(1, ids.unsqueeze(-1).expand(-1, -1, 48), 100.0)  # garbage on kept patches only
    assert torch.allclose(m.forward_loss(x, pred, ids), m.forward_loss(x, changed, ids))
    assert torch.allclose(m.patch_errors(x, pred, ids), m.patch_errors(x, changed, ids))
    removed = m.removed_mask(ids).bool()
    changed[removed] += 1.0
    assert not torch.allclose(m.forward_loss(x, pred, ids), m.forward_loss(x, changed, ids))


def test_victim_embedding_changes_the_reconstruction(example_images: np.ndarray) -> None:
    m = tiny().eval()
    x = normalised(example_images)
    ids = m.random_masking(len(x), 0.99)
    _, p1 = m(x, torch.zeros(len(x), 16), ids)
    _, p2 = m(x, torch.ones(len(x), 16), ids)
    assert not torch.allclose(p1, p2)


def test_loss_decreases_on_a_tiny_run(example_images: np.ndarray) -> None:
    m = tiny()
    x = normalised(example_images)
    e = torch.randn(len(x), 16)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        loss, _ = m(x, e, m.random_masking(len(x), 0.9, generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])


def test_width_must_divide_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        DeDe(DeDeConfig(width=30, heads=4))


def test_robust_mean_drops_the_worst_samples() -> None:
    from training.train import robust_mean

    per = torch.tensor([1.0, 2.0, 3.0, 100.0])
    assert robust_mean(per, 0.0) == pytest.approx(26.5)
    assert robust_mean(per, 0.25) == pytest.approx(2.0)
    assert robust_mean(per, 0.99) == pytest.approx(1.0)  # always keeps one sample


def test_per_sample_loss_averages_to_the_batch_loss(example_images: np.ndarray) -> None:
    m = tiny()
    x = normalised(example_images)
    ids = m.random_masking(len(x), 0.9)
    pred = torch.randn(len(x), 64, 48)
    per = m.forward_loss(x, pred, ids, per_sample=True)
    assert per.shape == (len(x),)
    assert torch.allclose(per.mean(), m.forward_loss(x, pred, ids))
