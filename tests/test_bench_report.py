"""The GPU section of docs/PERFORMANCE.md is rendered from benchmarks/gpu_check.py's JSON, never typed in."""

import json
from pathlib import Path

from benchmarks.bench_service import gpu_section


def test_gpu_section_names_the_run_and_reports_the_side_by_side_ratio(tmp_path: Path) -> None:
    path = tmp_path / "gpu_check.json"
    assert gpu_section(path) == []  # no GPU check copied to docs/: no section
    path.write_text(json.dumps({
        "device": "NVIDIA H100 80GB HBM3", "onnxruntime": "1.30.0", "available_providers": ["CPUExecutionProvider"],
        "bundle": "badencoder-id", "command": "python benchmarks/gpu_check.py --out g.json", "wall_s": 17.4,
        "ort_cuda": {"skipped": "CUDAExecutionProvider is not available"},
        "ort_cpu": {"images_per_s": {"1": 100.0, "256": 500.0}},
        "torch_eager_cuda": {"images_per_s": {"1": 50.0, "256": 20000.0}}}))
    text = "\n".join(gpu_section(path))
    assert "on NVIDIA H100 80GB HBM3 (bundle `badencoder-id`" in text and "whole check 17.4 s" in text
    assert "- ONNX Runtime, CUDA (IO binding): not measured (CUDAExecutionProvider is not available)" in text
    assert "- PyTorch eager, CUDA: batch 1: 50, batch 256: 20000 images/s" in text
    assert "PyTorch eager on CUDA / ONNX Runtime on that host's CPU, same run, batch 256: 40.0x" in text
    assert "ONNX Runtime on CUDA / " not in text  # no ratio for what was not measured


def test_gpu_section_compares_ort_and_eager_on_the_same_device_and_reports_agreement(tmp_path: Path) -> None:
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps({
        "device": "NVIDIA H100 80GB HBM3", "onnxruntime": "1.31.1", "available_providers": ["CUDAExecutionProvider"],
        "ort_cuda": {"images_per_s": {"1": 300.0, "256": 20000.0}},
        "ort_cpu": {"images_per_s": {"1": 100.0, "256": 2000.0}},
        "torch_eager_cuda": {"images_per_s": {"1": 100.0, "256": 40000.0}},
        "cuda_vs_cpu": {"images": 512, "source": "CIFAR-10", "max_abs_diff": 4.5, "max_rel_diff": 0.002,
                        "flags_differ": 0}}))
    text = "\n".join(gpu_section(path))
    assert "ONNX Runtime on CUDA / PyTorch eager on CUDA, same run: batch 1: 3.000, batch 256: 0.500" in text
    assert "the same 512 images (CIFAR-10) scored on CUDA and on the CPU: largest score difference 4.5" in text
    assert "0 backdoor flags differ" in text


def _run(provider: str, **extra: object) -> dict:  # type: ignore[type-arg]
    row = {"images_per_s": 100.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0, "errors": 0}
    return {"raw_ort": 1000.0, "provider": provider, "batch": 64, "seconds_each": 3.0, "wall_s": 60.0,
            "load_generator": "httpx (Python, asyncio)", "hardware": "16-core CPU (X), GPU NVIDIA H100",
            "torch_eager": 500.0,
            "http": {"batching on": {"32": row}, "batching off": {"32": {**row, "images_per_s": 40.0}}},
            **extra}


def test_a_run_names_its_own_hardware_and_compares_eager_only_on_the_same_device() -> None:
    from benchmarks.bench_service import render_run

    gpu_old = "\n".join(render_run(_run("CUDAExecutionProvider"), "cmd"))  # before eager followed the provider
    assert "on 16-core CPU (X), GPU NVIDIA H100; provider CUDAExecutionProvider" in gpu_old
    assert "(c) PyTorch eager on CPU" in gpu_old
    assert "not compared in this run (ONNX Runtime ran on CUDA, eager on CPU)" in gpu_old
    assert "batching on / off at concurrency 32: 2.500 (met: >= 2)" in gpu_old
    gpu = "\n".join(render_run(_run("CUDAExecutionProvider", torch_eager_device="cuda", onnxruntime="1.31.1"), "cmd"))
    assert "(onnxruntime 1.31.1)" in gpu and "(c) PyTorch eager on CUDA" in gpu
    assert "Images:" not in gpu  # runs before the field: nothing claimed
    named = "\n".join(render_run(_run("CPUExecutionProvider", images="CIFAR-10 test images"), "cmd"))
    assert "Images: CIFAR-10 test images, one PNG per request." in named
    assert "ONNX Runtime / PyTorch eager: 2.000 (met: >= 1)" in gpu
