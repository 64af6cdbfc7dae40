"""The commands of the pipeline's stages (the dvc.yaml cmds call these): each reads its params and
paths and calls its stage module with typed values."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from melanoma.cli.common import METRICS_DIR, MODELS_DIR, PLOTS_DIR, log, tracking
from melanoma.config import IngestParams, Params


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
    train_model(args.model, args.prepared, args.splits, out, params, tracking(params), keras_home, members)


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
        tracking(params),
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
        tracking(params),
        margin=params.register.margin,
        allow_unscored_champion=params.register.allow_unscored_champion,
        test_split_hash=split_hash_of(data_hashes(args.prepared, args.splits)),
        scorer=make_scorer(*split_arrays(images, test), metadata_rows(test)),
        min_images_only_sensitivity=params.train.target_sensitivity,
    )
    write_registry_decision(args.out, decision.record)
    log.info("register: %s (%s)", decision.record["action"], decision.record["reason"])


def cmd_report(params: Params, args: argparse.Namespace) -> None:
    from melanoma.report import ReportPaths, write_report

    written = write_report(ReportPaths.under(args.root), list(args.models), seed=params.base.seed)
    log.info("report: wrote %d files under %s", len(written), args.root / "reports")
