"""prepare's peak memory as N grows, run as a user runs it (``dvc repro -s --force prepare``).

bench_scale.py times the whole pipeline at each N (an hour at 24K); this one re-measures only the
stage whose memory was not flat (issue 17: +37% from 8K to 24K), cheaply and side by side with an
older version of the code:

1. one synthetic ingest at the largest N (``--max-width`` px images: the parent's memory follows
   the number of images, not their pixels; the workers' decode buffers follow the pixels);
2. for each N, ``data/raw`` becomes the first N metadata rows and their images (hard links), and
   ``dvc repro -s --force prepare`` runs under ``os.wait4``: ru_maxrss is the largest process of
   the tree (dvc, the stage, one pool worker), plus the tree's summed PSS sampled every second;
3. with ``--baseline REV``, the same runs with ``src/`` of that git revision first on PYTHONPATH
   (the working tree's own runs put the copy's ``src/`` there: an editable install would otherwise
   import whatever /work tree it was installed from, edits in progress included).

``--raw DIR`` reuses a raw folder (an earlier ingest's ``data/raw``) instead of ingesting.

Target (issue 17): peak RSS flat within +-20% from the second-largest to the largest N.

    .venv/bin/python benchmarks/bench_prepare_memory.py [--sizes 2000,8000,24000] [--max-width 400]
        [--baseline REV] [--raw DIR] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_scale import DVC, REPO, RESULTS, RSS_DRIFT, base_env, make_repo, md_table, measured_run


def subset_raw(full: Path, raw: Path, n: int) -> int:
    """``raw`` = the first ``n`` rows of ``full``'s metadata.csv with their images (hard links)."""
    shutil.rmtree(raw, ignore_errors=True)
    (raw / "images").mkdir(parents=True)
    for item in full.iterdir():
        if item.name not in ("images", "metadata.csv"):
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, raw / item.name)
    names = {p.name.rsplit(".", 1)[0]: p.name for p in (full / "images").iterdir()}
    with open(full / "metadata.csv", newline="") as src, open(raw / "metadata.csv", "w", newline="") as dst:
        reader = csv.DictReader(src)
        writer = csv.DictWriter(dst, fieldnames=reader.fieldnames or [])
        writer.writeheader()
        for i, row in enumerate(reader):
            if i == n:
                break
            writer.writerow(row)
            if row["isic_id"] in names:
                os.link(full / "images" / names[row["isic_id"]], raw / "images" / names[row["isic_id"]])
    return n


def measure(
    repo: Path, full: Path, sizes: list[int], env: dict[str, str], logs: Path, tag: str
) -> list[dict]:
    rows = []
    for n in sizes:
        subset_raw(full, repo / "data" / "raw", n)
        m = measured_run(
            [DVC, "repro", "-s", "--force", "prepare"], repo, env, logs / f"prepare-{tag}-{n}.log"
        )
        rows.append(
            {"code": tag, "n": n, "wall_s": m.wall_s, "maxrss_mb": m.maxrss_mb, "tree_pss_mb": m.tree_mb}
        )
        print(
            f"  {tag:10} N={n:<6} {m.wall_s:6.1f} s  peak RSS {m.maxrss_mb:5.0f} MB  tree PSS {m.tree_mb:5.0f} MB"
        )
    return rows


def drift(rows: list[dict], tag: str) -> tuple[float, str]:
    a, b = [r for r in rows if r["code"] == tag][-2:]
    d = b["maxrss_mb"] / a["maxrss_mb"] - 1
    verdict = "PASS" if abs(d) <= RSS_DRIFT else "FAIL"
    return (
        d,
        f"{verdict} {tag}: N={a['n']} {a['maxrss_mb']:.0f} MB -> N={b['n']} {b['maxrss_mb']:.0f} MB ({d:+.0%})",
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,8000,24000")
    ap.add_argument("--max-width", type=int, default=400, help="synthetic image width cap (px)")
    ap.add_argument("--baseline", default=None, help="a git revision to measure side by side")
    ap.add_argument("--raw", type=Path, default=None, help="an existing raw folder to use (no ingest)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    args.epochs = 1  # make_repo's params; only ingest and prepare run here
    env = base_env()
    root = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        logs = root / "logs"
        logs.mkdir()
        repo = make_repo(root, sizes[-1], args, env)
        full = root / "full_raw"
        if args.raw:
            shutil.copytree(args.raw, full, copy_function=os.link)
        else:
            print(f"ingest: {sizes[-1]} synthetic images (max width {args.max_width} px) ...")
            measured_run([DVC, "repro", "-s", "ingest"], repo, env, logs / "ingest.log")
            (repo / "data" / "raw").rename(full)
        rows = measure(repo, full, sizes, env | {"PYTHONPATH": str(repo / "src")}, logs, "this")
        tags = ["this"]
        if args.baseline:
            old = root / "baseline"
            old.mkdir()
            archive = subprocess.run(
                ["git", "archive", args.baseline, "src"], cwd=REPO, capture_output=True, check=True
            )
            subprocess.run(["tar", "x", "-C", str(old)], input=archive.stdout, check=True)
            rows += measure(repo, full, sizes, env | {"PYTHONPATH": str(old / "src")}, logs, args.baseline)
            tags.append(args.baseline)
        verdicts = [drift(rows, t)[1] for t in tags]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for v in verdicts:
        print(v)
    command = "benchmarks/bench_prepare_memory.py " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prepare_memory.json").write_text(
        json.dumps(
            {"command": command, "cpu_count": os.cpu_count(), "rows": rows, "verdicts": verdicts}, indent=2
        )
        + "\n"
    )
    table = md_table(
        ["code", "N", "wall s", "peak RSS MB", "tree PSS MB"],
        [
            [r["code"], str(r["n"]), f"{r['wall_s']:.1f}", f"{r['maxrss_mb']:.0f}", f"{r['tree_pss_mb']:.0f}"]
            for r in rows
        ],
    )
    (args.out / "prepare_memory.md").write_text(
        f"# prepare's peak memory vs N\n\n`{command}`\n\n{table}\n\n"
        + "\n".join(f"- {v}" for v in verdicts)
        + "\n"
    )
    return 0 if all(v.startswith("PASS") for v in verdicts[:1]) else 1


if __name__ == "__main__":
    sys.exit(main())
