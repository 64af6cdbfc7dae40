"""The ISIC ingest on a DVC-linked ``data/raw``, with the committed ``.dvc/config`` cache type.

With hard links a workspace file IS the cache file, so one byte written into it in place would corrupt
the DVC cache, and as root the read-only mode DVC gives it stops nothing. The downloader only ever
renames complete temp files into place and moves (renames) files to set them aside or restore them;
these tests hold it to that in a real git + DVC repository, for a kill mid-download and its resume, a
smaller ``limit`` (images set aside) and a larger one (restored), run both ways a user runs it:

* ``dvc``: ``dvc repro ingest`` (DVC first unprotects the ``persist`` output: links become copies);
* ``direct``: ``melanoma ingest`` on the linked folder, then ``dvc commit`` (no unprotect: the code
  itself meets the links).

After each step: every workspace file is linked as configured (the cache file's inode for hardlink),
every cache file still hashes to its name, and ``dvc status ingest`` says what it should.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fakes.isic_server import FakeIsicServer
from integration.test_pipeline_e2e import run, tiny_repo
from melanoma.config import IsicParams
from melanoma.sources.isic import download_isic

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
N = 12  # images on the fake server
UP_TO_DATE = "Data and pipelines are up to date."
ISIC = {
    "concurrency": 4,
    "retries": 2,
    "backoff_seconds": 0.01,
    "max_backoff_seconds": 0.05,
    "read_timeout": 5.0,
}


# --- the repository ------------------------------------------------------------------------------------------


def set_isic(repo: Path, srv: FakeIsicServer, limit: int) -> None:
    """params.yaml: ``ingest.source: isic`` on the fake server, with ``limit`` (0 = all)."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["source"] = "isic"
    params["ingest"]["isic"] = {"base_url": srv.base_url, "limit": limit, **ISIC}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def ingest_cmds(runner: str) -> list[list[str]]:
    if runner == "dvc":
        return [[DVC, "repro", "ingest"]]
    return [[str(BIN / "melanoma"), "ingest"], [DVC, "commit", "-f", "ingest"]]


def ingest(repo: Path, env: dict[str, str], runner: str) -> None:
    for cmd in ingest_cmds(runner):
        run(cmd, repo, env, timeout=300)


def status(repo: Path, env: dict[str, str]) -> str:
    return run([DVC, "status", "ingest"], repo, env).stdout


def raw_files(repo: Path) -> list[Path]:
    return sorted(p for p in (repo / "data" / "raw").rglob("*") if not p.is_dir())


def images(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "images").glob("ISIC_*")) if (folder / "images").is_dir() else []


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- the checks ----------------------------------------------------------------------------------------------


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def cache_root(repo: Path) -> Path:
    return repo / ".dvc" / "cache" / "files" / "md5"


def assert_cache_intact(repo: Path) -> int:
    """Every object in the DVC cache (files and .dir manifests) hashes to its own name; returns how many."""
    objects = [p for p in cache_root(repo).rglob("*") if p.is_file()]
    assert objects, "the DVC cache is empty"
    bad = [str(p) for p in objects if md5(p) != p.parent.name + p.name.removesuffix(".dir")]
    assert not bad, f"corrupted DVC cache objects (content no longer matches the name): {bad}"
    return len(objects)


def expected_link(repo: Path, env: dict[str, str]) -> str:
    """The link DVC makes here: the first type of the committed cache.type that `dvc version` supports
    (it probes the cache folder, so call it once the cache exists)."""
    configured = [t.strip() for t in run([DVC, "config", "cache.type"], repo, env).stdout.strip().split(",")]
    line = next(
        x for x in run([DVC, "version"], repo, env).stdout.splitlines() if x.startswith("Cache types:")
    )
    supported = {t.strip() for t in line.split(":", 1)[1].split(",")} | {"copy"}
    return next(t for t in configured if t in supported)


def assert_linked(repo: Path, link: str) -> None:
    """Each file of data/raw is linked to its cache object as ``link`` says."""
    files = raw_files(repo)
    assert files, "data/raw is empty"
    for p in files:
        obj = cache_root(repo) / (digest := md5(p))[:2] / digest[2:]
        assert obj.is_file(), f"{p}: no cache object {obj}"
        st, cst = os.lstat(p), os.stat(obj)
        if link == "hardlink":
            assert (st.st_dev, st.st_ino) == (cst.st_dev, cst.st_ino), f"{p} is not a hard link of {obj}"
        elif link == "symlink":
            assert p.is_symlink() and p.resolve() == obj.resolve(), f"{p} is not a symlink to {obj}"
        else:  # copy / reflink: a file of its own
            assert not p.is_symlink() and st.st_ino != cst.st_ino, f"{p} shares the cache file's inode"


def assert_clean(repo: Path, env: dict[str, str], link: str) -> None:
    assert_linked(repo, link)
    assert_cache_intact(repo)
    out = status(repo, env)
    assert UP_TO_DATE in out, out


