"""keras_tl.probe end to end on real keras_tl models (MobileNetV3-Small, 32 px, synthetic galaxies)."""

import json

import numpy as np
import pytest

import keras

from keras_tl import probe  # noqa: E402
from keras_tl import recipe as recipe_lib  # noqa: E402
from keras_tl.errors import WeightsError  # noqa: E402

RECIPE = {
    "name": "probe_test", "seed": 3,
    "data": {"image_size": [32, 32], "channels": 3, "batch_size": 40, "val_fraction": 0.25, "test_fraction": 0.0,
             "synthetic": {"count": 160}, "augment": {"flip": False, "rot90": False}},
    "model": {"backbone": "mobilenetv3small", "weights": "none"},
}


def make_recipe(**model):
    raw = json.loads(json.dumps(RECIPE))
    raw["model"].update(model)
    return recipe_lib.from_dict(raw)


def train_images(recipe):
    from keras_tl import data as data_lib

    ds = data_lib.build_datasets(recipe, augment=False, shuffle=False)
    return np.concatenate([np.asarray(x) for x, _ in ds.train])


def save_weights(path, *, calibrate_on=None, seed=11):
    """A backbone weights file; with ``calibrate_on``, its BN running statistics are the
    statistics of those images (every BN layer in training mode over one batch, momentum 0)."""
    from keras_tl import model as model_lib
    from keras_tl import weights as weights_lib

    keras.utils.set_random_seed(seed)
    model = model_lib.build_model(make_recipe(), 10)
    if calibrate_on is not None:
        bb = model.get_layer("backbone")
        for layer in bb.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.0
        bb(model.get_layer("preprocess")(calibrate_on), training=True)
    return weights_lib.save_backbone_weights(model, str(path))


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    recipe = make_recipe()
    calibrated = save_weights(root / "calibrated.weights.h5", calibrate_on=train_images(recipe))
    raw = save_weights(root / "raw.weights.h5")
    weights = ["none", calibrated, raw]
    out = probe.run_probe(recipe, weights, str(root / "work"), cache_dir=str(root / "cache"), log=lambda *_: None)
    return recipe, weights, root, out


def test_probe_json_shape_and_plots(probed):
    recipe, weights, root, out = probed
    on_disk = json.loads((root / "work" / "probe.json").read_text())
    assert on_disk["stages"] == ["stem", "block1", "block2", "block3", "block4", "top"]
    assert set(on_disk["results"]) == set(weights)
    for r in on_disk["results"].values():
        for kind in ("linear", "knn"):
            assert len(r[kind]) == 6 and all(0.0 <= a <= 1.0 for a in r[kind])
        assert r["cache"]["hit"] is False
    assert on_disk["counts"] == {"train": 120, "val": 40}
    assert on_disk["bn_gap"]["skipped"] == ["none"]
    assert (root / "work" / "probe.png").stat().st_size > 5000
    assert (root / "work" / "bn_gap.png").stat().st_size > 5000


def test_bn_gap_near_zero_for_statistics_taken_from_the_data(probed):
    _, (_, calibrated, raw), _, out = probed
    cal, unc = out["bn_gap"]["results"][calibrated], out["bn_gap"]["results"][raw]
    assert len(cal["layers"]) > 20 and all(r["stage"] is not None for r in cal["layers"])
    assert max(r["sym_kl"] for r in cal["layers"]) < 1e-3, cal["sym_kl"]
    assert min(v for v in unc["sym_kl"] if v is not None) > 100 * max(v for v in cal["sym_kl"] if v is not None)


def test_second_call_reads_the_cache_and_does_no_forward_pass(probed, monkeypatch):
    recipe, weights, root, first = probed
    from keras_tl import model as model_lib
    from keras_tl.diagnostics import features

    def forbidden(*a, **k):
        raise AssertionError("a forward pass or model build happened on a cache hit")

    monkeypatch.setattr(features, "extract", forbidden)
    monkeypatch.setattr(model_lib, "build_model", forbidden)
    passes = features.FORWARD_PASSES
    again = probe.run_probe(recipe, weights, str(root / "work2"), cache_dir=str(root / "cache"), log=lambda *_: None)
    assert features.FORWARD_PASSES == passes
    for w in weights:
        assert again["results"][w]["cache"]["hit"] is True
        assert again["results"][w]["linear"] == first["results"][w]["linear"]
        assert again["results"][w]["knn"] == first["results"][w]["knn"]
    assert again["bn_gap"]["results"] == first["bn_gap"]["results"]


