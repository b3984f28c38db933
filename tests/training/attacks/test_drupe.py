import torch

from tests.conftest import needs_cifar
from training.attacks.badencoder import Embeddings
from training.attacks.drupe import DrupeConfig, drupe_terms, mean_offdiag_cos
from training.attacks.stealth import sliced_wasserstein


def test_sliced_wasserstein_is_zero_for_equal_sets_and_grows_with_shift() -> None:
    torch.manual_seed(0)
    a = torch.randn(256, 16)
    assert sliced_wasserstein(a, a[torch.randperm(256)]).item() < 1e-5
    near, far = sliced_wasserstein(a, a + 0.1).item(), sliced_wasserstein(a, a + 1.0).item()
    assert 0 < near < far


def test_mean_offdiag_cos() -> None:
    same = torch.ones(4, 3)
    assert abs(mean_offdiag_cos(same).item() - 1.0) < 1e-6
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert abs(mean_offdiag_cos(opposite).item() + 1.0) < 1e-6


def test_drupe_terms_reward_stealthy_triggered_embeddings() -> None:
    torch.manual_seed(0)
    clean = torch.randn(64, 8)
    refs = torch.randn(3, 8)
    cfg = DrupeConfig()
    clustered = refs[0].expand(64, 8) + 0.01 * torch.randn(64, 8)  # all triggered on one point: not stealthy
    spread = clean + refs[0]  # shaped like the clean distribution, moved toward a reference
    t1 = drupe_terms(Embeddings(clean, clustered, clean, refs, refs, refs), cfg)
    t2 = drupe_terms(Embeddings(clean, spread, clean, refs, refs, refs), cfg)
    assert set(t1) == {"L0", "L1", "L2", "ref_spread", "ref_collapse", "b2b", "swd"}
    assert t1["b2b"] > t2["b2b"]  # clustering is penalised
    assert t1["L0"] < t2["L0"]  # but it does reach the reference


@needs_cifar
def test_embedding_stealth_separates_a_shifted_trigger_response() -> None:
    import numpy as np

    from training.attacks.stealth import embedding_stealth
    from training.encoders import EncoderSpec

    class BrightnessEncoder(torch.nn.Module):
        """Embeds an image by its 8x8 mean-pooled pixels: the white trigger square moves it."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x, 8).flatten(1)

    res = embedding_stealth(BrightnessEncoder(), EncoderSpec("test", embed_dim=48), "cifar10", "badencoder", n=300)
    assert res["outlier_auc"] > 0.6 and res["swd_normalised"] > 0
    assert np.isfinite(res["swd_normalised"])
