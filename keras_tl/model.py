"""Build the Keras model a recipe describes: raw pixels in, float32 probabilities out.

Layers, in order (names are part of the contract; freeze, probe, visualize and export use them):

``pixels`` (Input, float32 raw pixel units, 0..255 for 8-bit images)
→ ``preprocess`` (:class:`keras_tl.layers.Preprocess`, the backbone family's own input transform)
→ ``backbone`` (nested keras.Model, keras.applications layer names, cut after ``model.cut_after``)
→ ``pool`` (avg | max | flatten)
→ ``head_dense_{i}`` [``head_bn_{i}``, ``head_activation_{i}``] [``head_dropout_{i}``] for each
  ``model.head`` block i = 0, 1, ... (the index of ``--set model.head.<i>...``)
→ ``head_dropout`` → ``predictions`` (Dense, float32 even under mixed precision).

Outputs: ``multiclass`` → softmax over ``num_classes``; ``multilabel`` → one sigmoid per class;
``binary`` → ONE sigmoid unit, the probability of class index 1 (num_classes must be 2; train
with binary cross-entropy on 0/1 labels).
"""

from __future__ import annotations

import contextlib

import keras

from keras_tl import backbones
from keras_tl.errors import UserError
from keras_tl.layers import Preprocess

def _pool(kind: str):
    if kind == "avg":
        return keras.layers.GlobalAveragePooling2D(name="pool")
    if kind == "max":
        return keras.layers.GlobalMaxPooling2D(name="pool")
    if kind == "flatten":
        return keras.layers.Flatten(name="pool")
    raise UserError(f"model.pooling: expected avg, max or flatten, got {kind!r}")


def _output(kind: str, num_classes: int):
    if num_classes < 2:
        raise UserError(f"the data has {num_classes} class(es); a classifier needs at least 2")
    if kind == "multiclass":
        return num_classes, "softmax"
    if kind == "multilabel":
        return num_classes, "sigmoid"
    if kind == "binary":
        if num_classes != 2:
            raise UserError(f"model.output: binary needs exactly 2 classes, the data has {num_classes}; use multiclass")
        return 1, "sigmoid"
    raise UserError(f"model.output: expected multiclass, multilabel or binary, got {kind!r}")


def reinit_stages(backbone, entry, stages, input_shape) -> list:
    """Re-initialise every weight of the layers in ``stages`` with fresh initializer draws.

    A freshly built random backbone of the same architecture supplies the draws (seeded by the
    caller's ``keras.utils.set_random_seed``), so each layer gets its own Keras initializers.
    Returns the names of the layers changed.
    """
    stages = set(stages)
    if not stages:
        return []
    fresh = {l.name: l for l in backbones.build_backbone(entry, input_shape, weights=None).layers}
    changed = []
    for layer in backbone.layers:
        if layer.weights and backbones.stage_of(entry, layer.name) in stages:
            layer.set_weights(fresh[layer.name].get_weights())
            changed.append(layer.name)
    return changed


