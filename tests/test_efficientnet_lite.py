"""EfficientNet-Lite0: the Keras model really is the ImageNet checkpoint, read safely, converted once.

The fidelity test is an independent NumPy forward pass over the checkpoint's own tensors (torch
layout, TF 'same' padding written out here), compared with the Keras model's logits on an
even-sized input (odd sizes pad symmetrically and would hide an off-by-one in the padding). The
photo test alone would be weak: swapped kernel axes still classify a cat as a cat.
"""

import io
import os
import pickle
import subprocess
import sys
import types
import zipfile
from collections import OrderedDict

import keras
import numpy as np
import pytest

from keras_tl import backbones, efficientnet_lite as E, model as M, recipe as R, torch_checkpoint as T, weights as W
from keras_tl.errors import UserError, WeightsError

# ------------------------------------------------------------------ shared fixtures


@pytest.fixture(scope="module")
def state():
    """The package checkpoint, read once (0.2 s)."""
    return T.load_state_dict(E.checkpoint_path())


@pytest.fixture(scope="module")
def keras_home(tmp_path_factory):
    """One Keras cache for the module, holding the converted file."""
    return tmp_path_factory.mktemp("keras_home")


@pytest.fixture
def cache(keras_home, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    return keras_home / "models"


def _recipe(channels=3, size=64, weights="imagenet", backbone="efficientnet_lite0"):
    output = "uint8" if channels == 3 else "float"
    return R.from_dict({"name": "t", "data": {"image_size": [size, size], "channels": channels, "synthetic": {"output": output}},
                        "model": {"backbone": backbone, "weights": weights}})


def _photo(name, size):
    from PIL import Image
    from skimage import data

    return np.asarray(Image.fromarray(getattr(data, name)()).resize((size, size), Image.BILINEAR), "float32")


def _keras_logits(backbone, state, pixels):
    """Raw pixels → keras_tl's ``lite`` preprocessing → backbone → average pool → the ImageNet classifier."""
    x = M.Preprocess("lite", 3)(pixels)
    feats = np.asarray(backbone(x, training=False), dtype=np.float64).mean(axis=(1, 2))
    return feats @ state["_fc.weight"].T.astype(np.float64) + state["_fc.bias"]


# ------------------------------------------------------------ the NumPy reference network


def _same_pad(x, k, s):
    """TF 'SAME': output ceil(n / s); the odd pixel of padding goes after (bottom/right)."""
    pads = []
    for n in x.shape[1:3]:
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def _windows(x, k, s):
    x = _same_pad(x, k, s)
    w = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))  # (n, h, w, c, k, k)
    return w[:, ::s, ::s]


def _conv(x, weight, s=1):
    """torch Conv2d weight (out, in, kh, kw), no bias."""
    return np.einsum("nhwcij,ocij->nhwo", _windows(x, weight.shape[-1], s), weight, optimize=True)


def _dwconv(x, weight, s):
    """torch depthwise weight (channels, 1, kh, kw), no bias."""
    return np.einsum("nhwcij,cij->nhwc", _windows(x, weight.shape[-1], s), weight[:, 0], optimize=True)


def _bn(x, sd, prefix):
    scale = sd[f"{prefix}.weight"] / np.sqrt(sd[f"{prefix}.running_var"] + 1e-3)
    return (x - sd[f"{prefix}.running_mean"]) * scale + sd[f"{prefix}.bias"]


def _relu6(x):
    return np.clip(x, 0.0, 6.0)


# EfficientNet-Lite0's downsampling blocks (the first block of stages 2, 3, 4 and 6), from the paper's
# table; everything else (kernel sizes, widths, which blocks expand) is read off the tensors.
_STRIDE2_BLOCKS = {1, 3, 5, 11}


def numpy_lite0_logits(sd, pixels):
    """ImageNet logits of EfficientNet-Lite0 from torch-layout tensors, in float64."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    x = (np.asarray(pixels, np.float64) - 127.5) / 128.0
    x = _relu6(_bn(_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    n_blocks = len({k.split(".")[1] for k in sd if k.startswith("_blocks.")})
    for i in range(n_blocks):
        p = f"_blocks.{i}."
        s = 2 if i in _STRIDE2_BLOCKS else 1
        h = x
        if p + "_expand_conv.weight" in sd:
            h = _relu6(_bn(_conv(h, sd[p + "_expand_conv.weight"]), sd, p + "_bn0"))
        h = _relu6(_bn(_dwconv(h, sd[p + "_depthwise_conv.weight"], s), sd, p + "_bn1"))
        h = _bn(_conv(h, sd[p + "_project_conv.weight"]), sd, p + "_bn2")
        x = h + x if s == 1 and h.shape == x.shape else h
    x = _relu6(_bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    return x.mean(axis=(1, 2)) @ sd["_fc.weight"].T + sd["_fc.bias"]


def test_numpy_reference_agrees_with_keras_logits(cache, state):
    """The fidelity figure: max |logit difference| at 64 px (even at every stride) is below 1e-4."""
    backbone, info = W.build_weighted_backbone(_recipe(size=64))
    assert info.source == "imagenet" and info.path == str(cache / E.WEIGHTS_FILE)
    pixels = _photo("chelsea", 64)[None]
    ours = _keras_logits(backbone, state, pixels)
    ref = numpy_lite0_logits(state, pixels)
    diff = float(np.max(np.abs(ours - ref)))
    print(f"efficientnet_lite0 64 px: max |keras - numpy| logit difference {diff:.2e} (logits span {ref.min():.1f}..{ref.max():.1f})")
    assert diff < 1e-4
    assert np.std(ref) > 1.0  # real logits, not a degenerate net that would agree trivially


def test_photos_classify_as_imagenet_says(cache, state):
    backbone = W.build_weighted_backbone(_recipe(size=224))[0]
    pixels = np.stack([_photo("chelsea", 224), _photo("coffee", 224)])
    logits = _keras_logits(backbone, state, pixels)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for name, p, allowed in zip(("chelsea", "coffee"), probs, ({281, 282, 285}, {967, 968, 504})):
        top5 = np.argsort(-p)[:5]
        print(f"{name} top-5: " + ", ".join(f"{int(c)} ({p[c]:.3f})" for c in top5))
        assert int(top5[0]) in allowed, (name, top5)
