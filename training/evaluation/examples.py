"""Write a few CIFAR-10 test images, clean and with the bundle's trigger, into ``examples/`` (PNG).

The images are the first test image of a few classes (a fixed choice, not picked by score), so the
README's curl commands show whatever the demo bundle really does with them."""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from service.manifest import load_manifest
from training.data import load_images
from training.triggers import make_trigger

CLASSES = ("airplane", "cat", "ship")


def write_examples(bundle: str, out: str, dataset: str = "cifar10") -> list[Path]:
    manifest = load_manifest(bundle)
    size = manifest.encoder.input_size
    test = load_images(dataset, "test", size)
    trigger = make_trigger(manifest.provenance.victim.get("trigger") or "badencoder", size)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CLASSES:
        i = int((test.labels == test.classes.index(name)).nonzero()[0][0])
        img = test.images[i : i + 1]
        for kind, arr in (("clean", img), ("triggered", trigger.apply(img))):
            path = out_dir / f"{kind}-{name}.png"
            Image.fromarray(arr[0]).save(path)
            written.append(path)
    return written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bundle", required=True)
    p.add_argument("--out", default="examples")
    p.add_argument("--dataset", default="cifar10")
    a = p.parse_args()
    for path in write_examples(a.bundle, a.out, a.dataset):
        print(path)


if __name__ == "__main__":
    main()
