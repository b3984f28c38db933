"""Metrics across several uvicorn workers (prometheus_client multiprocess mode), over real HTTP."""

from __future__ import annotations

import time

import httpx

from tests.conftest import EXAMPLES
from tests.servers import dede_server


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_counts_are_summed_over_workers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "PATH": "/usr/bin:/bin"}
    with dede_server("--workers", "2", env=env) as url:
        ready = 0
        deadline = time.time() + 60
        while time.time() < deadline and ready < 10:  # both workers up: several fresh connections succeed
            try:
                ready += httpx.get(url + "/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                time.sleep(0.2)
        assert ready >= 10, "server did not start"
        files = {f.stem: f.read_bytes() for f in EXAMPLES.glob("*.png")}
        flags = 0
        for _ in range(5):
            for data in files.values():
                flags += httpx.post(url + "/score", content=data, timeout=30).json()["backdoor"]
        # a fresh connection per scrape may land on either worker: each must report the total
        texts = [httpx.get(url + "/metrics", timeout=10).text for _ in range(4)]
        for text in texts:
            assert metric(text, "dede_images_scored_total") == 5 * len(files)
            assert metric(text, "dede_backdoor_alerts_total") == flags
            assert 'dede_model_info{' in text