@pytest.fixture
def server() -> Iterator[FakeIsicServer]:
    with FakeIsicServer(N, seed=5) as srv:
        yield srv


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A git copy of the project, with its committed .dvc/config."""
    repo, env = tiny_repo(tmp_path, None)
    assert (repo / ".dvc" / "config").read_bytes() == (Path(__file__).parents[2] / ".dvc/config").read_bytes()
    return repo, env


# --- the tests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", ["dvc", "direct"])
def test_a_killed_download_resumes_without_touching_the_cache(
    repo: tuple[Path, dict[str, str]], server: FakeIsicServer, runner: str, tmp_path: Path
) -> None:
    repo_dir, env = repo
    set_isic(repo_dir, server, limit=N // 2)
    ingest(repo_dir, env, "dvc")
    link = expected_link(repo_dir, env)
    assert_clean(repo_dir, env, link)
    first = images(repo_dir / "data" / "raw")
    assert len(first) == N // 2

    # All N now; the server holds the last quarter (creation order) until released, so the kill comes
    # with those downloads in flight and the rest on disk, however busy the machine.
    set_isic(repo_dir, server, limit=0)
    release = threading.Event()
    held = [im.isic_id for im in sorted(server.images, key=lambda im: im.created)][-(N // 4) :]
    for isic_id in held:
        server.inject(isic_id, "hold", times=None, event=release)
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        # its own session: the kill takes DVC and the `melanoma ingest` it started, as a dead box would
        proc = subprocess.Popen(ingest_cmds(runner)[0], cwd=repo_dir, env=env, stdout=out, stderr=out,
                                start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while len(images(repo_dir / "data" / "raw")) < N - len(held) or not any(
            server.file_requests[i] for i in held
        ):
            assert proc.poll() is None, f"the ingest ended before the kill:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the ingest did not progress:\n{log.read_text()[-3000:]}"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        release.set()
        server.clear_faults()

    # Right after the kill: the cache is intact, and DVC sees data/raw changed (its metadata is gone).
    assert_cache_intact(repo_dir)
    assert not (repo_dir / "data" / "raw" / "metadata.csv").exists()
    assert "modified:" in status(repo_dir, env) and "data/raw" in status(repo_dir, env)
    if runner == "direct":  # no unprotect: the images of the first run are still the cache's own files
        for name in first:
            assert os.stat(repo_dir / "data/raw/images" / name).st_nlink > 1 or link != "hardlink"

    on_disk = set(images(repo_dir / "data" / "raw"))
    server.reset_counters()
    ingest(repo_dir, env, runner)
    assert_clean(repo_dir, env, link)
    refetched = {i for i in server.file_requests if f"{i}.jpg" in on_disk and server.file_requests[i]}
    assert not refetched, f"complete files were downloaded again: {sorted(refetched)}"
    # The resumed folder is exactly what one uninterrupted download gives.
    fresh = tmp_path / "fresh"
    download_isic(fresh, IsicParams(base_url=server.base_url, **ISIC))
    assert tree(repo_dir / "data" / "raw") == tree(fresh)


@pytest.mark.parametrize("runner", ["dvc", "direct"])
def test_set_aside_and_restore_keep_the_cache_intact(
    repo: tuple[Path, dict[str, str]], server: FakeIsicServer, runner: str
) -> None:
    repo_dir, env = repo
    raw, aside = repo_dir / "data" / "raw", repo_dir / "data" / "raw.set-aside"
    set_isic(repo_dir, server, limit=0)
    ingest(repo_dir, env, "dvc")
    link = expected_link(repo_dir, env)
    assert_clean(repo_dir, env, link)
    full, lock = tree(raw), (repo_dir / "dvc.lock").read_text()
    objects = assert_cache_intact(repo_dir)

    # A smaller limit: half the images move to data/raw.set-aside/, nothing is downloaded or deleted.
    set_isic(repo_dir, server, limit=N // 2)
    server.reset_counters()
    ingest(repo_dir, env, runner)
    assert server.file_requests.total() == 0
    assert len(images(raw)) == N // 2 and len(images(aside)) == N - N // 2
    for name in images(aside):
        assert (aside / "images" / name).read_bytes() == full[f"images/{name}"]
        if runner == "direct" and link == "hardlink":  # moved, not copied: still the cache's file
            assert os.stat(aside / "images" / name).st_nlink > 1
    assert_clean(repo_dir, env, link)
    untracked = run(["git", "status", "--porcelain", "--untracked-files=all"], repo_dir, env).stdout
    assert "set-aside" not in untracked, untracked  # the set-aside folder ignores itself

    # The whole listing again: the set-aside images come back, without a download.
    set_isic(repo_dir, server, limit=0)
    server.reset_counters()
    ingest(repo_dir, env, runner)
    assert server.file_requests.total() == 0
    assert images(aside) == []
    assert_clean(repo_dir, env, link)
    assert tree(raw) == full
    assert (repo_dir / "dvc.lock").read_text() == lock  # the same data/raw hash as before
    assert assert_cache_intact(repo_dir) >= objects

    # The checks are not vacuous: a write in place (root ignores the read-only mode) is caught.
    victim = raw / "images" / images(raw)[0]
    with open(victim, "r+b") as fh:
        fh.write(b"\0")
    if link in ("hardlink", "symlink"):
        with pytest.raises(AssertionError, match="corrupted DVC cache"):
            assert_cache_intact(repo_dir)
    assert UP_TO_DATE not in status(repo_dir, env)
