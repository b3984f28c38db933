"""Safetensors weights into a model, strictly: shared by ``training.encoders`` (timm) and ``training.vision_towers``
(open_clip). Weights are read from safetensors only, never by pickle."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from torch import nn


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the ``model.`` / ``module.`` prefixes that wrappers (DDP, Lightning, this module's own
    ``TimmEncoder``) put in front of every key of a saved ``state_dict()``."""
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str, head: str | None = None) -> list[str]:
    """Load a safetensors ``state_dict()`` into ``model`` strictly, after ``strip_prefixes``; tensors of the
    classifier ``head`` (a module name, e.g. ``fc``) that ``model`` does not have are dropped. Returns the dropped
    keys; raises ``ValueError`` naming the first missing, unexpected or mis-shaped keys."""
    try:
        state = strip_prefixes(load_file(path))
    except Exception as exc:  # safetensors raises its own error types for a file that is not safetensors
        raise ValueError(f"{path} is not a readable safetensors file ({exc})") from exc
    expected = model.state_dict()
    dropped = sorted(k for k in state if k not in expected and head and (k == head or k.startswith(f"{head}.")))
    problems = {
        "missing": [k for k in expected if k not in state],
        "unexpected": [k for k in state if k not in expected and k not in dropped],
        "of another shape": [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
                             if k in state and state[k].shape != expected[k].shape],
    }
    if any(problems.values()):
        said = "; ".join(f"{len(keys)} {what} (first: {', '.join(keys[:4])})"
                         for what, keys in problems.items() if keys)
        raise ValueError(f"{path} does not fit the architecture: {said}")
    model.load_state_dict({k: v for k, v in state.items() if k in expected})
    return dropped
