import io

import numpy as np
import pytest
from PIL import Image

from service.errors import BadImage, ImageTooLarge, UnsupportedFormat
from service.imaging import decode_image, normalize, to_rgb


def encode(img: Image.Image, fmt: str, **kw) -> bytes:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    img = Image.new("RGB", (10, 7), (200, 100, 50)).convert(mode)
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == (10, 7)


def test_palette_with_transparency_composites_on_black() -> None:
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0)).convert("P")
    img.info["transparency"] = 0
    assert np.asarray(to_rgb(img)).max() <= 255


def test_16bit_keeps_contrast() -> None:
    img = Image.new("I;16", (2, 1))
    img.putdata([0, 65535])
    out = np.asarray(to_rgb(img))
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_allowed_formats_decode_and_resize(fmt: str) -> None:
    img = Image.new("RGB", (64, 48), (10, 200, 30))
    arr = decode_image(encode(img, fmt), 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    arr = decode_image(data, 8)
    assert arr[..., 0].mean() > arr[..., 2].mean()


def test_rejections() -> None:
    with pytest.raises(BadImage, match="empty"):
        decode_image(b"", 32)
    with pytest.raises(UnsupportedFormat):
        decode_image(encode(Image.new("RGB", (4, 4)), "TIFF"), 32)
    with pytest.raises(ImageTooLarge):
        decode_image(encode(Image.new("L", (300, 300)), "PNG"), 32, max_pixels=10_000)
    data = encode(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    with pytest.raises(BadImage):
        decode_image(data[:100], 32)


def test_normalize_shape_and_values() -> None:
    imgs = np.full((2, 4, 4, 3), 255, np.uint8)
    x = normalize(imgs, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (2, 3, 4, 4) and x.dtype == np.float32
    assert np.allclose(x, 1.0)


def test_multi_picture_jpeg_from_phones_is_accepted() -> None:
    frames = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (40, 30), (10, 10, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    arr = decode_image(buf.getvalue(), 16)
    assert arr.shape == (16, 16, 3) and arr[..., 0].mean() > arr[..., 2].mean()
