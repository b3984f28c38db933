"""Helpers shared by every training loop: the device, the learning-rate schedule, the wall-clock budget and one
optimiser step that stops on a non-finite loss."""

from __future__ import annotations

import math
import time

import torch


def pick_device(name: str) -> str:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels once
    return device


def warmup_cosine(opt: torch.optim.Optimizer, total: int, warmup: int, cosine: bool = True
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate per step: linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``total``
    steps (``cosine=False``: constant after the warm-up). Step the scheduler once per batch."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def out_of_time(budget_s: float, start: float) -> bool:
    """True once a run with a wall-clock budget (``time_budget_s`` > 0, e.g. on a lent GPU) has used it up:
    training loops then stop after the epoch in progress and record the epochs actually done."""
    return budget_s > 0 and time.time() - start > budget_s


def check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} at step {step}: stopping")


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, step: int) -> float:
    """One update: stop on a non-finite loss, backward, step. Returns the loss value."""
    check_finite(loss, step)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()
