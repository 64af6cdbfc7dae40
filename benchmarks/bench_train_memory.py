"""Training's peak RSS, streamed (this tree) vs the in-memory design (an older commit), side by side.

Issue 17's target: training RSS at 24K images <= 0.5x the in-memory design. The in-memory design is
the code before the streaming change (``--baseline-rev``, default ``253ded8^``): the split copied
out of the memory map with NumPy fancy indexing, then into a tensor (``from_tensor_slices``), and
inference in batches of 128. Both trees train the same model on the SAME prepared array and splits
(``--data``: a repository after ``dvc repro``, e.g. the one ``bench_scale.py --keep`` leaves), each
with its own params.yaml at 1 epoch, each in a fresh process run as the stage runs it
(``python -m melanoma train <model>``). Per run: wall seconds and the peak RSS of the process
(``ru_maxrss`` from ``wait4``; the parent is this small script, so nothing is carried over at fork).

    .venv/bin/python benchmarks/bench_train_memory.py --data /path/to/repo [--models cnn transfer]
        [--baseline-rev 253ded8^] [--out benchmarks/results]

Writes ``train_memory.json`` and ``train_memory.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
TARGET = 0.5  # the issue's: streamed peak <= 0.5x the in-memory design's


def scaled_params(tree: Path, dest: Path, epochs: int) -> Path:
    """``tree``'s params.yaml with ``epochs`` training epochs (as bench_scale.py sets them)."""
    params = yaml.safe_load((tree / "params.yaml").read_text())
    params["train"]["epochs"] = epochs
    params["transfer"].update({"head_epochs": epochs, "fine_tune_layers": 0})
    dest.write_text(yaml.safe_dump(params))
    return dest


def run_train(tree: Path, data: Path, model: str, work: Path, epochs: int) -> dict[str, float]:
    """Train ``model`` with ``tree``'s code on ``data``'s prepared array and splits; wall s and peak MB."""
    work.mkdir(parents=True)
    params = scaled_params(tree, work / "params.yaml", epochs)
    env = {
        **os.environ,
        "PYTHONPATH": str(tree / "src"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    cmd = [
        sys.executable, "-m", "melanoma", "--params", str(params), "train", model,
        "--prepared", str(data / "data" / "prepared"), "--splits", str(data / "data" / "splits"),
        "--out", str(work / "models" / model),
    ]  # fmt: skip
    start = time.perf_counter()
    with open(work / "train.log", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        tail = (work / "train.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"train {model} with {tree} failed:\n{tail}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def data_bytes(data: Path) -> dict[str, int]:
    """Images in the array and bytes of the train + val rows (what the in-memory design copies)."""
    import numpy as np
    import pandas as pd

    images = np.load(data / "data" / "prepared" / "images.npy", mmap_mode="r")
    per_image = int(np.prod(images.shape[1:]))
    rows = sum(len(pd.read_csv(data / "data" / "splits" / f"{s}.csv")) for s in ("train", "val"))
    return {
        "n_images": int(len(images)),
        "train_val_images": rows,
        "train_val_mb": round(rows * per_image / 2**20, 1),
    }


def render(result: dict) -> str:
    lines = [
        "# Training peak RSS: streamed vs the in-memory design",
        "",
        f"`{result['command']}`, on {result['data']['n_images']} prepared images "
        f"({result['data']['train_val_images']} train + val rows, {result['data']['train_val_mb']} MB of pixels); "
        f"in-memory design = `{result['baseline_rev']}`, 1 epoch, one process each, 2 cores.",
        "",
        "| model | in-memory peak RSS MB | streamed peak RSS MB | ratio (target <= 0.5) | in-memory wall s | streamed wall s |",
        "|---|---|---|---|---|---|",
    ]
    for model, r in result["models"].items():
        ratio = r["streamed"]["peak_rss_mb"] / r["in_memory"]["peak_rss_mb"]
        lines.append(
            f"| {model} | {r['in_memory']['peak_rss_mb']:.0f} | {r['streamed']['peak_rss_mb']:.0f} | "
            f"{ratio:.2f} {'PASS' if ratio <= TARGET else 'FAIL'} | {r['in_memory']['wall_s']:.0f} | "
            f"{r['streamed']['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--data", type=Path, required=True, help="a repository with data/prepared and data/splits"
    )
    ap.add_argument("--models", nargs="+", default=["cnn", "transfer"])
    ap.add_argument("--baseline-rev", default="253ded8^", help="the in-memory design's commit")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    data = args.data.resolve()
    result: dict = {
        "command": "benchmarks/bench_train_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "baseline_rev": args.baseline_rev,
        "data": data_bytes(data),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-train-mem-") as tmp:
        old = Path(tmp) / "in-memory"
        subprocess.run(["git", "worktree", "add", "-f", "--detach", str(old), args.baseline_rev], cwd=REPO,
                       check=True, capture_output=True)  # fmt: skip
        try:
            for model in args.models:
                r = {}
                for label, tree in (("in_memory", old), ("streamed", REPO)):
                    r[label] = run_train(tree, data, model, Path(tmp) / f"{model}-{label}", args.epochs)
                    print(
                        f"{model:9} {label:10} {r[label]['wall_s']:8.1f} s {r[label]['peak_rss_mb']:8.0f} MB",
                        flush=True,
                    )
                result["models"][model] = r
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=REPO, capture_output=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "train_memory.md").write_text(render(result))
    print(render(result))
    worst = max(
        r["streamed"]["peak_rss_mb"] / r["in_memory"]["peak_rss_mb"] for r in result["models"].values()
    )
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
