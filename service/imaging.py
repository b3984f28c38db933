"""Image decoding and preprocessing: the one place where pixels are turned into model inputs.

Training (``training.data``) and the service both call these functions, so an image is resized and
normalised the same way everywhere.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from service.errors import BadImage, ImageTooLarge, UnsupportedFormat

# Decode-time guards. ``MAX_IMAGE_PIXELS`` makes Pillow raise on decompression bombs; the service lowers it
# further from its settings. Truncated files must fail, not decode half an image.
Image.MAX_IMAGE_PIXELS = 40_000_000
ImageFile.LOAD_TRUNCATED_IMAGES = False

# MPO: the multi-picture JPEG that many phone cameras write (its first frame is a plain JPEG)
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "PPM"})


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode (L, LA, P with transparency, CMYK, I;16, F, RGBA...) to RGB.

    Transparent pixels are composited onto black, as a viewer would drop the alpha channel."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        background = Image.new("RGB", img.size, (0, 0, 0))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def resize_rgb(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> uint8 array (size, size, 3). The whole image is resized (no crop), bicubic."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, 3)


@contextmanager
def _decode_errors() -> Iterator[None]:
    """Pillow's many exception types -> ``BadImage`` subclasses with a clear message."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image exceeds the pixel limit: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("the upload is not a readable image") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"the image could not be decoded ({type(exc).__name__}: {exc})") from exc


def open_image(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Read only the header: the format allow-list and the pixel limit are checked before any pixel is
    decoded, so the caller knows the decoding cost (``img.size``). The caller closes the image."""
    if not data:
        raise BadImage("empty upload: the body holds no image bytes")
    limit: int = max_pixels or Image.MAX_IMAGE_PIXELS or 40_000_000
    with _decode_errors():
        img = Image.open(io.BytesIO(data))
    try:
        if img.format not in ALLOWED_FORMATS:
            raise UnsupportedFormat(
                f"image format {img.format!r} is not accepted; use one of {sorted(ALLOWED_FORMATS)}")
        w, h = img.size
        if w < 1 or h < 1:
            raise BadImage(f"image has no pixels ({w}x{h})")
        if w * h > limit:
            raise ImageTooLarge(f"image is {w}x{h} = {w * h} pixels; the limit is {limit}")
    except BaseException:
        img.close()
        raise
    return img


def load_rgb(img: Image.Image, size: int) -> np.ndarray:
    """An image from ``open_image`` -> uint8 array (size, size, 3): decode the first frame, convert, resize."""
    with _decode_errors():
        img.seek(0)
        img.load()
        return resize_rgb(to_rgb(img), size)


def decode_image(data: bytes, size: int, max_pixels: int | None = None) -> np.ndarray:
    """Encoded bytes -> uint8 array (size, size, 3), or a ``BadImage`` subclass with a clear message.

    Only the first frame of animated/multi-frame files is used."""
    with open_image(data, max_pixels) as img:
        return load_rgb(img, size)


def normalize(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W), (x / 255 - mean) / std."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (x - m) / s
