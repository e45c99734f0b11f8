"""What a phase compiles with: its optimizer and learning-rate schedule, the loss, the metrics and
the label encoding that loss expects. Imports Keras only when called."""

from __future__ import annotations

import math

from keras_tl import recipe as recipe_lib


def lr_schedule(phase: recipe_lib.Phase, steps_per_epoch: int):
    """The phase's learning rate: a float when constant without warm-up, else a :class:`PhaseSchedule`."""
    total = max(1, phase.epochs * steps_per_epoch)
    warmup = int(round(phase.warmup_epochs * steps_per_epoch))
    boundaries = [e * steps_per_epoch for e in phase.step_epochs]
    if phase.schedule == "constant" and warmup == 0:
        return phase.lr
    return PhaseSchedule(phase.lr, total, warmup, phase.schedule, boundaries, phase.step_factor)


def make_optimizer(phase: recipe_lib.Phase, steps_per_epoch: int):
    """The phase's optimizer with its learning-rate schedule; ``weight_decay`` exactly as the recipe says."""
    import keras

    lr = lr_schedule(phase, steps_per_epoch)
    wd = phase.weight_decay or None  # None: Keras adds no decay step at all
    if phase.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=phase.momentum, weight_decay=wd)
    if phase.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=lr, weight_decay=wd)
    # AdamW requires a number; 0 is Adam. (It once became 1e-4 silently.)
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=phase.weight_decay)


def _schedule_class():
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="keras_tl")
    class PhaseSchedule(keras.optimizers.schedules.LearningRateSchedule):
        """Linear warm-up, then constant | cosine | step | linear decay over the phase."""

        def __init__(self, lr, total_steps, warmup_steps=0, kind="constant", boundaries=(), factor=0.1):
            self.lr, self.total_steps, self.warmup_steps = float(lr), int(total_steps), int(warmup_steps)
            self.kind, self.boundaries, self.factor = kind, list(boundaries), float(factor)

        def __call__(self, step):
            step = ops.cast(step, "float32")
            warm = float(max(self.warmup_steps, 1))
            span = float(max(self.total_steps - self.warmup_steps, 1))
            t = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            if self.kind == "cosine":
                lr = 0.5 * self.lr * (1.0 + ops.cos(math.pi * t))
            elif self.kind == "linear":
                lr = self.lr * (1.0 - t)
            elif self.kind == "step":
                n = sum(ops.cast(step >= b, "float32") for b in self.boundaries) if self.boundaries else 0.0
                lr = self.lr * ops.power(self.factor, n)
            else:
                lr = self.lr + 0.0 * step
            if self.warmup_steps > 0:
                lr = ops.where(step < self.warmup_steps, self.lr * (step + 1.0) / warm, lr)
            return lr

        def get_config(self):
            return dict(lr=self.lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
                        kind=self.kind, boundaries=self.boundaries, factor=self.factor)

    return PhaseSchedule


def PhaseSchedule(*args, **kwargs):  # noqa: N802 (a class, built lazily so this module imports without TF)
    global PhaseSchedule
    PhaseSchedule = _schedule_class()
    return PhaseSchedule(*args, **kwargs)


def loss_and_metrics(num_outputs: int, phase: recipe_lib.Phase, top_k: int):
    """(loss, metrics) for a model with ``num_outputs`` outputs (1: binary, sigmoid)."""
    import keras

    if num_outputs == 1:
        loss = keras.losses.BinaryCrossentropy(label_smoothing=phase.label_smoothing)
        return loss, [keras.metrics.BinaryAccuracy(name="accuracy")]
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=phase.label_smoothing)
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    k = min(top_k, num_outputs - 1)
    if k >= 2:
        metrics.append(keras.metrics.TopKCategoricalAccuracy(k=k, name=f"top{k}"))
    return loss, metrics


def encode_labels(ds, num_outputs: int):
    """(images, int labels) batches → the targets :func:`loss_and_metrics`'s loss expects."""
    import tensorflow as tf

    if ds is None:
        return None
    if num_outputs == 1:
        return ds.map(lambda x, y: (x, tf.cast(tf.reshape(y, [-1, 1]), tf.float32)))
    return ds.map(lambda x, y: (x, tf.one_hot(tf.cast(y, tf.int32), num_outputs)))
