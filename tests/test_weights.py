"""Weights: offline ImageNet error, the Keras-cache ImageNet path, files, shape checks, conv1 adaptation."""

import dataclasses
import hashlib
import os
import time

import h5py
import keras
import numpy as np
import pytest

from keras_tl import backbones, model as M, recipe as R, weights as W
from keras_tl.errors import UserError, WeightsError


def make_recipe(backbone="mobilenetv3small", weights="none", channels=3, size=32, **model):
    return R.from_dict({"name": "t", "data": {"image_size": [size, size], "channels": channels, "synthetic": {"output": "float"}},
                        "model": {"backbone": backbone, "weights": weights, **model}})


def write_legacy_h5(model, path):
    """Weights in the legacy Keras layout the ImageNet *_notop.h5 files use."""
    with h5py.File(path, "w") as f:
        layers = [l for l in model.layers if l.weights]
        f.attrs["layer_names"] = [l.name.encode() for l in layers]
        for l in layers:
            g = f.create_group(l.name)
            names = [f"{l.name}/{v.name}_{i}" for i, v in enumerate(l.weights)]
            g.attrs["weight_names"] = [n.encode() for n in names]
            for n, v in zip(names, l.get_weights()):
                g.create_dataset(n, data=v)


def noisy_backbone(name, shape=(32, 32, 3), seed=0):
    """A backbone whose every weight (incl. BN statistics) is distinct from any fresh init."""
    bb = backbones.build_backbone(name, shape)
    rng = np.random.default_rng(seed)
    for l in bb.layers:
        if l.weights:
            l.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) * (0.1 if w.ndim > 1 else 1.0) for w in l.get_weights()])
    return bb


def first_conv_out(model, x, layer="conv1_conv"):
    bb = model.get_layer("backbone")
    sub = keras.Model(bb.input, bb.get_layer(layer).output)
    return np.asarray(sub(model.get_layer("preprocess")(x)))


