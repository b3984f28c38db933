"""Image decoding and preprocessing: the one place where pixels are turned into model inputs.

Training (``training.data``) and the service both call these functions, so an image is resized and
normalised the same way everywhere.

Decoding is bounded before any pixel is decoded (``open_image`` reads the header only): the format allow-list,
the pixel limit, the scans of a progressive JPEG (``jpeg_scans``) and, at open, the decompressed size of PNG text
chunks (``set_text_limit``). A JPEG far larger than the model input is decoded at 1/2, 1/4 or 1/8 scale by libjpeg
(``draft``), never below ``DRAFT_MIN_SIDE`` pixels a side, so photographs in ordinary datasets decode exactly as
before. ``decode_cost`` states the worst-case bytes a decode holds at once, for the service's shared budget.

Views (``load_views``): an image can look different to different loaders. EXIF orientation is applied by browsers
and Hugging Face ``load_image`` and ignored by PIL and torchvision's default loader; transparency is composited on
black or white, or dropped (PIL's ``convert("RGB")`` keeps the colour channels as stored). The service scores every
view a downstream loader could produce (or only the one the deployment names), and flags if any view alerts.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageFile, ImageOps, PngImagePlugin, UnidentifiedImageError

from service.errors import BadImage, ImageTooComplex, ImageTooLarge, UnsupportedFormat

# Decode-time guards. ``MAX_IMAGE_PIXELS`` makes Pillow raise on decompression bombs; the service lowers it
# further from its settings. Truncated files must fail, not decode half an image.
Image.MAX_IMAGE_PIXELS = 40_000_000
ImageFile.LOAD_TRUNCATED_IMAGES = False

# MPO: the multi-picture JPEG that many phone cameras write (its first frame is a plain JPEG)
ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "PPM"})


DRAFT_MIN_SIDE = 1024  # a JPEG is decoded at reduced scale only down to this many pixels a side (and 2x the input)
MAX_SEGMENTS_PER_SCAN = 4  # a JPEG's marker segments beyond 4 per allowed scan (+ 64) are refused as well
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I", "F")
BACKGROUNDS: dict[str, tuple[int, int, int] | None] = {"black": (0, 0, 0), "white": (255, 255, 255), "drop": None}
EXIF_VIEWS = {"both": (False, True), "apply": (True,), "ignore": (False,)}  # the ``exif`` setting -> rotations
ALPHA_VIEWS = {"any": ("black", "white", "drop"), "black": ("black",), "white": ("white",), "drop": ("drop",)}
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # the next marker after entropy-coded data


def set_text_limit(max_bytes: int) -> None:
    """Decompressed PNG text (tEXt, zTXt, iTXt) allowed per image, read at open: Pillow refuses beyond it."""
    PngImagePlugin.MAX_TEXT_CHUNK = max_bytes
    PngImagePlugin.MAX_TEXT_MEMORY = max_bytes


set_text_limit(64 * 1024)


def to_rgb(img: Image.Image, background: tuple[int, int, int] | None = (0, 0, 0)) -> Image.Image:
    """Convert any Pillow mode (L, LA, P with transparency, CMYK, I;16, F, RGBA...) to RGB.

    Transparent pixels are composited onto ``background`` (black by default, as training decodes), or with
    ``background`` None the alpha channel is dropped and the colour channels kept as stored. High bit depths are
    scaled to 8 bits in float32, in place (no float64 copy)."""
    if img.mode == "RGB" and "transparency" not in img.info:
        return img
    if img.mode in _HIGH_DEPTH:
        arr = np.array(img, dtype=np.float32)  # a copy, writable
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr *= np.float32(255.0 / hi)
        np.clip(arr, 0, 255, out=arr)
        return Image.fromarray(arr.astype(np.uint8), mode="L").convert("RGB")
    if background is None:
        return img.convert("RGB")
    if img.mode in ("P", "L", "RGB") and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        img = img.convert("RGBA")
        flat = Image.new("RGB", img.size, background)
        flat.paste(img, mask=img.getchannel("A"))
        return flat
    return img.convert("RGB")


def has_alpha(img: Image.Image) -> bool:
    return img.mode in _ALPHA_MODES or "transparency" in img.info


def orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored; 2-8 = flipped and/or rotated), 1 when absent or unreadable."""
    try:
        value = int(img.getexif().get(0x0112, 1))
    except Exception:  # malformed EXIF: Pillow raises many types; every loader then shows the image as stored
        return 1
    return value if 2 <= value <= 8 else 1


