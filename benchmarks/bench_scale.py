"""The pipeline at the study's scale: how each stage and each DVC operation grows with N (issue 17).

For each N (default 2000, 8000, 24000) it makes a temporary git copy of this working tree (the files
``git ls-files -co --exclude-standard`` lists, as tests/integration/test_pipeline_e2e.py does), sets
``ingest.synthetic.n_images = N`` (full-size widths unless ``--max-width``) and 1 training epoch, and
runs the REAL pipeline as a user does: ``dvc repro -s --force <stage>``, one process per stage, in
dvc.yaml's order. Per stage it records, from ``os.wait4`` on that process tree:

* wall seconds, CPU seconds (user + sys of dvc and every process it waited for) and the cores used;
* peak RSS: ``ru_maxrss`` = the largest single process of the tree (dvc, the stage, one pool worker),
  plus the peak of the whole tree's summed PSS sampled every second (pool workers together);
* the cores OTHER processes used meanwhile (from /proc/stat), so a figure from a busy machine says so.

Then, on the finished repository: bytes on disk (data/, models/ and .dvc/cache, each inode once),
seconds per epoch of the deep models (from the MLflow run's metric timestamps), and the DVC
operations: ``dvc status`` (nothing changed), 1% new images + ``dvc commit -f ingest``, ``dvc push``
of data/raw to a real local S3 (SeaweedFS on 127.0.0.1, started and stopped per N) and ``dvc pull``
of it into an empty cache and workspace, each beside an anchor: a plain parallel boto3 copy of the
same files (as many threads as DVC's ``jobs`` in .dvc/config).

It prints a table per N, then the growth exponent k (cost ~ N^k, least squares on log-log over the
N measured) of every figure with the PASS/FAIL targets, and an EXTRAPOLATION to the study's 24K
images / 53 GB and to 400K images on a t3.2xlarge (8 vCPU, 32 GB, no GPU). Results go to
benchmarks/results/scale.json and scale.md (``--out``).

Targets: k <= 1.1 for every stage and DVC operation (wall and CPU); peak RSS of prepare and
evaluate@* flat in N (within 20% from the second-largest to the largest N); disk after ``dvc repro`` <= 1.1x
the data (data/ and models/ as a user sees them); ``dvc push``/``pull`` >= 0.5x the plain parallel
copy's throughput.

    .venv/bin/python benchmarks/bench_scale.py [--sizes 2000,8000,24000] [--max-width PX] [--epochs 1]
        [--workdir DIR] [--out benchmarks/results] [--keep]
    .venv/bin/python benchmarks/bench_scale.py --render benchmarks/results/scale.json   # tables again

The synthetic full-size JPEGs (600-2048 px) weigh ~0.25 MB each, a ninth of a real ISIC image: 24K
of them are ~6 GB, which is why byte-bound figures are extrapolated by bytes.

A failed stage stops the run with exit status 2 and the tail of its log; Ctrl-C (or SIGTERM) stops the
running stage's process group, the S3 server and removes the temporary folders (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from loadmeter import HZ, verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from integration.worktree import copy_repo  # noqa: E402  (the end-to-end tests' copy)
from melanoma import stack

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
RESULTS = REPO / "benchmarks" / "results"

# dvc.yaml's stages in the order `dvc repro` runs them
STAGES = [
    "ingest", "prepare", "split", "external",
    "train@baseline", "train@cnn", "train@transfer", "ensemble",
    "evaluate@baseline", "evaluate@cnn", "evaluate@transfer", "evaluate@ensemble",
    "register", "report",
]  # fmt: skip
DEEP = ("cnn", "transfer")
# Figures that grow with the raw images' bytes (decode, render, hash, copy), not their count: they are
# extrapolated by bytes. Everything downstream of prepare sees 100x100 arrays and scales with N.
BYTE_BOUND = {"ingest", "prepare", "dvc commit", "dvc push", "dvc pull", "anchor push", "anchor pull", "disk"}
RSS_FLAT = ("prepare", "evaluate@baseline", "evaluate@cnn", "evaluate@transfer", "evaluate@ensemble")

STUDY_N, STUDY_BYTES = 24_000, 53e9  # the study's ISIC set: ~2.2 MB per full-size image
BIG_N = 400_000
BIG_BYTES = BIG_N * STUDY_BYTES / STUDY_N
T3_VCPUS, T3_RAM_GB = 8, 32  # t3.2xlarge
# Steps that use every core by design, so that 8 vCPUs shorten them: process pools over the images
# (ingest's renderer, prepare, external: `workers: 0`) and TensorFlow's thread pools (training, and the
# deep models' inference in ensemble and evaluate). The rest is serial Python/numpy/scikit-learn
# (the baseline's random forest is parallel, its other three candidates are not). DVC push/pull wait on
# the network, not the cores. A declared list, not the measured cores: on a shared machine those
# read low (the tables print them beside it).
PARALLEL = {
    "ingest", "prepare", "external", "train@cnn", "train@transfer", "ensemble",
    "evaluate@cnn", "evaluate@transfer", "evaluate@ensemble",
}  # fmt: skip

K_MAX, RSS_DRIFT, DISK_MAX, COPY_MIN = 1.1, 0.20, 1.1, 0.5  # the targets

CHECKSUM_ENV = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


class StepFailed(RuntimeError):
    """A stage or DVC operation exited non-zero; carries the tail of its log."""


# --- measuring one process tree ----------------------------------------------------------------------------


@dataclass
class Measure:
    """One process tree's cost: wall and CPU seconds, peak memory, and the other processes' load."""

    wall_s: float
    cpu_s: float
    maxrss_mb: float  # ru_maxrss: the largest single process of the tree
    tree_mb: float  # peak of the tree's summed PSS, sampled every second (0 when too short to sample)
    foreign_cores: float | None  # cores other processes used meanwhile

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def busy_jiffies() -> int | None:
    """Non-idle jiffies of all CPUs, from /proc/stat."""
    with contextlib.suppress(OSError, ValueError), open("/proc/stat") as f:
        name, *vals = f.readline().split()
        v = [int(x) for x in vals[:8]]
        return sum(v) - v[3] - v[4]  # minus idle and iowait
    return None


def _pss_mb(proc: psutil.Process) -> float:
    """A process's proportional set size (shared pages split between their users), else its RSS."""
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    with contextlib.suppress(psutil.Error):
        return proc.memory_info().rss / 2**20
    return 0.0


