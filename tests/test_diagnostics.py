"""Diagnostics building blocks: probes, feature taps and cache, BN gap, CKA, weight change.

Stand-in models follow the keras_tl layout (pixels → preprocess → nested backbone → pool → head →
predictions) with stages built so the expected answer is known by construction.
"""

import os
import numpy as np
import pytest

import keras
from keras import layers  # noqa: E402

from keras_tl.diagnostics import bn_gap, cka, features, frechet, probes  # noqa: E402


def standin(size=16, bn=True, wash_out=False, seed=0):
    """A two-stage stand-in. conv1 is affine in the pixels (valid padding, no ReLU), so its pooled
    features carry the image's brightness. With ``wash_out`` conv2 starts with a per-example,
    per-channel normalisation over H and W, which removes any affine shift: its pooled features
    cannot see brightness at all."""
    keras.utils.set_random_seed(seed)
    i = keras.Input((size, size, 3))
    x = layers.Conv2D(8, 3, padding="valid", name="conv1_conv")(i)
    if bn:
        x = layers.BatchNormalization(name="conv1_bn")(x)
    x = layers.Activation("linear", name="conv1_out")(x)
    if wash_out:
        x = layers.LayerNormalization(axis=(1, 2), center=False, scale=False, name="conv2_norm")(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="conv2_conv")(x)
    if bn:
        x = layers.BatchNormalization(name="conv2_bn")(x)
    x = layers.Activation("relu", name="conv2_out")(x)
    backbone = keras.Model(i, x, name="backbone")
    p = keras.Input((size, size, 3), name="pixels")
    y = layers.Rescaling(1.0 / 255, name="preprocess")(p)
    y = backbone(y)
    y = layers.GlobalAveragePooling2D(name="pool")(y)
    y = layers.Dense(2, activation="softmax", name="predictions")(y)
    return keras.Model(p, y)


def taps(model):
    bns = tuple(l.name for l in model.get_layer("backbone").layers if isinstance(l, layers.BatchNormalization))
    return features.Taps(("conv1", "conv2"), ("conv1_out", "conv2_out"), bns, tuple(n.split("_")[0] for n in bns))


def batches(x, y, bs=32):
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


