"""distribute.setup: precision policies, strategy choice, XLA, TPU errors, MirroredStrategy on 2 logical CPUs."""

import json
import os
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from keras_tl import distribute
from keras_tl.errors import UserError
from keras_tl.recipe import Recipe, TPUConfig, TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipe(**train):
    return Recipe(train=TrainConfig(**train))


@pytest.fixture(autouse=True)
def _reset_policy(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    yield
    keras.mixed_precision.set_global_policy("float32")


def tiny_model(size=32, classes=3):
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    b_in = keras.Input((size, size, 3))
    b = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv1_conv")(b_in)
    x = keras.Model(b_in, b, name="backbone")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, out)


def data(n=8, size=32, classes=3):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (n, size, size, 3)).astype("float32"), (np.arange(n) % classes).astype("int32")


@pytest.mark.parametrize("precision,compute", [("float32", "float32"), ("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16"), ("auto", "float32")])
def test_each_precision_trains_one_step_with_float32_output(precision, compute):
    rt = distribute.setup(recipe(precision=precision, distribute="default"))
    assert rt.device == "cpu" and rt.num_replicas == 1 and rt.kind == "default"
    assert rt.policy == ("float32" if precision == "auto" else precision)
    assert keras.mixed_precision.global_policy().name == rt.policy
    with rt.strategy.scope():
        model = tiny_model()
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=rt.jit_compile)
    assert model.get_layer("pool").compute_dtype == compute
    # Keras wraps the optimizer for loss scaling only under mixed_float16.
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "mixed_float16")
    x, y = data()
    before = [w.copy() for w in model.get_layer("backbone").get_weights()]
    hist = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_layer("backbone").get_weights()))
    out = model.predict(x, verbose=0)
    assert out.dtype == np.float32 and out.shape == (8, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-3)


@pytest.fixture
def _op_determinism_off():
    """Op determinism is process-wide and another test's training run may have turned it on;
    under it Keras compiles without XLA, which is what the next test must not see."""
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    yield
    if was:
        tf_config.enable_op_determinism()


def test_jit_compile_true_with_deterministic_is_refused_before_tensorflow():
    from keras_tl import recipe as recipe_lib

    with pytest.raises(recipe_lib.RecipeError, match=r"train\.jit_compile: true cannot be combined with train\.deterministic"):
        recipe_lib.from_dict({"model": {"weights": "none"}, "train": {"jit_compile": True, "deterministic": True}})
    assert distribute.setup(recipe(deterministic=True, distribute="default")).jit_compile is False


def test_jit_compile_true_compiles_and_fits_on_cpu(_op_determinism_off):
    rt = distribute.setup(recipe(jit_compile=True, distribute="default", precision="float32"))
    assert rt.jit_compile is True and rt.needs_static_shapes is False
    model = tiny_model()
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", jit_compile=rt.jit_compile)
    x, y = data()
    hist = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert model.jit_compile is True


def test_jit_compile_auto_is_false_off_tpu():
    assert distribute.setup(recipe(distribute="default")).jit_compile is False
    assert distribute.setup(recipe(distribute="default", jit_compile=False)).jit_compile is False


@pytest.mark.parametrize("requested,kw,expected", [
    ("auto", dict(tpu_configured=True, num_gpus=8, tf_config_set=True), "tpu"),
    ("auto", dict(tpu_configured=False, num_gpus=4, tf_config_set=True), "multi_worker"),
    ("auto", dict(tpu_configured=False, num_gpus=2, tf_config_set=False), "mirrored"),
    ("auto", dict(tpu_configured=False, num_gpus=1, tf_config_set=False), "default"),
    ("auto", dict(tpu_configured=False, num_gpus=0, tf_config_set=False), "default"),
    ("mirrored", dict(tpu_configured=True, num_gpus=0, tf_config_set=True), "mirrored"),
])
def test_choose_kind(requested, kw, expected):
    assert distribute.choose_kind(requested, **kw) == expected


def test_choose_policy_auto_per_device_and_no_float16_on_tpu():
    assert [distribute.choose_policy("auto", d) for d in ("cpu", "gpu", "tpu")] == ["float32", "mixed_float16", "mixed_bfloat16"]
    assert distribute.choose_policy("mixed_bfloat16", "cpu") == "mixed_bfloat16"
    with pytest.raises(UserError, match="mixed_float16.*TPU"):
        distribute.choose_policy("mixed_float16", "tpu")


