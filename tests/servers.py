"""Real processes on loopback for the integration tests: ``dede serve`` and readiness waits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

from tests.conftest import DEMO_BUNDLE, ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 60, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until ``url`` answers 200; fails at once when ``proc`` has died."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process behind {url} exited with {proc.returncode}")
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def dede_process(*args: str, bundle: Path = DEMO_BUNDLE, env: dict[str, str] | None = None,
                 stderr: int | IO[bytes] = subprocess.DEVNULL) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``dede serve`` on a free loopback port, ready; yields the process and its base URL, and stops it
    (SIGTERM) afterwards. Its stderr (uvicorn's and the service's log) goes to ``stderr``: discarded unless
    given a file."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--bundle", str(bundle),
                             "--host", "127.0.0.1", "--port", str(port), *args], cwd=ROOT,
                            env=env if env is not None else dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url + "/readyz", proc=proc)
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@contextmanager
def dede_server(*args: str, bundle: Path = DEMO_BUNDLE, env: dict[str, str] | None = None) -> Iterator[str]:
    """``dede_process``, when only the URL matters."""
    with dede_process(*args, bundle=bundle, env=env) as (_, url):
        yield url
