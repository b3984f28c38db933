"""The auxiliary set DeDe is trained and calibrated on (``build_aux_set``), and the dense-clump filter, our defence
against a poisoned auxiliary set, applied before DeDe is trained.

Auxiliary sets:
- clean images the defender has (default: a subset of CIFAR-10 train, no trigger) - the end-user scenario;
- in-distribution with ``poison_rate`` > 0: that share of the auxiliary images carries the trigger - the
  paper's provider scenario (1%);
- out-of-distribution: ``aux_source`` another dataset (e.g. ``gtsrb``, ``imagenette``, or a folder path),
  resized to the encoder's input size, or (``aux_crops`` K > 0; not the paper's) K random crops of each image
  (``data.load_crops``): more distinct images from a small set of large photos, still embedded once.
A disjoint held-out split of the same source calibrates the target-FPR threshold.

A backdoor maps every triggered image to (nearly) one embedding, so the triggered images of a poisoned auxiliary
set form the densest clump of the victim's embeddings: each one's nearest neighbours are other triggered images,
at cosine similarity near 1. Leaving out the ``share`` of auxiliary images with the highest mean similarity to
their ``k`` nearest neighbours removes them before the decoder can learn to redraw the trigger for the target's
embedding (``training.train``, ``drop_dense``). The held-out calibration images are filtered against the
same clump, so a triggered held-out image does not raise the deployed threshold either. Not the paper's method.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.config import DENSE_K, TrainConfig
from training.data import count_images, fingerprint, load_crops, load_images
from training.encoders import EncoderSpec, embed
from training.triggers import Trigger, make_trigger, recorded_trigger


def knn_similarity(emb: torch.Tensor, ref: torch.Tensor, k: int, same: bool, chunk: int = 2048) -> torch.Tensor:
    """Mean cosine similarity of each row of ``emb`` (N, E) to its ``k`` most similar rows of ``ref`` (M, E);
    ``same``: ``emb`` is ``ref``, and a row is not its own neighbour. -> (N,) float32 on ``emb``'s device."""
    if k < 1 or k > len(ref) - int(same):
        raise ValueError(f"k={k} nearest neighbours need at least {k + int(same)} reference embeddings, got {len(ref)}")
    a, b = F.normalize(emb.float(), dim=1), F.normalize(ref.float().to(emb.device), dim=1)
    out = []
    for i in range(0, len(a), chunk):
        sim = a[i : i + chunk] @ b.T  # (c, M)
        if same:
            rows = torch.arange(len(sim), device=sim.device)
            sim[rows, rows + i] = -2.0  # below any cosine similarity: never among the k largest
        out.append(sim.topk(k, dim=1).values.mean(1))
    return torch.cat(out) if out else torch.zeros(0, device=emb.device)


@dataclass(frozen=True)
class DenseFilter:
    keep: torch.Tensor  # (N,) bool: auxiliary training images kept
    keep_holdout: torch.Tensor  # (M,) bool: held-out calibration images kept
    threshold: float  # the lowest similarity that was dropped; held-out images at or above it are dropped


def dense_filter(train_emb: torch.Tensor, holdout_emb: torch.Tensor, share: float, k: int = DENSE_K) -> DenseFilter:
    """Drop the ``round(share * N)`` training embeddings (N, E) with the highest k-NN similarity among themselves,
    and the held-out embeddings (M, E) whose similarity to their k nearest training embeddings is as high."""
    if not 0 < share < 1:
        raise ValueError(f"drop_dense must be in (0, 1), got {share}")
    n_drop = int(round(share * len(train_emb)))
    dens = knn_similarity(train_emb, train_emb, k, same=True).cpu()
    keep = torch.ones(len(train_emb), dtype=torch.bool)
    if n_drop == 0:
        return DenseFilter(keep, torch.ones(len(holdout_emb), dtype=torch.bool), float("inf"))
    worst = dens.argsort(descending=True)[:n_drop]
    keep[worst] = False
    threshold = float(dens[worst].min())
    hold = knn_similarity(holdout_emb, train_emb, k, same=False).cpu()
    return DenseFilter(keep, hold < threshold, threshold)


