"""Grad-CAM at the backbone's last stage, and the most active feature maps.

A keras_tl model is a chain: pixels → "preprocess" → nested "backbone" → "pool" → head →
"predictions". Grad-CAM (Selvaraju et al., 2017) needs the backbone's output *and* the gradient of
the class score with respect to it, so the model is split into ``front`` (pixels → last-stage
feature map) and ``tail`` (feature map → probabilities), sharing the model's layers. The class
score is the log-probability of the predicted class: the model outputs probabilities, and the log
undoes the softmax's saturation for confident predictions.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np


def split_at_backbone(model, check_images: Optional[np.ndarray] = None):
    """(front, tail) Keras models with ``tail(front(x)) == model(x)``.

    The tail re-applies the outer layers after "backbone" in order, which is right for the chain
    a keras_tl model is; with ``check_images`` the identity is verified and a ValueError names the
    largest difference if the model is not such a chain.
    """
    import keras

    names = [layer.name for layer in model.layers]
    if "backbone" not in names or "preprocess" not in names:
        raise ValueError(f"expected a keras_tl model with layers 'preprocess' and 'backbone', got layers {names[:8]}")
    backbone = model.get_layer("backbone")
    pixels = keras.Input(shape=tuple(model.input.shape[1:]), name="pixels")
    fmap = backbone(model.get_layer("preprocess")(pixels))
    front = keras.Model(pixels, fmap, name="front")
    feat = keras.Input(shape=tuple(fmap.shape[1:]), name="last_stage")
    x = feat
    for layer in model.layers[names.index("backbone") + 1:]:
        x = layer(x)
    tail = keras.Model(feat, x, name="tail")
    if check_images is not None:
        ref = np.asarray(model(check_images, training=False), np.float64)
        got = np.asarray(tail(front(check_images, training=False), training=False), np.float64)
        err = float(np.max(np.abs(ref - got))) if ref.size else 0.0
        if ref.shape != got.shape or err > 1e-3:
            raise ValueError(f"the layers after 'backbone' do not form a chain (tail(front(x)) differs from model(x) by {err:.3g})")
    return front, tail


def class_scores(probs, classes):
    """log p(class) per example; a single sigmoid unit counts as two classes (p, 1 − p)."""
    from keras import ops

    probs = ops.cast(probs, "float32")
    if probs.shape[-1] == 1:
        p = probs[:, 0]
        chosen = ops.where(ops.cast(classes, "bool"), p, 1.0 - p)
    else:
        chosen = ops.sum(probs * ops.one_hot(classes, probs.shape[-1]), axis=-1)
    return ops.log(ops.maximum(chosen, 1e-12))


def predicted_classes(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs)
    return (probs[:, 0] >= 0.5).astype(np.int64) if probs.shape[-1] == 1 else probs.argmax(-1)


def gradcam(model, images: np.ndarray, class_index: Optional[Sequence[int]] = None, *, split=None
            ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grad-CAM heat maps [B, H, W] in [0, 1] at the images' resolution, for the predicted class
    (or ``class_index`` per image). Returns (heatmaps, classes, probabilities [B, K])."""
    import tensorflow as tf

    images = np.asarray(images, np.float32)
    front, tail = split or split_at_backbone(model)
    x = tf.convert_to_tensor(images)
    fmap = tf.cast(front(x, training=False), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(fmap)
        probs = tail(fmap, training=False)
        classes = predicted_classes(probs.numpy()) if class_index is None else np.asarray(class_index, np.int64)
        score = tf.reduce_sum(class_scores(probs, tf.constant(classes)))
    grads = tape.gradient(score, fmap)
    alpha = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(alpha * fmap, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy()
    peak = cam.reshape(len(cam), -1).max(1).reshape(-1, 1, 1)
    cam = np.where(peak > 0, cam / np.where(peak > 0, peak, 1.0), 0.0)
    return cam.astype(np.float32), classes, np.asarray(probs, np.float32)


def top_feature_maps(fmap: np.ndarray, k: int = 4) -> Tuple[np.ndarray, np.ndarray]:
    """The k channels with the highest mean activation per image: (channel indices [B, k],
    maps [B, k, H, W], each scaled to [0, 1])."""
    fmap = np.asarray(fmap, np.float32)
    k = min(k, fmap.shape[-1])
    strength = fmap.mean(axis=(1, 2))
    idx = np.argsort(-strength, axis=1)[:, :k]
    maps = np.take_along_axis(fmap, idx[:, None, None, :], axis=3).transpose(0, 3, 1, 2)
    lo = maps.min(axis=(2, 3), keepdims=True)
    hi = maps.max(axis=(2, 3), keepdims=True)
    return idx, (maps - lo) / np.where(hi > lo, hi - lo, 1.0)
