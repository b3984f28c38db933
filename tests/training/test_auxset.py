"""The dense-clump filter (``training.auxset``) at known points: a clump of near-identical embeddings, like the
one a backdoor makes of triggered images, among spread-out ones."""

from __future__ import annotations

import pytest
import torch

from training.auxset import dense_filter, knn_similarity


def _spread_and_clump(n: int = 200, clump: int = 10, dim: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    spread = torch.randn(n, dim, generator=gen)
    centre = torch.randn(dim, generator=gen)
    tight = centre + 0.01 * torch.randn(clump, dim, generator=gen)  # cosine similarity ~1 to each other
    return spread, tight


def test_knn_similarity_at_known_points() -> None:
    basis = torch.eye(4)  # orthonormal: every other row at similarity 0
    assert torch.allclose(knn_similarity(basis, basis, 1, same=True), torch.zeros(4))
    twice = torch.cat([basis, 3 * basis])  # each row has one copy (other length, same direction)
    assert torch.allclose(knn_similarity(twice, twice, 1, same=True), torch.ones(8))
    # k = 2: the copy (1) and one orthogonal row (0); a row is never its own neighbour
    assert torch.allclose(knn_similarity(twice, twice, 2, same=True), torch.full((8,), 0.5))
    # against another set nothing is excluded: the row itself counts
    assert torch.allclose(knn_similarity(basis, twice, 2, same=False), torch.ones(4))
    # chunks give the same answer as one block
    spread, _ = _spread_and_clump()
    assert torch.allclose(knn_similarity(spread, spread, 5, same=True, chunk=7),
                          knn_similarity(spread, spread, 5, same=True))


def test_dense_filter_removes_the_clump_and_the_held_out_images_in_it() -> None:
    spread, tight = _spread_and_clump()
    train = torch.cat([spread[:100], tight[:8], spread[100:]])  # 208 embeddings, the clump at 100..107
    held = torch.cat([torch.randn(5, 64, generator=torch.Generator().manual_seed(1)), tight[8:]])
    f = dense_filter(train, held, share=8 / 208, k=3)
    assert f.keep.shape == (208,) and int((~f.keep).sum()) == 8
    assert not f.keep[100:108].any() and f.keep[:100].all() and f.keep[108:].all()
    assert 0.99 < f.threshold <= 1.0
    assert f.keep_holdout.tolist() == [True] * 5 + [False, False]  # the two held-out clump members go too


def test_dense_filter_share_rounds_and_validates() -> None:
    spread, _ = _spread_and_clump()
    assert int((~dense_filter(spread, spread[:3], share=0.05, k=5).keep).sum()) == 10  # round(0.05 * 200)
    nothing = dense_filter(spread[:10], spread[:3], share=0.01, k=2)  # round(0.1) = 0: nothing dropped
    assert nothing.keep.all() and nothing.keep_holdout.all()
    for share in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="drop_dense"):
            dense_filter(spread, spread[:3], share=share)
    with pytest.raises(ValueError, match="nearest neighbours"):
        dense_filter(spread[:5], spread[:3], share=0.5, k=5)  # 5 embeddings have 4 neighbours each
