"""build_model: preprocessing vs Keras, layer contract, outputs, mixed precision, cut, reinit, sub-models."""

import keras
import numpy as np
import pytest

from keras_tl import backbones, layers as L, model as M, recipe as R, weights as W
from keras_tl.errors import UserError

X = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")


def make_recipe(backbone="mobilenetv3small", weights="none", channels=3, **model):
    return R.from_dict({"name": "t", "data": {"image_size": [32, 32], "channels": channels, "synthetic": {"output": "float"}},
                        "model": {"backbone": backbone, "weights": weights, **model}})


def reference_preprocess(entry):
    """What the backbone's ImageNet weights expect: keras.applications.<module>.preprocess_input, or
    for keras_tl's own EfficientNet-Lite the TF EfficientNet-Lite code's (x - 127) / 128."""
    if entry.keras_module is not None:
        return getattr(keras.applications, entry.keras_module).preprocess_input
    assert entry.preprocess == "lite", entry.name  # a new own builder needs its reference here
    return lambda x: (x - 127.0) / 128.0


@pytest.mark.parametrize("name", backbones.names())
def test_preprocess_matches_the_weights_own_preprocessing(name):
    entry = backbones.get(name)
    ours = np.asarray(L.Preprocess(entry.preprocess, 3, name)(X))
    theirs = np.asarray(reference_preprocess(entry)(X.copy()))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    if entry.preprocess != "none":
        assert not np.allclose(ours, X)  # a test that could not tell identity apart would be useless


def test_preprocess_other_channel_counts():
    x = np.full((1, 2, 2, 5), 200.0, "float32")
    np.testing.assert_allclose(L.Preprocess("caffe", 5)(x), 200.0 - np.mean(L.CAFFE_MEAN_BGR), rtol=1e-6)
    np.testing.assert_allclose(L.Preprocess("tf", 5)(x), 200.0 / 127.5 - 1, rtol=1e-6)
    np.testing.assert_allclose(L.Preprocess("torch", 5)(x), (200 / 255 - np.mean(L.TORCH_MEAN_RGB)) / np.mean(L.TORCH_STD_RGB), rtol=1e-5)
    with pytest.raises(UserError):
        L.Preprocess("bgr")


def test_layer_contract_and_head():
    r = make_recipe(head=[{"units": 16, "batch_norm": True, "dropout": 0.2, "l2": 1e-4}, {"units": 8}], head_dropout=0.3)
    m = M.build_model(r, 5)
    assert [l.name for l in m.layers] == ["pixels", "preprocess", "backbone", "pool", "head_dense_0", "head_bn_0", "head_activation_0",
                                          "head_dropout_0", "head_dense_1", "head_dropout", "predictions"]
    assert m.input.dtype == "float32" and tuple(m.input.shape[1:]) == (32, 32, 3)
    assert m.get_layer("head_dense_0").kernel_regularizer is not None
    p = np.asarray(m(X))
    assert p.shape == (2, 5)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_outputs_binary_multilabel_and_pooling():
    binary = M.build_model(make_recipe(output="binary"), 2)
    assert binary.output.shape[-1] == 1 and binary.get_layer("predictions").activation.__name__ == "sigmoid"
    with pytest.raises(UserError, match="binary needs exactly 2 classes"):
        M.build_model(make_recipe(output="binary"), 3)
    multi = M.build_model(make_recipe(output="multilabel", pooling="flatten"), 4)
    assert multi.get_layer("predictions").activation.__name__ == "sigmoid"
    assert isinstance(multi.get_layer("pool"), keras.layers.Flatten)
    assert isinstance(M.build_model(make_recipe(pooling="max"), 3).get_layer("pool"), keras.layers.GlobalMaxPooling2D)


def test_float32_output_under_mixed_precision():
    before = keras.mixed_precision.global_policy().name
    try:
        keras.mixed_precision.set_global_policy("mixed_float16")
        m = M.build_model(make_recipe(head=[{"units": 8}]), 3)
        assert m.get_layer("head_dense_0").compute_dtype == "float16"
        assert m.output.dtype == "float32"
        assert np.asarray(m(X)).dtype == np.float32
    finally:
        keras.mixed_precision.set_global_policy(before)