def test_offline_imagenet_error_is_fast_and_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    r = make_recipe("resnet101", "imagenet")
    t = time.monotonic()
    with pytest.raises(WeightsError) as e:
        M.build_model(r, 3)
    assert time.monotonic() - t < 15
    msg = e.value.args[0]
    expected = os.path.join(str(tmp_path), "models", "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert expected in msg and "model.weights" in msg and "copy" in msg
    assert "\n" not in msg
    assert W.imagenet_cache_path("resnet101") == expected


def test_imagenet_from_keras_cache_rgb_and_one_channel(tmp_path, monkeypatch):
    """A cached (here: fabricated) ImageNet file is loaded by keras.applications; a 1-band model fed a
    gray image then reproduces the RGB model's first-conv activations on that image replicated."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    src = noisy_backbone("resnet50v2")
    os.makedirs(tmp_path / "models")
    cache = W.imagenet_cache_path("resnet50v2")
    write_legacy_h5(src, cache)
    # The cached file is checked against Keras's hash: register the fabricated file's hash.
    with open(cache, "rb") as f:
        md5 = hashlib.md5(f.read()).hexdigest()
    monkeypatch.setitem(backbones._REGISTRY, "resnet50v2", dataclasses.replace(backbones.get("resnet50v2"), weights_hash=md5))

    rgb = M.build_model(make_recipe("resnet50v2", "imagenet"), 3)
    info = rgb.keras_tl_weights
    assert info.source == "imagenet" and info.path == cache and info.sha256 == W.sha256_file(cache)
    for l in [l for l in src.layers if l.weights]:
        for a, b in zip(l.get_weights(), rgb.get_layer("backbone").get_layer(l.name).get_weights()):
            np.testing.assert_array_equal(a, b)

    gray = M.build_model(make_recipe("resnet50v2", "imagenet", channels=1), 3)
    g = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    out_rgb = first_conv_out(rgb, np.repeat(g, 3, axis=-1))
    out_gray = first_conv_out(gray, g)
    np.testing.assert_allclose(out_gray, out_rgb, atol=1e-4, rtol=1e-4)
    # Every other weight was copied unchanged.
    for l in [l for l in rgb.get_layer("backbone").layers if l.weights and l.name != "conv1_conv"]:
        for a, b in zip(l.get_weights(), gray.get_layer("backbone").get_layer(l.name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_adapt_conv1_mean_and_sum():
    k = np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype("float32")
    for c in (1, 2, 5):
        mean = W.adapt_conv1(k, c, "mean")
        summed = W.adapt_conv1(k, c, "sum")
        assert mean.shape == summed.shape == (3, 3, c, 4)
        # A gray image replicated to c bands sees the summed RGB kernel (mean mode), for every c.
        np.testing.assert_allclose(mean.sum(axis=2), k.sum(axis=2), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(summed[:, :, 0], k.sum(axis=2), rtol=1e-6)
    with pytest.raises(UserError):
        W.adapt_conv1(k, 2, "median")
    with pytest.raises(WeightsError):
        W.adapt_conv1(k[:, :, :2], 2)


def test_backbone_weights_file_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    a = M.build_model(make_recipe(), 4)
    path = str(tmp_path / "bb.weights.h5")
    W.save_backbone_weights(a, path)
    keras.utils.set_random_seed(1)
    b = M.build_model(make_recipe(weights=path), 4)
    assert b.keras_tl_weights.source == "file" and b.keras_tl_weights.sha256 == W.sha256_file(path)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(M.feature_extractor(a)(x), M.feature_extractor(b)(x))
    # And into an already built model.
    keras.utils.set_random_seed(2)
    c = M.build_model(make_recipe(), 4)
    assert not np.array_equal(M.feature_extractor(a)(x), M.feature_extractor(c)(x))
    W.load_backbone_weights(c, path)
    np.testing.assert_array_equal(M.feature_extractor(a)(x), M.feature_extractor(c)(x))


def test_keras_model_file_round_trip_safe_mode(tmp_path):
    keras.utils.set_random_seed(0)
    a = M.build_model(make_recipe(head=[{"units": 8, "batch_norm": True}]), 4)
    path = str(tmp_path / "m.keras")
    a.save(path)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(again(x), a(x), atol=1e-6)
    b = M.build_model(make_recipe(weights=path), 4)
    np.testing.assert_array_equal(M.feature_extractor(a)(x), M.feature_extractor(b)(x))


def test_shape_mismatch_names_first_layer(tmp_path):
    bb = backbones.build_backbone("mobilenetv3small", (32, 32, 3))
    path = str(tmp_path / "w.h5")
    write_legacy_h5(bb, path)
    with h5py.File(path, "a") as f:
        g = f["expanded_conv_project"]
        n = g.attrs["weight_names"][0]
        n = n.decode() if isinstance(n, bytes) else n
        shape = g[n].shape
        del g[n]
        g.create_dataset(n, data=np.zeros(shape[:-1] + (shape[-1] + 1,), "float32"))
    with pytest.raises(WeightsError) as e:
        M.build_model(make_recipe(weights=path), 3)
    msg = e.value.args[0]
    assert "expanded_conv_project" in msg and str(tuple(shape)) in msg and str(shape[:-1] + (shape[-1] + 1,)) in msg


def test_file_from_another_backbone_is_refused(tmp_path):
    a = M.build_model(make_recipe(), 3)
    path = str(tmp_path / "bb.weights.h5")
    W.save_backbone_weights(a, path)
    with pytest.raises(WeightsError, match="mobilenetv3small weights but model.backbone is resnet50"):
        M.build_model(make_recipe("resnet50", path), 3)


@pytest.mark.parametrize("value, fragment", [("nothere.weights.h5", "file not found"), ("weights.txt", "not imagenet, none or a weights file")])
def test_bad_weights_values(tmp_path, value, fragment):
    path = str(tmp_path / value)
    if value.endswith(".txt"):
        open(path, "w").close()
    with pytest.raises(WeightsError, match=fragment):
        W.resolve_weights(make_recipe(weights=path))


def test_none_is_deterministic_given_the_seed():
    keras.utils.set_random_seed(7)
    a = M.build_model(make_recipe(), 3)
    keras.utils.set_random_seed(7)
    b = M.build_model(make_recipe(), 3)
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa.numpy(), wb.numpy())
    assert a.keras_tl_weights == W.WeightsInfo("none")


def test_plain_keras_save_weights_of_a_cut_backbone_loads(tmp_path):
    """export.py-style files: backbone.save_weights() without keras_tl's notes, from a cut model."""
    keras.utils.set_random_seed(0)
    a = M.build_model(make_recipe(cut_after="block3"), 3)
    path = str(tmp_path / "backbone.weights.h5")
    a.get_layer("backbone").save_weights(path)
    keras.utils.set_random_seed(1)
    b = M.build_model(make_recipe(weights=path, cut_after="block3"), 3)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(M.feature_extractor(a)(x), M.feature_extractor(b)(x))
