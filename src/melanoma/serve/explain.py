"""What the model looked at: Grad-CAM for the Keras models, the lesion mask for the baseline.

Grad-CAM (Selvaraju et al. 2017): the gradient of P(melanoma) with respect to the last convolutional
feature map, averaged over space, weights that map's channels; their ReLU'd sum, upsampled, is the
heat map. The network is split at that map generically, recursing into nested models (the transfer
model is ``image -> features(backbone) -> head``), so it works for the CNN and every backbone.

The baseline has no convolutions; it sees colour statistics, texture and the lesion mask its shape
features are computed on (Otsu threshold on grey), so it shows that mask and those summaries.

An ensemble shows Grad-CAM of its first deep member (named in the answer), or, with no deep member,
the image without a heat map and a note saying why.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import numpy as np
from matplotlib.colors import rgb_to_hsv
from PIL import Image

from melanoma.features import shape_features
from melanoma.images import resize_array

DISPLAY = 256  # pixels per side of the explanation image
Explainer = Callable[[np.ndarray], dict[str, Any]]


def png_b64(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _upscale(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image, "RGB").resize((DISPLAY, DISPLAY), Image.Resampling.BILINEAR))


def colormap(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 on a blue-cyan-yellow-red ramp (no matplotlib needed at request time)."""
    stops = np.array([[0, 0, 128], [0, 160, 255], [255, 230, 0], [220, 0, 0]], np.float64)
    x = np.clip(values, 0, 1) * (len(stops) - 1)
    i = np.minimum(x.astype(int), len(stops) - 2)
    t = (x - i)[..., None]
    return (stops[i] * (1 - t) + stops[i + 1] * t).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Model input (S, S, 3) and a heat map in [0, 1] of any size -> DISPLAY-sized blended RGB."""
    base = _upscale(image).astype(np.float64)
    heat_img = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8), "L")
    heat_up = np.asarray(heat_img.resize((DISPLAY, DISPLAY), Image.Resampling.BILINEAR)) / 255.0
    return (base * (1 - alpha) + colormap(heat_up) * alpha).astype(np.uint8)


# ------------------------------------------------------------------------------- Grad-CAM
def _is_4d(layer: Any) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):
        return False


def _has_4d_inside(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model) and any(_is_4d(sub) or _has_4d_inside(sub) for sub in layer.layers)


def _chain(layers: list[Any]) -> Callable[[Any], Any]:
    def run(x: Any) -> Any:
        for layer in layers:
            x = layer(x)
        return x

    return run


def split_at_last_conv(model: Any) -> tuple[Callable[[Any], Any], Callable[[Any], Any], str]:
    """(images -> last spatial feature map, feature map -> P(melanoma), the map's layer name).

    The last 4-D layer that is not a pooling layer is the map (pooling only coarsens it); a nested
    model with no 4-D output (a backbone ending in global pooling) is split inside, recursively.
    The layers after the split must form a chain, which holds for our heads.
    """
    import keras

    layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
    pooling = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    idx = None
    for i, layer in enumerate(layers):
        if (_is_4d(layer) and not isinstance(layer, pooling)) or (
            not _is_4d(layer) and _has_4d_inside(layer)
        ):
            idx = i
    if idx is None:
        raise ValueError(f"{model.name}: no convolutional feature map to explain")
    target, tail = layers[idx], _chain(layers[idx + 1 :])
    if _is_4d(target):
        front = keras.Model(model.inputs, target.output)
        return front, tail, target.name
    head_of = _chain(layers[:idx])  # a nested model is reached through the chain before it
    inner_front, inner_back, name = split_at_last_conv(target)
    return (lambda x: inner_front(head_of(x))), (lambda m: tail(inner_back(m))), f"{target.name}/{name}"


def grad_cam_explainer(model: Any) -> Explainer:
    """Grad-CAM over a Keras model that maps pixels in [0, 255] to P(melanoma)."""
    import tensorflow as tf

    front, back, layer_name = split_at_last_conv(model)

    @tf.function(reduce_retracing=True)
    def cam(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            maps = front(x, training=False) if hasattr(front, "layers") else front(x)
            tape.watch(maps)
            prob = tf.reshape(back(maps), (-1,))
        grads = tape.gradient(prob, maps)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        heat = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))
        return heat, prob

    def explain(image: np.ndarray) -> dict[str, Any]:
        heat, prob = cam(tf.convert_to_tensor(image[None], dtype=tf.float32))
        heat = np.asarray(heat)[0]
        peak = float(heat.max())
        heat = heat / peak if peak > 0 else heat
        return {
            "kind": "grad-cam",
            "layer": layer_name,
            "grid": list(heat.shape),
            "image_png_b64": png_b64(overlay(image, heat)),
            "note": "the image as the model sees it; red: regions that raised P(melanoma) most (Grad-CAM)",
        }

    return explain


# ------------------------------------------------------------------------------- baseline
def lesion_mask_explainer() -> Explainer:
    """What the baseline's features saw: the Otsu lesion mask and the colour and shape summaries."""

    def explain(image: np.ndarray) -> dict[str, Any]:
        gray8 = (0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]).astype(np.uint8)
        shape, mask = shape_features(gray8[None])
        area, compactness, asym_lr, asym_ud, offset = (float(v) for v in shape[0])
        m = mask[0]
        hsv = rgb_to_hsv(image.astype(np.float64) / 255.0)
        inside = image[m] if m.any() else image.reshape(-1, 3)
        outline = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        shown = image.copy()
        shown[~m] = (shown[~m] * 0.45).astype(np.uint8)  # dim what is outside the lesion
        shown[outline] = (0, 255, 255)
        return {
            "kind": "lesion-mask",
            "image_png_b64": png_b64(_upscale(shown)),
            "summary": {
                "lesion_area_fraction": round(area, 4),
                "compactness": round(compactness, 4),
                "asymmetry_left_right": round(asym_lr, 4),
                "asymmetry_up_down": round(asym_ud, 4),
                "centroid_offset": round(offset, 4),
                "mean_rgb_inside": [round(float(c), 1) for c in inside.mean(0)],
                "colour_spread_inside": round(float(hsv[m].std(0).mean()) if m.any() else 0.0, 4),
            },
            "note": "the baseline sees colour, texture and this lesion mask (darker than the Otsu threshold)",
        }

    return explain


