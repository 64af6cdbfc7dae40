"""Benchmark DVC's cache link types: time, bytes written and disk used per ``cache.type``.

Issue 17: 53 GB of raw images must stay ~53 GB on disk after ``dvc repro`` and ``dvc pull``. For
each ``cache.type`` value (single types and ordered fallbacks, e.g. ``hardlink,symlink``), in a
fresh temporary git + DVC repository with one ``persist: true`` stage output like the ingest
stage's ``data/raw`` (``--n`` files of ``--min-kb``..``--max-kb`` random, incompressible bytes):

1. ``commit``   ``dvc commit -f`` of the new data (what ends a ``dvc repro ingest``): hash it, put it
                into the cache, link the workspace to the cache;
2. ``checkout`` ``rm -rf data/raw`` then ``dvc checkout``;
3. ``rerun``    ``dvc repro -f ingest`` with nothing new: DVC first *unprotects* a persist output
                (replaces every linked file by a copy, so the stage may edit it), runs the command,
                then commits and relinks;
4. ``pull``     ``dvc push`` to a directory remote (not timed, not counted), then
                ``rm -rf data/raw .dvc/cache`` and ``dvc pull``, as a new machine does.

Per phase: wall seconds; bytes the DVC process wrote (``getrusage`` of the children: block-layer
write accounting, so a copy counts and a link does not); disk used by the workspace output plus the
cache once the phase is done and at its peak (sampled every ``--sample`` s), each file counted once
per inode (``st_blocks``), as a ratio to the data size; how the workspace files ended up (hardlink,
symlink, or a plain file). Every cache file's md5 is checked against its name after the last phase.
The supported link types come from ``dvc version`` in the first repository ("Cache types").

    .venv/bin/python benchmarks/bench_cache_links.py [--n 2000] [--min-kb 512] [--max-kb 2048]
        [--types 'copy;hardlink;symlink;reflink;reflink,hardlink,symlink;hardlink,symlink']
        [--dir DIR [--fs-usage]] [--cache-dir DIR] [--remote-dir DIR] [--json OUT]

``--dir`` puts the repositories on another file system (e.g. an XFS mount, to measure reflink), and
``--fs-usage`` then measures disk as that file system's used bytes (a reflink shares its blocks with
another inode, which per-inode counting would count twice; only on a mount nothing else writes to).
``--cache-dir`` puts the DVC cache on another file system (the "cache on another disk" case);
``--remote-dir`` the directory remote (default: the system temp dir).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1", "GIT_AUTHOR_NAME": "b",
       "GIT_AUTHOR_EMAIL": "b@localhost", "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@localhost"}  # fmt: skip
DEFAULT_TYPES = "copy;hardlink;symlink;reflink;reflink,hardlink,symlink;hardlink,symlink"
STAGE = """stages:
  ingest:
    cmd: "true"
    outs:
      - data/raw:
          persist: true
"""
PHASES = ("commit", "checkout", "rerun", "pull")


def sh(*cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def disk_used(*roots: Path) -> int:
    """Bytes allocated to the files under ``roots``, each inode once (hard links are not counted twice)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [r for r in roots if r.exists()]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except FileNotFoundError:  # removed while we looked
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
            elif (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


class Meter:
    """Disk used by the workspace output and the cache.

    ``inodes`` (default): the files' allocated blocks, each inode once: right for copies, hard links
    and symlinks, but a reflink shares its blocks with another inode and would count twice. ``fs``: the
    file system's used bytes (statvfs) minus those used before the phase's data existed: right for
    reflinks too, but only on a file system nothing else writes to (a dedicated mount).
    """

    def __init__(self, roots: list[Path], fs_usage: bool) -> None:
        self.roots, self.fs_usage, self.base = roots, fs_usage, 0

    def _fs_used(self) -> int:
        st = os.statvfs(next(p for p in self.roots[0].parents if p.exists()))
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def reset(self) -> None:
        """Take the current usage as zero (call while neither the output nor the cache holds data)."""
        if self.fs_usage:
            os.sync()
            self.base = self._fs_used()

    def used(self) -> int:
        return self._fs_used() - self.base if self.fs_usage else disk_used(*self.roots)


class PeakSampler:
    """Samples ``meter.used()`` in a thread while a command runs; ``peak`` is the largest value seen."""

    def __init__(self, meter: Meter, interval: float) -> None:
        self.meter, self.interval, self.peak = meter, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.meter.used())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.meter.used())


@dataclass
class Phase:
    seconds: float
    written: int  # bytes the commands wrote (block-layer accounting of the waited-for children)
    disk_after: int
    disk_peak: int
    linked_as: str


