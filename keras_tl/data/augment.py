"""Training-time augmentation from ``data.augment``, with stateless random ops.

Each example gets its own seed (a pair of int64 from a seeded
``tf.data.Dataset.random`` stream that changes every epoch), so a run with the
same ``recipe.seed`` sees exactly the same augmented images, in any order of
parallel execution. Everything works in raw pixel units: brightness scales
(multiplicatively, so it needs no notion of the pixel range), contrast scales
around the per-channel mean, noise is Gaussian with stddev in pixel units.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import tensorflow as tf

ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)  # the usual Inception-style crop aspect ratios


def is_active(cfg) -> bool:
    """Whether ``cfg`` (AugmentConfig) changes images at all."""
    return bool(cfg.flip or cfg.rot90 or cfg.random_resized_crop or cfg.brightness or cfg.contrast or cfg.noise)


def make_augment(cfg, image_size: Tuple[int, int], clip_max: Optional[float]) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """A function ``(image [H, W, C] float32, seed [2] int64) -> image`` applying ``cfg``.

    Order: random resized crop, flips, rot90 (any quarter turn for square images, 0 or 180
    degrees otherwise so the shape is kept), brightness, contrast, noise; then values are
    clipped to [0, clip_max] when ``clip_max`` is given (8-bit sources).
    """
    h, w = int(image_size[0]), int(image_size[1])
    rrc = tuple(cfg.random_resized_crop) if cfg.random_resized_crop else None

    def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=7)
        if rrc is not None:
            begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.shape(image),
                bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
                seed=seeds[0],
                min_object_covered=0.0,
                aspect_ratio_range=ASPECT_RANGE,
                area_range=rrc,
                max_attempts=10,
                use_image_if_no_bounding_boxes=True,
            )
            image = tf.image.resize(tf.slice(image, begin, size), (h, w))
        if cfg.flip:
            image = tf.image.stateless_random_flip_left_right(image, seeds[1])
            image = tf.image.stateless_random_flip_up_down(image, seeds[2])
        if cfg.rot90:
            if h == w:
                k = tf.random.stateless_uniform([], seeds[3], 0, 4, dtype=tf.int32)
            else:
                k = 2 * tf.random.stateless_uniform([], seeds[3], 0, 2, dtype=tf.int32)
            image = tf.image.rot90(image, k)
        if cfg.brightness:
            factor = tf.random.stateless_uniform([], seeds[4], 1.0 - cfg.brightness, 1.0 + cfg.brightness)
            image = image * factor
        if cfg.contrast:
            image = tf.image.stateless_random_contrast(image, 1.0 - cfg.contrast, 1.0 + cfg.contrast, seeds[5])
        if cfg.noise:
            image = image + cfg.noise * tf.random.stateless_normal(tf.shape(image), seeds[6])
        if clip_max is not None:
            image = tf.clip_by_value(image, 0.0, clip_max)
        return tf.ensure_shape(image, [h, w, None])

    return augment
