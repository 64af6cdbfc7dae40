"""The commands around the pipeline: the app, the registry by hand, the local S3 + MLflow stack, the
DVC remote check and the params check."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

from melanoma.cli.common import METRICS_DIR, log, tracking
from melanoma.config import Params
from melanoma.errors import MelanomaError


def cmd_registry(params: Params, args: argparse.Namespace) -> None:
    from melanoma.registry import list_versions, promote, rollback

    name, uri = params.mlflow.registered_model, tracking(params).uri
    if args.action == "list":
        rows = list_versions(name, uri)
        for r in rows:
            print(json.dumps(r, sort_keys=True))
        if not rows:
            print(f"{name}: no versions in {uri}")
    elif args.action == "promote":
        print(json.dumps(promote(name, args.version, args.reason, uri), sort_keys=True))
    else:
        print(json.dumps(rollback(name, uri, args.reason), sort_keys=True))


TOKEN_ENV = "MELANOMA_SERVE_TOKEN"
TOKEN_HOW = f"set ${TOKEN_ENV} or pass --token-file PATH (a file only you can read)"


def read_token_file(path: Path) -> str:
    """The first line of ``path``, refused unless the file is private to its owner (mode 0600 or 0400):
    a token others on the machine can read protects nothing."""
    from melanoma.serve.auth import check_token

    if not path.exists():
        raise MelanomaError(f"--token-file {path}: no such file")
    if not path.is_file():
        raise MelanomaError(f"--token-file {path}: not a regular file")
    with path.open(encoding="utf-8") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)  # of the file read, not of a path swapped since
        if mode & 0o077:
            raise MelanomaError(
                f"--token-file {path}: mode {mode:04o} lets group or others read it; a token file must "
                f"be private to its owner (mode 0600): chmod 600 {path}"
            )
        token = f.readline().strip()
    if not token:
        raise MelanomaError(f"--token-file {path}: the first line is empty (it must hold the token)")
    try:
        return check_token(token)
    except MelanomaError as exc:
        raise MelanomaError(f"--token-file {path}: {exc}") from None


def serve_token(token_file: Path | None, environ: Mapping[str, str]) -> str | None:
    """The app's bearer token: ``$MELANOMA_SERVE_TOKEN`` or ``--token-file``, never params.yaml (it is in
    git). None when neither is given."""
    from melanoma.serve.auth import check_token

    from_env = environ.get(TOKEN_ENV)
    if from_env is not None and token_file is not None:
        raise MelanomaError(f"both ${TOKEN_ENV} and --token-file are given: use one of them")
    if token_file is not None:
        return read_token_file(token_file)
    if from_env is None:
        return None
    if not from_env.strip():
        raise MelanomaError(f"${TOKEN_ENV} is set but empty: set the token, or unset it")
    try:
        return check_token(from_env.strip())
    except MelanomaError as exc:
        raise MelanomaError(f"${TOKEN_ENV}: {exc}") from None


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to serve an unauthenticated app beyond loopback, unless ``--insecure`` accepts the risk."""
    from melanoma.serve.auth import is_loopback_host

    if token is not None or is_loopback_host(host):
        return
    if not insecure:
        raise MelanomaError(
            f"refusing to serve on --host {host} without a token: anyone who can reach that address "
            f"could use the model and its upload parser. {TOKEN_HOW}; or pass --insecure to accept "
            "the risk (or bind 127.0.0.1)"
        )
    log.warning("serve: --insecure: %s is not loopback and there is no token: anyone who can reach it "
                "can use the API", host)  # fmt: skip


def cmd_serve(params: Params, args: argparse.Namespace) -> None:
    import uvicorn

    from melanoma.serve import Limits, ModelHolder, create_app, load_folder, registry_holder

    # Before the model loads: a refused start costs nothing and binds nothing.
    token = serve_token(args.token_file, os.environ)
    check_exposure(args.host, token, args.insecure)
    if args.model_dir is not None:
        metrics = args.metrics or METRICS_DIR / f"{args.model_dir.resolve().name}.json"
        holder = ModelHolder(load_folder(args.model_dir, metrics if metrics.is_file() else None))
        poll = None
    else:
        holder = registry_holder(tracking(params).uri, params.mlflow.registered_model)
        poll = params.serve.poll_seconds
    served = holder.current
    limits = Limits(
        max_bytes=int(params.serve.max_upload_mb * 1_000_000),
        max_pixels=params.serve.max_pixels,
        max_batch=params.serve.max_batch,
    )
    config = uvicorn.Config(
        # reports_dir: the report and model card next to the served repository (run from its root)
        create_app(holder, limits, poll, token=token, reports_dir=METRICS_DIR.parent),
        host=args.host,
        port=args.port,
        log_level="warning",
    )
    if token is not None:
        log.info("serve: bearer token required on all but the page, /health and /docs (%s)",
                 "--token-file" if args.token_file else f"${TOKEN_ENV}")  # fmt: skip
    sock = config.bind_socket()  # bound before the line below, which names the port (--port 0 included)
    log.info("serve: %s (%s, threshold %.4f) on http://%s:%d", served.source, served.name,
             served.threshold, args.host, sock.getsockname()[1])  # fmt: skip
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)  # as uvicorn.run: the app did not start (its error is logged above)


def cmd_check(params: Params, args: argparse.Namespace) -> None:
    print(f"{args.params}: OK")


def cmd_stack(params: Params | None, args: argparse.Namespace) -> None:
    from melanoma import stack

    cfg = stack.StackConfig(
        root=args.dir.resolve(), s3_port=args.s3_port, mlflow_port=args.mlflow_port, timeout=args.timeout
    )
    if args.action == "up":
        # botocore >= 1.36 sends CRC checksums most non-AWS S3 servers reject (SeaweedFS included)
        env = {
            **os.environ,
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        }
        info = stack.up(cfg, env, bin_dir=Path(sys.executable).parent)
        print(f"S3 (SeaweedFS): {info.s3_endpoint}  buckets {info.dvc_bucket}, {info.mlflow_bucket}")
        print(f"MLflow UI:      {info.tracking_uri}  (artifacts in s3://{info.mlflow_bucket}/)")
        print(f"State and logs: {cfg.root}\n\n# point this shell and this repository at the stack:")
        print(info.exports())
    elif args.action == "down":
        stopped = stack.down(cfg)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing of {cfg.root} was running")
    else:
        state = stack.status(cfg)
        for name, s in state.items():
            port = s["ports"].get(name) if s["ports"] else None
            word = "ready" if s["ready"] else "running, not answering" if s["running"] else "stopped"
            print(f"{name:7} {word:24} pid {s['pid'] or '-':<8} port {port or '-'}")
        if not all(s["ready"] for s in state.values()):
            raise MelanomaError(f"the stack in {cfg.root} is not fully up")


def cmd_remote(params: Params | None, args: argparse.Namespace) -> None:
    from melanoma import stack

    print(stack.check_remote(Path.cwd(), args.remote))
