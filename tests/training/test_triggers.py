import numpy as np

from training.triggers import FrequencyTrigger, PatchTrigger, badencoder_trigger, make_trigger


def test_badencoder_trigger_on_32px_is_white_rows_cols_21_to_30() -> None:
    imgs = np.zeros((2, 32, 32, 3), np.uint8)
    out = make_trigger("badencoder", 32).apply(imgs)
    white = (out == 255).all(-1)[0]
    assert white[21:31, 21:31].all() and white.sum() == 100
    assert not imgs.any()  # the input is not modified


def test_trigger_scales_and_224_uses_badencoder_square() -> None:
    assert badencoder_trigger(224).row == 173 and badencoder_trigger(224).size == 50
    t = badencoder_trigger(64)
    assert (t.row, t.size) == (42, 20)


def _images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_ctrl_trigger_changes_exactly_the_chosen_dct_coefficients_of_the_chroma_channels() -> None:
    from training.triggers import dct_matrix, rgb_to_ycrcb

    imgs = _images()
    trig = make_trigger("ctrl", 32)
    assert isinstance(trig, FrequencyTrigger)
    c = dct_matrix(32)
    delta = rgb_to_ycrcb(trig.apply_float(imgs)) - rgb_to_ycrcb(imgs.astype(np.float64))  # (N, H, W, 3)
    for ch in range(3):
        coeff = c @ delta[1, :, :, ch] @ c.T
        changed = {tuple(int(v) for v in ij) for ij in np.argwhere(np.abs(coeff) > 1e-6)}
        if ch == 0:  # luma untouched
            assert changed == set()
        else:
            assert changed == {(15, 15), (31, 31)}
            assert np.allclose(coeff[15, 15], 100) and np.allclose(coeff[31, 31], 100)


def test_dct_matrix_is_orthonormal_and_ycrcb_round_trips() -> None:
    from training.triggers import dct_matrix, rgb_to_ycrcb, ycrcb_to_rgb

    c = dct_matrix(8)
    assert np.allclose(c @ c.T, np.eye(8))
    x = _images().astype(np.float64)
    assert np.allclose(ycrcb_to_rgb(rgb_to_ycrcb(x)), x, atol=1e-6)
    assert np.allclose(rgb_to_ycrcb(np.full((1, 3), 255.0))[0], [255, 128, 128])  # white: no chroma


def test_ctrl_trigger_is_invisible_but_not_empty_in_uint8() -> None:
    imgs = _images()
    out = make_trigger("ctrl", 32).apply(imgs)
    diff = np.abs(out.astype(int) - imgs)
    assert out.dtype == np.uint8 and 0 < diff.mean() < 10 and diff.max() <= 40
    weaker = make_trigger("ctrl", 32, {"magnitude": 50}).apply(imgs)
    assert np.abs(weaker.astype(int) - imgs).mean() < diff.mean()


def test_clip_patch_is_a_3x3_white_square_at_27_to_29_and_scales_to_224() -> None:
    out = make_trigger("clip-patch", 32).apply(np.zeros((1, 32, 32, 3), np.uint8))
    white = (out[0] == 255).all(-1)
    assert white[27:30, 27:30].all() and white.sum() == 9
    t, small = make_trigger("clip-patch", 224), make_trigger("clip-patch", 32, {"size": 5})
    assert isinstance(t, PatchTrigger) and isinstance(small, PatchTrigger)
    assert (t.row, t.size) == (185, 24)  # CLIP Backdoor's square at 185-208
    assert small.size == 5


def test_badclip_pattern_round_trips_at_the_centre() -> None:
    pattern = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    out = make_trigger("badclip", 32, {"pattern": pattern.tolist()}).apply(np.zeros((2, 32, 32, 3), np.uint8))
    assert (out[:, 14:18, 14:18] == pattern).all() and out.sum() == 2 * pattern.sum()


def test_badclip_without_pattern_and_unknown_params_are_clear_errors() -> None:
    import pytest

    with pytest.raises(ValueError, match="pattern"):
        make_trigger("badclip", 32)
    with pytest.raises(ValueError, match="bad parameters"):
        make_trigger("badencoder", 32, {"colour": 1})
    with pytest.raises(ValueError, match="unknown trigger"):
        make_trigger("nope", 32)


def test_noise_patch_changes_one_4x4_square_per_image_and_is_seeded() -> None:
    imgs = np.full((20, 32, 32, 3), 128, np.uint8)
    a, b = make_trigger("noise-patch", 32).apply(imgs), make_trigger("noise-patch", 32).apply(imgs)
    assert (a == b).all()
    changed = (a != imgs).any(-1)  # (N, H, W)
    assert changed.any(axis=(1, 2)).all() and changed.sum(axis=(1, 2)).max() <= 16
    positions = {(int(np.argmax(changed[i].any(1))), int(np.argmax(changed[i].any(0)))) for i in range(20)}
    assert len(positions) > 5  # random positions