def set_bn_momentum(backbone, momentum: float) -> int:
    """Set the moving-statistics momentum of every BatchNormalization layer in ``backbone``; returns how many."""
    n = 0
    stack = list(backbone.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
            n += 1
        stack.extend(getattr(layer, "layers", []))
    return n


def build_model(recipe, num_classes: int, weights_info=None) -> keras.Model:
    """The full model for ``recipe`` with ``num_classes`` outputs (see the module docstring).

    Initial backbone weights come from :func:`keras_tl.weights.build_weighted_backbone`; the
    :class:`~keras_tl.weights.WeightsInfo` used is kept on the model as ``model.keras_tl_weights``.
    """
    from keras_tl import weights as weights_mod

    m = recipe.model
    entry = backbones.get(m.backbone)
    h, w = recipe.data.image_size
    c = recipe.data.channels
    units, activation = _output(m.output, num_classes)
    backbone, info = weights_mod.build_weighted_backbone(recipe, weights_info)
    if m.reinit:
        reinit_stages(backbone, entry, m.reinit, (h, w, c))
    if m.bn_momentum is not None:
        set_bn_momentum(backbone, m.bn_momentum)

    pixels = keras.Input((h, w, c), name="pixels", dtype="float32")
    x = Preprocess(entry.preprocess, c, entry.name, name="preprocess")(pixels)
    x = backbone(x)
    x = _pool(m.pooling)(x)
    for i, block in enumerate(m.head):
        reg = keras.regularizers.L2(block.l2) if block.l2 else None
        if block.batch_norm:
            x = keras.layers.Dense(block.units, kernel_regularizer=reg, name=f"head_dense_{i}")(x)
            x = keras.layers.BatchNormalization(name=f"head_bn_{i}")(x)
            x = keras.layers.Activation(block.activation, name=f"head_activation_{i}")(x)
        else:
            x = keras.layers.Dense(block.units, activation=block.activation, kernel_regularizer=reg, name=f"head_dense_{i}")(x)
        if block.dropout:
            x = keras.layers.Dropout(block.dropout, name=f"head_dropout_{i}")(x)
    x = keras.layers.Dropout(m.head_dropout, name="head_dropout")(x)
    out = keras.layers.Dense(units, activation=activation, dtype="float32", name="predictions")(x)
    model = keras.Model(pixels, out, name=recipe.name)
    model.keras_tl_weights = info
    return model


def backbone_entry(model) -> backbones.Backbone:
    """The registry entry a keras_tl model was built from."""
    return backbones.get(model.get_layer("preprocess").backbone)


def feature_extractor(model) -> keras.Model:
    """pixels → pooled backbone features, sharing layers (and weights) with ``model``."""
    return keras.Model(model.input, model.get_layer("pool").output, name="features")


@contextlib.contextmanager
def optimizer_detached(model):
    """``with optimizer_detached(model):`` the model has no optimizer inside the block.

    Keras 3 saves a compiled model's optimizer variables with it, in ``.keras`` files and in
    ``save_weights`` alike, with no option to leave them out (Adam: two per weight, so a fine-tuned
    ResNet-50 checkpoint was 277 MB instead of 95 MB). Exports and the best/phase checkpoints are
    only ever loaded as weights; the optimizer is put back whatever happens.
    """
    optimizer = getattr(model, "optimizer", None)
    model.optimizer = None
    try:
        yield model
    finally:
        model.optimizer = optimizer


def inference_function(model):
    """``model(x, training=False)`` compiled once for every batch size (float32 pixels in).

    One trace with an unknown batch dimension. ``reduce_retracing`` traced twice instead (the
    full batch, then the last partial one), which cost ResNet-50 0.9 s per call site.
    """
    import tensorflow as tf

    spec = tf.TensorSpec([None, *model.input.shape[1:]], tf.float32)
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return lambda x: fn(tf.cast(x, tf.float32))


def head_model(model) -> keras.Model:
    """pooled features → predictions, sharing the head layers with ``model``."""
    names = [l.name for l in model.layers]
    pool = model.get_layer("pool")
    feats = keras.Input(tuple(pool.output.shape[1:]), name="features", dtype=pool.output.dtype)
    x = feats
    for layer in model.layers[names.index("pool") + 1 :]:
        x = layer(x)
    return keras.Model(feats, x, name="head")


def stage_model(model) -> keras.Model:
    """pixels → {stage: feature map at the end of that stage} for every stage present."""
    entry = backbone_entry(model)
    bb = model.get_layer("backbone")
    present = {l.name for l in bb.layers}
    outs = {}
    for stage in entry.stages:
        name = backbones.stage_output_layer(entry, stage)
        if name in present:
            outs[stage] = bb.get_layer(name).output
    inner = keras.Model(bb.input, outs, name="stages")
    pixels = keras.Input(tuple(model.input.shape[1:]), name="pixels", dtype="float32")
    return keras.Model(pixels, inner(model.get_layer("preprocess")(pixels)), name="stage_features")
