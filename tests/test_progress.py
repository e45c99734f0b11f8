"""What a person reads while a run trains: phase k/N, an ETA, evaluation/export lines, and a
warning when a phase learned nothing (keras_tl.train.chance_warning)."""

import os
import subprocess
import sys
import types

import pytest

from keras_tl import train

HEAD = [{"stage": "conv5", "trainable_params": 0}, {"stage": "head", "trainable_params": 10}]
ALL = [{"stage": "conv5", "trainable_params": 99}, {"stage": "head", "trainable_params": 10}]


def _recipe(weights="none"):
    return types.SimpleNamespace(model=types.SimpleNamespace(weights=weights))


def _phase(lr=1e-3):
    return types.SimpleNamespace(lr=lr)


VAL = [10] * 10  # 100 validation images, 10 balanced classes: chance 0.10


@pytest.mark.parametrize("history, rows, recipe, phase, needle", [
    ({"val_accuracy": [0.1, 0.1], "val_loss": [2.3026, 2.3026], "accuracy": [0.1, 0.11]}, HEAD, _recipe(), _phase(),
     "frozen, randomly initialised backbone"),
    ({"val_accuracy": [0.1, 0.12], "val_loss": [2.5, 2.4], "accuracy": [0.5, 0.7]}, ALL, _recipe(), _phase(),
     "BatchNorm moving statistics"),
    ({"val_accuracy": [0.1, 0.1], "val_loss": [9.0, 8.0], "accuracy": [0.1, 0.1]}, ALL, _recipe("imagenet"), _phase(3e-3),
     "10x lower lr"),
    ({"val_accuracy": [0.1], "val_loss": [2.31], "accuracy": [0.1]}, HEAD, _recipe(), _phase(0.0), "learning rate is 0"),
    ({"val_accuracy": [0.3, 0.35], "val_loss": [2.30, 2.29], "accuracy": [0.3, 0.4]}, ALL, _recipe(), _phase(),
     "stayed at ln(10)"),
])
def test_a_phase_at_chance_warns_with_its_likely_cause(history, rows, recipe, phase, needle):
    warning = train.chance_warning(history, VAL, 10, phase, recipe, rows)
    assert warning and needle in warning, warning


def test_bn_lag_advice_gives_a_momentum_for_the_steps_run():
    history = {"val_accuracy": [0.1, 0.12], "val_loss": [2.5, 2.4], "accuracy": [0.5, 0.7]}
    short = train.chance_warning(history, VAL, 10, _phase(), _recipe(), ALL, bn=(0.99, 150))
    assert "after 150 steps at momentum 0.99 they still weigh their initial values by 0.22: set model.bn_momentum to 0.96" in short
    # Long enough for the statistics to have caught up, or no BN training: the general advice.
    for bn in ((0.99, 1000), (None, 10), None):
        text = train.chance_warning(history, VAL, 10, _phase(), _recipe(), ALL, bn=bn)
        assert "BatchNorm moving statistics" in text and "lower model.bn_momentum, e.g. 0.9" in text, text


def test_a_phase_that_learned_does_not_warn():
    history = {"val_accuracy": [0.2, 0.45], "val_loss": [2.1, 1.5], "accuracy": [0.3, 0.5]}
    assert train.chance_warning(history, VAL, 10, _phase(), _recipe(), ALL) is None
    # Imbalanced validation set: 70% majority class; 0.72 is not learning, 0.9 is.
    skewed = [70] + [10] * 3
    assert train.chance_warning({"val_accuracy": [0.72], "val_loss": [0.9]}, skewed, 4, _phase(), _recipe(), ALL)
    assert train.chance_warning({"val_accuracy": [0.9], "val_loss": [0.3]}, skewed, 4, _phase(), _recipe(), ALL) is None