class TreeSampler(threading.Thread):
    """Samples the summed PSS of a process and its descendants; PSS, not RSS, so forked pool workers'
    shared pages are not counted once per worker."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak_mb = pid, every, 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            self.peak_mb = max(self.peak_mb, sum(_pss_mb(p) for p in procs))


def measured_run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> Measure:
    """Run ``cmd`` as its own process group, its output to ``log``; raise StepFailed on a non-zero exit.

    ``os.wait4`` gives the rusage of the whole tree: DVC waits for the stage, the stage for its
    workers, so their CPU time is folded in and ru_maxrss is the largest of them.
    """
    b0 = busy_jiffies()
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        # own session: an interrupt stops the whole tree (dvc, the stage, its workers) by group id
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    sampler = TreeSampler(proc.pid)
    sampler.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        stop_group(proc)
        raise
    finally:
        sampler.stop.set()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    b1 = busy_jiffies()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise StepFailed(f"`{' '.join(cmd[1:] if cmd[0] == DVC else cmd)}` exited {proc.returncode}:\n{tail}")
    cpu = usage.ru_utime + usage.ru_stime
    foreign = None if None in (b0, b1) else max(0.0, ((b1 - b0) / HZ - cpu) / wall)  # type: ignore[operator]
    return Measure(wall, cpu, usage.ru_maxrss / 1024, sampler.peak_mb, foreign)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group we started, SIGKILL it after 30 s, and reap the leader."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def timed_call(fn: Callable[[], object]) -> Measure:
    """Wall and CPU seconds of an in-process call (the boto3 anchor); memory is not its point."""
    b0, c0, t0 = busy_jiffies(), time.process_time(), time.perf_counter()
    fn()
    wall, cpu, b1 = time.perf_counter() - t0, time.process_time() - c0, busy_jiffies()
    foreign = None if None in (b0, b1) else max(0.0, ((b1 - b0) / HZ - cpu) / wall)  # type: ignore[operator]
    return Measure(wall, cpu, 0.0, 0.0, foreign)


# --- the temporary repository ------------------------------------------------------------------------------


def deep_update(base: dict, extra: dict) -> dict:
    for k, v in extra.items():
        base[k] = deep_update(base.get(k) or {}, v) if isinstance(v, dict) else v
    return base


def scale_params(params: dict, n: int, epochs: int, max_width: int | None) -> dict:
    """params.yaml at N images and ``epochs`` epochs; everything else as a user has it."""
    widths: dict[str, int] = {}
    if max_width:
        low = params.get("ingest", {}).get("synthetic", {}).get("min_width", 600)
        widths = {"min_width": min(low, max_width), "max_width": max_width}
    return deep_update(
        params,
        {
            "ingest": {"synthetic": {"n_images": n, **widths}},
            "external": {"synthetic": widths},
            "train": {"epochs": epochs},
            # no fine-tuning phase: its epochs would be a second, differently priced kind of epoch
            "transfer": {"head_epochs": epochs, "fine_tune_layers": 0},
        },
    )


def base_env() -> dict[str, str]:
    """The environment every command runs in: offline, no telemetry, the repository's own MLflow store."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | CHECKSUM_ENV | {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
        "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost",
    }  # fmt: skip


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    """An unmeasured helper command; raise StepFailed with its output when it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StepFailed(
            f"`{' '.join(cmd)}` exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return proc.stdout


def check_stages(repo: Path) -> None:
    """Fail before running anything when dvc.yaml's stages are not the ones this benchmark times."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    names = {f"{k}@{item}" if item else k for k, v in stages.items() for item in v.get("foreach") or [None]}
    if names != set(STAGES):
        raise StepFailed(
            f"dvc.yaml's stages changed: new {sorted(names - set(STAGES))}, "
            f"gone {sorted(set(STAGES) - names)}; update STAGES"
        )


