"""Command line: one subcommand per pipeline stage (the dvc.yaml cmds call these).

This is the only place that reads params.yaml and the environment; it passes typed values on.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args, get_type_hints

from melanoma.config import MODEL_NAMES, IngestParams, Params, TrainParams, load_params
from melanoma.errors import MelanomaError

log = logging.getLogger("melanoma")

RAW_DIR = Path("data/raw")
PREPARED_DIR = Path("data/prepared")
SPLITS_DIR = Path("data/splits")
EXTERNAL_DIR = Path("data/external")
MODELS_DIR = Path("models")
METRICS_DIR = Path("reports/metrics")
PLOTS_DIR = Path("reports/plots")
REGISTRY_JSON = Path("reports/registry.json")


def _quiet_third_parties() -> None:
    # Offline by design: no telemetry from MLflow, DVC or anything honouring DO_NOT_TRACK.
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    for name in ("mlflow", "alembic", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(name).setLevel(logging.WARNING)


def pin_numerics(cpu_isa: str, threads: int) -> None:
    """Set the CPU numerics every TensorFlow stage runs with, before TensorFlow is imported.

    ``cpu_isa`` (``train.cpu_isa``) caps oneDNN's instruction set, ``threads`` (``train.threads``)
    fixes TensorFlow's intra-op thread count: both decide the order of float sums, so both decide
    the trained bytes. The stages set them themselves (not the user), so a fresh clone on another
    CPU trains the same bytes.
    """
    if "tensorflow" in sys.modules:  # too late to change oneDNN's ISA in this process
        log.warning("numerics: TensorFlow is already loaded; train.cpu_isa/threads may not apply")
    if cpu_isa != "native":
        # oneDNN's levels as train.cpu_isa lists them, lowest first: the cap never raises what the
        # environment already caps lower (a machine or a user that cannot run more).
        levels = [i for i in get_args(get_type_hints(TrainParams)["cpu_isa"]) if i != "native"]
        given = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
        if given in levels and levels.index(given) < levels.index(cpu_isa):
            log.warning("numerics: ONEDNN_MAX_CPU_ISA=%s is below train.cpu_isa=%s: kept, and the trained "
                        "bytes will differ from a %s run", given, cpu_isa, cpu_isa)  # fmt: skip
        else:
            os.environ["ONEDNN_MAX_CPU_ISA"] = cpu_isa
    if threads > 0:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)


def repo_root() -> Path:
    """The user's repository: DVC's ``DVC_ROOT`` when a stage runs under DVC, else the current folder.

    ``dvc exp run --temp`` and ``dvc queue`` run stages in a throwaway copy under ``.dvc/tmp/exps``
    but point ``DVC_ROOT`` at the parent repository, so runs land in the store ``mlflow ui`` reads.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def _tracking(params: Params):  # noqa: ANN202 - avoids importing mlflow at startup
    from melanoma.tracking import Tracking, default_artifact_location, default_tracking_uri, git_commit

    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    root = repo_root()
    return Tracking(
        uri=env_uri or default_tracking_uri(root),
        experiment=params.mlflow.experiment,
        # Only a local sqlite store needs an explicit artifact folder; a server decides its own.
        artifact_location=None if env_uri else default_artifact_location(root),
        # The code that ran is the workspace's (an experiment's temp copy has its own commit).
        git_commit=git_commit(Path.cwd()),
        dvc_exp_name=os.environ.get("DVC_EXP_NAME"),
        dvc_exp_baseline_rev=os.environ.get("DVC_EXP_BASELINE_REV"),
    )


