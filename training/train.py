"""Algorithm 1: train DeDe's decoder on an auxiliary set for a frozen victim encoder, then calibrate.

The victim never changes, and the official code uses no augmentation, so its embeddings of the auxiliary set
(``training.auxset``: clean, poisoned or out-of-distribution images, and the held-out split that calibrates the
threshold) are computed once, into a memory-mapped file of the run directory. The detector's size follows the
encoder's input (``config.input_size_layer``), and a config whose estimated peak memory does not fit is refused
before anything is loaded (``training.memory``). Against a poisoned auxiliary set: ``drop_dense`` leaves out the
densest clump of its embeddings before training (``training.auxset``), and ``drop_worst`` the highest-loss samples
of each batch during training (``robust_mean``); neither is the paper's.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from service.calibration import images_needed
from service.scores import check_score
from training import distributed
from training.auxset import aux_image_count, aux_name, build_aux_set, drop_dense_images, fill_with_noise
from training.calibrate import calibrate, parse_rule
from training.config import EncoderOptions, TrainConfig, code_version, save_config
from training.dede import DeDe, DeDeConfig, score_mask_ratio
from training.encoders import embed, embed_into, to_input
from training.loop import optimizer_step, out_of_time, pick_device
from training.memory import check_fits, train_memory
from training.user_encoders import encoder_ref, open_encoder


def robust_mean(per_sample: torch.Tensor, drop_worst: float) -> torch.Tensor:
    """Mean of the per-sample losses without the ``drop_worst`` share of highest ones (triggered auxiliary
    images reconstruct worst before the decoder learns their mapping)."""
    if drop_worst <= 0:
        return per_sample.mean()
    keep = max(1, int(round(len(per_sample) * (1 - drop_worst))))
    return per_sample.topk(keep, largest=False).values.mean()


def train_dede(cfg: TrainConfig, encoder_path: str, out: str | Path, options: EncoderOptions | None = None
               ) -> dict[str, Any]:
    """Train a detector for the encoder ``encoder_path`` names (``training.user_encoders``; ``options`` the rest of
    its command line) into the run directory ``out``, then calibrate it. Refuses, before anything is loaded, a config
    whose estimated peak memory exceeds what the machine has (``training.memory``)."""
    options = options or EncoderOptions()
    check_score(cfg.score, fit=True)
    kind, q = parse_rule(cfg.threshold_rule)
    if kind == "fpr" and cfg.holdout_images < images_needed(q):
        raise ValueError(f"threshold_rule {cfg.threshold_rule} needs at least {images_needed(q)} held-out images "
                         f"(the smallest conformal p-value is 1/(n+1)); holdout_images is {cfg.holdout_images}: "
                         f"raise it (--set holdout_images={images_needed(q)}) or use a larger q")
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
    victim, spec = open_encoder(encoder_path, options)
    if spec.input_size % cfg.patch_size:
        raise ValueError(f"input size {spec.input_size} is not a multiple of patch size {cfg.patch_size}")
    model_cfg = DeDeConfig(spec.input_size, cfg.patch_size, spec.embed_dim, cfg.width, cfg.depth, cfg.heads,
                           cfg.dec_width, cfg.dec_depth, cfg.dec_heads)
    n_images = aux_image_count(cfg)
    estimate = train_memory(cfg, model_cfg, n_images, device, victim)
    print(f"{n_images} auxiliary images; estimated peak memory {estimate.total / 2**30:.1f} GiB "
          f"({estimate.describe()})")
    check_fits(estimate, device, cfg)
    if env.main:
        save_config(cfg, out)
    victim = victim.to(device) if spec.name != "onnx" else victim
    emb_device = device if spec.name != "onnx" else "cpu"
    # one process: the training images and their embeddings live in memory-mapped files of the run directory
    workdir = out if env.world == 1 else None
    aux, all_emb = drop_dense_images(cfg, build_aux_set(cfg, spec.input_size, workdir), victim, spec, emb_device)
    train_images, holdout, aux_info = aux.train, aux.holdout, aux.info
    if kind == "fpr" and len(holdout) < images_needed(q):  # refused before training, not after it
        raise ValueError(f"threshold_rule {cfg.threshold_rule} needs at least {images_needed(q)} held-out images (the "
                         f"smallest conformal p-value is 1/(n+1)); the auxiliary set holds out {len(holdout)} (a fifth "
                         f"of it at most): use more images, or a q of at least {1 / max(len(holdout), 1):.2g}, or "
                         "--set threshold_rule=paper-1.5x")
    shard = train_images[env.rank :: env.world]  # this rank's part of the auxiliary set
    if all_emb is None:
        print(f"caching victim embeddings of {len(shard)} auxiliary images (rank {env.rank}/{env.world})")
        shard_emb = torch.from_numpy(embed_into(victim, shard, spec, workdir / "aux_embeddings.npy", emb_device)) \
            if workdir else embed(victim, shard, spec, device=emb_device)
    else:  # the filter embedded every image already
        shard_emb = all_emb[env.rank :: env.world]
    train_emb = shard_emb.to(device)  # (N, E), computed once; on the CPU the memory-mapped file itself
    model = DeDe(model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # (N, H, W, 3) uint8: on the CPU the memory-mapped file (CTRL's noise filling changes a copy, never the set
    # that calibrates the threshold), on a GPU a copy on the device
    in_place = device == "cpu" and workdir is not None and cfg.ood_noise_quantile <= 0
    images_t = torch.from_numpy(shard if in_place else np.array(shard)).to(device)
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
                      cfg.threshold_rule, device=device, seed=cfg.seed, out=out, score=cfg.score,
                      incident=cfg.incident_rule)
    run = {
        "encoder": encoder_ref(encoder_path),
        "encoder_options": options.recorded(),
        "normalization": spec.normalization,
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
    for cache in ("aux_train.npy", "aux_embeddings.npy"):  # training's working files; calibrate_run rebuilds them
        (out / cache).unlink(missing_ok=True)
    (out / "calibration.json").write_text(json.dumps(calib, indent=2))
    print(f"threshold ({calib['rule']}): {calib['value']:.4f}")
    return {"final_loss": run["final_loss"], "threshold": calib["value"], "rule": calib["rule"],
            "train_wall_s": run["train_wall_s"]}
