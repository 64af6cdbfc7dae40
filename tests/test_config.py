"""params.yaml validation: unknown keys, wrong types and ranges fail before any work."""

from pathlib import Path

import pytest
import yaml

from melanoma.config import Params, flatten, load_params, params_from_dict
from melanoma.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.prepare.image_size == 100
    assert params.split.test_fraction == pytest.approx(0.2)
    assert params.split.group_by == ("patient_id", "lesion_id")


def test_empty_file_gives_defaults() -> None:
    assert params_from_dict(None) == Params()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prepare": {"image_sise": 100}}, "unknown key 'prepare.image_sise' (did you mean 'image_size'?)"),
        ({"prepar": {}}, "unknown key 'prepar' (did you mean 'prepare'?)"),
        ({"prepare": {"image_size": "100"}}, "'prepare.image_size' must be int, got str '100'"),
        ({"prepare": {"image_size": 100.5}}, "'prepare.image_size' must be int"),
        ({"prepare": {"draft": "yes"}}, "'prepare.draft' must be bool"),
        ({"prepare": {"fit": "stretch"}}, "'prepare.fit' must be one of 'crop', 'squash', 'pad'"),
        ({"split": {"test_fraction": 1.5}}, "'split.test_fraction' must be between 0 and 1"),
        ({"split": {"group_by": "patient_id"}}, "'split.group_by' must be a list of str"),
        ({"baseline": {"candidates": ["svm"]}}, "'baseline.candidates[0]' must be one of"),
        ({"train": {"target_sensitivity": "high"}}, "'train.target_sensitivity' must be float or null"),
        ({"base": {"seed": True}}, "'base.seed' must be int, got bool"),
        ({"ingest": {"synthetic": {"min_width": 900, "max_width": 800}}}, "max_width"),
        ({"ingest": {"source": "web"}}, "'ingest.source' must be one of 'synthetic', 'isic'"),
        ({"prepare": 3}, "'prepare' must be a mapping"),
    ],
)
def test_bad_values_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        params_from_dict(data)
    assert message in str(err.value)


def test_ints_accepted_for_floats_and_lists_become_tuples() -> None:
    params = params_from_dict(
        {"split": {"test_fraction": 0.25, "group_by": ["lesion_id"]}, "evaluate": {"ci": 0.9}}
    )
    assert params.split.group_by == ("lesion_id",)
    assert isinstance(params_from_dict({"baseline": {"learning_rate": 1}}).baseline.learning_rate, float)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("prepare: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_params(tmp_path / "nope.yaml")


def test_flatten_gives_dotted_scalar_keys() -> None:
    flat = flatten(Params())
    assert flat["prepare.image_size"] == 100
    assert flat["ingest.synthetic.n_images"] == Params().ingest.synthetic.n_images
    assert flat["split.group_by"] == "patient_id,lesion_id"
    assert all(not isinstance(v, dict | tuple | list) for v in flat.values())


def test_cli_check_rejects_bad_params(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from melanoma.cli import main

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"prepare": {"image_size": "big"}}))
    assert main(["--params", str(path), "check"]) == 2
    path.write_text(yaml.safe_dump({"prepare": {"image_size": 64}}))
    assert main(["--params", str(path), "check"]) == 0


def test_params_yaml_spells_out_the_defaults() -> None:
    """params.yaml and the dataclass defaults must not drift apart (benchmarks use the defaults)."""
    assert load_params(REPO / "params.yaml") == Params()