def ingest_source(out: Path, ing: IngestParams, seed: int, section: str = "ingest") -> dict:
    """Import ``ing.source`` into the raw layout at ``out``; the one dispatch of ingest and external.

    ``section`` names the params section in messages (``ingest`` or ``external``). Raises
    IncompleteError when items failed, unless ``ing.allow_partial``.
    """
    from melanoma import atomic
    from melanoma.errors import DataError, IncompleteError

    try:
        if ing.source == "synthetic":
            from melanoma.sources.synthetic import generate_synthetic

            with atomic.atomic_dir(out) as tmp:
                report = generate_synthetic(tmp, ing.synthetic, seed, ing.workers)
        elif ing.source == "isic":
            from melanoma.sources.isic import download_isic

            # Downloads in place (each file atomically), so a killed run resumes where it stopped.
            report = download_isic(out, ing.isic)
        elif ing.source == "folder":
            from melanoma.sources.folder import import_folder

            with atomic.atomic_dir(out) as tmp:
                report = import_folder(tmp, ing.folder, seed)
        elif ing.source == "challenge":
            from melanoma.sources.challenge import import_challenge

            with atomic.atomic_dir(out) as tmp:
                report = import_challenge(tmp, ing.challenge)
        else:
            raise DataError(f"{section}.source {ing.source!r}: not an importable source")
    except DataError as exc:
        if section == "ingest":
            raise
        # The importers name their keys as under ingest:; here the same keys are under external:.
        raise DataError(str(exc).replace("ingest.", f"{section}.")) from exc
    failures = report.get("failures", [])
    log.info(
        "%s (%s): %s images in %s, %d failed",
        section,
        ing.source,
        report.get("n_images", "?"),
        out,
        len(failures),
    )
    if failures:
        for f in failures[:10]:
            log.error("%s failure: %s", section, f)
        if not ing.allow_partial:
            raise IncompleteError(
                f"{section}: {len(failures)} item(s) failed (listed in {out}/ingest_report.json); "
                f"fix the input or rerun to retry downloads, or set {section}.allow_partial: true to "
                "continue without them"
            )
    return report


def cmd_ingest(params: Params, args: argparse.Namespace) -> None:
    ingest_source(args.out, params.ingest, params.base.seed)


def cmd_external(params: Params, args: argparse.Namespace) -> None:
    import tempfile

    from melanoma.external import finish_external, write_no_external
    from melanoma.prepare import prepare

    ext = params.external
    if ext.source == "none":
        write_no_external(args.out)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # Scratch raw and prepared folders next to the output (same disk), removed afterwards: only the
    # guarded, prepared set is the stage's output.
    with tempfile.TemporaryDirectory(prefix=f".{args.out.name}-work-", dir=args.out.parent) as work:
        raw, prepared = Path(work) / "raw", Path(work) / "prepared"
        ingest_report = ingest_source(raw, ext, ext.seed, section="external")
        prepare(raw, prepared, params.prepare)
        finish_external(raw, prepared, args.prepared, args.out, source=ext.source,
                        name=ext.name or ext.source, ingest_report=ingest_report)  # fmt: skip


def cmd_prepare(params: Params, args: argparse.Namespace) -> None:
    from melanoma.prepare import prepare

    prepare(args.raw, args.out, params.prepare)


def cmd_split(params: Params, args: argparse.Namespace) -> None:
    from melanoma.contracts import load_prepared, write_splits
    from melanoma.split import split_frame, split_report

    _, index = load_prepared(args.prepared)
    frames = split_frame(index, params.split, params.base.seed)
    report = split_report(frames)
    write_splits(args.out, frames, report)
    for name in ("train", "val", "test"):
        r = report[name]
        log.info(
            "split %-5s %5d images, %4d melanoma (%.3f)",
            name,
            r["n"],
            r["n_melanoma"],
            r["melanoma_fraction"],
        )


def cmd_train(params: Params, args: argparse.Namespace) -> None:
    from melanoma.train import train_model

    out = args.out or MODELS_DIR / args.model
    keras_home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))  # Keras' own cache convention
    # the ensemble combines the trained members' folders (dvc.yaml: the ensemble stage's deps)
    members = {m: MODELS_DIR / m for m in params.ensemble.members} if args.model == "ensemble" else None
    train_model(args.model, args.prepared, args.splits, out, params, _tracking(params), keras_home, members)


def cmd_evaluate(params: Params, args: argparse.Namespace) -> None:
    from melanoma.evaluate import evaluate_model

    evaluate_model(
        args.model,
        args.model_dir or MODELS_DIR / args.model,
        args.prepared,
        args.splits,
        METRICS_DIR / f"{args.model}.json",
        PLOTS_DIR / args.model,
        params.evaluate,
        params.base.seed,
        _tracking(params),
        external_dir=args.external,
    )


