import numpy as np
import pytest

from training.evaluation.perturbations import apply_case, benign_cases


@pytest.fixture(scope="module")
def images(example_images: np.ndarray) -> np.ndarray:
    return example_images


@pytest.mark.parametrize("case", benign_cases(32), ids=lambda c: c.name)
def test_cases_are_deterministic_and_change_images(case, images: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    a, b = apply_case(case, images, seed=3), apply_case(case, images, seed=3)
    assert a.shape == images.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, images)
    assert images.flags.writeable  # input untouched (checked by value below)


def test_inputs_are_not_modified(images: np.ndarray) -> None:
    before = images.copy()
    for case in benign_cases(32):
        apply_case(case, images)
    assert np.array_equal(images, before)


def test_cases_scale_with_image_size() -> None:
    big = np.zeros((1, 64, 64, 3), np.uint8)
    case = next(c for c in benign_cases(64) if c.name == "white-10-centre")
    out = apply_case(case, big)
    assert (out == 255).all(-1).sum() == 20 * 20


def test_no_case_is_the_trigger(images: np.ndarray) -> None:
    from training.triggers import make_trigger

    triggered = make_trigger("badencoder", 32).apply(images)
    for case in benign_cases(32):
        assert not np.array_equal(apply_case(case, images), triggered)


def test_occlusion_grid_covers_the_image_and_the_trigger() -> None:
    from training.evaluation.honesty import occlusion_boxes
    from training.triggers import badencoder_trigger

    covered = np.zeros((32, 32), bool)
    boxes = occlusion_boxes(32)
    for r, c, side in boxes:
        covered[r : r + side, c : c + side] = True
    assert len(boxes) == 9 and covered.all()
    t = badencoder_trigger(32)
    assert any(r <= t.row and r + s >= t.row + t.size and c <= t.col and c + s >= t.col + t.size
               for r, c, s in boxes)
