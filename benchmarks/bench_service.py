"""Throughput and latency of the scoring service, measured side by side in one run on one bundle.

    python benchmarks/bench_service.py --bundle models/demo-cifar10-badencoder [--runs runs/demo-cpu]

(a) raw batched model throughput through ONNX Runtime (``Scorer.score``, the ceiling);
(b) the HTTP service end to end (``dede serve`` on loopback, one PNG per ``POST /score``) at concurrency
    1, 8, 32 and 64, with dynamic batching on and off: images/s and p50/p95/p99 latency;
(c) PyTorch eager throughput of the same models (needs the training run directory, e.g. from ``make demo``).
``--workers``/``--intra-op-threads`` set the server's processes and model threads; ``--compare-workers N`` adds
a server of N single-threaded processes at concurrency 32, started three times per listening mode (one shared
socket; ``--reuse-port``).
Writes ``docs/PERFORMANCE.md`` (and ``docs/performance.json``) with the ratios the goals are stated in.
The load generator runs on the same machine as the server and competes with it for the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.scoring import GPU_PROVIDERS, Scorer  # noqa: E402

MULTI = "batching on, more processes"
SOCKETS = {False: "one shared socket", True: "SO_REUSEPORT"}


def _ratio(x: float) -> str:
    """A ratio truncated (not rounded) to 3 decimals, so that a value just under a goal never reads as met."""
    return f"{math.floor(x * 1000) / 1000:.3f}"


def real_images(size: int, n: int) -> tuple[np.ndarray, str]:
    """CIFAR-10 test images when the dataset is present, else the committed examples (repeated) -> (images, which)."""
    try:
        from training.data import load_images

        test = load_images("cifar10", "test", size)
        # all classes, not the first
        return test.images[np.random.default_rng(0).permutation(len(test))[:n]], "CIFAR-10 test images"
    except (ImportError, FileNotFoundError):
        files = sorted((ROOT / "examples").glob("*.png"))
        imgs = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size))) for f in files])
        return np.resize(imgs, (n, *imgs.shape[1:])), f"the {len(files)} committed example images, repeated"


def raw_throughput(bundle: str, images: np.ndarray, batch: int, seconds: float) -> float:
    return raw_measure(bundle, images, batch, seconds)["images_per_s"]


def raw_measure(bundle: str, images: np.ndarray, batch: int, seconds: float) -> dict[str, float]:
    """Images/s of ``Scorer.score`` on batches, and the CPU time (all threads) per image."""
    scorer = Scorer.from_bundle(bundle)
    scorer.score(images[:batch])
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        i = (done // batch * batch) % (len(images) - batch)
        scorer.score(images[i : i + batch])
        done += batch
    return {"images_per_s": done / (time.perf_counter() - start),
            "cpu_ms_per_image": 1000 * (time.process_time() - cpu) / done, "load_avg": os.getloadavg()[0]}


def child_pids(pid: int) -> list[int]:
    """The direct children of a process, from /proc (Linux with CONFIG_PROC_CHILDREN)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        out += [int(c) for c in task.read_text().split()]
    return out


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants (all threads; the uvicorn workers of a
    multi-worker server), from /proc."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            todo += child_pids(p)
        except FileNotFoundError:  # exited meanwhile
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def torch_throughput(run_dir: str, images: np.ndarray, batch: int, seconds: float,
                     device: str = "cpu") -> float | None:
    """PyTorch eager, the same encoder and detector as the bundle (rebuilt from the training run)."""
    try:
        import torch

        from training.dede import DetectorGraph, kept_count
        from training.encoders import to_input
        from training.runs import load_run
    except ImportError:
        return None
    if not (Path(run_dir) / "run.json").exists():
        return None
    model, victim, spec, run, _ = load_run(run_dir)
    graph, victim = DetectorGraph(model).eval().to(device), victim.to(device)
    k = kept_count(model.cfg.num_patches, run["test_mask_ratio"])

    def step(i: int) -> None:
        x = to_input(torch.from_numpy(images[i : i + batch]).to(device), spec)
        keep = model.random_masking(batch, run["test_mask_ratio"]) if k else torch.zeros(batch, 0, dtype=torch.long)
        graph(x, victim(x), keep.to(device))

    with torch.no_grad():
        step(0)  # warm-up (CUDA kernels, allocator)
        if device != "cpu":
            torch.cuda.synchronize()
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step((done // batch * batch) % (len(images) - batch))
            done += batch
        if device != "cpu":
            torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connections_per_process(url: str) -> list[int]:
    """Established connections to the server's port, counted per server process (largest first), from ``ss``;
    empty when ``ss`` is missing."""
    if not shutil.which("ss"):
        return []
    port = url.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True,
                         text=True, timeout=10).stdout
    counts: dict[str, int] = {}
    for line in out.splitlines():
        if "pid=" in line:
            pid = line.split("pid=", 1)[1].split(",", 1)[0]
            counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


def _sample_connections(out: list[int], url: str) -> None:
    out.extend(connections_per_process(url))


def start_server(bundle: str, batching: bool, workers: int = 1, threads: int = 0,
                 reuse_port: bool = False) -> tuple[subprocess.Popen[bytes], str]:
    """``dede serve`` with ``workers`` processes (one ``SO_REUSEPORT`` socket each with ``reuse_port``), each with
    ``threads`` ONNX Runtime threads (0: ORT's default)."""
    port = free_port()
    env = os.environ | {"DEDE_BATCHING": str(batching).lower(), "DEDE_MAX_QUEUE": "4096",
                        "DEDE_INTRA_OP_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "serve", "--bundle", bundle, "--port", str(port),
                             "--workers", str(workers), *(["--reuse-port"] if reuse_port else [])],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


WRK_SCRIPT = r"""
local bodies, n = {}, 0
for line in io.lines(os.getenv("DEDE_BODIES")) do
  local f = io.open(line, "rb"); n = n + 1; bodies[n] = f:read("*a"); f:close()
end
local i = 0
request = function()
  i = i % n + 1
  return wrk.format("POST", "/score", {["Content-Type"] = "image/png"}, bodies[i])
end
done = function(summary, latency, requests)
  local bad = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout
  io.write(string.format("JSON {\"requests\": %d, \"seconds\": %f, \"errors\": %d, \"p50_ms\": %f, "
    .. "\"p95_ms\": %f, \"p99_ms\": %f}\n", summary.requests, summary.duration / 1e6, bad,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency:percentile(99) / 1000))
end
"""


def load_wrk(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict[str, float]:
    """wrk (C, one thread) as the load generator: far less CPU per request than a Python client."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, body in enumerate(bodies[:64]):
            path = Path(tmp) / f"{i}.png"
            path.write_bytes(body)
            paths.append(str(path))
        (Path(tmp) / "bodies.txt").write_text("\n".join(paths))
        (Path(tmp) / "post.lua").write_text(WRK_SCRIPT)
        out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "30s",
                              "-s", str(Path(tmp) / "post.lua"), url], capture_output=True, text=True,
                             env=os.environ | {"DEDE_BODIES": str(Path(tmp) / "bodies.txt")}, timeout=seconds + 60)
    line = next(x for x in out.stdout.splitlines() if x.startswith("JSON "))
    r = json.loads(line[5:])
    return {"images_per_s": r["requests"] / r["seconds"], "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"],
            "p99_ms": r["p99_ms"], "requests": r["requests"], "errors": r["errors"]}


async def load(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker(w: int) -> None:
            nonlocal errors
            i = w
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = await client.post("/score", content=bodies[i % len(bodies)],
                                      headers={"content-type": "image/png"})
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200
                i += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"images_per_s": len(lat) / elapsed, "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99)),
            "requests": len(lat), "errors": errors}


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default="models/demo-cifar10-badencoder")
    p.add_argument("--runs", default="runs/demo-cpu/dede-badencoder", help="training run for PyTorch eager")
    p.add_argument("--seconds", type=float, default=8.0, help="duration of each measurement")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--workers", type=int, default=1, help="server processes (`dede serve --workers`)")
    p.add_argument("--intra-op-threads", type=int, default=0,
                   help="ONNX Runtime threads per server process (DEDE_INTRA_OP_THREADS; 0: ORT's default)")
    p.add_argument("--compare-workers", type=int, default=0,
                   help="also measure a server of this many processes (1 ORT thread each), batching on, at "
                        "concurrency 32, three times with one shared socket and three with SO_REUSEPORT")
    p.add_argument("--out", default="docs/PERFORMANCE.md")
    p.add_argument("--render-only", action="store_true", help="rewrite the report from docs/performance.json")
    a = p.parse_args()
    if a.render_only:
        saved = json.loads(Path(a.out).with_name("performance.json").read_text())
        Path(a.out).write_text(render(saved, saved.get("command", "python benchmarks/bench_service.py")))
        return
    total_start = time.time()
    load_start = os.getloadavg()  # before this benchmark adds its own load
    scorer = Scorer.from_bundle(a.bundle)
    images, source = real_images(scorer.size, 2048)
    bodies = [png(img) for img in images[:512]]
    res: dict[str, object] = {"bundle": a.bundle, "provider": scorer.provider, "batch": a.batch, "images": source,
                              "seconds_each": a.seconds, "cpu_count": os.cpu_count(),
                              "machine": platform.processor() or platform.machine(),
                              "workers": a.workers, "intra_op_threads": a.intra_op_threads,
                              "compare_workers": a.compare_workers}
    print("raw ONNX Runtime throughput ...")
    raw_runs = [raw_measure(a.bundle, images, a.batch, a.seconds)]
    res["raw_ort_batch1"] = raw_measure(a.bundle, images, 1, a.seconds / 2)
    print("PyTorch eager throughput ...")
    eager_device = "cuda" if scorer.on_gpu else "cpu"  # the device ONNX Runtime runs on
    res["torch_eager_device"] = eager_device
    res["torch_eager"] = torch_throughput(a.runs, images, a.batch, a.seconds, device=eager_device)
    http: dict[str, dict[str, dict[str, float]]] = {}
    modes = [("batching on", True, a.workers, a.intra_op_threads, False, a.concurrency),
             ("batching off", False, a.workers, a.intra_op_threads, False, a.concurrency)]
    # a multi-process server beside it, started three times per listening mode: how the kernel spreads the
    # keep-alive connections over the processes changes from start to start, and the throughput with it
    modes += [(f"{MULTI} ({a.compare_workers}, 1 ORT thread each, {SOCKETS[reuse]}), start {i + 1}", True,
               a.compare_workers, 1, reuse, [32])
              for reuse in (False, True) for i in range(3 if a.compare_workers else 0)]
    for key, batching, workers, threads, reuse, levels in modes:
        proc, url = start_server(a.bundle, batching, workers, threads, reuse)
        try:
            http[key] = {}
            for c in levels:
                print(f"HTTP {key}, concurrency {c} ...")
                cpu = process_cpu_s(proc.pid)
                split: list[int] = []
                sampler = threading.Timer(a.seconds / 2, _sample_connections, (split, url))
                sampler.start()  # halfway through the load: which server process holds how many connections
                row = (load_wrk(url, bodies, c, a.seconds) if shutil.which("wrk")
                       else asyncio.run(load(url, bodies, c, a.seconds)))
                sampler.join()
                row["server_cpu_ms_per_image"] = 1000 * (process_cpu_s(proc.pid) - cpu) / max(row["requests"], 1)
                if workers > 1:
                    row["connections_per_process"] = split  # type: ignore[assignment]
                http[key][str(c)] = row
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    res["http"] = http
    print("raw ONNX Runtime throughput, again ...")
    raw_runs.append(raw_measure(a.bundle, images, a.batch, a.seconds))
    # the ceiling: the better of the two raw runs (before and after the HTTP runs), so that load from other
    # processes during one of them cannot lower the ceiling and flatter the service
    res["raw_ort_runs"] = raw_runs
    res["raw_ort"] = max(r["images_per_s"] for r in raw_runs)
    res["load_generator"] = "wrk (1 thread)" if shutil.which("wrk") else "httpx (Python, asyncio)"
    from training.evaluation.evaluate import hardware

    res["hardware"] = hardware()
    res["onnxruntime"] = ort.__version__
    res["load_avg_start"], res["load_avg_end"] = list(load_start), list(os.getloadavg())
    res["wall_s"] = round(time.time() - total_start, 1)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/bench_service.py", *sys.argv[1:]])
    res["command"] = command
    out.with_name("performance.json").write_text(json.dumps(res, indent=1))
    out.write_text(render(res, command))
    print(out.read_text())


def render(res: dict, command: str) -> str:  # type: ignore[type-arg]
    """docs/PERFORMANCE.md: this run, where the time goes, the GPU runs (``docs/performance-gpu.json``, a run of
    this command on a GPU machine, and ``docs/gpu_check.json``) and the mask variance."""
    lines = ["# Performance", "", *render_run(res, command), *PROFILE_NOTES]
    gpu_run = ROOT / "docs" / "performance-gpu.json"
    gpu_check = gpu_section(ROOT / "docs" / "gpu_check.json")
    if gpu_run.exists() or gpu_check:
        lines += ["## GPU", ""]
    if gpu_run.exists():
        g = json.loads(gpu_run.read_text())
        lines += ["### The service end to end", "", *render_run(g, g["command"])]
    earlier = sorted((ROOT / "docs").glob("performance-gpu-*.json"))  # earlier GPU runs, each with its note
    for path in earlier:
        v = json.loads(path.read_text())
        lines += [f"### {v.get('title', path.stem)}", "", v.get("note", ""), "", *render_run(v, v["command"])]
    if earlier:
        lines += FIXED_BATCH_NOTES
    lines += gpu_check
    variance = ROOT / "docs" / "mask_variance.json"
    if variance.exists():
        lines += variance_section(json.loads(variance.read_text()))
    return "\n".join(lines)


def render_run(res: dict, command: str) -> list[str]:  # type: ignore[type-arg]
    """One run of this command: hardware, (a) raw model, (c) eager, the HTTP table (b), the goals' ratios."""
    raw = res["raw_ort"]
    http = res["http"]
    on32 = http["batching on"].get("32", {}).get("images_per_s")
    off32 = http["batching off"].get("32", {}).get("images_per_s")
    eager = res["torch_eager"]
    # runs before this field existed measured eager on the CPU whatever the provider
    eager_device = res.get("torch_eager_device", "cpu")
    ort_device = "cuda" if res["provider"] in GPU_PROVIDERS else "cpu"
    from training.evaluation.evaluate import hardware

    runs = res.get("raw_ort_runs", [])
    load = res.get("load_avg_start")
    lines = [f"Generated by `{command}` on {res.get('hardware') or hardware()}; provider {res['provider']}"
             + (f" (onnxruntime {res['onnxruntime']})" if res.get("onnxruntime") else "") + "; each "
             f"measurement {res['seconds_each']} s; whole run {res['wall_s']} s. Load generator: "
             f"{res['load_generator']}, on the same machine: it shares the cores with the server, so HTTP numbers are "
             "a lower bound." + (f" Images: {res['images']}, one PNG per request." if res.get("images") else ""), "",
             f"Server: `dede serve --workers {res.get('workers', 1)}` with `DEDE_INTRA_OP_THREADS="
             f"{res.get('intra_op_threads', 0)}` (0: ONNX Runtime's default, one thread per core); every worker "
             "process has its own batcher and model session.", ""]
    if load:
        lines += [f"Load average (1/5/15 min) before the run: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; "
                  f"after: {res['load_avg_end'][0]:.2f}. The machine is shared: other processes' load lowers every "
                  "number here, and the HTTP rows (more threads than the raw loop) are hit differently from the raw "
                  "model, so ratios from a loaded run are noisy. The CPU columns (CPU time per image, all threads of "
                  "the process) are far less sensitive to that load than the rates.", ""]
    lines.append(f"- (a) raw ONNX Runtime, batch {res['batch']}: **{raw:.0f} images/s** (the ceiling"
                 + (": the better of two runs, before and after the HTTP rows, "
                    + " and ".join(f"{r['images_per_s']:.0f}" for r in runs)
                    + f"; {min(r['cpu_ms_per_image'] for r in runs):.2f} CPU ms per image)" if runs else ")"))
    one = res.get("raw_ort_batch1")
    if one and runs:
        gain = one["cpu_ms_per_image"] / min(r["cpu_ms_per_image"] for r in runs)
        lines.append(f"- raw ONNX Runtime, batch 1: {one['images_per_s']:.0f} images/s, {one['cpu_ms_per_image']:.2f} "
                     f"CPU ms per image: {gain:.2f} x the CPU per image of batch {res['batch']}, what batching can "
                     "save at most once the cores are busy")
    lines += [f"- (c) PyTorch eager on {eager_device.upper()}, same models and batch: "
              + (f"**{eager:.0f} images/s**" if eager else "not measured in this run (it needs the bundle's training "
                 "run directory, from `make demo`, which this machine does not have)"), "",
              "| batching | concurrency | images/s | p50 ms | p95 ms | p99 ms | errors | server CPU ms / image |",
              "|---|---|---|---|---|---|---|---|"]
    for key, rows in http.items():
        for c, r in rows.items():
            cpu = r.get("server_cpu_ms_per_image")
            lines.append(f"| {key} | {c} | {r['images_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                         f"{r['p99_ms']:.1f} | {r['errors']} | {f'{cpu:.2f}' if cpu else '-'} |")
    lines += ["", "Goals (ratios from this one run):", ""]
    if on32:
        lines.append(f"- service with batching at concurrency 32 / raw model: {_ratio(on32 / raw)} "
                     f"({'met' if on32 / raw >= 0.7 else 'missed'}: >= 0.70)")
    if on32 and off32:
        lines.append(f"- batching on / off at concurrency 32: {_ratio(on32 / off32)} "
                     f"({'met' if on32 / off32 >= 2 else 'missed'}: >= 2)")
    if eager and eager_device == ort_device:
        lines.append(f"- ONNX Runtime / PyTorch eager: {_ratio(raw / eager)} "
                     f"({'met' if raw >= eager else 'missed'}: >= 1)")
    elif eager:
        lines.append(f"- ONNX Runtime / PyTorch eager: not compared in this run (ONNX Runtime ran on "
                     f"{ort_device.upper()}, eager on {eager_device.upper()})")
    for sockets in SOCKETS.values():
        multi = [rows["32"] for key, rows in http.items() if key.startswith(MULTI) and sockets in key]
        if multi:
            lines.append(
                f"- {res['compare_workers']} server processes (1 ORT thread each, {sockets}) / raw model, batching "
                "on at concurrency 32, three server starts: "
                + ", ".join(f"{_ratio(m['images_per_s'] / raw)}"
                            + (f" (connections per process: {' / '.join(map(str, m['connections_per_process']))})"
                               if m.get("connections_per_process") else "") for m in multi)
                + f"; the first goal (>= 0.70) met in {sum(m['images_per_s'] / raw >= 0.7 for m in multi)} of "
                f"{len(multi)} starts")
    if any(key.startswith(MULTI) for key in http):
        lines.append("  (not goals: one event loop parses every request of a process, so more processes can use more "
                     "of the CPU; a keep-alive connection stays with the process that accepted it: with one shared "
                     "socket, whichever process is awake first; with `dede serve --reuse-port`, one socket per "
                     "process and the kernel hashes each new connection to one. The split is what `ss` counted "
                     "halfway through each measurement.)")
    cpu32 = http["batching on"].get("32", {}).get("server_cpu_ms_per_image")
    if cpu32 and runs:
        raw_cpu = min(r["cpu_ms_per_image"] for r in runs)
        lines.append(f"- CPU per image, raw model / service with batching at concurrency 32: {raw_cpu / cpu32:.2f} "
                     "(not a goal: the share of the service's CPU that is the model itself; the rest is HTTP, "
                     "decoding and the batcher)")
    lines.append("")
    return lines


def variance_section(v: dict) -> list[str]:  # type: ignore[type-arg]
    k = v["k"]
    return ["## Score variance from the test mask", "",
            f"Measured by `{v['command']}` (bundle from `make mask-variance`: the demo's backdoored encoder "
            f"with a `study`-preset detector whose test mask keeps {v['kept_patches']} of 64 patches; "
            f"{v['images']} CIFAR-10 test images and their triggered copies, {v['draws']} masks each).", "",
            "| masks per score | per-image coefficient of variation | AUC clean vs triggered (mean +- std "
            "over mask draws) |", "|---|---|---|",
            f"| 1 | {v['cv_one_mask']:.3f} | {v['auc_one_mask_mean']:.4f} +- {v['auc_one_mask_std']:.4f} |",
            f"| {k} (`DEDE_MASK_DRAWS={k}`) | {v[f'cv_{k}_masks']:.3f} | {v[f'auc_{k}_masks_mean']:.4f} +- "
            f"{v[f'auc_{k}_masks_std']:.4f} |", "",
            "Masks are seeded by the image's pixels, so either way the same image always gets the same score; "
            "averaging makes the score depend less on which patches happen to be kept. The demo bundle "
            "(32 px, test mask 0.99) keeps no patch and has no mask variance at all.", ""]


FIXED_BATCH_NOTES = [
    "With CUDA, ONNX Runtime ran a batch whose size differed from the previous call's far slower than one of the "
    "same size, and spent that time on the CPU (the server CPU column of the last table). The batcher's batches "
    "come in every size up to `max_batch_size`, so under concurrent load nearly every call paid it. Since then the "
    "service, on the GPU, runs every model call at `max_batch_size` images (`DEDE_GPU_FIXED_BATCH`, on by default): "
    "batches are padded with black images whose rows are dropped, larger requests run in chunks, and start-up runs "
    "that one shape once. On the CPU padding would only cost work, so it stays off there. Compare the batching-on "
    "rows of the last two tables (two runs with the same load generator on the same machine type, not side by side "
    "in one run).",
    "",
    "In the first GPU table (wrk) the batching-on rate stops growing between concurrency 32 and 64 while the raw "
    "model is far faster: one server process, its event loop parsing HTTP and decoding every PNG, is the limit "
    "there, not the GPU (`dede serve --workers N --reuse-port` runs more processes; not measured on the GPU). With "
    "the Python load generator the rates even fall as concurrency grows: that client was the limit of those runs.",
    "",
]


PROFILE_NOTES = [
    "## Where the time goes", "",
    "Profiled with py-spy (`py-spy record --threads --nonblocking -f raw`) on `dede serve` under the wrk load "
    "above, and measured as CPU per request of the server process with a model that costs nothing (the real "
    "app with `Scorer.score` replaced by a stub), which isolates the HTTP path. With the demo bundle the model "
    "is most of the CPU (the worker thread in `run_with_iobinding`); the rest was, per request:", "",
    "- a thread round trip for every plain-`def` FastAPI dependency (FastAPI runs them in the thread pool): "
    "five dependencies per `/score` call. Now one `async def` dependency resolves the API key, readiness and "
    "everything a scoring request needs;",
    "- a thread round trip to decode a 32 x 32 PNG that takes less time to decode than to hand over. Images of "
    "at most 128 x 128 pixels (known from the header, after the pixel-limit check, never from the byte size) "
    "are now decoded on the event loop; larger ones still go to worker threads;",
    "- FastAPI validating and re-encoding the pydantic response; the routes now return pydantic's own JSON "
    "(`response_model` still documents it);",
    "- an `asyncio.wait_for` task per request in the batcher (replaced by a timer on the request's future), "
    "the router order (FastAPI matches included routers in order, with a cost per router: scoring first), "
    "and Prometheus `labels()` lookups (cached per model).", "",
    "These changes were found and checked with a model-free A/B run of the server while developing them; that "
    "profile is not regenerated by this command, so its numbers are not quoted here. What remains is uvicorn "
    "and Starlette/FastAPI's own per-request machinery, PNG decoding and the access log.", "",
    "Batching on / off is bounded by the model, not by HTTP: once the cores are busy, batching can save at most "
    "the model's CPU per image at batch 1 over that at the benchmark's batch (the raw batch-1 line above), "
    "and savings on the HTTP path make both modes cheaper. "
    "What batching off loses beyond that comes from its concurrent model calls (one thread each, on two "
    "cores). Under load from other processes, batching off (dozens of runnable threads) also gets a larger "
    "share of the CPU than batching on (a few), which lowers this ratio further.",
    "",
]


def gpu_section(path: Path) -> list[str]:
    """The latest ``benchmarks/gpu_check.py`` result, when one was copied to ``docs/gpu_check.json``."""
    if not path.exists():
        return []
    g = json.loads(path.read_text())
    command = g.get("command", "python benchmarks/gpu_check.py")
    lines = ["### ONNX Runtime and PyTorch per batch size", "",
             f"`{command}` on {g['device'] or 'an unnamed GPU'} (bundle `{g.get('bundle', '?')}`, "
             f"onnxruntime {g['onnxruntime']}, providers {', '.join(g['available_providers'])}; "
             f"whole check {g.get('wall_s', '?')} s):", ""]
    measured: dict[str, dict[str, float] | None] = {}
    for key, label in (("ort_cuda", "ONNX Runtime, CUDA (IO binding)"), ("ort_cpu", "ONNX Runtime, that host's CPU"),
                       ("torch_eager_cuda", "PyTorch eager, CUDA")):
        part = g.get(key) or {}
        measured[key] = part.get("images_per_s")
        if "images_per_s" in part:
            rates = ", ".join(f"batch {b}: {v:.0f}" for b, v in part["images_per_s"].items() if v)
            lines.append(f"- {label}: {rates} images/s")
        else:
            lines.append(f"- {label}: not measured ({part.get('skipped', 'no result')})")
    cpu = measured["ort_cpu"]
    for key, label in (("ort_cuda", "ONNX Runtime on CUDA"), ("torch_eager_cuda", "PyTorch eager on CUDA")):
        gpu = measured[key]
        if gpu and cpu:
            b = max(gpu, key=int)
            lines.append(f"- {label} / ONNX Runtime on that host's CPU, same run, batch {b}: {gpu[b] / cpu[b]:.1f}x")
    ort_gpu, eager_gpu = measured["ort_cuda"], measured["torch_eager_cuda"]
    if ort_gpu and eager_gpu:
        lines.append("- ONNX Runtime on CUDA / PyTorch eager on CUDA, same run: " + ", ".join(
            f"batch {b}: {_ratio(ort_gpu[b] / eager_gpu[b])}" for b in ort_gpu if ort_gpu[b] and eager_gpu.get(b)))
    same = g.get("cuda_vs_cpu")
    if same:
        lines.append(f"- the same {same['images']} images ({same['source']}) scored on CUDA and on the CPU: largest "
                     f"score difference {same['max_abs_diff']:.3g} ({same['max_rel_diff']:.2g} of the score)"
                     + (f", {same['flags_differ']} backdoor flags differ" if "flags_differ" in same else ""))
    return [*lines, ""]


if __name__ == "__main__":
    main()
