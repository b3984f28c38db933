"""Image datasets as whole uint8 arrays (airbench style): decode once, cache, then index on the device.

Two layouts are read:
- labelled: a zip or folder laid out ``<split>/<class>/<file>`` (the format of ``../shared/data/*.zip``);
- unlabelled: a plain folder (or zip) of images, searched recursively (what a defender has as an
  auxiliary set). Labels are -1.

Every image is converted to RGB and resized to the encoder's input size with ``service.imaging`` (the same code the
service uses). Decoded arrays are cached under ``cache_root()`` as ``.npy`` files (no pickle), decoded straight into
the file and read back memory-mapped (copy-on-write: an array a caller changes is changed in RAM, never in the
cache): a large set is paged in as it is used, never held whole in RAM (224-px images are 150 KB each).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from service.imaging import resize_rgb, to_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".ppm")
CROP_SCALE = (0.25, 1.0)  # load_crops: the share of an image's area a crop covers
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_root() -> Path:
    """Where named datasets live: ``$DEDE_DATA_ROOT`` or ``../shared/data`` next to the repository."""
    return Path(os.environ.get("DEDE_DATA_ROOT", DEFAULT_DATA_ROOT))


def cache_root() -> Path:
    return Path(os.environ.get("DEDE_CACHE_DIR", Path.home() / ".cache" / "dede"))


@dataclass
class ImageSet:
    """images: uint8 (N, H, W, 3); labels: int64 (N,), -1 when unlabelled; classes: class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> ImageSet:
        return ImageSet(self.images[idx], self.labels[idx], self.classes)

    def sample(self, n: int, seed: int = 0) -> ImageSet:
        """``n`` images drawn at random (all of them, in order, when ``n`` is 0)."""
        if not n:
            return self
        return self.subset(np.random.default_rng(seed).permutation(len(self))[:n])


def resolve_source(source: str | Path) -> Path:
    """A dataset name (``cifar10``) resolves to ``<data_root>/<name>.zip``, else to the folder
    ``<data_root>/<name>`` (the zip extracted); anything else is a path."""
    path = Path(source)
    if not path.exists() and not path.suffix and "/" not in str(source):
        path = data_root() / f"{source}.zip"
        if not path.exists() and (data_root() / str(source)).is_dir():
            path = data_root() / str(source)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {source!r} not found (looked at {path}); set DEDE_DATA_ROOT or pass a path"
        )
    return path


class _Reader:
    """Lists and reads image members of a zip or a folder with the same interface."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() else None

    def names(self) -> list[str]:
        if self.zip is not None:
            names = self.zip.namelist()
        else:
            names = [p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file()]
        return sorted(n for n in names if n.lower().endswith(IMAGE_SUFFIXES))

    def read(self, name: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(name)
        return (self.path / name).read_bytes()


def _decode(data: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.seek(0)
        return resize_rgb(to_rgb(img), size)


def _random_crops(data: bytes, size: int, n: int, rng: np.random.Generator,
                  scale: tuple[float, float]) -> np.ndarray:
    """``n`` random crops of one encoded image, each a share ``scale`` of its area with an aspect ratio of 3/4 to 4/3
    (torchvision's RandomResizedCrop, without its retries), flipped left-right half of the time and resized whole
    to ``size``. -> uint8 (n, size, size, 3)"""
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(data)) as img:
        img.seek(0)
        rgb = to_rgb(img)
        w, h = rgb.size
        for j in range(n):
            area, ratio = w * h * rng.uniform(*scale), math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            cw = min(w, max(1, round(math.sqrt(area * ratio))))
            ch = min(h, max(1, round(math.sqrt(area / ratio))))
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            crop = rgb.crop((x, y, x + cw, y + ch))
            if rng.random() < 0.5:
                crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out[j] = resize_rgb(crop, size)
    return out


def _cache_file(path: Path, split: str | None, size: int, tag: str = "") -> Path:
    """Where a decoded array of ``path`` is cached (``.npy``; its labels beside it in ``.labels.npz``); ``tag`` names
    what else made it (crops: their count, seed...)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}|{split}|{size}|v2" + (f"|{tag}" if tag else "")
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / f"{path.stem}-{split or 'all'}-{size}px{'-' + tag if tag else ''}-{digest}.npy"


