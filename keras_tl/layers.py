"""keras_tl's custom Keras layers, and loading the ``.keras`` files keras_tl writes (safe mode).

Kept apart from model.py and weights.py, which both need them, so neither imports the other.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_tl import backbones
from keras_tl.errors import UserError

# ImageNet statistics used by keras.applications.imagenet_utils.preprocess_input.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)
# EfficientNet-Lite's input normalisation, the same for every channel: the "inception-style" mean
# and std of the TF EfficientNet-Lite training code (efficientnet_lite_builder.py: MEAN_RGB = [127.0]*3,
# STDDEV_RGB = [128.0]*3), chosen there for post-quantisation accuracy.
LITE_MEAN = 127.0
LITE_STD = 128.0


@keras.saving.register_keras_serializable(package="keras_tl")
class Preprocess(keras.layers.Layer):
    """A backbone family's input preprocessing as a layer (so exported models take raw pixels).

    For 3 channels each mode equals ``keras.applications.<family>.preprocess_input``:

    - ``caffe`` (ResNet): RGB → BGR, then subtract the ImageNet BGR channel means.
    - ``tf`` (ResNetV2): x / 127.5 - 1.
    - ``torch`` (DenseNet): x / 255, subtract the ImageNet RGB means, divide by the RGB stds.
    - ``lite`` (EfficientNet-Lite): (x - 127) / 128, as the TF EfficientNet-Lite models were trained.
    - ``none`` (EfficientNet, MobileNetV3, ConvNeXt): identity; the Keras model preprocesses.

    For C != 3 channels there is no colour order: ``caffe`` subtracts the mean of the three
    channel means from every band (no flip); ``torch`` uses the mean of the three means and the
    mean of the three stds for every band; ``tf``, ``lite`` and ``none`` are channel-independent anyway.
    Computes in float32 whatever the global precision policy.
    """

    def __init__(self, mode: str, channels: int = 3, backbone: str = "", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in backbones.PREPROCESS_MODES:
            raise UserError(f"Preprocess: mode must be one of {', '.join(backbones.PREPROCESS_MODES)}, got {mode!r}")
        self.mode = mode
        self.channels = int(channels)
        self.backbone = backbone  # registry name, so later tools know the stage layout

    def call(self, x):
        x = ops.cast(x, "float32")
        rgb = self.channels == 3
        if self.mode == "caffe":
            if rgb:
                return ops.flip(x, axis=-1) - ops.convert_to_tensor(np.asarray(CAFFE_MEAN_BGR, "float32"))
            return x - float(np.mean(CAFFE_MEAN_BGR))
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "lite":
            return (x - LITE_MEAN) / LITE_STD
        if self.mode == "torch":
            mean = np.asarray(TORCH_MEAN_RGB, "float32") if rgb else np.float32(np.mean(TORCH_MEAN_RGB))
            std = np.asarray(TORCH_STD_RGB, "float32") if rgb else np.float32(np.mean(TORCH_STD_RGB))
            return (x / 255.0 - ops.convert_to_tensor(mean)) / ops.convert_to_tensor(std)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "channels": self.channels, "backbone": self.backbone}


def load_keras_model(path: str):
    """A .keras file written by keras_tl, loaded in safe mode without its optimizer."""
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load the model ({' '.join(str(e).split())[:200]}); expected a .keras file written by keras_tl") from None
