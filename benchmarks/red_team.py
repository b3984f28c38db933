"""The red-team run: hostile uploads, slow clients and oversized requests against a live ``dede serve`` on
loopback, each probe measured for the statuses it gets, the server's peak memory while it runs, and the latency of
valid requests sent alongside it.

    python -m benchmarks.red_team                 # default limits, full-size probes -> docs/security.json
    python -m benchmarks.red_team --markdown      # and the measured table of docs/SECURITY.md (make red-team)

Every payload is generated here (nothing large is committed); ``tests/security/test_uploads.py`` runs the same
corpus at ``SMALL`` scale against a server with small limits. Peak memory is the server process's ``VmHWM``, reset
(``/proc/PID/clear_refs``) before each probe, so each probe's peak is its own; ``stated_worst_mib`` is the bound
that ``worst_case_mib`` derives from the settings. Bounded: probes hold at most a few hundred MB of payload, and the
whole run takes a few minutes (the slow-client probes wait out the header and body timeouts).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, PngImagePlugin

from service.imaging import jpeg_scans
from service.manifest import load_manifest
from service.settings import Settings
from tests.conftest import DEMO_BUNDLE, ROOT
from tests.servers import dede_process

EXAMPLES = ROOT / "examples"
Status = int | str  # an HTTP status, or what happened instead ("closed": the server closed without a response)


@dataclass(frozen=True)
class Scale:
    side: int  # a large image's side, pixels
    batch: int  # images in a batch probe
    concurrent: int  # simultaneous requests in a concurrency probe
    header_bytes: int  # bytes a header flood tries to send
    slow_clients: int
    scan_bomb_bytes: tuple[int, int]  # the small and the large progressive-JPEG scan bomb


FULL = Scale(side=5000, batch=64, concurrent=40, header_bytes=64 * 2**20, slow_clients=50,
             scan_bomb_bytes=(150_000, 9_000_000))
SMALL = Scale(side=1800, batch=16, concurrent=8, header_bytes=4 * 2**20, slow_clients=10,
              scan_bomb_bytes=(150_000, 1_500_000))


# --- payloads ------------------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def example(name: str) -> Image.Image:
    return Image.open(EXAMPLES / f"{name}.png").convert("RGB")


def flat_png(side: int, mode: str = "RGB") -> bytes:
    """A side x side image of one colour: kilobytes on the wire, side^2 pixels decoded (a pixel bomb)."""
    return encode(Image.new(mode, (side, side)))


def grey16_png(side: int) -> bytes:
    """A 16-bit grey PNG (once converted through float64: 8 bytes a pixel)."""
    return encode(Image.frombytes("I;16", (side, side), np.zeros((side, side), "<u2").tobytes()))


def text_bomb_png(text_bytes: int = 4 * 2**20) -> bytes:
    """A tiny PNG whose compressed text chunks decompress to ``text_bytes``."""
    info = PngImagePlugin.PngInfo()
    for i in range(max(1, text_bytes // 2**20)):
        info.add_text(f"k{i}", "x" * 2**20, zip=True)
    return encode(Image.new("RGB", (8, 8)), pnginfo=info)


def scan_bomb_jpeg(target_bytes: int, side: int) -> bytes:
    """A progressive JPEG of side x side pixels of one colour (each scan a few bytes, each decoded over every pixel)
    whose last scan is repeated until the file has ``target_bytes``."""
    data = encode(Image.new("RGB", (side, side), (90, 120, 150)), "JPEG", progressive=True, quality=95)
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    copies = max(1, (target_bytes - len(data)) // (end - last))
    return data[:end] + data[last:end] * copies + data[end:]


def scan_limit_jpeg(side: int, scans: int) -> bytes:
    """The costliest JPEG the limits admit: side x side, progressive, exactly ``scans`` scans."""
    data = scan_bomb_jpeg(0, side)  # the plain progressive file plus one copy of its last scan
    last, end = data.rfind(b"\xff\xda"), data.rfind(b"\xff\xd9")
    return data[:end] + data[last:end] * (scans - jpeg_scans(data, 10**6)) + data[end:]


def rotated_trigger_png() -> bytes:
    """The triggered cat stored turned a quarter, with the EXIF tag that turns it upright (browsers apply it)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(example("triggered-cat").transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())


def transparent_trigger_png() -> bytes:
    """The triggered cat with its trigger pixels transparent (torchvision's loader drops the alpha: it sees them)."""
    t, c = np.asarray(example("triggered-cat")), np.asarray(example("clean-cat"))
    alpha = np.where(np.abs(t.astype(np.int16) - c).sum(axis=2) > 0, 0, 255).astype(np.uint8)
    return encode(Image.fromarray(np.dstack([t, alpha]), "RGBA"))


