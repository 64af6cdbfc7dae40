"""/predict with optional patient metadata: form fields or query parameters, images alone unchanged.

The app is driven in process through the ASGI protocol (no server, no HTTP client needed): the real
FastAPI app over a real baseline folder trained on metadata.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd
import pytest

from helpers import asgi_request, jpeg_bytes, lesion_image
from melanoma.config import BaselineParams
from melanoma.contracts import write_model_json
from melanoma.images import load_resized
from melanoma.models.baseline import fit_baseline
from melanoma.serve import Limits, ModelHolder, create_app, load_folder
from melanoma.serve.intake import IntakeError, parse_form, patient_metadata

LIMITS = Limits(max_bytes=200_000, max_pixels=1_000_000, max_batch=4)
SIZE = 24


def form(*parts: tuple[str, str | None, bytes], boundary: str = "b0undary") -> tuple[bytes, str]:
    """A multipart body: (field name, filename or None for a text field, bytes)."""
    body = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        ctype = "Content-Type: image/jpeg\r\n" if filename else ""
        body += f"--{boundary}\r\nContent-Disposition: {disp}\r\n{ctype}\r\n".encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_form_text_fields_are_collected_beside_the_file() -> None:
    body, ctype = form(
        ("file", "a.jpg", b"\xff\xd8\xffxx"), ("age_approx", None, b"55"), ("sex", None, b"male")
    )
    uploads, fields = parse_form(body, ctype, ("file",), ("age_approx", "sex", "site"))
    assert [u.filename for u in uploads] == ["a.jpg"] and fields == {"age_approx": "55", "sex": "male"}
    twice, ctype = form(("file", "a.jpg", b"\xff\xd8\xff"), ("sex", None, b"male"), ("sex", None, b"female"))
    with pytest.raises(IntakeError, match="'sex' sent twice"):
        parse_form(twice, ctype, ("file",), ("sex",))


def test_patient_metadata_row_from_form_and_query() -> None:
    assert patient_metadata({}, {"age_approx": None, "sex": "", "site": None}) is None
    row = patient_metadata({"sex": "female"}, {"age_approx": "62", "site": "Trunk"})
    assert row is not None and row.to_dict("records") == [
        {"sex": "female", "age_approx": 62.0, "site": "Trunk"}
    ]
    for sources, status, message in [
        (({"age_approx": "sixty"},), 422, "age 'sixty' is not a number"),
        (({"age_approx": "130"},), 422, "age_approx: age '130'"),
        (({"site": "x" * 101},), 422, "site: at most 100 characters"),
        (({"sex": "male"}, {"sex": "female"}), 400, "'sex' given twice"),
    ]:
        with pytest.raises(IntakeError, match=message) as err:
            patient_metadata(*sources)
        assert err.value.status == status


def call(
    app: Any, path: str, body: bytes, content_type: str, query: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One POST through the ASGI interface; the status and the decoded JSON answer."""
    status, _, payload = asgi_request(app, "POST", path, body, content_type, query)
    return status, json.loads(payload)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A baseline whose images say nothing and whose age and site do, served from its folder."""
    rng = np.random.default_rng(0)
    n = 120
    y = (rng.random(n) < 0.3).astype(int)
    # JPEGs decoded as prepare (and the app) decode them, so served uploads look like training images
    x = np.stack(
        [
            load_resized(jpeg_bytes(lesion_image(rng, bool(rng.random() < 0.5), 40, 30)), SIZE, "crop")
            for _ in range(n)
        ]
    )
    meta = pd.DataFrame(
        {
            "age_approx": np.where(y == 1, rng.normal(72, 5, n), rng.normal(32, 6, n)).round(),
            "site": np.where(y == 1, "Lower extremity", "Trunk"),
        }
    )
    params = BaselineParams(candidates=("logistic_regression",), metadata=("age_approx", "site"))
    model, _ = fit_baseline(x, y, x, y, params, 0, SIZE, meta_train=meta, meta_val=meta)
    folder = tmp_path_factory.mktemp("served") / "baseline"
    folder.mkdir()
    model.save(folder)
    write_model_json(folder, {"name": "baseline", "family": "baseline", "image_size": SIZE, "threshold": 0.5})
    return create_app(ModelHolder(load_folder(folder)), LIMITS)


def test_predict_uses_metadata_from_the_query_or_the_form_and_still_works_without(app: Any) -> None:
    image = jpeg_bytes(lesion_image(np.random.default_rng(5), False, 40, 30))
    status, alone = call(app, "/predict", image, "image/jpeg")
    assert status == 200 and 0 <= alone["probability"] <= 1 and "metadata" not in alone
    # a model that reads metadata, given none, says so (most uploads come without it)
    (warning,) = alone["warnings"]
    assert "reads age_approx, site, and none was given" in warning

    old_leg = {"age_approx": "75", "site": "lower extremity"}
    status, high = call(app, "/predict", image, "image/jpeg", old_leg)
    assert status == 200
    assert high["metadata"] == {
        "given": {"age_approx": 75.0, "site": "lower extremity"},
        "used_by_model": ["age_approx", "site"],
    }
    body, ctype = form(("file", "a.jpg", image), ("age_approx", None, b"28"), ("site", None, b"Trunk"))
    status, low = call(app, "/predict", body, ctype)
    assert status == 200 and low["metadata"]["given"] == {"age_approx": 28.0, "site": "Trunk"}
    assert high["probability"] > low["probability"]  # the same image: only the metadata differs

    status, sex_only = call(
        app, "/predict", image, "image/jpeg", {"sex": "female"}
    )  # a column it does not use
    assert status == 200 and sex_only["probability"] == pytest.approx(alone["probability"])
    assert sex_only["warnings"] == alone["warnings"]  # sex alone is none of what it reads
    assert "warnings" not in high and "warnings" not in low
    body, ctype = form(("files", "a.jpg", image), ("files", "b.jpg", image))
    status, batch = call(app, "/predict/batch", body, ctype)
    assert status == 200 and batch["warnings"] == alone["warnings"]  # a batch takes no metadata

    status, bad = call(app, "/predict", image, "image/jpeg", {"age_approx": "old"})
    assert status == 422 and "age 'old' is not a number" in bad["detail"]
