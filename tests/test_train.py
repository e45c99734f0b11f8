"""End-to-end training: records, phases, resume after kill -9, determinism, export."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from keras_tl import recipe as recipe_lib
from keras_tl.errors import WorkdirError

# The recipe: tests/conftest.py's TINY (fixtures tiny and recipe_file).


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny, recipe_file):
    from keras_tl import train

    tmp = tmp_path_factory.mktemp("run")
    raw = tiny()
    raw["train"]["keep_checkpoints"] = True  # test_checkpoints_hold_weights_without_optimizer_state reads them
    recipe = recipe_lib.load(recipe_file(tmp, raw))
    workdir = str(tmp / "wd")
    metrics = train.run(recipe, workdir, log=lambda *a: None)
    return recipe, workdir, metrics


def test_run_writes_every_record(finished_run):
    recipe, wd, metrics = finished_run
    for name in ["recipe.yaml", "run.json", "metrics.json", "confusion_test.json", "confusion_test.png", "DONE",
                 "export/savedmodel/saved_model.pb", "export/model.keras", "export/labels.txt", "export/backbone.weights.h5"]:
        assert os.path.exists(os.path.join(wd, name)), name
    assert recipe_lib.loads(open(os.path.join(wd, "recipe.yaml")).read()) == recipe
    run = json.load(open(os.path.join(wd, "run.json")))
    assert run["weights"]["source"] == "none"
    assert set(run["versions"]) >= {"tensorflow", "keras", "keras_tl"}
    assert run["data"]["split_hash"]["train"] and run["data"]["split_hash"]["test"]
    assert run["images_seen"] == sum(p["images_seen"] for p in run["phases"]) > 0
    on_disk = json.load(open(os.path.join(wd, "metrics.json")))
    assert on_disk["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert set(metrics["test"]["per_class"]) == set(open(os.path.join(wd, "export/labels.txt")).read().split())
    assert len(metrics["history"]["loss"]) == 4  # 2 + 2 epochs across phases


def test_phases_change_trainable_counts_as_declared(finished_run):
    _, wd, _ = finished_run
    phases = json.load(open(os.path.join(wd, "run.json")))["phases"]
    head, ft = phases
    backbone_rows = [r for r in head["stages"] if r["stage"] != "head"]
    assert backbone_rows and all(r["trainable_params"] == 0 for r in backbone_rows)
    assert [r for r in head["stages"] if r["stage"] == "head"][0]["trainable_params"] > 0
    # trainable: all  (BN stays frozen by default, so each stage keeps some frozen parameters)
    assert all(r["trainable_params"] > 0 for r in ft["stages"] if r["trainable_params"] + r["frozen_params"] > 0
               and r["stage"] != "head" and r["layers"] > 0 and r["trainable_params"] + r["frozen_params"] > 1000)
    assert ft["trainable_params"] > head["trainable_params"]
    # Head-only phase over a frozen backbone without augmentation: cached-feature fast path.
    assert head["path"] == "cached_features" and ft["path"] == "full"


def test_refuses_to_overwrite_a_finished_run(finished_run):
    from keras_tl import train

    recipe, wd, _ = finished_run
    with pytest.raises(WorkdirError, match="finished run"):
        train.run(recipe, wd, log=lambda *a: None)


def test_exported_savedmodel_matches_keras_model(finished_run):
    import keras
    import tensorflow as tf

    import keras_tl.model  # noqa: F401  registers custom layers

    _, wd, _ = finished_run
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    sm = tf.saved_model.load(os.path.join(wd, "export/savedmodel"))
    k = keras.saving.load_model(os.path.join(wd, "export/model.keras"), safe_mode=True)
    p_sm = np.asarray(sm.serve(tf.constant(x)))
    p_k = np.asarray(k(x, training=False))
    np.testing.assert_allclose(p_sm, p_k, atol=1e-5)
    np.testing.assert_allclose(p_sm.sum(1), 1.0, atol=1e-4)


def test_same_seed_same_metrics(finished_run, tmp_path):
    from keras_tl import train

    recipe, _, metrics = finished_run
    again = train.run(recipe, str(tmp_path / "again"), log=lambda *a: None)
    assert again["test"]["accuracy"] == metrics["test"]["accuracy"]
    # train.deterministic: true (op determinism): bit-identical, not merely close.
    assert again["test"]["loss"] == metrics["test"]["loss"]
    assert again["history"] == metrics["history"]


def _cli(recipe_path, workdir, fault=None, *sets, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_TL_FAULT", None)
    if fault:
        env["KERAS_TL_FAULT"] = fault
    cmd = [sys.executable, "-m", "keras_tl.train", "--recipe", recipe_path, "--workdir", workdir]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("fault", ["batch:1:0:2", "export:before_rename"])
def test_kill_9_then_rerun_resumes_and_matches(finished_run, tmp_path, fault, tiny, recipe_file):
    _, _, reference = finished_run
    recipe_path = recipe_file(tmp_path, tiny())
    wd = str(tmp_path / "wd")
    first = _cli(recipe_path, wd, fault)
    assert first.returncode == -9, first.stderr[-2000:]
    assert not os.path.exists(os.path.join(wd, "DONE"))
    second = _cli(recipe_path, wd)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stdout + second.stderr
    metrics = json.load(open(os.path.join(wd, "metrics.json")))
    assert os.path.exists(os.path.join(wd, "DONE"))
    assert not [n for n in os.listdir(wd) if n.startswith(".export.tmp-")]
    assert len(metrics["history"]["loss"]) == 4
    if fault.startswith("export"):
        # Killed after training: the resumed run is the same computation.
        assert metrics["test"]["accuracy"] == pytest.approx(reference["test"]["accuracy"], abs=1e-6)
        for key, values in reference["history"].items():
            assert metrics["history"][key] == pytest.approx(values, abs=1e-6), key
        return
    # Killed in phase 1's first epoch, before its first backup: phase 0 stands as recorded, and the
    # rerun trains phase 1 again from phase 0's weights on the same data order; only dropout's random
    # stream starts afresh in the new process (measured: val_loss within 3e-5 per epoch, test loss
    # within 4e-5, test accuracy identical; training accuracy within 1 of 72 images).
    for key, values in reference["history"].items():
        assert metrics["history"][key][:2] == values[:2], key
    assert metrics["history"]["val_loss"] == pytest.approx(reference["history"]["val_loss"], abs=1e-3)
    assert metrics["history"]["loss"] == pytest.approx(reference["history"]["loss"], abs=0.02)
    assert metrics["test"]["loss"] == pytest.approx(reference["test"]["loss"], abs=1e-3)
    assert abs(metrics["test"]["accuracy"] - reference["test"]["accuracy"]) <= 1 / metrics["test"]["examples"] + 1e-9


def test_bad_override_exits_2_and_writes_nothing(tmp_path, tiny, recipe_file):
    wd = tmp_path / "never"
    out = _cli(recipe_file(tmp_path, tiny()), str(wd), None, "model.wieghts=none")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "weights" in out.stderr
    assert not wd.exists()


def test_missing_imagenet_weights_stop_fast_and_leave_no_run_dir(tmp_path, tiny, recipe_file):
    import time

    wd = tmp_path / "never"
    env_home = tmp_path / "keras_home"
    env_home.mkdir()
    recipe_path = recipe_file(tmp_path, tiny())
    cmd = [sys.executable, "-m", "keras_tl.train", "--recipe", recipe_path, "--workdir", str(wd),
           "--set", "model.weights=imagenet"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_HOME=str(env_home))
    t = time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert time.time() - t < 100  # no download attempt or hang (TF import included; the check itself is sub-second)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and str(env_home) in last and "model.weights" in last
    assert not wd.exists()  # so the corrected recipe is not refused as "a different recipe"


def test_cached_head_phase_repeats_without_determinism_flags(tmp_path, tiny, recipe_file):
    """The fast path reads the train images in pool order and shuffles the features with the seed
    alone: two runs with one seed train the head identically even with tf.data's parallel map
    free to reorder (data.deterministic: false) and without op determinism. (Before, the features'
    order followed the shuffled, non-deterministic train set, and same-seed study arms diverged.)"""
    from keras_tl import train

    raw = tiny()
    raw["data"]["synthetic"]["count"] = 600
    raw["data"]["deterministic"] = False
    raw["train"]["deterministic"] = False
    raw["train"]["phases"] = [{"name": "head", "trainable": "head", "epochs": 3, "lr": 3e-3}]
    raw["export"] = {"savedmodel": False, "keras": False}
    recipe = recipe_lib.load(recipe_file(tmp_path, raw))
    runs = [train.run(recipe, str(tmp_path / f"r{i}"), log=lambda *a: None) for i in range(2)]
    for i in range(2):
        with open(tmp_path / f"r{i}" / "run.json") as f:
            assert json.load(f)["phases"][0]["path"] == "cached_features"
    assert runs[0]["history"] == runs[1]["history"]


def test_train_in_order_is_the_pool_order(tmp_path, tiny, recipe_file):
    """train_in_order: every training example once, in the pool's order, never augmented, however
    often the shuffled and augmented train set was read before."""
    from keras_tl import data as data_lib

    raw = tiny()
    raw["data"]["augment"] = {"flip": True, "rot90": True, "brightness": 0.2}
    raw["data"]["deterministic"] = False
    recipe = recipe_lib.load(recipe_file(tmp_path, raw))
    ds = data_lib.build_datasets(recipe)
    plain = data_lib.build_datasets(recipe, augment=False, shuffle=False)
    for _ in ds.train:  # advance the shuffle and augmentation state
        pass
    got = [(np.asarray(x), np.asarray(y)) for x, y in ds.train_in_order]
    want = [(np.asarray(x), np.asarray(y)) for x, y in plain.train]
    np.testing.assert_array_equal(np.concatenate([y for _, y in got]), np.concatenate([y for _, y in want]))
    np.testing.assert_array_equal(np.concatenate([x for x, _ in got]), np.concatenate([x for x, _ in want]))
    shuffled = np.concatenate([np.asarray(y) for _, y in ds.train])
    assert not np.array_equal(shuffled, np.concatenate([y for _, y in want]))  # train itself is shuffled


def test_checkpoints_hold_weights_without_optimizer_state(finished_run):
    """Keras 3's save_weights also writes the optimizer's variables (3x the size with Adam); the
    best and phase checkpoints are only loaded as weights, so they must not carry them."""
    import h5py

    _, workdir, _ = finished_run
    ckpts = sorted(f for f in os.listdir(os.path.join(workdir, "checkpoints")) if f.endswith(".weights.h5"))
    assert {"best_0.weights.h5", "best_1.weights.h5", "phase0.weights.h5", "phase1.weights.h5"} <= set(ckpts)
    for name in ckpts:
        with h5py.File(os.path.join(workdir, "checkpoints", name), "r") as f:
            assert "optimizer" not in f, name
            assert "layers" in f, name
