import numpy as np
import pytest

from service.scores import check_score, compute_score


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


@pytest.mark.parametrize("kind", ["median", "trimmed", "trimmed@x", "paper2"])
def test_unknown_scores(kind: str) -> None:
    with pytest.raises(ValueError, match="unknown score"):
        check_score(kind)
    with pytest.raises(ValueError, match="unknown score"):
        compute_score(np.ones((1, 4)), kind)


def test_cannot_trim_everything() -> None:
    with pytest.raises(ValueError, match="cannot drop"):
        compute_score(np.ones((1, 4)), "trimmed@4")


def test_content_score_divides_the_paper_score_by_the_images_content() -> None:
    from service.scores import image_content

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3, 4, 4))
    x[2] = 0.5  # one flat colour: no content
    pe = np.abs(rng.normal(size=(3, 16)))
    content = image_content(x)
    assert content[2] == 0.0
    assert content[0] == pytest.approx(((x[0] - x[0].mean((1, 2), keepdims=True)) ** 2).sum())
    got = compute_score(pe, "content@0.5", x)
    assert got[:2] == pytest.approx(pe[:2].sum(1) / np.sqrt(content[:2]), rel=1e-6)
    assert got[2] == pytest.approx(pe[2].sum(), rel=1e-6)  # divided by 1, not by 0
    assert compute_score(pe, "content@0", x) == pytest.approx(compute_score(pe, "paper"), rel=1e-6)
    with pytest.raises(ValueError, match="needs the 3 images"):
        compute_score(pe, "content@0.5")
    with pytest.raises(ValueError, match="needs the 3 images"):
        compute_score(pe, "content@0.5", x[:2])
    with pytest.raises(ValueError, match=r"needs patch errors \(\.\.\., B, N\)"):
        compute_score(pe[0], "content@0.5", x)


@pytest.mark.parametrize("kind", ["paper", "trimmed@3", "content@0.7"])
def test_a_leading_axis_of_mask_draws_scores_each_draw(kind: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 3, 4, 4))
    draws = np.abs(rng.normal(size=(4, 5, 16)))  # (D, B, N)
    got = compute_score(draws, kind, x)
    assert got.shape == (4, 5) and got.dtype == np.float32
    for d in range(4):
        np.testing.assert_allclose(got[d], compute_score(draws[d], kind, x), rtol=1e-6)


def test_the_content_exponent_is_the_slope_of_log_score_on_log_content() -> None:
    from service.scores import fit_content_exponent

    rng = np.random.default_rng(1)
    content = np.exp(rng.uniform(5, 9, 500))
    paper = 3.0 * content**0.6 * np.exp(rng.normal(0, 0.05, 500))
    exponent, r = fit_content_exponent(np.append(paper, 0.0), np.append(content, 7.0))  # a flat score left out
    assert exponent == pytest.approx(0.6, abs=0.01) and r > 0.99
    # a score that falls with content (no such detector seen) is not turned into a bonus for busy images
    assert fit_content_exponent(1 / content, content)[0] == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        fit_content_exponent(np.zeros(5), content[:5])


@pytest.mark.parametrize("kind", ["content", "content@", "content@-1", "content@x"])
def test_content_needs_a_fitted_exponent_to_be_a_score(kind: str) -> None:
    with pytest.raises(ValueError, match="unknown score"):
        check_score(kind)
    assert check_score("content", fit=True) == "content"
