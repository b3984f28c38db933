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
