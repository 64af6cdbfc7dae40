"""The DVC remote and the MLflow server on a real S3 server (SeaweedFS on loopback): push, a fresh clone
that pulls byte-identical outputs, the champion loaded back through the server, and three faults
(the server dying mid-push, wrong credentials, a corrupted object)."""

from __future__ import annotations

import filecmp
import hashlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from fakes.tcp_hold import HoldingProxy
from integration.test_pipeline_e2e import REPO, TINY, run, tiny_repo
from melanoma import stack

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
CHECKSUM_ENV = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}
CACHED_OUTS = ("data/raw", "data/prepared", "data/splits", "models")  # what .dvc/config's remote carries


def stack_env() -> dict[str, str]:
    """What `melanoma stack up` gives its servers: the environment plus the checksum settings."""
    return {**os.environ, **CHECKSUM_ENV, "DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def stack_config(root: Path) -> stack.StackConfig:
    """Ports 0: the stack picks free ones (again if another process takes one first) and keeps them for
    a restart of the same folder."""
    return stack.StackConfig(root=root, s3_port=0, mlflow_port=0)


def point_remote(repo: Path, env: dict[str, str], info: stack.StackInfo, secret: str | None = None) -> None:
    """The README's `dvc remote modify --local` lines (the committed url, the stack's endpoint and keys)."""
    for key, value in (
        ("endpointurl", info.s3_endpoint),
        ("access_key_id", info.access_key_id),
        ("secret_access_key", secret or info.secret_access_key),
    ):
        # `--`: a random key may start with "-", which argparse would take for an option
        run([DVC, "remote", "modify", "--local", "--", "storage", key, value], repo, env)


def bucket_keys(info: stack.StackInfo, bucket: str) -> list[str]:
    client = stack._s3_client(info)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def files_under(root: Path, rel: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / rel).rglob("*") if p.is_file())


# --- the pipeline against the stack ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict[str, str], stack.StackInfo]]:
    """The tiny pipeline run against the stack's MLflow server, committed and pushed to its S3."""
    tmp = tmp_path_factory.mktemp("remote")
    cfg = stack_config(tmp / "stack")
    info = stack.up(cfg, stack_env(), BIN)
    try:
        repo, env = tiny_repo(tmp, info.tracking_uri)
        env.update(CHECKSUM_ENV)
        point_remote(repo, env, info)
        run([DVC, "repro"], repo, env, timeout=900)
        run(["git", "add", "-A"], repo, env)
        run(["git", "commit", "-qm", "pipeline results"], repo, env)
        push = run([DVC, "push"], repo, env)
        assert "pushed" in push.stdout, push.stdout
        yield repo, env, info
    finally:
        stack.down(cfg)


def test_a_fresh_clone_pulls_every_output_byte_identical(pushed, tmp_path: Path) -> None:
    repo, env, info = pushed
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / ".dvc" / "cache").exists(), "a clone must start with an empty DVC cache"
    point_remote(clone, env, info)

    # README "On a new EC2 box": repro --pull --allow-missing finds nothing to run and fetches nothing it
    # does not need; `dvc pull` then brings every cached output.
    quick = run([DVC, "repro", "--pull", "--allow-missing"], clone, env)
    assert "Running stage" not in quick.stdout, quick.stdout
    run([DVC, "pull"], clone, env)

    for rel in CACHED_OUTS:
        names = files_under(repo, rel)
        assert names and names == files_under(clone, rel), (
            f"{rel}: the clone's files differ from the pushed ones"
        )
        _, mismatch, errors = filecmp.cmpfiles(repo, clone, names, shallow=False)
        assert not mismatch and not errors, f"{rel}: not byte-identical after dvc pull: {mismatch + errors}"

    again = run([DVC, "repro"], clone, env)
    assert "Running stage" not in again.stdout and "up to date" in again.stdout, again.stdout
    assert (clone / "dvc.lock").read_bytes() == (repo / "dvc.lock").read_bytes()
    cloud = run([DVC, "status", "-c"], clone, env)
    assert "in sync" in cloud.stdout, cloud.stdout


def test_the_champion_lives_in_the_bucket_and_loads_through_the_server(pushed, tmp_path: Path) -> None:
    _, _, info = pushed
    name = TINY["mlflow"]["registered_model"]
    version = mlflow.MlflowClient(
        tracking_uri=info.tracking_uri, registry_uri=info.tracking_uri
    ).get_model_version_by_alias(name, "champion")
    # proxied artifacts: the server maps mlflow-artifacts:/<path> to s3://<mlflow bucket>/<path>
    uri = mlflow.MlflowClient(
        tracking_uri=info.tracking_uri, registry_uri=info.tracking_uri
    ).get_model_version_download_uri(name, version.version)
    assert uri.startswith("mlflow-artifacts:"), uri
    key = uri.split(":", 1)[1].lstrip("/").rstrip("/") + "/MLmodel"
    keys = bucket_keys(info, info.mlflow_bucket)
    assert key in keys, (
        f"{name} v{version.version}: {key} not in s3://{info.mlflow_bucket} ({len(keys)} objects)"
    )

    # A second process with the server's address only: no AWS keys, no S3 endpoint (proxied artifacts).
    code = (
        "import mlflow, numpy as np; "
        f"m = mlflow.pyfunc.load_model('models:/{name}@champion'); "
        "p = np.asarray(m.predict(np.zeros((2, 40, 50, 3), np.uint8))); "
        "assert p.shape[0] == 2 and ((p >= 0) & (p <= 1)).all(), p; print('loaded', p.ravel().tolist())"
    )
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MLFLOW_TRACKING_URI": info.tracking_uri}
    env |= {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "KERAS_BACKEND": "tensorflow"}
    out = run([sys.executable, "-c", code], tmp_path, env)
    assert "loaded" in out.stdout