def aux_name(cfg: TrainConfig) -> str:
    """A short label for results records: ``cifar10-clean``, ``cifar10-id-1%``, ``gtsrb-ood``,
    ``imagenette-ood-crops6`` (trained on 6 crops of each image)..."""
    source = Path(cfg.aux_source).stem
    if cfg.poison_rate > 0:
        name = f"{source}-id-{cfg.poison_rate * 100:g}%"
    else:
        name = f"{source}-clean" if source == "cifar10" else f"{source}-ood"
    return name + (f"-crops{cfg.aux_crops}" if cfg.aux_crops else "")


def aux_trigger(cfg: TrainConfig, image_size: int) -> Trigger:
    """The trigger that poisons the auxiliary set: ``trigger_from``'s recorded attack trigger, else ``trigger``."""
    if cfg.trigger_from:
        name, params = recorded_trigger(cfg.trigger_from)
        return make_trigger(name, image_size, params)
    return make_trigger(cfg.trigger, image_size)


def fill_with_noise(images: torch.Tensor, emb: torch.Tensor, quantile: float, seed: int) -> int:
    """CTRL handling (paper, Sec. 4): the auxiliary samples whose embedding lies outside the norm ball of radius
    ``quantile`` (of the embedding norms) get a uniform random-noise image, so the decoder learns to draw noise
    for that out-of-distribution region. ``images``: uint8 (N, H, W, 3), changed in place. -> count."""
    norms = emb.norm(dim=1)  # (N,)
    outside = norms > torch.quantile(norms, quantile)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randint(0, 256, (int(outside.sum()), *images.shape[1:]), generator=gen, dtype=torch.uint8)
    images[outside] = noise.to(images.device)
    return int(outside.sum())


@dataclass
class AuxSet:
    train: np.ndarray  # (N, H, W, 3) uint8: the decoder's training images
    holdout: np.ndarray  # (M, H, W, 3) uint8: clean-source held-out images for the threshold (poisoned alike)
    info: dict[str, Any]  # what run.json records about the set
    poisoned: np.ndarray  # (N,) bool: which training images carry the trigger
    poisoned_holdout: np.ndarray  # (M,) bool