def make_repo(root: Path, n: int, args: argparse.Namespace, env: dict[str, str]) -> Path:
    """A git copy of the working tree with the scaled params, committed, its DVC state kept inside it."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    copy_repo(repo)
    check_stages(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(scale_params(params, n, args.epochs, args.max_width)))
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        sh(cmd, repo, env)
    # DVC's state and index databases default to /var/tmp/dvc: keep them in the temp dir we remove
    sh([DVC, "config", "--local", "core.site_cache_dir", str(root / "dvc-site-cache")], repo, env)
    return repo


# --- what the finished repository holds --------------------------------------------------------------------


def files_under(path: Path) -> list[Path]:
    """Every file below ``path`` as a user sees it (a symlink to a cache file counts as the file)."""
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def disk_usage(repo: Path) -> dict[str, int]:
    """The outputs' bytes as a user sees them (``data``: data/ and models/, links followed, each file
    once) and what they cost on disk (``total``: data/, models/ and .dvc/cache, each inode once,
    symlinks free), apparent sizes. A hard-linked or symlinked cache costs nothing beyond the data;
    a copied one doubles it.

    Reflinked copies share their blocks but have their own inodes: they would count twice here.
    """
    data_inodes = {
        (st.st_dev, st.st_ino): st.st_size
        for r in ("data", "models")
        for st in map(os.stat, files_under(repo / r))
    }
    physical: dict[tuple[int, int], int] = {}
    for root in ("data", "models", ".dvc/cache"):
        for p in files_under(repo / root):
            st = p.lstat()
            if not p.is_symlink():
                physical[(st.st_dev, st.st_ino)] = st.st_size
    cache = {key: size for key, size in physical.items() if key not in data_inodes}
    return {
        "data": sum(data_inodes.values()),
        "cache_extra": sum(cache.values()),  # cache objects that are not the workspace's own files
        "total": sum(physical.values()),
        "raw_images": sum(p.stat().st_size for p in files_under(repo / "data" / "raw" / "images")),
    }


def dvc_config(repo: Path) -> configparser.ConfigParser:
    """.dvc/config with .dvc/config.local over it (INI; section names like ``'remote "storage"'``)."""
    conf = configparser.ConfigParser()
    conf.read([repo / ".dvc" / "config", repo / ".dvc" / "config.local"])
    return conf


def link_type(repo: Path) -> str:
    """``cache.type`` as configured (DVC's own default when unset)."""
    return dvc_config(repo).get("cache", "type", fallback="reflink,copy (DVC default)").strip('"')


def epoch_seconds(repo: Path, model: str) -> dict[str, float | None]:
    """From the repository's MLflow store (sqlite, no server): the run of ``train@<model>`` and the
    timestamps at which each epoch's metrics were logged.

    ``first``: run start -> epoch 0's metrics (the model build, tf.function tracing, for transfer the
    frozen backbone's feature pass over every image, then one epoch with its validation pass);
    ``steady``: the median gap between consecutive epochs (only with --epochs >= 2);
    ``total``: the stage's own ``train_seconds`` metric (loading, fitting, calibration, saving).
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(repo / "mlflow.db")) as db:
        row = db.execute(
            "SELECT run_uuid, start_time FROM runs WHERE name = ? ORDER BY start_time DESC LIMIT 1",
            (f"train@{model}",),
        ).fetchone()
        if row is None:
            return {"first": None, "steady": None, "total": None}
        run_id, start = row
        stamps = [
            t
            for _, t in db.execute(
                "SELECT step, MIN(timestamp) FROM metrics WHERE run_uuid = ? AND key != 'train_seconds' "
                "GROUP BY step ORDER BY step",
                (run_id,),
            )
        ]
        total = db.execute(
            "SELECT value FROM metrics WHERE run_uuid = ? AND key = 'train_seconds'", (run_id,)
        ).fetchone()
    gaps = [(b - a) / 1000 for a, b in zip(stamps, stamps[1:], strict=False)]
    return {
        "first": (stamps[0] - start) / 1000 if stamps else None,
        "steady": statistics.median(gaps) if gaps else None,
        "total": total[0] if total else None,
    }


# --- DVC operations and the plain-copy anchor ---------------------------------------------------------------


def add_new_images(repo: Path, fraction: float = 0.01) -> int:
    """Copies of ``fraction`` of the raw images, re-encoded (quality - 1) so their hashes differ."""
    from PIL import Image

    images = repo / "data" / "raw" / "images"
    sources = files_under(images)[: max(1, math.ceil(fraction * len(files_under(images))))]
    for i, src in enumerate(sources):
        with Image.open(src) as img:
            img.convert("RGB").save(images / f"ISIC_9{i:06d}.jpg", quality=89)
    return len(sources)


def dvc_jobs(repo: Path) -> int:
    """The default remote's ``jobs`` (what push and pull use), else DVC's default 4 x cores."""
    conf = dvc_config(repo)
    remote = conf.get("core", "remote", fallback="storage")
    return conf.getint(f"'remote \"{remote}\"'", "jobs", fallback=4 * (os.cpu_count() or 1))


def s3_client(info: stack.StackInfo, jobs: int) -> Any:
    import boto3
    import botocore.config

    conf = botocore.config.Config(
        max_pool_connections=jobs,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3", endpoint_url=info.s3_endpoint, aws_access_key_id=info.access_key_id,
        aws_secret_access_key=info.secret_access_key, region_name="us-east-1", config=conf,
    )  # fmt: skip


def anchor_copy(
    info: stack.StackInfo, src: Path, dest: Path, prefix: str, jobs: int
) -> tuple[Measure, Measure]:
    """The plain parallel S3 copy: every file under ``src`` uploaded with ``jobs`` threads, then
    downloaded into ``dest``. One thread per file (no per-file threads of boto3's own), so the
    concurrency is DVC's."""
    from boto3.s3.transfer import TransferConfig

    client, transfer = s3_client(info, jobs), TransferConfig(use_threads=False)
    files = [p.relative_to(src).as_posix() for p in files_under(src)]

    def upload(rel: str) -> None:
        client.upload_file(str(src / rel), info.dvc_bucket, f"{prefix}/{rel}", Config=transfer)

    def download(rel: str) -> None:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        client.download_file(info.dvc_bucket, f"{prefix}/{rel}", str(dest / rel), Config=transfer)

    def each(fn: Callable[[str], None]) -> Callable[[], None]:
        def go() -> None:
            pool = ThreadPoolExecutor(jobs)
            try:
                list(pool.map(fn, files))
            finally:  # on Ctrl-C, drop the queued files instead of copying them all first
                pool.shutdown(cancel_futures=True)

        return go

    return timed_call(each(upload)), timed_call(each(download))


def dvc_operations(repo: Path, root: Path, env: dict[str, str], logs: Path, out: SizeResult) -> None:
    """status, +1% images and commit, push / pull of data/raw against SeaweedFS, and the anchor."""
    out.ops["dvc status"] = measured_run([DVC, "status"], repo, env, logs / "dvc-status.log")
    out.added_images = add_new_images(repo)
    out.ops["dvc commit"] = measured_run([DVC, "commit", "-f", "ingest"], repo, env, logs / "dvc-commit.log")
    raw = repo / "data" / "raw"
    out.copy_bytes = sum(p.stat().st_size for p in files_under(raw))
    jobs = out.jobs = dvc_jobs(repo)

    cfg = stack.StackConfig(root=root / "stack", s3_port=stack.free_port(), mlflow_port=stack.free_port())
    info = stack.start_s3(cfg, env, BIN)
    try:
        for key, value in (
            ("endpointurl", info.s3_endpoint),
            ("access_key_id", info.access_key_id),
            ("secret_access_key", info.secret_access_key),
        ):
            sh([DVC, "remote", "modify", "--local", "storage", key, value], repo, env)
        out.ops["dvc push"] = measured_run([DVC, "push", "ingest"], repo, env, logs / "dvc-push.log")
        anchor_dir = root / "anchor-download"
        out.ops["anchor push"], out.ops["anchor pull"] = anchor_copy(info, raw, anchor_dir, "anchor", jobs)
        shutil.rmtree(anchor_dir)
        # as on a new machine: an empty cache and no data/raw
        shutil.rmtree(repo / ".dvc" / "cache")
        shutil.rmtree(raw)
        out.ops["dvc pull"] = measured_run([DVC, "pull", "ingest"], repo, env, logs / "dvc-pull.log")
    finally:
        stack.down(cfg)


# --- one N -----------------------------------------------------------------------------------------------


@dataclass
class SizeResult:
    """Everything measured at one N."""

    n: int
    raw_files: int = 0
    raw_bytes: int = 0
    stages: dict[str, Measure] = field(default_factory=dict)
    ops: dict[str, Measure] = field(default_factory=dict)
    disk: dict[str, int] = field(default_factory=dict)
    epochs: dict[str, dict[str, float | None]] = field(default_factory=dict)
    added_images: int = 0
    copy_bytes: int = 0  # bytes of data/raw that push, pull and the anchor move
    link_type: str = ""  # the DVC cache's link type in the copied .dvc/config
    total_s: float = 0.0  # this N from start to end: copy, stages, DVC operations, clean-up
    jobs: int = 0

    def figure(self, name: str, what: str) -> float | None:
        """One figure by name: a stage's or an operation's ``wall_s``/``cpu_s``/``maxrss_mb``/``tree_mb``,
        ``disk`` (total bytes), or ``epoch:<model>`` (seconds of the first epoch)."""
        if name == "disk":
            return float(self.disk.get("total", 0)) or None
        if name.startswith("epoch:"):
            return self.epochs.get(name[6:], {}).get("first")
        m = self.stages.get(name) or self.ops.get(name)
        return getattr(m, what) if m else None


def run_size(n: int, args: argparse.Namespace, root: Path, report: Callable[[str], None]) -> SizeResult:
    """The whole pipeline at N, stage by stage, then the repository's bytes and the DVC operations."""
    env = base_env()
    out = SizeResult(n)
    logs = root / "logs"
    logs.mkdir(parents=True)
    repo = make_repo(root, n, args, env)
    for stage in STAGES:
        m = measured_run([DVC, "repro", "-s", "--force", stage], repo, env, logs / f"{stage}.log")
        out.stages[stage] = m
        report(
            f"  N={n:<6} {stage:18} {m.wall_s:8.1f} s wall {m.cpu_s:8.1f} s CPU {m.maxrss_mb:7.0f} MB peak"
        )
    images = files_under(repo / "data" / "raw" / "images")
    out.raw_files, out.raw_bytes = len(images), sum(p.stat().st_size for p in images)
    out.disk, out.link_type = disk_usage(repo), link_type(repo)
    out.epochs = {m: epoch_seconds(repo, m) for m in DEEP}
    dvc_operations(repo, root, env, logs, out)
    for op in ("dvc status", "dvc commit", "dvc push", "anchor push", "dvc pull", "anchor pull"):
        report(f"  N={n:<6} {op:18} {out.ops[op].wall_s:8.1f} s wall")
    return out


# --- growth and extrapolation ------------------------------------------------------------------------------


def basis(r: SizeResult, name: str) -> float:
    """What a figure grows with: the raw bytes for byte-bound figures, else the number of images."""
    key = name.split(":")[0]
    return float(r.raw_bytes if key in BYTE_BOUND else r.n)


def exponent(xs: list[float], ys: list[float]) -> float | None:
    """k of y ~ x^k: the least-squares slope of log y on log x (None with fewer than two points)."""
    pts = [(x, y) for x, y in zip(xs, ys, strict=True) if x > 0 and y and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    lx, ly = np.log([x for x, _ in pts]), np.log([y for _, y in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def figure_names() -> list[tuple[str, str, str]]:
    """(name, attribute, label) of every figure that gets an exponent."""
    rows = []
    for s in STAGES:
        rows += [(s, "wall_s", "wall s"), (s, "cpu_s", "CPU s"), (s, "maxrss_mb", "peak RSS MB")]
        rows += [(s, "tree_mb", "tree PSS MB")]
    for op in ("dvc status", "dvc commit", "dvc push", "dvc pull"):
        rows += [(op, "wall_s", "wall s"), (op, "cpu_s", "CPU s"), (op, "maxrss_mb", "peak RSS MB")]
    rows += [("anchor push", "wall_s", "wall s"), ("anchor pull", "wall_s", "wall s")]
    rows += [("disk", "total", "bytes")] + [(f"epoch:{m}", "first", "first epoch s") for m in DEEP]
    return rows


def growth(results: list[SizeResult]) -> list[dict[str, Any]]:
    """Every figure at every N, with its exponent against its basis (bytes or N)."""
    out = []
    for name, attr, label in figure_names():
        ys = [r.figure(name, attr) for r in results]
        xs = [basis(r, name) for r in results]
        k = exponent(xs, ys)  # type: ignore[arg-type]
        per_n = "bytes" if name.split(":")[0] in BYTE_BOUND else "N"
        out.append({"figure": name, "what": label, "values": ys, "basis": per_n, "k": k, "attr": attr})
    return out


def extrapolate(row: dict[str, Any], results: list[SizeResult]) -> dict[str, Any]:
    """From the largest N measured, scale the figure to the study (24K images / 53 GB) and to 400K images.

    Conservative for costs: exponent max(k, 1), so a fixed start-up cost (that makes k < 1 at small
    N) is not extrapolated as savings; memory keeps its measured k (>= 0). On the t3.2xlarge, the wall
    time of a PARALLEL step is divided by 8 / (this machine's cores); a serial step keeps its wall time
    (same per-core speed assumed).
    """
    last, k = results[-1], row["k"]
    y, x = last.figure(row["figure"], row["attr"]), basis(last, row["figure"])
    if y is None or k is None:
        return {}
    memory = row["attr"] in ("maxrss_mb", "tree_mb")
    k_use = max(k, 0.0) if memory else max(k, 1.0)
    targets = {"study": (STUDY_N, STUDY_BYTES), "big": (BIG_N, BIG_BYTES)}
    here = {t: y * ((b if row["basis"] == "bytes" else n) / x) ** k_use for t, (n, b) in targets.items()}
    if row["figure"] == "disk":
        here = {t: disk_at(last, n, b) for t, (n, b) in targets.items()}
    parallel = row["figure"].replace("epoch:", "train@") in PARALLEL  # an epoch: as its stage
    speedup = T3_VCPUS / (os.cpu_count() or 1) if parallel and row["attr"] in ("wall_s", "first") else 1.0
    return {"k_used": k_use, "parallel": parallel, "here_study": here["study"],
            "t3_study": here["study"] / speedup, "t3_big": here["big"] / speedup}  # fmt: skip


def disk_at(r: SizeResult, n: int, raw_bytes: float) -> float:
    """Disk after ``dvc repro`` at ``n`` images of ``raw_bytes``: the raw images scale by bytes, the rest
    of the data (prepared array, splits, models) by N (an over-estimate for the models, whose size does
    not grow), both times the measured disk / data ratio (what the cache's link type adds)."""
    other = r.disk["data"] - r.disk["raw_images"]
    return (
        r.disk["total"] / r.disk["data"] * (r.disk["raw_images"] * raw_bytes / r.raw_bytes + other * n / r.n)
    )


def verdicts(results: list[SizeResult], rows: list[dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """(target, ok, PASS/FAIL line with the figures behind it)."""
    out: list[tuple[str, bool, str]] = []
    last = results[-1]
    names = STAGES + ["dvc status", "dvc commit", "dvc push", "dvc pull"]
    for r in rows:
        if r["figure"] in names and r["attr"] in ("wall_s", "cpu_s") and r["k"] is not None:
            passes = [x.stages.get(r["figure"]) or x.ops.get(r["figure"]) for x in results]
            ok = r["k"] <= K_MAX
            text = f"k = {r['k']:.2f} (<= {K_MAX})  " + verdict(ok, *[p for p in passes if p])
            out.append((f"growth {r['figure']} {r['what']}", ok, text))
    if len(results) >= 2:
        mid = results[-2]  # memory flat in N: the largest N against the one before it (the 8K -> 24K)
        for s in RSS_FLAT:
            a, b = mid.stages[s].maxrss_mb, last.stages[s].maxrss_mb
            ok = abs(b / a - 1) <= RSS_DRIFT
            text = (
                f"N={mid.n} {a:.0f} MB -> N={last.n} {b:.0f} MB ({b / a - 1:+.0%}, within +-{RSS_DRIFT:.0%})"
            )
            out.append((f"peak RSS {s} flat", ok, ("PASS " if ok else "FAIL ") + text))
    for r in results:
        ratio = r.disk["total"] / r.disk["data"]
        ok = ratio <= DISK_MAX
        text = (
            f"N={r.n}: {r.disk['total'] / 1e6:.0f} MB = {ratio:.2f}x the data "
            f"(<= {DISK_MAX}; cache.type {r.link_type})"
        )
        out.append((f"disk after repro N={r.n}", ok, ("PASS " if ok else "FAIL ") + text))
    for op in ("push", "pull"):
        dvc, anchor = last.ops[f"dvc {op}"], last.ops[f"anchor {op}"]
        ratio = anchor.wall_s / dvc.wall_s
        ok = ratio >= COPY_MIN
        text = f"N={last.n}: dvc {op} at {ratio:.2f}x the plain copy's throughput (>= {COPY_MIN})  "
        out.append((f"dvc {op} vs copy", ok, text + verdict(ok, dvc, anchor)))
    return out


# --- output ------------------------------------------------------------------------------------------------


def text_table(head: list[str], rows: list[list[str]]) -> str:
    """Aligned columns: the first left, the figures right."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def md_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def human_s(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def measure_cells(name: str, m: Measure) -> list[str]:
    return [name, fmt(m.wall_s), fmt(m.cpu_s), fmt(m.cores, ".2f"), fmt(m.maxrss_mb, ".0f"),
            fmt(m.tree_mb, ".0f"), fmt(m.foreign_cores, ".2f")]  # fmt: skip


def steps_table(r: SizeResult) -> tuple[str, list[str], list[list[str]]]:
    """Every stage, the pipeline's sum, then the DVC operations and the anchor (with MB/s of the copies)."""
    head = ["step", "wall s", "CPU s", "cores", "peak RSS MB", "tree PSS MB", "other load"]
    rows = [measure_cells(s, r.stages[s]) for s in STAGES]
    wall, cpu = sum(m.wall_s for m in r.stages.values()), sum(m.cpu_s for m in r.stages.values())
    rows.append(["pipeline (sum)", fmt(wall), fmt(cpu), fmt(cpu / wall, ".2f"), "", "", ""])
    mb = r.copy_bytes / 1e6
    for op in ("dvc status", "dvc commit", "dvc push", "anchor push", "dvc pull", "anchor pull"):
        m = r.ops[op]
        copies = op.endswith(("push", "pull"))
        rows.append(measure_cells(f"{op} ({mb / m.wall_s:.0f} MB/s)" if copies else op, m))
    each = r.raw_bytes / max(r.raw_files, 1) / 1e6
    title = (
        f"N = {r.n}: {r.raw_files} raw images, {r.raw_bytes / 1e6:.0f} MB ({each:.2f} MB each); commit after "
        f"+{r.added_images} images; push/pull {mb:.0f} MB with jobs {r.jobs}; "
        f"this N took {human_s(r.total_s)}"
    )
    return title, head, rows


def disk_table(r: SizeResult) -> tuple[str, list[str], list[list[str]]]:
    d, ws = r.disk, r.disk["data"]
    rows = [
        [label, fmt(d[key] / 1e6, ".0f"), fmt(d[key] / ws, ".2f")]
        for label, key in (
            ("data: data/ + models/ as a user sees them", "data"),
            (".dvc/cache objects beyond those files", "cache_extra"),
            ("disk after dvc repro", "total"),
            ("raw images", "raw_images"),
        )
    ]
    title = f"N = {r.n}: bytes on disk (each inode once; cache.type {r.link_type})"
    return title, ["where", "MB", "x data"], rows


def epochs_table(r: SizeResult) -> tuple[str, list[str], list[list[str]]]:
    head = ["model", "first epoch s", "s/epoch (2nd on)", "train_seconds", "stage wall s"]
    rows = [
        [m, fmt(e["first"]), fmt(e["steady"]), fmt(e["total"]), fmt(r.stages[f"train@{m}"].wall_s)]
        for m, e in r.epochs.items()
    ]
    return f"N = {r.n}: deep models' epochs (MLflow metric timestamps)", head, rows


def growth_table(results: list[SizeResult], rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per step: its wall time (disk: MB, epochs: seconds) at each N and k, k of its CPU time,
    its peak RSS at each N and k, k of the tree's PSS; ``per``: the basis k is fitted against."""
    ns = [r.n for r in results]
    head = [
        "figure",
        "per",
        *[f"N={n}" for n in ns],
        "k",
        "k CPU",
        *[f"RSS MB N={n}" for n in ns],
        "k RSS",
        "k tree",
    ]
    by = {(r["figure"], r["attr"]): r for r in rows}
    out = []
    for name in dict.fromkeys(r["figure"] for r in rows):
        main = by.get((name, "wall_s")) or by.get((name, "total")) or by[(name, "first")]
        scale = 1e6 if main["attr"] == "total" else 1.0
        label = {"total": f"{name} (MB)", "first": f"{name} (first epoch s)"}.get(main["attr"], name)
        cells = [
            label,
            main["basis"],
            *[fmt(v / scale if v else None) for v in main["values"]],
            fmt(main["k"], ".2f"),
        ]
        cpu, rss, tree = (by.get((name, a)) for a in ("cpu_s", "maxrss_mb", "tree_mb"))
        cells.append(fmt(cpu["k"], ".2f") if cpu else "")
        cells += [fmt(v, ".0f") for v in rss["values"]] if rss else [""] * len(ns)
        cells += [fmt(rss["k"], ".2f") if rss else "", fmt(tree["k"], ".2f") if tree else ""]
        out.append(cells)
    return head, out


def show_value(attr: str, v: float) -> str:
    """An extrapolated figure in its unit: memory in GB (flagged past the t3.2xlarge's RAM), bytes, time."""
    if attr == "maxrss_mb":
        return f"{v / 1024:.1f} GB" + (f" > {T3_RAM_GB} GB!" if v / 1024 > T3_RAM_GB else "")
    if attr == "total":
        return f"{v / 1e9:.0f} GB"
    return human_s(v)


def extrapolation_table(
    results: list[SizeResult], rows: list[dict[str, Any]]
) -> tuple[list[str], list[list[str]]]:
    here = f"24K/53GB here ({os.cpu_count()} cores)"
    head = ["figure", "what", "k used", "parallel", here, "24K t3.2xlarge", "400K t3.2xlarge"]
    out = []
    for row in rows:
        e = extrapolate(row, results) if row["attr"] in ("wall_s", "maxrss_mb", "total", "first") else {}
        if e:
            values = [show_value(row["attr"], e[k]) for k in ("here_study", "t3_study", "t3_big")]
            out.append(
                [row["figure"], row["what"], f"{e['k_used']:.2f}", "yes" if e["parallel"] else "no", *values]
            )
    return head, out + full_training_rows(results, rows)


def epoch_share(results: list[SizeResult], model: str) -> tuple[float, str]:
    """One epoch at the largest N as a share of the first epoch there, and how it was found:
    the measured second-and-later epochs (``--epochs`` >= 2); else the growth of the first epoch
    with N (slope x N of a least-squares line: the set-up is the same at every N, the epoch is
    not; for transfer the slope also holds the frozen-feature pass, so it is an upper bound);
    else 1 (the first epoch itself, an upper bound)."""
    last = results[-1].epochs[model]
    if last["steady"]:
        return last["steady"] / last["first"], "measured"
    pts = [(r.n, r.epochs[model]["first"]) for r in results if r.epochs[model]["first"]]
    if len({n for n, _ in pts}) >= 2:
        slope = float(np.polyfit([n for n, _ in pts], [t for _, t in pts], 1)[0])
        return min(1.0, max(0.0, slope * results[-1].n / last["first"])), "slope of the first epoch in N"
    return 1.0, "upper bound: the first epoch"


def full_training_rows(results: list[SizeResult], rows: list[dict[str, Any]]) -> list[list[str]]:
    """The deep models at the repository's own epoch counts: the first epoch (which carries the set-up,
    and for transfer the frozen-feature pass) plus (epochs - 1) x one epoch (``epoch_share``)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    counts = {"cnn": params["train"]["epochs"], "transfer": params["transfer"]["head_epochs"]}
    out = []
    for m in DEEP:
        row = next(r for r in rows if r["figure"] == f"epoch:{m}")
        e = extrapolate(row, results)
        if not e or results[-1].epochs[m]["first"] is None:
            continue
        share, how = epoch_share(results, m)
        factor = 1 + (counts[m] - 1) * share
        values = [human_s(e[k] * factor) for k in ("here_study", "t3_study", "t3_big")]
        what = f"epoch = {share:.2f} x 1st ({how.split(':')[0].split()[0]})"
        if m == "transfer" and not results[-1].epochs[m]["steady"]:
            # the slope holds the frozen-feature pass, which runs once: the head's epochs run on
            # cached features, 260-535x cheaper per epoch (bench_training.py, section 2)
            what += "; upper bound: ~the first epoch alone"
        out.append([f"train@{m}: {counts[m]} epochs", what, f"{e['k_used']:.2f}", "yes", *values])
    return out


EXTRAPOLATION_NOTE = textwrap.fill(
    "EXTRAPOLATION, not measurement. From the largest N measured, each figure is scaled to the study "
    f"(24,000 images, 53 GB of raw JPEGs, ~2.2 MB each) and to {BIG_N:,} images ({BIG_BYTES / 1e9:.0f} GB) "
    f"by its basis: byte-bound figures ({', '.join(sorted(BYTE_BOUND))}) by raw bytes, the rest by N; "
    "costs with exponent max(k, 1) (a fixed start-up cost is not extrapolated as a saving), memory with "
    "its measured k; disk: the raw images by bytes, the other outputs by N, times the measured disk/data. "
    f"t3.2xlarge (8 vCPU, {T3_RAM_GB} GB, no GPU): the parallel steps ({', '.join(sorted(PARALLEL))}: "
    "process pools, TensorFlow's thread pools) are divided by 8 / this machine's cores; serial steps "
    "keep their time (same per-core speed assumed). Optimistic: the 8 vCPUs are 4 cores with "
    "hyper-threading, and a t3 out of CPU credits runs at its 40% baseline. DVC push/pull here go over "
    "loopback: on AWS, S3 and the instance's network (up to 5 Gbit/s) set their speed. The train@ and "
    "epoch rows are for the epochs run here; the last rows add the repository's own epoch counts "
    "(train.epochs, transfer.head_epochs). Ingest here is the synthetic renderer; a real ingest downloads.",
    width=100,
)


def report_text(
    results: list[SizeResult], rows: list[dict[str, Any]], checks: list[tuple[str, bool, str]], md: bool
) -> str:
    """The whole report, as aligned text (stdout) or markdown (scale.md)."""
    table = md_table if md else text_table
    parts = []
    for r in results:
        for title, head, body in (steps_table(r), disk_table(r), epochs_table(r)):
            parts += [f"### {title}" if md else title, table(head, body), ""]
    title = "Growth: cost ~ basis^k (least squares on log-log over the N measured); wall s unless marked"
    parts += [f"### {title}" if md else title, table(*growth_table(results, rows)), ""]
    parts += ["### Targets" if md else "Targets"]
    parts += [f"- {name}: {text}" if md else f"  {name:40} {text}" for name, _, text in checks]
    parts += ["### Extrapolation", ""] if md else [""]  # the note itself starts with EXTRAPOLATION
    parts += [EXTRAPOLATION_NOTE, ""]
    parts += [table(*extrapolation_table(results, rows)), ""]
    return "\n".join(parts)


def write_results(out_dir: Path, command: str, results: list[SizeResult], complete: bool) -> None:
    """scale.json (everything) and scale.md (the tables, exponents, targets and extrapolation)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = growth(results)
    checks = verdicts(results, rows) if complete else []
    data = {
        "complete": complete,
        "command": command,
        "cpu_count": os.cpu_count(),
        "sizes": [asdict(r) for r in results],
        "growth": rows,
        "extrapolation": {f"{r['figure']}:{r['attr']}": extrapolate(r, results) for r in rows},
        "targets": [{"target": n, "pass": ok, "detail": t} for n, ok, t in checks],
    }
    (out_dir / "scale.json").write_text(json.dumps(data, indent=2))
    head = f"# `{command}` on {os.cpu_count()} cores\n\n"
    (out_dir / "scale.md").write_text(head + report_text(results, rows, checks, md=True))


def load_results(path: Path) -> tuple[str, list[SizeResult]]:
    """The command line and the per-N results of a scale.json (to render its tables again)."""
    data = json.loads(path.read_text())
    results = []
    for d in data["sizes"]:
        measures = {k: {name: Measure(**m) for name, m in d[k].items()} for k in ("stages", "ops")}
        results.append(SizeResult(**(d | measures)))
    return data["command"], results


# --- main --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the finally blocks stop servers and remove temp dirs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,8000,24000", help="comma-separated N (synthetic images)")
    ap.add_argument(
        "--max-width", type=int, default=None, help="shrink the synthetic images (default: full size)"
    )
    ap.add_argument("--epochs", type=int, default=1, help="train.epochs and transfer.head_epochs")
    ap.add_argument("--workdir", type=Path, default=None, help="where the temporary repositories go")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for scale.json and scale.md")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders (and their logs)")
    ap.add_argument(
        "--render", type=Path, default=None, help="only print and rewrite the report of a scale.json"
    )
    args = ap.parse_args(argv)
    args.sizes = sorted(int(s) for s in args.sizes.split(","))
    return args


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        command, results = load_results(args.render)
        return finish(args.out, command, results)
    command = " ".join(["bench_scale.py", *(sys.argv[1:] if argv is None else argv)])
    results: list[SizeResult] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.workdir))
    try:
        with sigterm_as_interrupt():
            for n in args.sizes:
                t0 = time.perf_counter()
                say(f"N = {n}: in {tmp / f'n{n}'}")
                try:
                    results.append(run_size(n, args, tmp / f"n{n}", say))
                finally:
                    if not args.keep:
                        shutil.rmtree(tmp / f"n{n}", ignore_errors=True)
                results[-1].total_s = time.perf_counter() - t0
                say(f"N = {n}: {human_s(results[-1].total_s)} in all")
                write_results(args.out, command, results, complete=False)
    except StepFailed as exc:
        print(f"\nFAILED at N = {n}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"logs kept in {tmp / f'n{n}' / 'logs'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the running step's processes and the S3 server were stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return finish(args.out, command, results)


def finish(out: Path, command: str, results: list[SizeResult]) -> int:
    """Write scale.json and scale.md, print the report."""
    write_results(out, command, results, complete=True)
    rows = growth(results)
    print("\n" + report_text(results, rows, verdicts(results, rows), md=False))
    print(f"wrote {out / 'scale.json'} and {out / 'scale.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