def test_cut_after_drops_later_stages():
    m = M.build_model(make_recipe("resnet50", cut_after="conv4"), 3)
    bb = m.get_layer("backbone")
    stages = {backbones.stage_of("resnet50", l.name) for l in bb.layers}
    assert "conv5" not in stages and "conv4" in stages
    assert bb.layers[-1].name == "conv4_block6_out" and bb.output.shape[-1] == 1024
    assert set(M.stage_model(m)(X)) == {"conv1", "conv2", "conv3", "conv4"}


def test_reinit_changes_exactly_the_named_stages(tmp_path):
    src = backbones.build_backbone("mobilenetv3small", (32, 32, 3))
    rng = np.random.default_rng(0)
    for l in src.layers:
        if l.weights:
            l.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in l.get_weights()])
    path = str(tmp_path / "src.weights.h5")
    W.save_backbone_weights(src, path, backbone="mobilenetv3small")
    keras.utils.set_random_seed(0)
    m = M.build_model(make_recipe(weights=path, reinit=["block4", "top"]), 3)
    bb = m.get_layer("backbone")
    changed, kept = 0, 0
    for l in src.layers:
        if not l.weights:
            continue
        stage = backbones.stage_of("mobilenetv3small", l.name)
        for a, b in zip(l.get_weights(), bb.get_layer(l.name).get_weights()):
            if stage in ("block4", "top"):
                assert not np.array_equal(a, b), l.name
                changed += 1
            else:
                np.testing.assert_array_equal(a, b)
                kept += 1
    assert changed > 10 and kept > 10


def test_sub_models_share_layers():
    m = M.build_model(make_recipe(head=[{"units": 8}]), 3)
    feats = M.feature_extractor(m)(X)
    assert feats.shape == (2, backbones.get("mobilenetv3small").feature_width)
    np.testing.assert_allclose(M.head_model(m)(feats), m(X), rtol=1e-5, atol=1e-6)
    stages = M.stage_model(m)(X)
    assert list(stages) == list(backbones.get("mobilenetv3small").stages)
    np.testing.assert_allclose(np.asarray(stages["top"]).mean(axis=(1, 2)), feats, rtol=1e-5, atol=1e-5)
    head = M.head_model(m)
    assert head.get_layer("head_dense_0") is m.get_layer("head_dense_0")


def test_inference_function_traces_once_for_every_batch_size():
    traces = []

    class Count(keras.layers.Layer):
        def call(self, x):
            traces.append(1)  # Python runs while tracing only
            return x * 2.0

    inp = keras.Input((4, 4, 3))
    model = keras.Model(inp, Count()(inp))
    traces.clear()  # building the functional model called the layer once
    fn = M.inference_function(model)
    for n in (8, 8, 3, 1, 8):  # full batches, then a last partial one, as in a dataset pass
        out = np.asarray(fn(np.ones((n, 4, 4, 3), np.uint8)))  # any dtype in: cast to float32
        assert out.shape == (n, 4, 4, 3) and out.dtype == np.float32
    assert len(traces) == 1


def _backbone_bns(model):
    return [l for l in model.get_layer("backbone").layers if isinstance(l, keras.layers.BatchNormalization)]


def test_bn_momentum_null_keeps_the_backbones_own_and_a_value_sets_every_bn():
    own = _backbone_bns(M.build_model(make_recipe("efficientnet_lite0"), 3))
    assert own and {l.momentum for l in own} == {0.99}
    model = M.build_model(make_recipe("efficientnet_lite0", bn_momentum=0.9), 3)
    bns = _backbone_bns(model)
    assert len(bns) == len(own) and {l.momentum for l in bns} == {0.9}
    # The value is what a training step uses: moving_mean = 0.9 * old + 0.1 * batch mean.
    bn = bns[0]
    x = np.random.default_rng(1).normal(2.0, 1.0, (4, 5, 5, bn.moving_mean.shape[0])).astype("float32")
    old = np.asarray(bn.moving_mean).copy()
    bn(x, training=True)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), 0.9 * old + 0.1 * x.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)


def test_bn_momentum_out_of_range_is_a_recipe_error():
    with pytest.raises(UserError, match=r"model.bn_momentum"):
        make_recipe(bn_momentum=1.5)