def _labels_file(cache_file: Path) -> Path:
    return cache_file.with_suffix(".labels.npz")


def _tmp(cache_file: Path, suffix: str) -> Path:
    return cache_file.with_suffix(f".{os.getpid()}.tmp{suffix}")  # processes decoding at once don't collide


def _publish(tmp: Path, cache_file: Path) -> None:
    tmp.replace(cache_file)


def _members(path: Path, split: str | None, labelled: bool) -> tuple[_Reader, list[str], np.ndarray, list[str]]:
    """The image members of a dataset that ``load_images`` reads, in its order: (reader, names, labels (N,),
    class names)."""
    reader = _Reader(path)
    names = reader.names()
    if labelled:
        prefix = f"{split}/"
        names = [n for n in names if n.startswith(prefix) and n.count("/") >= 2]
        if not names:
            raise ValueError(f"{path} has no images under '{split}/<class>/' (for a plain folder of images, pass "
                             "--aux DIR or --set aux_split=)")
        class_of = [n.split("/")[1] for n in names]
        classes = sorted(set(class_of))
        return reader, names, np.array([classes.index(c) for c in class_of], dtype=np.int64), classes
    if not names:
        raise ValueError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return reader, names, np.full(len(names), -1, dtype=np.int64), []


def _decode_each(reader: _Reader, names: list[str], shape: tuple[int, ...],
                 decode: Callable[[bytes, int], np.ndarray], into: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``decode(data, i)`` of every member ``names[i]`` -> (uint8 (N', *shape), the indices of the N' readable
    ones), decoded into the ``.npy`` file ``into`` (memory-mapped) when given, else into RAM. Unreadable images are
    skipped with a warning and counted; none readable is a ``ValueError``."""

    def alloc(n: int, path: Path | None) -> np.ndarray:
        return np.lib.format.open_memmap(path, "w+", np.uint8, (n, *shape)) if path else np.empty((n, *shape), np.uint8)

    out = alloc(len(names), into)
    bad: list[int] = []
    first_error = ""
    for i, name in enumerate(tqdm(names, desc=f"decoding {reader.path.name}", unit="img", leave=False,
                                  disable=len(names) < 256)):
        try:
            out[i] = decode(reader.read(name), i)
        except (OSError, ValueError, SyntaxError) as exc:
            bad.append(i)
            first_error = first_error or f"{name}: {exc}"
            if len(bad) <= 3:
                print(f"warning: skipping unreadable image {name}: {exc}")
    if len(bad) == len(names):
        raise ValueError(f"{reader.path}: none of its {len(names)} image files could be read (the first: "
                         f"{first_error})")
    keep = np.setdiff1d(np.arange(len(names)), bad)
    if not bad:
        return out, keep
    print(f"skipped {len(bad)} of {len(names)} image files that could not be read")
    compact = into.with_suffix(".kept.npy") if into else None
    kept = alloc(len(keep), compact)
    for start in range(0, len(keep), 1024):
        kept[start : start + 1024] = out[keep[start : start + 1024]]
    if compact and into:
        del out, kept
        compact.replace(into)
        kept = np.load(into, mmap_mode="r+")
    return kept, keep


def aux_layout(source: str | Path, split: str = "train") -> str:
    """``split`` when ``source`` is a ``<split>/<class>/<file>`` tree (as ../shared/data's zips are), else "" (a plain
    folder or zip of images, read recursively, unlabelled)."""
    names = _Reader(resolve_source(source)).names()
    if not names:
        raise ValueError(f"{source} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    return split if any(n.startswith(f"{split}/") and n.count("/") >= 2 for n in names) else ""


def count_images(source: str | Path, split: str | None, *, labelled: bool = True) -> int:
    """How many images ``load_images`` would decode (the members' names only are read)."""
    return len(_members(resolve_source(source), split, labelled)[1])


def load_images(
    source: str | Path, split: str | None, size: int, *, labelled: bool = True, cache: bool = True
) -> ImageSet:
    """Load ``split`` of a labelled dataset (``labelled=True``) or every image of an unlabelled one.

    Returns uint8 (N, size, size, 3) images. Raises ``FileNotFoundError``/``ValueError`` with a clear
    message when the source or split is missing or holds no images."""
    path = resolve_source(source)
    cache_file = _cache_file(path, split if labelled else None, size)
    if cache and cache_file.exists() and _labels_file(cache_file).exists():
        with np.load(_labels_file(cache_file), allow_pickle=False) as z:
            return ImageSet(np.load(cache_file, mmap_mode="c"), z["labels"], [str(c) for c in z["classes"]])
    reader, names, labels, classes = _members(path, split, labelled)
    if not cache:
        images, keep = _decode_each(reader, names, (size, size, 3), lambda data, _: _decode(data, size))
        return ImageSet(images, labels[keep], classes)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(cache_file, ".npy")
    images, keep = _decode_each(reader, names, (size, size, 3), lambda data, _: _decode(data, size), into=tmp)
    del images  # a memory map: its pages are written back when it goes
    tmp_labels = _tmp(cache_file, ".labels.npz")
    np.savez(tmp_labels, allow_pickle=False, labels=labels[keep], classes=np.array(classes, dtype=str))
    _publish(tmp, cache_file)
    _publish(tmp_labels, _labels_file(cache_file))
    return load_images(source, split, size, labelled=labelled, cache=True)


def load_crops(source: str | Path, split: str | None, size: int, crops: int, seed: int = 0, *,
               labelled: bool = True, scale: tuple[float, float] = CROP_SCALE, cache: bool = True) -> np.ndarray:
    """``crops`` random crops (``_random_crops``: a share ``scale`` of the area, flipped at random) of every image that
    ``load_images`` with the same arguments loads, in its order: image i's crops are ``out[i]``. Image i's crops
    depend on ``seed`` and i only. -> uint8 (N, crops, size, size, 3)

    More distinct training images from a small set of large photos (Imagenette's are 224 px, the encoder's input 32)."""
    if crops < 1 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"need crops >= 1 and 0 < scale[0] <= scale[1] <= 1, got {crops} and {scale}")
    path = resolve_source(source)
    cache_file = _cache_file(path, split if labelled else None, size, f"crops{crops}-{scale[0]:g}-{scale[1]:g}-s{seed}")
    if cache and cache_file.exists():
        return np.load(cache_file, mmap_mode="c")
    reader, names, _, _ = _members(path, split, labelled)
    tmp = _tmp(cache_file, ".npy") if cache else None
    if tmp:
        tmp.parent.mkdir(parents=True, exist_ok=True)
    out, _ = _decode_each(reader, names, (crops, size, size, 3),
                          lambda data, i: _random_crops(data, size, crops, np.random.default_rng([seed, i]), scale),
                          into=tmp)
    if tmp is None:
        return out
    del out
    _publish(tmp, cache_file)
    return np.load(cache_file, mmap_mode="c")


def fingerprint(images: np.ndarray, chunk: int = 1024) -> str:
    """sha256 of an image array: identifies an auxiliary set in a bundle's provenance. Read ``chunk`` images at a
    time, so a memory-mapped set is never copied whole."""
    h = hashlib.sha256()
    h.update(str(images.shape).encode())
    for start in range(0, len(images), chunk):
        h.update(np.ascontiguousarray(images[start : start + chunk]).tobytes())
    return h.hexdigest()
