"""``?explain=true``: what the encoder "thought" an image was. No torch, no matplotlib.

The detector already returns, beside the per-patch errors it scores, the decoder's ``reconstruction``
(B, 3, H, W) in normalised space. An explanation is

- the reconstruction, de-normalised with the manifest's mean/std, as a PNG the size of the model input;
- the per-patch squared errors (B, N) as numbers, and as a PNG error map: each patch's error divided by
  the image's largest one, coloured (dark = rebuilt well, bright yellow = the worst patch) and upscaled
  to the model input (one block of ``patch_size`` x ``patch_size`` pixels per patch).

The map is normalised per image so its structure is visible; ``error_map_max`` and the threshold tell how
large the errors are in absolute terms. A backdoor that fires usually spoils the whole reconstruction
(the embedding points at the attacker's target), so the hottest patch is not necessarily where the
trigger is. With ``DEDE_MASK_DRAWS`` > 1 the explanation shows the first mask draw only.

Explanations run the models a second time (the batcher's path returns scores only), in worker threads,
``max_concurrent`` at a time and at most ``max_waiting`` requests waiting, then 503 like the batcher.
"""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
from PIL import Image
from starlette.concurrency import run_in_threadpool

from service.errors import Overloaded
from service.schemas import Explanation
from service.scoring import Scorer

# the inferno colour map sampled at 0, 1/4, 1/2, 3/4 and 1 (perceptually ordered: brightness rises with the value)
_ANCHORS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


def colormap(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> uint8 RGB (..., 3), linear between the anchors."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = np.minimum(v.astype(np.int64), len(_ANCHORS) - 2)
    frac = (v - lo)[..., None]
    rgb = _ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac
    return np.rint(rgb).astype(np.uint8)


def png_base64(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def denormalize(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """float32 (B, 3, H, W) in normalised space -> uint8 (B, H, W, 3); the inverse of ``imaging.normalize``."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    pixels = np.clip((x * s + m) * 255.0, 0, 255)
    return np.rint(pixels).astype(np.uint8).transpose(0, 2, 3, 1)


def error_maps(patch_error: np.ndarray, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, N) patch errors -> (B, side*patch, side*patch, 3) uint8 colour maps, and each image's max error."""
    b, n = patch_error.shape
    side = int(round(np.sqrt(n)))
    grid = patch_error.reshape(b, side, side)  # row-major patches, as the detector's patchify lays them out
    top = grid.max(axis=(1, 2))
    rel = grid / np.where(top > 0, top, 1.0)[:, None, None]
    up = np.repeat(np.repeat(rel, patch_size, axis=1), patch_size, axis=2)
    return colormap(up), top


def explain_batch(scorer: Scorer, images: np.ndarray) -> list[Explanation]:
    """uint8 (B, H, W, 3) at the model's input size -> one explanation per image."""
    out = scorer.run(images)
    enc, det = scorer.manifest.encoder, scorer.manifest.detector
    recon = denormalize(out["reconstruction"], enc.mean, enc.std)
    maps, top = error_maps(out["patch_error"], det.patch_size)
    return [Explanation(reconstruction_png=png_base64(recon[i]), error_map_png=png_base64(maps[i]),
                        patch_errors=[float(v) for v in out["patch_error"][i]], error_map_max=float(top[i]),
                        patch_size=det.patch_size) for i in range(len(images))]


class Explainer:
    """Runs ``explain_batch`` off the event loop with bounded concurrency and a bounded wait."""

    def __init__(self, scorer: Scorer, max_concurrent: int = 1, max_waiting: int = 16,
                 timeout_s: float = 30.0) -> None:
        self.scorer, self.max_waiting, self.timeout_s = scorer, max_waiting, timeout_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self._waiting = 0

    async def explain(self, images: np.ndarray) -> list[Explanation]:
        if self._waiting >= self.max_waiting:
            raise Overloaded(f"{self._waiting} explanations are waiting; retry later")
        self._waiting += 1
        try:
            async with asyncio.timeout(self.timeout_s), self._slots:
                return await run_in_threadpool(explain_batch, self.scorer, images)
        except TimeoutError as exc:
            raise Overloaded(f"the explanation did not finish within {self.timeout_s:g} s; retry later") from exc
        finally:
            self._waiting -= 1