def jpeg_scans(data: bytes, limit: int) -> int:
    """Start-of-scan markers in a JPEG's main stream, counted without decoding (APPn and COM payloads, such as
    an EXIF thumbnail, are skipped by length; entropy-coded data is searched for the next marker in C). Counting
    stops past ``limit``; a stream of more than ``MAX_SEGMENTS_PER_SCAN * limit + 64`` segments counts as over it."""
    scans, segments, i, end = 0, 0, 2, len(data)
    while i + 4 <= end and scans <= limit:
        segments += 1
        if segments > MAX_SEGMENTS_PER_SCAN * limit + 64:
            return limit + 1
        if data[i] != 0xFF:  # not at a marker: resynchronise on the next one
            found = _JPEG_MARKER.search(data, i)
            if found is None:
                break
            i = found.start()
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xD9:  # end of image: an MPO's later pictures are never decoded
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # RSTn, TEM: no length
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:
            scans += 1
            found = _JPEG_MARKER.search(data, i)
            if found is None:
                break
            i = found.start()
    return scans


def _bytes_per_pixel(mode: str) -> int:
    """Pillow's storage: 1 byte for one 8-bit band, 2 for I;16, 4 for everything else (RGB too)."""
    return 1 if mode in ("1", "L", "P") else 2 if mode.startswith("I;16") else 4


WORST_BYTES_PER_PIXEL = 2 * 4 + 12  # decode_cost of a 4-byte-a-pixel image (RGB, RGBA, CMYK...), outputs aside


def decode_cost(img: Image.Image, size: int, views: int = 1) -> int:
    """Worst-case bytes that ``load_views`` holds at once for an image from ``open_image``: the decoded frame, an
    EXIF-rotated copy, up to three conversion buffers of 4 bytes a pixel, a progressive JPEG's coefficient buffer
    (2 bytes per pixel and component of the full-size image, whatever the draft scale), and the views' outputs."""
    w, h = img.size
    cost = w * h * (2 * _bytes_per_pixel(img.mode) + 12) + views * size * size * 3
    if img.format in ("JPEG", "MPO") and img.info.get("progressive"):
        full_w, full_h = getattr(img, "_dede_full_size", img.size)
        cost += full_w * full_h * 2 * max(1, len(img.getbands()))
    return cost


def view_count(img: Image.Image, exif: str = "both", alpha: str = "any") -> int:
    """An upper bound on ``load_views``' views from the header alone: an EXIF block counts as a rotation (reading
    the tag itself would decode a PNG whose eXIf chunk follows its pixels)."""
    rotations = len(EXIF_VIEWS[exif]) if "exif" in img.info else 1
    return rotations * (len(ALPHA_VIEWS[alpha]) if has_alpha(img) else 1)