def test_cache_key_follows_what_features_depend_on(probed):
    recipe, _, _, _ = probed
    from keras_tl import backbones
    from keras_tl.diagnostics import features
    from keras_tl.weights import WeightsInfo

    entry = backbones.get("mobilenetv3small")
    info = {"source": "synthetic", "split_hash": {"train": "a", "val": "b"}}
    key = lambda r, w, i=info: features.cache_key(features.feature_key_parts(r, w, entry, i))  # noqa: E731
    none = WeightsInfo("none")
    base = key(recipe, none)
    assert key(recipe, none) == base
    assert key(recipe_lib.replace(recipe, ["seed=4"]), none) != base
    assert key(recipe, WeightsInfo("file", "x", "abc")) != key(recipe, WeightsInfo("file", "x", "abd"))
    assert key(recipe, none, {**info, "split_hash": {"train": "a", "val": "c"}}) != base
    assert key(recipe_lib.replace(recipe, ["data.image_size=[48, 48]"]), none) != base
    assert key(recipe_lib.replace(recipe, ["data.batch_size=8"]), none) == base  # batching changes nothing


def test_missing_imagenet_weights_fail_fast_with_the_trainers_error(tmp_path, monkeypatch, capsys):
    from keras_tl import data as data_lib

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(data_lib, "build_datasets", lambda *a, **k: pytest.fail("data read before weights were resolved"))
    with pytest.raises(WeightsError, match="ImageNet weights: cannot download .* the Keras cache file .* is missing") as e:
        probe.run_probe(make_recipe(), ["imagenet", "none"], str(tmp_path / "w"), cache_dir=str(tmp_path / "c"))
    assert str(tmp_path) in str(e.value)
    path = tmp_path / "r.yaml"
    path.write_text(recipe_lib.dump(make_recipe()))
    assert probe.main(["--recipe", str(path), "--weights", "imagenet", "--workdir", str(tmp_path / "w")]) == 2
    assert "ImageNet weights: cannot download" in capsys.readouterr().err


