"""The ingest sections of params.yaml: where the raw images come from (``ingest``, ``external``).

One section per source (synthetic, isic, folder, challenge), the ``ingest`` section that selects
one, and ``external``, the same choice for an external test set. A rule that needs two fields is a
model validator of the section holding both; the URL rule is ``melanoma.urls``' (one copy).
"""

from __future__ import annotations

import re
from dataclasses import field
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from melanoma.config.section import Bool, Float, Int, Str, rule, section
from melanoma.urls import url_problem

# 'diagnosis:' as a field name (not diagnosis_1: ...): retired by the ISIC Archive in 2025-04.
_LEGACY_DX_RE = re.compile(r"(?<![A-Za-z0-9_])diagnosis\s*:")


def query_problem(query: str) -> str | None:
    """None, or why the ISIC server would refuse ``query`` (the retired ``diagnosis:`` field, as
    isic-cli refuses it), in words that say what to write instead."""
    if _LEGACY_DX_RE.search(query):
        return (
            "uses the retired field 'diagnosis:'; the archive now uses the hierarchical "
            'diagnosis_1 .. diagnosis_5, e.g. diagnosis_3:Melanoma* or diagnosis_2:"Malignant '
            'melanocytic proliferations (Melanoma)"'
        )
    return None


@section
class SyntheticParams:
    """The built-in synthetic ISIC-like sample (``ingest.source: synthetic``)."""

    n_images: Int = Field(default=2000, ge=1)
    melanoma_fraction: Float = Field(default=0.10, gt=0, lt=1)
    unlabeled_fraction: Float = Field(default=0.01, ge=0, lt=1)
    corrupt_count: Int = Field(default=4, ge=0)
    duplicate_count: Int = Field(default=3, ge=0)
    min_width: Int = Field(default=600, ge=64)
    max_width: Int = Field(default=2048, ge=64)
    max_images_per_lesion: Int = Field(default=3, ge=1)
    max_lesions_per_patient: Int = Field(default=4, ge=1)
    jpeg_quality: Int = Field(default=90, ge=1, le=100)

    @model_validator(mode="after")
    def _widths(self) -> SyntheticParams:
        if self.max_width < self.min_width:
            raise rule("max_width", f"must be >= min_width, which is {self.min_width}", self.max_width)
        return self


@section
class IsicParams:
    """The ISIC Archive API v2 (``ingest.source: isic``); see shared reference isic_api.md."""

    base_url: Str = "https://api.isic-archive.com/api/v2/"  # https; plain http only on loopback
    query: Str = ""  # ISIC search syntax, e.g. 'diagnosis_3:"Melanoma Invasive"'; empty = everything
    collections: tuple[Annotated[Int, Field(ge=0)], ...] = ()
    limit: Int = Field(default=0, ge=0)  # 0 = all matching images
    concurrency: Int = Field(default=16, ge=1, le=128)
    allowed_hosts: tuple[Str, ...] = ("api.isic-archive.com", "isic-archive.s3.amazonaws.com")
    retries: Int = Field(default=8, ge=0)
    backoff_seconds: Float = Field(default=1.0, ge=0)  # 0 = retry at once
    # The cap also bounds a server's Retry-After: 0 or less would ignore it (and hammer the server).
    max_backoff_seconds: Float = Field(default=60.0, gt=0)
    connect_timeout: Float = Field(default=3.05, gt=0)
    read_timeout: Float = Field(default=60.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if why := url_problem(value):
            raise ValueError(why)
        return value

    @field_validator("query")
    @classmethod
    def _current_fields(cls, value: str) -> str:
        if why := query_problem(value):
            raise ValueError(why)
        return value

    @model_validator(mode="after")
    def _backoff_cap(self) -> IsicParams:
        if self.max_backoff_seconds < self.backoff_seconds:
            raise rule(
                "max_backoff_seconds",
                f"must be >= backoff_seconds, which is {self.backoff_seconds}",
                self.max_backoff_seconds,
            )
        return self


@section
class FolderParams:
    """A local folder (``ingest.source: folder``): class subfolders, or images plus a metadata CSV."""

    path: Str = ""  # required when ingest.source is folder
    metadata_csv: Str = ""  # optional: a CSV with an image-name column and label columns


@section
class ChallengeParams:
    """ISIC challenge ground truth (``ingest.source: challenge``): 2016-2020 and HAM10000 formats."""

    format: Literal["auto", "2016", "2017", "2018", "2019", "2020", "ham10000"] = "auto"
    # Without download: local paths (both required). With download: file names selecting bucket
    # objects (empty = chosen automatically), fetched into data/challenge_cache/ and imported from there.
    ground_truth: Str = ""  # the ground-truth CSV
    images: Str = ""  # the folder (or, with download, the zip) of the challenge images
    metadata_csv: Str = ""  # optional extra metadata CSV (e.g. 2019/2020 patient, age, sex, site)
    download: Bool = False  # fetch from the public ISIC bucket first (needs the internet)
    bucket_url: Str = "https://isic-archive.s3.amazonaws.com"  # with download: https (http on loopback)
    prefix: Str = ""  # e.g. challenges/2020/; required with download


@section
class IngestParams:
    """Where the raw images come from."""

    source: Literal["synthetic", "isic", "folder", "challenge"] = "synthetic"
    workers: Int = Field(default=0, ge=0)  # 0 = all cores
    allow_partial: Bool = False  # exit 0 even when some images failed (they are listed in the report)
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    isic: IsicParams = field(default_factory=IsicParams)
    folder: FolderParams = field(default_factory=FolderParams)
    challenge: ChallengeParams = field(default_factory=ChallengeParams)

    @model_validator(mode="after")
    def _source_settings(self) -> IngestParams:
        """What the selected source needs (the others' settings are unused, so not required)."""
        if self.source == "folder" and not self.folder.path:
            raise rule(
                "folder.path", "must be set (the folder of images to import) when source is folder", ""
            )
        ch = self.challenge
        if self.source == "challenge" and not ch.download:
            for name in ("ground_truth", "images"):
                if not getattr(ch, name):
                    raise rule(
                        f"challenge.{name}",
                        "must be set when source is challenge (or set challenge.download)",
                        getattr(ch, name),
                    )
        if self.source == "challenge" and ch.download:
            if not ch.prefix.strip("/"):
                raise rule(
                    "challenge.prefix",
                    "must be set with download: the bucket folder, e.g. challenges/2020/",
                    ch.prefix,
                )
            if why := url_problem(ch.bucket_url):
                raise rule("challenge.bucket_url", why, ch.bucket_url)
        return self


@section
class ExternalParams(IngestParams):
    """An external labeled test set (never trained or tuned on), scored by evaluate beside the test split.

    Any ingest source; ``none`` turns it off. Its images are prepared exactly as the training data.
    """

    # synthetic by default: a small built-in external set, so the offline pipeline shows external validation
    source: Literal["none", "synthetic", "isic", "folder", "challenge"] = "synthetic"  # type: ignore[assignment]
    name: Str = "synthetic external (seed 1)"  # the report's label, e.g. "ISIC 2019 test"; empty = source
    seed: Int = Field(default=1, ge=0)  # the synthetic generator's seed (differs from base.seed: new images)
    # 400 images, not ingest's 2000: enough for a bootstrap CI, cheap for make run
    synthetic: SyntheticParams = field(default_factory=lambda: SyntheticParams(n_images=400))