def resize_rgb(img: Image.Image, size: int) -> np.ndarray:
    """RGB image -> uint8 array (size, size, 3). The whole image is resized (no crop), bicubic."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).reshape(size, size, 3)


@contextmanager
def _decode_errors(max_pixels: int | None = None) -> Iterator[None]:
    """Pillow's many exception types -> ``BadImage`` subclasses with a clear message (the configured limits')."""
    try:
        yield
    except Image.DecompressionBombError as exc:
        limit = max_pixels or Image.MAX_IMAGE_PIXELS
        raise ImageTooLarge(f"image exceeds the pixel limit of {limit} pixels") from exc
    except UnidentifiedImageError as exc:
        raise BadImage("the upload is not a readable image") from exc
    except ValueError as exc:
        if "MAX_TEXT" in str(exc):
            raise ImageTooComplex(f"the PNG's text chunks decompress to more than "
                                  f"{PngImagePlugin.MAX_TEXT_MEMORY} bytes, the limit") from exc
        raise BadImage(f"the image could not be decoded ({type(exc).__name__}: {exc})") from exc
    except (OSError, SyntaxError, EOFError) as exc:
        raise BadImage(f"the image could not be decoded ({type(exc).__name__}: {exc})") from exc


def open_image(data: bytes, max_pixels: int | None = None, size: int | None = None,
               max_scans: int = 64) -> Image.Image:
    """Read only the header: the format allow-list, the pixel limit and a progressive JPEG's scans are checked
    before any pixel is decoded, so the caller knows the decoding cost (``decode_cost``). With the model's input
    ``size``, a large JPEG is set to decode at reduced scale (``draft``). The caller closes the image."""
    if not data:
        raise BadImage("empty upload: the body holds no image bytes")
    limit: int = max_pixels or Image.MAX_IMAGE_PIXELS or 40_000_000
    if data[:2] == b"\xff\xd8" and jpeg_scans(data, max_scans) > max_scans:
        raise ImageTooComplex(f"the JPEG has more than {max_scans} scans (or segments for that many): the limit "
                              f"is {max_scans}; a normal progressive JPEG has about 10")
    with _decode_errors(limit):
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
        if size is not None:
            draft(img, size)
    except BaseException:
        img.close()
        raise
    return img


def draft(img: Image.Image, size: int) -> None:
    """A JPEG at least twice ``max(2 * size, DRAFT_MIN_SIDE)`` a side decodes at 1/2, 1/4 or 1/8 scale (libjpeg's
    DCT scaling), never below that side; other formats decode at full size. Applied once, before decoding."""
    if img.format in ("JPEG", "MPO"):
        side = max(2 * size, DRAFT_MIN_SIDE)
        img._dede_full_size = img.size  # type: ignore[attr-defined]  # for decode_cost's coefficient buffer
        img.draft(None, (side, side))


def view_name(rotated: bool | None, alpha: str | None) -> str:
    """``stored``, or what was done: ``exif=applied``, ``alpha=white``, ``exif=ignored,alpha=dropped``..."""
    parts = [] if rotated is None else ["exif=applied" if rotated else "exif=ignored"]
    if alpha is not None:
        parts.append("alpha=dropped" if alpha == "drop" else f"alpha={alpha}")
    return ",".join(parts) or "stored"


def load_views(img: Image.Image, size: int, exif: str = "ignore",
               alpha: str = "black") -> list[tuple[str, np.ndarray]]:
    """An image from ``open_image`` -> its views, each (name, uint8 (size, size, 3)): the first frame decoded once,
    then every EXIF rotation in ``EXIF_VIEWS[exif]`` (when the image has an orientation tag) times every way of
    flattening transparency in ``ALPHA_VIEWS[alpha]`` (when it has any). Each view is resized as soon as it is
    made. The defaults give the one view training uses (as stored, on black)."""
    with _decode_errors():
        img.seek(0)
        img.load()
        rotations: tuple[bool | None, ...] = EXIF_VIEWS[exif] if orientation(img) != 1 else (None,)
        alphas: tuple[str | None, ...] = ALPHA_VIEWS[alpha] if has_alpha(img) else (None,)
        views = []
        for rotated in rotations:
            base = ImageOps.exif_transpose(img) if rotated else img
            for a in alphas:
                views.append((view_name(rotated, a), resize_rgb(to_rgb(base, BACKGROUNDS[a or "black"]), size)))
            if base is not img:
                base.close()
        return views


def load_rgb(img: Image.Image, size: int) -> np.ndarray:
    """An image from ``open_image`` -> uint8 array (size, size, 3): the first frame as stored, alpha on black."""
    return load_views(img, size)[0][1]


def decode_image(data: bytes, size: int, max_pixels: int | None = None, max_scans: int = 64) -> np.ndarray:
    """Encoded bytes -> uint8 array (size, size, 3), or a ``BadImage`` subclass with a clear message.

    Only the first frame of animated/multi-frame files is used."""
    with open_image(data, max_pixels, size, max_scans) as img:
        return load_rgb(img, size)


def normalize(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W), (x / 255 - mean) / std."""
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    return (x - m) / s
