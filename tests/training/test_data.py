import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import EXAMPLES, needs_cifar
from training.data import fingerprint, load_images


@pytest.fixture
def labelled_folder(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    for split in ("train", "test"):
        for f in sorted(EXAMPLES.glob("*.png")):
            kind = f.stem.split("-")[0]
            (root / split / kind).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, root / split / kind / f.name)
    # a grayscale image and a non-image file must not break loading
    Image.new("L", (20, 10), 128).save(root / "train" / "clean" / "gray.png")
    (root / "train" / "clean" / "notes.txt").write_text("not an image")
    return root


def test_folder_and_zip_give_the_same_arrays(labelled_folder: Path, tmp_path: Path) -> None:
    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in labelled_folder.rglob("*"):
            if p.is_file():
                z.write(p, p.relative_to(labelled_folder).as_posix())
    a = load_images(labelled_folder, "train", 32, cache=False)
    b = load_images(zpath, "train", 32, cache=False)
    assert a.images.shape == (7, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.classes == ["clean", "triggered"]
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert sorted(set(a.labels.tolist())) == [0, 1]


def test_resize_and_cache(labelled_folder: Path) -> None:
    first = load_images(labelled_folder, "test", 16)
    again = load_images(labelled_folder, "test", 16)  # from the .npz cache
    assert first.images.shape == (6, 16, 16, 3)
    assert np.array_equal(first.images, again.images) and first.classes == again.classes
    assert fingerprint(first.images) == fingerprint(again.images)


def test_unlabelled_folder(labelled_folder: Path) -> None:
    s = load_images(labelled_folder / "train", None, 32, labelled=False, cache=False)
    assert len(s) == 7 and np.all(s.labels == -1)


def test_errors(tmp_path: Path, labelled_folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match="DEDE_DATA_ROOT"):
        load_images("no-such-dataset", "train", 32)
    with pytest.raises(ValueError, match="no images under 'val/"):
        load_images(labelled_folder, "val", 32, cache=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        load_images(tmp_path / "empty", None, 32, labelled=False, cache=False)


@needs_cifar
def test_cifar10_test_split() -> None:
    s = load_images("cifar10", "test", 32)
    assert s.images.shape == (10000, 32, 32, 3)
    assert len(s.classes) == 10 and s.classes[9] == "truck"
    assert np.bincount(s.labels).tolist() == [1000] * 10