# --- clients ---------------------------------------------------------------------------------------------------


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def read_status(sock: socket.socket, timeout: float) -> Status:
    """The status of the response on ``sock``, or ``closed``/``no answer`` (within ``timeout``)."""
    sock.settimeout(timeout)
    try:
        head = sock.recv(64)
    except TimeoutError:
        return "no answer"
    except OSError:
        return "closed"
    if not head:
        return "closed"
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else "garbage"


def raw(url: str, first: bytes, then: Iterable[bytes] = (), wait_s: float = 30.0) -> Status:
    """Send ``first`` and whatever ``then`` yields on one connection (stopping when the server closes), then read
    the answer."""
    with socket.create_connection(address(url), timeout=10) as sock:
        try:
            sock.sendall(first)
            for chunk in then:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed while we were still sending: read what it said
        return read_status(sock, wait_s)


def header_flood(url: str, n_bytes: int) -> Status:
    chunk = b"X-Flood: " + b"a" * 65_000 + b"\r\n"
    return raw(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", [chunk] * (n_bytes // len(chunk)))


def post(url: str, path: str, timeout: float = 60.0, **kw: object) -> Status:
    try:
        return httpx.post(url + path, timeout=timeout, **kw).status_code  # type: ignore[arg-type]
    except httpx.TransportError as exc:
        return type(exc).__name__


def batch(url: str, files: list[bytes]) -> Status:
    return post(url, "/score/batch", files=[("files", (f"{i}.png", f, "image/png")) for i, f in enumerate(files)])


def together(n: int, fn: Callable[[int], Status]) -> list[Status]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, range(n)))


def idle_clients(url: str, n: int, request: bytes, wait_s: float) -> list[Status]:
    """``n`` connections that send ``request`` (half a header, half a body, or nothing at all) and then wait: each
    one's answer, or how it ended."""
    socks = [socket.create_connection(address(url), timeout=10) for _ in range(n)]
    try:
        for s in socks:
            if request:
                s.sendall(request)
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda s: read_status(s, wait_s), socks))
    finally:
        for s in socks:
            s.close()


def disconnect_mid_upload(url: str, n: int) -> list[Status]:
    """``n`` uploads that declare 100 kB of multipart body, send 10 kB and hang up."""
    head = (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
            b"filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n" + b"\0" * 10_000)
    for _ in range(n):
        with socket.create_connection(address(url), timeout=10) as sock:
            sock.sendall(head)
            time.sleep(0.05)
    time.sleep(0.5)
    return ["hung up"] * n


def v2_infer(url: str, body: bytes, headers: dict[str, str] | None = None) -> Status:
    model = httpx.get(url + "/info", timeout=10).json()["model"]
    extra = {k: v.encode("latin-1") for k, v in (headers or {}).items()}  # latin-1 on the wire, as a client may
    return post(url, f"/v2/models/{model}/infer", content=body, headers={"content-type": "application/json"} | extra)


def score_flag(url: str, data: bytes) -> Status:
    """200 and whether the upload was flagged, with the view: e.g. ``200 flagged (exif=applied)``."""
    r = httpx.post(url + "/score", content=data, timeout=30)
    if r.status_code != 200:
        return r.status_code
    body = r.json()
    return f"200 {'flagged' if body['backdoor'] else 'passed'} ({body['view']})"


# --- the corpus ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    name: str
    attack: str  # the class of attack
    expected: frozenset[Status]  # the statuses a correct service answers with
    run: Callable[[str], list[Status]]
    valid_may_fail: bool = False  # valid requests alongside may get 503 (the probe fills the connection limit)


