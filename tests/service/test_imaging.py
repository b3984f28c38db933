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


# --- decoding bounds (the security corpus in tests/security exercises them through a live server) ----------------


def progressive_jpeg(side: int = 96, extra_scans: int = 0) -> bytes:
    """A progressive JPEG of noise; ``extra_scans`` copies of its last scan make a scan bomb."""
    noise = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "JPEG", progressive=True)
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:end] + data[last:end] * extra_scans + data[end:]


def test_scans_are_counted_and_a_scan_bomb_is_refused_before_decoding() -> None:
    from service.errors import ImageTooComplex
    from service.imaging import jpeg_scans

    assert 2 <= jpeg_scans(progressive_jpeg(), 64) <= 16
    assert jpeg_scans(encode(Image.new("RGB", (64, 64)), "JPEG"), 64) == 1
    bomb = progressive_jpeg(extra_scans=500)
    assert jpeg_scans(bomb, 64) == 65  # counting stops past the limit
    with pytest.raises(ImageTooComplex, match="more than 64 scans"):
        decode_image(bomb, 32)
    assert decode_image(progressive_jpeg(extra_scans=20), 32, max_scans=64).shape == (32, 32, 3)


def test_an_exif_thumbnail_is_not_counted_as_scans() -> None:
    from service.imaging import jpeg_scans

    thumb = encode(Image.new("RGB", (16, 16), (9, 9, 9)), "JPEG")  # its own SOI ... SOS ... EOI
    payload = thumb * 40  # 40 start-of-scan markers inside an APP2 segment, as an EXIF thumbnail carries one
    plain = encode(Image.new("RGB", (64, 64)), "JPEG")
    data = plain[:2] + b"\xff\xe2" + (len(payload) + 2).to_bytes(2, "big") + payload + plain[2:]
    assert data.count(b"\xff\xda") > 40 and jpeg_scans(data, 64) == 1
    assert decode_image(data, 32).shape == (32, 32, 3)


def test_compressed_png_text_beyond_the_limit_is_refused() -> None:
    from PIL import PngImagePlugin

    from service.errors import ImageTooComplex

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 1_000_000, zip=True)  # 1 MB of text in about 1 KB
    data = encode(Image.new("RGB", (8, 8)), "PNG", pnginfo=info)
    assert len(data) < 10_000
    with pytest.raises(ImageTooComplex, match="text chunks"):
        decode_image(data, 8)


def test_16bit_grey_scales_like_8bit_without_float64() -> None:
    ramp = np.linspace(0, 65535, 256 * 4, dtype=np.uint16).reshape(4, 256)
    img = Image.frombytes("I;16", (256, 4), ramp.astype("<u2").tobytes())
    out = np.asarray(to_rgb(img))[..., 0].astype(int)
    assert np.abs(out - np.rint(ramp / 65535 * 255)).max() <= 1


def test_a_large_jpeg_decodes_at_reduced_scale_and_a_photo_does_not() -> None:
    from service.imaging import DRAFT_MIN_SIDE, open_image

    with open_image(encode(Image.new("RGB", (4 * DRAFT_MIN_SIDE, 4 * DRAFT_MIN_SIDE)), "JPEG"), size=32) as big:
        assert big.size == (DRAFT_MIN_SIDE, DRAFT_MIN_SIDE)  # 1/4 scale, not below the floor
    with open_image(encode(Image.new("RGB", (500, 375)), "JPEG"), size=32) as photo:
        assert photo.size == (500, 375)


def test_the_pixel_limit_message_quotes_the_configured_limit() -> None:
    with pytest.raises(ImageTooLarge, match="the limit is 10000"):
        decode_image(encode(Image.new("L", (300, 300)), "PNG"), 32, max_pixels=10_000)
    old = Image.MAX_IMAGE_PIXELS
    try:  # a header past twice Pillow's own limit: Pillow raises first, the message is still the configured one
        Image.MAX_IMAGE_PIXELS = 1_000
        with pytest.raises(ImageTooLarge, match="1000 pixels"):
            decode_image(encode(Image.new("L", (300, 300)), "PNG"), 32)
    finally:
        Image.MAX_IMAGE_PIXELS = old


def test_decode_cost_grows_with_pixels_views_and_progressive_coefficients() -> None:
    from service.imaging import decode_cost, open_image

    with open_image(encode(Image.new("RGB", (100, 100)), "PNG")) as a, \
            open_image(encode(Image.new("RGB", (200, 100)), "PNG")) as b:
        assert decode_cost(b, 32) > decode_cost(a, 32) and decode_cost(a, 32, views=2) > decode_cost(a, 32)
    with open_image(progressive_jpeg(256), size=32) as p, \
            open_image(encode(Image.new("RGB", (256, 256)), "JPEG"), size=32) as q:
        assert decode_cost(p, 32) > decode_cost(q, 32)