def cache_objects(repo: Path) -> dict[str, int]:
    """The DVC cache's objects (md5 -> bytes): what a pull downloaded into an empty cache."""
    root = repo / ".dvc" / "cache" / "files" / "md5"
    return {p.parent.name + p.name: p.stat().st_size for p in root.rglob("*") if p.is_file()}


def out_md5s(repo: Path, rel: str) -> set[str]:
    """The md5 of every file under ``rel`` (the names of their objects in the DVC cache)."""
    return {hashlib.md5(p.read_bytes()).hexdigest() for p in (repo / rel).rglob("*") if p.is_file()}


def stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def test_a_new_box_pulls_what_training_reads_and_never_the_raw_images(pushed, tmp_path: Path) -> None:
    """README "On a new EC2 box": `dvc pull data/prepared data/splits`, then an experiment with --pull
    --allow-missing. No raw image (53 GB at full scale) is ever downloaded; only training and what follows
    it run. The commands run as the README gives them: in bash, the venv activated, not on PATH before."""
    repo, env, info = pushed
    bare = {**env, "PATH": os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != BIN)}

    def clone_of(name: str) -> Path:
        clone = tmp_path / name
        run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
        point_remote(clone, env, info)
        (clone / ".venv").symlink_to(BIN.parent)  # `make install` made it; a symlink, so git-excluded
        with open(clone / ".git" / "info" / "exclude", "a") as fh:
            fh.write(".venv\n")
        return clone

    def sh(clone: Path, script: str) -> str:
        proc = run(["bash", "-ec", f"source .venv/bin/activate\n{script}"], clone, bare, timeout=900)
        return proc.stdout + proc.stderr

    raw = out_md5s(repo, "data/raw/images")
    assert raw

    full = clone_of("full")
    sh(full, "dvc pull")
    full_bytes = sum(cache_objects(full).values())

    box = clone_of("box")
    sh(box, "dvc pull data/prepared data/splits")
    pulled = cache_objects(box)
    for rel in ("data/prepared", "data/splits"):
        names = files_under(repo, rel)
        _, mismatch, errors = filecmp.cmpfiles(repo, box, names, shallow=False)
        assert names and not mismatch and not errors, f"{rel}: {mismatch + errors}"
    assert not (box / "data" / "raw").exists() and not raw & set(pulled), "data/raw was pulled"
    narrow_bytes = sum(pulled.values())
    raw_bytes = sum(p.stat().st_size for p in (repo / "data" / "raw").rglob("*") if p.is_file())
    assert narrow_bytes < full_bytes - raw_bytes // 2

    # Nothing to redo: every stage is unchanged, its missing outputs are only missing.
    dry = sh(box, "dvc repro --allow-missing --dry")
    assert not stages_run(dry), dry

    # A training change reruns train@cnn and what follows it, pulling only the inputs those stages read.
    exp = sh(box, "dvc exp run --pull --allow-missing -S cnn.dropout=0.25")
    ran = stages_run(exp)
    upstream = {"ingest", "prepare", "split", "external", "train@baseline", "train@transfer"}
    assert "train@cnn" in ran and not ran & upstream, sorted(ran)
    assert {"ensemble", "evaluate@cnn", "register"} <= ran, sorted(ran)
    assert not (box / "data" / "raw" / "images").exists(), "the raw images were checked out"
    after = cache_objects(box)
    assert not raw & set(after), f"{len(raw & set(after))} raw images were pulled"
    print(
        f"\nnew box: `dvc pull data/prepared data/splits` {narrow_bytes:,} B; after the experiment "
        f"{sum(after.values()):,} B in the cache; `dvc pull` {full_bytes:,} B; data/raw {raw_bytes:,} B"
    )
    # and the next experiment has nothing upstream to redo: the report reads nothing inside data/raw
    # (its small files travel in data/prepared/provenance), so --pull made no partial data/raw
    assert not (box / "data" / "raw").exists(), sorted(str(p) for p in (box / "data" / "raw").rglob("*"))
    again = stages_run(sh(box, "dvc repro --allow-missing --dry"))
    assert not again, sorted(again)


# --- faults, each on its own S3 server ---------------------------------------------------------------------


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[tuple[stack.StackConfig, stack.StackInfo]]:
    cfg = stack_config(tmp_path / "stack")
    info = stack.start_s3(cfg, stack_env(), BIN)
    try:
        yield cfg, info
    finally:
        stack.down(cfg)


