"""The downstream defence of ``dede reproduce`` (the paper's Tables 2 and 4): a downstream classifier on the
bundle encoder's embeddings, trained on a CIFAR-10 / GTSRB training set with 1% triggered samples (and on
the clean set), tested on clean and triggered test images, with no defence and with DeDe filtering both the
training and the test inputs (``training.evaluation.downstream``). For an attack, the bundle is its in-distribution
detector (``dede``, ``dede@paper-1.5x``), and, given ``--ood-bundle``, also the detector of the same encoder
trained on the out-of-distribution auxiliary set (``dede-ood``, at its deployed threshold); for the "no
attack" rows, a control bundle (the clean encoder) with the attack's trigger. DECREE
filters too where its per-sample score applies (patch triggers): the trigger inverted on the attacked
encoder, threshold at 1% FPR on clean base images.

``--asset`` makes a cell of its own (``downstream-asset-<attack>``; ASSET trains for minutes per dataset where the
other filters score in seconds, so the grid can resume between them): ASSET, a poisoned-data detector, is fitted
on the poisoned downstream training set it filters (its labels as the user holds them, relabelled poison
included; the base set is 1000 trusted clean images of that split, as its script draws), flags that set with its
``get_t`` threshold, and scores the test inputs with the same offset classifier and threshold, each labelled with
the class the downstream classifier predicts for it. Its offset
classifier trains on a random subset of the training set (``--asset-train``, default by preset:
``ASSET_DOWNSTREAM_TRAIN``); every training image is then scored.

    python -m training.research.downstream --bundle R/bundles/badencoder-id --attack badencoder \
        --trigger-from R/badencoder --preset cpu --out R/cells/downstream-badencoder.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from training.baselines import (
    DECREE_PRESETS,
    DecreeConfig,
    asset_config,
    asset_threshold,
    decree_applicable,
    decree_scores,
    decree_threshold,
    invert_trigger,
    offset_scores,
    run_asset,
)
from training.config import resolve_config
from training.encoders import load_encoder
from training.evaluation.downstream import (
    DOWNSTREAM_PRESETS,
    Detector,
    DownstreamConfig,
    FittedFilter,
    TrainedFilter,
    downstream_grid,
)
from training.evaluation.downstream_bundle import BundleModels
from training.evaluation.evaluate import hardware
from training.loop import pick_device
from training.research.baselines import decree_base
from training.triggers import make_trigger, recorded_trigger

ASSET_DOWNSTREAM_TRAIN = {"tiny": 300, "cpu": 10000, "paper": 0}  # images ASSET trains on per training set; 0 = all


def decree_detector(encoder_dir: Path, preset: str) -> Detector:
    """DECREE as a filter: invert the trigger on the (torch) encoder with clean base images only."""
    model, spec = load_encoder(encoder_dir)
    cfg = resolve_config(DecreeConfig, DECREE_PRESETS, preset)
    clean_ref, calib = decree_base(cfg.n_images)
    res = invert_trigger(model, spec, clean_ref, cfg)
    return Detector(lambda images: decree_scores(res, images), decree_threshold(res, calib))


def asset_filter(encoder_dir: Path, attack: str, preset: str, max_train: int, seed: int = 0) -> TrainedFilter:
    """ASSET as a trained filter on the (torch) attacked encoder, at the preset's ASSET settings (epochs by attack).
    It trains on at most ``max_train`` (0 = all) seeded random images of the training set it filters."""
    model, spec = load_encoder(encoder_dir)
    base_cfg = asset_config(attack, preset)
    device = pick_device("auto")

    def fit(images: np.ndarray, labels: np.ndarray, n_classes: int, trusted: np.ndarray) -> FittedFilter:
        cfg = replace(base_cfg, n_classes=n_classes, seed=seed)
        idx = np.arange(len(images))
        if max_train and max_train < len(images):
            idx = np.sort(np.random.default_rng(seed).permutation(len(images))[:max_train])
        res = run_asset(model, spec, trusted, images[:0], cfg, pool_labels=labels[:0], train_images=images[idx],
                        train_labels=labels[idx], device=device, log=True)

        def score(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            return offset_scores(res.model, x, y, spec, cfg, device)

        train_scores = score(images, labels)  # (N,)
        threshold = asset_threshold(train_scores, cfg.threshold_eps)
        return FittedFilter(train_scores > threshold, score, threshold,
                            {"asset_train_images": int(len(idx)), "asset_epochs": cfg.epochs,
                             "asset_flagged": sum(res.flagged_per_epoch), "asset_wall_s": res.wall_s})

    return TrainedFilter(fit)


def downstream_cell(bundle: Path, attack: str, trigger_from: Path, preset: str, overrides: list[str],
                    command: str, threads: int = 0, datasets: tuple[str, ...] = ("cifar10", "gtsrb"),
                    ood_bundle: Path | None = None, asset_train: int | None = None,
                    only: str | None = None) -> list[dict[str, Any]]:
    """Records for one encoder: detector ``none`` always, ``dede`` (at the bundle's deployed threshold) and
    ``dede@paper-1.5x`` for an attacked encoder, ``dede-ood`` (``ood_bundle``'s detector) when given. With
    ``asset_train`` (a number; 0 = the whole training set): ASSET's records alone, poisoned training set only.
    With ``only`` (a detector name, e.g. ``dede-robust``): the bundle's detector alone at its deployed threshold,
    recorded under that name, poisoned training set only (cell ``downstream-<only minus dede->-<attack>``)."""
    start = time.time()
    cfg = resolve_config(DownstreamConfig, DOWNSTREAM_PRESETS, preset, None, overrides)
    models = BundleModels(bundle, threads=threads)
    name, params = recorded_trigger(trigger_from)
    trigger = make_trigger(name, models.manifest.encoder.input_size, params)
    if asset_train is not None or only is not None:  # one filter alone, in a cell of its own
        if attack == "none":
            raise ValueError("a single-filter cell filters an attacked encoder's downstream data; --attack none "
                             "has none")
        alone: dict[str, Detector | TrainedFilter] = (
            {"asset": asset_filter(trigger_from, attack, preset, asset_train)} if asset_train is not None
            else {str(only): models.detector()})
        cfg.train_sets = ["poisoned"]
        records = downstream_grid(models.embed, trigger, attack, alone, datasets=datasets, cfg=cfg, baseline=False)
        (det,) = alone
        return _finish(records, f"downstream-{det.removeprefix('dede-')}-{attack}", bundle, name, preset, command,
                       start, {} if det == "asset" else {det: bundle.name})
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
    cell = f"downstream-{attack}" if attack != "none" else f"downstream-none-{bundle.name}"
    return _finish(records, cell, bundle, name, preset, command, start, sources)


def _finish(records: list[dict[str, Any]], cell: str, bundle: Path, trigger: str, preset: str, command: str,
            start: float, sources: dict[str, str]) -> list[dict[str, Any]]:
    """Stamp a cell's records with where and how they were made."""
    wall = round(time.time() - start, 1)
    for r in records:
        r.update({"source": "reproduce", "cell": cell, "bundle": bundle.name, "trigger": trigger, "preset": preset,
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
    p.add_argument("--asset", action="store_true", help="ASSET as the filter, alone (a cell of its own)")
    p.add_argument("--asset-train", type=int, default=None,
                   help="images ASSET trains on per training set (0 = all; default by preset)")
    p.add_argument("--only", metavar="NAME", help="the bundle's detector alone, recorded as NAME (e.g. dede-robust; "
                   "a cell of its own)")
    p.add_argument("--command-line", default="dede reproduce")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    asset_train = (a.asset_train if a.asset_train is not None else ASSET_DOWNSTREAM_TRAIN.get(a.preset, 0)
                   ) if a.asset else None
    records = downstream_cell(a.bundle, a.attack, a.trigger_from, a.preset, a.overrides, a.command_line, a.threads,
                              tuple(a.dataset) or ("cifar10", "gtsrb"), a.ood_bundle, asset_train, a.only)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(a.out)


if __name__ == "__main__":
    main()