def aux_image_count(cfg: TrainConfig) -> int:
    """How many auxiliary training images ``build_aux_set`` will hold, without decoding any (crops counted)."""
    total = count_images(cfg.aux_source, cfg.aux_split or None, labelled=bool(cfg.aux_split))
    rest = total - min(cfg.holdout_images, total // 5)
    return (min(rest, cfg.aux_images) if cfg.aux_images else rest) * max(cfg.aux_crops, 1)


def gather(source: np.ndarray, rows: np.ndarray, into: Path | None, chunk: int = 1024) -> np.ndarray:
    """``source[rows]`` (rows of uint8 images, e.g. a memory-mapped dataset), written chunk by chunk into the ``.npy``
    file ``into`` (memory-mapped, so a large set never sits whole in RAM) or, without ``into``, into RAM."""
    if into is None:
        return source[rows]
    out = np.lib.format.open_memmap(into, "w+", source.dtype, (len(rows), *source.shape[1:]))
    for start in range(0, len(rows), chunk):
        out[start : start + chunk] = source[rows[start : start + chunk]]
    return out


def build_aux_set(cfg: TrainConfig, image_size: int, workdir: Path | None = None) -> AuxSet:
    """The auxiliary training and held-out images, poisoned at ``poison_rate``. With ``workdir`` the training images
    are written there (``aux_train.npy``, memory-mapped) instead of held in RAM."""
    data = load_images(cfg.aux_source, cfg.aux_split or None, image_size, labelled=bool(cfg.aux_split))
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(data))
    n_hold = min(cfg.holdout_images, len(data) // 5)
    hold, rest = order[:n_hold], order[n_hold:]
    if cfg.aux_images:
        rest = rest[: cfg.aux_images]
    holdout = data.images[hold].copy()
    if cfg.aux_crops:  # crops of the training images only: the threshold is calibrated on whole images, as scored
        crops = load_crops(cfg.aux_source, cfg.aux_split or None, image_size, cfg.aux_crops, cfg.seed,
                           labelled=bool(cfg.aux_split))  # (len(data), K, H, W, 3)
        if len(crops) != len(data):
            raise ValueError(f"{cfg.aux_source}: {len(crops)} images cropped but {len(data)} loaded whole")
        flat = crops.reshape(-1, *holdout.shape[1:])  # (len(data) * K, H, W, 3): image by image
        rows = (rest[:, None] * cfg.aux_crops + np.arange(cfg.aux_crops)).reshape(-1)
        train = gather(flat, rows, workdir / "aux_train.npy" if workdir else None)  # (len(rest) * K, H, W, 3)
    else:
        train = gather(data.images, rest, workdir / "aux_train.npy" if workdir else None)
    poisoned, poisoned_holdout = np.zeros(len(train), dtype=bool), np.zeros(len(holdout), dtype=bool)
    info: dict[str, Any] = {"source": str(cfg.aux_source), "split": cfg.aux_split, "n_train": len(train),
                            "n_holdout": len(holdout), "poison_rate": cfg.poison_rate}
    if cfg.aux_crops:
        info |= {"crops": cfg.aux_crops, "n_train_images": len(rest)}
    if cfg.poison_rate > 0:
        trigger = aux_trigger(cfg, image_size)
        for arr, mask, key in ((train, poisoned, "n_poisoned"), (holdout, poisoned_holdout, "n_poisoned_holdout")):
            k = int(round(cfg.poison_rate * len(arr)))
            idx = rng.choice(len(arr), k, replace=False)
            arr[idx] = trigger.apply(arr[idx])
            mask[idx] = True
            info[key] = k
    info["fingerprint"] = fingerprint(train)
    return AuxSet(train, holdout, info, poisoned, poisoned_holdout)


def drop_dense_images(cfg: TrainConfig, aux: AuxSet, victim: torch.nn.Module, spec: EncoderSpec,
                      device: str) -> tuple[AuxSet, torch.Tensor | None]:
    """With ``drop_dense`` > 0: the set without its densest share of embeddings (and the held-out images as dense
    as those), and the kept training images' embeddings (N', E); else the set unchanged and None. The counts,
    and how many triggered images went, are recorded in ``info["dense_filter"]``."""
    if cfg.drop_dense <= 0:
        return aux, None
    emb = embed(victim, aux.train, spec, device=device)  # (N, E)
    f = dense_filter(emb, embed(victim, aux.holdout, spec, device=device), cfg.drop_dense, cfg.dense_k)
    keep, keep_hold = f.keep.numpy(), f.keep_holdout.numpy()
    record = {"share": cfg.drop_dense, "k": cfg.dense_k, "threshold": round(f.threshold, 6),
              "dropped": int((~keep).sum()), "dropped_holdout": int((~keep_hold).sum()),
              "poisoned_dropped": int((aux.poisoned & ~keep).sum()),
              "poisoned_dropped_holdout": int((aux.poisoned_holdout & ~keep_hold).sum())}
    print(f"dense filter: left out {record['dropped']} auxiliary images ({record['poisoned_dropped']} of "
          f"{int(aux.poisoned.sum())} triggered) and {record['dropped_holdout']} held-out images")
    kept = AuxSet(aux.train[keep], aux.holdout[keep_hold], aux.info | {"dense_filter": record},
                  aux.poisoned[keep], aux.poisoned_holdout[keep_hold])
    return kept, emb[torch.from_numpy(keep).to(emb.device)]
