"""Connection-level limits of ``dede serve`` (``service.protocol.GuardedHttpProtocol``), attacked with raw
sockets on loopback: a header flood (431), slow headers and slow bodies (408), more connections than allowed
(503), a client that disconnects mid-upload. Valid requests keep being answered meanwhile, and the server's
memory stays bounded.

One real server for the module, with small limits from the environment."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from tests.servers import dede_process

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 20
MAX_HEADER_BYTES = 16384
VALID_WITHIN_S = 2.0  # a valid request during an attack is answered within this
Connect = Callable[[], socket.socket]
HALF_HEADER = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: half a val"


@dataclass(frozen=True)
class Server:
    url: str
    address: tuple[str, int]
    pid: int
    log: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    env = dict(os.environ, DEDE_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S), DEDE_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
               DEDE_MAX_CONNECTIONS=str(MAX_CONNECTIONS), DEDE_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES))
    with log.open("wb") as err, dede_process(env=env, stderr=err) as (proc, url):
        host, port = url.removeprefix("http://").split(":")
        yield Server(url, (host, int(port)), proc.pid, log)


# --- raw sockets ---
@pytest.fixture
def connect(server: Server) -> Iterator[Callable[[], socket.socket]]:
    """Opens a connection to the server; all are closed after the test (passed or not)."""
    opened: list[socket.socket] = []

    def open_one() -> socket.socket:
        s = socket.create_connection(server.address, timeout=10)
        opened.append(s)
        return s

    yield open_one
    for s in opened:
        s.close()


def drain(socks: list[socket.socket], timeout: float) -> list[tuple[bytes, bool, float]]:
    """Read every socket until the server closes it or ``timeout`` passes: (bytes, closed, seconds to the
    close) each."""
    t0 = time.monotonic()
    data = {s: b"" for s in socks}
    done: dict[socket.socket, float] = {}
    while len(done) < len(socks) and time.monotonic() - t0 < timeout:
        ready, _, _ = select.select([s for s in socks if s not in done], [], [], 0.05)
        for s in ready:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            data[s] += chunk
            if not chunk:
                done[s] = time.monotonic() - t0
    return [(data[s], s in done, done.get(s, float("inf"))) for s in socks]


def status(response: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    assert match, response[:200]
    return int(match.group(1))


def read_response(sock: socket.socket, buf: bytearray) -> int:
    """One response with a content-length from ``sock`` (and ``buf``, what was read before): its status."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {bytes(buf[:200])!r}"
        buf += chunk
    head, _, _ = bytes(buf).partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)\r\ncontent-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(buf) < len(head) + 4 + length:
        buf += sock.recv(65536)
    del buf[:len(head) + 4 + length]
    return status(head)


# --- what must keep working ---
def small_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def valid_requests_answered(server: Server) -> None:
    """``GET /healthz`` and ``POST /score`` of a small PNG each answer 200 within ``VALID_WITHIN_S``."""
    for send in (lambda c: c.get("/healthz"),
                 lambda c: c.post("/score", files={"file": ("x.png", small_png(), "image/png")})):
        t0 = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=VALID_WITHIN_S) as client:
            r = send(client)
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < VALID_WITHIN_S


def during(attack_check: Callable[[], None], server: Server) -> None:
    """``valid_requests_answered`` in a thread while ``attack_check`` runs here; both must pass."""
    errors: list[BaseException] = []

    def valid() -> None:
        try:
            valid_requests_answered(server)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=valid)
    thread.start()
    attack_check()
    thread.join(timeout=30)
    if errors:
        raise errors[0]


