"""Algorithm 1: train DeDe's decoder on an auxiliary set for a frozen victim encoder, then calibrate.

The victim never changes, and the official code uses no augmentation, so its embeddings of the auxiliary
set are computed once and cached in memory. Auxiliary sets:
- clean images the defender has (default: a subset of CIFAR-10 train, no trigger) - the end-user scenario;
- in-distribution with ``poison_rate`` > 0: that share of the auxiliary images carries the trigger - the
  paper's provider scenario (1%);
- out-of-distribution: ``aux_source`` another dataset (e.g. ``gtsrb``, ``imagenette``, or a folder path),
  resized to the encoder's input size, or (``aux_crops`` K > 0; not the paper's) K random crops of each image
  (``data.load_crops``): more distinct images from a small set of large photos, still embedded once.
A disjoint held-out split of the same source calibrates the target-FPR threshold. Against a poisoned auxiliary
set: ``drop_dense`` leaves out the densest clump of its embeddings before training (``training.aux_filter``), and
``drop_worst`` the highest-loss samples of each batch during training (``robust_mean``); neither is the paper's.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from service.scores import check_score
from training import distributed
from training.attacks.triggers import Trigger, make_trigger
from training.aux_filter import DENSE_K, dense_filter
from training.calibrate import calibrate, parse_rule
from training.config import code_version, optimizer_step, out_of_time, pick_device, save_config
from training.data import fingerprint, load_crops, load_images
from training.dede import DeDe, DeDeConfig, score_mask_ratio
from training.encoders import EncoderSpec, embed, load_encoder, to_input


@dataclass
class TrainConfig:
    preset: str = "custom"
    aux_source: str = "cifar10"  # dataset name or path (zip/folder)
    aux_split: str = "train"  # '' for an unlabelled folder of images
    aux_images: int = 0  # 0 = all images not held out
    # > 0: train on this many random crops of each auxiliary image (data.load_crops) instead of the image itself;
    # aux_images counts the images before cropping
    aux_crops: int = 0
    holdout_images: int = 2000  # clean held-out images for the target-FPR threshold
    poison_rate: float = 0.0  # share of auxiliary images that carry the trigger
    trigger: str = "badencoder"
    trigger_from: str = ""  # an attacked encoder directory: poison with ITS trigger (name and learned params)
    ood_noise_quantile: float = 0.0  # CTRL handling: >0 = aux embeddings with L2 norm above this quantile
    #                                  get a random-noise image instead (the paper's 0.99 norm ball)
    patch_size: int = 4
    width: int = 192
    depth: int = 12
    heads: int = 3
    dec_width: int = 192
    dec_depth: int = 4
    dec_heads: int = 3
    mask_ratio: float = 0.9
    epochs: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-6
    threshold_rule: str = "fpr@0.01"
    score: str = "paper"  # see service.scores: 'paper', 'trimmed@<k>', 'content@<a>' or 'content' (a fitted)
    drop_worst: float = 0.0  # robust training: leave the highest-loss share of each batch out (after epoch 1)
    drop_dense: float = 0.0  # leave out this share of auxiliary images, the densest in embedding space (aux_filter)
    dense_k: int = DENSE_K  # nearest neighbours that measure an embedding's density for drop_dense
    emb_dropout: float = 0.0  # share of samples trained with a null (zero) embedding
    calib_images: int = 10000  # auxiliary training images scored for the paper-1.5x rule
    time_budget_s: float = 0.0  # > 0: stop after the epoch that uses up this wall time (single process only)
    seed: int = 0
    device: str = "auto"


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(width=32, depth=1, heads=2, dec_width=32, dec_depth=1, dec_heads=2, epochs=2,
                 aux_images=512, holdout_images=256, calib_images=256, batch_size=128),
    "cpu": dict(width=128, depth=6, heads=4, dec_width=128, dec_depth=2, dec_heads=4, epochs=15,
                aux_images=20000),
    "paper": dict(),  # the official settings are the defaults
    "study": dict(width=64, depth=3, heads=4, dec_width=64, dec_depth=1, dec_heads=4, epochs=10,
                  aux_images=10000, holdout_images=1000, calib_images=2000),
}


def robust_mean(per_sample: torch.Tensor, drop_worst: float) -> torch.Tensor:
    """Mean of the per-sample losses without the ``drop_worst`` share of highest ones (triggered auxiliary
    images reconstruct worst before the decoder learns their mapping)."""
    if drop_worst <= 0:
        return per_sample.mean()
    keep = max(1, int(round(len(per_sample) * (1 - drop_worst))))
    return per_sample.topk(keep, largest=False).values.mean()


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
        from training.attacks import recorded_trigger

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


def build_aux_set(cfg: TrainConfig, image_size: int) -> AuxSet:
    """The auxiliary training and held-out images, poisoned at ``poison_rate``."""
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
        train = crops[rest].reshape(-1, *holdout.shape[1:])  # (len(rest) * K, H, W, 3): image by image
    else:
        train = data.images[rest].copy()
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


def train_dede(cfg: TrainConfig, encoder_path: str, out: str | Path) -> dict[str, Any]:
    check_score(cfg.score, fit=True)
    parse_rule(cfg.threshold_rule)
    for key, value in (("drop_worst", cfg.drop_worst), ("drop_dense", cfg.drop_dense)):
        if not 0 <= value < 1:
            raise ValueError(f"{key} must be in [0, 1), got {value}")
    if cfg.dense_k < 1:
        raise ValueError(f"dense_k must be at least 1, got {cfg.dense_k}")
    if cfg.aux_crops < 0:
        raise ValueError(f"aux_crops must be 0 (whole images) or a number of crops per image, got {cfg.aux_crops}")
    device = pick_device(cfg.device)
    env = distributed.setup(device)
    if cfg.time_budget_s and env.world > 1:
        raise ValueError("time_budget_s needs a single process: ranks could stop at different epochs")
    torch.manual_seed(cfg.seed + env.rank)  # a different mask stream per rank
    out = Path(out)
    if env.main:
        save_config(cfg, out)
    victim, spec = load_encoder(encoder_path)
    victim = victim.to(device) if spec.name != "onnx" else victim
    emb_device = device if spec.name != "onnx" else "cpu"
    aux, all_emb = drop_dense_images(cfg, build_aux_set(cfg, spec.input_size), victim, spec, emb_device)
    train_images, holdout, aux_info = aux.train, aux.holdout, aux.info
    shard = train_images[env.rank :: env.world]  # this rank's part of the auxiliary set
    if all_emb is None:
        print(f"caching victim embeddings of {len(shard)} auxiliary images (rank {env.rank}/{env.world})")
        shard_emb = embed(victim, shard, spec, device=emb_device)
    else:  # the filter embedded every image already
        shard_emb = all_emb[env.rank :: env.world]
    train_emb = shard_emb.to(device)  # (N, E), computed once
    model_cfg = DeDeConfig(spec.input_size, cfg.patch_size, spec.embed_dim, cfg.width, cfg.depth, cfg.heads,
                           cfg.dec_width, cfg.dec_depth, cfg.dec_heads)
    if spec.input_size % cfg.patch_size:
        raise ValueError(f"input size {spec.input_size} is not a multiple of patch size {cfg.patch_size}")
    model = DeDe(model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    images_t = torch.from_numpy(shard.copy()).to(device)  # (N, H, W, 3) uint8
    if cfg.ood_noise_quantile > 0:
        aux_info["n_noise_filled"] = fill_with_noise(images_t, train_emb, cfg.ood_noise_quantile, cfg.seed)
        print(f"filled {aux_info['n_noise_filled']} out-of-norm-ball auxiliary images with noise")
    steps = max(1, len(train_images) // env.world // cfg.batch_size)  # the same on every rank
    history: list[float] = []
    step, first_epoch, start, wall_before = 0, 0, time.time(), 0.0
    resumed: dict[str, Any] = {}
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():  # resume an interrupted run with the same config
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if {**ckpt["config"], "epochs": cfg.epochs} != asdict(cfg):
            raise ValueError(f"{ckpt_path} was written with another config (only epochs may change on resume); "
                             "use a new --out directory")
        model.load_state_dict(ckpt["model"])  # before DDP wraps it: every rank starts from the same weights
        opt.load_state_dict(ckpt["optimizer"])
        step, first_epoch, history = ckpt["step"], ckpt["epoch"], list(ckpt["history"])
        # training time before the interruption (checkpoints of older versions did not record it)
        wall_before = float(ckpt.get("wall_s", 0.0))
        resumed = {"resumed_at_epoch": first_epoch, "train_wall_partial": "wall_s" not in ckpt}
        print(f"resuming from epoch {first_epoch} (step {step})")
    net = distributed.wrap(model, env, device)  # DDP averages gradients across ranks; else the model itself
    for epoch in range(first_epoch, cfg.epochs):
        net.train()
        perm = torch.randperm(len(images_t), device=device)
        total = 0.0
        bar = tqdm(range(steps), desc=f"dede epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not env.main)
        for i in bar:
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = to_input(images_t[idx], spec)  # (B, 3, H, W)
            ids_keep = model.random_masking(len(idx), cfg.mask_ratio, device)
            e = train_emb[idx]
            if cfg.emb_dropout > 0:
                e = e * (torch.rand(len(idx), 1, device=device) >= cfg.emb_dropout)
            per_sample, _ = net(x, e, ids_keep, per_sample=True)  # (B,)
            loss = robust_mean(per_sample, cfg.drop_worst if epoch > 0 else 0.0)
            value = optimizer_step(opt, loss, step)
            step += 1
            total += value
            bar.set_postfix(loss=f"{value:.4f}")
        history.append(distributed.mean_across(total / steps, env, device))
        if not env.main:
            continue
        print(f"dede epoch {epoch + 1}/{cfg.epochs} loss {history[-1]:.4f} ({time.time() - start:.0f}s)")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "config": asdict(cfg),
                    "epoch": epoch + 1, "step": step, "history": history, "code_version": code_version(),
                    "wall_s": wall_before + time.time() - start},
                   ckpt_path)
        if out_of_time(cfg.time_budget_s, start):
            print(f"time budget {cfg.time_budget_s:.0f}s used up after {epoch + 1} epochs")
            break
    distributed.teardown(env)
    if not env.main:
        return {"rank": env.rank, "world_size": env.world}
    model.eval()
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, out / "dede.safetensors")
    alpha_test = score_mask_ratio(cfg.mask_ratio)
    calib = calibrate(model, victim, spec, train_images[: cfg.calib_images], holdout, alpha_test,
                      cfg.threshold_rule, device=device, seed=cfg.seed, out=out, score=cfg.score)
    run = {
        "encoder": str(Path(encoder_path).resolve()),
        "model": asdict(model_cfg),
        "train_mask_ratio": cfg.mask_ratio,
        "test_mask_ratio": alpha_test,
        "score": calib["score"],  # with 'content', the fitted content@<a>
        "drop_worst": cfg.drop_worst,
        "drop_dense": cfg.drop_dense,
        "aux": aux_info | {"name": aux_name(cfg)},
        "epochs": len(history),
        "steps": step,
        "loss_history": history,
        "final_loss": history[-1] if history else None,
        "train_wall_s": round(wall_before + time.time() - start, 1),  # with the time before a resume
        **resumed,
        "device": device,
        "world_size": env.world,
        "preset": cfg.preset,
        "code_version": code_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "run.json").write_text(json.dumps(run, indent=2))
    (out / "calibration.json").write_text(json.dumps(calib, indent=2))
    print(f"threshold ({calib['rule']}): {calib['value']:.4f}")
    return {"final_loss": run["final_loss"], "threshold": calib["value"], "rule": calib["rule"],
            "train_wall_s": run["train_wall_s"]}