def brightness_data(n, size=16, seed=0):
    """Class 1 is brighter overall; texture is the same random noise for both classes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.uniform(0, 160, (n, size, size, 3)) + 60.0 * y[:, None, None, None]
    return x.astype(np.float32), y.astype(np.int32)


# ---------------------------------------------------------------------- probes


def test_probe_ranks_separable_stage_above_noise_stage():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 3, n)
    early = rng.normal(size=(n, 16)) + 2.5 * np.eye(3, 16)[y]
    late = rng.normal(size=(n, 64))
    tr, va = slice(0, 200), slice(200, n)
    res = probes.probe_stages({"early": early[tr], "late": late[tr]}, y[tr], {"early": early[va], "late": late[va]}, y[va])
    assert res["linear"][0] > 0.85 and res["knn"][0] > 0.85
    assert res["linear"][1] < 0.55 and res["knn"][1] < 0.55
    assert set(res["knn_k"]) <= set(probes.KS) and set(res["linear_C"]) <= set(probes.CS)


def test_probe_ranking_through_a_model_whose_deep_stage_washes_out_the_class():
    model = standin(wash_out=True)
    t = taps(model)
    tap = features.build_tap_model(model, t, bn=False)
    x, y = brightness_data(240)
    tr = features.extract(tap, batches(x[:160], y[:160]), t, bn=False)
    va = features.extract(tap, batches(x[160:], y[160:]), t, bn=False)
    assert tr.stages["conv1"].shape == (160, 8) and tr.bn is None
    res = probes.probe_stages(tr.stages, tr.labels, va.stages, va.labels)
    assert res["linear"][0] > 0.9, res
    assert res["linear"][1] < 0.75, res
    assert res["linear"][0] - res["linear"][1] > 0.2


def test_knn_probe_handles_tiny_training_sets():
    x = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1])
    r = probes.knn_probe(x, y, x, y, ks=(5, 10))
    assert r["k"] == 3 and r["accuracy"] == 1.0
    with pytest.raises(ValueError, match="at least 2"):
        probes.linear_probe(x, np.zeros(4, int), x, y)


# ------------------------------------------------------------ features, cache


def test_tap_features_equal_pooled_stage_outputs_and_bn_moments_are_exact():
    model = standin()
    t = taps(model)
    x, y = brightness_data(50)
    got = features.extract(features.build_tap_model(model, t), batches(x, y, bs=16), t, bn=True)
    bb = model.get_layer("backbone")
    inner = keras.Model(bb.input, [bb.get_layer("conv2_out").output, bb.get_layer("conv2_bn").input])
    fmap, bn_in = (np.asarray(a, np.float64) for a in inner(x / 255.0))
    np.testing.assert_allclose(got.stages["conv2"], fmap.mean((1, 2)), rtol=1e-4, atol=1e-5)
    mean, var = got.bn["conv2_bn"]
    np.testing.assert_allclose(mean, bn_in.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(var, bn_in.var((0, 1, 2)), rtol=1e-3, atol=1e-6)


def test_feature_cache_round_trip_and_corrupt_file(tmp_path):
    cache = features.FeatureCache(str(tmp_path))
    split = features.SplitFeatures(np.arange(4), {"conv1": np.ones((4, 2), np.float32)}, {"bn1": (np.zeros(2), np.ones(2))})
    key = features.cache_key({"weights": "none:seed=0"})
    assert key != features.cache_key({"weights": "none:seed=1"})
    assert cache.load(key) is None
    cache.save(key, {"train": split}, {"weights": "none:seed=0"}, {"bn_gap": {"sym_kl": [np.float64(0.5)]}})
    splits, extra = cache.load(key)
    np.testing.assert_array_equal(splits["train"].stages["conv1"], split.stages["conv1"])
    np.testing.assert_array_equal(splits["train"].bn["bn1"][1], np.ones(2))
    assert extra == {"bn_gap": {"sym_kl": [0.5]}}
    with open(cache.path(key), "wb") as f:
        f.write(b"truncated")
    assert cache.load(key) is None


# --------------------------------------------------------------------- BN gap


def test_symmetric_kl_values():
    assert bn_gap.symmetric_kl(0.0, 1.0, 0.0, 1.0) == 0.0
    assert bn_gap.symmetric_kl(2.0, 1.0, 0.0, 1.0) == pytest.approx(2.0)  # ½·d² at equal variances
    assert bn_gap.symmetric_kl(0.0, 4.0, 0.0, 1.0) == pytest.approx(bn_gap.symmetric_kl(0.0, 1.0, 0.0, 4.0))


def _calibrate_bn(model, t, x, y):
    """Set every BN layer's running statistics to the data's, earlier layers first (each later
    layer's input depends on the earlier layers' statistics)."""
    bb = model.get_layer("backbone")
    for name in t.bn_layers:
        m = features.extract(features.build_tap_model(model, t), batches(x, y), t, bn=True).bn[name]
        bb.get_layer(name).moving_mean.assign(m[0].astype(np.float32))
        bb.get_layer(name).moving_variance.assign(m[1].astype(np.float32))


def test_bn_gap_is_zero_when_running_stats_come_from_the_data_and_grows_with_a_shift():
    model = standin()
    t = taps(model)
    x, y = brightness_data(96)
    _calibrate_bn(model, t, x, y)
    stage_of = dict(zip(t.bn_layers, t.bn_stages))
    same = features.extract(features.build_tap_model(model, t), batches(x, y), t)
    gap = bn_gap.bn_gap(model.get_layer("backbone"), same.bn, stage_of, t.stages)
    assert gap["stages"] == ["conv1", "conv2"]
    assert max(gap["sym_kl"]) < 1e-4 and max(gap["mean_shift"]) < 1e-2, gap
    shifted = features.extract(features.build_tap_model(model, t), batches(1.8 * x + 40, y), t)
    gap2 = bn_gap.bn_gap(model.get_layer("backbone"), shifted.bn, stage_of, t.stages)
    assert min(gap2["sym_kl"]) > 0.05, gap2


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    b = rng.normal(size=(2000, 4))
    assert frechet.frechet_distance(a, b) < 0.05
    assert frechet.frechet_distance(a, b + 1.0) == pytest.approx(4.0, abs=0.2)


# ------------------------------------------------------------------ CKA, change


def test_linear_cka_identity_and_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    assert cka.linear_cka(x, x) == pytest.approx(1.0)
    assert cka.linear_cka(x, x @ q) == pytest.approx(1.0)
    assert cka.linear_cka(x, 3.7 * x + 5.0) == pytest.approx(1.0)
    assert cka.linear_cka(x, rng.normal(size=(200, 12))) < 0.2
    assert cka.linear_cka(x[:, :6], x) < 0.99  # dropping directions is seen


def test_spatial_summary_keeps_layout():
    f = np.zeros((2, 8, 8, 1), np.float32)
    f[0, :4, :4] = 1.0
    s = cka.spatial_summary(f, cells=2)
    assert s.shape == (2, 4)
    np.testing.assert_allclose(s[0], [1, 0, 0, 0])


def test_relative_weight_change_per_stage():
    m0 = standin(seed=0)
    m1 = standin(seed=0)
    m1.set_weights(m0.get_weights())
    stage_of = lambda n: n.split("_")[0] if n.startswith("conv") else None  # noqa: E731
    assert all(v == 0 for v in cka.relative_weight_change(m0, m1, stage_of).values())
    k = m1.get_layer("backbone").get_layer("conv2_conv").kernel
    k.assign(np.asarray(k) * 1.5)
    bn = m1.get_layer("backbone").get_layer("conv1_bn")
    bn.moving_mean.assign(np.full(8, 3.0, np.float32))  # running statistics are not learned weights
    change = cka.relative_weight_change(m0, m1, stage_of)
    assert change["conv1"] == 0.0 and change["head"] == 0.0
    assert change["conv2"] > 0.3


def test_dead_head_units_tool_reports_each_checkpoint(tmp_path, tiny, recipe_file, capsys):
    """tools/dead_head_units.py (the README's dead-head measurement): one line at initialisation and
    after the first and last step of epoch 1, each with a dead fraction in [0, 1] of the head's units."""
    import importlib.util
    import re

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "dead_head_units.py")
    spec = importlib.util.spec_from_file_location("dead_head_units", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--recipe", recipe_file(tmp_path, tiny())]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "dead head units" in line]
    assert [line.split(":")[0].split(" (")[0] for line in lines] == ["init", "step 1", "step 5"], lines
    for line in lines:
        dead = float(re.search(r"dead head units ([0-9.]+) of 16", line).group(1))
        assert 0.0 <= dead <= 1.0, line
