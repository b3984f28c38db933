"""A short GPU check (under 90 s, no network): which ONNX Runtime providers exist, and the raw model
throughput of a bundle on CUDA (and on this machine's CPU), per batch size.

    python benchmarks/gpu_check.py --out gpu.json [--bundle models/demo-cifar10-badencoder]
                                   [--runs runs/demo-cpu/dede-badencoder] [--seconds 2]

(a) on CUDA: ``service.scoring.Scorer`` with ``CUDAExecutionProvider`` (IO binding: the embedding stays on
    the device), the same measurement as ``bench_service.py``'s raw model throughput; when the CUDA
    provider is missing (the CPU build of onnxruntime), the JSON says so;
the same images scored on CUDA and on the CPU: the largest score difference and how many flags differ;
(c) PyTorch eager on CUDA, only with ``--runs`` (the training run the bundle was exported from) and the
    training code's dependencies installed; skipped otherwise.
When pydantic (the manifest's validator) is not installed, a minimal reader of ``manifest.json`` runs the
same two sessions with the same IO binding, and the JSON names which one was used.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BATCHES = (1, 8, 64, 256)


class MiniScorer:
    """``Scorer.score``'s IO-binding path without pydantic: encoder output kept on the device."""

    def __init__(self, bundle: Path, providers: tuple[str, ...]) -> None:
        m = json.loads((bundle / "manifest.json").read_text())
        self.mean = np.array(m["encoder"]["mean"], np.float32).reshape(1, 3, 1, 1)
        self.std = np.array(m["encoder"]["std"], np.float32).reshape(1, 3, 1, 1)
        self.size, self.kept = m["encoder"]["input_size"], m["detector"]["kept_patches"]
        self.encoder = ort.InferenceSession(str(bundle / m["encoder"]["file"]), providers=list(providers))
        self.detector = ort.InferenceSession(str(bundle / m["detector"]["file"]), providers=list(providers))
        self.provider = self.detector.get_providers()[0]
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"

    def score(self, images: np.ndarray) -> np.ndarray:
        x = ((images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0 - self.mean) / self.std).astype(np.float32)
        x_dev = ort.OrtValue.ortvalue_from_numpy(x, self.device, 0)
        enc = self.encoder.io_binding()
        enc.bind_ortvalue_input(self.encoder.get_inputs()[0].name, x_dev)
        enc.bind_output(self.encoder.get_outputs()[0].name, self.device, 0)
        self.encoder.run_with_iobinding(enc)
        det = self.detector.io_binding()
        det.bind_ortvalue_input("image", x_dev)
        det.bind_ortvalue_input("embedding", enc.get_outputs()[0])
        det.bind_cpu_input("keep", np.zeros((len(images), self.kept), np.int64))  # the demo bundles keep none
        for name in ("score", "reconstruction"):
            det.bind_output(name, self.device, 0)
        det.bind_output("patch_error", "cpu")
        self.detector.run_with_iobinding(det)
        return det.get_outputs()[2].numpy().sum(1)


def load_scorer(bundle: Path, providers: tuple[str, ...]) -> tuple[Any, str]:
    try:
        from service.scoring import Scorer
    except ImportError as exc:
        return MiniScorer(bundle, providers), f"benchmarks.gpu_check.MiniScorer ({exc})"
    return Scorer.from_bundle(bundle, providers), "service.scoring.Scorer"