def corpus(scale: Scale, settings: Settings) -> list[Probe]:
    s = scale
    slow_wait = settings.header_timeout_s + 5
    half_body = (b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
                 + b"\0" * 10)
    half_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: half a val"
    big, grey = flat_png(s.side), grey16_png(s.side)
    scans_small, scans_large = (scan_bomb_jpeg(n, s.side) for n in s.scan_bomb_bytes)
    dup = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 1, 1, 3], "data": [0, 0, 0]}],
                      "outputs": [{"name": "score"}] * 1000}).encode()
    return [
        Probe("header flood", "headers", frozenset({431, "closed"}),
              lambda u: [header_flood(u, s.header_bytes)]),
        Probe(f"header flood x{s.concurrent // 2}", "headers", frozenset({431, "closed"}),
              lambda u: together(s.concurrent // 2, lambda _: header_flood(u, s.header_bytes // 4))),
        Probe(f"batch of {s.batch} PNGs of {s.side}x{s.side}", "decode memory", frozenset({413}),
              lambda u: [batch(u, [big] * s.batch)]),
        Probe(f"one PNG of {s.side}x{s.side}", "decode memory", frozenset({200}), lambda u: [batch(u, [big])]),
        Probe(f"{s.concurrent} concurrent PNGs of {s.side}x{s.side}", "decode memory", frozenset({200, 503}),
              lambda u: together(s.concurrent, lambda _: batch(u, [big]))),
        Probe(f"batch of {s.batch} PNGs with 4 MB of compressed text", "decode memory", frozenset({422}),
              lambda u: [batch(u, [text_bomb_png()] * s.batch)]),
        Probe(f"16-bit grey PNG of {s.side}x{s.side}", "decode memory", frozenset({200}),
              lambda u: [batch(u, [grey])]),
        Probe(f"progressive JPEG scan bomb, {len(scans_small) // 1000} kB", "decode CPU", frozenset({422}),
              lambda u: [batch(u, [scans_small])]),
        Probe(f"progressive JPEG scan bomb, {len(scans_large) // 10**6} MB", "decode CPU", frozenset({422}),
              lambda u: [batch(u, [scans_large])]),
        Probe(f"progressive JPEG of {s.side}x{s.side} at the scan limit ({settings.max_jpeg_scans})", "decode CPU",
              frozenset({200}), lambda u: [batch(u, [scan_limit_jpeg(s.side, settings.max_jpeg_scans)])]),
        Probe(f"{s.concurrent} concurrent scan bombs", "decode CPU", frozenset({422}),
              lambda u: together(s.concurrent, lambda _: batch(u, [scans_small]))),
        Probe("V2 outputs named 1000 times", "response amplification", frozenset({400}), lambda u: [v2_infer(u, dup)]),
        Probe("Inference-Header-Content-Length: ²", "5xx", frozenset({400}),
              lambda u: [v2_infer(u, b"{}", {"Inference-Header-Content-Length": "\xb2"})]),
        Probe(f"{s.slow_clients} half headers", "slow clients", frozenset({408}),
              lambda u: idle_clients(u, s.slow_clients, half_header, slow_wait)),
        Probe(f"{s.slow_clients} half bodies", "slow clients", frozenset({408}),
              lambda u: idle_clients(u, s.slow_clients, half_body, settings.body_timeout_s + 5)),
        Probe(f"{settings.max_connections + 10} idle connections", "slow clients", frozenset({503, "closed"}),
              lambda u: idle_clients(u, settings.max_connections + 10, b"", slow_wait), valid_may_fail=True),
        Probe("20 uploads cut off mid-body", "client disconnect", frozenset({"hung up"}),
              lambda u: disconnect_mid_upload(u, 20)),
        Probe("triggered cat, stored rotated with an EXIF tag", "bypass", frozenset({"200 flagged (exif=applied)"}),
              lambda u: [score_flag(u, rotated_trigger_png())]),
        Probe("triggered cat, trigger transparent", "bypass",
              frozenset({"200 flagged (alpha=white)", "200 flagged (alpha=dropped)"}),
              lambda u: [score_flag(u, transparent_trigger_png())]),
    ]


# --- measuring -------------------------------------------------------------------------------------------------


def vm_mib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak(pid: int) -> None:
    """VmHWM back to the current RSS (Linux: writing 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


@dataclass
class Valid:
    """Valid requests (POST /score of a clean photo) sent one after another while a probe runs (at least one, started
    with the probe)."""

    url: str
    latencies: list[float] = field(default_factory=list)
    failures: Counter[Status] = field(default_factory=Counter)

    def loop(self, stop: threading.Event) -> None:
        body = encode(example("clean-cat"))
        with httpx.Client(timeout=60) as http:
            while not (stop.is_set() and self.latencies):
                t0 = time.perf_counter()
                try:
                    status: Status = http.post(self.url + "/score", content=body).status_code
                except httpx.TransportError as exc:
                    status = type(exc).__name__
                self.latencies.append(time.perf_counter() - t0)
                if status != 200:
                    self.failures[status] += 1
                stop.wait(0.1)


@dataclass(frozen=True)
class Outcome:
    probe: str
    attack: str
    statuses: dict[str, int]
    expected: bool
    seconds: float
    peak_rss_mib: float
    added_mib: float
    valid_requests: int
    valid_max_s: float
    valid_failures: dict[str, int]


def run_probe(probe: Probe, url: str, pid: int) -> Outcome:
    reset_peak(pid)
    before = vm_mib(pid, "VmRSS")
    valid, stop = Valid(url), threading.Event()
    thread = threading.Thread(target=valid.loop, args=(stop,), daemon=True)
    thread.start()
    t0 = time.perf_counter()
    statuses = probe.run(url)
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join(120)
    peak = vm_mib(pid, "VmHWM")
    counts = Counter(str(s) for s in statuses)
    return Outcome(probe.name, probe.attack, dict(counts), all(s in probe.expected for s in statuses),
                   round(seconds, 2), round(peak, 1), round(peak - before, 1), len(valid.latencies),
                   round(max(valid.latencies, default=0.0), 3), {str(k): v for k, v in valid.failures.items()})


def worst_case_mib(settings: Settings, idle_mib: float, input_size: int) -> dict[str, float]:
    """The service's stated worst-case memory per process, from its settings: what it holds at once at most."""
    parts = {
        "idle (models loaded, warmed up)": idle_mib,
        "request bodies (DEDE_UPLOAD_BUDGET_BYTES)": settings.upload_budget_bytes / 2**20,
        "decoded pixels (DEDE_DECODE_BUDGET_BYTES)": settings.decode_budget_bytes / 2**20,
        "request heads (DEDE_MAX_CONNECTIONS x DEDE_MAX_HEADER_BYTES)":
            settings.max_connections * settings.max_header_bytes / 2**20,
        "queued views (DEDE_MAX_QUEUE x input, uint8)": settings.max_queue * input_size**2 * 3 / 2**20,
        "one batch through the model (float32 input x 4)": settings.max_batch_size * 3 * input_size**2 * 16 / 2**20,
    }
    return {k: round(v, 1) for k, v in parts.items()} | {"total": round(sum(parts.values()), 1)}


@contextmanager
def server(env: dict[str, str], bundle: Path = DEMO_BUNDLE) -> Iterator[tuple[int, str]]:
    with dede_process(bundle=bundle, env=dict(os.environ) | env) as (proc, url):
        yield proc.pid, url


def red_team(scale: Scale, env: dict[str, str], bundle: Path = DEMO_BUNDLE,
             only: str | None = None) -> dict[str, object]:
    settings = Settings(**{k.removeprefix("DEDE_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    size = load_manifest(bundle).encoder.input_size
    t0 = time.perf_counter()
    with server(env, bundle) as (pid, url):
        time.sleep(1)
        idle = vm_mib(pid, "VmRSS")
        outcomes = [run_probe(p, url, pid) for p in corpus(scale, settings) if only is None or only in p.name]
        metrics = httpx.get(url + "/metrics", timeout=10).text
    disconnects = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith('dede_request_errors_total{reason="client_disconnect"}'))
    return {"hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "bundle": bundle.name, "scale": asdict(scale), "settings": env, "idle_rss_mib": round(idle, 1),
            "stated_worst_mib": worst_case_mib(settings, idle, size), "client_disconnects_counted": disconnects,
            "wall_s": round(time.perf_counter() - t0, 1), "probes": [asdict(o) for o in outcomes]}


def markdown(report: dict[str, object]) -> str:
    probes: list[dict[str, object]] = report["probes"]  # type: ignore[assignment]
    worst: dict[str, float] = report["stated_worst_mib"]  # type: ignore[assignment]
    lines = ["| probe | class | statuses | as expected | probe s | peak RSS MiB (+ during) | valid requests: max s, "
             "failures |", "|---|---|---|---|---|---|---|"]
    for p in probes:
        statuses = ", ".join(f"{k} x{v}" for k, v in p["statuses"].items())  # type: ignore[attr-defined]
        fails = ", ".join(f"{k} x{v}" for k, v in p["valid_failures"].items()) or "none"  # type: ignore[attr-defined]
        lines.append(f"| {p['probe']} | {p['attack']} | {statuses} | {'yes' if p['expected'] else '**no**'} | "
                     f"{p['seconds']} | {p['peak_rss_mib']} (+{max(0.0, p['added_mib']):.1f}) | "
                     f"{p['valid_max_s']} s, {fails} |")
    lines += ["", "Stated worst case per process (MiB): " + "; ".join(f"{k}: {v}" for k, v in worst.items()) + ".",
              f"Measured: the largest peak of any probe was {max(p['peak_rss_mib'] for p in probes)} MiB "  # type: ignore
              f"({report['hardware']}, {report['bundle']}, whole run {report['wall_s']} s; "
              f"client disconnects counted: {report['client_disconnects_counted']:g})."]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- red-team:begin (python -m benchmarks.red_team --markdown) -->", "<!-- red-team:end -->"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="the test suite's scale, not the issue's full sizes")
    p.add_argument("--only", help="run the probes whose name contains this")
    p.add_argument("--out", default=str(ROOT / "docs" / "security.json"))
    p.add_argument("--markdown", action="store_true", help="also write the table into docs/SECURITY.md")
    p.add_argument("--render", action="store_true", help="only write the table again from --out's report")
    a = p.parse_args()
    if a.render:
        report = json.loads(Path(a.out).read_text())
    else:
        report = red_team(SMALL if a.small else FULL, {}, only=a.only)
        Path(a.out).write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(report)
    print(table)
    if a.markdown:
        doc = ROOT / "docs" / "SECURITY.md"
        text = doc.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        doc.write_text(text[:start] + "\n" + table + text[end:])


if __name__ == "__main__":
    main()
