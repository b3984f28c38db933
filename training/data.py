"""Image datasets as whole uint8 arrays (airbench style): decode once, cache, then index on the device.

Two layouts are read:
- labelled: a zip or folder laid out ``<split>/<class>/<file>`` (the format of ``../shared/data/*.zip``);
- unlabelled: a plain folder (or zip) of images, searched recursively (what a defender has as an
  auxiliary set). Labels are -1.

Every image is converted to RGB and resized to the encoder's input size with ``service.imaging`` (the same
code the service uses). Decoded arrays are cached as ``.npz`` (no pickle) under ``cache_dir``.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from service.imaging import resize_rgb, to_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".ppm")
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


def _cache_file(path: Path, split: str | None, size: int) -> Path:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}|{split}|{size}|v1"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / f"{path.stem}-{split or 'all'}-{size}px-{digest}.npz"


def load_images(
    source: str | Path, split: str | None, size: int, *, labelled: bool = True, cache: bool = True
) -> ImageSet:
    """Load ``split`` of a labelled dataset (``labelled=True``) or every image of an unlabelled one.

    Returns uint8 (N, size, size, 3) images. Raises ``FileNotFoundError``/``ValueError`` with a clear
    message when the source or split is missing or holds no images."""
    path = resolve_source(source)
    cache_file = _cache_file(path, split if labelled else None, size)
    if cache and cache_file.exists():
        with np.load(cache_file, allow_pickle=False) as z:
            return ImageSet(z["images"], z["labels"], [str(c) for c in z["classes"]])
    reader = _Reader(path)
    names = reader.names()
    if labelled:
        prefix = f"{split}/"
        names = [n for n in names if n.startswith(prefix) and n.count("/") >= 2]
        if not names:
            raise ValueError(f"{path} has no images under '{split}/<class>/'")
        class_of = [n.split("/")[1] for n in names]
        classes = sorted(set(class_of))
        labels = np.array([classes.index(c) for c in class_of], dtype=np.int64)
    else:
        if not names:
            raise ValueError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        classes, labels = [], np.full(len(names), -1, dtype=np.int64)
    images = np.empty((len(names), size, size, 3), dtype=np.uint8)
    bad = []
    for i, name in enumerate(names):
        try:
            images[i] = _decode(reader.read(name), size)
        except (OSError, ValueError, SyntaxError) as exc:
            bad.append(i)
            if len(bad) <= 3:
                print(f"warning: skipping unreadable image {name}: {exc}")
    if bad:
        keep = np.setdiff1d(np.arange(len(names)), bad)
        images, labels = images[keep], labels[keep]
    out = ImageSet(images, labels, classes)
    if cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")  # processes decoding at once don't collide
        np.savez(tmp, images=out.images, labels=out.labels, classes=np.array(classes, dtype=str))
        tmp.replace(cache_file)
    return out


def fingerprint(images: np.ndarray) -> str:
    """sha256 of an image array: identifies an auxiliary set in a bundle's provenance."""
    h = hashlib.sha256()
    h.update(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()
