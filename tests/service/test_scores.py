import numpy as np
import pytest

from service.scores import check_score, compute_score, error_spread


def local_and_global() -> np.ndarray:
    """Two images with the same total error: one in 4 patches (a trigger), one spread over all 64."""
    local = np.zeros(64)
    local[:4] = 16.0
    return np.stack([local, np.ones(64)])


def test_paper_score_is_the_sum() -> None:
    pe = local_and_global()
    assert compute_score(pe, "paper") == pytest.approx([64.0, 64.0])


def test_trimmed_score_separates_local_from_global_error() -> None:
    local, glob = compute_score(local_and_global(), "trimmed@4")
    assert local == pytest.approx(0.0)
    assert glob == pytest.approx(60.0)


def test_spread_is_high_for_local_error() -> None:
    local, glob = error_spread(local_and_global())
    assert local == pytest.approx(1.0) and glob == pytest.approx(6 / 64)


@pytest.mark.parametrize("kind", ["median", "trimmed", "trimmed@x", "paper2"])
def test_unknown_scores(kind: str) -> None:
    with pytest.raises(ValueError, match="unknown score"):
        check_score(kind)
    with pytest.raises(ValueError, match="unknown score"):
        compute_score(np.ones((1, 4)), kind)


def test_cannot_trim_everything() -> None:
    with pytest.raises(ValueError, match="cannot drop"):
        compute_score(np.ones((1, 4)), "trimmed@4")
