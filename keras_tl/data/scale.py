"""Masked pixels and flux scaling: one implementation, used by training and by the export.

Telescope data arrive as float fluxes (values around 0..3, NaN where a pixel is masked), but
every pretrained backbone's own preprocessing (caffe mean subtraction, [-1, 1], torch) expects
pixels in 0..255. ``data.nan`` says what a NaN pixel becomes and ``data.scale`` maps each band
into 0..255 before that preprocessing. :func:`apply` does both; the training pipeline calls it
on every image after decoding and resizing, and the exported SavedModel calls the same function
on its input, so the SavedModel takes raw fluxes and cannot drift from training.

The transform is per image and per band: its statistics (median, percentiles) come from the
image itself. Dataset-level statistics were considered and not taken:
- per-image statistics are stateless: nothing is fitted, so nothing can leak from val/test into
  training, nothing has to be stored in the export, and the transform of an image depends only on
  that image (deterministic under any split, subset, order or parallelism);
- cutouts from different fields, epochs or surveys differ in sky level and zero point; a fixed,
  dataset-wide stretch is dominated by the brightest objects and leaves faint ones near black;
- the cost: the absolute brightness of an object is normalised away (its shape and colours,
  i.e. band ratios within the clip range, are kept). A study where total flux matters can keep
  ``method: none`` and compare.

Tensors are float32 ``[H, W, C]`` or ``[B, H, W, C]``; everything here is TensorFlow ops, so the
pipeline (per image) and the SavedModel (per batch) run the same graph on the same values.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

NAN_POLICIES = ("error", "zero", "median")
SCALE_METHODS = ("auto", "none", "percentile", "asinh")
# What ``method: auto`` picks for float data. Measured (README, Data: recipes/probe_scaling.yaml):
# linear probes of ImageNet EfficientNet-Lite0 features on 5-band float cutouts, best stage, 500 val
# images: none 0.280, percentile 0.666, asinh 0.646 (softening 0.1) / 0.632 (0.02); percentile >=
# asinh at 7 of 9 stages.
AUTO_FLOAT = "percentile"


def resolve(data, eight_bit: bool) -> dict:
    """The input transform for ``data`` (a DataConfig) on a source whose values are 8-bit or not.

    Returns ``{"nan": policy, "scale": {"method", ["clip"], ["softening"]}}``: what run.json and
    export.json record and what :func:`apply` takes (``auto`` is resolved here).
    """
    s = data.scale
    method = s.method
    if method == "auto":
        method = "none" if eight_bit else AUTO_FLOAT
    scale = {"method": method}
    if method in ("percentile", "asinh"):
        scale["clip"] = [float(s.clip[0]), float(s.clip[1])]
    if method == "asinh":
        scale["softening"] = float(s.softening)
    return {"nan": data.nan, "scale": scale}


def describe(data, eight_bit: bool) -> dict:
    """:func:`resolve` plus what was asked for and why (for run.json)."""
    spec = resolve(data, eight_bit)
    out = {**spec["scale"], "requested": data.scale.method, "per": "image and band"}
    if data.scale.method == "auto":
        out["reason"] = ("8-bit values (0..255) are what the backbones' preprocessing expects" if eight_bit
                         else f"float values: {AUTO_FLOAT}, the scaling that probed best (README, Data)")
    return out


def identity() -> dict:
    """The transform of exports written before scaling existed: NaN refused, values unchanged."""
    return {"nan": "error", "scale": {"method": "none"}}


def check(spec: Optional[dict]) -> dict:
    """``spec`` validated (a ValueError names the bad part); None means :func:`identity`."""
    if spec is None:
        return identity()
    if not isinstance(spec, dict) or spec.get("nan") not in NAN_POLICIES or not isinstance(spec.get("scale"), dict):
        raise ValueError(f"input transform: expected {{nan: {'|'.join(NAN_POLICIES)}, scale: {{method: ...}}}}, got {spec!r}")
    sc = spec["scale"]
    method = sc.get("method")
    if method not in ("none", "percentile", "asinh"):
        raise ValueError(f"input transform: scale.method must be none, percentile or asinh (auto is resolved before), got {method!r}")
    if method != "none":
        lo, hi = sc.get("clip", (None, None))
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 <= lo < hi <= 100):
            raise ValueError(f"input transform: scale.clip must be [low, high] with 0 <= low < high <= 100, got {sc.get('clip')!r}")
    if method == "asinh" and not (isinstance(sc.get("softening"), (int, float)) and sc["softening"] > 0):
        raise ValueError(f"input transform: scale.softening must be > 0, got {sc.get('softening')!r}")
    return spec


# ------------------------------------------------------------------- TF ops


def array_problem(arr: np.ndarray, data) -> Tuple[Optional[str], int]:
    """Why a decoded (H, W, C) array cannot be used under ``data`` (None if it can), and its NaN count."""
    if arr.shape[-1] != data.channels:
        return f"has {arr.shape[-1]} bands (shape {arr.shape}) but data.channels is {data.channels}", 0
    if not np.issubdtype(arr.dtype, np.floating):
        return None, 0
    nan = np.isnan(arr)
    n_nan = int(nan.sum())
    n_inf = int(np.isinf(arr).sum())
    if n_inf:
        return f"contains {n_inf} infinite values (NaN marks masked pixels; inf is not a flux)", n_nan
    if n_nan and data.nan == "error":
        return (f"has {n_nan} NaN pixels of {arr.size} (masked pixels?); set data.nan: zero or median to fill them"), n_nan
    if n_nan and data.nan == "median":
        empty = [k for k in range(arr.shape[-1]) if nan[..., k].all()]
        if empty:
            return f"band {empty[0]} is all NaN: data.nan: median has no value to fill it with (use zero, or drop the file)", n_nan
    return None, n_nan


def _batched(fn, images):
    """Run ``fn`` on [B, H, W, C]; a single [H, W, C] image is a batch of one."""
    import tensorflow as tf

    x = tf.convert_to_tensor(images, tf.float32)
    if x.shape.rank == 3:
        return fn(x[None])[0]
    if x.shape.rank != 4:
        raise ValueError(f"expected images [H, W, C] or [B, H, W, C], got shape {x.shape}")
    return fn(x)


def _bands_sorted(x):
    """[B, H, W, C] -> [B, C, H*W], each band's values in ascending order."""
    import tensorflow as tf

    b, c = tf.shape(x)[0], tf.shape(x)[3]
    flat = tf.reshape(tf.transpose(x, [0, 3, 1, 2]), tf.stack([b, c, -1]))
    return tf.sort(flat, axis=-1)


