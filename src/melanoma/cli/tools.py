"""The commands around the pipeline: the app, the registry by hand, the local S3 + MLflow stack, the
DVC remote check and the params check."""

from __future__ import annotations

import argparse
import json
import os
import sys
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


def cmd_serve(params: Params, args: argparse.Namespace) -> None:
    import uvicorn

    from melanoma.serve import Limits, ModelHolder, create_app, load_folder, registry_holder

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
        create_app(holder, limits, poll), host=args.host, port=args.port, log_level="warning"
    )
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
