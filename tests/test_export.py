"""export.export_run (atomic, verified) and keras_tl.predict (library and CLI)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from keras_tl import export, fs, predict
from keras_tl.errors import DataError, UserError, WorkdirError
from keras_tl.recipe import DataConfig, ExportConfig, Recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SIZE = 32
CLASSES = ["spiral", "elliptical", "merger"]


def tiny_model(size=SIZE, classes=len(CLASSES)):
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    b_in = keras.Input((size, size, 3))
    b = keras.layers.Conv2D(4, 3, strides=2, activation="relu", name="conv1_conv")(b_in)
    x = keras.Model(b_in, b, name="backbone")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(classes, activation="softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, out)


def recipe(**export_kw):
    return Recipe(name="tiny", data=DataConfig(image_size=(SIZE, SIZE)), export=ExportConfig(**export_kw))


def samples(n=4, size=SIZE):
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = tiny_model()
    out = str(tmp_path_factory.mktemp("run") / "export")
    info = export.export_run(model, out, class_names=CLASSES, recipe=recipe(), sample_images=samples(), top_k=2)
    return model, out, info


def leftovers(parent):
    return [n for n in os.listdir(parent) if ".tmp-" in n]


def test_export_layout_and_metadata(exported):
    model, out, info = exported
    assert sorted(os.listdir(out)) == ["COMPLETE", "backbone.weights.h5", "export.json", "labels.txt", "model.keras", "savedmodel"]
    assert export.is_complete(out) and not leftovers(os.path.dirname(out))
    with open(os.path.join(out, "labels.txt")) as f:
        assert f.read() == "spiral\nelliptical\nmerger\n"
    meta = export.read_export(out)
    assert meta["input"]["shape"] == [None, SIZE, SIZE, 3] and meta["output"]["shape"] == [None, 3]
    assert meta["class_names"] == CLASSES and meta["top_k"] == 2 and meta["signature"] == "serve"
    assert meta["verification"]["savedmodel_max_abs_diff"] <= 1e-4 and meta["verification"]["keras_max_abs_diff"] <= 1e-4
    assert set(meta["files"]) >= {"model.keras", "labels.txt", "backbone.weights.h5", "savedmodel/saved_model.pb"}
    assert meta["files"]["model.keras"]["sha256"] == fs.sha256_file(os.path.join(out, "model.keras"))
    assert info["dir"] == out and info["files"] == meta["files"]


def test_saved_model_cli_lists_serve_signature(exported):
    _, out, _ = exported
    proc = subprocess.run([os.path.join(BIN, "saved_model_cli"), "show", "--dir", os.path.join(out, "savedmodel"), "--all"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    serve = proc.stdout.split("signature_def['serve']:")[1].split("signature_def[")[0]
    assert "inputs['pixels']" in serve and f"shape: (-1, {SIZE}, {SIZE}, 3)" in serve and "DT_FLOAT" in serve
    assert "shape: (-1, 3)" in serve


def test_saved_model_serve_endpoint_returns_probabilities(exported):
    import tensorflow as tf

    model, out, _ = exported
    loaded = tf.saved_model.load(os.path.join(out, "savedmodel"))
    x = samples()
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), model.predict(x, verbose=0), atol=1e-5)
    assert list(loaded.signatures["serving_default"](pixels=tf.constant(x))) == ["output_0"]


def test_saved_model_stores_each_weight_once(exported):
    import tensorflow as tf

    model, out, _ = exported
    reader = tf.train.load_checkpoint(os.path.join(out, "savedmodel", "variables", "variables"))
    stored = sum(int(np.prod(s)) for k, s in reader.get_variable_to_shape_map().items() if k != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert stored == model.count_params()


def test_keras_file_leaves_the_optimizer_state_out(tmp_path):
    import io
    import zipfile

    import h5py

    keras.utils.set_random_seed(0)
    model = tiny_model()
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(samples(), np.array([0, 1, 2, 0]), verbose=0)
    optimizer = model.optimizer
    assert optimizer.variables
    out = str(tmp_path / "export")
    export.export_run(model, out, class_names=CLASSES, recipe=recipe(), sample_images=samples())
    with zipfile.ZipFile(os.path.join(out, "model.keras")) as z:
        with h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
            assert "optimizer" not in f and "layers" in f
    assert model.optimizer is optimizer  # put back: training can go on
    model.fit(samples(), np.array([0, 1, 2, 0]), verbose=0)


def test_backbone_weights_transfer(exported):
    model, out, _ = exported
    fresh = tiny_model()
    fresh.get_layer("backbone").load_weights(os.path.join(out, "backbone.weights.h5"))
    for a, b in zip(fresh.get_layer("backbone").get_weights(), model.get_layer("backbone").get_weights()):
        np.testing.assert_array_equal(a, b)


def test_existing_destination_is_a_workdir_error(exported, tmp_path):
    model, out, _ = exported
    with pytest.raises(WorkdirError, match="already exists.*complete export"):
        export.export_run(model, out, class_names=CLASSES, recipe=recipe(), sample_images=samples())
    empty = tmp_path / "export"
    empty.mkdir()
    with pytest.raises(WorkdirError, match="already exists"):
        export.export_run(model, str(empty), class_names=CLASSES, recipe=recipe(), sample_images=samples())
    assert not leftovers(tmp_path)


def test_failed_verification_leaves_nothing(exported, tmp_path, monkeypatch):
    model, _, _ = exported
    out = tmp_path / "export"
    real = export._max_diff
    monkeypatch.setattr(export, "_max_diff", lambda a, b: real(a, b) + 1.0)
    with pytest.raises(export.ExportError, match="disagrees"):
        export.export_run(model, str(out), class_names=CLASSES, recipe=recipe(), sample_images=samples())
    assert not out.exists() and os.listdir(tmp_path) == []


def test_stale_temp_dir_of_a_killed_export_is_removed(exported, tmp_path):
    model, _, _ = exported
    stale = tmp_path / ".export.tmp-deadbeef"
    (stale / "savedmodel").mkdir(parents=True)
    other = tmp_path / ".other.tmp-1"
    other.mkdir()
    export.export_run(model, str(tmp_path / "export"), class_names=CLASSES, recipe=recipe(), sample_images=samples())
    assert sorted(os.listdir(tmp_path)) == [".other.tmp-1", "export"]


def test_failure_while_writing_leaves_nothing(exported, tmp_path, monkeypatch):
    model, _, _ = exported

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(export, "_file_table", boom)
    with pytest.raises(OSError, match="disk full"):
        export.export_run(model, str(tmp_path / "export"), class_names=CLASSES, recipe=recipe(), sample_images=samples())
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kw,exc,match", [
    (dict(class_names=["a", "b"]), ValueError, "2 class names for a model with 3 outputs"),
    (dict(class_names=["a", "b\nc", "d"]), DataError, "labels.txt"),
    (dict(class_names=["a", "a", "b"]), DataError, "not unique"),
    (dict(sample_images=np.zeros((2, 16, 16, 3), "float32")), ValueError, "sample_images"),
    (dict(sample_images=np.zeros((0, SIZE, SIZE, 3), "float32")), ValueError, "non-empty"),
])
def test_bad_arguments(exported, tmp_path, kw, exc, match):
    model, _, _ = exported
    args = dict(class_names=CLASSES, recipe=recipe(), sample_images=samples())
    args.update(kw)
    with pytest.raises(exc, match=match):
        export.export_run(model, str(tmp_path / "export"), **args)
    assert os.listdir(tmp_path) == []


def test_model_without_backbone_is_refused_unless_disabled(tmp_path):
    inputs = keras.Input((SIZE, SIZE, 3), name="pixels")
    x = keras.layers.GlobalAveragePooling2D(name="pool")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="predictions")(x))
    with pytest.raises(UserError, match="export.backbone_weights"):
        export.export_run(model, str(tmp_path / "a"), class_names=CLASSES, recipe=recipe(), sample_images=samples())
    assert os.listdir(tmp_path) == []
    info = export.export_run(model, str(tmp_path / "b"), class_names=CLASSES, recipe=recipe(backbone_weights=False), sample_images=samples())
    assert "backbone.weights.h5" not in info["files"]


def test_mixed_precision_export_verifies_with_float32_io(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = tiny_model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    info = export.export_run(model, str(tmp_path / "export"), class_names=CLASSES, recipe=recipe(), sample_images=samples())
    assert info["policy"] == "mixed_float16" and info["verification"]["atol"] == export.ATOL["mixed_float16"]
    probs = predict.Predictor(str(tmp_path / "export")).predict(samples())
    assert probs.dtype == np.float32 and probs.shape == (4, 3)


# ------------------------------------------------------------------------------ predict


def test_predictor_matches_model_and_reads_png_and_npy(exported, tmp_path):
    model, out, _ = exported
    p = predict.Predictor(out)
    x = samples()
    np.testing.assert_allclose(p.predict(x), model.predict(x, verbose=0), atol=1e-5)
    img = x[0].round().astype("uint8")
    Image.fromarray(img).save(tmp_path / "a.png")
    np.save(tmp_path / "b.npy", img.astype("float32"))
    Image.fromarray(np.repeat(np.repeat(img, 2, 0), 2, 1)).save(tmp_path / "big.png")  # 64 px: resized
    (tmp_path / "bad.png").write_bytes(b"not a png")
    paths = [str(tmp_path / n) for n in ("a.png", "bad.png", "b.npy", "big.png")]
    results = list(predict.classify(p, paths, top_k=2))
    assert [r[0] for r in results] == paths
    assert results[1][1] is None and "bad.png" in results[1][2]
    want = model.predict(img[None].astype("float32"), verbose=0)[0]
    for path, top, err in (results[0], results[2]):
        assert err is None and len(top) == 2
        assert top[0][0] == CLASSES[int(np.argmax(want))]
        assert top[0][1] == pytest.approx(float(want.max()), abs=1e-5)
        assert top[0][1] >= top[1][1]


@pytest.mark.parametrize("mode", ["resize", "pad", "center_crop"])
def test_resize_matches_training_pipeline(mode):
    from keras_tl.data import pipeline

    img = np.random.default_rng(1).uniform(0, 255, (48, 40, 3)).astype("float32")
    np.testing.assert_allclose(predict.resize(img, (32, 32), mode).numpy(), pipeline.resize(img, (32, 32), mode).numpy(), atol=1e-4)


def test_read_image_errors(tmp_path):
    np.save(tmp_path / "two.npy", np.zeros((8, 8, 2), "float32"))
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    with pytest.raises(DataError, match="2 channels, the model takes 3"):
        predict.read_image(str(tmp_path / "two.npy"), (SIZE, SIZE), 3)
    with pytest.raises(DataError, match="unsupported file type .gif"):
        predict.read_image(str(tmp_path / "x.gif"), (SIZE, SIZE), 3)
    with pytest.raises(DataError, match="missing.png: cannot read image"):
        predict.read_image(str(tmp_path / "missing.png"), (SIZE, SIZE), 3)


def test_incomplete_export_is_refused(tmp_path):
    (tmp_path / "export").mkdir()
    with pytest.raises(UserError, match="not a complete keras_tl export"):
        predict.Predictor(str(tmp_path / "export"))


def test_cli_prints_top_k_and_exits_2_on_bad_image(exported, tmp_path):
    _, out, _ = exported
    Image.fromarray(samples(1)[0].astype("uint8")).save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "keras_tl.predict", "--model", out, "--top_k", "3", str(tmp_path / "ok.png"), str(tmp_path / "bad.jpg")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(tmp_path / "ok.png") + "\t")
    fields = lines[0].split("\t")[1:]
    assert len(fields) == 3 and sorted(f.split()[0] for f in fields) == sorted(CLASSES)
    assert sum(float(f.split()[1]) for f in fields) == pytest.approx(1.0, abs=1e-3)
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "bad.jpg" in errors[0]