def small_repo(root: Path, n_files: int, size: int) -> tuple[Path, dict[str, str]]:
    """A git + DVC repository with the project's committed .dvc/config and one directory of many files."""
    repo = root / "small"
    (repo / "data" / "images").mkdir(parents=True)
    env = {**os.environ, **CHECKSUM_ENV, "DVC_NO_ANALYTICS": "1", "DO_NOT_TRACK": "1"}
    run(["git", "init", "-q", "-b", "main"], repo, env)
    run([DVC, "init", "-q"], repo, env)
    (repo / ".dvc" / "config").write_bytes((REPO / ".dvc" / "config").read_bytes())
    for i in range(n_files):
        (repo / "data" / "images" / f"img{i:05d}.jpg").write_bytes(os.urandom(size))
    run([DVC, "add", "-q", "data/images"], repo, env)
    return repo, env


def test_s3_stopped_mid_push_fails_clearly_and_a_second_push_completes(s3, tmp_path: Path) -> None:
    cfg, info = s3
    repo, env = small_repo(tmp_path, n_files=48, size=4 << 20)
    point_remote(repo, env, info)
    # few retries: each file left after the crash is retried with backoff before DVC gives up on it
    env["AWS_MAX_ATTEMPTS"] = "2"
    s3_port = int(info.s3_endpoint.rsplit(":", 1)[1])
    # The push goes through a proxy that holds every upload byte past 20 MB (of 192 MB): the push is
    # surely in flight when the server dies, however fast or loaded the machine.
    with HoldingProxy(s3_port, budget=20 << 20) as proxy:
        run(
            [DVC, "remote", "modify", "--local", "storage", "endpointurl", f"http://127.0.0.1:{proxy.port}"],
            repo,
            env,
        )
        proc = subprocess.Popen(
            [DVC, "push", "-j", "4"],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        if not proxy.holding.wait(timeout=300):
            proc.kill()
            pytest.fail(f"the push never sent 20 MB:\n{proc.communicate()[0][-3000:]}")
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        rec = stack._read_record(cfg, "s3")
        os.killpg(rec.pid, signal.SIGKILL)  # a crash, not a graceful stop that lets uploads finish
        stack.stop(cfg, "s3")
    # the proxy closed every connection with its held bytes undelivered, as a dead server's socket would
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode != 0, out
    assert "failed to push" in out.lower() or "failed to upload" in out.lower(), out[-3000:]

    stack.start_s3(cfg, stack_env(), BIN)
    point_remote(repo, env, info)  # the server itself again
    # at most 20 MB of 4 MB files reached it: 48 files + the .dir manifest were not all there
    assert len(bucket_keys(info, info.dvc_bucket)) <= 5
    second = run([DVC, "push"], repo, env)
    assert "pushed" in second.stdout, second.stdout
    assert "in sync" in run([DVC, "status", "-c"], repo, env).stdout


def test_wrong_credentials_give_a_clear_error_naming_the_remote(s3, tmp_path: Path) -> None:
    _, info = s3
    repo, env = small_repo(tmp_path, n_files=3, size=100)
    point_remote(repo, env, info, secret="not-the-secret")
    proc = subprocess.run([DVC, "push"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "403" in out or "Forbidden" in out, out
    # DVC's own message names neither the remote nor the cause: `melanoma remote check` does both
    check = subprocess.run(
        [str(BIN / "melanoma"), "remote", "check"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    msg = check.stdout + check.stderr
    assert check.returncode == 2, msg
    assert "DVC remote 'storage'" in msg and "access denied" in msg and info.s3_endpoint in msg, msg
    point_remote(repo, env, info)
    assert "reachable" in run([str(BIN / "melanoma"), "remote", "check"], repo, env).stdout


def test_a_corrupted_object_is_detected_on_pull(s3, tmp_path: Path) -> None:
    _, info = s3
    repo, env = small_repo(tmp_path, n_files=3, size=100)
    point_remote(repo, env, info)
    run([DVC, "push"], repo, env)
    victim = repo / "data" / "images" / "img00001.jpg"
    good = victim.read_bytes()
    md5 = run(["md5sum", str(victim)], repo, env).stdout.split()[0]
    key = f"dvcstore/files/md5/{md5[:2]}/{md5[2:]}"
    assert key in bucket_keys(info, info.dvc_bucket)
    stack._s3_client(info).put_object(Bucket=info.dvc_bucket, Key=key, Body=b"bit rot")

    # A new machine: no cache, no workspace copy.
    run(["rm", "-rf", ".dvc/cache", "data/images"], repo, env)
    pull = subprocess.run([DVC, "pull", "-v"], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    out = pull.stdout + pull.stderr
    # remote.storage.verify = true (.dvc/config): DVC re-hashes what it downloads and refuses the object
    assert pull.returncode != 0, f"a corrupted object was accepted:\n{out[-3000:]}"
    assert "corrupted" in out and md5[2:] in out, out[-3000:]
    assert "Checkout failed" in out and "data/images" in out, out[-3000:]
    assert not victim.exists() or victim.read_bytes() == good