@pytest.mark.parametrize("tpu,flags,match", [
    (TPUConfig(), None, "train.tpu.name is not set"),
    (TPUConfig(name="local"), None, "no TPU devices"),
    (TPUConfig(name="some-node", zone="us-central1-a", project="p"), None, "cannot resolve TPU 'some-node'"),
    (TPUConfig(name="some-node"), {"name": "grpc://127.0.0.1:1"}, "unreachable"),
])
def test_tpu_without_tpu_is_a_quick_user_error(tpu, flags, match):
    t0 = time.monotonic()
    with pytest.raises(UserError, match=match) as e:
        distribute.setup(recipe(distribute="tpu", tpu=tpu), tpu_flags=flags)
    assert time.monotonic() - t0 < 15
    assert "train.tpu.name" in str(e.value) and "\n" not in str(e.value)
    # the policy is only set once setup succeeds
    assert keras.mixed_precision.global_policy().name == "float32"


def test_tpu_recipe_loads_and_fails_fast_without_tpu():
    from keras_tl import recipe as recipe_lib

    r = recipe_lib.load(os.path.join(REPO, "recipes", "tpu_resnet101.yaml"))
    assert (r.train.distribute, r.train.precision, r.data.batch_size, r.model.backbone) == ("tpu", "mixed_bfloat16", 1024, "resnet101")
    t0 = time.monotonic()
    with pytest.raises(UserError, match="no TPU devices"):
        distribute.setup(r, tpu_flags={"name": "local"})
    assert time.monotonic() - t0 < 15


def test_tpu_flags_reject_unknown_key():
    with pytest.raises(UserError, match="unknown key 'nmae'"):
        distribute.setup(recipe(distribute="tpu"), tpu_flags={"nmae": "x"})


def test_auto_with_tpu_configured_tries_tpu():
    with pytest.raises(UserError, match="TPU"):
        distribute.setup(recipe(tpu=TPUConfig(name="local")))


@pytest.mark.parametrize("value,match", [
    (None, "TF_CONFIG environment variable, which is not set"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["localhost:1"]}}', "'task' must be"),
    ('{"cluster": {"worker": "localhost:1"}, "task": {"type": "worker", "index": 0}}', "cluster.worker must be"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}', "task.index 3 out of range"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}', "task.type 'chief' is not a job"),
])
def test_multi_worker_bad_tf_config(monkeypatch, value, match):
    if value is not None:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(UserError, match=match):
        distribute.setup(recipe(distribute="multi_worker"))


def test_logical_cpus_after_initialisation_raises():
    import tensorflow as tf

    tf.constant(1.0) + 1.0  # devices are initialised by now
    with pytest.raises(RuntimeError, match="before TensorFlow initialises"):
        distribute.logical_cpus(2)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, sys
    from keras_tl import distribute
    distribute.logical_cpus(2)
    import keras, numpy as np
    from keras_tl.recipe import Recipe, TrainConfig
    rt = distribute.setup(Recipe(train=TrainConfig(distribute="mirrored", precision="float32")))
    with rt.strategy.scope():
        inputs = keras.Input((32, 32, 3), name="pixels")
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        out = keras.layers.Dense(3, activation="softmax", dtype="float32", name="predictions")(x)
        model = keras.Model(inputs, out)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    y = (np.arange(32) % 3).astype("int32")
    hist = model.fit(x, y, batch_size=8, epochs=1, steps_per_epoch=3, verbose=0)
    from keras_tl import export
    from keras_tl.recipe import DataConfig, ExportConfig
    info = export.export_run(model, sys.argv[1], class_names=["a", "b", "c"], sample_images=x[:4],
                             recipe=Recipe(data=DataConfig(image_size=(32, 32)), export=ExportConfig(backbone_weights=False)))
    print("RESULT " + json.dumps({"replicas": rt.num_replicas, "kind": rt.kind, "verification": info["verification"],
                                  "devices": list(rt.strategy.extended.worker_devices),
                                  "loss": hist.history["loss"]}))
""")


def test_mirrored_strategy_over_two_logical_cpus_trains_and_exports(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tmp_path / "export")], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["replicas"] == 2 and result["kind"] == "mirrored"
    assert len(result["devices"]) == 2 and all("CPU" in d for d in result["devices"])
    assert len(result["loss"]) == 1 and np.isfinite(result["loss"][0])
    assert result["verification"]["savedmodel_max_abs_diff"] <= 1e-4 and (tmp_path / "export" / "COMPLETE").exists()


def test_jit_for_is_how_runs_resolve_auto():
    """Cost measurements compile as the runs do: auto is XLA on TPU only (Keras's own auto would use XLA on CPU)."""
    import os

    from keras_tl import distribute
    from keras_tl import recipe as recipe_lib

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "smoke.yaml")
    auto = recipe_lib.load(path)
    assert auto.train.jit_compile == "auto"
    assert distribute.jit_for(auto) is False and distribute.jit_for(auto, "tpu") is True
    assert distribute.jit_for(recipe_lib.load(path, ["train.deterministic=true"]), "tpu") is False
    assert distribute.jit_for(recipe_lib.load(path, ["train.jit_compile=true"])) is True