def cmd_register(params: Params, args: argparse.Namespace) -> None:
    from melanoma.contracts import (
        data_hashes,
        load_prepared,
        load_splits,
        split_arrays,
        write_registry_decision,
    )
    from melanoma.metadata import metadata_rows
    from melanoma.registry import Candidate, make_scorer, register, split_hash_of

    candidates = [Candidate(name, MODELS_DIR / name, METRICS_DIR / f"{name}.json") for name in args.models]
    images, _ = load_prepared(args.prepared)
    test = load_splits(args.splits)["test"]
    decision = register(
        candidates,
        params.mlflow.registered_model,
        _tracking(params),
        margin=params.register.margin,
        allow_unscored_champion=params.register.allow_unscored_champion,
        test_split_hash=split_hash_of(data_hashes(args.prepared, args.splits)),
        scorer=make_scorer(*split_arrays(images, test), metadata_rows(test)),
    )
    write_registry_decision(args.out, decision.record)
    log.info("register: %s (%s)", decision.record["action"], decision.record["reason"])


def cmd_registry(params: Params, args: argparse.Namespace) -> None:
    from melanoma.registry import list_versions, promote, rollback

    name, uri = params.mlflow.registered_model, _tracking(params).uri
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


def cmd_report(params: Params, args: argparse.Namespace) -> None:
    from melanoma.report import ReportPaths, write_report

    written = write_report(ReportPaths.under(args.root), list(args.models), seed=params.base.seed)
    log.info("report: wrote %d files under %s", len(written), args.root / "reports")


def cmd_serve(params: Params, args: argparse.Namespace) -> None:
    import uvicorn

    from melanoma.serve import Limits, ModelHolder, create_app, load_folder, registry_holder

    if args.model_dir is not None:
        metrics = args.metrics or METRICS_DIR / f"{args.model_dir.resolve().name}.json"
        holder = ModelHolder(load_folder(args.model_dir, metrics if metrics.is_file() else None))
        poll = None
    else:
        holder = registry_holder(_tracking(params).uri, params.mlflow.registered_model)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="melanoma", description=__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameters file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="write data/raw from the configured source")
    p.add_argument("--out", type=Path, default=RAW_DIR)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("prepare", help="clean and resize data/raw into data/prepared")
    p.add_argument("--raw", type=Path, default=RAW_DIR)
    p.add_argument("--out", type=Path, default=PREPARED_DIR)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "external", help="import, prepare and leakage-guard the external test set into data/external"
    )
    p.add_argument("--prepared", type=Path, default=PREPARED_DIR, help="the training data (leakage guard)")
    p.add_argument("--out", type=Path, default=EXTERNAL_DIR)
    p.set_defaults(func=cmd_external)

    p = sub.add_parser("split", help="patient-grouped stratified train/val/test split")
    p.add_argument("--prepared", type=Path, default=PREPARED_DIR)
    p.add_argument("--out", type=Path, default=SPLITS_DIR)
    p.set_defaults(func=cmd_split)

    for name, func in (("train", cmd_train), ("evaluate", cmd_evaluate)):
        p = sub.add_parser(name, help=f"{name} one model")
        p.add_argument("model", choices=MODEL_NAMES)
        p.add_argument("--prepared", type=Path, default=PREPARED_DIR)
        p.add_argument("--splits", type=Path, default=SPLITS_DIR)
        if name == "train":
            p.add_argument("--out", type=Path, default=None)
        else:
            p.add_argument("--model-dir", type=Path, default=None)
            p.add_argument("--external", type=Path, default=EXTERNAL_DIR, help="the external stage's output")
        p.set_defaults(func=func)

    p = sub.add_parser("register", help="register the best model (validation AUC); promote it by the rule")
    p.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    p.add_argument("--prepared", type=Path, default=PREPARED_DIR)
    p.add_argument("--splits", type=Path, default=SPLITS_DIR)
    p.add_argument("--out", type=Path, default=REGISTRY_JSON)
    p.set_defaults(func=cmd_register)

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
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000; 0: a free one, logged as bound")
    p.add_argument(
        "--model-dir", type=Path, default=None, help="serve this model folder instead of the registry"
    )
    p.add_argument("--metrics", type=Path, default=None,
                   help="with --model-dir: its metrics JSON (default reports/metrics/<folder name>.json)")  # fmt: skip
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
    _quiet_third_parties()
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


if __name__ == "__main__":
    sys.exit(main())
