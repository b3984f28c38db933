"""Several server processes, each with its OWN listening socket on the same port (``SO_REUSEPORT``, Linux).

With uvicorn's ``--workers`` every process accepts from one shared socket, and a keep-alive connection stays
with the process that accepted it: a client that opens its connections at once can leave most of them on one
process (docs/PERFORMANCE.md counts them). With one ``SO_REUSEPORT`` socket per process the kernel assigns each
new connection to a socket by a hash of its addresses, so connections spread evenly in expectation.

The parent only supervises: it starts ``workers`` processes, restarts one that dies, and on SIGTERM / SIGINT
passes SIGTERM on (uvicorn drains in-flight requests) and waits for them.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import socket
import time
from types import FrameType

import uvicorn

from service.protocol import GuardedHttpProtocol

APP = "service.app:create_app"


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) with ``SO_REUSEPORT``, so that sibling processes can bind it too."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("SO_REUSEPORT is not available on this platform; use --workers without --reuse-port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(host: str, port: int) -> None:
    sock = listening_socket(host, port)
    uvicorn.Server(uvicorn.Config(APP, factory=True, http=GuardedHttpProtocol)).run(sockets=[sock])


def serve(host: str, port: int, workers: int, poll_s: float = 0.5) -> None:
    """Run ``workers`` processes until SIGTERM / SIGINT; a process that exits meanwhile is replaced."""
    listening_socket(host, port).close()  # fail here, in the parent, when the port is taken or not allowed
    ctx = mp.get_context("spawn")
    stopping = False

    def start() -> mp.process.BaseProcess:
        proc = ctx.Process(target=_worker, args=(host, port), daemon=False)
        proc.start()
        return proc

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    procs = [start() for _ in range(workers)]
    old = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopping:
            for i, proc in enumerate(procs):
                if not proc.is_alive():
                    print(f"worker {proc.pid} exited with {proc.exitcode}; starting another", flush=True)
                    procs[i] = start()
            time.sleep(poll_s)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: uvicorn finishes in-flight requests, then exits
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
        for s, handler in old.items():
            signal.signal(s, handler)
