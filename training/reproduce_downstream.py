"""The downstream defence of ``dede reproduce`` (the paper's Tables 2 and 4): a downstream classifier on the
bundle encoder's embeddings, trained on a CIFAR-10 / GTSRB training set with 1% triggered samples (and on
the clean set), tested on clean and triggered test images, with no defence and with DeDe filtering both the
training and the test inputs (``training.downstream``). For an attack, the bundle is its in-distribution
detector (``dede``, ``dede@paper-1.5x``), and, given ``--ood-bundle``, also the detector of the same encoder
trained on the out-of-distribution auxiliary set (``dede-ood``, at its deployed threshold); for the "no
attack" rows, a control bundle (the clean encoder) with the attack's trigger. DECREE
filters too where its per-sample score applies (patch triggers): the trigger inverted on the attacked
encoder, threshold at 1% FPR on clean base images. ASSET is not a filter here: it trains an offset
classifier on each whole downstream training set, beyond a 2-core CPU's budget for this grid.

    python -m training.reproduce_downstream --bundle R/bundles/badencoder-id --attack badencoder \
        --preset cpu --out R/cells/downstream-badencoder.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from training.attacks import recorded_trigger
from training.attacks.triggers import make_trigger
from training.baselines import decree_applicable
from training.config import resolve_config
from training.downstream import DOWNSTREAM_PRESETS, Detector, DownstreamConfig, downstream_grid
from training.downstream_bundle import BundleModels
from training.encoders import load_encoder
from training.evaluate import hardware


def decree_detector(encoder_dir: Path, preset: str) -> Detector:
    """DECREE as a filter: invert the trigger on the (torch) encoder with clean base images only."""
    from training.baselines import DECREE_PRESETS, DecreeConfig, decree_scores, decree_threshold, invert_trigger
    from training.reproduce_baselines import decree_base

    model, spec = load_encoder(encoder_dir)
    cfg = resolve_config(DecreeConfig, DECREE_PRESETS, preset)
    clean_ref, calib = decree_base(cfg.n_images)
    res = invert_trigger(model, spec, clean_ref, cfg)
    return Detector(lambda images: decree_scores(res, images), decree_threshold(res, calib))


def downstream_cell(bundle: Path, attack: str, trigger_from: Path, preset: str, overrides: list[str],
                    command: str, threads: int = 0, datasets: tuple[str, ...] = ("cifar10", "gtsrb"),
                    ood_bundle: Path | None = None) -> list[dict[str, Any]]:
    """Records for one encoder: detector ``none`` always, ``dede`` (at the bundle's deployed threshold) and
    ``dede@paper-1.5x`` for an attacked encoder, ``dede-ood`` (``ood_bundle``'s detector) when given."""
    start = time.time()
    cfg = resolve_config(DownstreamConfig, DOWNSTREAM_PRESETS, preset, None, overrides)
    models = BundleModels(bundle, threads=threads)
    name, params = recorded_trigger(trigger_from)
    trigger = make_trigger(name, models.manifest.encoder.input_size, params)
    detectors = {} if attack == "none" else {"dede": models.detector(),
                                             "dede@paper-1.5x": models.detector("paper-1.5x")}
    sources = {"dede": bundle.name, "dede@paper-1.5x": bundle.name}
    if attack != "none" and ood_bundle is not None:
        ood = BundleModels(ood_bundle, threads=threads)
        if ood.manifest.encoder.sha256 != models.manifest.encoder.sha256:
            raise ValueError(f"{ood_bundle} holds another encoder than {bundle}")
        detectors["dede-ood"], sources["dede-ood"] = ood.detector(), ood_bundle.name
    if attack != "none" and decree_applicable(name):
        detectors["decree"] = decree_detector(trigger_from, preset)
    records = downstream_grid(models.embed, trigger, attack, detectors, datasets=datasets, cfg=cfg)
    wall = round(time.time() - start, 1)
    cell = f"downstream-{attack}" if attack != "none" else f"downstream-none-{bundle.name}"
    for r in records:
        r.update({"source": "reproduce", "cell": cell, "bundle": bundle.name, "trigger": name, "preset": preset,
                  "hardware": hardware(), "wall_s": wall, "command": command})
        if r["detector"] in sources:
            r["detector_bundle"] = sources[r["detector"]]
    return records


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", required=True, type=Path)
    p.add_argument("--attack", required=True, help="the encoder's attack, 'none' for a clean encoder")
    p.add_argument("--trigger-from", required=True, type=Path, help="the attacked encoder whose trigger is used")
    p.add_argument("--ood-bundle", type=Path, help="the same encoder's detector on out-of-distribution aux data")
    p.add_argument("--preset", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dataset", action="append", default=[], help="downstream dataset (default cifar10 and gtsrb)")
    p.add_argument("--command-line", default="dede reproduce")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    records = downstream_cell(a.bundle, a.attack, a.trigger_from, a.preset, a.overrides, a.command_line, a.threads,
                              tuple(a.dataset) or ("cifar10", "gtsrb"), a.ood_bundle)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(a.out)


if __name__ == "__main__":
    main()
