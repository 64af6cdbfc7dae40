"""Latency and throughput of the app's ``POST /predict`` for each model kind, over loopback HTTP.

For each of ``models/{baseline,cnn,transfer}`` (the pipeline's trained folders, 100 px by default) it
starts ``melanoma serve --model-dir`` on a free 127.0.0.1 port and measures, with real JPEG uploads
(the ingest images when present: decode + EXIF + resize are part of every request):

1. one client, requests one after another: per-image latency p50/p99 (the issue's target:
   CNN p50 <= 50 ms on 2 cores), printed as a ratio to the target;
2. ``--clients`` concurrent clients for ``--seconds``: p50/p99 and requests per second.

Other processes' CPU use during each pass is recorded (see loadmeter.py): a verdict drawn from a
busy pass says "not clean".

    .venv/bin/python benchmarks/bench_serve.py                    # ~3 min on 2 cores
    .venv/bin/python benchmarks/bench_serve.py --kinds cnn --seconds 10
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

from loadmeter import fmt_load, verdict

REPO = Path(__file__).resolve().parents[1]
TARGET_P50_MS = 50.0


@dataclass
class Pass:
    latencies_s: list[float]
    errors: int
    seconds: float
    foreign_cores: float | None = None

    def ms(self, q: float) -> float:
        return (
            float(np.percentile(np.asarray(self.latencies_s) * 1000, q)) if self.latencies_s else float("nan")
        )

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uploads(n: int) -> list[bytes]:
    """Real ingest JPEGs when there are some, else synthetic 1024x768 lesion-like JPEGs."""
    found = sorted((REPO / "data/raw/images").glob("*.jpg"))[:n]
    if found:
        return [p.read_bytes() for p in found]
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        arr = np.clip(rng.normal((200, 160, 140), 12, (768, 1024, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class ServerProcess:
    """``melanoma serve --model-dir`` in a subprocess."""

    def __init__(self, model_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
        cmd = [
            sys.executable,
            "-m",
            "melanoma",
            "serve",
            "--model-dir",
            str(model_dir),
            "--port",
            str(self.port),
        ]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close(); not a pipe, which could fill and stall the server
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"serve exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        raise RuntimeError(f"{self.url} not up")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def cpu_busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)


def own_cpu(*pids: int) -> float:
    total = 0.0
    for pid in pids:
        with_children = psutil.Process(pid)
        ct = with_children.cpu_times()
        total += ct.user + ct.system
    return total


def run_pass(
    url: str, images: list[bytes], clients: int, seconds: float | None, n: int | None, pid: int
) -> Pass:
    """``clients`` threads posting images round-robin, for ``seconds`` or ``n`` requests in total."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(10**9))
    t_end = time.monotonic() + seconds if seconds else None

    def client() -> None:
        with requests.Session() as s:
            while True:
                i = next(counter)
                if (n is not None and i >= n) or (t_end is not None and time.monotonic() >= t_end):
                    return
                data = images[i % len(images)]
                t0 = time.perf_counter()
                try:
                    ok = s.post(
                        f"{url}/predict", data=data, headers={"Content-Type": "image/jpeg"}, timeout=60
                    ).ok
                except requests.RequestException:
                    ok = False
                dt = time.perf_counter() - t0
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        errors[0] += 1

    busy0, own0, t0 = cpu_busy(), own_cpu(pid, os.getpid()), time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    foreign = max(0.0, (cpu_busy() - busy0) - (own_cpu(pid, os.getpid()) - own0)) / wall
    return Pass(latencies, errors[0], wall, foreign)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=["baseline", "cnn", "transfer"])
    ap.add_argument("--models", type=Path, default=REPO / "models", help="folder with <kind>/model.json")
    ap.add_argument("--seq-n", type=int, default=200, help="sequential requests (one client)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    images = uploads(50)
    sizes = [Image.open(io.BytesIO(b)).size for b in images[:5]]
    print(f"{len(images)} JPEG uploads (e.g. {sizes[0][0]}x{sizes[0][1]}), {os.cpu_count()} cores")
    rows = {}
    for kind in args.kinds:
        model_dir = args.models / kind
        if not (model_dir / "model.json").is_file():
            print(f"{kind}: no {model_dir}/model.json (run `dvc repro` or `dvc pull` first); skipped")
            continue
        server = ServerProcess(model_dir)
        try:
            info = requests.get(f"{server.url}/model", timeout=30).json()
            run_pass(server.url, images, 1, None, 20, server.proc.pid)  # warm-up
            seq = run_pass(server.url, images, 1, None, args.seq_n, server.proc.pid)
            load = run_pass(server.url, images, args.clients, args.seconds, None, server.proc.pid)
        finally:
            server.close()
        rows[kind] = {
            "image_size": info["image_size"],
            "sequential": {"p50_ms": seq.ms(50), "p99_ms": seq.ms(99), "rps": seq.rps, "errors": seq.errors},
            "concurrent": {
                "clients": args.clients, "seconds": args.seconds, "p50_ms": load.ms(50), "p99_ms": load.ms(99),
                "rps": load.rps, "requests": len(load.latencies_s), "errors": load.errors,
            },
            "other_load_cores": [seq.foreign_cores, load.foreign_cores],
        }  # fmt: skip
        print(
            f"{kind:9s} {info['image_size']}px | 1 client: p50 {seq.ms(50):6.1f} ms  p99 {seq.ms(99):6.1f} ms  "
            f"{seq.rps:5.1f} req/s | {args.clients} clients x {args.seconds:.0f} s: p50 {load.ms(50):6.1f} ms  "
            f"p99 {load.ms(99):6.1f} ms  {load.rps:5.1f} req/s  errors {seq.errors + load.errors} | "
            f"other load {fmt_load(seq)}/{fmt_load(load)} cores"
        )
        if kind == "cnn":
            ratio = seq.ms(50) / TARGET_P50_MS
            print(f"  CNN p50 / 50 ms target = {ratio:.2f}: {verdict(ratio <= 1.0, seq)}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["sequential"]["errors"] + r["concurrent"]["errors"] == 0 for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