def test_a_run_that_cannot_learn_says_so_and_shows_its_progress(tmp_path, tiny, recipe_file):
    """lr 0: the phase warns; every message numbers phases from 1, epochs carry an ETA, evaluation
    and export are announced, and stderr stays empty (quiet by default)."""
    raw = tiny()
    raw["train"]["phases"] = [{"name": "frozen", "trainable": "all", "epochs": 1, "lr": 0.0}]
    recipe = recipe_file(tmp_path, raw)
    proc = subprocess.run([sys.executable, "-m", "keras_tl.train", "--recipe", recipe, "--workdir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "keras_tl: WARNING: phase 1/1 (frozen): validation accuracy stayed at chance" in out, out
    assert "the learning rate is 0" in out, out
    assert "phase 1/1 epoch 1/1; elapsed" in out and "run ETA ~" in out, out
    assert "keras_tl: evaluating on val (" in out and "keras_tl: exporting to" in out, out
    assert proc.stderr.strip() == "", proc.stderr
    # Disk: after DONE only what reports, predict, visualize and probe --compare read is kept.
    run = tmp_path / "run"
    assert (run / "DONE").exists() and (run / "export" / "model.keras").exists() and (run / "state.json").exists()
    assert not (run / "checkpoints").exists() and not (run / "backup").exists()
    assert " MB; checkpoints deleted, train.keep_checkpoints: true keeps them)" in out.splitlines()[-1], out


def _stripes(root, per_class: int = 48, size: int = 32) -> str:
    """Two classes a small network separates in a few steps: horizontal vs vertical stripes (same mean
    brightness), light noise; a directory source. Its path."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("horizontal", "vertical"):
        os.makedirs(os.path.join(root, cls))
        for i in range(per_class):
            on = (np.arange(size) + rng.integers(0, 4)) % 4 < 2
            a = np.zeros((size, size), np.int64)
            if cls == "horizontal":
                a[on, :] = 255
            else:
                a[:, on] = 255
            a = np.clip(a + rng.integers(-20, 20, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(np.stack([a] * 3, -1)).save(os.path.join(root, cls, f"{i}.png"))
    return str(root)


def test_a_real_run_with_lagging_batchnorm_statistics_warns_and_names_them(tmp_path, recipe_file):
    """A real run, not a made-up history: a from-scratch MobileNetV3-Small (cut after block2), every
    layer training, 2 epochs of 5 steps. At the backbone's BN momentum (0.999) the moving statistics
    still weigh their initial values by 0.999**10 = 0.99: training-mode accuracy reaches ~1.0 while
    validation (inference mode) stays at chance, and the phase's warning names BN lag. The control,
    the same run at bn_momentum 0.5, learns in inference mode too and does not warn, so the lag is
    the cause."""
    from keras_tl import recipe as recipe_lib

    raw = {"name": "bn_lag", "seed": 0,
           "data": {"source": "directory", "path": _stripes(tmp_path / "stripes"), "image_size": [32, 32],
                    "batch_size": 16, "val_fraction": 0.25, "test_fraction": 0.0, "augment": {"flip": False, "rot90": False}},
           "model": {"backbone": "mobilenetv3small", "weights": "none", "cut_after": "block2", "head": []},
           "train": {"tensorboard": False, "phases": [{"name": "scratch", "trainable": "all", "epochs": 2, "lr": 3e-3}]},
           "export": {"savedmodel": False, "keras": False}}
    path = recipe_file(tmp_path, raw)
    results = {}
    for momentum in ("null", "0.5"):
        lines = []
        metrics = train.run(recipe_lib.load(path, [f"model.bn_momentum={momentum}"]), str(tmp_path / f"run_{momentum}"),
                            log=lambda *a: lines.append(" ".join(map(str, a))))
        results[momentum] = (metrics["history"], [line for line in lines if "WARNING" in line])
    history, warnings = results["null"]
    assert max(history["accuracy"]) > 0.9 and max(history["val_accuracy"]) <= 0.5, history
    assert len(warnings) == 1 and "validation accuracy stayed at chance" in warnings[0], warnings
    assert "BatchNorm moving statistics lag behind the weights" in warnings[0], warnings[0]
    # With the numbers, read from the model: keras.applications' MobileNetV3 builds its BN layers
    # with momentum 0.999; 10 steps leave the initial values a weight of 0.99; 0.01**(1/10) = 0.63.
    assert ("after 10 steps at momentum 0.999 they still weigh their initial values by 0.99: "
            "set model.bn_momentum to 0.63 or lower") in warnings[0], warnings[0]
    history, warnings = results["0.5"]
    assert max(history["val_accuracy"]) > 0.9 and not warnings, (history, warnings)
