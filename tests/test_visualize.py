"""Grad-CAM on a planted object, feature-map selection, and the visualize CLI on real keras_tl models."""

import json
import os

import numpy as np
import pytest

import keras
from keras import layers  # noqa: E402

from keras_tl import recipe as recipe_lib  # noqa: E402
from keras_tl import visualize  # noqa: E402
from keras_tl.diagnostics import gradcam  # noqa: E402

SIZE = 32


def bright_square_detector():
    """keras_tl layout with hand-set weights: backbone channel 0 fires only on bright pixels,
    channel 1 on dark ones; "square" (class 1) is read from channel 0, "empty" (class 0) from 1."""
    i = keras.Input((SIZE, SIZE, 1))
    x = layers.Conv2D(2, 3, strides=2, padding="same", name="conv1_conv")(i)
    x = layers.Activation("relu", name="conv1_out")(x)
    backbone = keras.Model(i, x, name="backbone")
    p = keras.Input((SIZE, SIZE, 1), name="pixels")
    y = layers.Rescaling(1.0 / 255, name="preprocess")(p)
    y = layers.GlobalAveragePooling2D(name="pool")(backbone(y))
    y = layers.Dense(2, activation="softmax", name="predictions")(y)
    model = keras.Model(p, y)
    k = np.zeros((3, 3, 1, 2), np.float32)
    k[..., 0, 0], k[..., 0, 1] = 1 / 9, -1 / 9
    backbone.get_layer("conv1_conv").set_weights([k, np.array([-0.5, 0.5], np.float32)])
    model.get_layer("predictions").set_weights([np.array([[0.0, 30.0], [1.0, 0.0]], np.float32), np.zeros(2, np.float32)])
    return model


def square_image(top, left, side=8, seed=0):
    img = np.random.default_rng(seed).uniform(0, 60, (SIZE, SIZE, 1)).astype(np.float32)
    img[top:top + side, left:left + side] = 255.0
    return img


@pytest.mark.parametrize("top,left", [(4, 6), (20, 18)])
def test_gradcam_heat_concentrates_on_the_planted_square(top, left):
    model = bright_square_detector()
    img = square_image(top, left)
    split = gradcam.split_at_backbone(model, check_images=img[None])
    heat, classes, probs = gradcam.gradcam(model, img[None], split=split)
    assert classes[0] == 1 and heat.shape == (1, SIZE, SIZE)
    box = np.zeros((SIZE, SIZE), bool)
    box[max(top - 2, 0):top + 10, max(left - 2, 0):left + 10]  = True  # the square plus upsampling blur
    inside, outside = heat[0][box].sum(), heat[0][~box].sum()
    assert inside > 10 * outside, (inside, outside)
    assert box.mean() < 0.2
    peak = np.unravel_index(heat[0].argmax(), heat[0].shape)
    assert box[peak]


def test_gradcam_for_another_class_and_sigmoid_scores():
    model = bright_square_detector()
    img = square_image(4, 6)
    heat, classes, _ = gradcam.gradcam(model, img[None], class_index=[0])
    assert classes[0] == 0
    box = np.zeros((SIZE, SIZE), bool)
    box[2:14, 4:16] = True
    assert heat[0][~box].sum() > heat[0][box].sum()  # "empty" is explained by the dark background
    s = gradcam.class_scores(np.array([[0.8], [0.8]], np.float32), np.array([1, 0]))
    np.testing.assert_allclose(np.asarray(s), np.log([0.8, 0.2]), rtol=1e-5)


def test_top_feature_maps_picks_the_most_active_channels():
    f = np.zeros((1, 4, 4, 5), np.float32)
    f[..., 3] = 2.0
    f[0, 0, 0, 1] = 5.0
    idx, maps = gradcam.top_feature_maps(f, k=2)
    assert idx.tolist() == [[3, 1]] and maps.shape == (1, 2, 4, 4)
    assert maps.max() <= 1.0 and maps[0, 1, 0, 0] == 1.0


# ------------------------------------------------------------------- CLI


def _recipe():
    return recipe_lib.from_dict({
        "name": "vis", "seed": 0,
        "data": {"image_size": [SIZE, SIZE], "channels": 3, "synthetic": {"count": 20}},
        "model": {"backbone": "mobilenetv3small", "weights": "none", "head": [{"units": 8}]},
    })


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    from keras_tl import model as model_lib

    root = tmp_path_factory.mktemp("models")
    run_dir = root / "run_a"
    (run_dir / "export").mkdir(parents=True)
    paths = []
    for seed, path in ((0, run_dir / "export" / "model.keras"), (1, root / "scratch.keras")):
        keras.utils.set_random_seed(seed)
        model_lib.build_model(_recipe(), 3).save(str(path))
        paths.append(path)
    (run_dir / "export" / "labels.txt").write_text("round\nspiral\nedge_on\n")
    return str(run_dir), str(paths[1])


def test_visualize_cli_two_models(tmp_path, two_models):
    from PIL import Image

    run_dir, keras_file = two_models
    png = tmp_path / "galaxy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(png)
    arr = tmp_path / "cutout.npy"
    np.save(arr, np.random.default_rng(1).uniform(0, 255, (SIZE, SIZE, 3)).astype(np.float32))
    out = tmp_path / "vis"
    assert visualize.main(["--model", run_dir, "--model", keras_file, "--out", str(out), "--maps", "2", str(png), str(arr)]) == 0
    summary = json.loads((out / "visualize.json").read_text())
    assert [os.path.basename(p) for p in summary["models"]] == ["model.keras", "scratch.keras"]
    assert [r["png"] for r in summary["images"]] == ["galaxy.png", "cutout.png"]
    for r in summary["images"]:
        assert (out / r["png"]).stat().st_size > 1000
        assert r["predictions"][0]["predicted"] in ("round", "spiral", "edge_on")
        assert r["predictions"][1]["predicted"].startswith("class_")
        assert all(0.0 <= p["probability"] <= 1.0 for p in r["predictions"])
    assert "galaxy.png" in (out / "index.html").read_text()


def test_visualize_cli_errors(tmp_path, two_models, capsys):
    run_dir, _ = two_models
    assert visualize.main(["--model", str(tmp_path), str(tmp_path / "x.png")]) == 2
    assert "no export/model.keras" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert visualize.main(["--model", run_dir, "--out", str(tmp_path / "o"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.png" in err and "cannot read" in err


def test_model_labels_tell_study_runs_apart():
    from keras_tl.visualize import distinct_labels

    a = "runs/study/runs/pretrained_1-abc/lr1/seed0"
    b = "runs/study/runs/scratch_1-def/lr1/seed0"
    assert distinct_labels([a, b]) == ["pretrained_1-abc/lr1/seed0", "scratch_1-def/lr1/seed0"]
    assert distinct_labels(["x/a.keras", "y/b.keras"]) == ["a.keras", "b.keras"]
    assert distinct_labels(["only/one"]) == ["one"]