def throughput(scorer: Any, size: int, seconds: float) -> dict[str, float]:
    """Images/s per batch size (``bench_service.raw_throughput``'s loop), one warm-up call each."""
    images = np.random.default_rng(0).integers(0, 256, (max(BATCHES) * 2, size, size, 3), dtype=np.uint8)
    out = {}
    for b in BATCHES:
        scorer.score(images[:b])
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            i = (done // b * b) % (len(images) - b)
            scorer.score(images[i : i + b])  # returns host scores: the device work is finished
            done += b
        out[str(b)] = round(done / (time.perf_counter() - start), 1)
    return out


def scores_of(scorer: Any, images: np.ndarray) -> np.ndarray:
    out = scorer.score(images)
    return np.asarray(getattr(out, "scores", out), dtype=np.float64)


def agreement(gpu: Any, cpu: Any, size: int, n: int = 512) -> dict[str, Any]:
    """The same images scored on the GPU and on the CPU: the largest score difference (absolute and relative
    to the score) and how many backdoor flags differ (the threshold from the manifest; Scorer only)."""
    try:
        from benchmarks.bench_service import real_images

        images, source = real_images(size, n)
    except ImportError:
        images = np.random.default_rng(1).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        source = "uniform random images"
    g = np.concatenate([scores_of(gpu, images[i : i + 64]) for i in range(0, len(images), 64)])
    c = np.concatenate([scores_of(cpu, images[i : i + 64]) for i in range(0, len(images), 64)])
    res: dict[str, Any] = {"images": len(images), "source": source,
                           "max_abs_diff": float(np.max(np.abs(g - c))),
                           "max_rel_diff": float(np.max(np.abs(g - c) / np.maximum(np.abs(c), 1e-12)))}
    threshold = getattr(cpu, "threshold", None)
    if threshold is not None:
        res["flags_differ"] = int(np.sum((g > threshold) != (c > threshold)))
    return res


def preload_cuda_libraries() -> str:
    """onnxruntime-gpu >= 1.21 can load CUDA and cuDNN from the nvidia-* wheels (those PyTorch installs) before
    the first CUDA session; without them on the loader path the CUDA provider falls back to the CPU."""
    if not hasattr(ort, "preload_dlls"):
        return "not offered by this onnxruntime"
    try:
        ort.preload_dlls()
    except Exception as exc:  # reported in the JSON; the check goes on
        return f"failed: {type(exc).__name__}: {exc}"
    return "done"


def device_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except ImportError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def torch_eager(runs: str | None, size: int, seconds: float) -> dict[str, Any]:
    if not runs:
        return {"skipped": "no --runs (the training run directory) given"}
    try:
        import torch

        from benchmarks.bench_service import torch_throughput
    except ImportError as exc:
        return {"skipped": f"cannot import the training code: {exc}"}
    if not torch.cuda.is_available():
        return {"skipped": "torch sees no CUDA device"}
    images = np.random.default_rng(0).integers(0, 256, (max(BATCHES) * 2, size, size, 3), dtype=np.uint8)
    try:
        rates = {str(b): torch_throughput(runs, images, b, seconds, device="cuda") for b in BATCHES}
    except (ImportError, FileNotFoundError) as exc:
        return {"skipped": f"{type(exc).__name__}: {exc}"}
    return {"images_per_s": rates}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--bundle", default=str(ROOT / "models" / "demo-cifar10-badencoder"))
    p.add_argument("--runs", default=None, help="training run directory, for PyTorch eager")
    p.add_argument("--seconds", type=float, default=2.0, help="per batch size and backend")
    a = p.parse_args()
    start = time.time()
    bundle = Path(a.bundle)
    size = json.loads((bundle / "manifest.json").read_text())["encoder"]["input_size"]
    available = ort.get_available_providers()
    res: dict[str, Any] = {"device": device_name(), "onnxruntime": ort.__version__, "available_providers": available,
                           "python": platform.python_version(), "bundle": bundle.name, "batches": list(BATCHES),
                           "seconds_each": a.seconds,
                           "command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]])}
    print("ONNX Runtime", ort.__version__, "providers:", available, "device:", res["device"], flush=True)
    cuda = None
    if "CUDAExecutionProvider" in available:
        res["preload_dlls"] = preload_cuda_libraries()
        cuda, impl = load_scorer(bundle, ("CUDAExecutionProvider", "CPUExecutionProvider"))
        res["ort_cuda"] = {"provider_in_use": cuda.provider, "scorer": impl,
                           "images_per_s": throughput(cuda, size, a.seconds)}
    else:
        res["ort_cuda"] = {"skipped": "CUDAExecutionProvider is not available: this onnxruntime is the CPU build "
                                      "(install onnxruntime-gpu, the 'gpu' extra)"}
    scorer, impl = load_scorer(bundle, ("CPUExecutionProvider",))
    res["ort_cpu"] = {"provider_in_use": scorer.provider, "scorer": impl,
                      "images_per_s": throughput(scorer, size, a.seconds / 2)}
    if cuda is not None:
        res["cuda_vs_cpu"] = agreement(cuda, scorer, size)
    res["torch_eager_cuda"] = torch_eager(a.runs, size, a.seconds)
    res["wall_s"] = round(time.time() - start, 1)
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