@dataclass
class Result:
    cache_type: str
    phases: dict[str, Phase] = field(default_factory=dict)
    cache_ok: bool | None = None
    error: str | None = None


def written_by_children() -> int:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_oublock * 512


def link_kind(out: Path) -> str:
    """How the workspace files are stored: 'hardlink', 'symlink', 'plain' (a copy or a reflink), or a mix."""
    kinds = set()
    for p in out.rglob("*"):
        if p.is_symlink():
            kinds.add("symlink")
        elif p.is_file():
            kinds.add("hardlink" if p.stat().st_nlink > 1 else "plain")
    return "+".join(sorted(kinds)) or "none"


def cache_intact(cache: Path) -> bool:
    """Every file object in the cache hashes to its own name (``files/md5/ab/cdef...``)."""
    for p in (cache / "files" / "md5").rglob("*"):
        if not p.is_file() or p.name.endswith(".dir"):
            continue
        h = hashlib.md5()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != p.parent.name + p.name:
            return False
    return True


def make_source(folder: Path, n: int, min_kb: int, max_kb: int, seed: int = 0) -> int:
    """``n`` files of random bytes (JPEGs do not compress either); returns their total size."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True)
    total = 0
    for i in range(n):
        size = rng.randint(min_kb, max_kb) * 1024
        (folder / f"ISIC_{i:07d}.jpg").write_bytes(os.urandom(size))
        total += size
    return total


def supported_types(repo: Path) -> str:
    out = sh(DVC, "version", cwd=repo).stdout
    line = next((x for x in out.splitlines() if x.startswith("Cache types:")), "Cache types: ?")
    return line.split(":", 1)[1].strip()


def measure(cache_type: str, source: Path, root: Path, remote: Path, cache_dir: Path | None, sample: float,
            fs_usage: bool) -> Result:  # fmt: skip
    repo = root / "repo"
    res = Result(cache_type)
    repo.mkdir(parents=True)
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh(DVC, "init", "-q", cwd=repo)
    sh(DVC, "config", "core.autostage", "true", cwd=repo)
    sh(DVC, "config", "cache.type", cache_type, cwd=repo)
    if cache_dir is not None:
        sh(DVC, "cache", "dir", str(cache_dir), cwd=repo)
    sh(DVC, "remote", "add", "-d", "local", str(remote), cwd=repo)
    (repo / "dvc.yaml").write_text(STAGE)
    cache = cache_dir or repo / ".dvc" / "cache"
    out = repo / "data" / "raw"
    meter = Meter([out, cache], fs_usage)
    meter.reset()
    shutil.copytree(source, out / "images")  # plain new files, as a download leaves them

    def phase(name: str, *cmds: tuple[str, ...]) -> None:
        before, t0 = written_by_children(), time.perf_counter()
        with PeakSampler(meter, sample) as sampler:
            for cmd in cmds:
                sh(*cmd, cwd=repo)
        seconds = time.perf_counter() - t0
        if fs_usage:
            os.sync()
        res.phases[name] = Phase(seconds, written_by_children() - before, meter.used(), sampler.peak,
                                 link_kind(out))  # fmt: skip

    try:
        phase("commit", (DVC, "commit", "-f", "ingest"))
        sh("git", "add", "-A", cwd=repo)
        sh("git", "commit", "-qm", "data", cwd=repo)
        shutil.rmtree(out)
        phase("checkout", (DVC, "checkout"))
        phase("rerun", (DVC, "repro", "-f", "ingest"))
        sh(DVC, "push", cwd=repo)
        shutil.rmtree(out)
        shutil.rmtree(cache)
        meter.reset()
        phase("pull", (DVC, "pull"))
        res.cache_ok = cache_intact(cache)
        status = sh(DVC, "status", cwd=repo).stdout
        if "up to date" not in status:
            res.error = f"dvc status after pull: {status.strip()}"
    except RuntimeError as exc:
        res.error = str(exc).splitlines()[0] + " " + str(exc)[-300:].replace("\n", " ")
    return res


def mb(n: int) -> str:
    return f"{n / 1e6:,.0f}"


def print_table(results: list[Result], data: int, fs_usage: bool) -> None:
    how = "the file system's used bytes" if fs_usage else "each inode once"
    print(f"\ndata: {mb(data)} MB. disk = workspace data/raw + cache ({how}) / data size")
    head = "| cache.type | phase | s | vs copy | MB written | disk after | disk peak | workspace files |"
    print(head)
    print("|" + "---|" * 8)
    copy = next((r for r in results if r.cache_type == "copy"), None)
    for r in results:
        if r.error and not r.phases:
            print(f"| {r.cache_type} | - | failed: {r.error[:160]} |||||")
            continue
        for name, p in r.phases.items():
            base = copy.phases.get(name) if copy else None
            ratio = f"{p.seconds / base.seconds:.2f}" if base and base.seconds > 0 else "-"
            print(
                f"| {r.cache_type} | {name} | {p.seconds:.2f} | {ratio} | {mb(p.written)} | "
                f"{p.disk_after / data:.2f} | {p.disk_peak / data:.2f} | {p.linked_as} |"
            )
        if r.error:
            print(f"| {r.cache_type} | failed | {r.error[:200]} |||||")
        if r.cache_ok is not None:
            print(f"| {r.cache_type} | cache md5 check | {'ok' if r.cache_ok else 'CORRUPTED'} |||||")


def choose(results: list[Result], data: int) -> str:
    """Least disk after the phases, then at their peaks (ratios to 2 decimals), then least time.

    On one file system a fallback chain ties with its first type (``hardlink,symlink`` = ``hardlink``);
    what the later types are for (a cache on another disk) is a reason, not a measurement here.
    """
    done = [r for r in results if not r.error and r.cache_ok and len(r.phases) == len(PHASES)]
    if not done:
        return "none"

    def key(r: Result) -> tuple[float, float, float]:
        ps = r.phases.values()
        return (round(sum(p.disk_after for p in ps) / data, 2), round(sum(p.disk_peak for p in ps) / data, 2),
                sum(p.seconds for p in ps))  # fmt: skip

    return min(done, key=key).cache_type


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="files in the output folder")
    ap.add_argument("--min-kb", type=int, default=512)
    ap.add_argument("--max-kb", type=int, default=2048)
    ap.add_argument("--types", default=DEFAULT_TYPES, help="cache.type values separated by ';'")
    ap.add_argument("--dir", type=Path, default=None, help="where the repositories go (a temp dir in it)")
    ap.add_argument("--cache-dir", type=Path, default=None, help="put the DVC cache here (another disk)")
    ap.add_argument(
        "--remote-dir",
        type=Path,
        default=None,
        help="where the directory remote goes (default: the system temp dir, apart from --dir)",
    )
    ap.add_argument(
        "--fs-usage",
        action="store_true",
        help="measure disk as the file system's used bytes (right for reflinks; a dedicated mount only)",
    )
    ap.add_argument("--sample", type=float, default=0.2, help="seconds between disk-usage samples")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-links-", dir=args.dir) as tmp:
        root = Path(tmp)
        data = make_source(root / "source", args.n, args.min_kb, args.max_kb)
        print(f"{args.n} files, {mb(data)} MB, in {root} ({shutil.disk_usage(root).free / 1e9:.0f} GB free)")
        supported = None
        for i, cache_type in enumerate(t for t in args.types.split(";") if t):
            case = root / f"case{i}"
            remote = Path(tempfile.mkdtemp(prefix="bench-links-remote-", dir=args.remote_dir))
            cache_dir = args.cache_dir / f"bench-links-cache{os.getpid()}-{i}" if args.cache_dir else None
            try:
                if supported is None:  # probe once, in a repository with a cache
                    probe = root / "probe"
                    probe.mkdir()
                    sh("git", "init", "-q", cwd=probe)
                    sh(DVC, "init", "-q", cwd=probe)
                    if args.cache_dir:
                        sh(
                            DVC,
                            "cache",
                            "dir",
                            str(args.cache_dir / f"bench-links-probe{os.getpid()}"),
                            cwd=probe,
                        )
                    (probe / "f").write_text("x")
                    sh(DVC, "add", "-q", "f", cwd=probe)
                    supported = supported_types(probe)
                    print(f"dvc version: Cache types: {supported}")
                    if args.cache_dir:
                        shutil.rmtree(args.cache_dir / f"bench-links-probe{os.getpid()}", ignore_errors=True)
                if cache_type == "reflink" and "reflink" not in supported:
                    print(f"{cache_type}: not supported on this file system, skipped")
                    continue
                t0 = time.perf_counter()
                res = measure(
                    cache_type, root / "source", case, remote, cache_dir, args.sample, args.fs_usage
                )
                print(
                    f"{cache_type}: {time.perf_counter() - t0:.0f} s"
                    + (f" ERROR {res.error}" if res.error else "")
                )
                results.append(res)
            finally:
                shutil.rmtree(case, ignore_errors=True)
                shutil.rmtree(remote, ignore_errors=True)
                if cache_dir is not None:
                    shutil.rmtree(cache_dir, ignore_errors=True)
    print_table(results, data, args.fs_usage)
    best = choose(results, data)
    print(f"\nleast disk after the phases, then at their peaks, then least time: cache.type = {best}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"n": args.n, "data_bytes": data, "supported": supported, "choice": best,
                   "results": [asdict(r) for r in results]}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