def _take(sorted_, index):
    """sorted_[b, c, index[b, c]] for every b, c."""
    import tensorflow as tf

    return tf.gather(sorted_, index[..., None], axis=-1, batch_dims=2)[..., 0]


def percentiles(images, q_low: float, q_high: float):
    """Per image and band, the ``q_low`` and ``q_high`` percentiles (0..100) of ``images``
    [B, H, W, C] with linear interpolation between order statistics (NumPy's default method).
    Returns two [B, C] tensors."""
    import tensorflow as tf

    s = _bands_sorted(images)
    n = tf.shape(s)[-1]
    out = []
    for q in (q_low, q_high):
        # float64 positions: H*W reaches 16.7 M at 4096 px, past float32's integer precision.
        pos = tf.cast(n - 1, tf.float64) * (float(q) / 100.0)
        lo = tf.cast(tf.floor(pos), tf.int32)
        hi = tf.minimum(lo + 1, n - 1)
        frac = tf.cast(pos - tf.floor(pos), tf.float32)
        shape = tf.shape(s)[:2]
        a = _take(s, tf.fill(shape, lo))
        b = _take(s, tf.fill(shape, hi))
        out.append(a + (b - a) * frac)
    return out[0], out[1]


def _fill_nan(x, policy: str):
    import tensorflow as tf

    if policy == "error":
        # Training never gets here with NaN (the pre-training scan refuses such files); a serving
        # client that sends NaN gets this error instead of NaN probabilities.
        return tf.debugging.check_numerics(x, "pixels hold NaN or inf and the model was trained with data.nan: error")
    nan = tf.math.is_nan(x)
    if policy == "zero":
        return tf.where(nan, tf.zeros_like(x), x)
    # median: of each band's finite pixels (NumPy's median: the mean of the two middle values).
    finite = tf.math.is_finite(x)
    n = tf.reduce_sum(tf.cast(tf.transpose(finite, [0, 3, 1, 2]), tf.int32), axis=[2, 3])  # [B, C]
    s = _bands_sorted(tf.where(finite, x, tf.fill(tf.shape(x), float("inf"))))
    lo, hi = tf.maximum((n - 1) // 2, 0), tf.maximum(n // 2, 0)
    med = (_take(s, lo) + _take(s, hi)) / 2.0
    # A band with no finite pixel has no median: the scan refuses such files before training; in
    # serving it becomes 0 (keras_tl.predict refuses such files too).
    med = tf.where(n > 0, med, tf.zeros_like(med))
    return tf.where(nan, tf.broadcast_to(med[:, None, None, :], tf.shape(x)), x)


def fill_nan(images, policy: str):
    """NaN pixels per ``policy``: ``zero``, ``median`` (the band's own median over its finite
    pixels) or ``error`` (an InvalidArgumentError if any value is NaN or inf)."""
    if policy not in NAN_POLICIES:
        raise ValueError(f"data.nan: expected one of {', '.join(NAN_POLICIES)}, got {policy!r}")
    return _batched(lambda x: _fill_nan(x, policy), images)


def _scale(x, scale: dict):
    import tensorflow as tf

    method = scale["method"]
    if method == "none":
        return x
    lo, hi = percentiles(x, *scale["clip"])
    lo, hi = lo[:, None, None, :], hi[:, None, None, :]
    span = hi - lo
    # A flat band (high percentile == low percentile) carries no contrast: it maps to 0.
    u = tf.where(span > 0, (x - lo) / tf.where(span > 0, span, tf.ones_like(span)), tf.zeros_like(x))
    u = tf.clip_by_value(u, 0.0, 1.0)
    if method == "asinh":
        # Softening in units of the band's clip range: below it the stretch is linear, above it
        # logarithmic (Lupton et al. 2004, as survey colour images are made).
        soft = float(scale["softening"])
        u = tf.asinh(u / soft) / tf.asinh(tf.constant(1.0 / soft, tf.float32))
    return u * 255.0


def scale(images, spec: dict):
    """``images`` mapped into 0..255 per image and band by ``spec["scale"]``: ``none`` (unchanged),
    ``percentile`` (the band's clip[0] and clip[1] percentiles go to 0 and 255, linear between,
    clipped outside) or ``asinh`` (the same range, then asinh(u / softening) / asinh(1 / softening))."""
    sc = check(spec)["scale"]
    return _batched(lambda x: _scale(x, sc), images)


def apply(images, spec: Optional[dict]):
    """The whole input transform: NaN policy, then scaling (see the module docstring)."""
    spec = check(spec)
    return _batched(lambda x: _scale(_fill_nan(x, spec["nan"]), spec["scale"]), images)
