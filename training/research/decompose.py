"""``dede decompose``: where a detector's separation comes from, the trigger's pixels or the backdoor firing.

DeDe's score s(image, embedding) compares an image with what the decoder draws from an embedding (and the
image's kept patches). The paper's test pairs a triggered image with its own embedding, so a high AUC can come
from the trigger's pixels (the decoder cannot draw a patch it never saw) as well as from the backdoor (the
decoder draws the target instead of the input). Pairing images with other embeddings separates the two. For
non-target test images x (labels y), the trigger T, an encoder E and its detector:

    condition     image   embedding                            what it isolates
    full          T(x)    E(T(x))                              the paper's test
    pixels        T(x)    E(x)                                 the trigger's pixels alone
    embedding     x       E(T(x))                              the backdoored embedding alone
    swap-target   x       E(t), t a target-class test image    a backdoor that lands on a real target image
    swap-other    x       E(x'), x' of another class
    swap-same     x       E(x'), x' another image of x's class how much of an image beyond its class the decoder draws

Every condition's scores are compared with s(x, E(x)) by AUC (the same images on both sides), on all images
and on those whose backdoor fired (kNN class of the backdoored encoder's triggered embedding is the target),
for the backdoored encoder's bundle and for its clean-encoder control (same trigger, its own detector). The
swap conditions need no trigger: they are a reference for how much of an image the detector draws from an
embedding, i.e. what a backdoor that put another real image's embedding in place of the input's would give (a
backdoor can give more: BadEncoder's reference embedding draws farther from the inputs than real images do).
CIFAR-10 test images only.

Records go to ``docs/research/decomposition.json`` (merged by the pair's label);
``docs/research/DECOMPOSITION.md`` is regenerated from it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.scoring import Scorer
from training.data import load_images
from training.evaluation.bundle_scores import embed_many, score_against
from training.evaluation.downstream_bundle import manifest_attack
from training.evaluation.evaluate import hardware
from training.metrics import auc
from training.pretrain.knn import BundleProbe
from training.reporting.markdown import fmt
from training.reporting.records import command_line, publish_by_label, require_bundles
from training.research.cell import class_collapse
from training.triggers import make_trigger

# condition -> (image, embedding) in the words of the report
CONDITIONS: dict[str, tuple[str, str]] = {
    "full": ("triggered", "triggered image's"),
    "pixels": ("triggered", "clean image's"),
    "embedding": ("clean", "triggered image's"),
    "swap-target": ("clean", "a target-class image's"),
    "swap-other": ("clean", "an image of another class"),
    "swap-same": ("clean", "another image of the same class"),
}


def partners(labels: np.ndarray, rng: np.random.Generator, same: bool) -> np.ndarray:
    """labels (N,) -> (N,) indices: for each image a random other image of the same class (``same``) or of
    another class."""
    out = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        pool = rows if same else np.flatnonzero(labels != c)
        if len(pool) < (2 if same else 1):
            raise ValueError(f"class {c} has no {'other image of its own class' if same else 'image of another class'}")
        pick = rng.choice(len(pool), len(rows))
        if same:  # pool is rows: pick k is image k itself, so take the next image of the class instead
            pick = np.where(pick == np.arange(len(rows)), (pick + 1) % len(pool), pick)
        out[rows] = pool[pick]
    return out


def grid(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 8 * 8 * 3): each image's 8 x 8 grid of mean colours in [0, 1]."""
    n, h = len(images), images.shape[1] // 8
    cells = images[:, : 8 * h, : 8 * h].astype(np.float32).reshape(n, 8, h, 8, h, 3) / 255
    return cells.mean((2, 4)).reshape(n, -1)