def join_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(30)


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def client_disconnects(server: Server) -> float:
    r = httpx.get(server.url + "/metrics", timeout=5)
    assert r.status_code == 200
    text = r.text
    match = re.search(r'^dede_request_errors_total\{reason="client_disconnect"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


# --- the tests ---
def test_header_flood_is_refused_with_431_and_memory_stays_bounded(server: Server, connect: Connect) -> None:
    hwm0 = vm_kib(server.pid, "VmHWM")
    results: list[tuple[bytes, bool, float]] = []

    def flood() -> None:
        s = connect()
        t0 = time.monotonic()
        with contextlib.suppress(OSError):  # 1 MB of one header that never ends
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Flood: " + b"a" * 1_000_000)
        ((data, closed, _),) = drain([s], 10)
        results.append((data, closed, time.monotonic() - t0))
        s.close()

    for _ in range(4):  # 20 MB in all, 5 connections at a time
        threads = [threading.Thread(target=flood) for _ in range(5)]
        for t in threads:
            t.start()
        during(functools.partial(join_all, threads), server)
    assert len(results) == 20
    for data, closed, seconds in results:
        assert status(data) == 431, data[:200]
        assert b"\r\nconnection: close\r\n" in data
        assert closed and seconds < 2.0
    growth_mb = (vm_kib(server.pid, "VmHWM") - hwm0) / 1024
    assert growth_mb < 50, f"peak RSS grew by {growth_mb:.0f} MB"


def request_of(size: int) -> bytes:
    """A GET whose request line and headers are ``size`` bytes."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n"
    return head[:-4] + b"p" * (size - len(head)) + b"\r\n\r\n"


@pytest.mark.parametrize("writes", [1, 2], ids=["one-write", "two-writes"])
def test_the_cap_holds_to_the_byte(connect: Connect, writes: int) -> None:
    for size, expected in ((MAX_HEADER_BYTES, 200), (MAX_HEADER_BYTES + 1, 431)):
        s, buf, request = connect(), bytearray(), request_of(size)
        for i in range(writes):
            s.sendall(request[i * len(request) // writes:(i + 1) * len(request) // writes])
            time.sleep(0.05)
        assert read_response(s, buf) == expected, size


def test_each_request_of_a_connection_has_its_own_header_budget(connect: Connect) -> None:
    # 10 KB of headers each: three requests together are beyond the 16 KiB cap, each alone is not
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 10_000 + b"\r\n\r\n"
    s, buf = connect(), bytearray()
    for _ in range(3):  # keep-alive
        s.sendall(request)
        assert read_response(s, buf) == 200
    s.sendall(request * 3)  # pipelined, in one write
    assert [read_response(s, buf) for _ in range(3)] == [200, 200, 200]
    # idle after the response: closed after the header timeout, without an answer (no request was begun)
    ((data, closed, seconds),) = drain([s], HEADER_TIMEOUT_S + 3)
    assert data == b"" and closed and seconds >= HEADER_TIMEOUT_S * 0.8


def assert_408_after(server: Server, connect: Connect, n: int, request: bytes, timeout: float) -> None:
    """``n`` connections that send ``request`` and then nothing each get 408 and a close after ``timeout``, while
    valid requests are answered."""
    socks = [connect() for _ in range(n)]
    for s in socks:
        s.sendall(request)
    results: list[tuple[bytes, bool, float]] = []
    during(lambda: results.extend(drain(socks, timeout + 3)), server)
    for data, closed, seconds in results:
        assert status(data) == 408, data[:200]
        assert b"\r\nconnection: close\r\n" in data
        assert closed and timeout * 0.8 <= seconds <= timeout + 1.5


def test_slow_headers_get_408_after_the_header_timeout(server: Server, connect: Connect) -> None:
    assert_408_after(server, connect, 5, HALF_HEADER, HEADER_TIMEOUT_S)


def test_a_silent_connection_is_closed_after_the_header_timeout(connect: Connect) -> None:
    s = connect()
    ((data, closed, seconds),) = drain([s], HEADER_TIMEOUT_S + 3)
    assert data == b"" and closed and HEADER_TIMEOUT_S * 0.8 <= seconds <= HEADER_TIMEOUT_S + 1.5


def test_slow_bodies_get_408_after_the_body_timeout(server: Server, connect: Connect) -> None:
    before = client_disconnects(server)
    half_body = (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                 + b"\x89PNG\r\n\x1a\n..")  # 10 of 1000 bytes
    assert_408_after(server, connect, 3, half_body, BODY_TIMEOUT_S)
    assert client_disconnects(server) == before + 3  # the application saw http.disconnect


def test_connections_beyond_the_limit_get_503_and_valid_requests_resume(server: Server, connect: Connect) -> None:
    socks = [connect() for _ in range(MAX_CONNECTIONS + 10)]
    time.sleep(0.5)  # by now the refused ones have their answer; the admitted ones, nothing to read
    ready, _, _ = select.select(socks, [], [], 0)
    refused = [s for s in socks if s in ready]
    admitted = [s for s in socks if s not in ready]
    assert len(refused) >= 10 and len(admitted) <= MAX_CONNECTIONS
    for data, closed, _ in drain(refused, 2):
        assert status(data) == 503, data[:200]
        assert b"\r\nretry-after: 1\r\n" in data and b"\r\nconnection: close\r\n" in data
        assert closed
    # the admitted idle connections hold every slot until the header timeout closes them
    t0, answered = time.monotonic(), False
    while not answered and time.monotonic() - t0 < HEADER_TIMEOUT_S + VALID_WITHIN_S:
        with contextlib.suppress(httpx.TransportError):
            answered = httpx.get(server.url + "/healthz", timeout=1).status_code == 200
        if not answered:
            time.sleep(0.1)
    assert answered, f"no valid answer within {HEADER_TIMEOUT_S + VALID_WITHIN_S} s"
    valid_requests_answered(server)
    assert all(closed for _, closed, _ in drain(admitted, 3))


def test_a_client_disconnecting_mid_upload_is_counted_without_a_traceback(server: Server, connect: Connect) -> None:
    before = client_disconnects(server)
    s = connect()
    part = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n" + b"a" * 5000)
    s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\n"
              b"Content-Length: 100000\r\n\r\n" + part)
    time.sleep(0.2)
    s.close()
    deadline = time.monotonic() + 5
    while client_disconnects(server) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client_disconnects(server) == before + 1
    log = server.log.read_text(errors="replace")
    assert "client disconnected before the request body was complete: POST /score" in log
    assert "Traceback" not in log, log[-5000:]  # here, or from any attack before


def test_uvicorn_takes_the_protocol_by_name() -> None:
    from service.protocol import GuardedHttpProtocol

    config = uvicorn.Config("service.app:create_app", factory=True, http="service.protocol:GuardedHttpProtocol")
    config.load()
    assert config.http_protocol_class is GuardedHttpProtocol


@pytest.mark.parametrize("mode", [["--workers", "2"], ["--workers", "2", "--reuse-port"]],
                         ids=["shared-socket", "reuse-port"])
def test_every_worker_runs_the_guarded_protocol(tmp_path: Path, mode: list[str]) -> None:
    env = dict(os.environ, DEDE_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
               PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"))
    with dede_process(*mode, env=env) as (_, url):
        host, port = url.removeprefix("http://").split(":")
        deadline = time.monotonic() + 60
        answered = 0
        while answered < 6 and time.monotonic() < deadline:  # both workers up: fresh connections succeed
            with contextlib.suppress(httpx.TransportError):
                answered += httpx.get(url + "/readyz", timeout=1).status_code == 200
                continue
            time.sleep(0.1)
        socks = [socket.create_connection((host, int(port)), timeout=10) for _ in range(8)]
        try:
            for s in socks:  # spread over the workers by the kernel
                s.sendall(HALF_HEADER)
            for data, closed, _ in drain(socks, HEADER_TIMEOUT_S + 3):
                assert status(data) == 408 and closed
        finally:
            for s in socks:
                s.close()


def test_the_connection_limit_fits_the_open_file_limit() -> None:
    from service.protocol import RESERVED_FDS, connection_limit

    assert connection_limit(256, 1_048_576) == 256
    assert connection_limit(256, 200) == 200 - RESERVED_FDS
    assert connection_limit(256, 10) == 1
