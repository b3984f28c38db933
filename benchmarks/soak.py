"""Soak test: constant concurrent load on ``dede serve`` (loopback only, fixed duration, bounded), with a
mix of valid and invalid uploads. Reports errors by status, latency and the server's memory (RSS) at the
start and the end; fails (exit 1) on any 5xx, on a valid upload that did not get 200, or on RSS growth
above ``--max-rss-growth-mb``.

    python benchmarks/soak.py --bundle models/demo-cifar10-badencoder --seconds 120
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_service import png, real_images, start_server  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def invalid_bodies() -> list[bytes]:
    good = png(np.zeros((64, 64, 3), np.uint8))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "TIFF")
    return [b"", b"not an image", good[: len(good) // 2], buf.getvalue(), b"\x89PNG\r\n\x1a\n" + b"\x00" * 64]


async def soak(url: str, valid: list[bytes], invalid: list[bytes], concurrency: int, seconds: float,
               invalid_share: float) -> dict[str, object]:
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    valid_failures = 0
    stop = time.perf_counter() + seconds
    rng = np.random.default_rng(0)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:

        async def worker() -> None:
            nonlocal valid_failures
            while time.perf_counter() < stop:
                bad = rng.random() < invalid_share
                body = invalid[rng.integers(len(invalid))] if bad else valid[rng.integers(len(valid))]
                t = time.perf_counter()
                r = await client.post("/score", content=body)
                latencies.append(time.perf_counter() - t)
                statuses[str(r.status_code)] += 1
                if not bad and r.status_code != 200:
                    valid_failures += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "statuses": dict(statuses), "valid_failures": valid_failures,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="models/demo-cifar10-badencoder")
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--invalid-share", type=float, default=0.2)
    p.add_argument("--max-rss-growth-mb", type=float, default=50)
    p.add_argument("--out", default="docs/soak.json")
    a = p.parse_args()
    proc, url = start_server(a.bundle, batching=True)
    try:
        valid = [png(img) for img in real_images(32, 256)[0]]
        asyncio.run(soak(url, valid, invalid_bodies(), a.concurrency, 5, a.invalid_share))  # warm-up
        rss_start = rss_mb(proc.pid)
        result = asyncio.run(soak(url, valid, invalid_bodies(), a.concurrency, a.seconds, a.invalid_share))
        rss_end = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result |= {"seconds": a.seconds, "concurrency": a.concurrency, "rss_start_mb": round(rss_start, 1),
               "rss_end_mb": round(rss_end, 1), "command": "python benchmarks/soak.py " + " ".join(sys.argv[1:])}
    five_xx = sum(v for k, v in result["statuses"].items() if k.startswith("5"))  # type: ignore[attr-defined]
    ok = five_xx == 0 and result["valid_failures"] == 0 and rss_end - rss_start <= a.max_rss_growth_mb
    result["passed"] = ok
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
