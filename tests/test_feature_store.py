"""Shared frozen-backbone features: the key misses when any input of the features changes; runs reuse them."""

import json
import os
import threading

import numpy as np
import pytest

from keras_tl import feature_store
from keras_tl import recipe as recipe_lib


def _fe(seed=0, units=8, dtype="float32", pool="avg"):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(units, 3, dtype=dtype)(inp)  # unnamed: Keras numbers it per process
    x = keras.layers.GlobalAveragePooling2D()(x) if pool == "avg" else keras.layers.GlobalMaxPooling2D()(x)
    return keras.Model(inp, x)


def _ds(x, y, batch=4):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def test_key_covers_weights_architecture_precision_and_every_input():
    rng = np.random.default_rng(0)
    x, y = rng.random((12, 8, 8, 3), dtype=np.float32), rng.integers(0, 3, 12)
    xv, yv = rng.random((4, 8, 8, 3), dtype=np.float32), rng.integers(0, 3, 4)
    base = feature_store.key(_fe(), _ds(x, y), _ds(xv, yv))
    assert feature_store.key(_fe(), _ds(x, y), _ds(xv, yv)) == base  # rebuilt model, other layer names: a hit
    fe = _fe()
    w = fe.layers[1].get_weights()
    w[0][0, 0, 0, 0] += 1e-3
    fe.layers[1].set_weights(w)
    x2 = x.copy()
    x2[3, 4, 4, 1] += 1e-3  # one pixel: what a change of scaling, input transform or decoder does
    variants = {
        "weights": feature_store.key(fe, _ds(x, y), _ds(xv, yv)),
        "init": feature_store.key(_fe(seed=1), _ds(x, y), _ds(xv, yv)),
        "architecture": feature_store.key(_fe(units=4), _ds(x, y), _ds(xv, yv)),
        "pooling": feature_store.key(_fe(pool="max"), _ds(x, y), _ds(xv, yv)),
        "precision": feature_store.key(_fe(dtype="mixed_float16"), _ds(x, y), _ds(xv, yv)),
        "pixel": feature_store.key(_fe(), _ds(x2, y), _ds(xv, yv)),
        "label": feature_store.key(_fe(), _ds(x, (y + 1) % 3), _ds(xv, yv)),
        "order (split, subset)": feature_store.key(_fe(), _ds(x[::-1], y[::-1]), _ds(xv, yv)),
        "fewer examples": feature_store.key(_fe(), _ds(x[:-1], y[:-1]), _ds(xv, yv)),
        "val": feature_store.key(_fe(), _ds(x, y), _ds(xv[::-1], yv[::-1])),
        "train/val boundary": feature_store.key(_fe(), _ds(x[:-1], y[:-1]), _ds(np.concatenate([x[-1:], xv]), np.concatenate([y[-1:], yv]))),
        "dtype": feature_store.key(_fe(), _ds(x.astype(np.float16), y), _ds(xv, yv)),
    }
    for what, k in variants.items():
        assert k != base, f"changing {what} must miss"
    assert len(set(variants.values())) == len(variants)


def test_image_size_misses():
    import keras

    def fe(size):
        inp = keras.Input((size, size, 3))
        return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp))

    rng = np.random.default_rng(1)
    a = feature_store.key(fe(8), _ds(rng.random((4, 8, 8, 3), dtype=np.float32), np.zeros(4)), _ds(np.zeros((2, 8, 8, 3), np.float32), np.zeros(2)))
    b = feature_store.key(fe(4), _ds(rng.random((4, 4, 4, 3), dtype=np.float32), np.zeros(4)), _ds(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2)))
    assert a != b


def test_concurrent_fill_is_safe(tmp_path):
    store = str(tmp_path / "features")
    arrays = {"xtr": np.arange(12, dtype=np.float32).reshape(3, 4), "ytr": np.arange(3), "xva": np.ones((1, 4), np.float32), "yva": np.zeros(1)}
    errors = []

    def fill():
        try:
            for _ in range(20):
                feature_store.save(store, "k", arrays)
                got = feature_store.load(store, "k")
                assert all(np.array_equal(got[n], arrays[n]) for n in arrays)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=fill) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and os.listdir(store) == ["k.npz"]  # no temp files left


def test_second_run_reads_the_store_with_identical_metrics(tmp_path, tiny, recipe_file):
    """Two runs with one frozen backbone and one data set: the second reads the features; metrics equal a run without the store."""
    from keras_tl import train

    raw = tiny()
    raw["train"]["phases"] = [{"name": "head", "trainable": "head", "epochs": 2, "lr": 3e-3}]
    raw["export"] = {"savedmodel": False, "keras": False}
    recipe = recipe_lib.load(recipe_file(tmp_path, raw))
    store = str(tmp_path / "features")
    shared = recipe_lib.replace(recipe, [f"train.feature_store={store}"])
    logs = {i: [] for i in range(2)}
    runs = [train.run(shared, str(tmp_path / f"r{i}"), log=logs[i].append) for i in range(2)]
    plain = train.run(recipe, str(tmp_path / "plain"), log=lambda *a: None)
    assert any("feature store miss" in m for m in logs[0]) and any("feature store hit" in m for m in logs[1])
    assert len(os.listdir(store)) == 1
    for m in runs:
        assert m["history"] == plain["history"] and m["val"] == plain["val"] and m["test"] == plain["test"]
    with open(tmp_path / "r1" / "recipe.yaml") as f:
        assert store in f.read()
