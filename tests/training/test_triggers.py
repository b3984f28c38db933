import numpy as np

from training.attacks.triggers import badencoder_trigger, make_trigger


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
