"""Metrics across several uvicorn workers (prometheus_client multiprocess mode), over real HTTP."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.bench_service import child_pids
from tests.conftest import EXAMPLES
from tests.servers import dede_process, dede_server


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


@pytest.mark.parametrize("mode", [[], ["--reuse-port"]], ids=["shared-socket", "reuse-port"])
def test_counts_are_summed_over_workers(tmp_path, mode) -> None:  # type: ignore[no-untyped-def]
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"), "PATH": "/usr/bin:/bin"}
    with dede_server("--workers", "2", *mode, env=env) as url:
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


def _workers(pid: int) -> set[int]:
    """The spawned worker processes of a ``--reuse-port`` server (not multiprocessing's resource tracker)."""
    return {k for k in child_pids(pid) if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()}


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
                    reason="this kernel does not list a process's children in /proc (CONFIG_PROC_CHILDREN)")
def test_reuse_port_replaces_a_dead_worker_and_stops_on_sigterm(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = dict(os.environ) | {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with dede_process("--workers", "2", "--reuse-port", env=env) as (proc, url):
        first = _workers(proc.pid)
        assert len(first) == 2
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.time() + 60
        while time.time() < deadline and (victim in _workers(proc.pid) or len(_workers(proc.pid)) < 2):
            time.sleep(0.2)
        assert victim not in _workers(proc.pid) and len(_workers(proc.pid)) == 2  # replaced
        ok = 0
        while time.time() < deadline and ok < 10:  # fresh connections reach whichever socket: all answer
            try:
                ok += httpx.get(url + "/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                time.sleep(0.2)
        assert ok == 10
        workers = _workers(proc.pid)
    assert proc.returncode == 0
    assert not any(Path(f"/proc/{w}").exists() for w in workers)  # SIGTERM reached every worker
