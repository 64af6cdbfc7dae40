"""Benchmark the ISIC downloader against the local fake API (tests/fakes/isic_server.py) with latency.

Two sections (``--only concurrency,link``; both by default), each against a fake in its own process
on 127.0.0.1 that adds ``--latency`` (default 50 ms) to every request, like a distant server.

**concurrency**: the fake's images are small, so the time is dominated by round trips, which is what
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

**link**: ingest at the link rate. The fake is throttled to ``--bandwidth`` MB/s (default 50; 1 MB =
10^6 bytes) shared by all its connections (a token bucket: 16 concurrent downloads share it as they
would share a real link), with the same latency on every request, listing pages included, and serves
``--link-n`` (default 300) full images of ``--image-mb`` (default 1-4) MB each: valid JPEGs padded with
incompressible bytes. One ``download_isic`` run at ``--link-concurrency`` (default 16, the pipeline's
default) into a fresh folder. Targets:

* throughput of the download phase (``bytes_downloaded / seconds_download``) >= 0.9 x the throttle;
* the listing overlaps the downloads: the first image byte leaves the fake (its ``first_at['file']``)
  before the last listing page has been sent (``last_at['search']``; n/a with one page, <= 100
  images). Also printed: when the client's listing
  loop ended (``seconds_listing``), and the throughput over the whole run (preflight, listing,
  licences) for context.

    .venv/bin/python benchmarks/bench_download.py [--only concurrency,link] [--n 200] [--latency 0.05]
        [--link-n 300] [--bandwidth 50] [--image-mb 1 4] [--link-concurrency 16] [--json OUT]
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
    from melanoma.sources.isic.client import PAGE_SIZE
except ImportError:  # not installed into the interpreter: use the source tree
    sys.path.insert(0, str(ROOT / "src"))
    from melanoma.config import IsicParams
    from melanoma.sources.isic import download_isic
    from melanoma.sources.isic.client import PAGE_SIZE

TARGET_SPEEDUP = 10.0  # concurrency 16 vs 1, images/s in the download phase
TARGET_RESUME = 0.05  # resume wall time / first run wall time
TARGET_LINK = 0.9  # download-phase throughput / the fake's bandwidth throttle
SECTIONS = ("concurrency", "link")
MB = 10**6


@contextlib.contextmanager
def fake_server(n: int, latency: float, *extra: str) -> Any:
    """The fake API in a child process (``extra``: more of its options); yields its base URL."""
    proc = subprocess.Popen(
        [sys.executable, str(FAKE), "--n-images", str(n), "--latency", str(latency), *extra],
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


def concurrency_section(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """Concurrency 16 vs 1 and a resume, on small images: the figures and whether the targets held."""
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
    return result, ok_speed and ok_resume and complete


def link_section(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """Large images through the throttled fake: download throughput / throttle, and the overlap."""
    rate = args.bandwidth * MB
    lo, hi = (round(x * MB) for x in args.image_mb)
    extra = ("--bandwidth", str(rate), "--image-bytes", str(lo), str(hi), "--seed", "1")
    t0 = time.perf_counter()
    with fake_server(args.link_n, args.latency, *extra) as base_url, tempfile.TemporaryDirectory() as tmp:
        ready = time.perf_counter() - t0
        print(
            f"fake ISIC API: {args.link_n} images of {args.image_mb[0]:g}-{args.image_mb[1]:g} MB, "
            f"{args.bandwidth:g} MB/s shared by all connections, {args.latency * 1000:.0f} ms per request "
            f"(started in {ready:.1f}s), {base_url}"
        )
        started_at = time.time()
        report = run(base_url, Path(tmp) / "raw", args.link_concurrency)
        stats = server_stats(base_url)

    nbytes = report["bytes_downloaded"]
    throughput = nbytes / report["seconds_download"]
    ratio = throughput / rate
    whole = nbytes / report["wall_seconds"]
    ideal = nbytes / rate
    first_byte = stats["first_at"].get("file", float("nan")) - started_at
    last_page = stats["last_at"].get("search", float("nan")) - started_at
    listing_loop = report["seconds_listing"]
    pages = stats["requests"].get("search", 0)  # the preflight's count, then the listing pages
    # One listing page (<= 100 images) has nothing to overlap with: the downloads need its rows.
    overlap: bool | None = first_byte < last_page if args.link_n > PAGE_SIZE else None
    complete = (
        report["n_images"] == args.link_n and report["n_downloaded"] == args.link_n and not report["failures"]
    )
    ok = ratio >= TARGET_LINK and overlap is not False and complete

    print(
        f"   {report['n_downloaded']} images, {nbytes / MB:.0f} MB at concurrency {args.link_concurrency}: "
        f"download phase {report['seconds_download']:.2f}s (the link alone needs {ideal:.2f}s), "
        f"whole run {report['wall_seconds']:.2f}s"
    )
    print(
        f"   download throughput          = {throughput / MB:6.1f} MB/s = {ratio:5.3f} x the throttle   "
        f"target >= {TARGET_LINK}   " + ("PASS" if ratio >= TARGET_LINK else "FAIL")
    )
    print(f"   whole-run throughput         = {whole / MB:6.1f} MB/s = {whole / rate:5.3f} x (context)")
    print(
        f"   first image byte at +{first_byte:.2f}s, last of {pages} listing requests at +{last_page:.2f}s, "
        f"listing loop ended at +{listing_loop:.2f}s: "
        + {True: "overlapped   PASS", False: "NOT overlapped   FAIL", None: "one page, n/a"}[overlap]
    )
    if not complete:
        print("   WARNING: the run did not complete every image; see the report")
    result = {
        "n_images": args.link_n,
        "image_mb": list(args.image_mb),
        "bandwidth_bytes_per_second": rate,
        "latency_seconds": args.latency,
        "concurrency": args.link_concurrency,
        "bytes_downloaded": nbytes,
        "seconds_download": report["seconds_download"],
        "seconds_listing": listing_loop,
        "wall_seconds": report["wall_seconds"],
        "throughput_bytes_per_second": throughput,
        "throughput_over_bandwidth": ratio,
        "whole_run_over_bandwidth": whole / rate,
        "first_image_byte_seconds": first_byte,
        "last_listing_page_seconds": last_page,
        "listing_requests": pages,
        "retries": report["retries"],
        "pass": {"throughput": ratio >= TARGET_LINK, "overlap": overlap, "complete": complete},
    }
    return result, ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, of {','.join(SECTIONS)}")
    ap.add_argument("--n", type=int, default=200, help="images in the fake archive (concurrency)")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added to every request")
    ap.add_argument("--link-n", type=int, default=300, help="images in the fake archive (link)")
    ap.add_argument("--bandwidth", type=float, default=50.0, help="the fake's throttle, MB/s (link)")
    ap.add_argument("--image-mb", type=float, nargs=2, default=(1.0, 4.0), metavar=("LO", "HI"),
                    help="full image sizes, MB (link)")  # fmt: skip
    ap.add_argument("--link-concurrency", type=int, default=16, help="downloads at a time (link)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown or not only:
        ap.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}; expected {','.join(SECTIONS)}")
    logging.basicConfig(level=logging.WARNING)

    results: dict[str, Any] = {}
    ok = True
    for name, section in (("concurrency", concurrency_section), ("link", link_section)):
        if name in only:
            print(f"== {name}")
            results[name], passed = section(args)
            ok = ok and passed
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
