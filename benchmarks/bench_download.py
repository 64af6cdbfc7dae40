"""Benchmark the ISIC downloader against the local fake API (tests/fakes/isic_server.py) with latency.

The fake runs in its own process on 127.0.0.1 and adds ``--latency`` (default 50 ms) to every request,
like a distant server; its images are small, so the time is dominated by round trips, which is what
concurrency is for. Three runs of ``melanoma.sources.isic.download_isic``, each into a fresh folder
unless resuming:

* first run      concurrency 1, ``--n`` images (default 200) into folder A;
* concurrent     concurrency 16 into folder B;
* resume         concurrency 16 on folder A again (everything is already complete).

Targets (ratios from the same run; absolute figures are context only):

* throughput (images/s of the download phase, ``seconds_download`` as returned by ``download_isic``;
  timings are logged and returned, never written to ``ingest_report.json``) at concurrency 16
  >= 10x concurrency 1;
* the resume moves 0 image bytes (the fake's own byte counter) and takes < 5 % of the first run's
  wall time. Its floor is the API round trips a resume still needs (preflight, one per listing page
  of 100, the licence files: about 4 x latency here), so it is also printed against the concurrent
  run for context.

    .venv/bin/python benchmarks/bench_download.py [--n 200] [--latency 0.05] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
FAKE = ROOT / "tests" / "fakes" / "isic_server.py"
try:
    from melanoma.config import IsicParams
    from melanoma.sources.isic import download_isic
except ImportError:  # not installed into the interpreter: use the source tree
    sys.path.insert(0, str(ROOT / "src"))
    from melanoma.config import IsicParams
    from melanoma.sources.isic import download_isic

TARGET_SPEEDUP = 10.0  # concurrency 16 vs 1, images/s in the download phase
TARGET_RESUME = 0.05  # resume wall time / first run wall time


@contextlib.contextmanager
def fake_server(n: int, latency: float) -> Any:
    """The fake API in a child process; yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--n-images", str(n), "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        if not base_url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"fake server did not start (said {base_url!r})")
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_stats(base_url: str) -> dict[str, Any]:
    origin = base_url.split("/api/", 1)[0]
    return requests.get(f"{origin}/_fake/stats", timeout=30).json()


def run(base_url: str, out: Path, concurrency: int) -> dict[str, Any]:
    """One download; returns the report plus wall time and the fake's image bytes served."""
    params = IsicParams(base_url=base_url, concurrency=concurrency, backoff_seconds=0.05, retries=3)
    before = server_stats(base_url)["file_bytes"]
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # progress bars
        report = download_isic(out, params)
    wall = time.perf_counter() - start
    report["wall_seconds"] = wall
    report["image_bytes_served"] = server_stats(base_url)["file_bytes"] - before
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images in the fake archive")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with fake_server(args.n, args.latency) as base_url, tempfile.TemporaryDirectory() as tmp:
        print(f"fake ISIC API: {args.n} images, {args.latency * 1000:.0f} ms per request, {base_url}")
        first = run(base_url, Path(tmp) / "a", 1)
        conc = run(base_url, Path(tmp) / "b", 16)
        resume = run(base_url, Path(tmp) / "a", 16)

    def ips(r: dict[str, Any]) -> float:
        return r["n_downloaded"] / r["seconds_download"]

    speedup = ips(conc) / ips(first)
    resume_ratio = resume["wall_seconds"] / first["wall_seconds"]
    resume_vs_conc = resume["wall_seconds"] / conc["wall_seconds"]
    complete = all(r["n_images"] == args.n and not r["failures"] for r in (first, conc, resume))
    ok_speed = speedup >= TARGET_SPEEDUP
    ok_resume = (
        resume["image_bytes_served"] == 0 and resume["n_downloaded"] == 0 and resume_ratio < TARGET_RESUME
    )

    print(f"   {'run':<28}{'wall s':>8}{'download s':>12}{'img/s':>9}{'downloaded':>12}{'MiB':>8}")
    for name, r in (
        ("first run (concurrency 1)", first),
        ("concurrency 16", conc),
        ("resume (concurrency 16)", resume),
    ):
        rate = f"{ips(r):9.1f}" if r["n_downloaded"] else f"{'-':>9}"
        print(
            f"   {name:<28}{r['wall_seconds']:>8.2f}{r['seconds_download']:>12.2f}{rate}"
            f"{r['n_downloaded']:>12}{r['image_bytes_served'] / 2**20:>8.2f}"
        )
    print(
        f"   throughput 16 vs 1           = {speedup:6.2f}x   target >= {TARGET_SPEEDUP:.0f}x   "
        + ("PASS" if ok_speed else "FAIL")
    )
    print(
        f"   resume / first run (wall)    = {resume_ratio:6.1%}    target < {TARGET_RESUME:.0%}, "
        f"0 image bytes (moved {resume['image_bytes_served']})   " + ("PASS" if ok_resume else "FAIL")
    )
    print(
        f"   resume / concurrency-16 run  = {resume_vs_conc:6.1%}    (context: {resume['wall_seconds'] / args.latency:.1f}"
        " x the latency; a resume still makes the preflight, one request per 100 listed, the licences)"
    )
    if not complete:
        print("   WARNING: a run did not complete every image; see the reports")

    result = {
        "n_images": args.n,
        "latency_seconds": args.latency,
        "runs": {
            name: {
                k: r[k]
                for k in (
                    "wall_seconds",
                    "seconds_listing",
                    "seconds_download",
                    "n_downloaded",
                    "n_skipped_complete",
                    "image_bytes_served",
                    "retries",
                    "concurrency",
                )
            }
            for name, r in (("first_c1", first), ("c16", conc), ("resume_c16", resume))
        },
        "throughput_speedup_16_vs_1": speedup,
        "resume_over_first_run": resume_ratio,
        "resume_over_c16_run": resume_vs_conc,
        "pass": {"throughput": ok_speed, "resume": ok_resume, "complete": complete},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if ok_speed and ok_resume and complete else 1


if __name__ == "__main__":
    sys.exit(main())
