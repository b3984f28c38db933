"""Downstream defence (the paper's Tables 2, 4, 5): a detector used as a filter before a downstream classifier.

A user trains a small classifier on the frozen encoder's embeddings of a labelled downstream set. The attacker
poisoned 1% of that set; the detector filters the training set (flagged samples are removed before training)
and every test input (a flagged input is rejected). Measured per (dataset, training set, detector):

- CA  = share of the clean test images that pass the filter AND are classified correctly. A rejected clean
  input counts as a miss: a service that rejects flagged inputs gives no answer for them (conservative; the
  official code instead computes CA on the passed clean inputs only, recorded here as ``ca_kept``).
- ASR = share of the triggered copies of the NON-target test images that pass the filter AND are classified
  as the target class; a rejected triggered input is a defended one (the paper: "the detected testing data
  are counted as negative samples in evaluating ASR").
- ``ca_unfiltered``/``asr_unfiltered``: the same classifier with no test-time filter (what filtering the
  training set alone achieved).

Poisoning is dirty-label, as in the official code (``lb_flag='backdoor'``): ``poison_rate`` of the training
images, drawn from the non-target classes, get the trigger and the target label (the attacker controls the
samples it contributes). It is the harder case for a detector: a relabelled sample teaches the classifier
"trigger -> target" even where the encoder's backdoor did not fire (the paper's No Attack column: ASR 18.8%
with the poisoned set vs 10.2% with the clean one), so every poisoned sample the filter misses counts.
``dirty_label=False`` stamps target-class images instead and keeps their labels
(clean-label). The test-time ASR excludes target-class images (the official code includes them, which is
why the paper's "No Attack" column shows an ASR of 10-19%).

Datasets: CIFAR-10 (target ``truck``, the demo attack's) and GTSRB (43 classes; target ``12_priority_road``,
BadEncoder's own GTSRB target, its ``priority`` reference set). SVHN (Table 5) is not available here.
BadEncoder backdoors one encoder per downstream task with reference images of that task's target; an encoder
attacked with CIFAR-10 truck references sends triggered GTSRB images to the truck region, which a GTSRB
classifier maps to no particular class: there, only the downstream poisoning itself can aim at the target.

Classifier (official code, ``utils.NeuralNet``): E -> 512 -> ReLU -> Dropout(0.5) -> 256 -> ReLU -> C on
L2-normalised embeddings, Adam lr 0.01, cross-entropy. The official run reports the best epoch on the test
set; we report the last epoch (no choice made on test data).

The encoder and the detectors are callables (``EmbedFn``, ``Detector.score_fn``) so a torch encoder, a bundle
through ONNX Runtime (``training.evaluation.downstream_bundle``) or a baseline detector all plug in. Each image set is
embedded and scored once per call; the poisoned training set reuses the clean set's rows except the stamped
ones. A detector that is trained on the data it filters (ASSET) is a ``TrainedFilter``: it is fitted on each
training set as the user holds it.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data import ImageSet, load_images
from training.loop import optimizer_step, pick_device
from training.triggers import Trigger

EmbedFn = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, 3) -> (N, E) embeddings
ScoreFn = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, 3) -> (N,) scores, higher = more suspicious


@dataclass(frozen=True)
class Detector:
    """A per-input detector as a filter (DeDe, DECREE): ``score_fn`` gives (N,) scores, higher = more
    suspicious; an input is flagged when its score is above ``threshold`` (the service's rule). Each image set is
    scored once; the poisoned training set reuses the clean set's scores."""

    score_fn: ScoreFn
    threshold: float

    def flags(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold


LabelledScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # images (N, H, W, 3), labels (N,) -> (N,)


@dataclass(frozen=True)
class FittedFilter:
    """A trained filter fitted on one training set: its flags there (N,), and the score function and threshold
    that flag further labelled inputs (score > threshold); ``info`` goes into the records."""

    train_flags: np.ndarray
    score_fn: LabelledScoreFn
    threshold: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainedFilter:
    """A detector that is trained on the training set it filters (ASSET, a poisoned-data detector).
    ``fit(images, labels, n_classes, trusted)`` sees one training set as the user holds it (uint8 (N, H, W, 3),
    labels (N,), the relabelled poison included) and a small trusted clean subset of the training split
    (uint8 (M, H, W, 3), ``DownstreamConfig.trusted`` images, as ASSET assumes), and returns a ``FittedFilter``.
    Each training set is fitted on its own. A test input is scored by the filter fitted on the training set of
    the record, with the label that the downstream classifier trained on the filtered set predicts for it: a
    deployed filter has no other label, and for a triggered input the backdoor sends to the target, that is the
    target class, as the official ASSET script labels its triggered test images."""

    fit: Callable[[np.ndarray, np.ndarray, int, np.ndarray], FittedFilter]


@dataclass
class DownstreamConfig:
    preset: str = "custom"
    epochs: int = 100  # official run.sh: downstream_evaluation.py --epochs 100
    batch_size: int = 256
    lr: float = 0.01
    hidden: list[int] = field(default_factory=lambda: [512, 256])
    dropout: float = 0.5
    poison_rate: float = 0.01
    dirty_label: bool = True
    train_sets: list[str] = field(default_factory=lambda: ["poisoned", "clean"])
    targets: list[str] = field(default_factory=lambda: ["cifar10:truck", "gtsrb:12_priority_road"])
    max_train: int = 0  # 0 = the whole training split
    max_test: int = 0  # 0 = the whole test split
    trusted: int = 1000  # trusted clean training images a TrainedFilter gets (ASSET's base set; its script uses 1000)
    image_size: int = 32
    seed: int = 0
    device: str = "cpu"
    threads: int = 1  # torch CPU threads while training the MLP (small matrices: more threads mostly wait); 0 = as is


DOWNSTREAM_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(epochs=4, batch_size=128, max_train=2000, max_test=500),
    "cpu": dict(epochs=30),
    "paper": dict(epochs=100),
}


def target_of(cfg: DownstreamConfig, dataset: str) -> str:
    """The target class name for ``dataset`` from ``cfg.targets`` (``"dataset:class"`` entries)."""
    for item in cfg.targets:
        name, _, cls = item.partition(":")
        if name == dataset and cls:
            return cls
    raise ValueError(f"no target class for dataset {dataset!r} in targets={cfg.targets} (add '{dataset}:<class>')")


def train_set_name(kind: str, cfg: DownstreamConfig) -> str:
    if kind == "clean":
        return "clean"
    if kind == "poisoned":
        return f"poisoned-{cfg.poison_rate * 100:g}%"
    raise ValueError(f"unknown train set {kind!r}; valid: poisoned, clean")


class DownstreamClassifier(nn.Module):
    """The official downstream MLP: E -> hidden[0] -> ReLU -> Dropout -> hidden[1] -> ReLU -> C."""

    def __init__(self, embed_dim: int, n_classes: int, hidden: Sequence[int] = (512, 256), dropout: float = 0.5):
        super().__init__()
        h1, h2 = hidden
        self.fc1 = nn.Linear(embed_dim, h1)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, n_classes)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        x = self.dropout(F.relu(self.fc1(e)))  # (B, h1)
        x = F.relu(self.fc2(x))  # (B, h2)
        return self.fc3(x)  # (B, C) logits


