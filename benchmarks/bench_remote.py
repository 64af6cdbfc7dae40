"""Benchmark `dvc push` / `dvc pull` against the local S3 server (SeaweedFS on 127.0.0.1).

Two data sets, as the pipeline has them: the raw images (one DVC directory of many small JPEG-sized
files; ``--n`` files of 20-100 KB, random bytes so nothing compresses) and the prepared set (one
``images.npy`` of n x 100 x 100 x 3 uint8 plus an index). Each is pushed to a fresh prefix of the
bucket and pulled back into an empty cache, at each ``--jobs`` value and at DVC's default
(4 x CPU count), in one run; it prints seconds, objects, MB/s and the ratio to the default.

    .venv/bin/python benchmarks/bench_remote.py [--n 2000] [--jobs 4 16 32] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from melanoma import stack

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
}


def sh(*cmd: str, cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, capture_output=True, text=True)


def make_data(repo: Path, n: int, seed: int = 0) -> dict[str, tuple[int, int]]:
    rng = np.random.default_rng(seed)
    raw = repo / "data" / "raw" / "images"
    raw.mkdir(parents=True)
    for i in range(n):
        (raw / f"ISIC_{i:07d}.jpg").write_bytes(rng.bytes(int(rng.integers(20_000, 100_000))))
    prepared = repo / "data" / "prepared"
    prepared.mkdir(parents=True)
    np.save(prepared / "images.npy", rng.integers(0, 256, (n, 100, 100, 3), dtype=np.uint8))
    (prepared / "index.csv").write_text("".join(f"ISIC_{i:07d},0\n" for i in range(n)))
    sizes = {}
    for name in ("raw", "prepared"):
        files = [p for p in (repo / "data" / name).rglob("*") if p.is_file()]
        sizes[name] = (len(files), sum(p.stat().st_size for p in files))
    return sizes


def timed(*cmd: str, cwd: Path) -> float:
    t0 = time.perf_counter()
    sh(*cmd, cwd=cwd)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="raw images (and rows of the prepared array)")
    ap.add_argument(
        "--jobs", type=int, nargs="+", default=[4, 16, 32], help="--jobs values besides the default"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    default_jobs = 4 * (os.cpu_count() or 1)  # DVC's own default for S3
    jobs = [default_jobs] + [j for j in args.jobs if j != default_jobs]

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as tmp:
        root = Path(tmp)
        cfg = stack.StackConfig(root=root / "stack", s3_port=stack.free_port(), mlflow_port=stack.free_port())
        info = stack.start_s3(cfg, ENV, BIN)
        try:
            repo = root / "repo"
            repo.mkdir()
            sh("git", "init", "-q", cwd=repo)
            sh(str(BIN / "dvc"), "init", "-q", cwd=repo)
            (repo / ".dvc" / "config").write_bytes((REPO / ".dvc" / "config").read_bytes())
            for key, value in (
                ("endpointurl", info.s3_endpoint),
                ("access_key_id", info.access_key_id),
                ("secret_access_key", info.secret_access_key),
            ):
                sh(str(BIN / "dvc"), "remote", "modify", "--local", "storage", key, value, cwd=repo)
            sizes = make_data(repo, args.n)
            sh(str(BIN / "dvc"), "add", "-q", "data/raw", "data/prepared", cwd=repo)

            rows = []
            for name in ("raw", "prepared"):
                objects, nbytes = sizes[name]
                for j in jobs:
                    # a fresh prefix per run: every object is really uploaded
                    url = f"s3://{info.dvc_bucket}/bench-{name}-j{j}"
                    sh(str(BIN / "dvc"), "remote", "modify", "--local", "storage", "url", url, cwd=repo)
                    push = timed(str(BIN / "dvc"), "push", "-j", str(j), f"data/{name}.dvc", cwd=repo)
                    kept = root / "kept-cache"
                    shutil.move(repo / ".dvc" / "cache", kept)  # an empty cache, as on a new machine
                    shutil.rmtree(repo / "data" / name)
                    pull = timed(str(BIN / "dvc"), "pull", "-j", str(j), f"data/{name}.dvc", cwd=repo)
                    shutil.rmtree(repo / ".dvc" / "cache")
                    shutil.move(kept, repo / ".dvc" / "cache")
                    rows.append({"data": name, "jobs": j, "objects": objects + 1, "mb": nbytes / 1e6,
                                 "push_s": push, "pull_s": pull})  # fmt: skip
                    print(f"{name:8} jobs {j:3}: push {push:6.2f} s, pull {pull:6.2f} s", flush=True)
        finally:
            stack.down(cfg)

    print(f"\n{'data':8} {'jobs':>5} {'objects':>8} {'MB':>7} {'push s':>7} {'MB/s':>6} {'x dflt':>6} "
          f"{'pull s':>7} {'MB/s':>6} {'x dflt':>6}")  # fmt: skip
    for r in rows:
        base = next(b for b in rows if b["data"] == r["data"] and b["jobs"] == default_jobs)
        print(
            f"{r['data']:8} {r['jobs']:>5} {r['objects']:>8} {r['mb']:>7.1f} {r['push_s']:>7.2f} "
            f"{r['mb'] / r['push_s']:>6.1f} {base['push_s'] / r['push_s']:>6.2f} {r['pull_s']:>7.2f} "
            f"{r['mb'] / r['pull_s']:>6.1f} {base['pull_s'] / r['pull_s']:>6.2f}"
        )
    print(f"(x dflt: speed relative to DVC's default --jobs {default_jobs} = 4 x {os.cpu_count()} CPUs)")
    if args.json:
        args.json.write_text(json.dumps({"default_jobs": default_jobs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