# ------------------------------------------------------------------------------- ensemble
def deep_member(classifier: Any) -> tuple[str, Any] | None:
    """An ensemble's first member with a convolutional network (cnn or transfer), or None."""
    for name, member in (getattr(classifier, "members", None) or {}).items():
        if getattr(member, "family", None) == "keras":
            return name, member
    return None


def ensemble_explainer(classifier: Any) -> Explainer:
    """Grad-CAM of the ensemble's first deep member; with none, the image without a heat map.

    The combined score has no single feature map, so the heat map shows what one member looked at.
    """
    names = ", ".join(classifier.members)
    found = deep_member(classifier)
    if found is None:
        note = f"no heat map: none of this ensemble's members ({names}) is a convolutional network"

        def plain(image: np.ndarray) -> dict[str, Any]:
            return {"kind": "none", "image_png_b64": png_b64(_upscale(image)), "note": note}

        return plain
    name, member = found
    cam = grad_cam_explainer(member.model)
    size, fit = int(member.image_size), str(member.fit)

    def explain(image: np.ndarray) -> dict[str, Any]:
        out = cam(resize_array(image, size, fit))  # the member's own input size
        out["member"] = name
        out["note"] = (
            f"Grad-CAM of the ensemble's member {name} (members: {names}); red: regions that "
            f"raised {name}'s P(melanoma) most"
        )
        return out

    return explain


def explanation_kind(classifier: Any) -> str:
    """What ``make_explainer`` gives for this model: grad-cam, lesion-mask or none."""
    family = getattr(classifier, "family", None)
    if family == "ensemble":
        return "grad-cam" if deep_member(classifier) else "none"
    return "grad-cam" if family == "keras" else "lesion-mask"


def make_explainer(classifier: Any) -> Explainer:
    """The explainer that fits a loaded model: Grad-CAM for Keras, the lesion mask for the baseline,
    Grad-CAM of a deep member for an ensemble."""
    family = getattr(classifier, "family", None)
    if family == "keras":
        return grad_cam_explainer(classifier.model)
    if family == "ensemble":
        return ensemble_explainer(classifier)
    return lesion_mask_explainer()
