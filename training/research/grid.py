"""The reproduce grid's definitions, shared by the runner (``training.research.reproduce``) and its report
(``training.reporting.reproduce``): the attacks and the clean encoder each starts from, the auxiliary sets, and
the names a grid gives its roots, runs and cells."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

ATTACKS: dict[str, dict[str, str]] = {  # attack -> the clean encoder it starts from (its control)
    "badencoder": {"clean": "simclr"},
    "drupe": {"clean": "simclr"},
    "ctrl": {"clean": "simclr"},
    "clip-backdoor": {"clean": "clip"},
    "badclip": {"clean": "clip"},
}
STAGES = ("pretrain", "attack", "train", "downstream")
# test triggers a cell scores besides its attack's own (the paper's BadCLIP test sets used a random noise patch)
EXTRA_TEST_TRIGGERS: dict[str, list[tuple[str, dict[str, Any]]]] = {"badclip": [("noise-patch", {})]}
CTRL_DEDE = ["mask_ratio=0.75", "ood_noise_quantile=0.99"]  # the paper's CTRL handling


@dataclass(frozen=True)
class OurDetector:
    """A detector of ours on the poisoned in-distribution set (not the paper's): the short name of its downstream
    cell (``downstream-<short>-<attack>``), its records' detector name, and its DeDe settings."""

    short: str
    detector: str
    sets: tuple[str, ...]


# our defences against a poisoned auxiliary set, each at 5x its poison rate: drop_worst leaves the highest-loss
# samples of each batch out; drop_dense leaves the densest embeddings out before training (training.auxset)
OUR_AUXES = {"id-robust": OurDetector("robust", "dede-robust", ("drop_worst=0.05",)),
             "id-filtered": OurDetector("filtered", "dede-filtered", ("drop_dense=0.05",))}
ROBUST_DETECTOR, FILTERED_DETECTOR = OUR_AUXES["id-robust"].detector, OUR_AUXES["id-filtered"].detector
AUXES = ("id", "ood", *OUR_AUXES)
POISONED_AUXES = ("id", *OUR_AUXES)  # CIFAR-10 train with 1% of the images triggered with the attack's trigger
DEFAULT_OOD = "gtsrb"


def ood_aux(dataset: str, images: int) -> str:
    """The name an out-of-distribution set's runs and cells carry: ``ood`` for the default set (GTSRB),
    ``ood-<name>`` for another (``--ood-dataset imagenette``: ``ood-imagenette``), ``ood-<name>-<images>`` for a
    set cut to that many training images (``--ood-images``), so that a grid can hold them all."""
    if dataset == DEFAULT_OOD and not images:
        return "ood"
    return f"ood-{Path(dataset).stem}" + (f"-{images}" if images else "")


def aux_kind(aux: str) -> str:
    """The kind of auxiliary set a run or cell name's aux stands for: one of ``AUXES`` (``ood-imagenette``: ``ood``)."""
    return "ood" if aux.startswith("ood-") else aux


def grid_label(preset: str, variant: str = "") -> str:
    """A grid's name in its default root, its figure files and RESULTS.md: the preset, and the variant if any."""
    return f"{preset}-{variant}" if variant else preset


def grid_dir(preset: str, variant: str = "") -> str:
    """The name of a grid's default root under ``runs/``."""
    return f"reproduce-{grid_label(preset, variant)}"


def run_name(attack: str, aux: str, control: bool) -> str:
    return f"control-{ATTACKS[attack]['clean']}-{attack}-{aux}" if control else f"{attack}-{aux}"


def control_run(attack: str, aux: str) -> str:
    """The control detector's run name. A control depends on the clean encoder, the auxiliary set and the DeDe
    settings: BadEncoder and DRUPE share their clean encoder and trigger, so they share one control; an
    out-of-distribution set carries no trigger, so there every attack on the same clean encoder shares the first
    one's control (CTRL's own DeDe settings keep its controls apart)."""
    if attack == "ctrl":
        return run_name(attack, aux, control=True)
    clean = ATTACKS[attack]["clean"]
    if aux in POISONED_AUXES:
        return run_name("badencoder" if attack == "drupe" else attack, aux, control=True)
    return run_name(next(a for a in ATTACKS if a != "ctrl" and ATTACKS[a]["clean"] == clean), aux, control=True)
