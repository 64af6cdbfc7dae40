"""serve/ pure pieces: multipart parsing in memory, upload checks, decode = prepare's, the Grad-CAM split."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers import jpeg_bytes, lesion_image
from melanoma.images import load_resized
from melanoma.serve.intake import IntakeError, Limits, Upload, check_upload, decode, parse_multipart

LIMITS = Limits(max_bytes=200_000, max_pixels=1_000_000, max_batch=4)


def jpeg(seed: int = 0) -> bytes:
    return jpeg_bytes(lesion_image(np.random.default_rng(seed), True))


def form(*parts: tuple[str, str, bytes, str], boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b""
    for name, filename, data, ctype in parts:
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {ctype}\r\n\r\n"
            ).encode()
            + data
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_is_parsed_in_memory_and_only_file_fields_kept() -> None:
    body, ctype = form(("file", "a.jpg", jpeg(), "image/jpeg"), ("note", "n.txt", b"hi", "text/plain"))
    parts = parse_multipart(body, ctype, ("file",))
    assert [(p.filename, p.content_type) for p in parts] == [("a.jpg", "image/jpeg")]
    assert parts[0].data == jpeg()


@pytest.mark.parametrize(
    ("upload", "status"),
    [
        (Upload(b"", "image/jpeg"), 400),
        (Upload(b"GIF89a....", "application/octet-stream"), 415),
        (Upload(jpeg(), "image/png"), 415),
        (Upload(jpeg(), "image/webp"), 415),
        (Upload(b"\xff\xd8\xff" + bytes(300_000), "image/jpeg"), 413),
    ],
)
def test_uploads_refused_before_decoding(upload: Upload, status: int) -> None:
    with pytest.raises(IntakeError) as err:
        check_upload(upload, LIMITS)
    assert err.value.status == status


def test_decode_gives_prepares_pixels_and_guards_pixel_count() -> None:
    data = jpeg(3)
    assert np.array_equal(decode(Upload(data, ""), LIMITS, 32, "crop"), load_resized(data, 32, "crop"))
    buf = io.BytesIO()
    Image.new("L", (2000, 1000)).save(buf, "PNG")
    with pytest.raises(IntakeError, match="pixels") as err:
        decode(Upload(buf.getvalue(), "image/png"), LIMITS, 32, "crop")
    assert err.value.status == 413


def test_grad_cam_splits_a_nested_model_without_changing_its_output() -> None:
    import keras

    from melanoma.models.deep.layers import Preprocess
    from melanoma.serve.explain import grad_cam_explainer, split_at_last_conv

    keras.utils.set_random_seed(0)
    b_in = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(b_in)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    backbone = keras.Model(b_in, keras.layers.GlobalAveragePooling2D()(x), name="backbone")
    f_in = keras.Input((16, 16, 3))
    features = keras.Model(f_in, backbone(Preprocess("unit")(f_in)), name="features")
    h_in = keras.Input((4,))
    head = keras.Model(h_in, keras.layers.Dense(1, activation="sigmoid")(h_in), name="head")
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, head(features(inputs)))

    front, back, name = split_at_last_conv(model)
    images = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3)).astype("float32")
    maps = front(images)
    assert name == "features/backbone/conv" and tuple(maps.shape) == (2, 16, 16, 4)
    np.testing.assert_allclose(np.asarray(back(maps)), np.asarray(model(images)), rtol=1e-5)
    out = grad_cam_explainer(model)(images[0].astype(np.uint8))
    assert out["kind"] == "grad-cam" and out["grid"] == [16, 16]