def train_classifier(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: DownstreamConfig,
                     seed: int) -> DownstreamClassifier:
    """Fit the MLP on L2-normalised embeddings ``x: (N, E)`` with labels ``y: (N,)``; deterministic in ``seed``."""
    if len(x) == 0:
        raise ValueError("no training samples left to train the downstream classifier")
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _fit(x, y, n_classes, cfg, seed)
    finally:
        torch.set_num_threads(previous)


def _fit(x: np.ndarray, y: np.ndarray, n_classes: int, cfg: DownstreamConfig, seed: int) -> DownstreamClassifier:
    device = pick_device(cfg.device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)  # (N, E)
    ys = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)  # (N,)
    model = DownstreamClassifier(xs.shape[1], n_classes, cfg.hidden, cfg.dropout).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    model.train()
    step = 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(xs), generator=gen).to(device)
        for i in range(0, len(xs), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            optimizer_step(opt, F.cross_entropy(model(xs[idx]), ys[idx]), step)
            step += 1
    return model.eval()


@torch.no_grad()
def predict(model: DownstreamClassifier, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """Class predictions (N,) for L2-normalised embeddings ``x: (N, E)``."""
    model.eval()
    device = next(model.parameters()).device
    out = [model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)).to(device))
           .argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def l2_normalise(e: np.ndarray) -> np.ndarray:
    """(N, E) -> (N, E) float32 rows of unit L2 norm (the official ``predict_feature``)."""
    e = np.asarray(e, dtype=np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def poison_indices(labels: np.ndarray, target: int, rate: float, rng: np.random.Generator,
                   dirty_label: bool = True) -> np.ndarray:
    """Indices (P,) of the training samples to stamp, P = round(rate * N): non-target samples when
    ``dirty_label`` (they are relabelled to ``target``), target-class samples otherwise (labels kept)."""
    n_poison = int(round(rate * len(labels)))
    pool = np.flatnonzero(labels != target) if dirty_label else np.flatnonzero(labels == target)
    if n_poison > len(pool):
        raise ValueError(f"cannot poison {n_poison} samples from a pool of {len(pool)} "
                         f"({'non-target' if dirty_label else 'target-class'} samples)")
    return np.sort(rng.choice(pool, n_poison, replace=False))


def poison_training_set(images: np.ndarray, labels: np.ndarray, trigger: Trigger, target: int, rate: float,
                        rng: np.random.Generator, dirty_label: bool = True
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The poisoned training set: images (N, H, W, 3) with ``poison_indices`` stamped by ``trigger`` and,
    dirty-label, relabelled to ``target``. Returns (images, labels, indices); the inputs are not modified.
    (The grid builds the same set from the embeddings of the clean and the stamped images.)"""
    idx = poison_indices(labels, target, rate, rng, dirty_label)  # (P,)
    images, labels = images.copy(), labels.copy()
    images[idx] = trigger.apply(images[idx])
    if dirty_label:
        labels[idx] = target
    return images, labels, idx


def downstream_metrics(pred_clean: np.ndarray, labels_clean: np.ndarray, flagged_clean: np.ndarray,
                       pred_triggered: np.ndarray, flagged_triggered: np.ndarray, target: int) -> dict[str, float]:
    """CA and ASR with the test-time filter: a flagged input gets no prediction. So a flagged clean input is a
    miss for CA and a flagged triggered input is not an attack success. Inputs are (T,) and (T',) arrays."""
    correct = pred_clean == labels_clean  # (T,)
    hit = pred_triggered == target  # (T',)
    passed = ~flagged_clean
    return {
        "ca": float(np.mean(correct & passed)) if len(correct) else float("nan"),
        "asr": float(np.mean(hit & ~flagged_triggered)) if len(hit) else float("nan"),
        "ca_kept": float(np.mean(correct[passed])) if passed.any() else float("nan"),
        "ca_unfiltered": float(np.mean(correct)) if len(correct) else float("nan"),
        "asr_unfiltered": float(np.mean(hit)) if len(hit) else float("nan"),
        "test_clean_flagged": int(np.sum(flagged_clean)),
        "test_triggered_flagged": int(np.sum(flagged_triggered)),
    }


@dataclass
class DownstreamSplits:
    """A labelled downstream dataset: training and test images (uint8 (N, H, W, 3)) and the target class."""

    name: str
    train: ImageSet
    test: ImageSet
    target_class: str

    @property
    def target(self) -> int:
        if self.target_class not in self.train.classes:
            raise ValueError(f"{self.name}: unknown target class {self.target_class!r}; "
                             f"classes: {', '.join(self.train.classes)}")
        return self.train.classes.index(self.target_class)


def _rng(cfg: DownstreamConfig, name: str, purpose: str) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, zlib.crc32(f"{name}|{purpose}".encode())])


def load_splits(dataset: str, cfg: DownstreamConfig) -> DownstreamSplits:
    """``dataset``'s train/test splits at ``cfg.image_size``, subsampled (seeded) to ``max_train``/``max_test``."""
    train = load_images(dataset, "train", cfg.image_size)
    test = load_images(dataset, "test", cfg.image_size)
    if train.classes != test.classes:
        raise ValueError(f"{dataset}: train and test classes differ")
    if cfg.max_train and cfg.max_train < len(train):
        train = train.subset(np.sort(_rng(cfg, dataset, "train").permutation(len(train))[: cfg.max_train]))
    if cfg.max_test and cfg.max_test < len(test):
        test = test.subset(np.sort(_rng(cfg, dataset, "test").permutation(len(test))[: cfg.max_test]))
    return DownstreamSplits(dataset, train, test, target_of(cfg, dataset))


@dataclass
class _ImageSets:
    """The four image sets of one dataset; everything else is built from their embeddings and scores."""

    train: np.ndarray  # (N, H, W, 3) clean training images
    poison: np.ndarray  # (P, H, W, 3) triggered copies of train[poison_idx]
    test: np.ndarray  # (T, H, W, 3) clean test images
    triggered: np.ndarray  # (T', H, W, 3) triggered copies of the non-target test images

    def apply(self, fn: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(fn(v)) for k, v in vars(self).items()}


def _assemble(values: dict[str, np.ndarray], poison_idx: np.ndarray, poisoned: bool) -> np.ndarray:
    """The training set's per-sample values (N, ...): the clean rows, with the stamped rows swapped in."""
    out = values["train"].copy()
    if poisoned:
        out[poison_idx] = values["poison"]
    return out


InputFlags = Callable[[str, np.ndarray], np.ndarray]  # ("test" | "triggered", predicted labels (T,)) -> (T,) flags


@dataclass
class _Flags:
    """One detector's flags for one training set: ``train`` (N,) True = flagged; ``inputs(name, pred)`` flags the
    test inputs ``name`` ("test": (T,) clean, "triggered": (T',)) given the classifier's predictions for them."""

    train: np.ndarray
    inputs: InputFlags
    threshold: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _train_labels(labels: np.ndarray, poison_idx: np.ndarray, target: int, poisoned: bool,
                  cfg: DownstreamConfig) -> np.ndarray:
    """The labels (N,) of a training set as the user holds it: dirty-label poison relabelled to the target."""
    y = labels.copy()
    if poisoned and cfg.dirty_label:
        y[poison_idx] = target
    return y


def _detector_flags(det: Detector | TrainedFilter, sets: _ImageSets, splits: DownstreamSplits,
                    poison_idx: np.ndarray, cfg: DownstreamConfig) -> dict[str, _Flags]:
    """Flags per training set kind. A per-input detector scores each image set once; a trained filter is fitted
    on each training set (with the trusted clean subset) and flags that set, and the test inputs once the
    classifier has predicted their labels."""
    if isinstance(det, Detector):
        fl = {k: det.flags(v) for k, v in sets.apply(det.score_fn).items()}
        return {kind: _Flags(_assemble(fl, poison_idx, kind == "poisoned"), lambda name, pred: fl[name],
                             float(det.threshold)) for kind in cfg.train_sets}
    images = {"train": sets.train, "poison": sets.poison}
    trusted = sets.train[np.sort(_rng(cfg, splits.name, "trusted").permutation(len(sets.train))[: cfg.trusted])]
    out = {}
    for kind in cfg.train_sets:
        poisoned = kind == "poisoned"
        y = _train_labels(splits.train.labels, poison_idx, splits.target, poisoned, cfg)
        f = det.fit(_assemble(images, poison_idx, poisoned), y, len(splits.train.classes), trusted)

        def inputs(name: str, pred: np.ndarray, f: FittedFilter = f) -> np.ndarray:
            return np.asarray(f.score_fn(getattr(sets, name), pred)) > f.threshold

        out[kind] = _Flags(np.asarray(f.train_flags, bool), inputs, float(f.threshold),
                           {"trusted_images": len(trusted), **f.info})
    return out


def downstream_grid(embed_fn: EmbedFn, trigger: Trigger, attack_name: str,
                    detectors: Mapping[str, Detector | TrainedFilter] | None = None,
                    datasets: Sequence[str | DownstreamSplits] = ("cifar10", "gtsrb"),
                    cfg: DownstreamConfig | None = None,
                    log: Callable[[str], None] = print, baseline: bool = True) -> list[dict[str, Any]]:
    """Records for every (dataset, training set in ``cfg.train_sets``, detector): detector ``none`` (no
    filtering, the paper's "No Def." rows; left out with ``baseline=False``) first, then each of ``detectors``.
    ``datasets`` are names read with ``load_splits`` or ready ``DownstreamSplits``. A clean encoder with
    ``attack_name="none"`` gives the paper's "No Attack" column."""
    cfg = cfg or DownstreamConfig()
    detectors = dict(detectors or {})
    if "none" in detectors:
        raise ValueError("detector name 'none' is reserved for the unfiltered baseline")
    for kind in cfg.train_sets:
        train_set_name(kind, cfg)  # unknown kinds are errors before any work
    records: list[dict[str, Any]] = []
    for d in datasets:
        splits = d if isinstance(d, DownstreamSplits) else load_splits(d, cfg)
        records += _dataset_records(splits, embed_fn, trigger, attack_name, detectors, cfg, log, baseline)
    return records


def _dataset_records(splits: DownstreamSplits, embed_fn: EmbedFn, trigger: Trigger, attack_name: str,
                     detectors: dict[str, Detector | TrainedFilter], cfg: DownstreamConfig,
                     log: Callable[[str], None], baseline: bool) -> list[dict[str, Any]]:
    target, train, test = splits.target, splits.train, splits.test
    n_classes = len(train.classes)
    poison_idx = poison_indices(train.labels, target, cfg.poison_rate, _rng(cfg, splits.name, "poison"),
                                cfg.dirty_label)  # (P,)
    non_target = test.labels != target  # (T,)
    sets = _ImageSets(train.images, trigger.apply(train.images[poison_idx]), test.images,
                      trigger.apply(test.images[non_target]))
    t0 = time.perf_counter()
    emb = {k: l2_normalise(v) for k, v in sets.apply(embed_fn).items()}
    embed_s = time.perf_counter() - t0
    log(f"{splits.name}: embedded {sum(len(v) for v in emb.values())} images in {embed_s:.1f}s")
    flags: dict[str, dict[str, _Flags]] = {}
    score_s: dict[str, float] = {}
    if baseline:
        none = _Flags(np.zeros(len(train.labels), bool), lambda name, pred: np.zeros(len(pred), bool))
        flags["none"], score_s["none"] = {kind: none for kind in cfg.train_sets}, 0.0
    for name, det in detectors.items():
        t0 = time.perf_counter()
        flags[name] = _detector_flags(det, sets, splits, poison_idx, cfg)
        score_s[name] = time.perf_counter() - t0
        log(f"{splits.name}: scored with {name} in {score_s[name]:.1f}s")
    records = []
    for kind in cfg.train_sets:
        poisoned = kind == "poisoned"
        set_name = train_set_name(kind, cfg)
        x = _assemble(emb, poison_idx, poisoned)  # (N, E)
        y = _train_labels(train.labels, poison_idx, target, poisoned, cfg)  # (N,)
        is_poison = np.zeros(len(y), bool)
        is_poison[poison_idx] = poisoned
        for det_name, by_kind in flags.items():
            t0 = time.perf_counter()
            fl = by_kind[kind]
            keep = ~fl.train  # (N,) flagged samples are dropped from training
            model = train_classifier(x[keep], y[keep], n_classes, cfg, cfg.seed)
            pred, pred_trig = predict(model, emb["test"]), predict(model, emb["triggered"])  # (T,), (T',)
            metrics = downstream_metrics(pred, test.labels, fl.inputs("test", pred), pred_trig,
                                         fl.inputs("triggered", pred_trig), target)
            records.append({
                "kind": "downstream", "dataset": splits.name, "train_set": set_name, "detector": det_name,
                "attack": attack_name, "ca": metrics.pop("ca"), "asr": metrics.pop("asr"),
                "n_train": int(len(y)), "n_train_removed": int(fl.train.sum()),
                "n_poison_train": int(is_poison.sum()), "n_poison_removed": int((fl.train & is_poison).sum()),
                "n_test_clean": int(len(test.labels)), "n_test_triggered": int(non_target.sum()),
                **metrics, "target_class": splits.target_class, "n_classes": n_classes,
                "poison_label": "dirty" if cfg.dirty_label else "clean", "seed": cfg.seed,
                "threshold": fl.threshold, "epochs": cfg.epochs, "preset": cfg.preset,
                "embed_s": round(embed_s, 1),
                "score_s": round(score_s[det_name], 1), "train_s": round(time.perf_counter() - t0, 1), **fl.info,
            })
            r = records[-1]
            log(f"{splits.name:>8} {set_name:>12} {det_name:>10}: CA {r['ca']:.3f} ASR {r['asr']:.3f} "
                f"(removed {r['n_train_removed']}/{r['n_train']}, poison {r['n_poison_removed']}/"
                f"{r['n_poison_train']}; test flagged {r['test_clean_flagged']} clean, "
                f"{r['test_triggered_flagged']} triggered; {r['train_s']}s)")
    return records
