"""freeze: per-phase trainable sets, BN policy, the per-stage table (checked by counting layer by layer)."""

import keras
import numpy as np
import pytest

from keras_tl import freeze, model as M, recipe as R
from keras_tl.errors import UserError


def make_recipe(backbone="mobilenetv3small", bn="frozen", **model):
    return R.from_dict({"name": "t", "data": {"image_size": [32, 32]},
                        "model": {"backbone": backbone, "weights": "none", "bn": bn, **model}})


@pytest.fixture(scope="module")
def small():
    return M.build_model(make_recipe(head=[{"units": 8, "batch_norm": True}]), 3)


def size(ws):
    return sum(int(np.prod(w.shape)) for w in ws)


def test_resnet101_from_conv4_counts_agree_layer_by_layer():
    r = make_recipe("resnet101")
    m = M.build_model(r, 3)
    rows = freeze.apply_phase(m, R.Phase(trainable={"from": "conv4"}), r)
    table = {row["stage"]: row for row in rows}
    assert list(table) == ["conv1", "conv2", "conv3", "conv4", "conv5", "head"]
    expect = {s: [0, 0] for s in table}
    for layer in m.get_layer("backbone").layers:
        s = layer.name.split("_")[0].replace("pool1", "conv1")
        if s in expect:
            expect[s][0] += size(layer.trainable_weights)
            expect[s][1] += size(layer.non_trainable_weights)
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable, layer.name
        elif layer.weights:
            assert layer.trainable == (s in ("conv4", "conv5")), layer.name
    for layer in m.layers[m.layers.index(m.get_layer("pool")):]:
        expect["head"][0] += size(layer.trainable_weights)
    for s, (tr, fr) in expect.items():
        assert table[s]["trainable_params"] == tr, s
        assert table[s]["frozen_params"] == fr, s
    assert table["conv3"]["trainable_params"] == 0 and table["conv4"]["trainable_params"] > 0
    assert sum(r["trainable_params"] for r in rows) == size(m.trainable_weights)
    assert sum(r["trainable_params"] + r["frozen_params"] for r in rows) == m.count_params()
    text = freeze.format_table(rows)
    assert "conv4" in text and "total" in text and f"{size(m.trainable_weights):,}" in text


def test_bn_train_lets_bn_train_in_trainable_stages(small):
    r = make_recipe(bn="train")
    freeze.apply_phase(small, R.Phase(trainable=("block4", "top", "head")), r)
    bb = small.get_layer("backbone")
    assert bb.get_layer("conv_1_bn").trainable and not bb.get_layer("conv_bn").trainable
    freeze.apply_phase(small, R.Phase(trainable="all"), make_recipe(bn="frozen"))
    assert not bb.get_layer("conv_1_bn").trainable and bb.get_layer("conv_1").trainable
    assert small.get_layer("head_bn_0").trainable  # head BN is new; it follows the head


@pytest.mark.parametrize("spec, trainable_stages", [
    ("head", {"head"}), ("none", set()), ("all", {"stem", "block1", "block2", "block3", "block4", "top", "head"}),
    ("block3", {"block3"}), ({"from": "block4"}, {"block4", "top", "head"}),
])
def test_specs(small, spec, trainable_stages):
    rows = freeze.apply_phase(small, R.Phase(trainable=spec), make_recipe())
    assert {row["stage"] for row in rows if row["trainable_params"]} == trainable_stages


def test_patterns(small):
    rows = freeze.apply_phase(small, R.Phase(trainable={"patterns": ("conv_1", "predictions")}), make_recipe())
    bb = small.get_layer("backbone")
    assert bb.get_layer("conv_1").trainable and not bb.get_layer("expanded_conv_10_project").trainable
    assert small.get_layer("predictions").trainable and not small.get_layer("head_dense_0").trainable
    assert {r["stage"] for r in rows if r["trainable_params"]} == {"top", "head"}
    with pytest.raises(UserError, match="'conv9_.*' matches no layer"):
        freeze.apply_phase(small, R.Phase(trainable={"patterns": ("conv_1", "conv9_.*")}), make_recipe())


def test_stage_not_in_model_is_an_error():
    r = make_recipe("mobilenetv3small", cut_after="block3")
    m = M.build_model(r, 3)
    assert [row["stage"] for row in freeze.stage_table(m, r)] == ["stem", "block1", "block2", "block3", "head"]
    with pytest.raises(UserError, match="'top' matches nothing"):
        freeze.apply_phase(m, R.Phase(trainable=("block3", "top")), r)
    with pytest.raises(UserError, match="from"):
        freeze.apply_phase(m, R.Phase(trainable={"from": "block4"}), r)


def test_fit_changes_only_trainable_weights_and_frozen_bn_keeps_statistics(small):
    r = make_recipe()
    freeze.apply_phase(small, R.Phase(trainable={"from": "top"}), r)
    small.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    before = {v.path: v.numpy().copy() for v in small.weights}
    trainable = {v.path for v in small.trainable_weights}
    x = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    small.fit(x, np.arange(8) % 3, epochs=1, batch_size=4, verbose=0)
    frozen_checked = 0
    for v in small.weights:
        changed = not np.array_equal(before[v.path], v.numpy())
        if v.path in trainable:
            assert changed, v.path
        elif v.path.startswith("head_bn") and v.path.endswith(("moving_mean", "moving_variance")):
            assert changed, v.path  # the head's BN trains: its running statistics follow the data
        else:
            # Frozen kernels and biases, frozen BN gamma/beta, and backbone BN moving statistics
            # (BN ran in inference mode): all exactly as before.
            assert not changed, v.path
            frozen_checked += "bn" not in v.path
    assert frozen_checked > 50, frozen_checked  # the frozen convolutions themselves, not only BN statistics
    assert any("conv_1/" in p for p in trainable) and not any("expanded_conv_10" in p for p in trainable)