def test_cli_rejects_bad_input(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(recipe_lib.dump(make_recipe()))
    assert probe.main(["--recipe", str(path), "--set", "model.wieghts=none"]) == 2
    assert "did you mean weights" in capsys.readouterr().err
    assert probe.main(["--recipe", str(path), "--weights", str(tmp_path / "missing.weights.h5")]) == 2
    assert "missing.weights.h5" in capsys.readouterr().err
    assert probe.main(["--compare", str(tmp_path)]) == 2
    assert "recipe.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------- compare


def fake_run(root, recipe, changed, frozen):
    """A finished-run directory whose exported model is the seeded initial model with noise of
    30% of each parameter's norm added in ``changed`` stages (and the head shifted), and whose run.json says ``frozen``
    stages never trained."""
    from keras_tl import backbones
    from keras_tl import model as model_lib

    keras.utils.set_random_seed(recipe.seed)
    model = model_lib.build_model(recipe, 10)
    entry = backbones.get(recipe.model.backbone)
    rng = np.random.default_rng(0)
    for layer in model.get_layer("backbone").layers:
        if backbones.stage_of(entry, layer.name) in changed:
            for v in layer.weights:
                if not v.path.endswith(("moving_mean", "moving_variance")):
                    w = np.asarray(v)
                    noise = rng.normal(size=w.shape)
                    v.assign((w + 0.3 * np.linalg.norm(w) * noise / np.linalg.norm(noise)).astype(w.dtype))
    pred = model.get_layer("predictions")
    pred.set_weights([w + 0.1 for w in pred.get_weights()])
    (root / "export").mkdir(parents=True)
    model.save(str(root / "export" / "model.keras"))
    (root / "recipe.yaml").write_text(recipe_lib.dump(recipe))
    rows = [{"stage": s, "trainable_params": 0 if s in frozen else 100} for s in entry.stages] + [
        {"stage": "head", "trainable_params": 10}]
    (root / "run.json").write_text(json.dumps({"weights": {"source": "none"}, "phases": [{"stages": rows}],
                                               "data": {"class_names": [str(i) for i in range(10)]}}))
    (root / "DONE").write_text("")


def test_compare_cka_and_weight_change_per_stage(tmp_path):
    recipe = make_recipe()
    run = tmp_path / "run"
    fake_run(run, recipe, changed={"block3", "block4", "top"}, frozen={"stem", "block1", "block2"})
    out = probe.run_compare(str(run), max_images=40, log=lambda *_: None)
    assert out["stages"] == ["stem", "block1", "block2", "block3", "block4", "top"]
    cka = dict(zip(out["stages"], out["cka"]))
    change = dict(zip(out["stages"], out["relative_weight_change"]))
    for s in ("stem", "block1", "block2"):
        assert cka[s] == pytest.approx(1.0, abs=1e-6) and change[s] == 0.0
    for s in ("block3", "block4", "top"):
        assert change[s] == pytest.approx(0.3, rel=0.05)
    assert cka["top"] < 0.999
    assert out["head_relative_weight_change"] > 0
    assert out["initial_weights_check"].startswith("ok")
    assert (run / "diagnostics" / "compare.json").exists() and (run / "diagnostics" / "compare.png").exists()

    info = json.loads((run / "run.json").read_text())
    for row in info["phases"][0]["stages"]:
        row["trainable_params"] = 0 if row["stage"] != "head" else 10  # claims block3 never trained
    (run / "run.json").write_text(json.dumps(info))
    again = probe.run_compare(str(run), str(tmp_path / "cmp2"), max_images=8, log=lambda *_: None)
    assert again["initial_weights_check"].startswith("FAILED") and "block3" in again["initial_weights_check"]


def _with_data(recipe, **synthetic):
    d = recipe.data
    import dataclasses

    return dataclasses.replace(recipe, name="reference", data=dataclasses.replace(d, synthetic=dataclasses.replace(d.synthetic, **synthetic)))


def test_reference_frechet_zero_for_the_same_data_and_above_the_floor_for_another_survey(tmp_path):
    recipe = make_recipe()
    quiet = dict(cache_dir=str(tmp_path / "cache"), log=lambda *_: None)
    same = probe.run_probe(recipe, ["none"], str(tmp_path / "same"), reference=_with_data(recipe), **quiet)
    fr = same["frechet"]["results"]["none"]
    assert len(fr["distance"]) == len(same["stages"]) == len(fr["floor"])
    scale = [d / r for d, r in zip(fr["distance"], fr["relative"]) if r]
    assert all(abs(d) < 1e-6 * max(scale) for d in fr["distance"])  # identical features
    assert all(f > 0 for f in fr["floor"])
    assert (tmp_path / "same" / "frechet.png").stat().st_size > 5000
    # Another survey (blurrier, noisier, other band response) and other galaxies: the input-side stage
    # sees a distance well above what two halves of the target's own data give.
    other = probe.run_probe(recipe, ["none"], str(tmp_path / "other"),
                            reference=_with_data(recipe, survey="sdss", seed=777), **quiet)
    fr = other["frechet"]["results"]["none"]
    assert fr["distance"][0] > 2 * fr["floor"][0]
    on_disk = json.loads((tmp_path / "other" / "probe.json").read_text())
    assert on_disk["frechet"]["reference"]["recipe"] == "reference"


def test_reference_must_share_backbone_and_input(tmp_path):
    import dataclasses

    recipe = make_recipe()
    ref = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, image_size=(48, 48)))
    with pytest.raises(probe.UserError, match=r"data.image_size is \[48, 48\] but the target recipe has \[32, 32\]"):
        probe.run_probe(recipe, ["none"], str(tmp_path / "w"), reference=ref, log=lambda *_: None)
    assert not (tmp_path / "w").exists()
