"""Command line: one subcommand per pipeline stage (the dvc.yaml cmds call these).

This is the only place that reads params.yaml and the environment; it passes typed values on.
"""

# This package: the parser and main here; the commands of the stages in stages.py, the other
# commands in tools.py, what they share (paths, environment, tracking settings) in common.py.

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from melanoma.cli.common import (
    EXTERNAL_DIR,
    PREPARED_DIR,
    RAW_DIR,
    REGISTRY_JSON,
    SPLITS_DIR,
    log,
    pin_numerics,
    quiet_third_parties,
    repo_root,
)
from melanoma.cli.stages import (
    cmd_evaluate,
    cmd_external,
    cmd_ingest,
    cmd_prepare,
    cmd_register,
    cmd_report,
    cmd_split,
    cmd_train,
    ingest_source,
)
from melanoma.cli.tools import cmd_check, cmd_registry, cmd_remote, cmd_serve, cmd_stack
from melanoma.config import MODEL_NAMES, Params, load_params
from melanoma.errors import MelanomaError

Command = Callable[[Params | None, argparse.Namespace], None]  # what a subcommand runs

__all__ = ["build_parser", "ingest_source", "main", "pin_numerics", "repo_root"]


def _command(
    sub: argparse._SubParsersAction, name: str, func: Command, about: str, **paths: Path
) -> argparse.ArgumentParser:
    """The subcommand ``name``, run by ``func``, with a ``--<key>`` path option per keyword (its default)."""
    p = sub.add_parser(name, help=about)
    for key, default in paths.items():
        p.add_argument(f"--{key}", type=Path, default=default)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="melanoma", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    _command(sub, "ingest", cmd_ingest, "write data/raw from the configured source", out=RAW_DIR)
    _command(sub, "prepare", cmd_prepare, "clean and resize data/raw into data/prepared",
             raw=RAW_DIR, out=PREPARED_DIR)  # fmt: skip
    p = _command(sub, "external", cmd_external,
                 "import, prepare and leakage-guard the external test set into data/external")  # fmt: skip
    p.add_argument("--prepared", type=Path, default=PREPARED_DIR, help="the training data (leakage guard)")
    p.add_argument("--out", type=Path, default=EXTERNAL_DIR)
    _command(sub, "split", cmd_split, "patient-grouped stratified train/val/test split",
             prepared=PREPARED_DIR, out=SPLITS_DIR)  # fmt: skip

    for name, func in (("train", cmd_train), ("evaluate", cmd_evaluate)):
        p = _command(sub, name, func, f"{name} one model")
        p.add_argument("model", choices=MODEL_NAMES)
        p.add_argument("--prepared", type=Path, default=PREPARED_DIR)
        p.add_argument("--splits", type=Path, default=SPLITS_DIR)
        if name == "train":
            p.add_argument("--out", type=Path, default=None)
        else:
            p.add_argument("--model-dir", type=Path, default=None)
            p.add_argument("--external", type=Path, default=EXTERNAL_DIR, help="the external stage's output")

    p = _command(
        sub, "register", cmd_register, "register the best model (validation AUC); promote it by the rule"
    )
    p.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    for key, default in (("prepared", PREPARED_DIR), ("splits", SPLITS_DIR), ("out", REGISTRY_JSON)):
        p.add_argument(f"--{key}", type=Path, default=default)

    p = sub.add_parser("registry", help="list versions, promote one by hand, roll the champion back")
    acts = p.add_subparsers(dest="action", required=True)
    acts.add_parser("list", help="versions with aliases and metrics")
    a = acts.add_parser("promote", help="make VERSION the champion (a reason is required and recorded)")
    a.add_argument("version", type=int)
    a.add_argument("--reason", required=True)
    a = acts.add_parser("rollback", help="champion back to the previous one")
    a.add_argument("--reason", default=None)
    p.set_defaults(func=cmd_registry)

    p = sub.add_parser("report", help="write reports/README.md, model_card.md and figures/")
    p.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    p.add_argument("--root", type=Path, default=Path("."), help="the repository (pipeline layout below it)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("stack", help="local S3 (SeaweedFS) + MLflow server on 127.0.0.1: up, down, status")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("MELANOMA_STACK_DIR", ".stack")),
        help="state, data and logs (default .stack, or $MELANOMA_STACK_DIR)",
    )
    free = "; 0: a free one the stack picks (up prints it; status and down read it from the state)"
    p.add_argument("--s3-port", type=int, default=int(os.environ.get("MELANOMA_S3_PORT", "8333")),
                   help=f"default 8333 or $MELANOMA_S3_PORT{free}")  # fmt: skip
    p.add_argument("--mlflow-port", type=int, default=int(os.environ.get("MELANOMA_MLFLOW_PORT", "5050")),
                   help=f"default 5050 or $MELANOMA_MLFLOW_PORT{free}")  # fmt: skip
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each server")
    p.set_defaults(func=cmd_stack)

    p = sub.add_parser("serve", help="the app: the champion (or --model-dir) in a web page and a JSON API")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default: loopback only; any other needs a token or --insecure)")  # fmt: skip
    p.add_argument("--port", type=int, default=8000, help="default 8000; 0: a free one, logged as bound")
    p.add_argument(
        "--model-dir", type=Path, default=None, help="serve this model folder instead of the registry"
    )
    p.add_argument("--metrics", type=Path, default=None,
                   help="with --model-dir: its metrics JSON (default reports/metrics/<folder name>.json)")  # fmt: skip
    p.add_argument("--token-file", type=Path, default=None,
                   help="require this bearer token (the file's first line; mode 0600) on every request but "
                        "the page, /health and /docs; or set $MELANOMA_SERVE_TOKEN")  # fmt: skip
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without a token: anyone who reaches it can use the API")  # fmt: skip
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("remote", help="check that the DVC remote is reachable with these credentials")
    p.add_argument("action", choices=("check",))
    p.add_argument("--remote", default=None, help="remote name (default: core.remote)")
    p.set_defaults(func=cmd_remote)

    p = sub.add_parser("check", help="validate params.yaml and exit")
    p.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``melanoma`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    quiet_third_parties()
    try:
        # the stack and the remote check need no params.yaml
        params = (
            None if args.func in (cmd_stack, cmd_remote) else load_params(args.params)
        )  # validated before any work
        if params is not None:
            pin_numerics(params.train.cpu_isa, params.train.threads)
        args.func(params, args)
    except MelanomaError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    return 0