class LayoutProbe:
    """A linear read-out of an image's layout from an encoder's embedding: a ridge regression from the
    (standardised) embedding to the image's ``grid`` of mean colours, fitted on ``n_train`` train images (the ridge
    strength picked on a fifth of them). ``pixel_r2``: its R^2 on ``n_test`` test images with their own embeddings,
    how much of an image the embedding keeps, whatever decoder reads it (0: nothing of the layout, 1: all of it).
    ``r2(embeddings, images)``: the same with other embeddings, e.g. triggered images' against the clean images: how
    much of the clean image's layout they still say (below 0: worse than the mean layout)."""

    def __init__(self, scorer: Scorer, dataset: str = "cifar10", n_train: int = 5000, n_test: int = 2000) -> None:
        train, test = load_images(dataset, "train", scorer.size), load_images(dataset, "test", scorer.size)
        rng = np.random.default_rng(0)
        tr = train.images[rng.permutation(len(train.images))[:n_train]]
        te = test.images[rng.permutation(len(test.images))[:n_test]]
        x, y = embed_many(scorer, tr).astype(np.float64), grid(tr)  # (n, E), (n, 192)
        self.mu, self.sd, self.y_mean = x.mean(0), x.std(0) + 1e-8, y.mean(0)
        x = (x - self.mu) / self.sd
        fit, val = slice(n_train // 5, None), slice(0, n_train // 5)
        lam = max((0.1, 1.0, 10.0, 100.0, 1000.0),
                  key=lambda v: self._r2(self._ridge(x[fit], y[fit], v), x[val], y[val]))
        self.w = self._ridge(x, y, lam)  # (E, 192)
        self.pixel_r2 = self.r2(embed_many(scorer, te), te)

    def _ridge(self, a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:  # (n, E), (n, P) -> (E, P)
        return np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (b - self.y_mean))

    def _r2(self, w: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return float(1 - ((a @ w + self.y_mean - b) ** 2).sum() / ((b - b.mean(0)) ** 2).sum())

    def r2(self, embeddings: np.ndarray, images: np.ndarray) -> float:
        """embeddings (N, E), images (N, H, W, 3) uint8."""
        return self._r2(self.w, (embeddings - self.mu) / self.sd, grid(images))


def displacement(clean: np.ndarray, triggered: np.ndarray, target: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Where the trigger moves an embedding, by cosine similarity, each on a scale set by the encoder's own spread
    (embeddings of one encoder are not comparable with another's raw): ``kept`` = how much of the clean
    embedding the triggered one keeps, 1 = unmoved, 0 = as far as a random other image's; ``pull`` = how far it
    moved towards the target class, 0 = no closer to target-class images than the clean embedding, 1 = as close as
    target-class images are to each other; ``norm_ratio`` = the triggered embeddings' mean length over the clean
    ones' (a cosine does not see it). clean, triggered: (N, E) embeddings of the same images; target (M, E)."""
    c, t, g = (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12) for e in (clean, triggered, target))
    # random pairs; an image drawn with itself (about 1 in N) biases ``other`` by about (1 - other) / N
    other = (c * c[np.random.default_rng(seed).permutation(len(c))]).sum(1).mean()
    own = (c * t).sum(1).mean()
    gg = g @ g.T  # (M, M)
    within = (gg.sum() - np.trace(gg)) / (len(g) * (len(g) - 1))  # target-class pairs, not an image with itself
    before, after = (c @ g.T).mean(), (t @ g.T).mean()
    return {"kept": float((own - other) / (1 - other)), "pull": float((after - before) / (within - before)),
            "norm_ratio": float(np.linalg.norm(triggered, axis=1).mean() / np.linalg.norm(clean, axis=1).mean())}


def decompose(bundle: str | Path, control: str | Path, trigger: str | None = None, max_images: int = 0,
              seed: int = 0, knn_bank: int = 10000,
              target_class: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Records (one per detector x condition) and the facts of the pair: trigger, target, image counts.
    ``trigger``, ``target_class``: the test trigger and the class the backdoor is suspected to map it to (default:
    those the backdoored bundle's manifest records, the trigger with its parameters); both are needed for a bundle
    whose manifest records no attack (an encoder someone else trained)."""
    dataset = "cifar10"  # the attacks' dataset; class_collapse and the report assume it too
    if max_images < 0 or knn_bank < 1:
        raise ValueError(f"need max_images >= 0 (0: all) and knn_bank >= 1, got {max_images} and {knn_bank}")
    bd, ctl = Scorer.from_bundle(bundle), Scorer.from_bundle(control)
    if ctl.size != bd.size:
        raise ValueError(f"{bundle} takes {bd.size} px images but its control {control} takes {ctl.size} px")
    recorded = manifest_attack(bd.manifest)
    trigger, target_class = trigger or recorded.trigger_name, target_class or recorded.target_class
    if not trigger or not target_class:
        raise ValueError(f"{bundle} records no attack (target class and trigger): give the suspected ones "
                         "(--trigger and --target-class)")
    params = recorded.trigger_params if trigger == recorded.trigger_name else None
    test = load_images(dataset, "test", bd.size)
    if target_class not in test.classes:
        raise ValueError(f"target class {target_class!r} is not a {dataset} class: one of {', '.join(test.classes)}")
    target = test.classes.index(target_class)
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(test.labels != target)
    if max_images:
        idx = np.sort(rng.permutation(idx)[:max_images])
    x, y = test.images[idx], test.labels[idx]  # (N, H, W, 3), (N,)
    xt = make_trigger(trigger, bd.size, params).apply(x)
    fired = BundleProbe(bd, dataset, n_bank=knn_bank).fired(xt, y, target)  # (N,) bool
    targets = test.images[test.labels == target]  # (M, H, W, 3) every target-class test image
    donors = rng.choice(len(targets), len(x))  # (N,) a target-class image per image
    same, other = partners(y, rng, same=True), partners(y, rng, same=False)
    records, moved = [], {}  # role -> where the trigger moves its encoder's embedding
    for role, scorer in (("backdoored", bd), ("control", ctl)):
        e, et, eg = embed_many(scorer, x), embed_many(scorer, xt), embed_many(scorer, targets)  # (N, E), (N, E), (M, E)
        ed = eg[donors]  # (N, E)
        probe = LayoutProbe(scorer, dataset)
        moved[role] = displacement(e, et, eg, seed) | {"pixel_r2": probe.pixel_r2, "layout_kept": probe.r2(et, x)}
        pairs = {"full": (xt, et), "pixels": (xt, e), "embedding": (x, et), "swap-target": (x, ed),
                 "swap-other": (x, e[other]), "swap-same": (x, e[same])}
        base = score_against(scorer, x, e)  # (N,) the clean images with their own embeddings
        for condition, (images, embeddings) in pairs.items():
            s = score_against(scorer, images, embeddings)
            records.append({"detector": role, "bundle": str(bundle if role == "backdoored" else control),
                            "condition": condition, "auc": auc(base, s),
                            "auc_fired": auc(base[fired], s[fired]) if fired.any() else None,
                            "score_ratio": float(s.mean() / base.mean())})
    facts = {"attack": None if recorded.name == "none" else recorded.name, "trigger": trigger,
             "target_class": target_class,
             "encoder": bd.manifest.encoder.architecture, "aux": bd.manifest.provenance.aux_dataset,
             "control_aux": ctl.manifest.provenance.aux_dataset, "n_images": int(len(x)), "n_fired": int(fired.sum()),
             **{k: {r: m[k] for r, m in moved.items()} for k in moved["backdoored"]},
             "class_collapse": {"backdoored": class_collapse(bd), "control": class_collapse(ctl)}}
    return records, facts

# the encoder table's columns: heading -> the pair's fact
ENCODER_FACTS = {"pixel R2": "pixel_r2", "class collapse": "class_collapse", "kept": "kept", "pull": "pull",
                 "norm": "norm_ratio", "layout kept": "layout_kept"}


def _pair(recs: list[dict[str, Any]], key: str) -> str:
    v = recs[0].get(key) or {}
    return f"{fmt(v.get('backdoored'))} / {fmt(v.get('control'))}"


def write_report(records: list[dict[str, Any]], path: Path) -> None:
    """``DECOMPOSITION.md`` from the records: one table of AUCs over every pair on all images, one on the images
    whose backdoor fired, and each pair's provenance."""
    pairs: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        pairs.setdefault(r["label"], []).append(r)
    head = "| pair | " + " | ".join(CONDITIONS) + " |"
    rule = "|---|" + "---|" * len(CONDITIONS)

    def table(key: str) -> list[str]:
        rows = [head, rule]
        for label, recs in pairs.items():
            by = {(r["detector"], r["condition"]): r[key] for r in recs}
            rows.append(f"| {label} | " + " | ".join(
                f"{fmt(by.get(('backdoored', c)))} / {fmt(by.get(('control', c)))}" for c in CONDITIONS) + " |")
        return rows

    lines = [
        "# Where the signal comes from: trigger pixels or the backdoor firing",
        "",
        "Generated by `dede decompose` (`make decompose`) from `docs/research/decomposition.json`; "
        "do not edit by hand.",
        "Each row pairs a backdoored encoder's DeDe bundle with its clean-encoder control (the same trigger, a",
        "detector of its own trained on the same kind of auxiliary set). Both score non-target CIFAR-10 test images",
        "through ONNX Runtime, each image with an embedding chosen by the condition:",
        "",
        "| condition | image | embedding the decoder draws from |",
        "|---|---|---|",
        *[f"| {c} | {img} | {emb} |" for c, (img, emb) in CONDITIONS.items()],
        "",
        "Every cell is the AUC of the condition's scores against the same clean images scored with their own",
        "embeddings, backdoored / control. `full` is the paper's test (on non-target images only, so it differs a",
        "little from RESULTS.md's balanced set). `pixels` is what the trigger's pixels alone give, `embedding` what",
        "the backdoor's embedding alone gives. The swap conditions need no trigger: `swap-target` is a backdoor that",
        "maps an input onto a real target-class image's embedding, and `swap-same` measures how much of an image",
        "beyond its class the decoder draws from an embedding (0.5: nothing).",
        "",
        "## All non-target test images",
        "",
        *table("auc"),
        "",
        "## Where the backdoor fired (kNN class of the backdoored encoder)",
        "",
        *table("auc_fired"),
        "",
        "## The encoders",
        "",
        "How much of an image each encoder's embedding keeps, whatever the detector: `pixel R2` is the R^2 on test",
        "images of a ridge regression from the embedding to the image's 8 x 8 grid of mean colours (5,000 train",
        "images); `class collapse` the share of the embeddings' variance that their class explains (RESULTS.md).",
        "Where the trigger moves an embedding (cosine similarities on the encoder's own scale): `kept` = how much",
        "of its clean embedding a triggered image keeps (1: unmoved, 0: as far as a random other image's); `pull` =",
        "how far towards the target class it moved (0: no closer to target-class images than before, 1: as close",
        "as target-class images are to each other). `norm` = the triggered embeddings' mean length over the clean",
        "ones'. `layout kept` = the pixel R2's ridge read-out applied to the triggered embeddings, scored against",
        "the clean images' layouts (all the images above): how much of the clean image's layout a triggered",
        "embedding still says (the pixel R2 if the trigger changed nothing; below 0: worse than the mean layout).",
        "Backdoored / control encoder.",
        "",
        "| pair | " + " | ".join(ENCODER_FACTS) + " |",
        "|---|" + "---|" * len(ENCODER_FACTS),
        *[f"| {label} | " + " | ".join(_pair(recs, k) for k in ENCODER_FACTS.values()) + " |"
          for label, recs in pairs.items()],
        "",
        "## Pairs",
        "",
    ]
    for label, recs in pairs.items():
        r = recs[0]
        lines.append(f"- **{label}**: `{r['pair_bundle']}` against `{r['pair_control']}`; attack "
                     f"{r['attack'] or 'none recorded (suspected trigger and target)'}, "
                     f"trigger {r['trigger']}, target {r['target_class']}, encoder {r['encoder']}, aux "
                     f"{r['aux']} (control: {r['control_aux']}); {r['n_images']} images, the backdoor fired on "
                     f"{r['n_fired']}; {r['hardware']}, {r['wall_s']} s; `{r['command']}`.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def decompose_cli(a: argparse.Namespace) -> None:
    start = time.time()
    require_bundles([a.bundle, a.control])
    records, facts = decompose(a.bundle, a.control, a.trigger, a.max_images, knn_bank=a.knn_bank,
                               target_class=a.target_class)
    head = {"label": a.label or f"{a.bundle} ({facts['trigger']})", "pair_bundle": str(a.bundle),
            "pair_control": str(a.control), **facts, "hardware": hardware(), "wall_s": round(time.time() - start, 1),
            "command": command_line(a.command_line)}
    for r in publish_by_label(records, head, Path(a.results), Path(a.report), write_report):
        print(f"{r['detector']:>10} {r['condition']:>11}  AUC {r['auc']:.3f}  fired {fmt(r['auc_fired'])}")
    print(f"wrote {a.results} and {a.report} ({head['wall_s']} s)")
