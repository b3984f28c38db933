"""``dede study``: how the backdoored-vs-control gap moves with the detector's settings, and how a
poisoned auxiliary set blinds it (with and without robust training).

Every cell trains two DeDe detectors with the same config, one on the backdoored encoder and one on the
clean encoder before the attack (the control), then scores clean and triggered CIFAR-10 test images in
PyTorch at several test mask ratios with several scores. Cells are resumable: a finished run directory is
reused. Axes (one setting varied at a time from the ``study`` preset):
- ``decoder``: width/depth of DeDe; ``epochs``; ``aux``: auxiliary set size; ``mask``: test mask ratio
  (every cell is scored at 0.75 / 0.9 / 0.99);
- ``poison``: auxiliary poison rate 0 / 0.1% / 0.5% / 1% / 5%, plain and with ``drop_worst`` (the
  highest-loss 5% of each batch left out of the loss after the first epoch);
- ``filter``: poison rate 0 / 0.5% / 1% / 5% / 10%, plain, with ``drop_worst`` and with ``drop_dense`` (the
  densest 5% of the auxiliary set's victim embeddings left out before training);
- ``differential``: embedding dropout in training, scored as error(e) - error(null embedding);
- ``encoder``: the demo encoder pair (width 16, 6 SimCLR epochs) against a weaker pair (width 8, 3 epochs)
  backdoored the same way (``make study`` builds it).
Records go to ``docs/research/study.json``; ``docs/research/STUDY.md`` and plots (``docs/figures/``) are regenerated
from it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from service.scores import compute_score
from training.calibrate import patch_error_images
from training.config import TRAIN_PRESETS, TrainConfig, resolve_config
from training.data import load_images
from training.evaluation.evaluate import hardware
from training.metrics import detection_metrics, tpr_at_fpr
from training.reporting.records import merge_into
from training.reporting.results import write_study
from training.runs import load_run
from training.train import train_dede
from training.triggers import make_trigger

RATIOS = (0.75, 0.9, 0.99)
SCORES = ("paper", "trimmed@8", "trimmed@20")
AXES: dict[str, list[tuple[str, list[str]]]] = {
    "decoder": [("w32-d2", ["width=32", "dec_width=32", "depth=2", "heads=2", "dec_heads=2"]),
                ("w64-d3", []),
                ("w128-d6", ["width=128", "dec_width=128", "depth=6", "dec_depth=2"])],
    "epochs": [("e3", ["epochs=3"]), ("e10", []), ("e30", ["epochs=30"])],
    "aux": [("n2500", ["aux_images=2500"]), ("n10000", []), ("n40000", ["aux_images=40000"])],
    "poison": [(f"p{r}{'-robust' if robust else ''}",
                [f"poison_rate={r}"] + (["drop_worst=0.05"] if robust else []))
               for robust in (False, True) for r in (0.0, 0.001, 0.005, 0.01, 0.05)],
    # the poison rates again, plain, robust and dense-filtered, up to twice the share either defence leaves out;
    # `make study-filter` runs it on the cpu-preset encoders of `dede reproduce` (where `id-filtered` was measured)
    "filter": [(f"p{r}{suffix}", [f"poison_rate={r}", *extra])
               for suffix, extra in (("", []), ("-robust", ["drop_worst=0.05"]), ("-filtered", ["drop_dense=0.05"]))
               for r in (0.0, 0.005, 0.01, 0.05, 0.1)],
    "differential": [("embdrop0.3", ["emb_dropout=0.3"])],
    "encoder": [("w16-e6", []), ("w8-e3", [])],  # encoder pairs: see ENCODER_DIRS
}
# the encoder axis: (backdoored, control) directories relative to the demo encoders' parent directory
ENCODER_DIRS = {"w16-e6": ("badencoder", "clean-encoder"), "w8-e3": ("w8-e3/badencoder", "w8-e3/clean-encoder")}


def find_run(out: Path, encoder: str, cfg: TrainConfig) -> Path | None:
    """A finished run of the same encoder and config anywhere under ``out`` (cells share identical runs)."""
    want = asdict(cfg)
    for run_file in sorted(out.glob("**/run.json")):
        config_file = run_file.with_name("config.json")
        if not config_file.exists():
            continue
        config = json.loads(config_file.read_text())
        config.pop("code_version", None)
        same_encoder = json.loads(run_file.read_text())["encoder"] == str(Path(encoder).resolve())
        if same_encoder and config == want:
            return run_file.parent
    return None


def cell_records(axis: str, cell: str, overrides: list[str], encoders: dict[str, str], out: Path,
                 clean: np.ndarray, triggered: np.ndarray) -> list[dict[str, Any]]:
    records = []
    for label, encoder in encoders.items():
        cfg = resolve_config(TrainConfig, TRAIN_PRESETS, "study", overrides=overrides)
        # a new run goes to a directory named after its encoder too: the same cell can run on several pairs
        run_dir = find_run(out, encoder, cfg) or out / axis / cell / f"{label}-{Path(encoder).name}"
        if not (run_dir / "run.json").exists():
            train_dede(cfg, encoder, run_dir)
        model, victim, spec, run, _ = load_run(run_dir)
        quality = {f"{h['stage']}:{k}": h[k] for h in spec.history
                   for k in ("knn_accuracy", "clean_accuracy", "attack_success_rate") if k in h}
        for ratio in RATIOS:
            pe_c = patch_error_images(model, victim, spec, clean, ratio, seed=1)
            pe_t = patch_error_images(model, victim, spec, triggered, ratio, seed=1)
            scores = {k: (compute_score(pe_c, k), compute_score(pe_t, k)) for k in SCORES}
            if cfg.emb_dropout > 0 and ratio < 0.99:
                null_c = patch_error_images(model, victim, spec, clean, ratio, seed=1, null_embedding=True)
                null_t = patch_error_images(model, victim, spec, triggered, ratio, seed=1, null_embedding=True)
                scores["differential"] = (pe_c.sum(1) - null_c.sum(1), pe_t.sum(1) - null_t.sum(1))
            for score, (sc, st) in scores.items():
                met = detection_metrics(sc, st, float(np.quantile(sc, 0.99)))
                records.append({"axis": axis, "cell": cell, "encoder": label, "test_mask_ratio": ratio,
                                "score": score, "auc": met["auc"], "tpr_at_1pct_fpr": tpr_at_fpr(sc, st, 0.01),
                                "overrides": overrides, "train_wall_s": run["train_wall_s"],
                                "final_loss": run["final_loss"], "n_clean": len(sc), "encoder_quality": quality,
                                "encoder_dir": encoder, "aux": {k: run["aux"][k] for k in
                                                                ("n_train", "n_poisoned", "dense_filter")
                                                                if k in run["aux"]}})
    return records


def study_order() -> dict[str, list[str]]:
    """Each axis's cells in the order ``AXES`` defines them (the report's row order)."""
    return {axis: [cell for cell, _ in cells] for axis, cells in AXES.items()}


def run_study(axes: list[str], bad_encoder: str, clean_encoder: str, out: str, results: str, report: str,
              n_test: int = 2000, skip: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    unknown = set(axes) - set(AXES)
    if unknown:
        raise ValueError(f"unknown study axes {sorted(unknown)}; valid: {', '.join(AXES)}")
    trigger = make_trigger("badencoder", 32)
    test = load_images("cifar10", "test", 32)
    idx = np.random.default_rng(0).permutation(len(test))[:n_test]
    clean = test.images[idx]
    triggered = trigger.apply(clean)
    path = Path(results)
    encoders = {"backdoored": bad_encoder, "control": clean_encoder}
    for axis in axes:
        for cell, overrides in AXES[axis]:
            if cell in skip:
                continue
            start = time.time()
            print(f"study {axis}/{cell}: {overrides}")
            cell_encoders = encoders
            if axis == "encoder":
                parent = Path(bad_encoder).parent
                bad, ctl = ENCODER_DIRS[cell]
                cell_encoders = {"backdoored": str(parent / bad), "control": str(parent / ctl)}
            new = cell_records(axis, cell, overrides, cell_encoders, Path(out), clean, triggered)
            for r in new:  # pair: the encoder pair an axis ran on (one axis can run on several)
                r.update({"hardware": hardware(), "cell_wall_s": round(time.time() - start, 1),
                          "command": f"dede study --axis {axis}", "pair": bad_encoder})
            # re-read before writing: several study processes (one per axis) may share the file
            merge_into(path, new, lambda r: (r["axis"], r["cell"], r.get("pair")))
    records = json.loads(path.read_text()) if path.exists() else []
    write_study(records, Path(report), study_order())
    return records
