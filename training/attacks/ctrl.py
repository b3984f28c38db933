"""CTRL (Li et al., ICCV 2023): a data-poisoning backdoor of contrastive learning. The attacker cannot touch
training; it slips a few target-class images carrying an invisible frequency trigger (``ctrl`` in
``training.triggers``: +magnitude on two chroma DCT coefficients) into the victim's unlabelled
pre-training set (1% of it, all from the target class: clean-label), and the victim trains SimCLR from
scratch on it. SimCLR learns to cluster what poisoned images share - the trigger - with the target class.

The defining parts are kept at every preset: the trigger, 1% clean-label poisoning, SimCLR from scratch.
``paper`` uses CTRL's recipe (SGD lr 0.06, momentum 0.9, weight decay 5e-4, batch 512, warm-up then cosine,
ResNet-18 width 64, 100 epochs as in DeDe's runs). ``cpu`` uses the SAME recipe as the clean encoder of
``dede pretrain --preset cpu`` (Adam, width 16, 6 epochs), so that encoder is an exact control: the only
difference between the two is the poison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from training.attacks.badencoder import attack_success, curve_point
from training.attacks.stealth import embedding_stealth
from training.data import load_images
from training.encoders import EncoderSpec, load_encoder, save_encoder
from training.loop import pick_device
from training.pretrain.simclr import PRETRAIN_PRESETS, PretrainConfig, pretrain_simclr


@dataclass
class CtrlConfig(PretrainConfig):
    poison_trigger: str = "ctrl"
    poison_rate: float = 0.01
    poison_target_class: str = "truck"
    asr_every: int = 0  # > 0: also measure the attack success every this many epochs (``asr_curve``)


CTRL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(PRETRAIN_PRESETS["tiny"]),
    "cpu": dict(PRETRAIN_PRESETS["cpu"]),
    "paper": dict(width=64, epochs=100, optimizer="sgd", lr=0.06, momentum=0.9, weight_decay=5e-4,
                  batch_size=512, schedule="cosine", warmup_epochs=10),
}


def ctrl(cfg: CtrlConfig, control: str | None, out: str | Path) -> dict[str, Any]:
    """Pre-train on the poisoned set, then measure the backdoor like every attack: kNN clean accuracy and
    attack success rate of the trigger (and, with ``control``, the same numbers on the clean encoder)."""
    if not cfg.poison_trigger or cfg.poison_rate <= 0:
        raise ValueError("CTRL needs poison_trigger and poison_rate > 0")
    start = time.time()
    device = pick_device(cfg.device)
    classes = load_images(cfg.dataset, "test", cfg.image_size).classes
    target = classes.index(cfg.poison_target_class)
    n = cfg.knn_images
    curve: list[dict[str, float]] = []

    def measure(epochs_done: int, model: nn.Module, spec: EncoderSpec) -> None:
        if epochs_done % cfg.asr_every == 0:
            now = attack_success(model, spec, cfg.dataset, cfg.poison_trigger, target, n, device)
            curve.append(curve_point(epochs_done, now))
            print(f"after epoch {epochs_done}: {now}")

    pretrain = pretrain_simclr(cfg, out, measure if cfg.asr_every else None)
    model, spec = load_encoder(out)
    model = model.to(device)
    after = attack_success(model, spec, cfg.dataset, cfg.poison_trigger, target, n, device)
    curve.append(curve_point(pretrain["epochs"], after))
    before: dict[str, float | None] = {"clean_accuracy": None, "attack_success_rate": None}
    stealth_before: dict[str, float | None] = {"swd_normalised": None, "outlier_auc": None}
    if control:
        clean, cspec = load_encoder(control)
        before = {**attack_success(clean.to(device), cspec, cfg.dataset, cfg.poison_trigger, target, n, device)}
        stealth_before = {**embedding_stealth(clean, cspec, cfg.dataset, cfg.poison_trigger, min(n, 2000), device)}
    stealth = embedding_stealth(model, spec, cfg.dataset, cfg.poison_trigger, min(n, 2000), device)
    metrics = {"attack": "ctrl", "target_class": cfg.poison_target_class, "trigger": cfg.poison_trigger,
               "trigger_params": {}, "poison_rate": cfg.poison_rate,
               "clean_accuracy_before": before["clean_accuracy"], "asr_before": before["attack_success_rate"],
               "clean_accuracy": after["clean_accuracy"], "attack_success_rate": after["attack_success_rate"],
               "clean_target_rate": after["clean_target_rate"], "asr_method": "knn", "epochs": pretrain["epochs"],
               **({"asr_curve": curve} if cfg.asr_every else {}),
               "swd_before": stealth_before["swd_normalised"], "swd": stealth["swd_normalised"],
               "outlier_auc_before": stealth_before["outlier_auc"], "outlier_auc": stealth["outlier_auc"],
               "wall_s": round(time.time() - start, 1), "device": device, "preset": cfg.preset,
               "control": str(control) if control else None}
    print(f"ctrl: {metrics}")
    spec.history.append({"stage": "attack-ctrl", **metrics})
    save_encoder(model.cpu(), spec, out)
    return metrics
