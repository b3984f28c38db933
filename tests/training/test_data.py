import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import EXAMPLES, needs_cifar
from training.data import aux_layout, count_images, fingerprint, load_crops, load_images


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


def test_the_cache_is_memory_mapped_and_copy_on_write(labelled_folder: Path) -> None:
    first = load_images(labelled_folder, "train", 16)
    assert isinstance(first.images, np.memmap)  # paged in as used: a large set is never read whole into RAM
    before = np.array(first.images[0])
    first.images[0] = 0  # a caller's change stays in its own pages
    again = load_images(labelled_folder, "train", 16)
    assert np.array_equal(again.images[0], before) and not np.array_equal(first.images[0], before)
    assert fingerprint(again.images, chunk=2) == fingerprint(np.array(again.images))  # chunked = whole


def test_unreadable_images_are_counted_and_none_readable_is_an_error(tmp_path: Path, labelled_folder: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (labelled_folder / "train" / "clean" / "broken.png").write_bytes(b"\x89PNG not really")
    s = load_images(labelled_folder, "train", 16)  # through the cache file, compacted
    assert len(s) == 7 and "skipped 1 of 8 image files" in capsys.readouterr().out
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="none of its 3 image files could be read \\(the first: 0.jpg: "):
        load_images(bad, None, 16, labelled=False)


def test_aux_layout_tells_a_split_tree_from_a_plain_folder(labelled_folder: Path) -> None:
    assert aux_layout(labelled_folder) == "train"
    assert aux_layout(labelled_folder / "train" / "clean") == ""  # a plain folder of images
    assert count_images(labelled_folder, "train") == 7 and count_images(labelled_folder / "test", None,
                                                                         labelled=False) == 6


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


def test_crops_follow_load_images_order(labelled_folder: Path) -> None:
    whole = load_images(labelled_folder, "train", 16, cache=False)
    crops = load_crops(labelled_folder, "train", 16, 3, seed=1)  # cached
    assert crops.shape == (len(whole), 3, 16, 16, 3) and crops.dtype == np.uint8
    assert np.array_equal(crops, load_crops(labelled_folder, "train", 16, 3, seed=1))  # from the cache
    again = load_crops(labelled_folder, "train", 16, 3, seed=1, cache=False)
    assert np.array_equal(crops, again)  # the crops depend on the seed and the image only
    assert not np.array_equal(crops, load_crops(labelled_folder, "train", 16, 3, seed=2, cache=False))
    gray = sorted(p.relative_to(labelled_folder).as_posix() for p in (labelled_folder / "train").rglob("*.png")).index(
        "train/clean/gray.png")
    assert np.all(crops[gray] == 128)  # a uniform image crops to itself, at the image's own index
    assert not np.array_equal(crops[:, 0], crops[:, 1])  # two crops of an image differ
    with pytest.raises(ValueError, match="crops >= 1"):
        load_crops(labelled_folder, "train", 16, 0)
    with pytest.raises(ValueError, match="scale"):
        load_crops(labelled_folder, "train", 16, 2, scale=(0.5, 1.5))


def test_crops_cover_a_share_of_the_image_and_flip(tmp_path: Path) -> None:
    # left half red, right half blue, 200 px: a crop's red share says where it was cut and whether it was flipped
    img = np.zeros((200, 200, 3), dtype=np.uint8)
    img[:, :100, 0], img[:, 100:, 2] = 255, 255
    (tmp_path / "two").mkdir()
    Image.fromarray(img).save(tmp_path / "two" / "a.png")
    crops = load_crops(tmp_path / "two", None, 32, 64, labelled=False, scale=(0.25, 0.25), cache=False)[0]
    red = crops[..., 0].astype(float) > crops[..., 2]  # (64, 32, 32)
    left, right = red[:, :, :16].mean(axis=(1, 2)), red[:, :, 16:].mean(axis=(1, 2))
    assert np.any(left > right + 0.3) and np.any(right > left + 0.3)  # red on the left, and flipped: on the right
    share = red.mean(axis=(1, 2))
    assert np.any((share < 0.05) | (share > 0.95))  # a quarter of the area (about 100 px wide) fits in one half
    whole = load_crops(tmp_path / "two", None, 32, 64, labelled=False, scale=(1.0, 1.0), cache=False)[0]
    share = (whole[..., 0].astype(float) > whole[..., 2]).mean(axis=(1, 2))
    assert np.all((share > 0.4) & (share < 0.6))  # the whole area (at least 173 px wide): both halves
